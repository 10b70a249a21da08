"""Evaluation of a segmentation against ground truth, block by block, with memory bounded by the
overlap table rather than the volume (`emflow evaluate`).

Per block, the overlap table of (ground truth, segment) pairs (`emflow.evaluation.block_overlaps`)
and the ground truth's skeleton fragments; globally, the skeletons stitched and sorted by block;
per block, the segment under each skeleton node; globally, the merged table, its metrics, the worst
errors with positions, skeleton metrics (ERL) and the report.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

import numpy as np

from emflow.blocking import Blocking
from emflow.evaluation import (
    OverlapTable,
    block_overlaps,
    block_voi_contributions,
    merge_overlaps,
    metrics_from_overlaps,
    segmentation_errors,
)
from emflow.skeletons import (
    Skeletons,
    block_node_segments,
    block_skeleton_fragments,
    fragments_from_arrays,
    fragments_to_arrays,
    merge_skeleton_fragments,
    node_voxels,
    skeleton_block_region,
    skeleton_metrics,
)
from emflow.storage.skeletons import read_skeletons
from emflow.targets import atomic_write_text

from .context import BlockContext, GlobalContext, Run
from .spec import Read, StageSpec, Write

TABLE_FIELDS = OverlapTable._fields


def _overlaps(block: BlockContext) -> dict:
    table = block_overlaps(block.read("segmentation"), block.read("groundtruth"), block.box.begin)
    block.save_partial(**table._asdict())
    return {"pairs": int(len(table.counts))}


OVERLAPS = StageSpec(
    name="overlaps",
    blockwise=True,
    reads=(Read.array("segmentation"), Read.array("groundtruth")),
    writes=(Write.partials(),),
    run=_overlaps,
)


def _skeleton_regions(run: Run, blocking: Blocking) -> np.ndarray:
    """Region rule: each block's box plus one voxel on the high faces inside the volume."""
    boxes = [skeleton_block_region(blocking, block_id) for block_id in range(blocking.number_of_blocks)]
    return np.asarray([[box.begin, box.end] for box in boxes], dtype=np.int64)


def _skeleton_fragments(block: BlockContext) -> dict:
    fragments = block_skeleton_fragments(block.read("groundtruth"), block.box, block.geometry.shape, block.geometry.resolution)
    block.save_partial(**fragments_to_arrays(fragments))
    return {"bodies": len(fragments)}


SKELETON_FRAGMENTS = StageSpec(
    name="skeleton_fragments",
    blockwise=True,
    reads=(Read.array("groundtruth", _skeleton_regions),),
    writes=(Write.partials(),),
    run=_skeleton_fragments,
)


