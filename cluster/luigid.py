"""Start, stop and query a luigid central scheduler.

`start_luigid` and `stop_luigid` run one as a child process for the length of a benchmark or test.
`start_scheduler`, `stop_scheduler` and `scheduler_status` manage a long-lived one for
`emflow scheduler start|stop|status`, detached from the terminal, described by a state folder:

    luigid.pid          process id of the running luigid (removed when it is stopped)
    scheduler.json      its process id, host and port (removed when it is stopped)
    luigid.out          its standard output and error
    luigi-server.log    its log
    state.pickle        its task state, saved when it stops and read again when it starts
    luigi.cfg           (optional, the user's) its Luigi config: it runs in the state folder
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "emflow-scheduler"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8082
PID_FILE = "luigid.pid"
ADDRESS_FILE = "scheduler.json"
OUTPUT_FILE = "luigid.out"
# The task statuses counted by `scheduler_status` (luigi.task_status, less the rare and deprecated ones).
TASK_STATUSES = ("PENDING", "RUNNING", "DONE", "FAILED", "DISABLED")
# Any host: a client on the scheduler's own machine reaches it on the loopback address.
_ANY_HOST = ("", "0.0.0.0", "::")


class SchedulerError(RuntimeError):
    """A scheduler could not be started or stopped as asked; the message says why."""


@dataclass(frozen=True)
class SchedulerState:
    """The luigid named by a state folder, as found in the running processes.

    `task_counts` holds the scheduler's tasks by status (from its /api/task_list), None when it is
    not running or did not answer. `note` tells of anything found on the way (a stale pid file).
    """

    state_dir: Path
    running: bool
    pid: int | None = None
    host: str | None = None
    port: int | None = None
    task_counts: dict[str, int] | None = None
    note: str = ""

    @property
    def reachable_host(self) -> str | None:
        """The host name to reach the scheduler by (for `emflow run --scheduler-host`)."""
        return socket.getfqdn() if self.host in _ANY_HOST else self.host

    @property
    def url(self) -> str | None:
        """The address of luigid's visualiser."""
        return None if self.port is None else f"http://{self.reachable_host}:{self.port}/"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on `host` that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_luigid(
    state_dir: str | Path, *, host: str = DEFAULT_HOST, port: int | None = None, timeout: float = 30.0
) -> tuple[subprocess.Popen, int]:
    """Start luigid as a child process listening on `host:port` (a free port if None), with its
    output, log and state in `state_dir`; return the process and the port once it answers."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    server = _launch(state_dir, host, port, detached=False)
    _wait_until_answering(server, state_dir, host, port, timeout)
    return server, port


def stop_luigid(pid: int, timeout: float = 30.0) -> None:
    """Stop the luigid with process id `pid` (SIGTERM, then SIGKILL after `timeout` seconds).

    On SIGTERM luigid saves its task state and exits.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_for_exit(pid, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_for_exit(pid, timeout)


def start_scheduler(
    state_dir: str | Path = DEFAULT_STATE_DIR, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 30.0
) -> SchedulerState:
    """Start a luigid that outlives this process (in a session of its own), described by `state_dir`.

    Returns its state once it answers HTTP requests. Raises SchedulerError when the pid file of
    `state_dir` names a running luigid, when `host:port` is taken, or when luigid does not come up
    within `timeout` seconds. A pid file naming no running luigid is replaced (see the state's note).
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    current = scheduler_status(state_dir, ask_for_tasks=False)
    if current.running:
        raise SchedulerError(
            f"a scheduler is already running from {state_dir} (pid {current.pid}, {current.url}); "
            f"stop it first with `emflow scheduler stop --state-dir {state_dir}`"
        )
    _check_port_is_free(host, port)
    server = _launch(state_dir, host, port, detached=True)
    # luigid writes --pidfile only when it daemonizes itself (--background: luigi/cmdline.py, `luigid`;
    # luigi/process.py, `daemonize`), and then its pid is known only once written; started here in
    # the foreground of a session of its own, its pid is that of the process just started.
    (state_dir / ADDRESS_FILE).write_text(json.dumps({"pid": server.pid, "host": host, "port": port}))
    (state_dir / PID_FILE).write_text(f"{server.pid}\n")
    try:
        _wait_until_answering(server, state_dir, host, port, timeout)
    except SchedulerError:
        _remove_state_files(state_dir)
        raise
    return SchedulerState(state_dir, True, server.pid, host, port, note=current.note)


def stop_scheduler(state_dir: str | Path = DEFAULT_STATE_DIR, *, timeout: float = 30.0) -> SchedulerState:
    """Stop the luigid of `state_dir` by the pid in its pid file (SIGTERM, then SIGKILL after
    `timeout` seconds) and remove the pid file. Returns the state it had: `running` False when
    there was none to stop (a stale pid file is removed all the same)."""
    state_dir = Path(state_dir).resolve()
    current = scheduler_status(state_dir, ask_for_tasks=False)
    if current.running:
        stop_luigid(current.pid, timeout)
        if _is_running_luigid(current.pid):
            raise SchedulerError(f"luigid (pid {current.pid}) did not stop; see {state_dir / OUTPUT_FILE}")
    _remove_state_files(state_dir)
    return current


def scheduler_status(state_dir: str | Path = DEFAULT_STATE_DIR, *, ask_for_tasks: bool = True, timeout: float = 10.0) -> SchedulerState:
    """Whether the luigid of `state_dir` runs, where it listens, and (with `ask_for_tasks`) how many
    tasks it knows by status."""
    state_dir = Path(state_dir).resolve()
    pid_path = state_dir / PID_FILE
    if not pid_path.exists():
        return SchedulerState(state_dir, False)
    try:
        pid = int(pid_path.read_text().strip())
    except ValueError:
        return SchedulerState(state_dir, False, note=f"unreadable pid file {pid_path} (no process id in it)")
    if not _is_running_luigid(pid):
        return SchedulerState(state_dir, False, pid, note=f"stale pid file {pid_path}: no luigid runs with pid {pid}")
    address = _read_address(state_dir)
    host, port = address.get("host"), address.get("port")
    counts = None
    if ask_for_tasks and port is not None:
        try:
            counts = task_counts(host, port, timeout=timeout)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as error:
            return SchedulerState(state_dir, True, pid, host, port, note=f"luigid (pid {pid}) does not answer on {host}:{port}: {error}")
    return SchedulerState(state_dir, True, pid, host, port, counts)


def task_counts(host: str, port: int, timeout: float = 10.0) -> dict[str, int]:
    """How many tasks the scheduler at `host:port` knows, by status (zeros included)."""
    counts = {}
    for status in TASK_STATUSES:
        # With its default limit, luigid answers with a count alone where there are more tasks than
        # it would list ([scheduler] max_shown_tasks).
        answer = _api(host, port, "task_list", {"status": status, "upstream_status": ""}, timeout)
        counts[status] = answer["num_tasks"] if set(answer) == {"num_tasks"} else len(answer)
    return counts


def _api(host: str, port: int, method: str, arguments: dict, timeout: float):
    """Call luigid's HTTP API (GET /api/<method>?data=<JSON>) and return its response."""
    host = DEFAULT_HOST if host in _ANY_HOST else host
    query = urllib.parse.urlencode({"data": json.dumps(arguments)})
    with urllib.request.urlopen(f"http://{host}:{port}/api/{method}?{query}", timeout=timeout) as answer:
        return json.loads(answer.read())["response"]


def _launch(state_dir: Path, host: str, port: int, *, detached: bool) -> subprocess.Popen:
    with open(state_dir / OUTPUT_FILE, "ab") as output:
        return subprocess.Popen(
            # luigid's entry point run by this interpreter, so nothing depends on PATH.
            [
                sys.executable,
                "-c",
                "from luigi.cmdline import luigid; luigid()",
                "--address",
                host,
                "--port",
                str(port),
                "--logdir",
                str(state_dir),
                "--state-path",
                str(state_dir / "state.pickle"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # Where Luigi looks for luigi.cfg: a config in the state folder configures the scheduler.
            cwd=state_dir,
            # A session of its own: no signal from the terminal (Ctrl-C, hang-up) reaches it.
            start_new_session=detached,
        )


def _wait_until_answering(server: subprocess.Popen, state_dir: Path, host: str, port: int, timeout: float) -> None:
    """Wait until `server` answers on `host:port`; stop it and raise SchedulerError if it does not
    within `timeout` seconds, or exits."""
    deadline = time.monotonic() + timeout
    while True:
        # An answer from the API, not an open port alone: another program might hold the port.
        try:
            _api(host, port, "task_list", {"status": "RUNNING"}, timeout=2)
            if server.poll() is None:
                return
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_luigid(server.pid)
            log = (state_dir / OUTPUT_FILE).read_text(errors="replace").strip().splitlines()[-5:]
            raise SchedulerError(f"luigid did not start on {host}:{port}; the end of {state_dir / OUTPUT_FILE}:\n  " + "\n  ".join(log))
        time.sleep(0.1)


def _check_port_is_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        # As luigid (tornado) binds: a port left in TIME_WAIT by an earlier scheduler is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SchedulerError(
                f"cannot listen on {host}:{port} ({error.strerror}): another program uses the port; choose another with --port"
            ) from None


def _read_address(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / ADDRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _remove_state_files(state_dir: Path) -> None:
    for name in (PID_FILE, ADDRESS_FILE):
        (state_dir / name).unlink(missing_ok=True)


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for process `pid` to end; whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its end instead
            finished = 0 if _alive(pid) else pid
        if finished:
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie waiting to be reaped has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        # /proc/<pid>/stat: "pid (name) state ..."; the name may hold spaces and parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_running_luigid(pid: int) -> bool:
    """Whether `pid` is a running luigid (not another program that got the number of a dead one)."""
    if not _alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc: trust the pid file
        return True
    return b"luigid" in command
