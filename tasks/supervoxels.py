"""Supervoxels with ids unique across the volume, and the consecutive node ids of the graph stages.

Watershed supervoxels never cross a block face: the halo gives the watershed context, but only the
block's own box is kept. Block `b`'s supervoxel `l` is stored as `b * stride + l`
(`emflow.labels.block_supervoxel_ids`, stride a power of ten above a block's voxel count), so a
block's ids depend on nothing but the block: new data in one input chunk changes the supervoxels of
the blocks that read it and no other block's ids, which is what lets a rerun keep the graph
partials and the segmentation of every other block. The graph stages number supervoxels
consecutively (`node_id_map`: node `offsets[b] + l`, the offsets from the global `supervoxel_ids`
stage); what a user loses is that stored supervoxel ids are no longer 1..n.

Given supervoxels (`[input] supervoxels_key`) keep their own numbering: their ids are relabelled to
1..n by a global table, and those are the node ids.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from emflow.config import resolve_function
from emflow.errors import InputError
from emflow.labels import (
    block_offsets,
    block_supervoxel_ids,
    map_labels,
    node_ids,
    relabel_consecutive,
    smallest_member_labels,
    supervoxel_id_stride,
    supervoxel_ids_of_nodes,
)
from emflow.storage.store import describe_box
from emflow.supervoxels import use_two_d

from .context import BlockContext, GlobalContext
from .preview import background, block_section
from .spec import BOX, CONFIGURED_HALO, Read, StageSpec, Write

# The input role "supervoxels" is stored under this name: `supervoxels` is the output volume.
GIVEN = "given_supervoxels"


def two_d_supervoxels(config, resolution: tuple[float, ...]) -> bool:
    """Whether the supervoxels are 2D per z-slice (`[supervoxels] dimensionality`, resolved)."""
    section = config.supervoxels
    return use_two_d(resolution, section.anisotropy_threshold) if section.dimensionality == "auto" else section.dimensionality == "2d"


def watershed(config, resolution: tuple[float, ...], boundaries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The configured supervoxel function (`[supervoxels]`) on a boundary map, its result checked."""
    section = config.supervoxels
    function = resolve_function(section.function, "supervoxels.function")
    labels = np.asarray(
        function(boundaries, resolution=resolution, two_d=two_d_supervoxels(config, resolution), mask=mask, **section.parameters())
    )
    if labels.shape != boundaries.shape or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"{section.function} returned {labels.dtype} labels of shape {labels.shape}; expected integer labels of shape {boundaries.shape}"
        )
    return labels


# Version of the stages that store their supervoxels with `write_block_supervoxels`. Version 1
# stored ids 1..n per block, which a `relabel_supervoxels` stage then offset: a run finished by it
# is recomputed instead of having its consecutive ids read as per-block ones.
PER_BLOCK_IDS = 2


def write_block_supervoxels(block: BlockContext, labels: np.ndarray) -> None:
    """Write a block's supervoxels, numbered 1..n within the block, under their volume-wide ids."""
    block.write("supervoxels", block_supervoxel_ids(labels, block.block_id, supervoxel_id_stride(block.geometry.block_shape)))


def _watershed(block: BlockContext) -> dict:
    resolution = block.geometry.resolution
    two_d = two_d_supervoxels(block.config, resolution)
    boundaries, mask = block.read("boundaries"), block.read_optional("mask")
    inner = block.inner("boundaries").slicing
    labels = watershed(block.config, resolution, boundaries, None if mask is None else mask.astype(bool))[inner]
    if mask is not None:
        labels = np.where(mask[inner], labels, 0)
    labels, number_of_supervoxels = relabel_consecutive(labels)
    write_block_supervoxels(block, labels)
    inner_boundaries = boundaries[inner]
    # Voxels per supervoxel (ids 1..n of the block), for the segment sizes of the run report, and
    # the block's piece of the boundary map's section the report's preview shows.
    section = block_section(block.run, "boundaries", block.box, inner_boundaries) if background(block.run) == "boundaries" else {}
    block.save_partial(sizes=np.bincount(labels.ravel(), minlength=number_of_supervoxels + 1)[1:], **section)
    # The range of the block's boundary values lets `supervoxel_ids` refuse a constant volume
    # without reading it again.
    # Said in the record, not the block's log: a log file per block, created by one run and
    # deleted by the next, cost a 32x64x64 block 4 of its 51 ms (its deletion 3.3 ms while the
    # earlier run's file was not yet written back) in benchmarks/reprocessing.py's cron run.
    return {
        "number_of_supervoxels": int(number_of_supervoxels),
        "two_d": two_d,
        "boundary_range": [float(inner_boundaries.min()), float(inner_boundaries.max())],
    }


