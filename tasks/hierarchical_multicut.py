"""Stage 5a, with `[multicut] n_scales` > 0: the hierarchical multicut of Pape et al. (2017).

For each scale s = 0 .. n_scales - 1, `MulticutProblem(s)` holds the problem at scale s with the
edges inside each block (2**s base blocks per axis) grouped by block; `SubproblemBlock(s)` solves
one block's sub-problem and keeps the ids of the edges it cuts; `MulticutProblem(s + 1)` contracts
every inner edge no sub-problem cut. `Multicut` then solves the last, small problem and maps its
labels back (see `emflow.hierarchical_multicut`, whose in-memory `hierarchical_multicut` this
reproduces exactly).

A block task memory-maps its problem and reads only its own block's rows, so its memory depends on
the block, not on the volume; the global tasks hold O(edges). With lifted edges (`[input]
lifted_labels_key`), a sub-problem keeps the lifted edges with both nodes inside its block, and the
reduction sums the lifted costs between contracted nodes like the local ones.
"""

from __future__ import annotations

import logging
import math

import luigi
import numpy as np

from emflow.hierarchical_multicut import (
    Subproblem,
    coarse_block_ids,
    coarse_blocks_per_axis,
    first_block_of_nodes,
    inner_edge_ids_by_block,
    node_block_ids_from_counts,
    reduce_problem,
    solve_subproblem,
)
from emflow.multicut import multicut_problem, multicut_solver
from emflow.storage.output import output_array, read_global_array
from emflow.targets import atomic_save_npy, atomic_save_npz

from .base import BlockTask, GlobalTask, stage_task
from .context import RunContext
from .edge_costs import EdgeCosts
from .lifted_edges import LiftedEdges, lifted
from .supervoxels import SupervoxelBlock, SupervoxelIds, given_supervoxels


def problem_array(context: RunContext, scale: int, name: str, *, mmap: bool = False) -> np.ndarray:
    """One array of the problem at `scale`, memory-mapped with `mmap` (for reading a block's rows)."""
    return context.read_global_array(f"multicut_problem_s{scale}", name, mmap=mmap)


def number_of_blocks_at_scale(context: RunContext, scale: int) -> int:
    return math.prod(coarse_blocks_per_axis(context.blocking.blocks_per_axis, scale))


