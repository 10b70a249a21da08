"""Learned edge costs' features: statistics of the boundary map and of the affinity channels on each
face (block-wise), merged with the supervoxels' sizes into the classifier's feature table (global).
The classifier itself is applied by the edge-cost stage (`tasks.edge_costs`)."""

from __future__ import annotations

import numpy as np

from emflow.edge_classifier import (
    block_channel_statistics,
    block_node_sizes,
    channel_names,
    edge_feature_matrix,
    feature_names,
    merge_channel_features,
    node_sizes,
)

from .affinities import affinity_offsets
from .block_graph import GRAPH_HALO
from .context import BlockContext, GlobalContext
from .spec import Read, StageSpec, Write, forward_boxes
from .supervoxels import NODE_ID_READS, node_id_map

NAME = "channel_features"


def channel_feature_stages(affinities: str | None) -> tuple[StageSpec, StageSpec]:
    """The edge classifier's feature stages: the block-wise statistics of the boundary map and of
    every affinity channel in array `affinities` (None: the boundary map only), then their merge
    with the supervoxels' sizes into the feature table (global)."""
    region = forward_boxes(lambda run: GRAPH_HALO)
    sources = ("boundaries",) if affinities is None else ("boundaries", affinities)

    def offsets(config) -> tuple[tuple[int, int, int], ...]:
        return () if affinities is None else affinity_offsets(config)

    def run(block: BlockContext) -> dict:
        supervoxels = block.read("supervoxels")
        boundaries = block.read("boundaries")[None]
        channels = boundaries if affinities is None else np.concatenate([boundaries, block.read(affinities)])
        channels = channels.astype(np.float32, copy=False)
        edges, statistics, histograms = block_channel_statistics(supervoxels, channels, block.inner("supervoxels"))
        node_ids, node_counts = block_node_sizes(supervoxels, block.inner("supervoxels"))
        block.save_partial(edges=edges, statistics=statistics, histograms=histograms, node_ids=node_ids, node_counts=node_counts)
        return {"number_of_edges": int(len(edges))}

    def merge(stage: GlobalContext) -> dict:
        number_of_nodes = int(stage.table_attributes("graph/edges")["number_of_nodes"])
        edges = stage.read_table("graph/edges")
        to_nodes = node_id_map(stage)
        block_results = ((to_nodes(block_edges), *rest) for block_edges, *rest in stage.partials(NAME, "edges", "statistics", "histograms"))
        features, face_sizes = merge_channel_features(number_of_nodes, edges, block_results)
        sizes = node_sizes(number_of_nodes, ((to_nodes(ids), counts) for ids, counts in stage.partials(NAME, "node_ids", "node_counts")))
        names = feature_names(channel_names(offsets(stage.config)))
        stage.write_table(
            "graph/classifier_features", edge_feature_matrix(edges, features, face_sizes, sizes), {"feature_names": list(names)}
        )
        return {"number_of_edges": int(len(edges)), "number_of_features": len(names)}

    block_stage = StageSpec(
        name=NAME,
        blockwise=True,
        reads=(Read.array("supervoxels", region), *(Read.array(source, region) for source in sources)),
        writes=(Write.partials(),),
        parameters=lambda run: {"offsets": [list(offset) for offset in offsets(run.config)]},
        run=run,
        description="statistics of the boundary map"
        + ("" if affinities is None else " and each affinity channel")
        + " on the faces a block owns, and its supervoxels' sizes",
    )
    merge_stage = StageSpec(
        name="merge_channel_features",
        blockwise=False,
        reads=(Read.partials(NAME), Read.table("graph/edges"), *NODE_ID_READS),
        writes=(Write.table("graph/classifier_features"),),
        run=merge,
        description="the edge classifier's features of every edge",
    )
    return block_stage, merge_stage
