"""Block records kept in append-only journals: one line per finished (or invalidated) block.

Creating a file costs 0.5 to 1 ms on the disks measured here (far more on cluster filesystems),
more than all the rest of a block's bookkeeping, so block records are not files of their own.
Each stage has a folder of journals; the blocks `first`..`stop - 1` run by one block group append
to `<first>-<stop>.jsonl`, one JSON line per block, in one `write` call on a file opened with
O_APPEND (so a line is never interleaved with another on one host). A line counts only when it is
complete, parses and has the fields of a record with the right types: a line cut short by a killed
writer, or damaged in any other way, is ignored (its block is recomputed), and the next writer
starts on a new line. Invalidations (`emflow rerun`, repairs) go to a journal of their own writer,
`<first>-<stop>.<host>-<pid>.jsonl`, so that a user's command on one host never appends to a file
a run on another host appends to: O_APPEND is not atomic across the hosts of a network filesystem.

Compaction. Every run that finds a block stale appends a line for it, kept blocks included (see
`emflow.tasks.adapter.keeps_its_output`), so a cron job's journals, and the time every run spends
reading them, would grow with each run. A block group therefore rewrites its own journal with only
each block's latest line once it holds more than `COMPACT_LINES_PER_BLOCK` lines per block
(`compact_journal`). Dropping a line that is outranked within its journal changes no block's
latest record over all journals. The group is that journal's only writer, and it compacts after its
own appends; an invalidation never goes there (it has a journal of its own writer).

Order. A block's state is its latest record over all journals of the stage, and "latest" never
depends on a clock: each record carries a sequence number one above that of the block's latest
record its writer had read (a Lamport clock), so a record written after another was read always
wins over it, whatever the hosts' clocks say. Records with equal numbers were written without
either writer seeing the other (an invalidation while the block ran): the invalidation wins, so a
block is at worst computed once more. A record also names its writer (host and process id), which
breaks the remaining ties the same way on every reader. Lines of journals written before sequence
numbers existed count as number 0, ordered among themselves by their time stamps.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, writing
from .collection import garbage_collection_paused

JOURNAL_SUFFIX = ".jsonl"
# Largest block id, file size or time a record may hold (they are int64 elsewhere).
_LIMIT = 2**63
# A block group's journal is rewritten with each block's latest line once it holds more lines than
# this per block (`compact_journal`). At 2, a journal is read at most twice over per run.
COMPACT_LINES_PER_BLOCK = 2
# Sequence numbers grow by one per record of a block; a larger one is damage, and would otherwise
# outrank every record a writer could add after it.
_SEQ_LIMIT = 2**52


@dataclass(frozen=True)
class BlockRecord:
    """One journal line: a block's fingerprint (None: invalidated), when and by whom it was written,
    its result summary, and what it wrote (`data`: the states of its files, see
    `emflow.tasks.adapter.block_data`; None in records written before emflow recorded them)."""

    block_id: int
    fingerprint: str | None
    finished: float
    result: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    writer: str = ""
    data: dict[str, list] | None = None

    @property
    def order(self) -> tuple:
        """What "later" means: the sequence number, then an invalidation over a record, then (for
        records without a sequence number only) the time stamp, then the writer."""
        return (self.seq, self.fingerprint is None, self.finished if self.seq == 0 else 0.0, self.writer)


def journal_name(first_block: int, stop_block: int, writer: str | None = None) -> str:
    return f"{first_block}-{stop_block}{'' if writer is None else '.' + writer}{JOURNAL_SUFFIX}"


def journal_range(name: str) -> tuple[int, int] | None:
    """The block range of a journal file name, or None if `name` is not a journal."""
    if not name.endswith(JOURNAL_SUFFIX) or name.startswith("."):
        return None
    first, separator, stop = name[: -len(JOURNAL_SUFFIX)].split(".", 1)[0].partition("-")
    if not (separator and first.isdigit() and stop.isdigit()):
        return None
    return int(first), int(stop)


def writer_name() -> str:
    """This process as records name their writer: "<host>-<pid>" (no dots, so it fits in a journal's name)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


class BlockJournal:
    """Appends the records of blocks `first_block`..`stop_block - 1` of one stage.

    `own_file`: append to a journal of this writer's own (invalidations), not the block group's.
    """

    def __init__(self, folder: str | Path, first_block: int, stop_block: int, *, own_file: bool = False):
        self.writer = writer_name()
        self.path = Path(folder) / journal_name(first_block, stop_block, self.writer if own_file else None)
        self._descriptor: int | None = None

    def append(
        self,
        block_id: int,
        fingerprint: str | None,
        result: dict[str, Any] | None = None,
        *,
        after: int = 0,
        data: dict[str, list] | None = None,
    ) -> None:
        """Record a block; `after`: the sequence number of the block's latest record this writer read (0: none)."""
        record = {
            "block_id": int(block_id),
            "fingerprint": fingerprint,
            "finished": time.time(),
            "result": result or {},
            "seq": int(after) + 1,
            "writer": self.writer,
        }
        if data is not None:
            record["data"] = data
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with writing(self.path):
            os.write(self._open(), line)

    def _open(self) -> int:
        if self._descriptor is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._descriptor).st_size
            if size and os.pread(self._descriptor, 1, size - 1) != b"\n":
                os.write(self._descriptor, b"\n")  # close a line cut short by a killed writer
        return self._descriptor

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> BlockJournal:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


