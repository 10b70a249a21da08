"""Blocks segmented independently and stitched by their overlaps (`[segmentation] method = "stitching"`),
in the stages of `emflow.stitching`:

1. `supervoxels` (per block): the block's segmenter on its box grown by `[stitching] overlap`,
   renumbered so that the objects present in the box come first (`relabel_block`). The objects of
   the box are the run's supervoxels, stored under volume-wide ids (`emflow.tasks.supervoxels`);
   the labels of the whole grown box are kept as the block's partial result (`.npy`, uint32, read
   memory-mapped by the faces stage).
2. `stitch_faces` (per block): for each of the block's up to three upper faces, the overlaps of its
   objects with those of the next block in the slab where their grown boxes meet, and the pairs
   `[stitching] mode` merges (`overlap_statistics`, `face_merges`).
3. `stitch` (global): union-find over every face's merges (`stitch_mapping`), as node labels of the
   supervoxel ids; O(objects) memory. Then `write_segmentation`.

The result equals `emflow.stitching.stitch_blocks` in memory with the same segmenter.
"""

from __future__ import annotations

import math

import numpy as np

from emflow.blocking import Box
from emflow.config import as_dict, resolve_function
from emflow.labels import block_offsets, relabel_consecutive
from emflow.stitching import (
    agglomeration_block_segmenter,
    face_merges,
    face_slicings,
    multicut_block_segmenter,
    overlap_statistics,
    relabel_block,
    stitch_mapping,
)

from .context import BlockContext, GlobalContext, Run
from .spec import BOX, Read, StageSpec, Write, boxes, forward_boxes
from .supervoxels import GIVEN, NODE_ID_READS, PER_BLOCK_IDS, segment_labels, watershed, write_block_supervoxels


def segment_block(
    config, resolution: tuple[float, ...], boundaries: np.ndarray, mask: np.ndarray | None, given: np.ndarray | None
) -> np.ndarray:
    """One grown block's segmentation by the configured segmenter (`[stitching] function` or `method`).

    `boundaries` float32 (z, y, x), `mask` bool or None, `given` the given supervoxels of the box or
    None; returns integer labels of the same shape, 0 = background.
    """
    section = config.stitching
    if section.uses_plugin:
        function = resolve_function(section.function, "stitching.function")
        labels = np.asarray(function(boundaries, resolution=resolution, mask=mask, **section.parameters()))
        if labels.shape != boundaries.shape or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                f"{section.function} returned {labels.dtype} labels of shape {labels.shape}; expected integer labels of shape {boundaries.shape}"
            )
        return labels
    if given is not None:
        supervoxels = relabel_consecutive(given if mask is None else np.where(mask, given, 0))[0]
    else:
        supervoxels = watershed(config, resolution, boundaries, mask)
    if section.method == "multicut":
        segmenter = multicut_block_segmenter(boundaries, beta=config.multicut.beta, solver=config.multicut.solver, supervoxels=supervoxels)
    else:
        agglomeration = config.agglomeration
        segmenter = agglomeration_block_segmenter(
            boundaries,
            threshold=agglomeration.thresholds[0],
            linkage=agglomeration.linkage,
            quantile=agglomeration.quantile,
            supervoxels=supervoxels,
        )
    return segmenter(Box((0,) * boundaries.ndim, boundaries.shape))


def segmenter_parameters(config) -> dict:
    """The settings of other sections the configured segmenter uses (`segment_block`)."""
    section = config.stitching
    if section.uses_plugin:
        return {}
    parameters = {"supervoxels": as_dict(config.supervoxels)}
    if section.method == "multicut":
        return parameters | {"beta": config.multicut.beta, "solver": config.multicut.solver}
    agglomeration = config.agglomeration
    return parameters | {"threshold": agglomeration.thresholds[0], "linkage": agglomeration.linkage, "quantile": agglomeration.quantile}


def _segment(block: BlockContext) -> dict:
    boundaries = block.read("boundaries")
    mask = block.read_optional("mask")
    mask = None if mask is None else mask.astype(bool)
    given = block.read_optional(GIVEN)
    inner = block.inner("boundaries")
    labels = segment_block(block.config, block.geometry.resolution, boundaries, mask, given)
    if mask is not None:
        labels = np.where(mask, labels, 0)
    labels, inner_count, total_count = relabel_block(labels, inner)
    inner_labels = labels[inner.slicing]
    write_block_supervoxels(block, inner_labels)
    # Voxels per object of the box, for the segment sizes of the run report.
    block.save_partial(sizes=np.bincount(inner_labels.ravel(), minlength=inner_count + 1)[1:])
    assert total_count < 2**32, "a block's objects are numbered within the block"
    block.save_partial_array(labels.astype(np.uint32))
    inner_boundaries = boundaries[inner.slicing]
    return {
        "number_of_supervoxels": inner_count,
        "objects": total_count,
        "boundary_range": [float(inner_boundaries.min()), float(inner_boundaries.max())],
    }


