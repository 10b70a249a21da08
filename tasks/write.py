"""Stage 6: the final segmentation, written block by block (whole chunks)."""

from __future__ import annotations

import logging

import numpy as np

from emflow.storage.output import output_array

from .base import BlockTask
from .multicut import Multicut


class WriteSegmentation(BlockTask):
    stage = "write_segmentation"
    upstream = (Multicut,)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        box = context.blocking.block(self.block_id)
        supervoxels = np.asarray(output_array(context.output_path, "supervoxels")[box.slicing])
        # Memory-mapped: indexing touches only the pages of this block's supervoxel ids.
        node_labels = context.read_global_array(Multicut.stage, "node_labels", mmap=True)
        output_array(context.output_path, "segmentation/s0")[box.slicing] = node_labels[supervoxels]
        return {}
