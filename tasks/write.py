"""Stage 6: the final segmentation, written block by block (whole chunks)."""

from __future__ import annotations

import functools
import logging

import numpy as np

from emflow.storage.output import output_array, read_global_array

from .base import BlockTask
from .multicut import Multicut


@functools.lru_cache(maxsize=2)
def _node_labels(output_path: str, multicut_fingerprint: str) -> np.ndarray:
    # Keyed by the multicut fingerprint so that a worker process never reuses labels of an older solve.
    return read_global_array(output_path, "graph/node_labels")


class WriteSegmentation(BlockTask):
    stage = "write_segmentation"
    upstream = (Multicut,)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        box = context.blocking.block(self.block_id)
        node_labels = _node_labels(str(context.output_path), Multicut(config_path=self.config_path).stage_fingerprint())
        supervoxels = np.asarray(output_array(context.output_path, "supervoxels")[box.slicing])
        output_array(context.output_path, "segmentation/s0")[box.slicing] = node_labels[supervoxels]
        return {}
