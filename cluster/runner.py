"""Run Luigi tasks and tell the truth about the outcome.

`luigi.build` returns normally (and Luigi's command line exits 0) even when tasks failed; here the
outcome is read from the tasks' own completeness at the end and from Luigi's run summary, and
failures are collected from the failure records that each task writes next to its log.

Several processes on one run. Against a central scheduler (luigid), any number of processes (on
any hosts sharing the filesystem) may build the same tasks: the scheduler hands each task to one
worker at a time, so none is run twice. Three things in Luigi need care then:

- A Luigi worker ends as soon as the scheduler has nothing for it to run *now*, also while tasks
  it needs are still being run by another process (luigi/worker.py, `Worker.run`: no task and no
  running task -> `_keep_alive` -> break). With `[worker] keep_alive` it waits instead while the
  scheduler counts pending tasks for it (luigi/scheduler.py, `Scheduler.count_pending`), but that
  count leaves out tasks running elsewhere (the last task of a run, say) and includes FAILED
  tasks, which luigid gives back only after `[scheduler] retry_delay` (15 minutes): one failed
  task would keep every process waiting. `CooperatingWorker` waits while tasks are pending or
  running elsewhere and none of them has failed.
- The run summary of a process that waited for others reports tasks that another process ran as
  "not granted run permission by the scheduler" (luigi/execution_summary.py,
  `_depth_first_search`), status NOT_RUN, and the run as not successful. Here a run succeeded when
  all its tasks are complete at the end and none failed in this process.
- For `[scheduler] stable_done_cooldown_secs` (10 s) after a task was done, luigid ignores a
  worker's word that it is pending again (luigi/scheduler.py, `Scheduler.add_task`): a run that
  follows a run of the same tasks within seconds, with their outputs removed or stale, finds them
  done there and runs none of them. Such a build ends incomplete with no task failed, and
  `run_tasks` builds once more when the cooldown has passed.
- A central scheduler that stops answering: Luigi retries each call 3 times, 30 s apart, then
  raises RPCError out of `luigi.build`, about 2 minutes later. Here each call is tried
  `RPC_ATTEMPTS` times `RPC_WAIT_SECONDS` apart, and the error becomes one line naming the
  scheduler's host and port (SchedulerUnreachable), a few seconds after it went.

Logs never reach the terminal: Luigi's go to the scheduler log, through a handler that stops
writing at its first failure (a full disk) instead of printing a traceback per message.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import luigi
import luigi.interface
import luigi.rpc
import luigi.scheduler
import luigi.worker
from luigi.execution_summary import LuigiStatusCode
from luigi.task_status import FAILED

from emflow.storage.layout import failure_fallback
from emflow.targets.atomic import writing
from emflow.targets.logs import QuietFileHandler

from .backends import CentralScheduler, LocalScheduler, RunReport, SchedulerUnreachable, check_reachable
from .pool import PooledTaskProcess, WorkerPool
from .progress import StageProgress, start_progress

# Luigi's statuses of a run in which a task of this process failed.
_FAILED_HERE = (LuigiStatusCode.FAILED, LuigiStatusCode.FAILED_AND_SCHEDULING_FAILED)
# Calls to a central scheduler: attempts and seconds between them (Luigi's defaults: 3 and 30 s).
# A scheduler that refuses connections fails the run after about 2 s; one that drops them, after
# 3 connect timeouts (10 s each, Luigi's default, kept: a busy luigid may take seconds to answer).
RPC_ATTEMPTS = 3
RPC_WAIT_SECONDS = 1


def run_tasks(
    tasks: Sequence[luigi.Task],
    backend: LocalScheduler | CentralScheduler,
    *,
    failure_dir: Path,
    scheduler_log: Path,
    progress: Callable[[], Sequence[StageProgress]] | None = None,
) -> RunReport:
    """Build `tasks` with Luigi, with its embedded scheduler or a central one.

    With a central scheduler other processes may build the same tasks at the same time: this one
    then also waits for the tasks they run, and succeeds when all of `tasks` are complete at the
    end, whoever ran them. An unreachable central scheduler raises SchedulerUnreachable at once.

    `progress`, if given, is shown on stderr while the tasks run (`emflow.cluster.progress`: bars
    on a terminal, timestamped lines otherwise). Luigi's own log (scheduling, worker deaths) goes to
    `scheduler_log`, not to the terminal: failed tasks are reported from their failure records.
    """
    started = time.time()
    central = isinstance(backend, CentralScheduler)
    if central:
        check_reachable(backend.host, backend.port)
    scheduler = (
        {"local_scheduler": False, "scheduler_host": backend.host, "scheduler_port": backend.port} if central else {"local_scheduler": True}
    )
    with writing(scheduler_log.parent):
        scheduler_log.parent.mkdir(parents=True, exist_ok=True)
    luigi_config = luigi.configuration.get_config()
    # Luigi would otherwise add its own terminal handler on the first build of the process.
    luigi_config.set("core", "no_configure_logging", "true")
    # The scheduler hands out a task only once its dependencies are done; checking them again in
    # the worker would re-read every block record of a stage before the stage's own task runs.
    luigi_config.set("worker", "check_unfulfilled_deps", "false")
    handler = QuietFileHandler(scheduler_log, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # "luigi-interface" is the worker's logger; "luigi" the parent of the scheduler's and others'.
    luigi_loggers = [logging.getLogger(name) for name in ("luigi-interface", "luigi")]
    saved = [(logger.level, logger.propagate) for logger in luigi_loggers]
    for logger in luigi_loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    # Whatever else fails to write a log message says nothing on the terminal (Python prints a
    # traceback per failed message otherwise).
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    # Luigi forks a process per task with several workers; objects frozen here are left alone by the
    # children's garbage collector, so fewer of the parent's pages are copied on write (measured: 6 %
    # less wall time end to end with 2 workers).
    gc.freeze()
    reporter = None
    try:
        reporter = start_progress(progress)
        result = _build(tasks, backend.workers, scheduler)
        # Incomplete with no task failed: tasks the scheduler still calls done (its cooldown, see the
        # module's docstring), which it hands out once the cooldown has passed.
        if central and result.status not in _FAILED_HERE and not result.worker.saw_a_failed_task and not _complete(tasks):
            time.sleep(luigi.scheduler.scheduler().stable_done_cooldown_secs)
            result = _build(tasks, backend.workers, scheduler)
    except luigi.rpc.RPCError as error:
        raise SchedulerUnreachable(
            f"the central scheduler on {backend.host}:{backend.port} stopped answering during the run ({_cause(error)}); "
            "start it again (`emflow scheduler start`) and run the same command: the run resumes where it stopped"
        ) from None
    finally:
        _end_worker_processes()
        gc.unfreeze()
        for logger, (level, propagate) in zip(luigi_loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        logging.raiseExceptions = raise_exceptions
        handler.close()
        if reporter is not None:
            reporter.stop()
    # Not Luigi's status alone: tasks run by another process make it NOT_RUN (see the module's docstring).
    complete, failed_here = _complete(tasks), result.status in _FAILED_HERE
    return RunReport(
        complete=complete,
        status=result.status.name,
        scheduler_log=scheduler_log,
        failures=[] if complete and not failed_here else collect_failures(failure_dir, since=started),
        seconds=time.time() - started,
        failed_here=failed_here,
    )


def _cause(error: luigi.rpc.RPCError) -> str:
    """The root of a failed call to the scheduler, e.g. "Connection refused", not the HTTP library's paragraph."""
    cause = error.sub_exception if error.sub_exception is not None else error
    system = re.findall(r"\[Errno -?\d+\] ([^\"')\]]+)", str(cause))
    return system[-1].strip() if system else f"{type(cause).__name__}: {str(cause)[:200]}"


