"""A run's progress as people read it: a bar per running stage on a terminal, timestamped lines in logs.

Progress is a sequence of `StageProgress` snapshots, one per stage (tasks done out of all, and
whether every stage it reads from is done, so that it runs or waits for a worker), polled from a
background thread while the scheduler works (`start_progress`). Two displays render them:

- `TerminalProgress`, when standard error is a terminal: a tqdm bar per running stage with its
  counts, percentage, rate and ETA; a finished stage leaves one line above the bars.
- `LogProgress` otherwise (SLURM job logs, output redirected to a file, `nohup`): plain lines with a
  timestamp, one when a stage starts and one when it ends, and one per running stage every
  `LOG_INTERVAL` seconds, e.g. ``2026-11-29 21:04:05 supervoxels 120/512 blocks (23 %), 4.1
  blocks/s, ETA 1:35``. A run of a few seconds writes a few lines; a day-long one a line a stage
  and minute at most, whatever its number of blocks.

Rates count only the blocks finished since this process first saw the stage running, so the ETA of
a resumed run is not flattered by the blocks an earlier run did. A stage's blocks take similar
times, so the mean rate since the stage started is the ETA's estimate (no smoothing).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

# Seconds between two looks at the records: a look reads what the block journals gained since the
# last one and lists each stage's folder, well under a millisecond per stage, so a terminal's bars
# can move every second; lines in a log only need the moments stages start and end to the second.
TERMINAL_INTERVAL = 1.0
LOG_POLL_INTERVAL = 2.0
# Seconds between two lines about one running stage in a log.
LOG_INTERVAL = 30.0


@dataclass(frozen=True)
class StageProgress:
    """Where one stage stands: `done` of its `total` tasks (blocks, or 1 for a global stage) have a
    current record; `ready`: every stage it reads from is done, so it runs or waits for a worker."""

    stage: str
    done: int
    total: int
    blockwise: bool
    ready: bool

    @property
    def complete(self) -> bool:
        return self.done >= self.total


def format_duration(seconds: float) -> str:
    """A duration as a clock reads: "1:35", "1:02:03"."""
    minutes, whole_seconds = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{whole_seconds:02d}" if hours else f"{minutes}:{whole_seconds:02d}"


def format_rate(blocks_per_second: float) -> str:
    """Blocks per second, or per minute for stages whose blocks take more than a second (CNN blocks on a CPU)."""
    if blocks_per_second >= 10:
        return f"{blocks_per_second:.0f} blocks/s"
    if blocks_per_second >= 1:
        return f"{blocks_per_second:.1f} blocks/s"
    return f"{60 * blocks_per_second:.1f} blocks/min"


@dataclass
class _Running:
    started: float  # time.monotonic() when first seen running
    initial: int  # blocks done then


class _StageClock:
    """What changed between two snapshots, and the rate of each running stage."""

    def __init__(self) -> None:
        self.running: dict[str, _Running] = {}
        self.finished: set[str] = set()
        self.first = True

    def observe(self, stages: Sequence[StageProgress], now: float) -> tuple[list[StageProgress], list[StageProgress], list[StageProgress]]:
        """(stages done before this process looked, stages that started, stages that finished)."""
        done_before: list[StageProgress] = []
        started: list[StageProgress] = []
        finished: list[StageProgress] = []
        for stage in stages:
            if stage.stage in self.finished:
                continue
            if stage.complete:
                self.finished.add(stage.stage)
                (done_before if self.first else finished).append(stage)
            elif stage.ready and stage.stage not in self.running:
                self.running[stage.stage] = _Running(now, stage.done)
                started.append(stage)
        self.first = False
        return done_before, started, finished

    def elapsed(self, stage: StageProgress, now: float) -> float | None:
        running = self.running.get(stage.stage)
        return None if running is None else now - running.started

    def rate(self, stage: StageProgress, now: float) -> float | None:
        """Blocks per second since the stage was first seen running; None before any block finished."""
        running = self.running.get(stage.stage)
        if running is None or stage.done <= running.initial or now <= running.started:
            return None
        return (stage.done - running.initial) / (now - running.started)

    def speed(self, stage: StageProgress, now: float) -> str:
        """Rate and ETA of a running block-wise stage ("4.1 blocks/s, ETA 1:35"); "" before a block finished."""
        rate = self.rate(stage, now)
        return "" if rate is None else f"{format_rate(rate)}, ETA {format_duration((stage.total - stage.done) / rate)}"

    def finished_line(self, stage: StageProgress, now: float) -> str:
        """e.g. "supervoxels done: 512 blocks in 2:05 (4.1 blocks/s)", "multicut done in 0:15"."""
        elapsed, rate = self.elapsed(stage, now), self.rate(stage, now)
        self.running.pop(stage.stage, None)
        # A stage that started and ended between two looks was never seen running: no time to tell.
        timing = "" if elapsed is None else f" in {format_duration(elapsed)}"
        if not stage.blockwise:
            return f"{stage.stage} done{timing}"
        speed = "" if rate is None or elapsed is None else f" ({format_rate(rate)})"
        return f"{stage.stage} done: {stage.total} blocks{timing}{speed}"


def _done_before_line(stages: Sequence[StageProgress]) -> str:
    return "done before this run: " + ", ".join(stage.stage for stage in stages)


class LogProgress:
    """Timestamped lines for logs: stage starts and ends, and each running stage every `log_interval` s."""

    interval = LOG_POLL_INTERVAL

    def __init__(self, stream: TextIO, log_interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.log_interval = log_interval
        self._now = clock
        self._stages = _StageClock()
        self._last_line: dict[str, float] = {}
        self._note = ""
        self._lock = threading.Lock()

    def update(self, stages: Sequence[StageProgress]) -> None:
        with self._lock:
            now = self._now()
            done_before, started, finished = self._stages.observe(stages, now)
            if done_before:
                self._print(_done_before_line(done_before))
            for stage in finished:
                self._print(self._stages.finished_line(stage, now))
            started_names = {stage.stage for stage in started}
            for stage in stages:
                if stage.stage not in self._stages.running:
                    continue
                if stage.stage in started_names or now - self._last_line.get(stage.stage, now) >= self.log_interval:
                    self._print(self._running_line(stage, now))
                    self._last_line[stage.stage] = now

    def note(self, text: str) -> None:
        """A line about the run as a whole (SLURM's job states), printed when it changes."""
        with self._lock:
            if text != self._note:
                self._note = text
                self._print(text)

    def close(self) -> None:
        self.stream.flush()

    def _running_line(self, stage: StageProgress, now: float) -> str:
        if not stage.blockwise:
            elapsed = self._stages.elapsed(stage, now) or 0.0
            return f"{stage.stage} running" + (f" for {format_duration(elapsed)}" if elapsed >= 1 else "")
        speed = self._stages.speed(stage, now)
        percent = 100 * stage.done // max(stage.total, 1)
        return f"{stage.stage} {stage.done}/{stage.total} blocks ({percent} %)" + (f", {speed}" if speed else "")

    def _print(self, line: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=self.stream, flush=True)


@functools.cache
def _bar_class() -> type[tqdm]:
    """tqdm's bar without a monitor thread of its own: the bars are refreshed by the progress
    thread, and Luigi forks its worker processes while they are shown. Imported on the first bar:
    importing tqdm took 7 ms of a run's start, and only a terminal shows bars."""
    from tqdm import tqdm

    class _Bar(tqdm):
        monitor_interval = 0

    return _Bar


class TerminalProgress:
    """A tqdm bar per running stage; a finished stage's bar becomes one line above the others."""

    interval = TERMINAL_INTERVAL

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self._now = clock
        self._stages = _StageClock()
        self._bars: dict[str, tqdm] = {}
        self._note = ""
        self._width = 0
        self._lock = threading.Lock()

    def update(self, stages: Sequence[StageProgress]) -> None:
        with self._lock:
            now = self._now()
            self._width = max((len(stage.stage) for stage in stages), default=0)
            done_before, _, finished = self._stages.observe(stages, now)
            if done_before or finished:
                # The bars go and come back from the top: a bar closed above others would leave a gap.
                self._close_bars()
            if done_before:
                self._write(_done_before_line(done_before))
            for stage in finished:
                self._write(self._stages.finished_line(stage, now))
            for stage in stages:
                if stage.stage in self._stages.running:
                    self._show(stage, now)

    def note(self, text: str) -> None:
        with self._lock:
            if text != self._note:
                self._note = text
                self._write(text)

    def close(self) -> None:
        with self._lock:
            self._close_bars()

    def _close_bars(self) -> None:
        for bar in reversed(self._bars.values()):
            bar.close()
        self._bars.clear()

    def _show(self, stage: StageProgress, now: float) -> None:
        elapsed = f"running for {format_duration(self._stages.elapsed(stage, now) or 0.0)}"
        name = f"{stage.stage:<{self._width}}"
        description = name if stage.blockwise else f"{name}  {elapsed}"
        postfix = (self._stages.speed(stage, now) or elapsed) if stage.blockwise else ""
        bar = self._bars.get(stage.stage)
        if bar is None:
            # Counts and percentage from tqdm; rate and ETA as the log lines have them (`_StageClock`).
            bar_format = "{desc}  {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} blocks{postfix}" if stage.blockwise else "{desc}"
            # A terminal that reports no size (a bare pseudo-terminal) gets 80 × 24, not an empty screen.
            width = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 80, "nrows": 24}
            bar = _bar_class()(
                total=stage.total,
                initial=stage.done,
                desc=description,
                postfix=postfix or None,
                file=self.stream,
                leave=False,
                bar_format=bar_format,
                mininterval=0,
                **width,
            )
            self._bars[stage.stage] = bar
            return
        bar.n = stage.done
        bar.set_description_str(description, refresh=False)
        bar.set_postfix_str(postfix, refresh=False)
        bar.refresh()

    def _write(self, line: str) -> None:
        _bar_class().write(line, file=self.stream)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def progress_display(stream: TextIO | None = None) -> TerminalProgress | LogProgress:
    """Bars where `stream` (default: standard error) is a terminal, timestamped lines otherwise."""
    stream = sys.stderr if stream is None else stream
    return TerminalProgress(stream) if stream.isatty() else LogProgress(stream)


class ProgressThread:
    """Shows `progress()` on `display` from a background thread until `stop()`, which shows the last state."""

    def __init__(self, progress: Callable[[], Sequence[StageProgress]], display: TerminalProgress | LogProgress | None = None):
        self.progress = progress
        self.display = progress_display() if display is None else display
        # The first look before any task can run: what it finds done was done before this run.
        self._show()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="emflow-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.display.interval):
            self._show()

    def _show(self) -> None:
        try:
            stages = self.progress()
        except OSError:
            return  # a record read while a stage replaced it: the next look sees it whole
        self.display.update(stages)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._show()
        self.display.close()


def start_progress(progress: Callable[[], Sequence[StageProgress]] | None) -> ProgressThread | None:
    """A `ProgressThread` on standard error for `progress`, or None when there is none."""
    return None if progress is None else ProgressThread(progress)