class MulticutProblem(GlobalTask):
    """The multicut problem at one scale, its inner edges grouped by block."""

    scale = luigi.IntParameter()

    @property
    def stage(self) -> str:
        return f"multicut_problem_s{self.scale}"

    def upstream_stages(self) -> list[luigi.Task]:
        if self.scale == 0:
            stages = [stage_task(EdgeCosts, self.config_path), stage_task(SupervoxelIds, self.config_path)]
            return stages + ([stage_task(LiftedEdges, self.config_path)] if lifted(self.context) else [])
        return [
            stage_task(MulticutProblem, self.config_path, scale=self.scale - 1),
            stage_task(SubproblemBlock, self.config_path, scale=self.scale - 1),
        ]

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        arrays = {}
        if self.scale == 0:
            edges_array = output_array(context.output_path, "graph/edges")
            number_of_nodes = int(edges_array.attrs["number_of_nodes"])
            edges = np.asarray(edges_array[...])
            edge_costs = read_global_array(context.output_path, "graph/edge_costs")
            node_block_ids = self._base_node_block_ids(number_of_nodes)
            if lifted(context):
                lifted_edges = context.read_global_array(LiftedEdges.stage, "lifted_edges")
                lifted_costs = context.read_global_array(LiftedEdges.stage, "lifted_costs")
        else:
            previous = self.scale - 1
            cut_edge_ids = np.concatenate(
                [context.read_partial(f"subproblems_s{previous}", block_id, "cut_edge_ids") for block_id in range(number_of_blocks_at_scale(context, previous))]
            )
            problem = [problem_array(context, previous, name) for name in ("edges", "edge_costs")]
            previous_block_ids = problem_array(context, previous, "node_block_ids")
            if lifted(context):
                problem += [problem_array(context, previous, name) for name in ("lifted_edges", "lifted_costs")]
            reduced = reduce_problem(multicut_problem(len(previous_block_ids), *problem), cut_edge_ids, previous_block_ids)
            number_of_nodes, edges, edge_costs = reduced.problem.number_of_nodes, reduced.problem.edges, reduced.problem.edge_costs
            lifted_edges, lifted_costs = reduced.problem.lifted_edges, reduced.problem.lifted_costs
            node_block_ids = coarse_block_ids(reduced.node_block_ids, coarse_blocks_per_axis(context.blocking.blocks_per_axis, previous), 1)
            arrays["node_mapping"] = reduced.node_mapping
        number_of_blocks = number_of_blocks_at_scale(context, self.scale)
        inner_edge_ids, block_offsets = inner_edge_ids_by_block(edges, node_block_ids, number_of_blocks)
        if lifted(context):
            inner_lifted_edge_ids, lifted_block_offsets = inner_edge_ids_by_block(lifted_edges, node_block_ids, number_of_blocks)
            arrays.update(
                lifted_edges=lifted_edges,
                lifted_costs=lifted_costs,
                lifted_block_offsets=lifted_block_offsets,
                inner_lifted_edges=lifted_edges[inner_lifted_edge_ids],
                inner_lifted_costs=lifted_costs[inner_lifted_edge_ids],
            )
        arrays.update(
            edges=edges,
            edge_costs=edge_costs,
            node_block_ids=node_block_ids,
            inner_edge_ids=inner_edge_ids,
            block_offsets=block_offsets,
            # Each block's rows side by side, so that a block task reads one contiguous slice.
            inner_edges=edges[inner_edge_ids],
            inner_edge_costs=edge_costs[inner_edge_ids],
        )
        for name, array in arrays.items():
            atomic_save_npy(context.global_array_path(self.stage, name), array)
        logger.info("scale %d: %d nodes, %d edges, %d of them inside blocks", self.scale, number_of_nodes, len(edges), len(inner_edge_ids))
        return {"number_of_nodes": int(number_of_nodes), "number_of_edges": int(len(edges)), "inner_edges": int(len(inner_edge_ids))}

    def _base_node_block_ids(self, number_of_nodes: int) -> np.ndarray:
        context = self.context
        if not given_supervoxels(context):
            results = stage_task(SupervoxelBlock, self.config_path).block_results()
            return node_block_ids_from_counts([results[block_id]["number_of_supervoxels"] for block_id in sorted(results)])
        global_ids = context.read_global_array(SupervoxelIds.stage, "ids")
        nodes_by_block = (
            np.searchsorted(global_ids, context.read_partial(SupervoxelBlock.stage, block_id, "ids")) + 1
            for block_id in range(context.blocking.number_of_blocks)
        )
        return first_block_of_nodes(number_of_nodes, nodes_by_block)


class SubproblemBlock(BlockTask):
    """The multicut of the edges inside one block at one scale: which of them to cut."""

    scale = luigi.IntParameter()

    @property
    def stage(self) -> str:
        return f"subproblems_s{self.scale}"

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {"solver": context.config["multicut"]["solver"], "seed": context.config["multicut"]["seed"]}

    def upstream_stages(self) -> list[luigi.Task]:
        return [stage_task(MulticutProblem, self.config_path, scale=self.scale)]

    def number_of_blocks(self, context: RunContext) -> int:
        return number_of_blocks_at_scale(context, self.scale)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        block_offsets = problem_array(context, self.scale, "block_offsets", mmap=True)
        rows = slice(int(block_offsets[self.block_id]), int(block_offsets[self.block_id + 1]))
        edges = np.asarray(problem_array(context, self.scale, "inner_edges", mmap=True)[rows])
        edge_costs = np.asarray(problem_array(context, self.scale, "inner_edge_costs", mmap=True)[rows])
        edge_ids = np.asarray(problem_array(context, self.scale, "inner_edge_ids", mmap=True)[rows])
        section = context.config["multicut"]
        subproblem = Subproblem(edges, edge_costs)
        if lifted(context):
            offsets = problem_array(context, self.scale, "lifted_block_offsets", mmap=True)
            lifted_rows = slice(int(offsets[self.block_id]), int(offsets[self.block_id + 1]))
            lifted_edges = np.asarray(problem_array(context, self.scale, "inner_lifted_edges", mmap=True)[lifted_rows])
            lifted_costs = np.asarray(problem_array(context, self.scale, "inner_lifted_costs", mmap=True)[lifted_rows])
            subproblem = Subproblem(edges, edge_costs, lifted_edges, lifted_costs)
        cut = solve_subproblem(subproblem, multicut_solver(section["solver"], seed=section["seed"]))
        atomic_save_npz(context.partial_path(self.stage, self.block_id), cut_edge_ids=edge_ids[cut])
        return {"inner_edges": int(len(edges)), "cut_edges": int(len(cut))}