# Seconds a worker process that has reported its task is given to exit before it is killed.
WORKER_EXIT_SECONDS = 5.0


def _end_worker_processes() -> None:
    """Wait for the worker processes Luigi forked: Luigi takes a task's result from its process and
    leaves the process to exit on its own, so `luigi.build` may return while one is still alive
    (the kill tests found one alive 10 s after its run had ended, about once in a few full test
    runs), and a run must not end while a process of it could still write. One still alive after
    `WORKER_EXIT_SECONDS` has reported its task already (Luigi stops the ones it has not): killed."""
    deadline = time.monotonic() + WORKER_EXIT_SECONDS
    for process in multiprocessing.active_children():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logging.getLogger("luigi-interface").warning(
                "worker process %d had not exited %.0f s after its task: killed", process.pid, WORKER_EXIT_SECONDS
            )
            process.kill()
            process.join()


def _build(tasks: Sequence[luigi.Task], workers: int, scheduler: dict):
    return luigi.build(
        list(tasks),
        # With the local scheduler no other process can run a task, so no cooperation.
        worker_scheduler_factory=WorkerFactory() if scheduler["local_scheduler"] else CooperatingWorkerFactory(),
        workers=int(workers),
        detailed_summary=True,
        no_lock=True,
        **scheduler,
    )


