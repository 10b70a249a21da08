"""The region-adjacency edges and boundary-map statistics each block owns."""

from __future__ import annotations

from emflow.graph import block_edge_statistics

from .context import BlockContext
from .spec import Read, StageSpec, Write, boxes

# The graph looks at voxel pairs one step apart, so one voxel of context is all a block needs.
GRAPH_HALO = (1, 1, 1)


def _block_graph(block: BlockContext) -> dict:
    edges, statistics = block_edge_statistics(block.read("supervoxels"), block.read("boundaries"), block.inner("supervoxels"))
    block.save_partial(edges=edges, statistics=statistics)
    return {"number_of_edges": int(edges.shape[0])}


BLOCK_GRAPH = StageSpec(
    name="block_graph",
    blockwise=True,
    reads=(Read.array("supervoxels", boxes(GRAPH_HALO)), Read.array("boundaries", boxes(GRAPH_HALO))),
    writes=(Write.partials(),),
    run=_block_graph,
)
