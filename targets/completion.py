"""Completion records: written last, so a result without its record is never taken as done.

A record holds the fingerprint of everything the result depends on (see the tasks'
`stage_fingerprint`), a small `result` dict (e.g. the number of supervoxels a block produced) and
the state of the files the task wrote (`data`). A task is complete only if its record exists,
carries the expected fingerprint *and* the files it wrote into the output are still as it wrote
them; a record with another fingerprint marks the task stale (its output came from another config
or input), one whose output files changed or went marks it changed.

Global tasks have a JSON file each, written atomically. Blocks have a line each in their stage's
journals (`journal.py`). A block-wise stage also has a file of its own, written once all its blocks
are done, which notes the size of every journal of the stage: while no journal has grown since,
the whole stage is done, which costs one directory listing to check however many blocks it has,
plus one `stat` per output file its blocks wrote (compared through one digest of all their states).
It may also keep totals over its blocks' results (their summed seconds), valid as long as it is:
a summary of a finished run then reads one file per stage, not a line per block.
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
from .journal import BlockRecord, JournalReader

# What a record's data says changed, if anything: a reason naming a file, or None.
DataCheck = Callable[[dict[str, Any]], str | None]


class CompletionState(enum.Enum):
    DONE = "done"
    STALE = "stale"
    PENDING = "pending"
    CHANGED = "changed"  # the record is current, but what the task wrote was changed or deleted since


def record_state(fingerprint: str | None, expected_fingerprint: str) -> CompletionState:
    if fingerprint is None:
        return CompletionState.PENDING
    return CompletionState.DONE if fingerprint == expected_fingerprint else CompletionState.STALE


class CompletionTarget(luigi.Target):
    """The record of a global task: one JSON file. `data_changed(data)` tells whether what the task
    wrote (the record's `data`, see `write`) is no longer on disk as recorded, and why."""

    def __init__(self, path: str | Path, expected_fingerprint: str, *, data_changed: DataCheck | None = None):
        self.path = Path(path)
        self.expected_fingerprint = expected_fingerprint
        self.data_changed = data_changed

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError, RecursionError):
            # Records are written atomically, so this is damage from outside; treat as not done.
            return None

    def state(self) -> CompletionState:
        record = self.read()
        if not isinstance(record, dict):
            return CompletionState.PENDING
        state = record_state(record.get("fingerprint"), self.expected_fingerprint)
        if state is CompletionState.DONE and self.changes(record) is not None:
            return CompletionState.CHANGED
        return state

    def changes(self, record: dict[str, Any] | None = None) -> str | None:
        """Why what the task wrote is not as recorded (None: it is, or the record holds no data)."""
        record = self.read() if record is None else record
        data = record.get("data") if isinstance(record, dict) else None
        if self.data_changed is None or not isinstance(data, dict):
            return None
        return self.data_changed(data)

    def exists(self) -> bool:
        return self.state() is CompletionState.DONE

    def result(self) -> dict[str, Any]:
        record = self.read()
        if not isinstance(record, dict) or record.get("fingerprint") != self.expected_fingerprint:
            raise FileNotFoundError(f"no completion record with the expected fingerprint at {self.path}")
        return record["result"]

    def write(self, result: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
        """Record the task as done with its result summary and `data`, the state of what it wrote."""
        record = {"fingerprint": self.expected_fingerprint, "finished": time.time(), "result": result or {}}
        if data is not None:
            record["data"] = data
        atomic_write_text(self.path, json.dumps(record, sort_keys=True))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class StageCompletionTarget(CompletionTarget):
    """The record of a whole block-wise stage, valid while the stage's journals have not grown.

    `expected_fingerprint` is the stage's (which covers the state of every input chunk its blocks
    read); `block_fingerprints(first, stop)` gives the fingerprint each block of a range must have
    (which covers the chunks that block reads), so one changed chunk makes only its blocks stale.
    `changed_blocks(records)` gives, of some blocks' current records, those whose output files are
    not as recorded (block id → reason); `outputs_digest()` one digest of the current state of every
    output file of every block, kept in the stage's record.
    """

    def __init__(
        self,
        path: str | Path,
        expected_fingerprint: str,
        *,
        block_folder: str | Path,
        number_of_blocks: int,
        block_fingerprints: Callable[[int, int], list[str]],
        changed_blocks: Callable[[dict[int, BlockRecord]], dict[int, str]] | None = None,
        outputs_digest: Callable[[], str] | None = None,
    ):
        super().__init__(path, expected_fingerprint)
        self.block_folder = Path(block_folder)
        self.number_of_blocks = number_of_blocks
        self.block_fingerprints = block_fingerprints
        self.changed_blocks = changed_blocks
        self.outputs_digest = outputs_digest

    def exists(self) -> bool:
        return self._current_result() is not None

    def _current_result(self) -> dict[str, Any] | None:
        """The result of the stage's record while the stage is done (see the class docstring), else None."""
        record = self.read()
        if not isinstance(record, dict) or record.get("fingerprint") != self.expected_fingerprint:
            return None
        result = record.get("result")
        if not isinstance(result, dict) or result.get("journals") != JournalReader(self.block_folder).snapshot():
            return None
        if self.outputs_digest is not None and result.get("outputs_digest") != self.outputs_digest():
            return None
        return result

    def totals(self) -> dict[str, Any] | None:
        """What `write` kept of the blocks' record results (`totals`), while the stage is done; None
        when it is not, or its record keeps none."""
        result = self._current_result()
        totals = None if result is None else result.get("totals")
        return totals if isinstance(totals, dict) else None

    def block_records(self, block_range: tuple[int, int] | None = None) -> dict[int, BlockRecord]:
        """The latest record of every block of the stage (or of `block_range`) that has one."""
        records = JournalReader(self.block_folder, block_range).refresh()
        first, stop = block_range or (0, self.number_of_blocks)
        return {block_id: record for block_id, record in records.items() if first <= block_id < stop}

    def block_states(self, block_range: tuple[int, int] | None = None) -> dict[int, CompletionState]:
        """State of every block of the stage (or of `block_range`) that has a record."""
        return self.block_states_of(self.block_records(block_range), block_range)

    def block_states_of(self, records: dict[int, BlockRecord], block_range: tuple[int, int] | None = None) -> dict[int, CompletionState]:
        """The states of blocks with these records (those of the stage's blocks in `block_range`)."""
        first, stop = block_range or (0, self.number_of_blocks)
        if not records:
            return {}
        expected = self.block_fingerprints(first, stop)
        states = {block_id: record_state(record.fingerprint, expected[block_id - first]) for block_id, record in records.items()}
        if self.changed_blocks is not None:
            done = {block_id: records[block_id] for block_id, state in states.items() if state is CompletionState.DONE}
            for block_id in self.changed_blocks(done):
                states[block_id] = CompletionState.CHANGED
        return states

    def write(
        self, result: dict[str, Any] | None = None, *, totals: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None
    ) -> None:
        """Record the stage as done; raises if a block of it is not. `totals(results)`: what to keep
        of the blocks' record results taken together (such as their summed seconds), so that a
        reader of the finished stage (`totals()`) need not read every block's record."""
        records = self.block_records()
        states = self.block_states_of(records)
        missing = [block_id for block_id in range(self.number_of_blocks) if states.get(block_id) is not CompletionState.DONE]
        if missing:
            raise RuntimeError(f"{len(missing)} blocks of the stage in {self.block_folder} are not done, e.g. {missing[:10]}")
        digest = {} if self.outputs_digest is None else {"outputs_digest": self.outputs_digest()}
        kept = {} if totals is None else {"totals": totals([record.result for record in records.values()])}
        super().write({**(result or {}), "journals": JournalReader(self.block_folder).snapshot(), **digest, **kept})
