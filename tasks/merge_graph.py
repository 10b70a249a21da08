"""The global region-adjacency graph and edge features, merged from all blocks."""

from __future__ import annotations

from emflow.graph import FEATURE_NAMES, merge_edge_features, merge_edges

from .context import GlobalContext
from .spec import Read, StageSpec, Write
from .supervoxels import NODE_ID_READS, node_id_map


def _merge_graph(stage: GlobalContext) -> dict:
    number_of_nodes = stage.results("supervoxel_ids")["number_of_supervoxels"] + 1
    # Two passes over the block files, one open at a time: the task holds O(edges), and as many
    # open files as blocks would exceed the process's limit on large volumes.
    to_nodes = node_id_map(stage)
    edges = merge_edges([to_nodes(edges) for (edges,) in stage.partials("block_graph", "edges")])
    features = merge_edge_features(
        number_of_nodes,
        edges,
        ((to_nodes(edges), statistics) for edges, statistics in stage.partials("block_graph", "edges", "statistics")),
    )
    stage.write_table("graph/edges", edges, {"number_of_nodes": number_of_nodes})
    stage.write_table("graph/edge_features", features, {"feature_names": list(FEATURE_NAMES)})
    stage.log.info("%d nodes, %d edges", number_of_nodes, edges.shape[0])
    return {"number_of_nodes": number_of_nodes, "number_of_edges": int(edges.shape[0])}


MERGE_GRAPH = StageSpec(
    name="merge_graph",
    blockwise=False,
    reads=(Read.partials("block_graph"), *NODE_ID_READS),
    writes=(Write.table("graph/edges"), Write.table("graph/edge_features")),
    run=_merge_graph,
)
