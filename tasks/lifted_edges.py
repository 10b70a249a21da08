"""Stage 4b, with `[input] lifted_labels_key`: lifted edges from a labelling of the volume.

Per block, how many voxels each supervoxel shares with each label of the lifted-labels volume; then,
globally, each supervoxel's majority label and a lifted edge between every two labelled supervoxels
2 to `[lifted] graph_depth` hops apart: attractive when their labels agree, repulsive when not.
"""

from __future__ import annotations

import logging

import luigi
import numpy as np

from emflow.labels import label_overlaps, majority_labels
from emflow.lifted_edges import lifted_edges_from_node_labels
from emflow.storage.output import output_array, write_global_array
from emflow.targets import atomic_save_npy, atomic_save_npz

from .base import BlockTask, GlobalTask, stage_task
from .context import RunContext
from .merge_graph import MergeGraph
from .supervoxels import RelabelSupervoxelBlock


def lifted(context: RunContext) -> bool:
    return bool(context.config["input"]["lifted_labels_key"])


class LabelOverlapBlock(BlockTask):
    """Voxel counts of the (supervoxel, lifted label) pairs in one block."""

    stage = "lifted_label_overlaps"
    upstream = (RelabelSupervoxelBlock,)

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {"labels": context.inputs["lifted_labels"]}

    @classmethod
    def input_roles(cls, context: RunContext) -> tuple[str, ...]:
        return ("lifted_labels",)

    @classmethod
    def input_regions(cls, context: RunContext) -> np.ndarray:
        return context.blocking.boxes_with_halo((0, 0, 0))

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        box = context.blocking.block(self.block_id)
        supervoxels = np.asarray(output_array(context.output_path, "supervoxels")[box.slicing])
        pairs, counts = label_overlaps(supervoxels, context.read_input("lifted_labels", box))
        atomic_save_npz(context.partial_path(self.stage, self.block_id), pairs=pairs, counts=counts)
        return {"pairs": int(len(pairs))}


class LiftedEdges(GlobalTask):
    stage = "lifted_edges"

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {"lifted": context.config["lifted"]}

    def upstream_stages(self) -> list[luigi.Task]:
        return [stage_task(LabelOverlapBlock, self.config_path), stage_task(MergeGraph, self.config_path)]

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        edges_array = output_array(context.output_path, "graph/edges")
        number_of_nodes = int(edges_array.attrs["number_of_nodes"])
        blocks = range(context.blocking.number_of_blocks)
        partials = [context.read_partials(LabelOverlapBlock.stage, block, "pairs", "counts") for block in blocks]
        pairs = np.concatenate([pairs for pairs, _ in partials])
        counts = np.concatenate([counts for _, counts in partials])
        node_labels = majority_labels(number_of_nodes, pairs, counts)
        section = context.config["lifted"]
        lifted_edges, lifted_costs = lifted_edges_from_node_labels(
            number_of_nodes, np.asarray(edges_array[...]), node_labels, graph_depth=section["graph_depth"], weight=section["weight"]
        )
        write_global_array(context.output_path, "graph/lifted_edges", lifted_edges)
        write_global_array(context.output_path, "graph/lifted_costs", lifted_costs)
        atomic_save_npy(context.global_array_path(self.stage, "lifted_edges"), lifted_edges)
        atomic_save_npy(context.global_array_path(self.stage, "lifted_costs"), lifted_costs)
        labelled = int((node_labels != 0).sum())
        logger.info("%d of %d supervoxels labelled, %d lifted edges", labelled, number_of_nodes - 1, len(lifted_edges))
        return {"labelled_supervoxels": labelled, "lifted_edges": int(len(lifted_edges)), "attractive": int((lifted_costs > 0).sum())}
