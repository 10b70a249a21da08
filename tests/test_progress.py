"""Progress and the end of a run: timestamped lines in logs, tqdm bars on a (pseudo-)terminal, the summary."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from workflow_helpers import read, run_cli, write_config

from emflow.cluster.progress import LogProgress, StageProgress, TerminalProgress, format_duration, format_rate, progress_display

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
# A peak memory as cli.summary prints it: whole MiB below 1 GiB, GiB with one decimal above
# (a pytest process that ran many tests before this one can be past 1 GiB).
MEMORY = r"(\d+ MiB|\d+\.\d GiB)"


def _stages(supervoxels: int, multicut: int) -> list[StageProgress]:
    """A three-stage run: prepare_output done, then 512 supervoxel blocks, then a global multicut."""
    return [
        StageProgress("prepare_output", 1, 1, blockwise=False, ready=True),
        StageProgress("supervoxels", supervoxels, 512, blockwise=True, ready=True),
        StageProgress("multicut", multicut, 1, blockwise=False, ready=supervoxels == 512),
    ]


# (seconds, supervoxel blocks done, multicut done): 4 blocks/s, then a multicut of 47 s.
RUN = [(0, 0, 0), (10, 40, 0), (30, 120, 0), (45, 180, 0), (60, 240, 0), (128, 512, 0), (140, 512, 0), (170, 512, 0), (175, 512, 1)]


def test_log_lines_name_counts_rate_and_eta_at_a_sane_rate():
    clock = [0.0]
    stream = io.StringIO()
    display = LogProgress(stream, log_interval=30, clock=lambda: clock[0])
    for seconds, supervoxels, multicut in RUN:
        clock[0] = seconds
        display.update(_stages(supervoxels, multicut))
        if seconds == 10:
            display.note("jobs: 2 RUNNING")
            display.note("jobs: 2 RUNNING")  # unchanged: no second line
    lines = stream.getvalue().splitlines()
    assert all(TIMESTAMP.match(line) for line in lines), lines
    assert [TIMESTAMP.sub("", line) for line in lines] == [
        "done before this run: prepare_output",
        "supervoxels 0/512 blocks (0 %)",
        "jobs: 2 RUNNING",
        # 120 blocks in 30 s: 4.0 blocks/s, 392 left: 98 s.
        "supervoxels 120/512 blocks (23 %), 4.0 blocks/s, ETA 1:38",
        "supervoxels 240/512 blocks (46 %), 4.0 blocks/s, ETA 1:08",
        "supervoxels done: 512 blocks in 2:08 (4.0 blocks/s)",
        "multicut running",
        "multicut running for 0:42",
        "multicut done in 0:47",
    ]


def test_a_resumed_stage_counts_only_the_blocks_done_since():
    clock = [0.0]
    stream = io.StringIO()
    display = LogProgress(stream, log_interval=30, clock=lambda: clock[0])
    display.update(_stages(100, 0))
    clock[0] = 30.0
    display.update(_stages(220, 0))
    lines = [TIMESTAMP.sub("", line) for line in stream.getvalue().splitlines()]
    # 120 blocks in 30 s, not 220: the 100 done by an earlier run do not count.
    assert lines[-1] == "supervoxels 220/512 blocks (42 %), 4.0 blocks/s, ETA 1:13"


def test_durations_and_rates_read_as_people_write_them():
    assert [format_duration(seconds) for seconds in (0, 59.6, 95, 3599, 3723)] == ["0:00", "1:00", "1:35", "59:59", "1:02:03"]
    assert [format_rate(rate) for rate in (25.4, 4.06, 0.25)] == ["25 blocks/s", "4.1 blocks/s", "15.0 blocks/min"]


# Feeds RUN to the display `progress_display` chooses for standard error, with a clock of its own.
FEED = textwrap.dedent(
    """
    import sys
    from emflow.cluster.progress import StageProgress, progress_display
    from test_progress import RUN, _stages

    display = progress_display()
    clock = [0.0]
    display._now = lambda: clock[0]
    print(type(display).__name__, file=sys.stderr)
    for seconds, supervoxels, multicut in RUN:
        clock[0] = seconds
        display.update(_stages(supervoxels, multicut))
    display.close()
    """
)


def _feed_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}


def test_a_terminal_gets_a_bar_per_running_stage():
    """Standard error on a pseudo-terminal of 100 columns: tqdm bars with counts, rate and ETA."""
    import fcntl
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-c", FEED], stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL, env=_feed_environment()
    )
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        try:
            chunk = os.read(controller, 65536) if ready else b""
        except OSError:  # the terminal's other end closed: the process ended
            chunk = b""
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=30) == 0
    text = output.decode()
    assert text.startswith("TerminalProgress"), text[:200]
    assert not TIMESTAMP.search(text.replace("\r", "\n"))
    # Bars are redrawn in place (carriage returns), each with its counts, percentage, rate and ETA.
    bars = [part for part in re.split(r"[\r\n]", text) if "%|" in part]
    assert any(re.match(r"supervoxels +23%\|[^|]+\| 120/512 blocks, 4\.0 blocks/s, ETA 1:38 *$", bar) for bar in bars), bars
    assert any(re.match(r"multicut +running for 0:42", part) for part in re.split(r"[\r\n]", text)), text
    # Finished stages leave one line each; the bars are gone at the end.
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    for line in ("done before this run: prepare_output", "supervoxels done: 512 blocks in 2:08 (4.0 blocks/s)", "multicut done in 0:47"):
        assert line in lines, text


def test_output_that_is_not_a_terminal_gets_timestamped_lines():
    completed = subprocess.run([sys.executable, "-c", FEED], capture_output=True, text=True, env=_feed_environment(), timeout=60)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stderr.splitlines()
    assert lines[0] == "LogProgress"
    assert all(TIMESTAMP.match(line) for line in lines[1:]) and "\r" not in completed.stderr
    assert isinstance(progress_display(io.StringIO()), LogProgress)
    assert TerminalProgress.interval < LogProgress.interval


def test_a_run_shows_progress_lines_and_ends_with_its_summary(tmp_path, workflow_inputs, capsys):
    config = write_config(tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr")
    assert run_cli("run", config) == 0
    captured = capsys.readouterr()
    progress = captured.err.splitlines()
    assert all(TIMESTAMP.match(line) for line in progress), progress
    assert any(re.search(r" write_segmentation done: 8 blocks( in |$)", line) for line in progress), progress
    out = captured.out
    segmentation = read(tmp_path / "out.zarr", "segmentation")
    segments = np.unique(segmentation[segmentation != 0]).size
    assert re.search(r"^emflow: run complete in \d+\.\d s$", out, re.MULTILINE), out
    assert f"  output: {tmp_path / 'out.zarr'}\n" in out
    assert f"    segmentation  (64, 128, 128) uint64, {segments} segments\n" in out
    assert f"  look at it: emflow view {config}\n" in out
    stages = (
        "prepare_output",
        "supervoxels",
        "supervoxel_ids",
        "block_graph",
        "merge_graph",
        "edge_costs",
        "multicut",
        "write_segmentation",
    )
    for stage in stages:
        # tasks, seconds summed over them, the largest peak memory of their processes.
        tasks = 1 if stage in ("prepare_output", "supervoxel_ids", "merge_graph", "edge_costs", "multicut") else 8
        assert re.search(rf"^  {stage} +{tasks} +\d+\.\d\d +{MEMORY}$", out, re.MULTILINE), out
    assert re.search(rf"^  this run +29 +\d+\.\d\d +{MEMORY}$", out, re.MULTILINE), out

    # Nothing left to do: said so, and each stage's figures are marked as the earlier run's.
    assert run_cli("run", config) == 0
    out = capsys.readouterr().out
    assert re.search(r"^emflow: nothing to do: every stage was done before \(\d+\.\d s to check\)$", out, re.MULTILINE), out
    assert all(re.search(rf"^  {stage} .*\(done before this run\)$", out, re.MULTILINE) for stage in stages), out

    # The `emflow` command counts from its process's start: 1.5 s spent before the command (as
    # the interpreter's start and the imports are) are in the seconds it says it took.
    script = (
        f"import sys, time; time.sleep(1.5); sys.argv = ['emflow', 'run', {str(config)!r}]; from emflow.cli.main import command; command()"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    said = re.search(r"^emflow: nothing to do: every stage was done before \((\d+\.\d) s to check\)$", completed.stdout, re.MULTILINE)
    assert said and float(said.group(1)) >= 1.5, completed.stdout
