"""Run a workflow from its config file on a backend: checks first, then the task graph."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from emflow.cluster import Backend, LocalScheduler, RunReport, Slurm, holds_lock, run_on
from emflow.errors import ConfigError, OutputError, RunInProgressError, UsageError
from emflow.storage.inputs import input_warnings
from emflow.storage.layout import failure_fallback
from emflow.storage.output import OWNER_ATTRIBUTE, output_group_attributes
from emflow.targets.atomic import writing
from emflow.tasks.adapter import Workflow, forget_input_states, reuse_freed_memory, stage_record, use_workers
from emflow.tasks.context import Run
from emflow.tasks.predict import model_choice, model_warnings
from emflow.tasks.prepare import input_identity
from emflow.tasks.spec import preload

from .segmentation import SEGMENTATION
from .status import failed_tasks, invalidate, progress_reporter, repair


class DifferentInputError(OutputError):
    """The output holds results computed from another input; replacing them needs the user's consent."""


def check_run(
    config_path: str | Path, *, update: bool = False, until: str = "", workflow: Workflow = SEGMENTATION
) -> tuple[str, list[str]]:
    """Validate config, inputs and output before any task runs.

    Returns the canonical config path and warnings about the inputs
    (`emflow.storage.inputs.input_warnings`). Raises a UserError (ConfigError, InputError,
    OutputError, ...) naming the problem. Results of another config on the same input are stale and
    will be recomputed (reprocessing); results computed from another input are replaced only with
    `update=True`; results of a run with another work folder are taken over only with `update=True`.
    """
    config_path = str(Path(config_path).expanduser().resolve())
    run = workflow.load_run(config_path)
    if until == "blend_predictions" and not run.config.predicting:
        raise UsageError(
            f"{config_path} names a boundary map (input.boundaries_key), so there is nothing to predict; "
            "remove that key to predict boundaries from input.raw_key"
        )
    check_placement(run)
    if run.layout.output_path.exists() and not update:
        owner = output_group_attributes(run.layout.output_path)[OWNER_ATTRIBUTE]
        recorded = owner.get("input") if isinstance(owner, dict) else None
        identity = input_identity(run)
        if recorded is not None and recorded != identity:
            raise DifferentInputError(
                f"output path {run.layout.output_path} holds the results of a run over a different input "
                f"({recorded['path']}:{recorded['key']}, not {identity['path']}:{identity['key']}). "
                "Choose another output path, or run again with --update to replace those results."
            )
        work_dir = _owner_work_folder(run)
        if work_dir is not None:
            raise OtherWorkFolderError(
                f"output path {run.layout.output_path} holds the results of the run whose work folder is {work_dir}, "
                f"not this config's {run.layout.work_dir}: its records describe that output, and this config's would not. "
                "Set output.work_dir to that folder, choose another output path, or run again with --update to take the output "
                "over (everything is computed again)."
            )
    return config_path, model_warnings(run.config) + input_warnings(run.inputs)


class OtherWorkFolderError(OutputError):
    """The output was written by a run with another work folder; taking it over needs the user's consent."""


