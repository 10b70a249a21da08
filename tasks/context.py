"""A run, and what a stage's `run` function sees of it.

`Run` is one workflow over one config: the typed config, the input datasets, the geometry, the
paths, the store of named arrays, and the ordered stage specs. It answers what follows from the
specs: which stage produces an array, the region each block of a stage reads or writes, and which
blocks of a producing stage a block reads (`linked_blocks`).

A stage's `run` function gets a `BlockContext` (one block) or a `GlobalContext` (the whole
volume): reads and writes through them are those the spec declares.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from emflow.blocking import Blocking, Box
from emflow.storage.geometry import Geometry
from emflow.storage.inputs import InputDataset
from emflow.storage.layout import Layout
from emflow.storage.store import Store

from .spec import BOX, Read, RegionRule, StageSpec, Write, block_position_ranges


@dataclass(frozen=True, eq=False)  # hashed by identity: one cached instance per config file's state
class Run:
    """One workflow over one config (see the module docstring)."""

    config_path: str
    config: Any
    inputs: dict[str, InputDataset]
    geometry: Geometry
    layout: Layout
    store: Store
    stages: tuple[StageSpec, ...]

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"this workflow has no stage {name!r}; its stages are {', '.join(spec.name for spec in self.stages)}")

    def producer(self, read: Read) -> StageSpec | None:
        """The stage whose output `read` reads; None for an input dataset (or a missing optional array)."""
        if read.kind in ("bundle", "partials", "results"):
            return self.stage(read.name)
        return self._producers.get((read.kind, read.name))

    @functools.cached_property
    def _producers(self) -> dict[tuple[str, str], StageSpec]:
        return {(write.kind, write.name): spec for spec in self.stages for write in spec.writes if write.kind in ("array", "table")}

    def reads(self, spec: StageSpec) -> tuple[Read, ...]:
        """The reads of `spec` that this run has (an optional array the run lacks is left out)."""
        return tuple(read for read in spec.reads if not (read.optional and not self.provides(read)))

    def provides(self, read: Read) -> bool:
        return read.kind != "array" or read.name in self.inputs or (read.kind, read.name) in self._producers

    def upstream(self, spec: StageSpec) -> list[StageSpec]:
        """The stages whose results `spec` reads, and the stage creating the outputs it writes, in run order."""
        names = {producer.name for read in self.reads(spec) if (producer := self.producer(read)) is not None}
        if any(write.kind in ("array", "table") for write in spec.writes):
            names |= {other.name for other in self.stages if other.creates_outputs and other is not spec}
        return [other for other in self.stages if other.name in names]

    def work_after(self, spec: StageSpec) -> int:
        """The most tasks on one chain of dependents after `spec`, a block-wise stage counting
        its blocks and a global stage one (0 for a stage nothing reads)."""
        return self._work_after[spec.name]

    @functools.cached_property
    def _work_after(self) -> dict[str, int]:
        dependents: dict[str, list[str]] = {spec.name: [] for spec in self.stages}
        for spec in self.stages:
            for upstream in self.upstream(spec):
                dependents[upstream.name].append(spec.name)
        work: dict[str, int] = {}
        for spec in reversed(self.stages):  # dependents come later in the run order
            work[spec.name] = max((self._tasks(name) + work[name] for name in dependents[spec.name]), default=0)
        return work

    def _tasks(self, name: str) -> int:
        spec = self.stage(name)
        return spec.blocks(self).number_of_blocks if spec.blockwise else 1

    @functools.cached_property
    def _memo(self) -> dict[tuple, Any]:
        # Regions and linked blocks of this run, computed once (the run is cached per config file).
        return {}

    def regions(self, spec: StageSpec, rule: RegionRule) -> np.ndarray:
        """A region rule's boxes for every block of `spec` (see `emflow.tasks.spec.RegionRule`)."""
        key = ("regions", spec.name, rule)
        if key not in self._memo:
            regions = rule(self, spec.blocks(self))
            regions.flags.writeable = False
            self._memo[key] = regions
        return self._memo[key]

    def read_boxes(self, spec: StageSpec, read: Read) -> list[np.ndarray]:
        """The boxes each block of `spec` reads of `read`, int64 (number_of_blocks, 2, ndim) each: its
        region, or of a `faces` read the block's box and the slab beyond each upper face
        (`emflow.blocking.face_slabs`; empty where the region does not reach past that face)."""
        assert read.region is not None, f"{spec.name} reads {read.name} whole"
        regions = self.regions(spec, read.region)
        if not read.faces:
            return [regions]
        key = ("faces", spec.name, read)
        if key not in self._memo:
            boxes = self.regions(spec, BOX)
            parts = [boxes]
            for axis in range(boxes.shape[2]):
                slab = boxes.copy()
                slab[:, 0, axis] = boxes[:, 1, axis]
                slab[:, 1, axis] = regions[:, 1, axis]
                slab.flags.writeable = False
                parts.append(slab)
            self._memo[key] = parts
        return self._memo[key]

    def linked_blocks(self, spec: StageSpec, read: Read) -> list[np.ndarray] | None:
        """Per block of `spec`, the ids (ascending) of the producing stage's blocks whose write
        regions meet the boxes the block reads of `read` (`read_boxes`); None unless both stages
        are block-wise and the read and the producer's write have regions (the read is then
        "linked")."""
        producer = self.producer(read)
        if not (spec.blockwise and producer is not None and producer.blockwise and read.region is not None):
            return None
        write = _write_of(producer, read)
        if write is None or write.region is None:
            return None
        key = ("linked", spec.name, read)
        if key not in self._memo:
            self._memo[key] = self._linked_blocks(self.read_boxes(spec, read), producer, write.region)
        return self._memo[key]

    def _linked_blocks(self, read_boxes: list[np.ndarray], producer: StageSpec, write_region: RegionRule) -> list[np.ndarray]:
        write_regions = self.regions(producer, write_region)
        nonempty = np.asarray((write_regions[:, 1] > write_regions[:, 0]).all(axis=1))
        grid = producer.blocks(self).blocks_per_axis
        strides = np.array([math.prod(grid[axis + 1 :]) for axis in range(len(grid))], dtype=np.int64)
        if len(read_boxes) == 1:
            return self._linked_by_box(read_boxes[0], write_regions, nonempty, grid, strides)
        number_of_readers = len(read_boxes[0])
        # The parts of a faces read: each reader's ids of every part, merged by one sort of
        # (reader, id) keys, not reader by reader.
        number_of_writers = len(write_regions)
        keys = []
        for boxes in read_boxes:
            for reader, ids in enumerate(self._linked_by_box(boxes, write_regions, nonempty, grid, strides)):
                keys.append(reader * number_of_writers + ids)
        merged = np.unique(np.concatenate(keys + [np.zeros(0, dtype=np.int64)]))
        readers, ids = np.divmod(merged, number_of_writers)
        ids.flags.writeable = False
        bounds = np.searchsorted(readers, np.arange(number_of_readers + 1)).tolist()
        return [ids[begin:end] for begin, end in zip(bounds[:-1], bounds[1:])]

    @staticmethod
    def _linked_by_box(
        boxes: np.ndarray, write_regions: np.ndarray, nonempty: np.ndarray, grid: tuple[int, ...], strides: np.ndarray
    ) -> list[np.ndarray]:
        """Per reading box, the ids (ascending) of the writers whose non-empty regions meet it."""
        ranges = block_position_ranges(boxes, write_regions, grid)
        counts = ranges[:, :, 1] - ranges[:, :, 0]
        linked: dict[int, np.ndarray] = {}
        # Readers whose ranges have the same lengths are done together (a handful of groups: inner
        # blocks, faces, edges), not one by one with a meshgrid each: 60 ms, not 0.9 s, per read at 20,480 blocks.
        patterns, group_of = np.unique(counts, axis=0, return_inverse=True)
        for group, pattern in enumerate(patterns):
            readers = np.flatnonzero(group_of.ravel() == group)
            # Grid positions in C order over each reader's ranges: ids ascending.
            steps = np.indices(tuple(pattern)).reshape(len(grid), -1)
            ids = ((ranges[readers, :, 0, None] + steps) * strides[:, None]).sum(axis=1)
            ids.flags.writeable = False
            keep = nonempty[ids]
            for reader, reader_ids, reader_keep, whole in zip(readers.tolist(), ids, keep, keep.all(axis=1).tolist()):
                linked[reader] = reader_ids if whole else _read_only(reader_ids[reader_keep])
        return [linked[reader] for reader in range(len(ranges))]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _write_of(producer: StageSpec, read: Read) -> Write | None:
    """The write of `producer` that `read` reads."""
    kind = "partials" if read.kind == "partials" else read.kind
    for write in producer.writes:
        if write.kind == kind and (kind == "partials" or write.name == read.name):
            return write
    return None


