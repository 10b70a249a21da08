"""Stage 2: the region-adjacency edges and boundary-map statistics that each block owns."""

from __future__ import annotations

import logging

import numpy as np

from emflow.graph import block_edge_statistics
from emflow.storage.output import output_array
from emflow.targets import atomic_save_npz

from .base import BlockTask
from .context import RunContext
from .supervoxels import RelabelSupervoxelBlock

# The graph looks at voxel pairs one step apart, so one voxel of context is all a block needs.
GRAPH_HALO = (1, 1, 1)


class BlockGraph(BlockTask):
    stage = "block_graph"
    upstream = (RelabelSupervoxelBlock,)

    @classmethod
    def input_roles(cls, context: RunContext) -> tuple[str, ...]:
        return ("boundaries",)

    @classmethod
    def input_regions(cls, context: RunContext) -> np.ndarray:
        return context.blocking.boxes_with_halo(GRAPH_HALO)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        outer, inner_local = context.blocking.block_with_halo(self.block_id, GRAPH_HALO)
        supervoxels = np.asarray(output_array(context.output_path, "supervoxels")[outer.slicing])
        edges, statistics = block_edge_statistics(supervoxels, context.read_boundaries(outer), inner_local)
        atomic_save_npz(context.partial_path(self.stage, self.block_id), edges=edges, statistics=statistics)
        return {"number_of_edges": int(edges.shape[0])}
