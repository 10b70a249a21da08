"""Running task graphs: the local or central Luigi scheduler, SLURM job arrays, exit status, progress.

This package is the only code that knows about schedulers and job systems. `run_on` runs tasks on
any backend and returns one `RunReport`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import luigi

from .backends import Backend, CentralScheduler, LocalScheduler, RunReport, Slurm, SlurmOptions, holds_lock
from .luigid import DEFAULT_PORT, SchedulerError, SchedulerState, scheduler_status, start_scheduler, stop_scheduler
from .progress import StageProgress
from .runner import run_tasks
from .slurm import run_on_slurm

__all__ = [
    "DEFAULT_PORT",
    "Backend",
    "CentralScheduler",
    "LocalScheduler",
    "RunReport",
    "SchedulerError",
    "SchedulerState",
    "Slurm",
    "SlurmOptions",
    "holds_lock",
    "run_on",
    "scheduler_status",
    "start_scheduler",
    "stop_scheduler",
]


def run_on(
    backend: Backend,
    tasks: Sequence[luigi.Task],
    *,
    work_dir: Path,
    scheduler_log: Path,
    progress: Callable[[], Sequence[StageProgress]],
    worker_command: Sequence[str],
    job_name: str,
    progress_interval: float = 5.0,
) -> RunReport:
    """Run `tasks` on `backend`; failure records are collected from `<work_dir>/failed`.

    `worker_command`: the command a SLURM array task runs to be one worker (completed with the
    scheduler's address); `job_name`: the array's name. `progress` is shown on stderr while the tasks
    run (`emflow.cluster.progress`); `progress_interval`: seconds between two looks at SLURM's queue.
    """
    failure_dir = work_dir / "failed"
    if isinstance(backend, Slurm):
        return run_on_slurm(
            tasks,
            backend,
            worker_command=worker_command,
            work_dir=work_dir,
            failure_dir=failure_dir,
            scheduler_log=scheduler_log,
            job_name=job_name,
            progress=progress,
            poll_interval=progress_interval,
        )
    return run_tasks(tasks, backend, failure_dir=failure_dir, scheduler_log=scheduler_log, progress=progress)