class _Context:
    """What block and global contexts share: the run, the spec, the logger, bundles and results."""

    def __init__(self, run: Run, spec: StageSpec, log: logging.Logger, results_of: Callable[[str], Any]):
        self.run, self.spec, self.log = run, spec, log
        self._results_of = results_of

    @property
    def config(self) -> Any:
        return self.run.config

    @property
    def geometry(self) -> Geometry:
        return self.run.geometry

    @property
    def store(self) -> Store:
        return self.run.store

    def has(self, name: str) -> bool:
        """Whether the run has array `name` (an optional read may be missing)."""
        return self.run.provides(Read.array(name))

    def read_bundle(self, stage: str, field: str, *, mmap: bool = False) -> np.ndarray:
        """One array of a global stage's bundle (memory-mapped with `mmap`: read only what is indexed)."""
        self._check_declared(stage, "bundle")
        return self.store.load_global(stage, field, mmap=mmap)

    def results(self, stage: str) -> Any:
        """The record results of `stage`: its result dict (global), or {block_id: result} (block-wise)."""
        self._check_declared(stage, "results")
        return self._results_of(stage)

    def _check_declared(self, name: str, kind: str) -> None:
        if not any(read.name == name and read.kind == kind for read in self.spec.reads):
            raise RuntimeError(f"stage {self.spec.name} reads the {kind} of {name} but does not declare it: add Read.{kind}({name!r})")


