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
        blocks = range(context.blocking.number_of_blocks)
        # Two passes over the block files, one open at a time: the task holds O(edges), and as
        # many open files as blocks would exceed the process's limit on large volumes.
        edges = merge_edges([context.read_partial(BlockGraph.stage, block_id, "edges") for block_id in blocks])
        features = merge_edge_features(
            number_of_nodes,
            edges,
            (context.read_partials(BlockGraph.stage, block_id, "edges", "statistics") for block_id in blocks),
        )
        write_global_array(context.output_path, "graph/edges", edges, {"number_of_nodes": number_of_nodes})
        write_global_array(context.output_path, "graph/edge_features", features, {"feature_names": list(FEATURE_NAMES)})
        logger.info("%d nodes, %d edges", number_of_nodes, edges.shape[0])
        return {"number_of_nodes": number_of_nodes, "number_of_edges": int(edges.shape[0])}

