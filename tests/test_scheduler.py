"""`emflow scheduler start|stop|status`, and several `emflow run` processes sharing one real luigid.

Every luigid a test starts is stopped by its process id, whatever the test's outcome.
"""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import read, run_cli, write_config

from emflow.cluster.luigid import free_port, start_luigid, stop_luigid

# The flyem crop (64, 128, 128) in blocks of (32, 64, 64).
NUMBER_OF_BLOCKS = 8
# Luigi's config for the worker processes of these tests: a process that waits for tasks held by
# another asks the scheduler again every 0.1 to 0.2 s (Luigi's default: 1 to 6 s), so that both
# processes get tasks in every stage, and the last one ends soon after the run is complete.
WORKER_CONFIG = "[worker]\nwait_interval = 0.1\nwait_jitter = 0.1\n"


@pytest.fixture(scope="module")
def luigid_port(tmp_path_factory):
    """The port of a luigid on 127.0.0.1 for this module's tests."""
    server, port = start_luigid(tmp_path_factory.mktemp("luigid"))
    try:
        yield port
    finally:
        stop_luigid(server.pid)


def scheduler_cli(state_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emflow.cli.main", "scheduler", *arguments, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie not yet reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def dead_pid() -> int:
    """The process id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_scheduler_start_status_stop(tmp_path):
    state_dir = tmp_path / "scheduler"
    state_dir.mkdir()
    pid_file = state_dir / "luigid.pid"
    pid_file.write_text(f"{dead_pid()}\n")
    port = free_port()
    pid = None
    try:
        started = scheduler_cli(state_dir, "start", "--port", str(port))
        if pid_file.exists():
            pid = int(pid_file.read_text())
        assert started.returncode == 0, started.stderr
        assert "stale pid file" in started.stderr
        assert f"pid {pid}" in started.stdout and f"http://127.0.0.1:{port}/" in started.stdout
        assert running(pid), "luigid outlives the command that started it"

        status = scheduler_cli(state_dir, "status")
        assert status.returncode == 0, status.stderr
        assert f"pid {pid}" in status.stdout and f"127.0.0.1:{port}" in status.stdout
        assert "0 done" in status.stdout

        again = scheduler_cli(state_dir, "start", "--port", str(free_port()))
        assert again.returncode != 0
        assert "already running" in again.stderr and str(pid) in again.stderr
        assert int(pid_file.read_text()) == pid and running(pid)

        stopped = scheduler_cli(state_dir, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert f"pid {pid}" in stopped.stdout
        assert not running(pid)
        assert not pid_file.exists()
        assert (state_dir / "state.pickle").exists(), "luigid saved its task state on SIGTERM"

        after = scheduler_cli(state_dir, "status")
        assert after.returncode == 3 and "not running" in after.stdout
        assert scheduler_cli(state_dir, "stop").stdout.startswith("emflow scheduler: no scheduler running")
    finally:
        if pid is not None:
            stop_luigid(pid, timeout=10)


def test_scheduler_start_refuses_a_port_in_use(tmp_path):
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        port = other_program.getsockname()[1]
        started = scheduler_cli(tmp_path / "scheduler", "start", "--port", str(port))
    assert started.returncode == 1
    assert f"127.0.0.1:{port}" in started.stderr and "another program uses the port" in started.stderr
    assert not (tmp_path / "scheduler" / "luigid.pid").exists()


@pytest.mark.parametrize("scheduler, workers", [("local", 2), ("luigid", 1), ("luigid", 2)])
def test_same_segmentation_with_any_scheduler_and_number_of_workers(
    tmp_path, workflow_inputs, reference_segmentation, luigid_port, scheduler, workers
):
    config = write_config(tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr")
    central = ["--scheduler-host", "127.0.0.1", "--scheduler-port", luigid_port] if scheduler == "luigid" else []
    assert run_cli("run", config, "--workers", workers, *central) == 0
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), reference_segmentation)
    if workers > 1:
        # Luigi forks a process per task with several workers; a block-wise stage's own task (it
        # writes the stage's record) and the root run in the worker's process instead, and the
        # block groups of every stage in the `workers` persistent processes of a pool.
        started = re.findall(
            r"\[pid (\d+)\] Worker Worker\(.*?pid=(\d+)\) running +([\w.]+)\((.*)\)",
            (tmp_path / "out.zarr.work" / "logs" / "luigi.log").read_text(),
        )
        in_worker = {
            (family, task_pid == worker_pid)
            for task_pid, worker_pid, family, _ in started
            if family.endswith(".stage") or family == "segmentation"
        }
        forked = {(family, task_pid == worker_pid) for task_pid, worker_pid, family, parameters in started if "blocks=" in parameters}
        assert ("supervoxels.stage", True) in in_worker and all(same for _, same in in_worker)
        assert ("supervoxels", False) in forked and not any(same for _, same in forked)
        group_pids = {task_pid for task_pid, _, _, parameters in started if "blocks=" in parameters}
        group_families = {family for _, _, family, parameters in started if "blocks=" in parameters}
        assert len(group_pids) == workers and {"supervoxels", "block_graph", "write_segmentation"} <= group_families, (
            group_pids,
            group_families,
        )


def test_two_run_processes_share_one_luigid_without_doing_a_block_twice(tmp_path, workflow_inputs, reference_segmentation, luigid_port):
    # Every block its own Luigi task, so that the two processes share every block-wise stage, and
    # supervoxel blocks 0.2 s late: on blocks this small, one process had taken every task before
    # the other asked for one in about 1 of 10 runs.
    config = write_config(
        tmp_path / "config.toml",
        workflow_inputs,
        tmp_path / "out.zarr",
        scheduling={"block_groups": NUMBER_OF_BLOCKS},
        supervoxels={"function": "plugin_functions:slow_supervoxels", "seconds": 0.2},
    )
    (tmp_path / "luigi.cfg").write_text(WORKER_CONFIG)
    environment = {
        **os.environ,
        "LUIGI_CONFIG_PATH": str(tmp_path / "luigi.cfg"),
        # The processes import the test plugins (tests/plugin_functions.py) as this one does.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")])),
    }
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emflow.cli.main",
                "run",
                str(config),
                "--workers",
                str(workers),
                "--scheduler-host",
                "127.0.0.1",
                "--scheduler-port",
                str(luigid_port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            cwd=tmp_path,
        )
        for workers in (1, 2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), reference_segmentation)

    journals = sorted(path for path in (tmp_path / "out.zarr.work" / "status").iterdir() if path.is_dir())
    assert len(journals) >= 3, "the run has several block-wise stages"
    for stage in journals:
        records = collections.Counter(
            json.loads(line)["block_id"] for journal in stage.glob("*.jsonl") for line in journal.read_text().splitlines()
        )
        assert records == {block_id: 1 for block_id in range(NUMBER_OF_BLOCKS)}, f"{stage.name}: every block run once"

    # The scheduler's own account, as its visualiser shows it.
    query = urllib.parse.urlencode({"data": json.dumps({"status": "DONE"})})
    with urllib.request.urlopen(f"http://127.0.0.1:{luigid_port}/api/task_list?{query}", timeout=10) as answer:
        done = [
            task for task in json.loads(answer.read())["response"].values() if task["params"].get("config_path") == str(config.resolve())
        ]
    assert any(task["name"] == "segmentation" for task in done)
    # Block groups carry their stage's name and their blocks ("3-4", or "5"), as a person watching reads them.
    groups = [task for task in done if "blocks" in task["params"]]
    assert {task["name"] for task in groups} == {stage.name for stage in journals}
    assert {f"{task['name']}.stage" for task in groups} <= {task["name"] for task in done}

    def blocks(text: str) -> int:
        first, _, last = text.partition("-")
        return int(last or first) - int(first) + 1

    ran_blocks = collections.Counter()
    for task in groups:
        ran_blocks[re.search(r"pid=(\d+)", task["worker_running"]).group(1)] += blocks(task["params"]["blocks"])
    assert sum(ran_blocks.values()) == len(journals) * NUMBER_OF_BLOCKS
    assert set(ran_blocks) == {str(process.pid) for process in processes}, f"both processes ran blocks: {ran_blocks}"


# Two Luigi tasks for the tests of how a process waits for a task that another process runs:
# `Gate` runs until the file `open` appears in its folder, then fails if the file `fail` is there;
# `After` needs it. The script builds the task named by its third argument.
COOPERATION_SCRIPT = """
import json, os, sys, time
from pathlib import Path

import luigi

from emflow.cluster import CentralScheduler
from emflow.cluster.runner import run_tasks


class Gate(luigi.Task):
    folder = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(Path(self.folder) / "gate.done")

    def run(self):
        folder = Path(self.folder)
        (folder / "gate.running").write_text(str(os.getpid()))
        while not (folder / "open").exists():
            time.sleep(0.05)
        if (folder / "fail").exists():
            raise RuntimeError("the gate fails on purpose")
        self.output().open("w").close()


class After(luigi.Task):
    folder = luigi.Parameter()

    def requires(self):
        return Gate(folder=self.folder)

    def output(self):
        return luigi.LocalTarget(Path(self.folder) / "after.done")

    def run(self):
        self.output().open("w").close()


folder, port, root = Path(sys.argv[1]), int(sys.argv[2]), {"Gate": Gate, "After": After}[sys.argv[3]]
log = folder / f"luigi-{os.getpid()}.log"
report = run_tasks([root(folder=str(folder))], CentralScheduler("127.0.0.1", port), failure_dir=folder / "failed", scheduler_log=log)
print(json.dumps({"succeeded": report.succeeded, "luigi_status": report.status}))
"""


def start_cooperating_process(folder: Path, port: int, root: str = "After") -> subprocess.Popen:
    environment = {**os.environ, "LUIGI_CONFIG_PATH": str(folder / "luigi.cfg")}
    return subprocess.Popen(
        [sys.executable, str(folder / "cooperation.py"), str(folder), str(port), root],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=folder,
    )


def scheduling_passes(folder: Path, process: subprocess.Popen) -> list[str]:
    """The lines of the process's Luigi log that end a scheduling pass (one per build)."""
    return [line for line in (folder / f"luigi-{process.pid}.log").read_text().splitlines() if "Done scheduling tasks" in line]


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "root, gate_fails",
    [
        ("After", False),  # the second process waits for a task whose dependency runs elsewhere
        ("Gate", False),  # the second process waits for the very task that runs elsewhere
        ("After", True),
    ],
)
def test_a_process_waits_for_the_tasks_another_process_runs(tmp_path, luigid_port, root, gate_fails):
    (tmp_path / "cooperation.py").write_text(COOPERATION_SCRIPT)
    (tmp_path / "luigi.cfg").write_text(WORKER_CONFIG)
    holder = start_cooperating_process(tmp_path, luigid_port, root)
    waiter = None
    try:
        wait_for(lambda: (tmp_path / "gate.running").exists(), "the first process runs the gate")
        waiter = start_cooperating_process(tmp_path, luigid_port, root)
        # The second process finds nothing it can run now.
        wait_for(
            lambda: (tmp_path / f"luigi-{waiter.pid}.log").exists() and scheduling_passes(tmp_path, waiter),
            "the second process has scheduled",
        )
        time.sleep(1.0)
        assert waiter.poll() is None, "the second process waits instead of ending"
        if gate_fails:
            (tmp_path / "fail").touch()
        (tmp_path / "open").touch()
        results = [json.loads(process.communicate(timeout=60)[0].splitlines()[-1]) for process in (holder, waiter)]
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                process.kill()
    if gate_fails:
        # Luigi would give the failed gate back after [scheduler] retry_delay (15 minutes); till
        # then a worker kept alive by Luigi alone would wait for it.
        assert [result["succeeded"] for result in results] == [False, False]
        assert not (tmp_path / "after.done").exists()
    else:
        # The second process may have run nothing of its own, which Luigi calls NOT_RUN; the run succeeded.
        assert [result["succeeded"] for result in results] == [True, True], results
        assert (tmp_path / f"{root.lower()}.done").exists()
    assert len(scheduling_passes(tmp_path, waiter)) == 1, "the second process waited, not built again"


def test_a_rerun_right_after_a_run_of_the_same_tasks_runs_them_again(tmp_path, luigid_port):
    (tmp_path / "cooperation.py").write_text(COOPERATION_SCRIPT)
    (tmp_path / "luigi.cfg").write_text(WORKER_CONFIG)
    (tmp_path / "open").touch()
    first = start_cooperating_process(tmp_path, luigid_port)
    assert json.loads(first.communicate(timeout=60)[0].splitlines()[-1])["succeeded"]
    first_ended = time.time()
    for output in ("gate.done", "after.done"):
        (tmp_path / output).unlink()
    # luigid still calls both tasks done, and says so for [scheduler] stable_done_cooldown_secs.
    rerun = start_cooperating_process(tmp_path, luigid_port)
    result = json.loads(rerun.communicate(timeout=60)[0].splitlines()[-1])
    assert result["succeeded"], result
    assert (tmp_path / "after.done").exists()
    scheduled = scheduling_passes(tmp_path, rerun)
    # On a machine so busy that the rerun scheduled only after the cooldown, one pass was enough.
    if datetime.strptime(scheduled[0][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - first_ended < 9.0:
        assert len(scheduled) == 2, "the rerun scheduled its tasks again once the cooldown had passed"
