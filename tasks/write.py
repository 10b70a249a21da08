"""The final segmentation, written block by block (whole chunks)."""

from __future__ import annotations

from .context import BlockContext
from .spec import Read, StageSpec, Write


def _write_segmentation(block: BlockContext) -> dict:
    # Memory-mapped: indexing touches only the pages of this block's supervoxel ids.
    node_labels = block.read_bundle("multicut", "node_labels", mmap=True)
    block.write("segmentation", node_labels[block.read("supervoxels")])
    return {}


WRITE_SEGMENTATION = StageSpec(
    name="write_segmentation",
    blockwise=True,
    reads=(Read.array("supervoxels"), Read.bundle("multicut")),
    writes=(Write.array("segmentation"),),
    run=_write_segmentation,
)
