"""Completion records: written last, so a result without its record is never taken as done.

A record holds the fingerprint of everything the result depends on (see the tasks'
`stage_fingerprint`) and a small `result` dict (e.g. the number of supervoxels a block produced). A
task is complete only if its record exists *and* carries the expected fingerprint; a record with
another fingerprint marks the task stale (its output came from another config or input).

Global tasks have a JSON file each, written atomically. Blocks have a line each in their stage's
journals (`journal.py`). A block-wise stage also has a file of its own, written once all its blocks
are done, which notes the size of every journal of the stage: while no journal has grown since,
the whole stage is done, which costs one directory listing to check however many blocks it has.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import luigi

from .atomic import atomic_write_text
from .journal import BlockJournal, BlockRecord, JournalReader


class CompletionState(enum.Enum):
    DONE = "done"
    STALE = "stale"
    PENDING = "pending"


def record_state(fingerprint: str | None, expected_fingerprint: str) -> CompletionState:
    if fingerprint is None:
        return CompletionState.PENDING
    return CompletionState.DONE if fingerprint == expected_fingerprint else CompletionState.STALE


class CompletionTarget(luigi.Target):
    """The record of a global task: one JSON file."""

    def __init__(self, path: str | Path, expected_fingerprint: str):
        self.path = Path(path)
        self.expected_fingerprint = expected_fingerprint

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            # Records are written atomically, so this is damage from outside; treat as not done.
            return None

    def state(self) -> CompletionState:
        record = self.read()
        return record_state(None if record is None else record.get("fingerprint"), self.expected_fingerprint)

    def exists(self) -> bool:
        return self.state() is CompletionState.DONE

    def result(self) -> dict[str, Any]:
        record = self.read()
        if record is None or record.get("fingerprint") != self.expected_fingerprint:
            raise FileNotFoundError(f"no completion record with the expected fingerprint at {self.path}")
        return record["result"]

    def write(self, result: dict[str, Any] | None = None) -> None:
        record = {"fingerprint": self.expected_fingerprint, "finished": time.time(), "result": result or {}}
        atomic_write_text(self.path, json.dumps(record, sort_keys=True))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class BlockTarget(luigi.Target):
    """The record of one block: its latest line in the journals of its stage's folder."""

    def __init__(self, folder: str | Path, block_id: int, expected_fingerprint: str):
        self.folder = Path(folder)
        self.block_id = block_id
        self.expected_fingerprint = expected_fingerprint

    def read(self) -> BlockRecord | None:
        return JournalReader(self.folder, (self.block_id, self.block_id + 1)).refresh().get(self.block_id)

    def state(self) -> CompletionState:
        record = self.read()
        return record_state(None if record is None else record.fingerprint, self.expected_fingerprint)

    def exists(self) -> bool:
        return self.state() is CompletionState.DONE

    def result(self) -> dict[str, Any]:
        record = self.read()
        if record is None or record.fingerprint != self.expected_fingerprint:
            raise FileNotFoundError(f"no record of block {self.block_id} with the expected fingerprint in {self.folder}")
        return record.result

    def write(self, result: dict[str, Any] | None = None) -> None:
        with BlockJournal(self.folder, self.block_id, self.block_id + 1) as journal:
            journal.append(self.block_id, self.expected_fingerprint, result)

    def remove(self) -> None:
        """Invalidate the block: a line without fingerprint overrides its earlier records."""
        with BlockJournal(self.folder, self.block_id, self.block_id + 1) as journal:
            journal.append(self.block_id, None)


class StageCompletionTarget(CompletionTarget):
    """The record of a whole block-wise stage, valid while the stage's journals have not grown.

    `expected_fingerprint` is the stage's (which covers the state of every input chunk its blocks
    read); `block_fingerprints(first, stop)` gives the fingerprint each block of a range must have
    (which covers the chunks that block reads), so one changed chunk makes only its blocks stale.
    """

    def __init__(
        self,
        path: str | Path,
        expected_fingerprint: str,
        *,
        block_folder: str | Path,
        number_of_blocks: int,
        block_fingerprints: Callable[[int, int], list[str]],
    ):
        super().__init__(path, expected_fingerprint)
        self.block_folder = Path(block_folder)
        self.number_of_blocks = number_of_blocks
        self.block_fingerprints = block_fingerprints

    def exists(self) -> bool:
        record = self.read()
        if record is None or record.get("fingerprint") != self.expected_fingerprint:
            return False
        return record["result"].get("journals") == JournalReader(self.block_folder).snapshot()

    def block_records(self, block_range: tuple[int, int] | None = None) -> dict[int, BlockRecord]:
        """The latest record of every block of the stage (or of `block_range`) that has one."""
        records = JournalReader(self.block_folder, block_range).refresh()
        first, stop = block_range or (0, self.number_of_blocks)
        return {block_id: record for block_id, record in records.items() if first <= block_id < stop}

    def block_states(self, block_range: tuple[int, int] | None = None) -> dict[int, CompletionState]:
        """State of every block of the stage (or of `block_range`) that has a record."""
        first, stop = block_range or (0, self.number_of_blocks)
        records = self.block_records((first, stop))
        if not records:
            return {}
        expected = self.block_fingerprints(first, stop)
        return {block_id: record_state(record.fingerprint, expected[block_id - first]) for block_id, record in records.items()}

    def write(self, result: dict[str, Any] | None = None) -> None:
        """Record the stage as done; raises if a block of it is not."""
        states = self.block_states()
        missing = [block_id for block_id in range(self.number_of_blocks) if states.get(block_id) is not CompletionState.DONE]
        if missing:
            raise RuntimeError(f"{len(missing)} blocks of the stage in {self.block_folder} are not done, e.g. {missing[:10]}")
        super().write({**(result or {}), "journals": JournalReader(self.block_folder).snapshot()})