class BlockContext(_Context):
    """One block of a block-wise stage: its box, and reads and writes over the declared regions."""

    def __init__(
        self,
        run: Run,
        spec: StageSpec,
        log: logging.Logger,
        results_of: Callable[[str], Any],
        block_id: int,
        deferred_writes: list[Callable[[], None]] | None = None,
    ):
        super().__init__(run, spec, log, results_of)
        self.block_id = block_id
        # The block's writes, kept to be done later (`StageSpec.writes_behind`); None: done at once.
        self.deferred_writes = deferred_writes
        self.blocking: Blocking = spec.blocks(run)
        self.box: Box = self.blocking.block(block_id)

    def region(self, name: str) -> Box:
        """The box this block reads of array (or partials) `name`: its box grown by the read's halo, clipped."""
        read = self._read(name, "array", "partials")
        assert read.region is not None, f"{self.spec.name} reads {name} whole"
        begin, end = self.run.regions(self.spec, read.region)[self.block_id]
        return Box(tuple(begin), tuple(end))

    def inner(self, name: str) -> Box:
        """This block's box in the coordinates of what `read(name)` returns."""
        return self.box.local_to(self.region(name))

    def read(self, name: str) -> np.ndarray:
        """Array `name` over this block's read region (of a `faces` read: its box and face slabs, 0 elsewhere)."""
        read = self._read(name, "array")
        region = self.region(name)
        if not read.faces:
            return self.store.read(name, region)
        # The boxes the stage declares it reads (`Run.read_boxes`), which its links follow too;
        # the box first, then the slabs the region reaches past a face.
        slabs: list[Box] = []
        for boxes in self.run.read_boxes(self.spec, read):
            begin, end = boxes[self.block_id].tolist()
            if not slabs or all(stop > start for start, stop in zip(begin, end)):
                slabs.append(Box(tuple(begin), tuple(end)))
        block = self.store.read(name, slabs[0])
        data = np.zeros(block.shape[: block.ndim - len(region.shape)] + region.shape, dtype=block.dtype)
        data[(Ellipsis,) + slabs[0].local_to(region).slicing] = block
        for slab in slabs[1:]:
            data[(Ellipsis,) + slab.local_to(region).slicing] = self.store.read(name, slab)
        return data

    def read_part(self, name: str, part: Box) -> np.ndarray:
        """Array `name` over `part`, a box inside this block's read region: a region read piece by
        piece holds less at a time than `read` does."""
        region = self.region(name)
        try:
            part.local_to(region)  # raises ValueError where `part` leaves the region
        except ValueError:
            raise RuntimeError(f"stage {self.spec.name} reads {part} of {name}, outside its declared region {region}") from None
        return self.store.read(name, part)

    def read_optional(self, name: str) -> np.ndarray | None:
        """An optional array over this block's read region; None where the run lacks it (no mask)."""
        if not self.run.provides(self._read(name, "array")):
            return None
        return self.read(name)

    @contextmanager
    def opened(self, name: str) -> Iterator[Any]:
        """Input `name` opened for lazy reads inside this block's declared region (e.g. CNN patches)."""
        self._read(name, "array")
        with self.store.opened_input(name) as volume:
            yield volume

    def write(self, name: str, data: np.ndarray) -> None:
        """This block's box of volume `name` (whole chunks)."""
        if not any(write.kind == "array" and write.name == name for write in self.spec.writes):
            raise RuntimeError(f"stage {self.spec.name} writes {name} but does not declare it: add Write.array({name!r})")
        self._put(functools.partial(self.store.write, name, self.box, data))

    def save_partial(self, **fields: np.ndarray) -> None:
        """This block's partial result (several arrays, one file)."""
        self._put(functools.partial(self.store.save_partial, self.spec.name, self.block_id, **fields))

    def save_partial_array(self, array: np.ndarray | None) -> None:
        """This block's partial result as one array, read memory-mapped by others (None: none)."""
        self._put(functools.partial(self.store.save_partial_array, self.spec.name, self.block_id, array))

    def _put(self, write: Callable[[], None]) -> None:
        """Do a write now, or keep it for later where the stage writes behind its blocks."""
        if self.deferred_writes is None:
            write()
        else:
            self.deferred_writes.append(write)

    def linked_blocks(self, stage: str) -> np.ndarray:
        """The blocks of block-wise `stage` whose partials (or volume) this block reads."""
        read = next(read for read in self.spec.reads if read.name == stage and read.kind == "partials")
        linked = self.run.linked_blocks(self.spec, read)
        assert linked is not None, f"{self.spec.name} reads the partials of {stage} without a region"
        return linked[self.block_id]

    def load_partial_array(self, stage: str, block_id: int) -> np.ndarray:
        self._check_declared(stage, "partials")
        return self.store.load_partial_array(stage, block_id)

    def _read(self, name: str, *kinds: str) -> Read:
        for read in self.spec.reads:
            if read.name == name and read.kind in kinds:
                return read
        raise RuntimeError(f"stage {self.spec.name} reads {name} but does not declare it: add Read.{kinds[0]}({name!r}, ...)")