def supersedes(record: BlockRecord, known: BlockRecord | None) -> bool:
    """Whether `record`, read after `known` (the block's latest record so far; None: none), is the
    block's latest now: it ranks at least as high (`BlockRecord.order`), so on a tie the line read
    later wins."""
    return known is None or record.order >= known.order


def compact_journal(path: str | Path, number_of_blocks: int) -> bool:
    """Rewrite journal `path` of a range of `number_of_blocks` blocks with only the latest line of
    each block in it (`supersedes`, as `JournalReader` reads them), in their order, once it holds
    more than `COMPACT_LINES_PER_BLOCK` lines per block; atomically (see the module docstring).
    Lines that are not records go. Returns whether it did.

    Only the journal's own writer may call this, after its last append: a line appended to the
    file meanwhile by another process would be lost (its block computed again, nothing worse)."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return False
    complete = content[: content.rfind(b"\n") + 1]
    if complete.count(b"\n") <= COMPACT_LINES_PER_BLOCK * max(1, number_of_blocks):
        return False
    latest: dict[int, tuple[int, BlockRecord, bytes]] = {}
    for position, line in enumerate(complete.splitlines()):
        record = parse_record(line)
        if record is not None and supersedes(record, latest[record.block_id][1] if record.block_id in latest else None):
            latest[record.block_id] = (position, record, line)
    kept = sorted(latest.values(), key=lambda entry: entry[0])
    atomic_write_bytes(path, b"".join(line + b"\n" for _, _, line in kept))
    return True


class JournalReader:
    """The latest record of each block of one stage.

    With `block_range` (first, stop), only journals whose range overlaps it are read. Each journal
    is parsed once per process (`_journal_records`): a later read, by this reader or any other,
    parses only the lines appended since. It never raises for what a journal holds: a line that is
    not a record is skipped, and a journal that cannot be read counts as empty.
    """

    def __init__(self, folder: str | Path, block_range: tuple[int, int] | None = None):
        self.folder = Path(folder)
        self.block_range = block_range

    def refresh(self) -> dict[int, BlockRecord]:
        try:
            names = sorted(os.listdir(self.folder))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        records: dict[int, BlockRecord] = {}
        with _PARSED_LOCK:  # a run's progress thread reads journals too
            journals = []
            for name in names:
                block_range = journal_range(name)
                if block_range is not None and self._overlaps(block_range):
                    path = self.folder / name
                    journals.append((path, _journal_records(path)))
            # Merged as last time if no journal's records changed since (`_MERGED`).
            state = tuple((path, _PARSED[path].version if path in _PARSED else None) for path, _ in journals)
            merged = _MERGED.pop((self.folder, self.block_range), None)
            if merged is not None and merged[0] == state:
                records = merged[1]
            else:
                for _, journal in journals:
                    if not records:
                        records = dict(journal)
                        continue
                    for block_id, record in journal.items():
                        if supersedes(record, records.get(block_id)):
                            records[block_id] = record
            _MERGED[(self.folder, self.block_range)] = (state, records)
            while len(_MERGED) > _PARSED_JOURNALS:
                del _MERGED[next(iter(_MERGED))]
        return dict(records)

    def snapshot(self) -> dict[str, int]:
        """Size of each journal in the folder: changes whenever a block record is added."""
        try:
            names = os.listdir(self.folder)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        sizes = {}
        for name in sorted(names):
            if journal_range(name) is not None:
                try:
                    sizes[name] = os.stat(self.folder / name).st_size
                except OSError:
                    sizes[name] = -1
        return sizes

    def _overlaps(self, block_range: tuple[int, int]) -> bool:
        if self.block_range is None:
            return True
        return block_range[0] < self.block_range[1] and self.block_range[0] < block_range[1]


@dataclass
class _ParsedJournal:
    """What this process parsed of one journal: its first `length` bytes, ending with `tail`, in
    the file `inode`, and the latest record of each block in them; `version` changes whenever
    `records` may have (from `_VERSIONS`)."""

    inode: int
    length: int
    tail: bytes
    records: dict[int, BlockRecord]
    version: int


# Per process, per journal path: its lines parsed so far. A run reads every stage's journals many
# times over (repairs, Luigi's completion checks, each block group, each stage's record): on the
# reprocessing benchmark's one-chunk run, 11,320 lines were parsed for 1,700 records, 0.29 s of
# its 4.6 s with one worker (cProfile).
_PARSED: dict[Path, _ParsedJournal] = {}
# Bytes at the end of what was parsed that must still be there for it to be kept: a record line
# or more (lines are 0.2 to 1 kB).
_TAIL_BYTES = 4096
# Journals kept at most (the latest read), so that a long-lived process does not keep those of every
# run it ever read.
_PARSED_JOURNALS = 4096
# Per process, per (folder, block range) read: the versions of its journals' records
# (`_ParsedJournal.version`) and the records merged from them. A run reads each stage's records a
# few hundred times; merging them every time, the one-chunk run at 20,480 blocks took 3.8 s to plan,
# 3.4 s without (medians of 3 alternating pairs).
_MERGED: dict[tuple[Path, tuple[int, int] | None], tuple[tuple, dict[int, BlockRecord]]] = {}
_VERSIONS = itertools.count()
_PARSED_LOCK = threading.Lock()
# A worker process forked while another thread held the lock would otherwise never get it.
os.register_at_fork(after_in_child=lambda: globals().update(_PARSED_LOCK=threading.Lock()))


def _journal_records(path: Path) -> dict[int, BlockRecord]:
    """The latest record of each block in journal `path` (see `supersedes`; a later line wins a
    tie), parsing only what was appended since this process last read it (empty if unreadable).
    The caller holds `_PARSED_LOCK` and does not change the dictionary.

    What was parsed is kept while the file is the same one grown by appends: the same inode, still
    holding the end of what was parsed (`_TAIL_BYTES`) where it was. A journal is only ever
    appended to or replaced (compaction writes a new file with a subset of its lines), and no two
    record lines are alike (each has its writer and time), so a replacement fails that test unless
    it holds the same lines up to there."""
    known = _PARSED.pop(path, None)  # put back last: the dictionary's order is that of the latest reads
    try:
        with open(path, "rb") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            if (
                known is not None
                and known.inode == inode
                and os.pread(handle.fileno(), len(known.tail), known.length - len(known.tail)) == known.tail
            ):
                handle.seek(known.length)
            else:
                known = _ParsedJournal(inode, 0, b"", {}, next(_VERSIONS))
            appended = handle.read()
    except OSError:
        return {}  # a folder or unreadable file named like a journal: no records
    complete = appended.rfind(b"\n") + 1  # a last line without newline may still be written
    records = known.records
    with garbage_collection_paused():
        for line in appended[:complete].splitlines():
            record = parse_record(line)
            if record is not None and supersedes(record, records.get(record.block_id)):
                records[record.block_id] = record
    tail = (known.tail + appended[:complete])[-_TAIL_BYTES:]
    version = next(_VERSIONS) if complete else known.version
    _PARSED[path] = _ParsedJournal(inode, known.length + complete, tail, records, version)
    while len(_PARSED) > _PARSED_JOURNALS:
        del _PARSED[next(iter(_PARSED))]
    return records


def parse_record(line: bytes) -> BlockRecord | None:
    """The record a journal line holds, or None for anything else (never raises).

    Types are checked with `type(...) is`: JSON gives exactly int, float, str, list and dict, and
    a bool is no int here. With these checks written out, not through a function per value, and
    the line decoded as UTF-8 (what journals hold) instead of having `json.loads` detect its
    encoding, the 114,426 lines of a 20,480-block run took 0.84-0.86 instead of 0.98-1.09 s (best
    of 3, collector paused)."""
    try:
        fields = _decode(line.decode())
        if type(fields) is not dict:
            return None
        block_id, fingerprint, finished, result = fields["block_id"], fields["fingerprint"], fields["finished"], fields["result"]
        seq, writer, data = fields.get("seq", 0), fields.get("writer", ""), fields.get("data")
        valid = (
            type(block_id) is int
            and 0 <= block_id < _LIMIT
            and (fingerprint is None or type(fingerprint) is str)
            and (type(finished) is float or type(finished) is int)
            and math.isfinite(finished)
            and type(result) is dict
            and type(seq) is int
            and 0 <= seq < _SEQ_LIMIT
            and type(writer) is str
            and (data is None or _is_data(data))
        )
        return BlockRecord(block_id, fingerprint, float(finished), result, seq, writer, data) if valid else None
    except Exception:  # any damage (not JSON, nested too deep, not UTF-8, ...) is a line that is not a record
        return None


_decode = json.JSONDecoder().decode


def _is_data(data: Any) -> bool:
    """What a block wrote, as `block_data` records it: lists of file states, each None or [size, mtime_ns, digest]."""
    if type(data) is not dict:
        return False
    for states in data.values():
        if type(states) is not list:
            return False
        for state in states:
            if state is None:
                continue
            if not (
                type(state) is list
                and len(state) == 3
                and type(state[0]) is int
                and 0 <= state[0] < _LIMIT
                and type(state[1]) is int
                and 0 <= state[1] < _LIMIT
                and type(state[2]) is str
            ):
                return False
    return True
