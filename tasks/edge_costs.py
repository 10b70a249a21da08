"""Stage 4: multicut edge costs from the edge features."""

from __future__ import annotations

import logging

import numpy as np

from emflow.config import function_parameters, resolve_function
from emflow.storage.output import read_global_array, write_global_array

from .base import GlobalTask
from .context import RunContext
from .merge_graph import MergeGraph


class EdgeCosts(GlobalTask):
    stage = "edge_costs"
    upstream = (MergeGraph,)

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {"costs": context.config["costs"], "beta": context.config["multicut"]["beta"]}

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        features = read_global_array(context.output_path, "graph/edge_features")
        function = resolve_function(context.config["costs"]["function"], "costs.function")
        edge_costs = np.asarray(
            function(features, beta=context.config["multicut"]["beta"], **function_parameters(context.config, "costs")),
            dtype=np.float64,
        )
        if edge_costs.shape != (features.shape[0],) or not np.isfinite(edge_costs).all():
            raise ValueError(
                f"{context.config['costs']['function']} must return {features.shape[0]} finite costs, "
                f"got shape {edge_costs.shape}"
            )
        write_global_array(context.output_path, "graph/edge_costs", edge_costs)
        return {"number_of_edges": int(edge_costs.size), "attractive_edges": int((edge_costs > 0).sum())}
