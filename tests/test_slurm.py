"""`emflow run --slurm` on a real single-node SLURM cluster started for this module.

The cluster (munged, slurmctld, slurmd) runs from a temporary folder with its own slurm.conf,
munge key and socket, on free ports of 127.0.0.1, and is stopped by process id at the end. Every
SLURM command, the backend's included, finds it through SLURM_CONF in the environment. The SLURM
and munge daemons come from Debian's `slurm-wlm` and `munge` packages, which `.ci/run` installs.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from system_programs import SEARCH_PATH, require_programs
from workflow_helpers import read, run_cli, write_config

from emflow.cluster.luigid import free_port, start_luigid, stop_luigid

TESTS_DIR = Path(__file__).resolve().parent
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo")


@dataclass
class SlurmCluster:
    """A running single-node cluster, as the environment that reaches it (SLURM_CONF, PATH)."""

    env: dict[str, str]

    def command(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(arguments, env=self.env, capture_output=True, text=True, timeout=60, check=check)


def _slurm_conf(folder: Path, munge_socket: Path) -> str:
    user = getpass.getuser()
    return f"""\
ClusterName=emflowtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "log" / "slurmctld.log"}
SlurmdLogFile={folder / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
# Ended jobs stay known to squeue for an hour (there is no accounting database to ask).
MinJobAge=3600
# A cancelled job's processes get SIGKILL 5 s after SIGTERM.
KillWait=5
# At least two CPUs, so that two jobs run side by side on any machine: the node is taken as
# configured, not as slurmd finds the hardware.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs={max(2, os.cpu_count() or 1)} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    require_programs("the SLURM tests", DAEMONS + COMMANDS, "apt-get install slurm-wlm munge")
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("munge", "state", "spool", "log"):
        (folder / name).mkdir()
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = folder / "munge" / "munge.socket"
    (folder / "slurm.conf").write_text(_slurm_conf(folder, munge_socket))
    env = {
        **os.environ,
        "PATH": SEARCH_PATH,
        "SLURM_CONF": str(folder / "slurm.conf"),
        # The jobs import the test plugins (tests/plugin_functions.py) as the submitter does.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])),
    }
    daemons: list[subprocess.Popen] = []

    def start(*command: str) -> None:
        # In the foreground (no daemonizing), so that each is the process started here, stopped by its id.
        with open(folder / "log" / "daemons.out", "ab") as output:
            daemons.append(subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT))

    try:
        munge = folder / "munge"
        # --force: munged refuses to run as root otherwise.
        start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={folder / 'log' / 'munged.log'}",
        )
        _wait_for(munge_socket.exists, "munged to create its socket", folder, daemons)
        start("slurmctld", "-D", "-f", env["SLURM_CONF"])
        start("slurmd", "-D", "-f", env["SLURM_CONF"], "-N", "localhost")
        cluster = SlurmCluster(env)
        _wait_for(
            lambda: cluster.command("sinfo", "--noheader", "--format=%t", check=False).stdout.strip() == "idle",
            "the node to be idle",
            folder,
            daemons,
        )
        yield cluster
        # Jobs a failed test left behind would keep their processes after slurmd is gone.
        cluster.command("scancel", f"--user={getpass.getuser()}", check=False)
        _wait_for(lambda: not cluster.command("squeue", "--noheader", check=False).stdout.strip(), "the queue to empty", folder, daemons)
    finally:
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _wait_for(condition, what: str, folder: Path, daemons: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [daemon.args[0] for daemon in daemons if daemon.poll() is not None]
        if ended or time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                for path in sorted((folder / "log").iterdir())
            )
            pytest.fail(f"waiting for {what}: {'ended: ' + ', '.join(ended) if ended else 'timed out'}\n{logs}")
        time.sleep(0.2)


@pytest.fixture
def on_cluster(slurm_cluster, monkeypatch) -> SlurmCluster:
    """The cluster, with this process's environment set to use it (for the CLI run in-process)."""
    for name in ("PATH", "SLURM_CONF", "PYTHONPATH"):
        monkeypatch.setenv(name, slurm_cluster.env[name])
    return slurm_cluster


