"""Run a workflow from its config file: checks first, then the task graph."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from emflow.cluster import RunReport, run_tasks
from emflow.storage.output import OWNER_ATTRIBUTE, open_output_group
from emflow.tasks.base import use_workers
from emflow.tasks.context import load_context
from emflow.tasks.prepare import input_identity

from .multicut import MulticutSegmentation, StageStatus, failed_tasks, invalidate, progress_reporter, workflow_stages, workflow_status


class DifferentInputError(RuntimeError):
    """The output holds results computed from another input; replacing them needs the user's consent."""


class RunInProgressError(RuntimeError):
    """Another run with the local scheduler is working on the same output."""


def check_run(config_path: str | Path, *, update: bool = False, until: str = "") -> tuple[str, list[StageStatus]]:
    """Validate config, inputs and output before any task runs.

    Returns the canonical config path and the status of each stage. Raises ConfigError,
    InputError, FileNotFoundError, KeyError, ForeignOutputError or DifferentInputError with a
    message naming the problem. Results of another config on the same input are stale and will be
    recomputed (reprocessing); results computed from another input are replaced only with `update=True`.
    """
    config_path = str(Path(config_path).resolve())
    context = load_context(config_path)
    if until == "blend_predictions" and not context.predicting:
        raise ValueError(
            f"{config_path} names a boundary map (input.boundaries_key), so there is nothing to predict; "
            "remove that key to predict boundaries from input.raw_key"
        )
    if context.output_path.exists() and not update:
        recorded = open_output_group(context.output_path).attrs[OWNER_ATTRIBUTE].get("input")
        if recorded is not None and recorded != input_identity(context):
            raise DifferentInputError(
                f"output path {context.output_path} holds the results of a run over a different input "
                f"({recorded['path']}:{recorded['key']}, not {input_identity(context)['path']}:{input_identity(context)['key']}). "
                "Choose another output path, or run again with --update to replace those results."
            )
    return config_path, workflow_status(config_path, until)


def run_workflow(
    config_path: str | Path,
    *,
    workers: int = 1,
    scheduler_host: str | None = None,
    scheduler_port: int | None = None,
    update: bool = False,
    until: str = "",
    progress_interval: float = 5.0,
    before_run: Callable[[str], object] | None = None,
) -> RunReport:
    """Run the workflow of a config file, or its stages up to `until` (e.g. "blend_predictions").

    With the local scheduler, the run holds the lock of its work folder (`run_lock`); with a
    central scheduler, several processes may work on one run, and luigid keeps them apart.
    `before_run(config_path)` is called once the checks passed and the lock is held.
    """
    config_path, _ = check_run(config_path, update=update, until=until)
    context = load_context(config_path)
    with run_lock(context.work_dir) if scheduler_host is None else nullcontext():
        if before_run is not None:
            before_run(config_path)
        use_workers(workers, shared_scheduler=scheduler_host is not None)
        report = run_tasks(
            [MulticutSegmentation(config_path=config_path, until=until)],
            failure_dir=context.work_dir / "failed",
            scheduler_log=context.work_dir / "logs" / "luigi.log",
            workers=workers,
            scheduler_host=scheduler_host,
            scheduler_port=scheduler_port,
            progress=progress_reporter(config_path, until),
            progress_interval=progress_interval,
        )
    return report


def rerun_workflow(config_path: str | Path, *, stage: str = "", block_ids: list[int] | None = None, failed: bool = False, **run_options) -> tuple[list[str], RunReport]:
    """Invalidate tasks, and every task that read them, then run (`run_workflow` options).

    `stage` with `block_ids` (None: the whole stage), or `failed`: every task whose last attempt
    failed (of `stage` only, if given). Returns what was invalidated and the run's report.
    """
    invalidated: list[str] = []

    def invalidate_tasks(config_path: str) -> None:
        if not failed:
            invalidated.extend(invalidate(config_path, stage, block_ids))
            return
        stages = workflow_stages(config_path)
        if stage and stage not in {stage_task.stage for stage_task in stages}:
            raise ValueError(f"this workflow has no stage {stage!r}; its stages are {', '.join(task.stage for task in stages)}")
        for stage_task in stages:
            tasks = failed_tasks(stage_task) if not stage or stage_task.stage == stage else []
            if tasks:
                invalidated.extend(invalidate(config_path, stage_task.stage, None if tasks == [None] else tasks))

    return invalidated, run_workflow(config_path, before_run=invalidate_tasks, **run_options)


@contextmanager
def run_lock(work_dir: Path) -> Iterator[None]:
    """Hold `<work_dir>/run.lock` for a run with the local scheduler, or raise RunInProgressError.

    Two such runs of one output would run the same blocks side by side (a cron run overlapping a
    long one). The lock is an flock, so the kernel releases it when its holder dies, even by
    kill -9: a crashed run never leaves a stale lock behind.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "run.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip()
            raise RunInProgressError(
                f"another emflow run is working on this output ({holder or 'holder unknown'}; lock {path}); "
                "this one exits without doing anything"
            ) from None
        description = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(description).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