WATERSHED = StageSpec(
    name="supervoxels",
    blockwise=True,
    reads=(Read.array("boundaries", CONFIGURED_HALO), Read.array("mask", CONFIGURED_HALO, optional=True)),
    writes=(Write.array("supervoxels"), Write.partials()),
    config=("supervoxels",),
    run=_watershed,
    version=PER_BLOCK_IDS,
    # np.unique (`relabel_consecutive`) imports numpy.ma at its first call (numpy 2): 10 to 13 ms
    # in each worker process of the 62.5 MVox benchmark run, once in the building process.
    imports=("numpy.ma",),
)


def refuse_constant_boundaries(stage: GlobalContext, block_ranges: list[list[float] | None]) -> None:
    """Raise InputError when every block's boundary values are one and the same value.

    A constant boundary map holds no membrane to cut along; it is also what a raw volume that was
    never filled in gives. `block_ranges`: each block's [min, max].
    """
    values = {value for block_range in block_ranges if block_range is not None for value in block_range}
    if block_ranges and len(values) == 1:
        run = stage.run
        what = (
            "the predicted boundary map (output array boundaries)"
            if "boundaries" not in run.inputs
            else f"boundary map {run.inputs['boundaries'].location}"
        )
        raise InputError(f"{what} is constant: every voxel is {values.pop()}, so there is nothing to segment; check the input data")


def _supervoxel_offsets(stage: GlobalContext) -> dict:
    results = stage.results("supervoxels")
    blocks = range(len(results))
    refuse_constant_boundaries(stage, [results[block_id].get("boundary_range") for block_id in blocks])
    counts = [results[block_id]["number_of_supervoxels"] for block_id in blocks]
    stage.save_bundle(offsets=block_offsets(np.asarray(counts, dtype=np.uint64)))
    stage.log.info("%d supervoxels in %d blocks", sum(counts), len(counts))
    return {"number_of_supervoxels": int(sum(counts)), "id_stride": supervoxel_id_stride(stage.geometry.block_shape)}


SUPERVOXEL_OFFSETS = StageSpec(
    name="supervoxel_ids",
    blockwise=False,
    reads=(Read.results("supervoxels"),),
    writes=(Write.bundle(),),
    run=_supervoxel_offsets,
    description="where each block's supervoxels go in the consecutive node ids 1..number_of_supervoxels",
)

# What a stage that maps supervoxel ids to node ids (`node_id_map`) declares it reads.
NODE_ID_READS = (Read.results("supervoxel_ids"), Read.bundle("supervoxel_ids"))


def node_id_map(context: BlockContext | GlobalContext) -> Callable[[np.ndarray], np.ndarray]:
    """The function from stored supervoxel ids to graph node ids 1..number_of_supervoxels (0 stays 0):
    `emflow.labels.node_ids` for per-block ids, the identity for given supervoxels (already 1..n).
    The stage declares `NODE_ID_READS`."""
    return node_id_map_from(context.results("supervoxel_ids"), lambda: context.read_bundle("supervoxel_ids", "offsets", mmap=True))


def id_stride(context: BlockContext | GlobalContext) -> int | None:
    """The stride of the run's per-block supervoxel ids; None for given supervoxels, whose ids are
    1..n. The stage declares `NODE_ID_READS`."""
    return context.results("supervoxel_ids").get("id_stride")


