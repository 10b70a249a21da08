"""Atomic file writes: write to a temporary name in the same folder, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a
partial file, even if the writer is killed mid-write.

There is no fsync: it would cost more than the rest of a block's bookkeeping (0.5 ms here, far more
on cluster filesystems) and buy nothing against the failures that matter for a run (killed
processes, cancelled jobs), since the page cache survives them. The zarr chunks a task writes are not
synced either, so a machine crash can lose recent work whatever the records do.

A rename over an existing file drops that file's last link: unless the file is still open, the
kernel frees its blocks inside rename(2), and on a file system mounted with `discard` (this project's
VM) rename then waits for the device to discard them. In the one-chunk reprocessing run of
benchmarks/reprocessing.py, which rewrites 270 block files, each worker waited 0.05-0.34 s in rename
(four runs; stalls of 0.26 s). A write therefore holds the file it replaces open across the rename
and hands it to a thread of its process (`_Releaser`) that closes it, so that the freeing, and the
wait, happen beside the work.

A file's data goes to the kernel in pieces of `WRITE_PIECE_BYTES`, not in one call. Linux (6.18
here) takes the page cache for new file data in folios as large as the write asks for, and on a
virtual machine that hands free memory back to its host (virtio-balloon free page reporting, this
project's VMs) large folios come from memory the host must map in again: 48 MB of new file data
took 2.6-2.8 ms per MB written in one call or in pieces of 1-2 MB (and of 256 or 512 KB in some
sittings), 0.20-0.25 ms per MB in pieces of 64 or 128 KB, 0.24-0.29 in pieces of 32 KB (ext4, fresh
process after 4 s idle, 4 files each, 3 sittings). `shutil` copies in pieces of 64 KB too.

A write that fails for want of space or permission raises `CannotWrite`, which names the file and
the cause: no retry can fix it, so the run stops and says so (see `emflow.tasks.adapter.execute`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import xxhash

# Errors of writes that no retry fixes: no space or quota left, a read-only file system, no
# permission (also what an immutable file gives), a file too large for the file system.
CANNOT_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
# Bytes handed to each write call (module docstring).
WRITE_PIECE_BYTES = 1 << 16
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


def atomic_write_bytes(path: str | Path, data: bytes | memoryview, *, digest: bool = False) -> None:
    """Write `data` (bytes or any contiguous buffer, such as a C-ordered array's memoryview)
    atomically; with `digest`, remember its digest (`DIGEST_PREFIX`) for `written_digest`."""
    _atomic_write_parts(path, [data], digest=digest)


def _atomic_write_parts(path: str | Path, parts: Sequence[bytes | memoryview], *, digest: bool) -> None:
    """`atomic_write_bytes` of the parts one after the other, without joining them in memory first."""

    def write(handle: BinaryIO) -> None:
        for part in parts:
            write_in_pieces(handle, part)

    _atomic_write(path, write, _Digest(parts) if digest else None)


def write_in_pieces(handle: BinaryIO, data: bytes | memoryview) -> None:
    """Write the bytes of `data` (any contiguous buffer) to `handle` in pieces of `WRITE_PIECE_BYTES`."""
    view = memoryview(data)
    if view.nbytes <= WRITE_PIECE_BYTES:
        handle.write(view)
        return
    view = view.cast("B")
    for start in range(0, len(view), WRITE_PIECE_BYTES):
        handle.write(view[start : start + WRITE_PIECE_BYTES])


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], object], hashing: _Digest | None = None) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it to `path`; remember the
    digest `hashing` takes of what it writes, if given."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                write(handle)
                handle.flush()
                status = os.fstat(handle.fileno())
            replaced = _RELEASER.hold(path)
            os.replace(temporary, path)
            if replaced is not None:
                _RELEASER.close_later(replaced)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    if hashing is not None:
        _remember_digest(path, status, hashing.hexdigest())


# Replaced files a process holds open at most, waiting for its `_Releaser` to close them: a stalled
# device must not use up the process's descriptors.
_MOST_HELD = 64


class _Releaser:
    """Holds replaced files open (`hold`) and closes them in a thread of its own, started at the
    first one (a forked process starts its own: threads do not survive fork)."""

    def __init__(self):
        self.descriptors: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.held: set[int] = set()  # those put on `descriptors` and not yet closed
        self.slots = threading.BoundedSemaphore(_MOST_HELD)
        self.thread: threading.Thread | None = None

    def hold(self, path: Path) -> int | None:
        """A descriptor open on the file at `path`, or None if there is none, it cannot be opened
        or `_MOST_HELD` are held (the caller's rename then frees the file itself)."""
        if not self.slots.acquire(blocking=False):
            return None
        try:
            # O_NONBLOCK: a FIFO in the file's place must not block the open (a file ignores it).
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            self.slots.release()
            return None

    def close_later(self, descriptor: int) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._close, name="release-replaced", daemon=True)
            self.thread.start()
        self.held.add(descriptor)
        self.descriptors.put(descriptor)

    def _close(self) -> None:
        while True:
            descriptor = self.descriptors.get()
            # Out of `held` before it is closed: a process forked in between keeps its copy of the
            # old file open until it exits, whereas the other order could have it close a number
            # that a new file of this process took meanwhile.
            self.held.discard(descriptor)
            os.close(descriptor)
            self.slots.release()

    def after_fork_in_child(self) -> None:
        """Start afresh, closing this process's copies of the descriptors the parent holds."""
        inherited = self.held
        self.__init__()
        for descriptor in inherited:
            os.close(descriptor)


_RELEASER = _Releaser()
os.register_at_fork(after_in_child=lambda: _RELEASER.after_fork_in_child())


# The digest of a file's bytes that records hold: XXH3-128 (xxhash), written "xxh3-128:<32 hex
# digits>". It tells whether a file still holds the bytes a task wrote (`emflow verify`) and whether
# a task run again wrote the same bytes (early cutoff): equality of the project's own files, with no
# adversary, which a 128-bit non-cryptographic hash is made for. 17 GB/s here against SHA-256's 1.2:
# the inference benchmark's 232 MB of CNN sums and outputs took 0.19 s of SHA-256 on 2 busy cores;
# its `emflow predict` spent 0.45-0.47 s beside its forward passes with XXH3 (0.76 once), 0.47-0.65 s
# with SHA-256, the `predict` blocks' writes 0.09-0.13 s against 0.23-0.27 (6 alternating pairs).
# Records of an emflow before it hold SHA-256 hex digests, without a prefix (`DIGEST_PREFIX`);
# `emflow verify` checks those with SHA-256 (`file_digest`).
DIGEST_PREFIX = "xxh3-128:"
# Digests remembered per process: a block's record takes them right after its writes.
_REMEMBERED_DIGESTS = 4096
_WRITTEN_DIGESTS: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()


class _Digest:
    """The digest (`DIGEST_PREFIX`) of `parts` in sequence."""

    def __init__(self, parts: Sequence[bytes | memoryview]):
        self.parts = parts

    def hexdigest(self) -> str:
        hashing = xxhash.xxh3_128()
        for part in self.parts:
            hashing.update(part)
        return DIGEST_PREFIX + hashing.hexdigest()


def file_digest(handle: BinaryIO, like: str = "") -> str:
    """The digest of the bytes an open file has left (`DIGEST_PREFIX`), or, `like` a recorded
    SHA-256 hex digest (an emflow before XXH3), their SHA-256 hex digest."""
    if like and not like.startswith(DIGEST_PREFIX):
        return hashlib.file_digest(handle, "sha256").hexdigest()
    return DIGEST_PREFIX + hashlib.file_digest(handle, xxhash.xxh3_128).hexdigest()


def _remember_digest(path: Path, status: os.stat_result, digest: str) -> None:
    _WRITTEN_DIGESTS[(str(path), status.st_ino, status.st_size, status.st_mtime_ns)] = digest
    while len(_WRITTEN_DIGESTS) > _REMEMBERED_DIGESTS:
        _WRITTEN_DIGESTS.popitem(last=False)


def written_digest(path: str | Path, status: os.stat_result) -> str | None:
    """The digest (`DIGEST_PREFIX`) of file `path` if this process wrote it (with `digest`) and
    `status` (its `os.stat`) shows it unchanged since: same inode, size and modification time; else
    None. Saves reading the file back to hash it."""
    return _WRITTEN_DIGESTS.get((str(path), status.st_ino, status.st_size, status.st_mtime_ns))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def memory_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array as a flat buffer, without copying them (also for an
    empty or 0-d array, which `memoryview.cast` refuses)."""
    return memoryview(array.reshape(-1).view(np.uint8))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Save one array as a .npy file (readable memory-mapped, a slice at a time), atomically, and
    remember its digest (`written_digest`).

    Written straight from the array's memory: arrays such as a block's CNN sums are tens of MB,
    and a copy in memory first would cost as much again. The header is numpy's own (format 1.0,
    which `np.save` writes for a plain dtype); an array that is not C-contiguous goes through
    `np.save`, and its file is hashed when it is read back."""
    if not array.flags.c_contiguous or array.dtype.hasobject or array.dtype.names is not None:
        _atomic_write(path, lambda handle: np.save(handle, array))
        return
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    _atomic_write_parts(path, [header.getvalue(), memory_of(array)], digest=True)


def atomic_save_npz(path: str | Path, *, digest: bool = True, **arrays: np.ndarray) -> None:
    """Save arrays as one uncompressed .npz file, atomically, and remember its digest (`digest`:
    for a file a record will name; a cache has none)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getbuffer(), digest=digest)
