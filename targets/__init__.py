"""How completion is recorded: fingerprinted, atomically written completion records.

This package is the only code that knows what a finished (stage, block) looks like on disk.
"""

from .atomic import atomic_save_npy, atomic_save_npz, atomic_write_bytes, atomic_write_text
from .completion import CompletionState, CompletionTarget, StageCompletionTarget, record_state
from .fingerprint import fingerprint
from .journal import BlockJournal, BlockRecord, JournalReader, compact_journal, parse_record

__all__ = [
    "BlockJournal",
    "BlockRecord",
    "CompletionState",
    "CompletionTarget",
    "JournalReader",
    "StageCompletionTarget",
    "atomic_save_npy",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "compact_journal",
    "fingerprint",
    "parse_record",
    "record_state",
]