def _save_skeletons(stage: GlobalContext, skeletons: Skeletons) -> dict:
    """The skeletons, and their nodes' voxels grouped by block (CSR) so that a block reads its own."""
    blocking = stage.geometry.blocking
    voxels = node_voxels(skeletons, stage.geometry.resolution)
    inside = np.all((voxels >= 0) & (voxels < np.asarray(blocking.shape)), axis=1)
    block_ids = np.full(len(voxels), blocking.number_of_blocks, dtype=np.int64)  # outside: after every block
    block_ids[inside] = np.ravel_multi_index(tuple((voxels[inside] // np.asarray(blocking.block_shape)).T), blocking.blocks_per_axis)
    order = np.argsort(block_ids, kind="stable")
    offsets = np.searchsorted(block_ids[order], np.arange(blocking.number_of_blocks + 1))
    stage.save_bundle(
        nodes=skeletons.nodes,
        edges=skeletons.edges,
        skeleton_ids=skeletons.skeleton_ids,
        node_order=order,
        block_offsets=offsets,
        voxels=voxels[order],
    )
    return {
        "skeletons": int(len(np.unique(skeletons.skeleton_ids))),
        "nodes": int(len(skeletons.nodes)),
        "nodes_outside": int((~inside).sum()),
    }


def _stitched_skeletons(stage: GlobalContext) -> dict:
    fragments = (fragments_from_arrays(arrays) for arrays in stage.partial_bundles("skeleton_fragments"))
    return _save_skeletons(stage, merge_skeleton_fragments(fragments, stage.geometry.resolution))


def _given_skeletons(stage: GlobalContext) -> dict:
    return _save_skeletons(stage, read_skeletons(stage.config.volumes.skeletons))


STITCHED_SKELETONS = StageSpec(
    name="skeletons", blockwise=False, reads=(Read.partials("skeleton_fragments"),), writes=(Write.bundle(),), run=_stitched_skeletons
)
GIVEN_SKELETONS = StageSpec(
    name="skeletons", blockwise=False, writes=(Write.bundle(),), config=("volumes.skeletons",), run=_given_skeletons
)


def _node_segments(block: BlockContext) -> dict:
    offsets = block.read_bundle("skeletons", "block_offsets", mmap=True)
    rows = slice(int(offsets[block.block_id]), int(offsets[block.block_id + 1]))
    voxels = np.asarray(block.read_bundle("skeletons", "voxels", mmap=True)[rows])
    indices, segments = block_node_segments(block.read("segmentation"), block.box.begin, voxels)
    order = np.asarray(block.read_bundle("skeletons", "node_order", mmap=True)[rows])
    block.save_partial(nodes=order[indices], segments=segments)
    return {"nodes": int(len(indices))}


NODE_SEGMENTS = StageSpec(
    name="node_segments",
    blockwise=True,
    reads=(Read.array("segmentation"), Read.bundle("skeletons")),
    writes=(Write.partials(),),
    run=_node_segments,
)


def _evaluate(stage: GlobalContext) -> dict:
    section = stage.config.evaluation
    resolution = stage.geometry.resolution
    table = merge_overlaps(OverlapTable(*arrays) for arrays in stage.partials("overlaps", *TABLE_FIELDS))
    metrics = metrics_from_overlaps(table)
    if section.skeleton_metrics:
        skeletons = Skeletons(*(stage.read_bundle("skeletons", field) for field in ("nodes", "edges", "skeleton_ids")))
        segments = np.zeros(len(skeletons.nodes), dtype=np.uint64)  # nodes outside the volume: segment 0
        for nodes, node_segments in stage.partials("node_segments", "nodes", "segments"):
            segments[nodes] = node_segments
        metrics |= skeleton_metrics(skeletons, segments)
    errors = segmentation_errors(table, resolution)
    block_voi = block_voi_contributions(table, (OverlapTable(*arrays) for arrays in stage.partials("overlaps", *TABLE_FIELDS)))
    atomic_write_text(stage.run.layout.work_dir / "evaluation.json", json.dumps({"metrics": metrics, "errors": errors}, sort_keys=True))
    if section.report:
        _write_report(stage, metrics, errors, table, block_voi)
    stage.log.info("adapted Rand error %.4f, VOI %.4f", metrics["adapted_rand_error"], metrics["voi_sum"])
    return {"rows": int(len(table.counts))}


def _write_report(stage: GlobalContext, metrics: dict, errors: dict, table: OverlapTable, block_voi: np.ndarray) -> None:
    from emflow.report.evaluation import read_error_view, write_evaluation_report  # matplotlib only where a report is written

    views = []
    with ExitStack() as stack:
        volumes = {
            name: stack.enter_context(stage.store.opened_input(name))
            for name in ("segmentation", "groundtruth", "raw", "prediction")
            if name in stage.run.inputs
        }
        for kind, key in (("merge", "worst_merges"), ("split", "worst_splits")):
            if errors[key]:
                views.append(
                    read_error_view(
                        kind, errors[key][0], volumes["segmentation"], volumes["groundtruth"], volumes.get("raw"), volumes.get("prediction")
                    )
                )
    blocks_per_axis = stage.geometry.blocking.blocks_per_axis
    if len(blocks_per_axis) != 3:
        raise ValueError(f"the evaluation report needs a 3D block grid (z, y, x), got {blocks_per_axis}")
    write_evaluation_report(
        stage.config.evaluation.report,
        metrics=metrics,
        errors=errors,
        table=table,
        resolution=stage.geometry.resolution,
        views=views,
        block_voi=block_voi,
        blocks_per_axis=blocks_per_axis,
    )


def evaluation_stages(skeleton_metrics_wanted: bool, skeletons_given: bool) -> tuple[StageSpec, ...]:
    """The evaluation's stages: overlaps; skeletons (given or stitched from blocks) and node segments; the metrics."""
    stages: list[StageSpec] = [OVERLAPS]
    reads = [Read.partials("overlaps")]
    if skeleton_metrics_wanted:
        stages += [GIVEN_SKELETONS] if skeletons_given else [SKELETON_FRAGMENTS, STITCHED_SKELETONS]
        stages += [NODE_SEGMENTS]
        reads += [Read.bundle("skeletons"), Read.partials("node_segments")]
    stages.append(
        StageSpec(
            name="evaluate", blockwise=False, reads=tuple(reads), writes=(Write.bundle(),), config=("evaluation.report",), run=_evaluate
        )
    )
    return tuple(stages)