def check_placement(run: Run) -> None:
    """Refuse (ConfigError, before anything is written) an output and work folder that overlap
    each other, or lie inside an input container: the run would write over data it reads, or
    over its own records."""
    output, work = run.layout.output_path.resolve(), run.layout.work_dir.resolve()
    if output == work or output.is_relative_to(work) or work.is_relative_to(output):
        raise ConfigError(
            f"config keys output.path and output.work_dir: the work folder {work} and the output {output} "
            "must be separate folders, neither inside the other; choose another output.work_dir"
        )
    for dataset in run.inputs.values():
        container = Path(dataset.path).resolve()
        for key, path in (("output.path", output), ("output.work_dir", work)):
            if path == container or path.is_relative_to(container):
                raise ConfigError(
                    f"config key {key}: {path} lies inside the input {container} (dataset {dataset.key}); "
                    "emflow never writes into its input: choose a path outside it"
                )


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
    say: Callable[[str], object] | None = None,
    warn: Callable[[str], object] | None = None,
) -> RunReport:
    """Run the workflow of a config file, or its stages up to `until` (e.g. "blend_predictions"), on `backend`.

    A run on the local scheduler, and a SLURM submission, holds the lock of its work folder
    (`run_lock`); with a central scheduler several processes may work on one run, and luigid keeps
    them apart. `before_run(config_path)` is called once the checks passed and the lock is held.
    `command`: the `emflow` command a SLURM array task runs as one worker ("run" or "predict").
    `say(line)` tells the user what the run found (default: stderr): output changed or deleted since
    it was recorded, and work-folder results computed again because a pending task needs them.
    `warn(line)` gets each warning about the inputs (default: stderr), before anything runs.
    """
    # From the start, not from `use_workers`: sampling the inputs' values (`check_run`) decodes
    # chunks into fresh arrays (62.5 MVox benchmark run, median of 7: check_run 44 -> 38 ms).
    reuse_freed_memory()
    config_path, warnings = check_run(config_path, update=update, until=until, workflow=workflow)
    for line in warnings:
        (warn or _warn_on_stderr)(line)
    run = workflow.load_run(config_path)
    with run_lock(run.layout) if holds_lock(backend) else nullcontext():
        if update and _owner_work_folder(run) is not None:
            # Taking the output over: the stage creating it runs again, marks it as this run's and
            # creates its arrays anew, and so everything that writes into them runs again.
            for spec in run.stages:
                if spec.creates_outputs:
                    invalidate(run, spec.name)
        forget_input_states()  # input written since this process last looked counts
        if before_run is not None:
            before_run(config_path)
        stages = workflow.stages(config_path, until)
        plan = repair(run, stages)
        if not run.layout.output_path.exists() and plan.changed:
            lines = [f"the output {run.layout.output_path} does not exist: every task that wrote into it runs again"]
            lines += [f"computing again {needed.describe()}" for needed in plan.repairs]
        else:
            lines = plan.messages()
        lines = model_choice(run.config) + lines
        for line in lines:
            (say or _to_stderr)(line)
        workers = backend.options.cpus if isinstance(backend, Slurm) else backend.workers
        # Every process building a run through a central scheduler must agree on the block groups.
        use_workers(workers, shared_scheduler=not isinstance(backend, LocalScheduler))
        # Only for the stages with work to do: a run with nothing new for the supervoxels need not
        # import numpy.ma (12 ms), nor one without meshes to make scipy.ndimage.
        preload(spec for spec in stages if spec.imports and not stage_record(run, spec.name).exists())
        # What a SLURM array task runs; each checks the output again, so --update holds for them too.
        worker_command = [
            sys.executable,
            "-m",
            "emflow.cli.main",
            command,
            config_path,
            "--workers",
            str(workers),
            *(["--update"] if update else []),
        ]
        report = run_on(
            backend,
            [workflow.root_task(config_path, until)],
            work_dir=run.layout.work_dir,
            scheduler_log=run.layout.scheduler_log,
            progress=progress_reporter(config_path, until, workflow=workflow),
            worker_command=worker_command,
            job_name=f"emflow-{Path(config_path).stem}",
            progress_interval=progress_interval,
        )
    if report.succeeded:
        # Failure records that could not be written into the work folder are read (see
        # `emflow.cluster.runner.collect_failures`) and done with.
        shutil.rmtree(failure_fallback(run.layout.work_dir), ignore_errors=True)
    return report


def rerun_workflow(
    config_path: str | Path,
    backend: Backend = LocalScheduler(),
    *,
    stage: str = "",
    block_ids: list[int] | None = None,
    failed: bool = False,
    **run_options,
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


def _to_stderr(line: str) -> None:
    print(f"emflow: {line}", file=sys.stderr, flush=True)


def _warn_on_stderr(line: str) -> None:
    print(f"emflow: warning: {line}", file=sys.stderr, flush=True)


def _owner_work_folder(run: Run) -> str | None:
    """The work folder the output's owner mark names, if the output exists and it is not this run's."""
    if not run.layout.output_path.exists():
        return None
    owner = output_group_attributes(run.layout.output_path)[OWNER_ATTRIBUTE]
    work_dir = owner.get("work_dir") if isinstance(owner, dict) else None
    return work_dir if isinstance(work_dir, str) and Path(work_dir).resolve() != run.layout.work_dir.resolve() else None


@contextmanager
def run_lock(layout) -> Iterator[None]:
    """Hold the locks of a run with the local scheduler, or raise RunInProgressError: the output's
    (`<output>.lock`, so that runs with other work folders never write one output at once) and the
    work folder's (`<work_dir>/run.lock`).

    Two such runs of one output would run the same blocks side by side (a cron run overlapping a
    long one). The locks are flocks, so the kernel releases them when their holder dies, even by
    kill -9: a crashed run never leaves a stale lock behind.
    """
    with _lock(layout.output_lock, layout.work_dir), _lock(layout.run_lock, layout.work_dir):
        yield


@contextmanager
def _lock(path: Path, work_dir: Path) -> Iterator[None]:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
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
        description = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "work_dir": str(work_dir),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(description).encode(), 0)
        _held_locks.add(descriptor)
        yield
    finally:
        _held_locks.discard(descriptor)
        os.close(descriptor)  # releases the lock
