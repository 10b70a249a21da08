"""Lifted edges, from a labelling of the volume (`[input] lifted_labels_key`) or from long-range affinities.

From labels: per block, how many voxels each supervoxel shares with each label of the lifted-labels
volume; then, globally, each supervoxel's majority label and a lifted edge between every two
labelled supervoxels 2 to `[lifted] graph_depth` hops apart: attractive when their labels agree,
repulsive when not.

From affinities (`[lifted] source = "affinities"`): per block, the long-range affinity statistics
of the supervoxel pairs (`emflow.tasks.pair_statistics`); then, globally, a lifted edge for every
pair that does not touch, with the log-odds cost of its mean long-range affinity
(`emflow.lifted_edges.lifted_edges_from_affinities`).
"""

from __future__ import annotations

import numpy as np

from emflow.labels import label_overlaps, majority_labels
from emflow.lifted_edges import lifted_edges_from_affinities, lifted_edges_from_node_labels

from .context import BlockContext, GlobalContext
from .pair_statistics import NAME as STATISTICS
from .pair_statistics import merged_statistics
from .spec import Read, StageSpec, Write
from .supervoxels import NODE_ID_READS, node_id_map


def _label_overlaps(block: BlockContext) -> dict:
    pairs, counts = label_overlaps(block.read("supervoxels"), block.read("lifted_labels"))
    block.save_partial(pairs=pairs, counts=counts)
    return {"pairs": int(len(pairs))}


LABEL_OVERLAPS = StageSpec(
    name="lifted_label_overlaps",
    blockwise=True,
    reads=(Read.array("supervoxels"), Read.array("lifted_labels")),
    writes=(Write.partials(),),
    run=_label_overlaps,
    description="voxel counts of the (supervoxel, lifted label) pairs in one block",
)


def _lifted_edges(stage: GlobalContext) -> dict:
    number_of_nodes = int(stage.table_attributes("graph/edges")["number_of_nodes"])
    to_nodes = node_id_map(stage)
    partials = list(stage.partials("lifted_label_overlaps", "pairs", "counts"))
    # Column 0 holds supervoxel ids, column 1 lifted labels.
    pairs = np.concatenate([np.column_stack([to_nodes(pairs[:, 0]), pairs[:, 1]]) for pairs, _ in partials])
    node_labels = majority_labels(number_of_nodes, pairs, np.concatenate([counts for _, counts in partials]))
    section = stage.config.lifted
    lifted_edges, lifted_costs = lifted_edges_from_node_labels(
        number_of_nodes, stage.read_table("graph/edges"), node_labels, graph_depth=section.graph_depth, weight=section.weight
    )
    stage.write_table("graph/lifted_edges", lifted_edges)
    stage.write_table("graph/lifted_costs", lifted_costs)
    stage.save_bundle(lifted_edges=lifted_edges, lifted_costs=lifted_costs)
    labelled = int((node_labels != 0).sum())
    stage.log.info("%d of %d supervoxels labelled, %d lifted edges", labelled, number_of_nodes - 1, len(lifted_edges))
    return {"labelled_supervoxels": labelled, "lifted_edges": int(len(lifted_edges)), "attractive": int((lifted_costs > 0).sum())}


LIFTED_EDGES = StageSpec(
    name="lifted_edges",
    blockwise=False,
    reads=(Read.partials("lifted_label_overlaps"), Read.table("graph/edges"), *NODE_ID_READS),
    writes=(Write.table("graph/lifted_edges"), Write.table("graph/lifted_costs"), Write.bundle()),
    config=("lifted.graph_depth", "lifted.weight"),
    run=_lifted_edges,
)


def _lifted_edges_from_affinities(stage: GlobalContext) -> dict:
    number_of_nodes = int(stage.table_attributes("graph/edges")["number_of_nodes"])
    long_range = merged_statistics(stage, "long_range")
    lifted_edges, lifted_costs = lifted_edges_from_affinities(
        number_of_nodes,
        stage.read_table("graph/edges"),
        long_range,
        beta=stage.config.multicut.beta,
        weighting=stage.config.lifted.weighting,
    )
    stage.write_table("graph/lifted_edges", lifted_edges)
    stage.write_table("graph/lifted_costs", lifted_costs)
    stage.save_bundle(lifted_edges=lifted_edges, lifted_costs=lifted_costs)
    stage.log.info("%d long-range pairs, %d lifted edges", len(long_range), len(lifted_edges))
    return {"long_range_pairs": len(long_range), "lifted_edges": int(len(lifted_edges)), "attractive": int((lifted_costs > 0).sum())}


LIFTED_EDGES_FROM_AFFINITIES = StageSpec(
    name="lifted_edges",
    blockwise=False,
    reads=(Read.partials(STATISTICS), Read.table("graph/edges"), *NODE_ID_READS),
    writes=(Write.table("graph/lifted_edges"), Write.table("graph/lifted_costs"), Write.bundle()),
    config=("lifted.source", "lifted.weighting", "multicut.beta"),
    run=_lifted_edges_from_affinities,
)
