"""The final segmentation, written block by block (whole chunks): each supervoxel's segment id.

Every method ends in a global stage whose bundle holds `node_labels` (the segment of each supervoxel
id); agglomeration with several thresholds holds one array per threshold (`node_label_field`), each
written into its own volume.
"""

from __future__ import annotations

from .context import BlockContext
from .spec import Read, StageSpec, Write


def node_label_field(index: int) -> str:
    """The bundle field of the node labels of the `index`-th output segmentation."""
    return "node_labels" if index == 0 else f"node_labels_{index}"


def write_stage(source: str, volumes: tuple[str, ...] = ("segmentation",)) -> StageSpec:
    """Write volume `volumes[i]` from the node labels `node_label_field(i)` of global stage `source`."""

    def run(block: BlockContext) -> dict:
        supervoxels = block.read("supervoxels")
        for index, volume in enumerate(volumes):
            # Memory-mapped: indexing touches only the pages of this block's supervoxel ids.
            node_labels = block.read_bundle(source, node_label_field(index), mmap=True)
            block.write(volume, node_labels[supervoxels])
        return {}

    return StageSpec(
        name="write_segmentation",
        blockwise=True,
        reads=(Read.array("supervoxels"), Read.bundle(source)),
        writes=tuple(Write.array(volume) for volume in volumes),
        run=run,
    )
