"""Completion records: one small JSON file per (stage, block), written last and atomically.

A record holds the fingerprint of everything the result depends on (see the tasks' `fingerprint`)
and a small `result` dict (e.g. the number of supervoxels a block produced). A task is complete
only if its record exists *and* carries the expected fingerprint; a record with another
fingerprint marks the block stale (its output came from another config or input).

A block-wise stage also has a record of its own, written once all its blocks are done. With the
listing of its block records' folder it answers "is the whole stage done?" without opening one
file per block.
"""

from __future__ import annotations

import enum
import json
import os
import time
from pathlib import Path
from typing import Any

import luigi

from .atomic import atomic_write_text

RECORD_SUFFIX = ".json"


class CompletionState(enum.Enum):
    DONE = "done"
    STALE = "stale"
    PENDING = "pending"


def block_record_name(block_id: int) -> str:
    return f"{block_id}{RECORD_SUFFIX}"


def recorded_block_ids(folder: str | Path) -> set[int]:
    """Ids of the blocks that have a record in `folder` (whatever its fingerprint); one listing."""
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return set()
    # Temporary files of atomic writes start with a dot and never count.
    return {int(name[: -len(RECORD_SUFFIX)]) for name in entries if name.endswith(RECORD_SUFFIX) and name[0].isdigit()}


class CompletionTarget(luigi.Target):
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
        if record is None:
            return CompletionState.PENDING
        if record.get("fingerprint") != self.expected_fingerprint:
            return CompletionState.STALE
        return CompletionState.DONE

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


class StageCompletionTarget(CompletionTarget):
    """The record of a whole block-wise stage, valid only while every block's record is present.

    Block records are only ever replaced by a run of the same stage fingerprint (which rewrites
    this record too) or removed; so presence is all that needs checking per block.
    """

    def __init__(self, path: str | Path, expected_fingerprint: str, *, block_folder: str | Path, number_of_blocks: int):
        super().__init__(path, expected_fingerprint)
        self.block_folder = Path(block_folder)
        self.number_of_blocks = number_of_blocks

    def exists(self) -> bool:
        if not super().exists():
            return False
        recorded = recorded_block_ids(self.block_folder)
        return all(block_id in recorded for block_id in range(self.number_of_blocks))
