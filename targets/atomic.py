"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
partial file, even if the writer is killed mid-write.

There is no fsync: it would cost more than the rest of a block's bookkeeping (0.5 ms here, far more
on cluster filesystems) and buy nothing against the failures that matter for a run (killed
processes, cancelled jobs), since the page cache survives them. The zarr chunks a task writes are not
synced either, so a machine crash can lose recent work whatever the records do.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save one array as a .npy file (readable memory-mapped, a slice at a time), atomically.

    Written straight to the file: arrays such as a block's CNN sums are tens of MB, and a copy
    in memory first would cost as much again."""
    _atomic_write(path, lambda handle: np.save(handle, array))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Save arrays as one uncompressed .npz file, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
