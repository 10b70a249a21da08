"""Stage specs: a stage is a declaration of what it reads and writes, its config, and the function it runs.

A `StageSpec` names the stage, says whether it runs per block or once, lists what it reads
(`Read`: named arrays with the region each block reads, other stages' bundles, partials or record
results) and writes (`Write`), the config keys its result depends on, and its `run` function:
a few lines that read through the context, call a core function and write. Everything else follows
from the declarations, as daisy derives dependencies from read and write regions
(`emflow.tasks.adapter`):

- upstream stages: the producers of what a stage reads (and the stage that creates the output
  arrays it writes);
- fingerprints: the stage's definition (name, version, config values, upstream fingerprints);
  per block, the state of the input chunks its read regions cover and, where it reads a block-wise
  stage's blocks, the fingerprints of exactly the blocks whose write regions its read regions meet;
- completion records, logs, failure records, block groups, per-block reruns.

A workflow is an ordered tuple of specs built from the config (`emflow.workflows.segmentation`);
the smallest real example of a stage is `emflow.tasks.edge_costs`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emflow.blocking import Blocking

if TYPE_CHECKING:
    from .context import Run

RegionRule = Callable[["Run", Blocking], np.ndarray]
"""What each block of a blocking reads or writes of an array: int64 (number_of_blocks, 2, ndim),
begin and end of every block's box, in voxels of the array."""


def boxes(halo: tuple[int, ...] | None = None) -> RegionRule:
    """Each block's box grown by `halo` voxels per side (None: the run's configured halo), clipped
    to the volume."""

    def region(run: Run, blocking: Blocking) -> np.ndarray:
        return blocking.boxes_with_halo(run.geometry.halo if halo is None else halo)

    return region


def forward_boxes(halo: Callable[[Run], tuple[int, ...]]) -> RegionRule:
    """Each block's box grown by `halo(run)` voxels on its upper faces only, clipped to the volume:
    what a block reads to see the voxel pairs (p, p + offset) it owns (`emflow.affinity_statistics`),
    or the blocks after it."""

    def region(run: Run, blocking: Blocking) -> np.ndarray:
        regions = blocking.boxes_with_halo((0,) * len(blocking.shape))
        regions[:, 1] = np.minimum(regions[:, 1] + np.asarray(halo(run), dtype=np.int64), np.asarray(blocking.shape, dtype=np.int64))
        return regions

    return region


def level_blocks(level: int) -> Callable[[Run], Blocking]:
    """Blocking rule (`StageSpec.blocking`): the blocks of pyramid level `level` of the run."""
    return lambda run: run.geometry.level_blocking(level)


BOX = boxes((0, 0, 0))
CONFIGURED_HALO = boxes(None)


@dataclass(frozen=True)
class Read:
    """Something a stage reads.

    `kind`: "array" (a named array: an input role or an output volume, read per block over
    `region`, or whole by a global stage), "table" (a whole array of the output group, by its path),
    "bundle" (the global arrays of stage `name`), "partials" (the per-block files of block-wise stage
    `name`; with `region`, each block reads only those of the blocks whose partials' regions meet
    its own) or "results" (the record results of stage `name`: its own, or every block's).
    `optional`: an array the run may not have (a mask); reading it then gives None. `faces`: of a
    forward region (`forward_boxes`), only the block's box and the slabs beyond its upper faces are
    read (`emflow.blocking.face_slabs`), the region's edges and corners are 0: all that voxel pairs
    one step along an axis from the block reach, and one neighbouring chunk decoded per face where
    the whole region decodes seven (chunks of the block shape).
    """

    name: str
    kind: str = "array"
    region: RegionRule | None = BOX
    optional: bool = False
    faces: bool = False

    @classmethod
    def array(cls, name: str, region: RegionRule = BOX, *, optional: bool = False, faces: bool = False) -> Read:
        return cls(name, "array", region, optional, faces)

    @classmethod
    def table(cls, path: str) -> Read:
        return cls(path, "table", None)

    @classmethod
    def bundle(cls, stage: str) -> Read:
        return cls(stage, "bundle", None)

    @classmethod
    def partials(cls, stage: str, region: RegionRule | None = None) -> Read:
        return cls(stage, "partials", region)

    @classmethod
    def results(cls, stage: str) -> Read:
        return cls(stage, "results", None)


