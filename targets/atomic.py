"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
partial file, even if the writer is killed mid-write.

There is no fsync: it would cost more than the rest of a block's bookkeeping (0.5 ms here, far more
on cluster filesystems) and buy nothing against the failures that matter for a run (killed
processes, cancelled jobs), since the page cache survives them. The zarr chunks a task writes are not
synced either, so a machine crash can lose recent work whatever the records do.

A write that fails for want of space or permission raises `CannotWrite`, which names the file and
the cause: no retry can fix it, so the run stops and says so (see `emflow.tasks.adapter.execute`).
"""

from __future__ import annotations

import errno
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Errors of writes that no retry fixes: no space or quota left, a read-only file system, no
# permission (also what an immutable file gives), a file too large for the file system.
CANNOT_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
# Temporary names of writers: ours (".<name>.<random>.partial") and zarr's ("<name>.<hex>.partial").
_TEMPORARY_NAME = re.compile(r"^\.(?P<ours>.+)\.[^.]+\.partial$|^(?P<zarrs>.+)\.[0-9a-f]{32}\.partial$")


class CannotWrite(OSError):
    """A write failed for want of space or permission: `filename` is what could not be written,
    `strerror` the cause."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror} ({errno.errorcode.get(self.errno, self.errno)})"


def cannot_write(error: BaseException, path: str | Path | None = None) -> CannotWrite | None:
    """`error` as a CannotWrite if it is a write failing for want of space or permission, naming the
    file the error names (a writer's temporary file as the file it stands for) or else `path`."""
    if isinstance(error, CannotWrite):
        return error
    if not isinstance(error, OSError) or error.errno not in CANNOT_WRITE_ERRNOS:
        return None
    named = error.filename if isinstance(error.filename, (str, Path)) else path
    if named is not None:
        match = _TEMPORARY_NAME.match(Path(named).name)
        if match:
            named = Path(named).with_name(match.group("ours") or match.group("zarrs"))
    return CannotWrite(error.errno, os.strerror(error.errno), str(named if named is not None else "?"))


@contextmanager
def writing(path: str | Path | None = None) -> Iterator[None]:
    """Turn an OSError of what the block writes into CannotWrite (see `cannot_write`)."""
    try:
        yield
    except OSError as error:
        failure = cannot_write(error, path)
        if failure is None or failure is error:
            raise
        raise failure from error


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    with writing(path):
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
