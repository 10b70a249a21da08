"""Run tasks on a SLURM cluster: a job array of workers that pull tasks from one central scheduler.

The submitting process starts a luigid for the run (unless it is given one), writes an sbatch
script into the work folder, submits it as a job array and waits for the array's tasks with
`squeue`, printing progress. Its report tells the truth about the outcome: the run succeeded only if
every task is complete *and* every array task ended COMPLETED. This is the only module that knows
SLURM's commands (sbatch, squeue, sacct, scancel); it passes this process's environment through to
them (SLURM_CONF included) and, with `--export=ALL`, to the jobs.

Each array task builds the same tasks against the central scheduler, which hands every task to
one worker; a worker waits for the tasks the others run and ends when none is left or one failed
(`runner.CooperatingWorker`). A job that ends early (cancelled, time limit) leaves its running
task to luigid, which counts it as failed once it misses the worker (`[scheduler]
worker_disconnect_delay`, checked every minute): then the other workers end too.

Files, under the work folder:

    slurm/workers.sbatch       the job script last submitted
    logs/slurm/<job>_<i>.out   standard output and error of array task i
    scheduler/                 the run's own luigid: its output, log and saved state
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import luigi

from emflow.errors import UserError

from .backends import UNKNOWN_STATE, ArrayTaskState, RunReport, Slurm, SlurmOptions, check_reachable
from .luigid import start_luigid, stop_luigid
from .progress import ProgressThread, StageProgress
from .runner import collect_failures


class SubmissionError(UserError):
    """The jobs could not be submitted (sbatch refused them, or no scheduler to connect them to);
    nothing runs. The message says why."""


def run_on_slurm(
    tasks: Sequence[luigi.Task],
    backend: Slurm,
    *,
    worker_command: Sequence[str],
    work_dir: Path,
    failure_dir: Path,
    scheduler_log: Path,
    job_name: str,
    progress: Callable[[], Sequence[StageProgress]],
    poll_interval: float = 5.0,
) -> RunReport:
    """Build `tasks` with `options.jobs` SLURM array tasks, each running `worker_command` completed
    with `--scheduler-host H --scheduler-port P`, and wait until all of them have ended.

    The workers connect to the luigid at `backend.scheduler_host:scheduler_port`; with no
    `scheduler_host`, a luigid is started for the run on `listen_address` (default: this host's
    name), which the compute nodes must reach, and stopped at the end. Progress (`progress()`, see
    `emflow.cluster.progress`, and the array tasks' states, polled every `poll_interval` seconds)
    goes to stderr. Ctrl-C (or any error while waiting) cancels the jobs.
    """
    options = backend.options
    started = time.time()
    log_dir = work_dir / "logs" / "slurm"
    log_dir.mkdir(parents=True, exist_ok=True)
    luigid_pid = None
    scheduler_host, scheduler_port = backend.scheduler_host, backend.scheduler_port
    if scheduler_host is None:
        scheduler_host = backend.listen_address or socket.getfqdn()
        luigid_pid, scheduler_port = _start_run_scheduler(work_dir / "scheduler", scheduler_host)
    else:
        check_reachable(scheduler_host, scheduler_port)
    try:
        command = [*worker_command, "--scheduler-host", scheduler_host, "--scheduler-port", str(scheduler_port)]
        script = _write_job_script(work_dir / "slurm" / "workers.sbatch", command, options, job_name, log_dir)
        job_id = _submit(script)
        print(
            f"emflow: submitted SLURM job array {job_id} (array tasks: {options.jobs}, CPUs each: {options.cpus}; script {script}); "
            f"logs: {log_dir / f'{job_id}_<task>.out'}; scheduler {scheduler_host}:{scheduler_port}",
            file=sys.stderr,
            flush=True,
        )
        reporter = None
        try:
            reporter = ProgressThread(progress)
            array_tasks = _wait(job_id, options.jobs, reporter.display.note, poll_interval)
        except BaseException:
            # The workers would outlive this process (and lose the scheduler it may have started).
            _cancel(job_id)
            if reporter is not None:
                reporter.stop()
            print(f"emflow: cancelled SLURM job array {job_id}", file=sys.stderr, flush=True)
            raise
        reporter.stop()
    finally:
        if luigid_pid is not None:
            stop_luigid(luigid_pid)
    return RunReport(
        complete=all(task.complete() for task in tasks),
        status="SLURM",
        scheduler_log=scheduler_log,
        failures=collect_failures(failure_dir, since=started),
        seconds=time.time() - started,
        job_id=job_id,
        array_tasks=array_tasks,
        log_dir=log_dir,
    )


def _start_run_scheduler(scheduler_dir: Path, host: str) -> tuple[int, int]:
    """Start the run's own luigid on `host` (a free port); return its process id and port."""
    # luigid reads the task states it saved when it stopped; those of an earlier run (its failed
    # tasks above all, which end the workers) must not outlive it: whether a task is done is read
    # from the task's outputs.
    (scheduler_dir / "state.pickle").unlink(missing_ok=True)
    try:
        server, port = start_luigid(scheduler_dir, host=host)
    except (OSError, RuntimeError) as error:
        raise SubmissionError(
            f"cannot start the run's scheduler on {host}: {error}. Give an address of this machine that the compute "
            "nodes reach with --listen-address, or a running scheduler with --scheduler-host"
        ) from None
    return server.pid, port


def _write_job_script(path: Path, command: Sequence[str], options: SlurmOptions, job_name: str, log_dir: Path) -> Path:
    directives = {
        "job-name": job_name,
        "array": f"0-{options.jobs - 1}",
        # sbatch expands %A (array job id) and %a (task index); a literal % is written %%.
        "output": str(log_dir).replace("%", "%%") + "/%A_%a.out",
        "cpus-per-task": str(options.cpus),
        # The workers need this environment: the same Python, PYTHONPATH for plugins, SLURM_CONF.
        "export": "ALL",
        "partition": options.partition,
        "time": options.time,
        "mem": options.memory,
    }
    lines = ["#!/bin/bash"]
    lines += [f'#SBATCH --{name}="{value}"' for name, value in directives.items() if value is not None]
    lines += [
        "# Written by `emflow run --slurm`: each array task is one worker that pulls tasks from the central",
        "# scheduler until none are left.",
        "exec " + shlex.join(command),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _submit(script: Path) -> str:
    """Submit `script` with sbatch; return the job id."""
    completed = _slurm_command(["sbatch", "--parsable", str(script)])
    if completed.returncode != 0:
        raise SubmissionError(f"sbatch refused {script}: {completed.stderr.strip() or completed.stdout.strip()}")
    # --parsable prints "<job id>" or "<job id>;<cluster>".
    return completed.stdout.strip().split(";")[0]


def _cancel(job_id: str) -> None:
    _slurm_command(["scancel", job_id])


def _slurm_command(arguments: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(arguments, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SubmissionError(f"{arguments[0]} not found: --slurm needs SLURM's commands (sbatch, squeue, scancel) on PATH") from None
    except subprocess.TimeoutExpired:
        # An overloaded controller: for squeue, no answer this time.
        return subprocess.CompletedProcess(arguments, 1, "", f"{arguments[0]} did not answer within 120 s")


def _wait(job_id: str, jobs: int, note: Callable[[str], None], poll_interval: float) -> list[ArrayTaskState]:
    """Poll the array's tasks until all have ended; `note` their states ("jobs: 1 PENDING, 1 RUNNING")."""
    last_seen: dict[int, ArrayTaskState] = {index: ArrayTaskState(index, "PENDING") for index in range(jobs)}
    while True:
        listed = _queued_states(job_id)
        if listed is not None:
            for index in range(jobs):
                if index in listed:
                    last_seen[index] = listed[index]
                elif not last_seen[index].ended:
                    # Gone from the queue unseen: cancelled while pending, or its record expired.
                    last_seen[index] = _accounted_state(job_id, index)
        note(f"jobs: {_state_counts(last_seen.values())}")
        if all(task.ended for task in last_seen.values()):
            return [last_seen[index] for index in range(jobs)]
        time.sleep(poll_interval)


def _queued_states(job_id: str) -> dict[int, ArrayTaskState] | None:
    """The array's tasks that slurmctld still knows (ended ones for MinJobAge seconds), by index;
    None when squeue did not answer (a busy controller: ask again later)."""
    completed = _slurm_command(
        ["squeue", "--noheader", "--array", "--states=all", f"--jobs={job_id}", "--Format=ArrayTaskID:|,State:|,exit_code:|"]
    )
    if completed.returncode != 0:
        # Once all of the array's records have expired, squeue knows no such job.
        return {} if "Invalid job id" in completed.stderr else None
    states = {}
    for line in completed.stdout.splitlines():
        index, state, wait_status = line.split("|")[:3]
        if index.isdigit():
            # squeue's exit_code is the wait status: exit code in the high byte, signal in the low bits.
            status = int(wait_status) if wait_status.isdigit() else 0
            states[int(index)] = ArrayTaskState(int(index), state, status >> 8, status & 0x7F)
    return states


def _accounted_state(job_id: str, index: int) -> ArrayTaskState:
    """How array task `index` ended according to SLURM's accounting (sacct), or UNKNOWN where the
    cluster keeps none."""
    completed = _slurm_command(
        ["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}_{index}", "--format=State,ExitCode"]
    )
    # One line such as "CANCELLED by 1000|0:15" (state, then exit code:signal); nothing without accounting.
    match = re.match(r"(\w+)[^|\n]*\|(\d+):(\d+)", completed.stdout.strip()) if completed.returncode == 0 else None
    if match is None:
        return ArrayTaskState(index, UNKNOWN_STATE)
    return ArrayTaskState(index, match.group(1), int(match.group(2)), int(match.group(3)))


def _state_counts(states) -> str:
    counts: dict[str, int] = {}
    for task in states:
        counts[task.state] = counts.get(task.state, 0) + 1
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