def _job_id(stderr: str) -> str:
    match = re.search(r"submitted SLURM job array (\d+)", stderr)
    assert match, stderr
    return match.group(1)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_slurm_run_equals_a_local_run(on_cluster, workflow_inputs, reference_segmentation, tmp_path, capsys):
    config = write_config(tmp_path / "slurm.toml", workflow_inputs, tmp_path / "slurm.zarr")
    exit_code = run_cli("run", config, "--slurm", "--jobs", "2", "--cpus", "1", "--listen-address", "127.0.0.1")
    stderr = capsys.readouterr().err
    assert exit_code == 0, stderr
    assert np.array_equal(read(tmp_path / "slurm.zarr", "segmentation"), reference_segmentation)
    job_id = _job_id(stderr)
    # Not a terminal: timestamped lines, among them the last stage's end and the array's.
    progress = [line for line in stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    assert any(re.search(r" write_segmentation done: 8 blocks( in |$)", line) for line in progress), stderr
    assert any(line.endswith(" jobs: 2 COMPLETED") for line in progress), stderr
    work_dir = tmp_path / "slurm.zarr.work"
    script = (work_dir / "slurm" / "workers.sbatch").read_text()
    assert '#SBATCH --array="0-1"' in script and f"exec {sys.executable} -m emflow.cli.main run {config} --workers 1" in script
    for index in (0, 1):
        assert "emflow: run complete" in (work_dir / "logs" / "slurm" / f"{job_id}_{index}.out").read_text()
    scheduler = re.search(r"scheduler (\S+):(\d+)", stderr)
    assert not _listening(scheduler.group(1), int(scheduler.group(2))), "the run's own luigid is stopped at the end"


def test_bad_input_exits_2_before_anything_is_submitted(on_cluster, workflow_inputs, tmp_path, capsys):
    config = write_config(tmp_path / "bad.toml", tmp_path / "missing.zarr", tmp_path / "bad.zarr")
    assert run_cli("run", config, "--slurm", "--jobs", "2", "--listen-address", "127.0.0.1") == 2
    stderr = capsys.readouterr().err
    assert "missing.zarr" in stderr and "submitted" not in stderr
    assert not on_cluster.command("squeue", "--noheader").stdout.strip()
    config = write_config(tmp_path / "good.toml", workflow_inputs, tmp_path / "good.zarr")
    assert run_cli("run", config, "--slurm", "--partition", "no-such-partition", "--listen-address", "127.0.0.1") == 2
    assert "sbatch refused" in capsys.readouterr().err
    assert run_cli("run", config, "--slurm", "--scheduler-host", "127.0.0.1", "--scheduler-port", free_port()) == 2
    assert "no central scheduler answers on 127.0.0.1" in capsys.readouterr().err
    assert run_cli("run", config, "--jobs", "2") == 2
    assert "--jobs only apply with --slurm" in capsys.readouterr().err
    assert not on_cluster.command("squeue", "--noheader").stdout.strip()


def test_failed_blocks_and_job_logs_are_reported(on_cluster, workflow_inputs, tmp_path, capsys):
    config = write_config(
        tmp_path / "failing.toml",
        workflow_inputs,
        tmp_path / "failing.zarr",
        supervoxels={"function": "plugin_functions:failing_supervoxels"},
    )
    exit_code = run_cli("run", config, "--slurm", "--jobs", "2", "--listen-address", "127.0.0.1")
    stderr = capsys.readouterr().err
    assert exit_code == 1, stderr
    job_id = _job_id(stderr)
    log_dir = tmp_path / "failing.zarr.work" / "logs"
    for index in (0, 1):
        assert f"array task {job_id}_{index} FAILED (exit code 1)\n    log: {log_dir / 'slurm' / f'{job_id}_{index}.out'}" in stderr
    for block_id in range(8):
        assert (
            f"supervoxels block {block_id}: RuntimeError: failing_supervoxels fails on purpose\n    log: {log_dir / 'supervoxels' / f'{block_id}.log'}"
            in stderr
        )


def test_a_cancelled_job_is_reported_and_the_run_resumes(
    on_cluster, workflow_inputs, reference_segmentation, tmp_path, monkeypatch, capsys
):
    # A luigid of the lab's own (`--scheduler-host`), set to notice a lost worker within seconds
    # (Luigi's defaults: within two minutes), so that the other job ends soon after the cancelled one.
    scheduler_dir = tmp_path / "scheduler"
    scheduler_dir.mkdir()
    (scheduler_dir / "luigi.cfg").write_text("[scheduler]\nworker_disconnect_delay = 5\nprune_on_get_work = true\n")
    with monkeypatch.context() as patch:
        patch.setenv("LUIGI_CONFIG_PATH", str(scheduler_dir / "luigi.cfg"))
        server, port = start_luigid(scheduler_dir)
    try:
        # Supervoxel blocks of 1 s each (block groups of 2 s), so that both jobs are caught working.
        config = write_config(
            tmp_path / "cancelled.toml",
            workflow_inputs,
            tmp_path / "cancelled.zarr",
            supervoxels={"function": "plugin_functions:slow_supervoxels", "seconds": 1.0},
        )
        run = ["run", config, "--slurm", "--scheduler-host", "127.0.0.1", "--scheduler-port", port]
        with ThreadPoolExecutor(1) as executor:
            submission = executor.submit(run_cli, *run, "--jobs", 2)
            deadline = time.monotonic() + 90
            while len(_running_tasks(port)) < 2:
                assert not submission.done() and time.monotonic() < deadline, capsys.readouterr().err
                time.sleep(0.2)
            # Each job runs one task at a time: array task 1 is running one of the two.
            job_id = on_cluster.command("squeue", "--noheader", "--format=%F").stdout.split()[0]
            on_cluster.command("scancel", f"{job_id}_1")
            exit_code = submission.result(timeout=120)
        report = capsys.readouterr().err
        assert exit_code == 1, report
        log = tmp_path / "cancelled.zarr.work" / "logs" / "slurm" / f"{job_id}_1.out"
        assert f"array task {job_id}_1 CANCELLED (signal 15)\n    log: {log}" in report
        assert "CANCELLED AT" in log.read_text(), "SLURM's own word on the cancellation is in the job's log"
        # What the cancelled job left undone, the task it was running among it, another submission does.
        assert run_cli(*run) == 0
    finally:
        stop_luigid(server.pid)
    assert np.array_equal(read(tmp_path / "cancelled.zarr", "segmentation"), reference_segmentation)


def test_ctrl_c_cancels_the_jobs(on_cluster, workflow_inputs, tmp_path):
    config = write_config(
        tmp_path / "interrupted.toml",
        workflow_inputs,
        tmp_path / "interrupted.zarr",
        supervoxels={"function": "plugin_functions:slow_supervoxels"},
    )
    stderr_path = tmp_path / "submitter.err"
    submitter = _submit_in_background(on_cluster, stderr_path, "run", config, "--slurm", "--jobs", 2, "--listen-address", "127.0.0.1")
    try:
        deadline = time.monotonic() + 60
        while "submitted SLURM job array" not in stderr_path.read_text():
            assert submitter.poll() is None and time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.2)
    finally:
        # Ctrl-C once the jobs are submitted (or as soon as the wait for them failed).
        _interrupt(submitter)
    assert submitter.returncode == 130, stderr_path.read_text()
    report = stderr_path.read_text()
    job_id = _job_id(report)
    assert f"emflow: cancelled SLURM job array {job_id}" in report and "interrupted" in report
    while on_cluster.command("squeue", "--noheader", f"--jobs={job_id}", check=False).stdout.strip():
        assert time.monotonic() < deadline + 30, "the jobs were not cancelled"
        time.sleep(0.2)
    scheduler = re.search(r"scheduler (\S+):(\d+)", report)
    assert not _listening(scheduler.group(1), int(scheduler.group(2))), "the run's own luigid is stopped"


def _submit_in_background(cluster: SlurmCluster, stderr_path: Path, *arguments) -> subprocess.Popen:
    """The emflow command line in a process of its own (as a user runs it), its stderr to `stderr_path`."""
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "emflow.cli.main", *map(str, arguments)], env=cluster.env, stderr=stderr)


def _interrupt(process: subprocess.Popen) -> None:
    """Ctrl-C for `process`, unless it has ended, and wait for it to end."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    process.wait(timeout=60)


def _running_tasks(port: int) -> dict:
    """The tasks luigid at 127.0.0.1:`port` has running now (its HTTP API; {} until it answers)."""
    query = urllib.parse.urlencode({"data": json.dumps({"status": "RUNNING", "upstream_status": ""})})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/task_list?{query}", timeout=5) as answer:
            return json.loads(answer.read())["response"]
    except OSError:
        return {}
