"""Lifted edges from a labelling of the volume (`[input] lifted_labels_key`).

Per block, how many voxels each supervoxel shares with each label of the lifted-labels volume;
then, globally, each supervoxel's majority label and a lifted edge between every two labelled
supervoxels 2 to `[lifted] graph_depth` hops apart: attractive when their labels agree, repulsive
when not.
"""

from __future__ import annotations

import numpy as np

from emflow.labels import label_overlaps, majority_labels
from emflow.lifted_edges import lifted_edges_from_node_labels

from .context import BlockContext, GlobalContext
from .spec import Read, StageSpec, Write


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
    partials = list(stage.partials("lifted_label_overlaps", "pairs", "counts"))
    node_labels = majority_labels(number_of_nodes, np.concatenate([pairs for pairs, _ in partials]), np.concatenate([counts for _, counts in partials]))
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
    reads=(Read.partials("lifted_label_overlaps"), Read.table("graph/edges")),
    writes=(Write.table("graph/lifted_edges"), Write.table("graph/lifted_costs"), Write.bundle()),
    config=("lifted",),
    run=_lifted_edges,
)
