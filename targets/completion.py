"""Completion records: one small JSON file per (stage, block), written last and atomically.

A record holds the fingerprint of everything the result depends on (see the tasks' `fingerprint`)
and a small `result` dict (e.g. the number of supervoxels a block produced). A task is complete
only if its record exists *and* carries the expected fingerprint; a record with another
fingerprint marks the block stale (its output came from another config or input).
"""

from __future__ import annotations

import enum
import json
import time
from pathlib import Path
from typing import Any

import luigi

from .atomic import atomic_write_text


class CompletionState(enum.Enum):
    DONE = "done"
    STALE = "stale"
    PENDING = "pending"


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