class GlobalContext(_Context):
    """A global stage: whole tables, every block's partials, its own bundle."""

    def number_of_blocks(self, stage: str) -> int:
        return self.run.stage(stage).blocks(self.run).number_of_blocks

    def read_table(self, path: str) -> np.ndarray:
        self._check_declared(path, "table")
        return self.store.read_table(path)

    def table_attributes(self, path: str) -> dict[str, Any]:
        self._check_declared(path, "table")
        return self.store.table_attributes(path)

    def write_table(self, path: str, data: np.ndarray, attributes: dict[str, Any] | None = None) -> None:
        if not any(write.kind == "table" and write.name == path for write in self.spec.writes):
            raise RuntimeError(f"stage {self.spec.name} writes {path} but does not declare it: add Write.table({path!r})")
        self.store.write_table(path, data, attributes)

    def save_bundle(self, **fields: np.ndarray) -> None:
        self.store.save_global(self.spec.name, **fields)

    def partial_bundles(self, stage: str) -> Iterator[dict[str, np.ndarray]]:
        """Every array of every block's partial result of `stage`, by name, in block order."""
        self._check_declared(stage, "partials")
        for block_id in range(self.number_of_blocks(stage)):
            yield self.store.load_partial_bundle(stage, block_id)

    def cached_partials(self, stage: str, *fields: str) -> list[tuple[np.ndarray, ...]]:
        """The given arrays of every block's partial result of `stage`, in block order, all at
        once, through this stage's cache of them (`Store.load_partials`): only the files written
        since this stage last read them are opened."""
        self._check_declared(stage, "partials")
        cache = self.run.layout.partials_cache(self.spec.name, stage)
        return self.store.load_partials(stage, self.number_of_blocks(stage), fields, cache)

    def partials(self, stage: str, *fields: str) -> Iterator[tuple[np.ndarray, ...]]:
        """The given arrays of every block's partial result of `stage`, in block order, one file
        open at a time (a global task holds O(its result), not every block's files)."""
        self._check_declared(stage, "partials")
        for block_id in range(self.number_of_blocks(stage)):
            yield self.store.load_partial(stage, block_id, *fields)
