"""`emflow.cluster.pool`: Luigi's tasks in persistent worker processes, with toy tasks that say
where they ran, die, or outlast their timeout."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import luigi

from emflow.cluster.pool import _SentResults
from emflow.cluster.runner import WorkerFactory


class _Written(luigi.Task):
    """Writes the id of the process it ran in to `<folder>/<name>`."""

    folder = luigi.Parameter()
    name = luigi.Parameter()
    after = luigi.Parameter(default="")

    def requires(self):
        return [_Written(folder=self.folder, name=name) for name in self.after.split(",") if name]

    def output(self):
        return luigi.LocalTarget(str(Path(self.folder) / self.name))

    def run(self):
        Path(self.output().path).write_text(str(os.getpid()))


class _Dies(_Written):
    """Killed (SIGKILL) as it runs, as the kernel's OOM killer would kill it."""

    def run(self):
        os.kill(os.getpid(), signal.SIGKILL)


class _Hangs(_Written):
    """Outlasts its timeout."""

    worker_timeout = 1

    def run(self):
        time.sleep(60)


def _build(tasks, workers: int = 2) -> bool:
    return luigi.build(tasks, worker_scheduler_factory=WorkerFactory(), workers=workers, local_scheduler=True, no_lock=True)


def _build_within(tasks, seconds: float) -> None:
    """Build in a forked process, which must end within `seconds`: a build that waits for ever
    fails the test instead of hanging the suite."""
    process = multiprocessing.get_context("fork").Process(target=_build, args=(tasks,))
    process.start()
    process.join(seconds)
    hung = process.is_alive()
    if hung:
        process.kill()  # its members then read the end of their pipes, and end
        process.join()
    assert not hung, f"the build did not end within {seconds} s"


def _pids(folder: Path) -> dict[str, int]:
    return {path.name: int(path.read_text()) for path in folder.iterdir()}


def test_tasks_run_in_as_many_persistent_processes_as_workers(tmp_path):
    # Three layers of four tasks: Luigi would fork twelve processes.
    names = [f"t{layer}{index}" for layer in range(3) for index in range(4)]
    tasks = [
        _Written(folder=str(tmp_path), name=name, after=",".join(f"t{int(name[1]) - 1}{i}" for i in range(4)) if name[1] != "0" else "")
        for name in names
    ]
    assert _build(tasks)
    pids = _pids(tmp_path)
    assert set(pids) == set(names)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert not multiprocessing.active_children()  # the pool's processes end with the build


def test_a_process_killed_while_it_runs_a_task_fails_that_task_and_the_others_go_on(tmp_path):
    tasks = [_Written(folder=str(tmp_path), name=f"before{index}") for index in range(3)]
    dies = _Dies(folder=str(tmp_path), name="dies")
    after = [_Written(folder=str(tmp_path), name=f"after{index}", after="before0,before1,before2") for index in range(3)]
    assert not _build([*tasks, dies, *after])
    pids = _pids(tmp_path)
    assert set(pids) == {f"before{index}" for index in range(3)} | {f"after{index}" for index in range(3)}
    # The killed process is replaced: still no more than two alive at a time, and a third one in all.
    assert 2 <= len(set(pids.values())) <= 3


def test_a_task_past_its_timeout_is_killed_with_its_process_and_the_build_goes_on(tmp_path):
    hangs = _Hangs(folder=str(tmp_path), name="hangs")
    others = [_Written(folder=str(tmp_path), name=f"other{index}") for index in range(4)]
    started = time.monotonic()
    assert not _build([hangs, *others])
    assert time.monotonic() - started < 30
    assert set(_pids(tmp_path)) == {f"other{index}" for index in range(4)}


def test_a_result_put_by_a_member_arrives_though_the_member_is_killed_right_after():
    receiving, sending = multiprocessing.Pipe()

    def put_and_die():
        _SentResults(sending).put(("task", "DONE", "x" * 100_000, [], []))
        os.kill(os.getpid(), signal.SIGKILL)

    member = multiprocessing.get_context("fork").Process(target=put_and_die)
    member.start()
    sending.close()
    assert receiving.poll(30)
    assert receiving.recv() == ("result", ("task", "DONE", "x" * 100_000, [], []))
    member.join()
    assert member.exitcode == -signal.SIGKILL


def test_processes_killed_between_tasks_lose_no_other_task_and_the_build_ends(tmp_path):
    # Each `_Dies` may start on a member right after it reported another task done: that task's
    # result must not go with it (with Luigi's result queue, it once did, and the build hung).
    tasks = []
    for index in range(40):
        tasks.append(_Written(folder=str(tmp_path), name=f"written{index}"))
        if index % 4 == 3:
            tasks.append(_Dies(folder=str(tmp_path), name=f"dies{index}"))
    _build_within(tasks, 120)
    assert set(_pids(tmp_path)) == {f"written{index}" for index in range(40)}