def node_id_map_from(results: dict, offsets: Callable[[], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`node_id_map` from the `supervoxel_ids` stage's results and its bundle's block offsets."""
    stride = results.get("id_stride")
    if stride is None:
        return _unchanged
    return functools.partial(node_ids, offsets=offsets(), stride=stride)


def _unchanged(ids: np.ndarray) -> np.ndarray:
    return ids


def segment_labels(context: GlobalContext, node_labels: np.ndarray) -> np.ndarray:
    """A method's node labels with each segment numbered by its smallest supervoxel id (given
    supervoxels: its smallest node id), `emflow.labels.smallest_member_labels`; the stage declares
    `NODE_ID_READS`. A segment's id then depends on its supervoxels alone, so a rerun after new
    data in one region gives every segment it did not change the id it had, unless its smallest
    supervoxel lies in a block the rerun computed again: that block numbers its supervoxels 1..n
    anew (`_watershed`), which may move the ids of those the new data did not change."""
    stride = id_stride(context)
    number_of_nodes = len(node_labels)
    if stride is None:
        members = np.arange(number_of_nodes, dtype=np.uint64)
    else:
        members = supervoxel_ids_of_nodes(number_of_nodes, context.read_bundle("supervoxel_ids", "offsets"), stride)
    return smallest_member_labels(node_labels, members)


# --- supervoxels given as input ------------------------------------------------------------------


def _masked_given(block: BlockContext) -> np.ndarray:
    labels = block.read(GIVEN)
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise InputError(f"supervoxels dataset {block.run.inputs[GIVEN].location} holds negative ids in box {describe_box(block.box)}")
    labels = labels.astype(np.uint64, copy=False)
    mask = block.read_optional("mask")
    return labels if mask is None else np.where(mask.astype(bool), labels, np.uint64(0))


def _given_ids(block: BlockContext) -> dict:
    ids, sizes = np.unique(_masked_given(block), return_counts=True)
    foreground = ids != 0
    block.save_partial(ids=ids[foreground], sizes=sizes[foreground])
    return {"number_of_supervoxels": int(foreground.sum())}


GIVEN_IDS = StageSpec(
    name="supervoxels",
    blockwise=True,
    reads=(Read.array(GIVEN, BOX), Read.array("mask", BOX, optional=True)),
    writes=(Write.partials(),),
    run=_given_ids,
)


def _given_id_table(stage: GlobalContext) -> dict:
    ids = np.unique(np.concatenate([ids for (ids,) in stage.partials("supervoxels", "ids")]))
    stage.save_bundle(ids=ids.astype(np.uint64))
    stage.log.info("%d supervoxels", ids.size)
    return {"number_of_supervoxels": int(ids.size)}


GIVEN_ID_TABLE = StageSpec(
    name="supervoxel_ids",
    blockwise=False,
    reads=(Read.partials("supervoxels"),),
    writes=(Write.bundle(),),
    run=_given_id_table,
    description="the sorted ids of the given supervoxels; id i becomes i + 1",
)


def _relabel_given(block: BlockContext) -> dict:
    given = _masked_given(block)
    block_ids = np.unique(given)
    block_ids = block_ids[block_ids != 0]
    # Only this block's ids are looked up in the memory-mapped global list.
    global_ids = block.read_bundle("supervoxel_ids", "ids", mmap=True)
    block.write("supervoxels", map_labels(given, block_ids, (np.searchsorted(global_ids, block_ids) + 1).astype(np.uint64)))
    return {}


RELABEL_GIVEN = StageSpec(
    name="relabel_supervoxels",
    blockwise=True,
    reads=(Read.array(GIVEN, BOX), Read.array("mask", BOX, optional=True), Read.bundle("supervoxel_ids")),
    writes=(Write.array("supervoxels"),),
    run=_relabel_given,
)

WATERSHED_STAGES = (WATERSHED, SUPERVOXEL_OFFSETS)
GIVEN_STAGES = (GIVEN_IDS, GIVEN_ID_TABLE, RELABEL_GIVEN)
