"""Run a workflow from its config file on a backend: checks first, then the task graph."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from emflow.cluster import Backend, LocalScheduler, RunReport, Slurm, holds_lock, run_on
from emflow.errors import OutputError, RunInProgressError, UsageError
from emflow.storage.output import OWNER_ATTRIBUTE, open_output_group
from emflow.tasks.adapter import Workflow, use_workers
from emflow.tasks.prepare import input_identity

from .segmentation import SEGMENTATION
from .status import StageStatus, failed_tasks, invalidate, progress_reporter, workflow_status


class DifferentInputError(OutputError):
    """The output holds results computed from another input; replacing them needs the user's consent."""


def check_run(config_path: str | Path, *, update: bool = False, until: str = "", workflow: Workflow = SEGMENTATION) -> tuple[str, list[StageStatus]]:
    """Validate config, inputs and output before any task runs.

    Returns the canonical config path and the status of each stage. Raises a UserError (ConfigError,
    InputError, OutputError, ...) naming the problem. Results of another config on the same input are
    stale and will be recomputed (reprocessing); results computed from another input are replaced
    only with `update=True`.
    """
    config_path = str(Path(config_path).expanduser().resolve())
    run = workflow.load_run(config_path)
    if until == "blend_predictions" and not run.config.predicting:
        raise UsageError(
            f"{config_path} names a boundary map (input.boundaries_key), so there is nothing to predict; "
            "remove that key to predict boundaries from input.raw_key"
        )
    if run.layout.output_path.exists() and not update:
        recorded = open_output_group(run.layout.output_path).attrs[OWNER_ATTRIBUTE].get("input")
        identity = input_identity(run)
        if recorded is not None and recorded != identity:
            raise DifferentInputError(
                f"output path {run.layout.output_path} holds the results of a run over a different input "
                f"({recorded['path']}:{recorded['key']}, not {identity['path']}:{identity['key']}). "
                "Choose another output path, or run again with --update to replace those results."
            )
    return config_path, workflow_status(config_path, until, workflow=workflow)


def run_workflow(
    config_path: str | Path,
    backend: Backend = LocalScheduler(),
    *,
    update: bool = False,
    until: str = "",
    command: str = "run",
    progress_interval: float = 5.0,
    before_run: Callable[[str], object] | None = None,
    workflow: Workflow = SEGMENTATION,
) -> RunReport:
    """Run the workflow of a config file, or its stages up to `until` (e.g. "blend_predictions"), on `backend`.

    A run on the local scheduler, and a SLURM submission, holds the lock of its work folder
    (`run_lock`); with a central scheduler several processes may work on one run, and luigid keeps
    them apart. `before_run(config_path)` is called once the checks passed and the lock is held.
    `command`: the `emflow` command a SLURM array task runs as one worker ("run" or "predict").
    """
    config_path, _ = check_run(config_path, update=update, until=until, workflow=workflow)
    run = workflow.load_run(config_path)
    with run_lock(run.layout.work_dir) if holds_lock(backend) else nullcontext():
        if before_run is not None:
            before_run(config_path)
        workers = backend.options.cpus if isinstance(backend, Slurm) else backend.workers
        # Every process building a run through a central scheduler must agree on the block groups.
        use_workers(workers, shared_scheduler=not isinstance(backend, LocalScheduler))
        # What a SLURM array task runs; each checks the output again, so --update holds for them too.
        worker_command = [sys.executable, "-m", "emflow.cli.main", command, config_path, "--workers", str(workers), *(["--update"] if update else [])]
        return run_on(
            backend,
            [workflow.root_task(config_path, until)],
            work_dir=run.layout.work_dir,
            scheduler_log=run.layout.scheduler_log,
            progress=progress_reporter(config_path, until, workflow=workflow),
            worker_command=worker_command,
            job_name=f"emflow-{Path(config_path).stem}",
            progress_interval=progress_interval,
        )


def rerun_workflow(
    config_path: str | Path, backend: Backend = LocalScheduler(), *, stage: str = "", block_ids: list[int] | None = None, failed: bool = False, **run_options
) -> tuple[list[str], RunReport]:
    """Invalidate tasks, and every task that read them, then run (`run_workflow` options).

    `stage` with `block_ids` (None: the whole stage), or `failed`: every task whose last attempt
    failed (of `stage` only, if given). Returns what was invalidated and the run's report.
    """
    invalidated: list[str] = []
    workflow = run_options.get("workflow", SEGMENTATION)

    def invalidate_tasks(config_path: str) -> None:
        run = workflow.load_run(config_path)
        names = [spec.name for spec in run.stages]
        if stage and stage not in names:
            raise UsageError(f"this workflow has no stage {stage!r}; its stages are {', '.join(names)}")
        if not failed:
            invalidated.extend(invalidate(run, stage, block_ids))
            return
        for spec in run.stages:
            tasks = failed_tasks(run, spec) if not stage or spec.name == stage else []
            if tasks:
                invalidated.extend(invalidate(run, spec.name, None if tasks == [None] else tasks))

    return invalidated, run_workflow(config_path, backend, before_run=invalidate_tasks, **run_options)


# Descriptors of the run locks this process holds. A forked worker process closes its copies at
# once: a child still alive when its run returns would otherwise keep the lock (flock locks belong
# to the open file, which the child shares) and refuse the next run.
_held_locks: set[int] = set()


def _close_held_locks_in_child() -> None:
    for descriptor in _held_locks:
        os.close(descriptor)
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_held_locks_in_child)


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
        _held_locks.add(descriptor)
        yield
    finally:
        _held_locks.discard(descriptor)
        os.close(descriptor)  # releases the lock
