"""Persistent worker processes for Luigi's tasks: forked once per build, not once per task.

With several worker processes Luigi forks a process per task (luigi/worker.py, `TaskProcess`).
A block group of a stage then starts in a fresh process: it copies its parent's pages as it
writes them, builds its per-process tables again (open arrays, decoded chunk caches, the model
of a CNN stage and its first, cold pass), and its first block faults in the pages of its arrays
(`emflow.tasks.adapter.reuse_freed_memory` keeps them only within a process). Measured in the
62.5 MVox end-to-end run of benchmarks/end_to_end.py: a group's first block took 0.13 s more
than the next in `supervoxels`, 0.08 s in `block_graph`, 0.06 s in `write_segmentation`, and
every stage of a run has 8 groups.

Here the tasks Luigi would fork run instead in one of `worker_processes` members of a
`WorkerPool`, forked from the building process at the first such task and kept until the build
ends. A member runs one task at a time, as Luigi's own process would (`TaskProcess.run`, which
puts the task's result on the worker's result queue), and then waits for the next. What Luigi
asks of a task's process (alive, exit code, terminate) `PooledTaskProcess` answers for the task
on its member: a member that dies while it runs a task fails that task as a forked process's
death does ("died unexpectedly"), and the next task gets a new member.

A task's result (what Luigi's `TaskProcess.run` puts on the worker's result queue) comes back on
its member's pipe, sent before the member says the task is done, and the worker reads it from
`PoolResults`, which stands in for Luigi's `multiprocessing.Queue`. That queue sends from a thread
of the sending process after `put` returns: a member killed right after a task (by the next task's
crash, a timeout, the OOM killer) could take that task's result with it, and the build waited for
it for ever (seen once in tests/test_pool.py).

The members are forked after Luigi's worker has scheduled the build's tasks (`Worker.add`, before
`Worker.run`), so each finds its task among its copy of the worker's scheduled tasks, the same
object a forked `TaskProcess` would run; a task scheduled after a member was forked gets a new
member. Caches a member keeps from task to task are those a process that runs every task itself
keeps (`--workers 1`, or a worker of a central scheduler): each is keyed by the state of the files
it stands for.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import queue
import random
import signal
import time
from typing import Any

import luigi.worker

# Seconds a dispatch waits for a member to say it finished its task (it says so right after
# putting the task's result on Luigi's queue, which Luigi may read first) before forking another.
FREE_MEMBER_WAIT_SECONDS = 5.0
# Seconds a member is given to exit when the build ends before it is killed.
MEMBER_EXIT_SECONDS = 5.0


class _Member:
    """One persistent process: takes task ids on its pipe; sends back each task's result, then the
    task's id once it is done."""

    def __init__(self, worker: luigi.worker.Worker):
        self.connection, child_end = multiprocessing.Pipe()
        self.known_tasks = frozenset(worker._scheduled_tasks)
        self.running: str | None = None  # the task id it runs, until it says it is done
        self.gone = False  # its pipe is closed: it died (`process` says how) or ended
        self.process = multiprocessing.get_context("fork").Process(target=_serve, args=(worker, child_end), name="emflow-worker")
        self.process.start()
        child_end.close()

    def take_news(self, results: collections.deque) -> None:
        """Read what the member sent: task results (onto `results`), and that its task is done."""
        try:
            while not self.gone and self.connection.poll():
                kind, value = self.connection.recv()
                if kind == "result":
                    results.append(value)
                elif value == self.running:
                    self.running = None
        except (EOFError, OSError):
            self.gone = True

    @property
    def free(self) -> bool:
        return self.running is None and not self.gone and self.process.is_alive()


class _SentResults:
    """A member's stand-in for Luigi's result queue: `put` sends on the member's pipe, and returns
    once the result is in the pipe."""

    def __init__(self, connection: multiprocessing.connection.Connection):
        self.connection = connection

    def put(self, result: tuple) -> None:
        self.connection.send(("result", result))


def _serve(worker: luigi.worker.Worker, connection: multiprocessing.connection.Connection) -> None:
    """A member's life: run the tasks it is sent, one after the other, in this process."""
    worker._task_result_queue = _SentResults(connection)
    # As Luigi seeds each forked task process: members must not share a random sequence.
    random.seed(os.getpid() * time.time())
    # Ctrl-C is for the building process: it stops the build and kills the members running tasks
    # (Luigi's `Worker.__exit__`, `PooledTaskProcess.terminate`); idle members would otherwise
    # each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            task_id = connection.recv()
        except EOFError:  # the building process is gone
            return
        if task_id is None:
            return
        task_process = luigi.worker.Worker._create_task_process(worker, worker._scheduled_tasks[task_id])
        task_process.use_multiprocessing = False
        task_process.run()  # puts the task's result on the worker's result queue, whatever happens
        connection.send(("done", task_id))


