"""Reading the .npz files of block partials faster than `np.load`.

A global stage reads the partial result of every block (`Store.load_partial`): 512 files of the
block graph for `merge_graph` on the reprocessing benchmark, and as many of the supervoxels for the
run report. `np.load` spent 0.4 to 0.5 ms per such file parsing its zip directory and its arrays'
headers (0.23 to 0.26 s for the 512 block graph files, 6 MB in all, which take 0.015 s to read);
`read_npz` 0.13 ms. It reads what `np.savez` writes (uncompressed members, local zip headers with
their sizes, zip64 or not, and .npy version 1.0 headers in numpy's own layout) from one read of
the file, and leaves every other file to `np.load`.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

# A zip member's local header: signature, flags, compression method, compressed size, name and
# extra field lengths (the version, times and checksum between them are skipped).
_LOCAL_HEADER = struct.Struct("<4s2xHH8xI4xHH")
_ZIP64_EXTRA = 0x0001
# The header numpy writes for a C-order array: its dict in this order, padded with spaces.
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|][a-zA-Z]\d*)', 'fortran_order': False, 'shape': \(((?:\d+, )*(?:\d+,?)?)\), \} *\n")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of .npz file `path` by name, as `np.load` gives them (writable copies)."""
    data = Path(path).read_bytes()
    arrays = _parse(data)
    if arrays is None:
        with np.load(path) as loaded:
            return {name: loaded[name] for name in loaded.files}
    return arrays


def _parse(data: bytes) -> dict[str, np.ndarray] | None:
    """The arrays of the members of zip file `data`, or None where it holds anything else (a
    damaged one too: `np.load` then says what is wrong with it)."""
    try:
        return _members(data)
    except (struct.error, ValueError):  # headers or arrays cut short, a name that is not UTF-8
        return None


def _members(data: bytes) -> dict[str, np.ndarray] | None:
    arrays = {}
    offset = 0
    while data.startswith(b"PK\x03\x04", offset):
        _, flags, method, size, name_length, extra_length = _LOCAL_HEADER.unpack_from(data, offset)
        if flags & 0x08 or method != 0:  # sizes after the data (a streamed write), or compressed
            return None
        name_start = offset + _LOCAL_HEADER.size
        extra_start = name_start + name_length
        name = data[name_start:extra_start].decode()
        if size == 0xFFFFFFFF:
            size = _zip64_compressed_size(data[extra_start : extra_start + extra_length])
            if size is None:
                return None
        start = extra_start + extra_length
        array = _npy(memoryview(data)[start : start + size]) if name.endswith(".npy") else None
        if array is None:
            return None
        arrays[name[: -len(".npy")]] = array
        offset = start + size
    # Past the members: the central directory, and at the end its end record (numpy writes no comment).
    return arrays if data.startswith(b"PK\x01\x02", offset) and data.startswith(b"PK\x05\x06", len(data) - 22) else None


def _zip64_compressed_size(extra: bytes) -> int | None:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        if tag == _ZIP64_EXTRA and length >= 16:
            return struct.unpack_from("<Q", extra, position + 12)[0]  # after the uncompressed size
        position += 4 + length
    return None


def _npy(member: memoryview) -> np.ndarray | None:
    if bytes(member[:8]) != b"\x93NUMPY\x01\x00" or len(member) < 10:
        return None
    (header_length,) = struct.unpack_from("<H", member, 8)
    match = _NPY_HEADER.fullmatch(bytes(member[10 : 10 + header_length]))
    if match is None:
        return None
    dtype = np.dtype(match.group(1).decode())
    shape = tuple(int(extent) for extent in match.group(2).split(b",") if extent.strip())
    count = int(np.prod(shape))
    if dtype.hasobject or len(member) != 10 + header_length + count * dtype.itemsize:
        return None
    # A copy: aligned and writable, as np.load's arrays are.
    return np.frombuffer(member, dtype=dtype, count=count, offset=10 + header_length).reshape(shape).copy()