@dataclass(frozen=True)
class Write:
    """Something a stage writes: an output volume (`kind` "array", `name` a key of the run's
    volumes, by a block-wise stage over its blocks' boxes), a "table" of the output group (by its
    path), its own "bundle" of global arrays, or its own "partials" (one file per block; `region`:
    the part of the volume a block's partial covers, for readers linked block by block)."""

    name: str
    kind: str = "array"
    region: RegionRule | None = BOX

    @classmethod
    def array(cls, name: str) -> Write:
        return cls(name, "array", BOX)

    @classmethod
    def table(cls, path: str) -> Write:
        return cls(path, "table", None)

    @classmethod
    def bundle(cls) -> Write:
        return cls("", "bundle", None)

    @classmethod
    def partials(cls, region: RegionRule | None = BOX) -> Write:
        return cls("", "partials", region)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a workflow (see the module docstring).

    `run(context)` computes and writes the stage's result for one block (`BlockContext`) or the
    whole volume (`GlobalContext`) and returns a small JSON-able summary, kept in the record.
    `config`: dotted config keys or sections whose values the result depends on (e.g.
    "supervoxels", "multicut.beta"); `parameters(run)`: further values it depends on (e.g. a model
    file's digest). `blocking(run)`: the blocks of a block-wise stage (default: the run's).
    `creates_outputs`: the stage that creates the output group and its volumes, on which every
    stage writing into them depends. `version`: raise it when the stage's algorithm changes.
    `imports`: modules its `run` imports where it needs them, kept out of the imports of every run
    for their cost; the building process imports them before its workers fork (`preload`), so that
    each forked block group does not import them again.

    `content_key(block)`: early cutoff for a block-wise stage. A stale block whose inputs hold what
    they held when its latest record was written is kept, not run again: its record is written
    anew over the files it wrote then (`emflow.tasks.adapter.ContentKeys`). The blocks of linked
    stages it reads enter by the digests of the files they wrote, input volumes by their chunks'
    states; `content_key` gives the bytes that stand for what the block reads of global stages
    (b"" for none), or None where it cannot say (the block then runs). Without it, every stale
    block runs.

    `writes_behind`: a block's writes (arrays and partials) are done in a thread of their own
    while the next block of its group computes, and its record follows them
    (`emflow.tasks.write_behind`). A block must not change an array after handing it to a write.
    Worth it where blocks compute far longer than they write and a core is free beside them:
    the CNN's forward passes.
    """

    name: str
    blockwise: bool
    run: Callable[[Any], dict[str, Any] | None]
    reads: tuple[Read, ...] = ()
    writes: tuple[Write, ...] = ()
    config: tuple[str, ...] = ()
    parameters: Callable[[Run], Any] | None = None
    blocking: Callable[[Run], Blocking] | None = None
    creates_outputs: bool = False
    content_key: Callable[[Any], bytes | None] | None = None
    version: int = 1
    imports: tuple[str, ...] = ()
    writes_behind: bool = False
    description: str = field(default="", compare=False)

    def blocks(self, run: Run) -> Blocking:
        """The blocking of a block-wise stage."""
        return self.blocking(run) if self.blocking is not None else run.geometry.blocking


def preload(stages: Iterable[StageSpec]) -> None:
    """Import the `imports` of these stages (in the building process, before workers fork, so
    that the workers share them)."""
    for spec in stages:
        for module in spec.imports:
            importlib.import_module(module)


def no_global_reads(block: Any) -> bytes:
    """`StageSpec.content_key` of a stage that reads no global stage: the contents of the linked
    blocks and input chunks it reads are all its blocks depend on."""
    return b""


def block_position_ranges(read_regions: np.ndarray, write_regions: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """For each reading block, the range of writing blocks' grid positions per axis whose write
    regions may meet its read region: int64 (number_of_reading_blocks, ndim, 2), [first, stop).

    `read_regions` (R, 2, ndim) and `write_regions` (W, 2, ndim) as `RegionRule`s give them, the
    writers numbered in C order over `grid`. Regions of a regular blocking are products of per-axis
    intervals that grow with the block's grid position, so per axis the writing positions a read
    interval meets are one contiguous range, found by binary search. A writer whose region is
    empty (begin = end along some axis) may lie inside a range: callers drop those (`nonempty`).
    """
    reads = np.asarray(read_regions, dtype=np.int64)
    writes = np.asarray(write_regions, dtype=np.int64).reshape(*grid, 2, len(grid))
    nonempty = (writes[..., 1, :] > writes[..., 0, :]).all(axis=-1)
    ranges = np.zeros((len(reads), len(grid), 2), dtype=np.int64)
    for axis in range(len(grid)):
        # Per position along the axis, the interval of its non-empty writers.
        moved = np.moveaxis(writes[..., axis], axis, 0).reshape(grid[axis], -1, 2)
        present = np.moveaxis(np.asarray(nonempty), axis, 0).reshape(grid[axis], -1)
        ends = np.where(present, moved[..., 1], np.iinfo(np.int64).min).max(axis=1)
        begins = np.where(present, moved[..., 0], np.iinfo(np.int64).max).min(axis=1)
        # Positions without a writer get an empty interval at the end of the ones before them.
        ends = np.maximum.accumulate(np.maximum(ends, 0))
        begins = np.where(present.any(axis=1), begins, ends)
        empty = reads[:, 0, axis] >= reads[:, 1, axis]
        first = np.searchsorted(ends, reads[:, 0, axis], side="right")
        stop = np.searchsorted(begins, reads[:, 1, axis], side="left")
        ranges[:, axis, 0] = np.where(empty, 0, first)
        ranges[:, axis, 1] = np.where(empty, 0, np.maximum(stop, first))
    return ranges
