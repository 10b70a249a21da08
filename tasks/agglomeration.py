"""Mean or quantile agglomeration of the region graph (`[segmentation] method = "agglomeration"`).

After the supervoxel stages, `pair_statistics` (per block) keeps the nearest-neighbour affinity
statistics of the supervoxel pairs each block owns; `agglomeration` (global) merges them, runs the
agglomeration once up to the largest threshold (`emflow.agglomeration.merge_history`) and keeps
each threshold's node labels; `write_segmentation` writes one volume per threshold. Merged
statistics equal the whole volume's exactly, so the result equals the in-memory agglomeration of
the same supervoxels. The global task holds O(edges): the merged statistics and the merge history.
"""

from __future__ import annotations

import numpy as np

from emflow.agglomeration import merge_history

from .context import GlobalContext
from .pair_statistics import NAME as STATISTICS
from .pair_statistics import merged_statistics
from .spec import Read, StageSpec, Write
from .supervoxels import NODE_ID_READS, segment_labels
from .write import node_label_field


def threshold_volume(thresholds: tuple[float, ...], index: int) -> str:
    """The output volume of the `index`-th threshold: `segmentation` for the first."""
    return "segmentation" if index == 0 else f"segmentation_threshold_{thresholds[index]:g}"


def segmentation_volumes(config) -> tuple[str, ...]:
    """The segmentation volumes a config writes: one per agglomeration threshold, else one."""
    if config.method != "agglomeration":
        return ("segmentation",)
    thresholds = config.agglomeration.thresholds
    return tuple(threshold_volume(thresholds, index) for index in range(len(thresholds)))


def _agglomeration(stage: GlobalContext) -> dict:
    section = stage.config.agglomeration
    number_of_nodes = stage.results("supervoxel_ids")["number_of_supervoxels"] + 1
    statistics = merged_statistics(stage, "nearest")
    history = merge_history(
        number_of_nodes, statistics, linkage=section.linkage, quantile=section.quantile, stop_score=max(section.thresholds)
    )
    node_labels = [segment_labels(stage, history.labels_at_threshold(threshold)) for threshold in section.thresholds]
    stage.write_table("graph/node_labels", node_labels[0], {"threshold": section.thresholds[0]})
    # The whole pass up to the largest threshold: any lower threshold's segmentation follows from it.
    stage.write_table("graph/merges", history.merges)
    stage.write_table("graph/merge_scores", history.scores)
    stage.save_bundle(**{node_label_field(index): labels for index, labels in enumerate(node_labels)})
    segments = [int(np.unique(labels[1:]).size) for labels in node_labels]
    stage.log.info("%d edges, %d merges; segments per threshold: %s", len(statistics), len(history.merges), segments)
    return {"number_of_edges": len(statistics), "merges": int(len(history.merges)), "segments": segments}


AGGLOMERATION = StageSpec(
    name="agglomeration",
    blockwise=False,
    reads=(Read.partials(STATISTICS), *NODE_ID_READS),
    writes=(Write.table("graph/node_labels"), Write.table("graph/merges"), Write.table("graph/merge_scores"), Write.bundle()),
    config=("agglomeration",),
    run=_agglomeration,
)