class WorkerPool:
    """The persistent worker processes of one Luigi worker (see the module docstring)."""

    def __init__(self, worker: luigi.worker.Worker):
        self.worker = worker
        self.members: list[_Member] = []
        self.results = PoolResults(self)

    def dispatch(self, task_id: str) -> _Member:
        """Send a task to a free member (forking one where none is free or knows the task)."""
        member = self._free_member(task_id)
        member.running = task_id
        member.connection.send(task_id)
        return member

    def _free_member(self, task_id: str) -> _Member:
        self._take_news(task_id)
        deadline = time.monotonic() + FREE_MEMBER_WAIT_SECONDS
        while len(self.members) >= self.worker.worker_processes and not any(member.free for member in self.members):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.wait(remaining):
                break
            self._take_news(task_id)
        free = [member for member in self.members if member.free]
        if free:
            return free[0]
        member = _Member(self.worker)
        self.members.append(member)
        return member

    def take_news(self) -> None:
        """Read what every member sent (`_Member.take_news`)."""
        for member in self.members:
            member.take_news(self.results.received)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a member to send something (or die); whether one did."""
        return bool(multiprocessing.connection.wait([member.connection for member in self.members if not member.gone], timeout))

    def _take_news(self, task_id: str) -> None:
        """Update what each member runs; members that died, and free ones forked before `task_id`
        was scheduled, go."""
        self.take_news()
        self._retire(
            [member for member in self.members if not member.process.is_alive() or (member.free and task_id not in member.known_tasks)]
        )

    def _retire(self, members: list[_Member]) -> None:
        for member in members:
            self.members.remove(member)
            _stop([member])

    def close(self) -> None:
        """End every member (each has reported its task, or is killed with it)."""
        _stop(self.members)
        self.members = []


def _stop(members: list[_Member]) -> None:
    for member in members:
        try:
            member.connection.send(None)
        except OSError:  # already gone
            pass
    deadline = time.monotonic() + MEMBER_EXIT_SECONDS
    for member in members:
        member.process.join(max(0.0, deadline - time.monotonic()))
        if member.process.is_alive():
            member.process.kill()
            member.process.join()
        member.connection.close()


class PoolResults:
    """The worker's result queue (Luigi's `Worker._task_result_queue`) while a pool runs its tasks:
    results of tasks run in the building process (`put`) and those the members sent."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool
        self.received: collections.deque = collections.deque()

    def put(self, result: tuple) -> None:
        self.received.append(result)

    def get(self, timeout: float) -> tuple:
        """The next result, waiting up to `timeout` seconds for one (else `queue.Empty`, as Luigi expects)."""
        deadline = time.monotonic() + timeout
        self.pool.take_news()
        while not self.received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise queue.Empty
            self.pool.wait(remaining)  # with no member left to hear from, it sleeps out the timeout
            self.pool.take_news()
        return self.received.popleft()

    def close(self) -> None:
        """Nothing to close (Luigi closes its queue when the worker ends)."""


class PooledTaskProcess:
    """What Luigi's worker holds for a task running on a pool member, in place of its
    `TaskProcess`: `start` dispatches it, and the member's life answers for the task's."""

    use_multiprocessing = True  # Luigi then calls `start`, not `run`

    def __init__(self, pool: WorkerPool, task: luigi.Task, worker_timeout: float | None):
        self.pool, self.task = pool, task
        self.worker_timeout = task.worker_timeout if task.worker_timeout is not None else worker_timeout
        self.timeout_time = time.time() + self.worker_timeout if self.worker_timeout else None
        self.member: _Member | None = None

    def start(self) -> None:
        self.member = self.pool.dispatch(self.task.task_id)

    def _running(self) -> bool:
        if self.member is None:
            return False
        self.pool.take_news()
        return self.member.running == self.task.task_id

    def is_alive(self) -> bool:
        return self._running() and self.member.process.is_alive()  # type: ignore[union-attr]

    @property
    def exitcode(self) -> int | None:
        """The member's exit code if it died running this task; 0 once the task is done."""
        return self.member.process.exitcode if self._running() else 0  # type: ignore[union-attr]

    @property
    def pid(self) -> int | None:
        return None if self.member is None else self.member.process.pid

    def terminate(self) -> Any:
        """Kill the member that runs the task (a timeout, or the end of the build)."""
        if self._running():
            self.member.process.kill()  # type: ignore[union-attr]
