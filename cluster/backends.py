"""Where a run's tasks run (a backend), and the one report every backend returns."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from emflow.errors import UserError

from .luigid import DEFAULT_PORT

# States in which a SLURM array task has ended (squeue's long names; sacct's are the same).
ENDED_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
# An array task that left the queue before this process saw how it ended.
UNKNOWN_STATE = "UNKNOWN"


@dataclass(frozen=True)
class LocalScheduler:
    """Luigi's embedded scheduler: `workers` processes on this machine; the run holds its output's lock."""

    workers: int = 1


@dataclass(frozen=True)
class CentralScheduler:
    """A luigid at `host:port` shared by any number of `emflow run` processes on hosts sharing the
    filesystem; luigid hands each task to one worker, so no lock is taken."""

    host: str
    port: int = DEFAULT_PORT
    workers: int = 1


@dataclass(frozen=True)
class SlurmOptions:
    """The job array: how many array tasks, and what each asks SLURM for.

    `time` and `memory` are passed to sbatch as they are (e.g. "2:00:00", "16G"); None leaves the
    partition's default.
    """

    jobs: int = 1
    cpus: int = 1
    partition: str | None = None
    time: str | None = None
    memory: str | None = None


@dataclass(frozen=True)
class Slurm:
    """A SLURM job array of workers for a central scheduler: the given one (`scheduler_host`), or
    one the submitting process starts on `listen_address` (default: this host's name). The
    submitting process holds the output's lock for its jobs."""

    options: SlurmOptions = SlurmOptions()
    scheduler_host: str | None = None
    scheduler_port: int = DEFAULT_PORT
    listen_address: str | None = None


Backend = LocalScheduler | CentralScheduler | Slurm


def holds_lock(backend: Backend) -> bool:
    """Whether a run on `backend` must hold its output's lock (no central scheduler keeps its tasks apart)."""
    return not isinstance(backend, CentralScheduler)


@dataclass(frozen=True)
class ArrayTaskState:
    """Where one SLURM array task stands, or how it ended: SLURM's state, exit code and terminating signal."""

    index: int
    state: str
    exit_code: int = 0
    signal: int = 0

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES or self.state == UNKNOWN_STATE

    @property
    def description(self) -> str:
        """The state with how the task ended, e.g. "FAILED (exit code 1)", "CANCELLED (signal 15)"."""
        if self.state == UNKNOWN_STATE:
            return f"{UNKNOWN_STATE} (left the queue unseen: cancelled while pending, or its record expired and the cluster keeps no accounting)"
        if self.signal:
            return f"{self.state} (signal {self.signal})"
        return f"{self.state} (exit code {self.exit_code})"


@dataclass
class RunReport:
    """The outcome of a run on any backend.

    `complete`: every task is complete at the end. `succeeded`: complete, no task failed in this
    process (Luigi's `status`), and, on SLURM, every array task (`array_tasks` of job `job_id`,
    logs in `log_dir`) ended COMPLETED. `failures`: the failure records tasks wrote during the run.
    """

    complete: bool
    status: str
    scheduler_log: Path
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    failed_here: bool = False
    job_id: str | None = None
    array_tasks: list[ArrayTaskState] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def succeeded(self) -> bool:
        return self.complete and not self.failed_here and not self.unsuccessful_tasks

    @property
    def unsuccessful_tasks(self) -> list[ArrayTaskState]:
        return [task for task in self.array_tasks if task.state != "COMPLETED"]

    def log_path(self, index: int) -> Path:
        """The output file of SLURM array task `index`."""
        assert self.log_dir is not None
        return self.log_dir / f"{self.job_id}_{index}.out"

    @property
    def exit_code(self) -> int:
        return 0 if self.succeeded else 1


class SchedulerUnreachable(UserError):
    """No central scheduler answers at the given address."""


def check_reachable(host: str, port: int, timeout: float = 10.0) -> None:
    """Raise SchedulerUnreachable, naming host and port, unless something accepts connections there."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise SchedulerUnreachable(
            f"no central scheduler answers on {host}:{port} ({error}); start one (`emflow scheduler start`) or leave out --scheduler-host"
        ) from None