def _complete(tasks: Sequence[luigi.Task]) -> bool:
    return all(task.complete() for task in tasks)


class Worker(luigi.worker.Worker):
    """Luigi's worker, except where Luigi would fork a process per task (several worker processes):
    a task whose class sets `runs_in_worker` runs in the worker's own process (a task that only
    writes a record, a block-wise stage as a whole, took longer to fork than to run), and the
    others in the persistent processes of a `WorkerPool`."""

    def __init__(self, *arguments, **keywords):
        super().__init__(*arguments, **keywords)
        self.pool = WorkerPool(self)
        self._task_result_queue.close()
        self._task_result_queue = self.pool.results

    def _create_task_process(self, task):
        # Luigi's own test for a process per task (luigi/worker.py, `_create_task_process`).
        if (self._config.force_multiprocessing or self.worker_processes > 1) and not getattr(task, "runs_in_worker", False):
            return PooledTaskProcess(self.pool, task, self._config.timeout)
        process = super()._create_task_process(task)
        process.use_multiprocessing = False
        return process

    def __exit__(self, *exception):
        try:
            return super().__exit__(*exception)
        finally:
            self.pool.close()


class CooperatingWorker(Worker):
    """A Luigi worker that shares a central scheduler with the workers of other processes.

    When the scheduler has no task for it, it waits (asking again every `[worker] wait_interval`
    plus up to `wait_jitter` seconds) while tasks it scheduled are pending or running in other
    workers, and ends once none is, or once one of them has failed (`saw_a_failed_task`).
    """

    def __init__(self, *arguments, **keywords):
        super().__init__(*arguments, **keywords)
        self.saw_a_failed_task = False

    def _keep_alive(self, get_work_response) -> bool:
        waiting = get_work_response.n_pending_tasks > 0 or bool(get_work_response.running_tasks)
        return waiting and not self._a_scheduled_task_failed()

    def _a_scheduled_task_failed(self) -> bool:
        # One question to the scheduler, asked only while this worker is idle.
        failed = self._scheduler.task_list(status=FAILED, upstream_status="", limit=False)
        self.saw_a_failed_task = any(task_id in self._scheduled_tasks for task_id in failed)
        return self.saw_a_failed_task


class WorkerFactory(luigi.interface._WorkerSchedulerFactory):
    """Luigi's factory of schedulers and workers (the `worker_scheduler_factory` of `luigi.build`),
    making `worker_class`es."""

    worker_class: type[Worker] = Worker

    def create_worker(self, scheduler, worker_processes, assistant=False):
        return self.worker_class(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant)


class CooperatingWorkerFactory(WorkerFactory):
    """`WorkerFactory` making `CooperatingWorker`s, for a central scheduler."""

    worker_class = CooperatingWorker

    def create_remote_scheduler(self, url):
        # Luigi reads these from its [core] config only, where setting them makes every task warn
        # that the config holds parameters it does not consume.
        scheduler = super().create_remote_scheduler(url)
        scheduler._rpc_retry_attempts, scheduler._rpc_retry_wait = RPC_ATTEMPTS, RPC_WAIT_SECONDS
        return scheduler


def collect_failures(failure_dir: Path, since: float = 0.0) -> list[dict]:
    """Failure records written at or after `since` (seconds since the epoch), oldest first: those
    of the work folder `failure_dir.parent`, and those that could not be written there
    (`emflow.storage.layout.failure_fallback`). A damaged record is skipped."""
    records = []
    for folder in (failure_dir, failure_fallback(failure_dir.parent)):
        if not folder.exists():
            continue
        for path in folder.rglob("*.json"):
            try:
                modified = path.stat().st_mtime
                record = json.loads(path.read_text()) if modified >= since - 1.0 else None
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and {"stage", "block_id", "error", "log"} <= record.keys():
                records.append((modified, record))
    return [record for _, record in sorted(records, key=lambda item: item[0])]