def _grown_boxes(run: Run, blocking) -> np.ndarray:
    return boxes(run.config.stitching.overlap)(run, blocking)


SEGMENT_BLOCKS = StageSpec(
    name="supervoxels",
    blockwise=True,
    reads=(
        Read.array("boundaries", _grown_boxes),
        Read.array("mask", _grown_boxes, optional=True),
        Read.array(GIVEN, _grown_boxes, optional=True),
    ),
    # The partial holds the grown box's labels; the faces stage reads those of the block and of the
    # blocks after it, which is what linking by the block's own box gives.
    writes=(Write.array("supervoxels"), Write.partials(BOX)),
    config=("stitching",),
    parameters=lambda run: segmenter_parameters(run.config),
    run=_segment,
    description="one block segmented on its own, grown by the stitching overlap",
    version=PER_BLOCK_IDS,
)


def _upper_neighbours(blocking, block_id: int) -> list[tuple[int, int]]:
    """(axis, block id) of the blocks after `block_id` across each of its faces."""
    position = blocking.block_grid_position(block_id)
    grid = blocking.blocks_per_axis
    return [(axis, block_id + math.prod(grid[axis + 1 :])) for axis in range(len(grid)) if position[axis] + 1 < grid[axis]]


def _stitch_faces(block: BlockContext) -> dict:
    section = block.config.stitching
    labels = block.load_partial_array("supervoxels", block.block_id)
    merges = {}
    for axis, upper in _upper_neighbours(block.blocking, block.block_id):
        lower_slicing, upper_slicing = face_slicings(block.blocking, block.block_id, upper, section.overlap)
        statistics = overlap_statistics(
            labels[lower_slicing], block.load_partial_array("supervoxels", upper)[upper_slicing], min_region=section.min_overlap
        )
        merges[f"axis{axis}"] = face_merges(statistics, section.mode, min_overlap=section.min_overlap, fraction=section.fraction)
    block.save_partial(**merges)
    return {"merges": sum(len(pairs) for pairs in merges.values())}


STITCH_FACES = StageSpec(
    name="stitch_faces",
    blockwise=True,
    reads=(Read.partials("supervoxels", forward_boxes(lambda run: (1, 1, 1))),),
    writes=(Write.partials(),),
    config=("stitching.mode", "stitching.overlap", "stitching.min_overlap", "stitching.fraction"),
    run=_stitch_faces,
    description="the objects a block and the next blocks merge across its upper faces",
)


def _stitch(stage: GlobalContext) -> dict:
    results = stage.results("supervoxels")
    number_of_blocks = len(results)
    inner_counts = [results[block_id]["number_of_supervoxels"] for block_id in range(number_of_blocks)]
    total_counts = [results[block_id]["objects"] for block_id in range(number_of_blocks)]
    blocking = stage.geometry.blocking
    face_blocks, merges = [], []
    for block_id, faces in enumerate(stage.partial_bundles("stitch_faces")):
        for axis, upper in _upper_neighbours(blocking, block_id):
            face_blocks.append((block_id, upper))
            merges.append(faces[f"axis{axis}"])
    mapping = stitch_mapping(inner_counts, total_counts, np.asarray(face_blocks, dtype=np.int64).reshape(-1, 2), merges)
    # Supervoxel id offset + l of block b (its object l, present in its box) gets the object's global id.
    node_labels = np.zeros(sum(inner_counts) + 1, dtype=np.uint64)
    for block_id, (offset, count) in enumerate(zip(block_offsets(np.asarray(inner_counts, dtype=np.uint64)).tolist(), inner_counts)):
        node_labels[offset + 1 : offset + 1 + count] = mapping[block_id][1 : count + 1]
    node_labels = segment_labels(stage, node_labels)
    stage.write_table("graph/node_labels", node_labels)
    stage.save_bundle(node_labels=node_labels)
    number_of_segments = int(np.unique(node_labels[1:]).size)
    stage.log.info(
        "%d objects in %d blocks, %d merges over %d faces: %d segments",
        sum(inner_counts),
        number_of_blocks,
        sum(len(pairs) for pairs in merges),
        len(merges),
        number_of_segments,
    )
    return {"merges": int(sum(len(pairs) for pairs in merges)), "number_of_segments": number_of_segments}


STITCH = StageSpec(
    name="stitch",
    blockwise=False,
    reads=(Read.results("supervoxels"), Read.partials("stitch_faces"), *NODE_ID_READS),
    writes=(Write.table("graph/node_labels"), Write.bundle()),
    run=_stitch,
)

STITCHING_STAGES = (SEGMENT_BLOCKS, STITCH_FACES, STITCH)
