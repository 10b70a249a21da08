"""Crash safety and fault injection: a run killed with SIGKILL at any moment (its scheduler and its
worker processes alike), or whose block tasks fail on purpose, reruns to bitwise the result of an
uninterrupted run, and nothing half written is ever taken as done.

Two ways of killing a run, both `SIGKILL` to the run's whole process group:

- from outside, at moments chosen by polling the run's completion records (a stage has k block
  records, a global stage's record appeared) or after a random delay;
- from inside, at an exact write: the run counts its writes (block journal lines, atomic file
  writes, zarr chunk and metadata writes) and kills itself before, in the middle of, or after the
  n-th write matching a pattern. "In the middle" leaves what a writer killed mid-write leaves: half a
  journal line, or half a temporary `.partial` file that was never renamed into place.

After every kill, each completion record that exists must describe an output that exists and equals
the uninterrupted run's; then a rerun must finish (exit 0) with bitwise the same segmentation,
supervoxels and graph arrays.

Runs are child processes forked from this one (see `start_run`), each in a session of its own, with
a timeout, so a hung run fails its test instead of blocking CI.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import select
import signal
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import read, write_config, write_inputs

import emflow.workflows.run  # noqa: F401  imported here, once, for every forked run (see start_run)
from emflow.cli.main import main as emflow_main
from emflow.targets import JournalReader

# A run of the test config takes about a second; only a hang gets near this.
RUN_TIMEOUT = 120.0
INJECT_FAILURES = "EMFLOW_INJECT_FAILURES"  # emflow.tasks.base.INJECT_FAILURES_VARIABLE, spelled out: it is the interface

# Arrays of the output that make up the result; compared bitwise (dtype, shape and bytes).
RESULT_ARRAYS = ("segmentation/s0", "supervoxels", "graph/edges", "graph/edge_features", "graph/edge_costs", "graph/node_labels")
# Block-wise stages whose blocks each write one chunk of an output array (block shape = chunk shape);
# the stages of the other segmentation methods too (tests/test_methods_workflow.py).
BLOCK_CHUNK_OUTPUTS = {
    "supervoxels": "supervoxels",
    "write_segmentation": "segmentation/s0",
    "derive_boundaries": "boundaries/s0",
}
# Block-wise stages whose blocks each write a partial result file in the work folder.
BLOCK_FILE_OUTPUTS = {"block_graph", "pair_statistics", "stitch_faces"}
# Output arrays each global stage writes (its files under <work>/global/<stage>/ are compared too).
GLOBAL_OUTPUTS = {
    "prepare_output": (),
    "supervoxel_ids": (),
    "merge_graph": ("graph/edges", "graph/edge_features"),
    "edge_costs": ("graph/edge_costs",),
    "multicut": ("graph/node_labels",),
    "lifted_edges": ("graph/lifted_edges", "graph/lifted_costs"),
    "agglomeration": ("graph/node_labels", "graph/merges", "graph/merge_scores"),
    "mutex_watershed": ("graph/node_labels",),
    "stitch": ("graph/node_labels",),
}


# --- running, killing -------------------------------------------------------------------------


@dataclass
class Run:
    """A workflow run in a child process that leads a session (and process group) of its own."""

    pid: int
    folder: Path
    log: Path
    started: float = field(default_factory=time.monotonic)
    exit_code: int | None = None

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal) once the run has ended, else None."""
        if self.exit_code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        """The exit code once the run has ended; kills it and fails the test after `timeout` seconds."""
        if self.exit_code is None:
            descriptor = os.pidfd_open(self.pid)  # readable once the process has ended
            try:
                ended = select.select([descriptor], [], [], timeout)[0]
            finally:
                os.close(descriptor)
            if not ended:
                self.kill()
                pytest.fail(f"the run in {self.folder} did not end within {timeout} s (killed); its output:\n{self.output()}")
            self.exit_code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        assert_process_group_gone(self.pid)
        return self.exit_code

    def kill(self) -> int:
        """SIGKILL the run and every worker process it forked."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_run(config: Path, *, workers: int = 1, environment: dict[str, str] | None = None, kill_point: KillPoint | None = None) -> Run:
    """Start `emflow run CONFIG --workers N` in a child process; its stdout and stderr go to a log file.

    The child is forked from this process rather than started as `python -m emflow`: it begins with
    emflow (and torch) imported, which saves 3 s of imports per run, and these tests start some
    seventy runs. It then does what the command line does (`emflow.cli.main.main`) in a session of its own, so
    that `killpg` reaches the Luigi worker processes it forks.
    """
    folder = config.parent
    log = folder / f"run-{time.monotonic_ns()}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.setsid()
            descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(descriptor, 1)
            os.dup2(descriptor, 2)
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)
            os.environ.pop(INJECT_FAILURES, None)
            os.environ.update(environment or {})
            if kill_point is not None:
                kill_point.install()
            code = emflow_main(["run", str(config), "--workers", str(workers)])
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()  # may fail (a log on a full disk): the child must end here all the same
            finally:
                os._exit(code)
    return Run(pid, folder, log)


def run_to_end(config: Path, **options) -> tuple[int, str]:
    run = start_run(config, **options)
    return run.wait(), run.output()


def process_group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def assert_process_group_gone(group: int, timeout: float = 10.0) -> None:
    # A worker that outlived its run would go on writing while the rerun works on the same files.
    deadline = time.monotonic() + timeout
    while (members := process_group_members(group)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not members, f"processes {members} of the run outlived it"


@dataclass(frozen=True)
class KillPoint:
    """SIGKILL the run's process group at the `occurrence`-th write (over all of the run's
    processes) whose description matches `pattern`: "before" it, "torn" (half of it done), or "after".

    Descriptions are "<kind> <path relative to the run's folder>", kind one of `journal` (a line
    appended to a block journal), `file` (an atomic write of a record or partial result: torn leaves
    half a temporary file) and `chunk` (a zarr chunk or metadata file, written by zarr or by
    `emflow.storage.chunk_io` and `emflow.storage.output`: torn leaves half of the writer's temporary file). Every write is also appended to `trace`; occurrence 0 only traces.
    """

    pattern: str
    occurrence: int
    moment: str
    trace: Path

    def install(self) -> None:
        """Hook the writes of this (child) process; Luigi's worker processes inherit the hooks."""
        from zarr.storage import _local as zarr_local_store

        from emflow.targets import atomic, journal

        root = self.trace.parent
        kill_point = self

        def describe(kind: str, path) -> str:
            path = Path(path)
            return f"{kind} {path.relative_to(root) if path.is_relative_to(root) else path}"

        def journal_write(descriptor: int, data: bytes) -> int:
            description = describe("journal", os.readlink(f"/proc/self/fd/{descriptor}"))
            return kill_point._hooked(description, lambda: os.write(descriptor, data), lambda: os.write(descriptor, data[: len(data) // 2]))

        def atomic_replace(temporary, path) -> None:
            def torn() -> None:
                os.truncate(temporary, os.path.getsize(temporary) // 2)

            # emflow writes the chunks of block-wise volumes and the metadata documents of its output
            # itself (emflow.storage.chunk_io, emflow.storage.output), atomically as other files.
            kind = "chunk" if re.search(r"\.zarr[^/]*/(.+/c/|(.+/)?zarr\.json$)", str(path)) else "file"
            return kill_point._hooked(describe(kind, path), lambda: os.replace(temporary, path), torn)

        original_put = zarr_local_store._put

        def chunk_put(path: Path, value, exclusive: bool = False):
            def torn() -> None:
                data = bytes(value.as_buffer_like())
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(f".{uuid.uuid4().hex}.partial").write_bytes(data[: len(data) // 2])  # zarr's temporary name

            return kill_point._hooked(describe("chunk", path), lambda: original_put(path, value, exclusive=exclusive), torn)

        journal.os = _OsWith(write=journal_write)
        atomic.os = _OsWith(replace=atomic_replace)
        zarr_local_store._put = chunk_put

    def _hooked(self, description: str, write, torn):
        if not self._count(description):
            return write()
        try:
            if self.moment == "torn":
                torn()
            elif self.moment == "after":
                write()  # may raise: zarr writes a parent group's metadata only if it does not exist yet
        finally:
            os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # a signal to oneself arrives before kill() returns

    def _count(self, description: str) -> bool:
        """Trace the write; True if it is the one to kill at."""
        with open(self.trace, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            handle.seek(0)
            earlier = handle.read().splitlines()
            handle.write(description + "\n")
        if not self.occurrence or not re.search(self.pattern, description):
            return False
        return sum(1 for line in earlier if re.search(self.pattern, line)) + 1 == self.occurrence


class _OsWith:
    """The os module with some functions replaced, put in place of one module's `os` only."""

    def __init__(self, **functions):
        self.__dict__.update(functions)

    def __getattr__(self, name):
        return getattr(os, name)


def kill_when(run: Run, reached, *, poll: float = 0.002) -> None:
    """SIGKILL `run` as soon as `reached()` is true; fails if the run ended by itself first."""
    while run.poll() is None and not reached():
        time.sleep(poll)
    code = run.kill()
    assert code == -signal.SIGKILL, f"the run ended by itself (exit {code}) before the kill point; its output:\n{run.output()}"


def block_records(work: Path, stage: str) -> dict:
    """The latest record of each block of a stage that has one (not invalidated)."""
    return {
        block_id: record for block_id, record in JournalReader(work / "status" / stage).refresh().items() if record.fingerprint is not None
    }


def has_block_records(work: Path, stage: str, count: int):
    reader = JournalReader(work / "status" / stage)  # incremental: each poll reads only new lines
    return lambda: len(reader.refresh()) >= count


def has_record(work: Path, stage: str):
    return lambda: (work / "status" / f"{stage}.json").exists()


# --- checks -----------------------------------------------------------------------------------


def work_folder(output: Path) -> Path:
    return output.with_name(output.name + ".work")


def assert_same_result(output: Path, reference: Path) -> None:
    for key in RESULT_ARRAYS:
        actual, expected = read(output, key), read(reference, key)
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), key
        assert actual.tobytes() == expected.tobytes(), f"{key} differs from the uninterrupted run's"


def assert_records_describe_finished_outputs(output: Path, reference: Path, blocking) -> None:
    """Every completion record of a (killed) run stands for an output that exists and equals the
    uninterrupted run's: no half-written chunk, file or record is ever taken as done."""
    work, reference_work = work_folder(output), work_folder(reference)
    arrays: dict[tuple[Path, str], np.ndarray] = {}

    def array(path: Path, key: str) -> np.ndarray:
        if (path, key) not in arrays:
            arrays[path, key] = read(path, key)
        return arrays[path, key]

    status = work / "status"
    if not status.exists():
        return
    for path in sorted(status.iterdir()):
        if path.is_dir():
            stage = path.name
            records = block_records(work, stage)
            assert stage in BLOCK_CHUNK_OUTPUTS or stage in BLOCK_FILE_OUTPUTS, f"block-wise stage {stage} has no check here: add one"
            for block_id in records:
                where = f"{stage} block {block_id} has a record"
                if stage in BLOCK_CHUNK_OUTPUTS:
                    key, box = BLOCK_CHUNK_OUTPUTS[stage], blocking.block(block_id).slicing
                    actual, expected = array(output, key)[box], array(reference, key)[box]
                    assert actual.tobytes() == expected.tobytes(), f"{where}, but its chunk of {key} differs from the uninterrupted run's"
                else:
                    assert_same_files(
                        work / "blocks" / stage / f"{block_id}.npz", reference_work / "blocks" / stage / f"{block_id}.npz", where
                    )
        elif path.suffix == ".json":
            stage = path.stem
            record = json.loads(path.read_text())  # written atomically: always whole
            if (status / stage).is_dir():
                # A block-wise stage's own record: only once every block had one.
                assert len(block_records(work, stage)) == record["result"].get("number_of_blocks", blocking.number_of_blocks), stage
                continue
            assert stage in GLOBAL_OUTPUTS, f"global stage {stage} has no check here: add one"
            for key in GLOBAL_OUTPUTS[stage]:
                actual, expected = array(output, key), array(reference, key)
                assert actual.tobytes() == expected.tobytes(), f"{stage} has a record, but {key} differs from the uninterrupted run's"
            for expected_file in sorted((reference_work / "global" / stage).glob("*")):
                assert_same_files(work / "global" / stage / expected_file.name, expected_file, f"{stage} has a record")


def assert_same_files(path: Path, reference: Path, where: str) -> None:
    """The arrays of two .npy or .npz files are equal."""
    assert path.exists(), f"{where}, but {path} does not exist"
    actual, expected = np.load(path), np.load(reference)
    if isinstance(expected, np.ndarray):
        assert actual.tobytes() == expected.tobytes(), f"{where}, but {path.name} differs from the uninterrupted run's"
        return
    with actual, expected:
        assert sorted(actual.files) == sorted(expected.files), where
        for name in expected.files:
            assert actual[name].tobytes() == expected[name].tobytes(), (
                f"{where}, but {name} of {path.name} differs from the uninterrupted run's"
            )


def assert_rerun_finishes_identically(config: Path, reference, *, workers: int = 1) -> None:
    code, output = run_to_end(config, workers=workers)
    assert code == 0, f"the rerun after the kill failed (exit {code}):\n{output}"
    assert_same_result(config.parent / "out.zarr", reference.output)


# --- fixtures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    inputs: Path
    output: Path
    seconds: float  # wall time of the uninterrupted run
    trace: list[str]  # the writes of an uninterrupted single-worker run, in order
    blocking: object


@pytest.fixture(scope="module")
def reference(tmp_path_factory, flyem_crop) -> Reference:
    """An uninterrupted run of the plain boundary-map config (8 blocks), and the trace of another's writes."""
    from emflow.workflows.segmentation import load_run

    inputs = write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "config.toml", inputs, folder / "out.zarr")
    run = start_run(config)
    code = run.wait()
    seconds = time.monotonic() - run.started
    assert code == 0, run.output()

    traced = tmp_path_factory.mktemp("traced")
    trace = traced / "trace.txt"
    code, output = run_to_end(write_config(traced / "config.toml", inputs, traced / "out.zarr"), kill_point=KillPoint("", 0, "", trace))
    assert code == 0, output
    assert_same_result(traced / "out.zarr", folder / "out.zarr")  # the hooks change nothing
    return Reference(
        inputs, folder / "out.zarr", seconds, trace.read_text().splitlines(), load_run(str(config.resolve())).geometry.blocking
    )


def new_config(folder: Path, reference: Reference, **sections) -> Path:
    return write_config(folder / "config.toml", reference.inputs, folder / "out.zarr", **sections)


def test_the_write_trace_covers_every_kind_of_write(reference):
    """The kill points below are chosen from this trace; it must see the writes that matter."""
    kinds = {line.split(" ", 1)[0] for line in reference.trace}
    assert kinds == {"journal", "file", "chunk"}
    for pattern in (
        r"^journal out\.zarr\.work/status/write_segmentation/",
        r"^file out\.zarr\.work/status/multicut\.json$",
        r"^chunk out\.zarr/segmentation/s0/c/",
    ):
        assert any(re.search(pattern, line) for line in reference.trace), pattern


# --- kills at exact writes --------------------------------------------------------------------

# (pattern, occurrence (-1: the last in the trace), moment, workers); the id says what is killed.
EXACT_KILL_POINTS = {
    "output-group-metadata-torn": (r"^chunk \.?out\.zarr[^/]*/zarr\.json$", 1, "torn", 1),
    "output-group-created-owner-not-yet-recorded": (r"^chunk \.?out\.zarr[^/]*/zarr\.json$", 1, "after", 1),
    "supervoxel-chunk-written-before-its-record": (r"^chunk out\.zarr/supervoxels/s0/c/", 3, "after", 1),
    "supervoxels-journal-line-torn": (r"^journal out\.zarr\.work/status/supervoxels/", 2, "torn", 2),
    "supervoxel-ids-record-torn": (r"^file out\.zarr\.work/status/supervoxel_ids\.json$", 1, "torn", 1),
    "block-graph-partial-result-torn": (r"^file out\.zarr\.work/blocks/block_graph/", 4, "torn", 2),
    "block-graph-stage-record-written": (r"^file out\.zarr\.work/status/block_graph\.json$", 1, "after", 2),
    "edge-features-chunk-not-written": (r"^chunk out\.zarr/graph/edge_features/c/", 1, "before", 1),
    "multicut-record-complete-but-not-renamed": (r"^file out\.zarr\.work/status/multicut\.json$", 1, "before", 1),
    "segmentation-chunk-torn": (r"^chunk out\.zarr/segmentation/s0/c/", 5, "torn", 2),
    "last-write-of-the-run": ("", -1, "before", 1),
}


def kill_at_write(folder: Path, config: Path, reference: Reference, pattern: str, occurrence: int, moment: str, workers: int) -> None:
    """Run until the kill point, check the records left behind; a rerun must finish identically."""
    if occurrence < 0:
        occurrence += 1 + sum(1 for line in reference.trace if re.search(pattern, line))
    trace = folder / "trace.txt"
    code, output = run_to_end(config, workers=workers, kill_point=KillPoint(pattern, occurrence, moment, trace))
    assert code == -signal.SIGKILL, f"the run was not killed at write {occurrence} matching {pattern!r} (exit {code}):\n{output}"
    last_writes = "\n".join(trace.read_text().splitlines()[-5:])
    try:
        assert_records_describe_finished_outputs(folder / "out.zarr", reference.output, reference.blocking)
        assert_rerun_finishes_identically(config, reference)
    except AssertionError as error:
        raise AssertionError(
            f"killed {moment} write {occurrence} matching {pattern!r} with {workers} workers; last writes:\n{last_writes}\n{error}"
        ) from None


@pytest.mark.parametrize("pattern, occurrence, moment, workers", EXACT_KILL_POINTS.values(), ids=EXACT_KILL_POINTS.keys())
def test_kill_at_a_chosen_write_then_rerun_gives_the_identical_result(tmp_path, reference, pattern, occurrence, moment, workers):
    kill_at_write(tmp_path, new_config(tmp_path, reference), reference, pattern, occurrence, moment, workers)


@pytest.mark.parametrize("seed", range(4), ids=lambda seed: f"seed{seed}")
def test_kill_at_a_random_write_then_rerun_gives_the_identical_result(tmp_path, reference, seed):
    # Any of the run's writes, drawn reproducibly: the seed is in the test id.
    generator = random.Random(seed)
    occurrence = generator.randrange(1, len(reference.trace) + 1)
    moment, workers = generator.choice(("before", "torn", "after")), generator.choice((1, 2))
    kill_at_write(tmp_path, new_config(tmp_path, reference), reference, "", occurrence, moment, workers)


# --- kills from outside -----------------------------------------------------------------------

# (stage, block records (None: its record as a whole), workers).
PROGRESS_KILL_POINTS = [
    ("supervoxels", 3, 2),
    ("supervoxels", 1, 1),
    ("block_graph", 5, 1),
    ("merge_graph", None, 2),
    ("write_segmentation", 2, 2),
]


@pytest.mark.parametrize(
    "stage, count, workers",
    PROGRESS_KILL_POINTS,
    ids=[f"{stage}-{count or 'record'}-w{workers}" for stage, count, workers in PROGRESS_KILL_POINTS],
)
def test_kill_when_a_stage_reaches_a_point_then_rerun_gives_the_identical_result(tmp_path, reference, stage, count, workers):
    config = new_config(tmp_path, reference)
    work = work_folder(tmp_path / "out.zarr")
    kill_when(start_run(config, workers=workers), has_record(work, stage) if count is None else has_block_records(work, stage, count))
    assert_records_describe_finished_outputs(tmp_path / "out.zarr", reference.output, reference.blocking)
    assert_rerun_finishes_identically(config, reference, workers=workers)


@pytest.mark.parametrize("seed", range(2), ids=lambda seed: f"seed{seed}")
def test_kill_after_a_random_delay_then_rerun_gives_the_identical_result(tmp_path, reference, seed):
    # Up to 80 % of an uninterrupted run's time. Should the run still end first (the machine got
    # faster since the reference run), the delay is halved and the run tried again, on a new output.
    delay = random.Random(seed).uniform(0.0, 0.8 * reference.seconds)
    for attempt in range(4):
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        config = new_config(folder, reference)
        run = start_run(config, workers=2)
        while run.poll() is None and time.monotonic() - run.started < delay:
            time.sleep(0.002)
        if run.kill() == -signal.SIGKILL:
            break
        delay /= 2
    else:
        pytest.fail(f"four runs ended before a kill after {2 * delay:.3f} s or more")
    assert_records_describe_finished_outputs(folder / "out.zarr", reference.output, reference.blocking)
    assert_rerun_finishes_identically(config, reference)


def test_two_kills_in_a_row_then_rerun_gives_the_identical_result(tmp_path, reference):
    config = new_config(tmp_path, reference)
    work = work_folder(tmp_path / "out.zarr")
    kill_when(start_run(config, workers=2), has_block_records(work, "supervoxels", 2))
    # The second run resumes the first and is killed in turn, in a later stage.
    kill_when(start_run(config, workers=2), has_block_records(work, "block_graph", 3))
    assert_records_describe_finished_outputs(tmp_path / "out.zarr", reference.output, reference.blocking)
    assert_rerun_finishes_identically(config, reference, workers=2)


# --- damaged records and leftover temporary files ---------------------------------------------


def test_torn_journal_lines_and_leftover_partial_files_are_never_taken_as_done(tmp_path, reference):
    from luigi.task_register import Register

    from emflow.tasks.adapter import stage_record
    from emflow.workflows.segmentation import load_run

    config = new_config(tmp_path, reference)
    output, work = tmp_path / "out.zarr", work_folder(tmp_path / "out.zarr")
    code, log = run_to_end(
        config, kill_point=KillPoint(r"^journal out\.zarr\.work/status/block_graph/", 3, "after", tmp_path / "trace.txt")
    )
    assert code == -signal.SIGKILL, log
    journals = work / "status" / "block_graph"
    done = block_records(work, "block_graph")
    assert len(done) == 3

    # Cut the last line of a journal short (its newline and last bytes gone): that block is not done.
    journal = max(journals.glob("*.jsonl"), key=lambda path: path.stat().st_mtime_ns)
    last_block = json.loads(journal.read_bytes().splitlines()[-1])["block_id"]
    journal.write_bytes(journal.read_bytes()[:-20])
    assert last_block not in block_records(work, "block_graph")
    # Garbage without a newline at the end of another stage's journal, and a line that is no JSON.
    with open(next((work / "status" / "supervoxels").glob("*.jsonl")), "ab") as other:
        other.write(b'{"block_id": 7, "fingerprint": "')
    with open(journals / "6-8.jsonl", "ab") as other:
        other.write(b"not a record\n")
    records_before = {stage: block_records(work, stage) for stage in ("supervoxels", "block_graph")}

    # Temporary files as a killed writer leaves them, named as targets.atomic and zarr name theirs.
    # One is a complete, valid record of the multicut with the expected fingerprint: never read.
    fingerprint = stage_record(load_run(str(config.resolve())), "multicut").expected_fingerprint
    Register.clear_instance_cache()  # no task instance of this process is inherited by the rerun
    planted = {"fingerprint": fingerprint, "finished": time.time(), "result": {"number_of_segments": 1, "energy": 0.0}}
    (work / "status" / ".multicut.json.k1ll3d.partial").write_text(json.dumps(planted))
    (work / "global" / "multicut").mkdir(parents=True, exist_ok=True)
    np.save(work / "global" / "multicut" / ".node_labels.npy.k1ll3d.partial", np.zeros(10, dtype=np.uint64))
    (work / "blocks" / "block_graph" / f".{last_block}.npz.k1ll3d.partial").write_bytes(b"PK\x03\x04 half a file")
    chunk = output / "segmentation" / "s0" / "c" / "0" / "0" / f"1.{uuid.uuid4().hex}.partial"
    chunk.parent.mkdir(parents=True, exist_ok=True)
    chunk.write_bytes(b"\x28\xb5\x2f\xfd half a chunk")
    assert_records_describe_finished_outputs(output, reference.output, reference.blocking)

    assert_rerun_finishes_identically(config, reference)
    # Damage is never taken as a record, and the records that were whole were kept, not redone.
    for stage, before in records_before.items():
        after = block_records(work, stage)
        assert all(after[block_id] == record for block_id, record in before.items()), f"{stage}: a finished block was run again"
    assert json.loads((work / "status" / "multicut.json").read_text())["finished"] > planted["finished"], "the multicut really ran"


# --- injected failures ------------------------------------------------------------------------

BLOCK_STAGES = ("supervoxels", "block_graph", "write_segmentation")


def test_injected_failures_are_retried_and_the_run_succeeds_in_one_go(tmp_path, reference):
    # 24 block tasks (3 stages x 8 blocks), each attempt failing with probability 0.4, 17 attempts
    # each: the run fails with probability <= 24 * 0.4**17 = 4e-6, and no attempt fails with
    # probability 0.6**24 = 5e-6 (then the `attempts > 1` check below fails): a flake in 100 000 runs.
    config = new_config(tmp_path, reference, scheduling={"retries": 16})
    code, output = run_to_end(config, workers=2, environment={INJECT_FAILURES: "0.4"})
    assert code == 0, output
    assert_same_result(tmp_path / "out.zarr", reference.output)
    work = work_folder(tmp_path / "out.zarr")
    attempts = {
        (stage, block_id): record.result["attempts"] for stage in BLOCK_STAGES for block_id, record in block_records(work, stage).items()
    }
    assert len(attempts) == 24 and all(1 <= count <= 17 for count in attempts.values())
    retried = [key for key, count in attempts.items() if count > 1]
    assert retried, "no block attempt failed (probability 5e-6)"
    stage, block_id = retried[0]
    assert "InjectedFailure" in (work / "logs" / stage / f"{block_id}.log").read_text(), "the block's log keeps its failed attempts"
    assert not list((work / "failed").rglob("*.json")), "a block that succeeded on a retry left a failure record"


def test_injected_failures_without_retries_fail_the_run_and_reruns_finish_identically(tmp_path, reference):
    config = new_config(tmp_path, reference, scheduling={"retries": 0})
    work = work_folder(tmp_path / "out.zarr")
    failing = {INJECT_FAILURES: "0.5"}

    # The first run fails unless all 24 block attempts succeed (probability 2**-24).
    code, output = run_to_end(config, environment=failing)
    assert code == 1, output
    named = re.findall(r"(\w+) block (\d+): InjectedFailure: .*\n\s+log: (\S+)", output)
    assert named, f"the failed blocks are not named with their error and log:\n{output}"
    for stage, block_id, log in named:
        assert "InjectedFailure" in Path(log).read_text(), log
        failure = json.loads((work / "failed" / stage / f"{block_id}.json").read_text())
        assert failure["error"].startswith("InjectedFailure"), failure
        # The block wrote its outputs before it failed; without a record they are not taken as done.
        assert int(block_id) not in block_records(work, stage), f"{stage} block {block_id} failed but has a record"

    # Reruns with failures still injected make progress and never lose any; at most 20 of them
    # (14 needed on average), then one without injected failures.
    done = 0
    for _ in range(20):
        if code == 0:
            break
        code, output = run_to_end(config, environment=failing)
        assert code in (0, 1), output
        now = sum(len(block_records(work, stage)) for stage in BLOCK_STAGES)
        assert now >= done, "a rerun lost finished blocks"
        done = now
        for stage, block_id, _ in re.findall(r"(\w+) block (\d+): InjectedFailure: .*\n\s+log: (\S+)", output):
            assert int(block_id) not in block_records(work, stage), "a block named as failed has a record"
    code, output = run_to_end(config)
    assert code == 0, output
    assert_same_result(tmp_path / "out.zarr", reference.output)
    assert all(record.result["attempts"] == 1 for stage in BLOCK_STAGES for record in block_records(work, stage).values())
    assert not list((work / "failed").rglob("*.json")), "blocks that later succeeded kept their failure records"


# --- scheduling does not change the result ----------------------------------------------------


@pytest.mark.parametrize(
    "workers, block_groups", [(2, 0), (1, 3), (2, 8)], ids=["2-workers", "3-block-groups", "2-workers-a-group-per-block"]
)
def test_workers_and_block_groups_give_the_identical_result(tmp_path, reference, workers, block_groups):
    config = new_config(tmp_path, reference, scheduling={"block_groups": block_groups})
    code, output = run_to_end(config, workers=workers)
    assert code == 0, output
    assert_same_result(tmp_path / "out.zarr", reference.output)
