"""Block records kept in append-only journals: one line per finished (or invalidated) block.

Creating a file costs 0.5 to 1 ms on the disks measured here (far more on cluster filesystems),
more than all the rest of a block's bookkeeping, so block records are not files of their own.
Each stage has a folder of journals; the blocks `first`..`stop - 1` run by one block group append
to `<first>-<stop>.jsonl`, one JSON line per block, in one `write` call on a file opened with
O_APPEND (so a line is never interleaved with another). A line counts only when it is complete and
parses: a line cut short by a killed writer is ignored, and the next writer starts on a new line.

A block's state is its most recent line (by the time it was written) over all journals of the
stage, so a later run with another config, or an invalidation (a line with no fingerprint),
overrides an earlier record wherever that record is.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOURNAL_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class BlockRecord:
    block_id: int
    fingerprint: str | None  # None: invalidated
    finished: float
    result: dict[str, Any] = field(default_factory=dict)


def journal_name(first_block: int, stop_block: int) -> str:
    return f"{first_block}-{stop_block}{JOURNAL_SUFFIX}"


def journal_range(name: str) -> tuple[int, int] | None:
    """The block range of a journal file name, or None if `name` is not a journal."""
    if not name.endswith(JOURNAL_SUFFIX):
        return None
    first, separator, stop = name[: -len(JOURNAL_SUFFIX)].partition("-")
    if not (separator and first.isdigit() and stop.isdigit()):
        return None
    return int(first), int(stop)


class BlockJournal:
    """Appends the records of blocks `first_block`..`stop_block - 1` of one stage."""

    def __init__(self, folder: str | Path, first_block: int, stop_block: int):
        self.path = Path(folder) / journal_name(first_block, stop_block)
        self._descriptor: int | None = None

    def append(self, block_id: int, fingerprint: str | None, result: dict[str, Any] | None = None) -> None:
        record = {"block_id": int(block_id), "fingerprint": fingerprint, "finished": time.time(), "result": result or {}}
        os.write(self._open(), (json.dumps(record, sort_keys=True) + "\n").encode())

    def _open(self) -> int:
        if self._descriptor is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._descriptor).st_size
            if size and os.pread(self._descriptor, 1, size - 1) != b"\n":
                os.write(self._descriptor, b"\n")  # close a line cut short by a killed writer
        return self._descriptor

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> BlockJournal:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


class JournalReader:
    """The latest record of each block of one stage, read incrementally.

    With `block_range` (first, stop), only journals whose range overlaps it are read. `refresh()`
    reads what was appended since the last call, so a reader kept across calls (progress reports)
    costs only the new lines.
    """

    def __init__(self, folder: str | Path, block_range: tuple[int, int] | None = None):
        self.folder = Path(folder)
        self.block_range = block_range
        self._offsets: dict[str, int] = {}
        self._records: dict[int, BlockRecord] = {}

    def refresh(self) -> dict[int, BlockRecord]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            names = []
        for name in names:
            block_range = journal_range(name)
            if block_range is None or not self._overlaps(block_range):
                continue
            offset = self._offsets.get(name, 0)
            with open(self.folder / name, "rb") as handle:
                handle.seek(offset)
                appended = handle.read()
            complete = appended.rfind(b"\n") + 1  # a last line without newline may still be written
            for line in appended[:complete].splitlines():
                self._add(line)
            self._offsets[name] = offset + complete
        return self._records

    def snapshot(self) -> dict[str, int]:
        """Size of each journal in the folder: changes whenever a block record is added."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return {}
        return {name: os.stat(self.folder / name).st_size for name in sorted(names) if journal_range(name) is not None}

    def _overlaps(self, block_range: tuple[int, int]) -> bool:
        if self.block_range is None:
            return True
        return block_range[0] < self.block_range[1] and self.block_range[0] < block_range[1]

    def _add(self, line: bytes) -> None:
        try:
            fields = json.loads(line)
            record = BlockRecord(int(fields["block_id"]), fields["fingerprint"], float(fields["finished"]), fields["result"])
        except (ValueError, KeyError, TypeError):
            return  # a line damaged from outside; never taken as a record
        known = self._records.get(record.block_id)
        if known is None or record.finished >= known.finished:
            self._records[record.block_id] = record
