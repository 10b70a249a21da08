"""Stage 5: the global multicut, giving each supervoxel (graph node) its segment id."""

from __future__ import annotations

import logging

import luigi
import numpy as np

from emflow.config import function_parameters, resolve_function
from emflow.hierarchical_multicut import project_node_labels
from emflow.multicut import multicut_problem, multicut_solver, plugin_solver
from emflow.storage.output import output_array, read_global_array, write_global_array
from emflow.targets import atomic_save_npy

from .base import GlobalTask, stage_task
from .context import RunContext
from .edge_costs import EdgeCosts
from .hierarchical_multicut import MulticutProblem, problem_array
from .lifted_edges import LiftedEdges, lifted


class Multicut(GlobalTask):
    """The multicut of the whole graph; with `n_scales` > 0, of the problem the hierarchy reduced it to."""

    stage = "multicut"

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {key: value for key, value in context.config["multicut"].items() if key != "beta"}

    def upstream_stages(self) -> list[luigi.Task]:
        n_scales = self.context.config["multicut"]["n_scales"]
        if n_scales:
            return [stage_task(MulticutProblem, self.config_path, scale=n_scales)]
        return [stage_task(EdgeCosts, self.config_path)] + ([stage_task(LiftedEdges, self.config_path)] if lifted(self.context) else [])

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        n_scales = context.config["multicut"]["n_scales"]
        edges_array = output_array(context.output_path, "graph/edges")
        edges = np.asarray(edges_array[...])
        edge_costs = read_global_array(context.output_path, "graph/edge_costs")
        lifted_problem = [context.read_global_array(LiftedEdges.stage, name) for name in ("lifted_edges", "lifted_costs")] if lifted(context) else []
        if n_scales:
            # The problem the hierarchy reduced the graph to, solved here and mapped back below.
            number_of_nodes = len(problem_array(context, n_scales, "node_block_ids"))
            names = ("edges", "edge_costs", "lifted_edges", "lifted_costs")[: 4 if lifted_problem else 2]
            problem = [problem_array(context, n_scales, name) for name in names]
            logger.info("solving the problem reduced to %d nodes, %d edges", number_of_nodes, len(problem[0]))
        else:
            number_of_nodes, problem = int(edges_array.attrs["number_of_nodes"]), [edges, edge_costs, *lifted_problem]
        node_labels = self._solver()(multicut_problem(number_of_nodes, *problem))
        if n_scales:
            node_labels = project_node_labels(node_labels, [problem_array(context, scale, "node_mapping") for scale in range(1, n_scales + 1)])
        energy = multicut_problem(len(node_labels), edges, edge_costs, *lifted_problem).energy(node_labels)
        write_global_array(context.output_path, "graph/node_labels", node_labels, {"energy": energy})
        atomic_save_npy(context.global_array_path(self.stage, "node_labels"), node_labels)
        number_of_segments = int(np.unique(node_labels[1:]).size)
        logger.info("%d segments, energy %.6g", number_of_segments, energy)
        return {"number_of_segments": number_of_segments, "energy": energy}

    def _solver(self):
        section = self.context.config["multicut"]
        if section["function"] == "emflow.multicut:solve_multicut":
            return multicut_solver(section["solver"], seed=section["seed"])
        function = resolve_function(section["function"], "multicut.function")
        return plugin_solver(function, function_parameters(self.context.config, "multicut"), section["function"])
