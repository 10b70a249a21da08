"""How completion is recorded: fingerprinted, atomically written completion records.

This package is the only code that knows what a finished (stage, block) looks like on disk.
"""

from .atomic import atomic_write_bytes, atomic_write_text, atomic_save_npz
from .fingerprint import fingerprint
from .completion import CompletionState, CompletionTarget, StageCompletionTarget, block_record_name, recorded_block_ids

__all__ = [
    "CompletionState",
    "CompletionTarget",
    "StageCompletionTarget",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "block_record_name",
    "fingerprint",
    "recorded_block_ids",
]
