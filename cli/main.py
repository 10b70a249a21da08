"""`emflow run | predict | rerun | train | train-edges | status | verify | clean | scheduler | config defaults | config training-defaults | config edge-training-defaults | import | evaluate | demo`.

Exit codes: 0 success; 1 a task failed (the failed blocks and their logs are named); 2 bad input,
config or output (one message naming the problem, nothing written); 74 the run could not write
(no space left, a read-only file system, no permission: one line names the file and the cause;
run again once fixed, it resumes); 75 another run with the local scheduler is working on the same
output (nothing done; try again later).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path


@contextlib.contextmanager
def _importing(optional: Sequence[str] = ()):
    """A block that imports modules. The cyclic garbage collector waits until its end, and what
    the block imported is then moved out of its sight (`gc.freeze`); `import NAME` of each
    `optional` module not yet imported fails (ImportError) within it, as if it were not
    installed, and imports as usual afterwards (a plugin may use it).

    Importing creates about 90,000 objects that live as long as the process (modules, classes,
    functions) and no garbage. Collections while importing took 30 ms of the 0.27 s that importing
    this module and workflows.run took, and every full collection after it went through them all
    again: 300,000 small dicts made after the imports took 212 ms, 137 ms with them frozen
    (medians of 5, 2-core VM). A run's start (`run_phases`' before_tasks in
    benchmarks/reprocessing.py) went from 0.44 to 0.40 s. Freezing only when the block imported
    something keeps a process that calls `main` again and again (the tests) from freezing its own
    objects at every call. (Not `emflow.targets.collection.garbage_collection_paused`: its
    package imports luigi, which must come after the optional modules are blocked.)"""
    blocked = [name for name in optional if name not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked, None))
    imported_before = len(sys.modules)
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > imported_before:
            gc.freeze()
        if collecting:
            gc.enable()
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


# Luigi and zarr import packages they can do without when they are installed: requests (luigi's
# HTTP client for a central scheduler; without it luigi.rpc talks to luigid with urllib, as it
# does wherever requests is missing), jsonschema (luigi's DictParameter schemas, which emflow's
# tasks have none of), tornado (through tenacity, for retries of tornado coroutines; luigid,
# which serves with tornado, runs in its own process) and fsspec (zarr's remote stores; emflow
# reads and writes local paths). They took 80 ms of every command's 0.33 s of imports (medians
# of 6, 2-core VM), a fifth of `emflow status` and of a cron tick with nothing new.
with _importing(optional=("requests", "requests_unixsocket", "jsonschema", "tornado", "fsspec")):
    # numpy first, before what a command imports through emflow.cluster (luigi, then zarr, which
    # imports numpy): importing this module and workflows.run took 0.42 s, 14,600 page faults, with
    # numpy where zarr first needs it, 0.36 s, 12,600 faults, with it here (medians of 5, 2-core VM).
    import numpy  # noqa: F401

    from emflow.cluster.luigid import DEFAULT_PORT

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# sysexits.h's EX_IOERR: a run that could not write (space, permission) and stopped.
EXIT_CANNOT_WRITE = 74
# sysexits.h's EX_TEMPFAIL: "try again later", for a run that found another one working on its output.
EXIT_RUN_IN_PROGRESS = 75


def command() -> None:
    """The `emflow` command (and `python -m emflow`): `main`, then exit with its code without the
    interpreter's teardown.

    Tearing down the modules a run imports (luigi, zarr, scipy, scikit-image, ...) one object at
    a time took 0.22 s of every command, median of 8 (1.19 against 0.97 s for importing them and
    exiting), a fifth of a no-op rerun. The process ends as the interpreter would have ended it
    otherwise: other threads are waited for, exit handlers run (log files are flushed and closed
    there), then the standard streams are flushed.
    """
    code = main(started=_process_started())
    if sys.getprofile() is not None or sys.gettrace() is not None:
        # Under a profiler or tracer (`python -m cProfile -m emflow ...`), which writes what it
        # found after the program returns: exit as usual.
        sys.exit(code)
    # Both are what Py_FinalizeEx does before it tears down the modules; `threading._shutdown`
    # (private, present since Python 3.4) also stops idle thread pools, as zarr's.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass  # a closed pipe or a full disk: nothing more can be said, and the code stands
    os._exit(code)


def main(argv: list[str] | None = None, *, started: float | None = None) -> int:
    """Run the command line `argv` (default: the process's arguments); its exit code.

    `started`: the `time.monotonic()` reading at which the command began (default: now), from
    which the end of a run counts the seconds it reports."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _QuietStream(sys.stdout), _QuietStream(sys.stderr)
    try:
        return _main(argv, time.monotonic() if started is None else started)
    finally:
        sys.stdout, sys.stderr = streams


def _process_started() -> float:
    """The `time.monotonic()` reading at which this process started, from /proc (Linux); now
    where that cannot be read. A run's "complete in" then counts the interpreter's start and the
    imports (0.5-0.7 s here) besides the checks and the build."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            # Field 22, start time in clock ticks after boot; the command name before it may hold spaces.
            start_ticks = int(stat.read().rpartition(b")")[2].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(age, 0.0)


class _QuietStream:
    """stdout or stderr ignoring writes that fail for want of space or permission (output
    redirected to a file on the full disk the run stopped on): what emflow says is lost then, but
    not the run, nor its exit code."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        from emflow.targets.atomic import CANNOT_WRITE_ERRNOS

        try:
            return self._stream.write(text)
        except OSError as error:
            if error.errno not in CANNOT_WRITE_ERRNOS:
                raise
            return len(text)

    def flush(self) -> None:
        from emflow.targets.atomic import CANNOT_WRITE_ERRNOS

        try:
            self._stream.flush()
        except OSError as error:
            if error.errno not in CANNOT_WRITE_ERRNOS:
                raise

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _main(argv: list[str] | None, started: float) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    arguments.started = started
    try:
        return arguments.handler(arguments)
    except KeyboardInterrupt:
        print("emflow: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`emflow status c.toml | head -2`): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:
        from emflow.errors import RunInProgressError, UserError
        from emflow.targets.atomic import CannotWrite

        if isinstance(error, RunInProgressError):
            print(f"emflow: {error}", file=sys.stderr)
            return EXIT_RUN_IN_PROGRESS
        if isinstance(error, CannotWrite):
            print(f"emflow: error: {_cannot_write_line(error.filename, error.strerror, error.errno)}", file=sys.stderr)
            return EXIT_CANNOT_WRITE
        if isinstance(error, UserError):
            print(f"emflow: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        # Anything else is a bug in emflow: the traceback goes to a log, one line to the terminal.
        log = _write_crash_log(arguments)
        print(
            f"emflow: internal error ({type(error).__name__}: {error}); this is a bug in emflow, not in your input. Traceback: {log}",
            file=sys.stderr,
        )
        return EXIT_TASK_FAILED


def _write_crash_log(arguments) -> Path:
    """Write the current exception's traceback to the run's log folder (or a temporary folder)."""
    text = f"emflow {' '.join(sys.argv[1:])}\n{traceback.format_exc()}"
    name = f"emflow-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    folders = [Path(tempfile.gettempdir())]
    try:
        from emflow.config import load_config

        config = load_config(arguments.config)
        folders.insert(0, Path(config.output.work_dir or f"{config.output.path}.work") / "logs")
    except Exception:
        pass  # no usable config: the temporary folder
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue  # a full or read-only work folder: the next
    return folders[-1] / name


def _cannot_write_line(path: str, cause: str, number: int | None) -> str:
    import errno

    code = f" ({errno.errorcode[number]})" if number in errno.errorcode else ""
    return f"cannot write {path}: {cause}{code}; the run stopped there. Free space or fix the permission, then run the same command again: it resumes where it stopped"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emflow", description="Blockwise multicut segmentation of 3D EM volumes.")
    parser.add_argument("--version", action="version", version=f"emflow {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the workflow of a config file (resumes where it stopped)")
    _add_run_arguments(run)
    _add_slurm_arguments(run)
    run.set_defaults(handler=_run, until="")

    predict = commands.add_parser(
        "predict", help="run only the CNN prediction of a config without boundaries_key (writes predictions and boundaries)"
    )
    _add_run_arguments(predict)
    _add_slurm_arguments(predict)
    predict.set_defaults(handler=_run, until="blend_predictions")

    train = commands.add_parser("train", help="train a boundary or affinity U-Net (resumes from its last checkpoint)")
    train.add_argument("config", help="training TOML config file (see `emflow config training-defaults`)")
    train.set_defaults(handler=_train)

    train_edges = commands.add_parser(
        "train-edges", help="train an edge classifier for learned edge costs from runs and their ground truth ([costs] classifier)"
    )
    train_edges.add_argument("config", help="edge training TOML config file (see `emflow config edge-training-defaults`)")
    train_edges.set_defaults(handler=_train_edges)

    rerun = commands.add_parser("rerun", help="invalidate blocks (or failed tasks) and everything that read them, then run")
    _add_run_arguments(rerun)
    rerun.add_argument(
        "--stage", default="", help="stage whose tasks to rerun (see `emflow status`); with --failed, limits it to that stage"
    )
    rerun.add_argument("--blocks", type=_block_list, help="comma-separated block ids of --stage, e.g. 3,17 (default: the whole stage)")
    rerun.add_argument("--failed", action="store_true", help="rerun every task whose last attempt failed")
    rerun.set_defaults(handler=_rerun, until="")

    report = commands.add_parser("report", help="write the run report of a finished run again (into <work_dir>/report/)")
    report.add_argument("config", help="TOML config file")
    report.set_defaults(handler=_report)

    status = commands.add_parser("status", help="per stage: blocks done / stale / failed / pending")
    status.add_argument("config", help="TOML config file")
    status.set_defaults(handler=_status)

    verify = commands.add_parser("verify", help="read every file the run wrote and compare it with the digest recorded when it was written")
    verify.add_argument("config", help="TOML config file")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="invalidate the tasks whose files are damaged, so that the next `emflow run` writes them again",
    )
    verify.set_defaults(handler=_verify)

    clean = commands.add_parser("clean", help="remove the per-block partial results a finished run no longer needs (a rerun stays a no-op)")
    clean.add_argument("config", help="TOML config file")
    clean.set_defaults(handler=_clean)

    config = commands.add_parser("config", help="configuration helpers")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    defaults = config_commands.add_parser("defaults", help="print the complete default config, documented")
    defaults.set_defaults(handler=_config_defaults)
    training_defaults = config_commands.add_parser("training-defaults", help="print the complete default training config, documented")
    training_defaults.set_defaults(handler=_training_defaults)
    edge_training_defaults = config_commands.add_parser(
        "edge-training-defaults", help="print the complete default edge classifier training config, documented"
    )
    edge_training_defaults.set_defaults(handler=_edge_training_defaults)

    importer = commands.add_parser("import", help="convert a TIFF stack or HDF5 dataset to a zarr array")
    importer.add_argument("source", help="TIFF stack, or HDF5 file (with --source-key or SOURCE as file.h5:key)")
    importer.add_argument("destination", help="zarr group to write into (created if missing)")
    importer.add_argument("--key", required=True, help="name of the new array in the destination")
    importer.add_argument("--source-key", help="dataset in an HDF5 source")
    importer.add_argument("--resolution", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel size in nm")
    importer.set_defaults(handler=_import)

    evaluate = commands.add_parser(
        "evaluate", help="score a segmentation against ground truth block by block: JSON on stdout, optionally a report"
    )
    evaluate.add_argument("segmentation", help="file.zarr:key or file.h5:key")
    evaluate.add_argument("groundtruth", help="file.zarr:key or file.h5:key (label 0 is ignored)")
    evaluate.add_argument("--workers", type=_positive_int, default=1, help="tasks run in parallel (default 1)")
    evaluate.add_argument("--report", help="folder for report.html, report.json and its figures")
    evaluate.add_argument(
        "--resolution", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel size in nm (default: the segmentation's metadata)"
    )
    evaluate.add_argument("--raw", help="raw data (path:key), shown in the report's slice views")
    evaluate.add_argument("--prediction", help="a boundary map (path:key), shown in the report's slice views")
    evaluate.add_argument("--skeletons", help="ground-truth skeletons (.npz); default: computed from the ground truth")
    evaluate.add_argument("--no-skeletons", action="store_true", help="leave out the skeleton metrics (expected run length)")
    evaluate.add_argument(
        "--work-dir", help="folder for partial results, so that a killed evaluation resumes (default: a temporary folder)"
    )
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser("demo", help="segment the shipped demo crop and score it")
    demo.add_argument(
        "--out",
        help="folder for the demo's input, results and scores (default: emflow/demo in $XDG_CACHE_HOME, else ~/.cache; about 170 MB)",
    )
    demo.add_argument("--workers", type=_positive_int, default=2, help="tasks run in parallel (default 2)")
    demo.add_argument(
        "--sstem",
        action="store_true",
        help="instead: the serial-section TEM demo, the ISBI 2012 sections 24-29 (held out by the shipped ssTEM model) "
        "segmented from raw and scored per section with the challenge's measures",
    )
    demo.add_argument(
        "--isbi", metavar="DIR", help="with --sstem: the ISBI 2012 data folder (default ../shared/data/isbi2012 from the current folder)"
    )
    demo.set_defaults(handler=_demo)

    view = commands.add_parser("view", help="show an output (raw, boundaries, segmentation, meshes) in neuroglancer, served locally")
    from emflow.viewer import add_view_arguments, view_command

    add_view_arguments(view)
    view.set_defaults(handler=view_command)

    scheduler = commands.add_parser("scheduler", help="start, stop or query a luigid central scheduler for `emflow run --scheduler-host`")
    scheduler_commands = scheduler.add_subparsers(dest="scheduler_command", required=True)
    scheduler_start = scheduler_commands.add_parser(
        "start", help="start luigid in the background (refused while the state folder's luigid runs)"
    )
    scheduler_start.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for workers on other hosts)",
    )
    scheduler_start.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    scheduler_stop = scheduler_commands.add_parser("stop", help="stop the luigid of the state folder (SIGTERM, SIGKILL after 30 s)")
    scheduler_status = scheduler_commands.add_parser(
        "status", help="whether it runs, where, and its tasks by status; exit 0 running, 3 not running"
    )
    for command, handler in ((scheduler_start, _scheduler_start), (scheduler_stop, _scheduler_stop), (scheduler_status, _scheduler_status)):
        command.add_argument(
            "--state-dir",
            default="emflow-scheduler",
            help="folder of the scheduler's pid file, address, output, log and task state (default ./emflow-scheduler)",
        )
        command.set_defaults(handler=handler)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML config file")
    parser.add_argument("--workers", type=_positive_int, default=1, help="tasks run in parallel (default 1)")
    scheduler = parser.add_mutually_exclusive_group()
    scheduler.add_argument("--local-scheduler", action="store_true", help="embedded scheduler (the default)")
    scheduler.add_argument("--scheduler-host", help="host of a running luigid central scheduler")
    parser.add_argument("--scheduler-port", type=int, default=DEFAULT_PORT, help=f"port of the central scheduler (default {DEFAULT_PORT})")
    parser.add_argument("--update", action="store_true", help="replace the results of a run over a different input in the output path")


def _add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    slurm = parser.add_argument_group(
        "SLURM", "submit the run as a job array of workers that pull tasks from one central scheduler, and wait for it"
    )
    slurm.add_argument("--slurm", action="store_true", help="run on SLURM (sbatch) instead of on this machine")
    slurm.add_argument("--jobs", type=_positive_int, default=1, help="array tasks (workers) to submit (default 1)")
    slurm.add_argument(
        "--cpus", type=_positive_int, default=1, help="CPUs of each array task, which runs as many worker processes (default 1)"
    )
    slurm.add_argument("--partition", help="partition to submit to (default: the cluster's default)")
    slurm.add_argument("--time", help="time limit of each array task, as sbatch takes it (e.g. 4:00:00)")
    slurm.add_argument("--mem", help="memory of each array task, as sbatch takes it (e.g. 16G)")
    slurm.add_argument(
        "--listen-address",
        help="without --scheduler-host: the address of this machine that the compute nodes reach, on which the run's own "
        "scheduler listens (default: this host's name)",
    )


def _report_failures(report) -> None:
    """What went wrong in a run, on stderr: unsuccessful SLURM array tasks, failed tasks with their logs."""
    if report.job_id is None:
        print(f"emflow: run FAILED (luigi status {report.status}) after {report.seconds:.1f} s", file=sys.stderr)
    elif report.complete:
        print(f"emflow: the workflow is complete, but not every SLURM job (array {report.job_id}) ended COMPLETED:", file=sys.stderr)
    else:
        print(f"emflow: run FAILED on SLURM (job array {report.job_id}) after {report.seconds:.1f} s", file=sys.stderr)
    for task in report.unsuccessful_tasks:
        log = report.log_path(task.index)
        written = "" if log.exists() else " (not written: the task never started)"
        print(f"  array task {report.job_id}_{task.index} {task.description}\n    log: {log}{written}", file=sys.stderr)
    for failure in report.failures:
        block = "global task" if failure["block_id"] is None else f"block {failure['block_id']}"
        box = f"\n    block box: {failure['box']}" if failure.get("box") else ""
        print(f"  {failure['stage']} {block}: {failure['error']}\n    log: {failure['log']}{box}", file=sys.stderr)
    if report.complete or report.failures:
        return
    if report.job_id is None:
        print(f"  no task recorded a failure (a worker may have died): see {report.scheduler_log}", file=sys.stderr)
    elif report.unsuccessful_tasks:
        print(
            "  no task recorded a failure: a job that ended early leaves unfinished what it ran; run the same command again to resume",
            file=sys.stderr,
        )
    else:
        print(
            f"  every job COMPLETED, yet the workflow is not complete and no task recorded a failure: see the job logs in {report.log_dir}",
            file=sys.stderr,
        )


def _backend(arguments):
    """The backend the run options ask for (`_add_run_arguments`, `_add_slurm_arguments`)."""
    from emflow.cluster import CentralScheduler, LocalScheduler, Slurm, SlurmOptions
    from emflow.errors import UsageError

    if not getattr(arguments, "slurm", False):
        given = [option for option, value in _slurm_options(arguments).items() if value]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --slurm")
        if arguments.scheduler_host is not None:
            return CentralScheduler(arguments.scheduler_host, arguments.scheduler_port, arguments.workers)
        return LocalScheduler(arguments.workers)
    if arguments.workers != 1 or arguments.local_scheduler:
        raise UsageError(
            "with --slurm, each job runs --cpus worker processes for a central scheduler: leave out --workers and --local-scheduler"
        )
    if arguments.listen_address is not None and arguments.scheduler_host is not None:
        raise UsageError("--listen-address is for the run's own scheduler: leave it out with --scheduler-host")
    options = SlurmOptions(
        jobs=arguments.jobs, cpus=arguments.cpus, partition=arguments.partition, time=arguments.time, memory=arguments.mem
    )
    return Slurm(options, arguments.scheduler_host, arguments.scheduler_port, arguments.listen_address)


def _slurm_options(arguments) -> dict[str, bool]:
    """Which of the SLURM options differ from their defaults."""
    if not hasattr(arguments, "jobs"):
        return {}
    return {
        "--jobs": arguments.jobs != 1,
        "--cpus": arguments.cpus != 1,
        "--partition": arguments.partition is not None,
        "--time": arguments.time is not None,
        "--mem": arguments.mem is not None,
        "--listen-address": arguments.listen_address is not None,
    }


def _warnings() -> tuple[list[str], object]:
    """A list of warnings and a function that prints each as it comes and keeps it, for the summary (`_finish`)."""
    warnings: list[str] = []

    def warn(line: str) -> None:
        print(f"emflow: warning: {line}", file=sys.stderr, flush=True)
        warnings.append(line)

    return warnings, warn


def _finish(
    report,
    what: str,
    config_path: str | Path,
    until: str = "",
    done_before: Sequence[str] = (),
    *,
    view: bool = True,
    warnings: Sequence[str] = (),
) -> int:
    """The end of a run: its summary (output, segments, time and memory per stage, `view`: the command
    that shows it) or its failures, then its warnings again, and the exit code."""
    try:
        return _outcome(report, what, config_path, until, done_before, view)
    finally:
        for line in warnings:
            print(f"emflow: warning: {line}", file=sys.stderr)


def _outcome(report, what: str, config_path: str | Path, until: str, done_before: Sequence[str], view: bool) -> int:
    from emflow.workflows.summary import run_summary

    from .summary import print_summary

    if not report.succeeded:
        cannot_write = [failure["cannot_write"] for failure in report.failures if isinstance(failure.get("cannot_write"), dict)]
        if cannot_write:
            # Every task that tried to write failed the same way: one line, naming the first file.
            first = cannot_write[0]
            print(f"emflow: error: {_cannot_write_line(first['path'], first['cause'], first.get('errno'))}", file=sys.stderr)
            others = [failure for failure in report.failures if not isinstance(failure.get("cannot_write"), dict)]
            if others:
                _report_failures(dataclasses.replace(report, failures=others))
            return EXIT_CANNOT_WRITE
        _report_failures(report)
        return EXIT_TASK_FAILED
    print_summary(run_summary(config_path, until, done_before=done_before), report, what, view=view)
    return EXIT_OK


def _run(arguments) -> int:
    with _importing():
        from emflow.workflows.run import run_workflow

    done_before = _DoneBefore(arguments.until)
    warnings, warn = _warnings()
    report = run_workflow(
        arguments.config,
        _backend(arguments),
        update=arguments.update,
        until=arguments.until,
        command=arguments.command,
        before_run=done_before,
        warn=warn,
    )
    code = _finish(
        _timed_from_start(report, arguments),
        "prediction" if arguments.until else "run",
        arguments.config,
        arguments.until,
        done_before.stages,
        warnings=warnings,
    )
    if code == EXIT_OK and not arguments.until:
        _write_run_report(arguments.config, regenerate=False)
    return code


def _timed_from_start(report, arguments):
    """`report` with its seconds counted from the command's start, not from its build's: the
    checks, the planning and reading the model are part of what the user waited for (torch, which
    reading a model imports, took 12 s to import here with its files out of the page cache; the
    first CNN run of a session took 54 s, of which its build 32.6 s)."""
    return dataclasses.replace(report, seconds=time.monotonic() - arguments.started)


def _write_run_report(config_path: str, *, regenerate: bool) -> None:
    from emflow.workflows.report import report_is_current, write_report
    from emflow.workflows.segmentation import load_run

    run = load_run(str(Path(config_path).expanduser().resolve()))
    if regenerate or (run.config.output.report and not report_is_current(run)):
        # `emflow report` draws everything again; a run keeps a preview whose section is unchanged.
        print(f"emflow: run report: {write_report(run, reuse_preview=not regenerate)}")


def _report(arguments) -> int:
    from emflow.errors import UsageError
    from emflow.workflows.status import workflow_status

    if any(status.done < status.total for status in workflow_status(str(Path(arguments.config).expanduser().resolve()))):
        raise UsageError(f"{arguments.config}: the run is not finished (see `emflow status`); run it first")
    _write_run_report(arguments.config, regenerate=True)
    return EXIT_OK


class _DoneBefore:
    """A `before_run` hook noting the stages that were done before the run, for its summary."""

    def __init__(self, until: str = ""):
        self.until = until
        self.stages: list[str] = []

    def __call__(self, config_path: str) -> None:
        from emflow.workflows.status import done_stages

        self.stages = done_stages(config_path, self.until)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("emflow")
    except PackageNotFoundError:
        return "(not installed: run from a source folder; pip install -e . records the version)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _block_list(text: str) -> list[int]:
    try:
        block_ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks takes comma-separated block ids such as 3,17, got {text!r}") from None
    if not block_ids or min(block_ids) < 0:
        raise argparse.ArgumentTypeError(f"--blocks takes comma-separated block ids such as 3,17, got {text!r}")
    return block_ids


def _rerun(arguments) -> int:
    from emflow.errors import UsageError
    from emflow.workflows.run import rerun_workflow

    if not arguments.failed and not arguments.stage:
        raise UsageError("emflow rerun needs --stage STAGE [--blocks 3,17], or --failed")
    if arguments.failed and arguments.blocks is not None:
        raise UsageError("emflow rerun takes --blocks or --failed, not both")
    warnings, warn = _warnings()
    invalidated, report = rerun_workflow(
        arguments.config,
        _backend(arguments),
        stage=arguments.stage,
        block_ids=arguments.blocks,
        failed=arguments.failed,
        update=arguments.update,
        warn=warn,
    )
    print(f"emflow: invalidated {'; '.join(invalidated) if invalidated else 'nothing (no task had failed)'}", file=sys.stderr)
    return _finish(_timed_from_start(report, arguments), "run", arguments.config, warnings=warnings)


def _train(arguments) -> int:
    from emflow.workflows.train import train

    report = train(arguments.config, log=lambda line: print(line, flush=True))
    validation = "" if report.validation_loss is None else f", validation loss {report.validation_loss:.4f}"
    print(f"emflow train: {report.iterations} iterations in {report.seconds:.0f} s{validation}; model written to {report.model_path}")
    return EXIT_OK


def _train_edges(arguments) -> int:
    from emflow.workflows.train_edges import train_edges

    report = train_edges(arguments.config, log=lambda line: print(line, flush=True))
    print(f"emflow train-edges: trained on {report.edges} edges ({report.cut_fraction:.1%} cut); classifier written to {report.output}")
    return EXIT_OK


def _status(arguments) -> int:
    from emflow.workflows.status import workflow_status

    statuses = workflow_status(str(Path(arguments.config).expanduser().resolve()))
    width = max(len(status.stage) for status in statuses)
    print(f"{'stage':<{width}}  {'done':>7}  {'stale':>7}  {'failed':>7}  {'pending':>7}  {'total':>7}")
    for status in statuses:
        print(f"{status.stage:<{width}}  {status.done:>7}  {status.stale:>7}  {status.failed:>7}  {status.pending:>7}  {status.total:>7}")
    return EXIT_OK


def _verify(arguments) -> int:
    from emflow.workflows.maintenance import verify_run

    verification = verify_run(str(Path(arguments.config).expanduser().resolve()), repair=arguments.repair)
    shown = 20
    for problem in verification.problems[:shown]:
        print(f"  {problem.describe()}", file=sys.stderr)
    if len(verification.problems) > shown:
        print(f"  ... and {len(verification.problems) - shown} more", file=sys.stderr)
    damage = verification.damage
    notes = [f"{verification.not_done} tasks not done (see emflow status)"] if verification.not_done else []
    notes += [f"{verification.removed} partial results removed by emflow clean"] if verification.removed else []
    summary = f"{verification.files} files ({verification.bytes / 1e6:.1f} MB) read and compared with their recorded digests"
    summary += "".join(f"; {note}" for note in notes)
    if not damage:
        print(f"emflow verify: {summary}: every file is as written")
        return EXIT_OK
    action = (
        "invalidated the tasks that wrote them; `emflow run` writes them again"
        if arguments.repair
        else "run `emflow verify --repair` then `emflow run` to write them again"
    )
    print(f"emflow verify: {summary}: {len(damage)} damaged, changed or missing; {action}", file=sys.stderr)
    return EXIT_TASK_FAILED


def _clean(arguments) -> int:
    from emflow.workflows.maintenance import clean_run

    removed = clean_run(str(Path(arguments.config).expanduser().resolve()))
    if not removed:
        print("emflow clean: nothing to remove")
        return EXIT_OK
    listing = ", ".join(f"{entry.stage} ({entry.files} files, {entry.bytes / 1e6:.1f} MB)" for entry in removed)
    print(f"emflow clean: removed the partial results of {listing}; a rerun stays a no-op, and reprocessing computes again those it needs")
    return EXIT_OK


def _config_defaults(arguments) -> int:
    from emflow.config import default_config_text

    print(default_config_text(), end="")
    return EXIT_OK


def _training_defaults(arguments) -> int:
    from emflow.config import training_config_text

    print(training_config_text(), end="")
    return EXIT_OK


def _edge_training_defaults(arguments) -> int:
    from emflow.config import edge_training_config_text

    print(edge_training_config_text(), end="")
    return EXIT_OK


def _import(arguments) -> int:
    from emflow.storage.volumes import import_volume, parse_location

    source, source_key = arguments.source, arguments.source_key
    # SOURCE as file.h5:group/dataset (the key may hold slashes: not Path(source).name).
    if source_key is None and ":" in source and not Path(source).exists():
        source, source_key = parse_location(source)
    import_volume(source, arguments.destination, arguments.key, source_key=source_key, resolution=arguments.resolution)
    print(f"emflow: wrote {arguments.destination}:{arguments.key}")
    return EXIT_OK


def _evaluate(arguments) -> int:
    from emflow.workflows.evaluation import evaluate

    report, result = evaluate(
        arguments.segmentation,
        arguments.groundtruth,
        resolution=arguments.resolution,
        workers=arguments.workers,
        report=arguments.report,
        raw=arguments.raw or "",
        prediction=arguments.prediction or "",
        skeletons=arguments.skeletons,
        skeleton_metrics=not arguments.no_skeletons,
        work_dir=arguments.work_dir,
    )
    if result is None:
        _report_failures(report)
        return EXIT_TASK_FAILED
    # Standard output is the JSON document alone; progress and the report's place go to stderr.
    print(json.dumps(result, indent=2, sort_keys=True))
    if arguments.report:
        print(f"emflow evaluate: report written to {Path(arguments.report).resolve() / 'report.html'}", file=sys.stderr)
    return EXIT_OK


def _demo(arguments) -> int:
    from emflow.workflows.demo import default_demo_dir, run_demo

    from .summary import print_demo_scores

    out = Path(arguments.out or default_demo_dir()).expanduser().resolve()
    print(f"emflow demo: working in {out} (choose another folder with --out DIR)", file=sys.stderr, flush=True)
    done_before = _DoneBefore()
    if arguments.sstem:
        from emflow.workflows.demo import run_sstem_demo

        from .summary import print_sstem_scores

        sstem = run_sstem_demo(out, arguments.isbi, workers=arguments.workers, before_run=done_before)
        status = _finish(sstem.report, "ssTEM demo run", sstem.config_path, done_before=done_before.stages, view=False)
        if status == EXIT_OK:
            print_sstem_scores(sstem)
        return status
    result = run_demo(out, workers=arguments.workers, before_run=done_before)
    # The command to look at the result comes last, after the scores.
    status = _finish(result.report, "demo run", result.config_path, done_before=done_before.stages, view=False)
    if status == EXIT_OK:
        print_demo_scores(result)
    return status


# `emflow scheduler`: exit 1 when a scheduler could not be started or stopped; `status` exits 3
# when none runs (the LSB convention for init scripts).
EXIT_SCHEDULER_FAILED, EXIT_SCHEDULER_NOT_RUNNING = 1, 3


def _scheduler_start(arguments) -> int:
    from emflow.cluster.luigid import SchedulerError, start_scheduler

    try:
        state = start_scheduler(arguments.state_dir, host=arguments.host, port=arguments.port)
    except SchedulerError as error:
        print(f"emflow scheduler: error: {error}", file=sys.stderr)
        return EXIT_SCHEDULER_FAILED
    if state.note:
        print(f"emflow scheduler: replaced the {state.note}", file=sys.stderr)
    print(f"emflow scheduler: luigid started, pid {state.pid}, listening on {state.host}:{state.port}, state in {state.state_dir}")
    print(f"visualiser: {state.url}")
    print(f"workers: emflow run CONFIG --scheduler-host {state.reachable_host} --scheduler-port {state.port}")
    return EXIT_OK


def _scheduler_stop(arguments) -> int:
    from emflow.cluster.luigid import SchedulerError, stop_scheduler

    try:
        state = stop_scheduler(arguments.state_dir)
    except SchedulerError as error:
        print(f"emflow scheduler: error: {error}", file=sys.stderr)
        return EXIT_SCHEDULER_FAILED
    if not state.running:
        removed = f"; removed the {state.note}" if state.note else ""
        print(f"emflow scheduler: no scheduler running from {state.state_dir}{removed}")
        return EXIT_OK
    print(f"emflow scheduler: stopped luigid (pid {state.pid}) on {state.host}:{state.port}")
    return EXIT_OK


def _scheduler_status(arguments) -> int:
    from emflow.cluster.luigid import scheduler_status

    state = scheduler_status(arguments.state_dir)
    if not state.running:
        print(f"scheduler: not running (state folder {state.state_dir})")
        if state.note:
            print(f"note: {state.note}")
        return EXIT_SCHEDULER_NOT_RUNNING
    print(f"scheduler: running, pid {state.pid}, listening on {state.host}:{state.port}, state in {state.state_dir}")
    print(f"visualiser: {state.url}")
    if state.task_counts is not None:
        print("tasks: " + ", ".join(f"{count} {status.lower()}" for status, count in state.task_counts.items()))
    if state.note:
        print(f"note: {state.note}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
