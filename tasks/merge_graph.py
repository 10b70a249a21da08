"""The global region-adjacency graph and edge features, merged from all blocks."""

from __future__ import annotations

from emflow.graph import FEATURE_NAMES, merge_edge_features, merge_edges

from .context import GlobalContext
from .spec import Read, StageSpec, Write
from .supervoxels import NODE_ID_READS, node_id_map


def _merge_graph(stage: GlobalContext) -> dict:
    number_of_nodes = stage.results("supervoxel_ids")["number_of_supervoxels"] + 1
    # The blocks' arrays are read once and kept: each edge is in one block's file, so they are as
    # large as the merged table (6 MB for 93,000 edges, 62.5 MVox of benchmarks/reprocessing.py).
    # Reading them twice made the stage take 0.73 s there, once 0.50 s (medians of 3, `emflow rerun
    # --stage merge_graph`). They come through a cache, so that after new data in a few chunks only
    # the blocks written since are read: 20,480 files took 1.0 s, the cache and none 0.12 s.
    to_nodes = node_id_map(stage)
    block_results = [(to_nodes(edges), statistics) for edges, statistics in stage.cached_partials("block_graph", "edges", "statistics")]
    edges = merge_edges([block_edges for block_edges, _ in block_results])
    features = merge_edge_features(number_of_nodes, edges, block_results)
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
