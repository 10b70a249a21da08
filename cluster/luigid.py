"""Start and stop a luigid central scheduler (used by benchmarks and tests; the CLI builds on it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_luigid(state_dir: str | Path, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0) -> tuple[subprocess.Popen, int]:
    """Start luigid listening on `host:port` (a free port if None) with its pid file, logs and state in
    `state_dir`; return the process and the port once it accepts connections."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    with open(state_dir / "luigid.out", "ab") as output:
        server = subprocess.Popen(
            # luigid's entry point run by this interpreter, so nothing depends on PATH.
            [sys.executable, "-c", "from luigi.cmdline import luigid; luigid()", "--address", host, "--port", str(port),
             "--pidfile", str(state_dir / "luigid.pid"), "--logdir", str(state_dir), "--state-path", str(state_dir / "state.pickle")],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_luigid(server.pid)
                raise RuntimeError(f"luigid did not start on {host}:{port}; see {state_dir / 'luigid.out'}")
            time.sleep(0.1)


def stop_luigid(pid: int, timeout: float = 30.0) -> None:
    """Stop the luigid with process id `pid` (SIGTERM, then SIGKILL after `timeout` seconds)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its end instead
            finished = 0 if _alive(pid) else pid
        if finished:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
