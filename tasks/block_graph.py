"""The region-adjacency edges and boundary-map statistics each block owns."""

from __future__ import annotations

from emflow.graph import block_edge_statistics

from .context import BlockContext
from .spec import Read, StageSpec, Write, forward_boxes, no_global_reads

# The graph looks at voxel pairs one step apart and a block owns the pairs whose first voxel it
# holds, so one voxel of context on its upper faces is all it needs. Reading no lower halo cut the
# chunks an interior block decodes from 27 to 8 (block-shaped chunks): 122 -> 53 ms per
# 64x128x128 block of the 62.5 MVox tiled dev cube, 105 of the 122 ms had been reading; reading
# only the face slabs (`Read.faces`) cuts them to 4: 43 -> 35 ms of reading per block. Keeping
# each block's lower face planes of `supervoxels` in a file for its neighbours (checked against
# its chunk file's identity) instead of decoding their chunks saved 4-8 of 48-69 ms a block over
# the 64 blocks of that run (4 alternating pairs): not worth a file per block.
GRAPH_HALO = (1, 1, 1)


def _block_graph(block: BlockContext) -> dict:
    edges, statistics = block_edge_statistics(block.read("supervoxels"), block.read("boundaries"), block.inner("supervoxels"))
    block.save_partial(edges=edges, statistics=statistics)
    return {"number_of_edges": int(edges.shape[0])}


BLOCK_GRAPH = StageSpec(
    name="block_graph",
    blockwise=True,
    reads=(
        # The pairs a block owns reach the slabs beyond its upper faces, never its edges or corner.
        Read.array("supervoxels", forward_boxes(lambda run: GRAPH_HALO), faces=True),
        Read.array("boundaries", forward_boxes(lambda run: GRAPH_HALO), faces=True),
    ),
    writes=(Write.partials(),),
    run=_block_graph,
    content_key=no_global_reads,
)
