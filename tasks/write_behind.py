"""Writing behind a block group: a block's writes and record are done in a thread of their own
while the next block of the group computes (`StageSpec.writes_behind`).

A block's record follows its writes, in the same thread, so a record still means its data is
there: a run killed meanwhile leaves the block without a record, and the block runs again. One
block's writes are in flight at a time: the group waits for them before it hands over the next
block's, which bounds the memory held to two blocks' results and keeps the records in block order.

Why: new file data written in one call went to this machine's disk at 0.2-0.5 GB/s (README, "CNN"),
and a write waits for it; written in the pieces of `emflow.targets.atomic.WRITE_PIECE_BYTES`, as
files have been since stop 42, at 4-5 GB/s while the machine has small pieces of free memory left,
~0.3 GB/s where not. Written in one call, a `predict` block's 18 MB of CNN sums took 0.03-0.05 s to
write, a `blend_predictions` block's 13.6 MB of outputs 0.04-0.08 s. What the two stages spend
beside their forward passes (`emflow predict` of benchmarks/inference.py's crop, 8 blocks, one
worker, their spans less the forward passes; 9 alternating pairs): median 0.81 s writing in the
block's own thread, 0.71 s writing behind (predict 0.34 to 0.29 s, blend_predictions 0.52 to 0.45
s); the slowest 1.38 and 0.95 s. On this 2-core machine torch's threads take both cores during a
forward pass, so a write competes with it; where the network runs on a GPU the cores are free.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class WriteBehind:
    """Work done one piece at a time, in order, in a thread beside the caller (`enabled`), or
    at once where it is handed over (not `enabled`). What a piece raises is raised again in the
    caller: by the next `submit`, or by `wait`, or on leaving the `with` block."""

    def __init__(self, enabled: bool):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="write-behind") if enabled else None
        self._in_flight: Future | None = None

    def submit(self, work: Callable[[], None]) -> None:
        """Do `work` after the piece in flight (raising what that raised), without waiting for it."""
        if self._executor is None:
            work()
            return
        self.wait()
        self._in_flight = self._executor.submit(work)

    def wait(self) -> None:
        """Wait for the piece in flight; raise what it raised."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if error is None:
                self.wait()
        finally:
            # Leaving on an error, the piece in flight still ends before the caller closes what it
            # writes to (a journal); what it raised gives way to the error that is leaving.
            if self._executor is not None:
                self._executor.shutdown(wait=True)
