"""Stage 3: the global region-adjacency graph and edge features, merged from all blocks."""

from __future__ import annotations

import logging

import numpy as np

from emflow.graph import FEATURE_NAMES, merge_edge_features, merge_edges
from emflow.storage.output import write_global_array

from .base import GlobalTask
from .block_graph import BlockGraph
from .supervoxels import SupervoxelIds


class MergeGraph(GlobalTask):
    stage = "merge_graph"
    upstream = (BlockGraph,)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        number_of_nodes = SupervoxelIds(config_path=self.config_path).output().result()["number_of_supervoxels"] + 1
        partials = [np.load(context.partial_path(BlockGraph.stage, block_id)) for block_id in range(context.blocking.number_of_blocks)]
        edges = merge_edges([partial["edges"] for partial in partials])
        features = merge_edge_features(number_of_nodes, edges, ((partial["edges"], partial["statistics"]) for partial in partials))
        write_global_array(context.output_path, "graph/edges", edges, {"number_of_nodes": number_of_nodes})
        write_global_array(context.output_path, "graph/edge_features", features, {"feature_names": list(FEATURE_NAMES)})
        logger.info("%d nodes, %d edges", number_of_nodes, edges.shape[0])
        return {"number_of_nodes": number_of_nodes, "number_of_edges": int(edges.shape[0])}
