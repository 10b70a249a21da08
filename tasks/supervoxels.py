"""Stage 1: supervoxels with ids unique across the volume.

Three tasks: per block, the watershed (or the given supervoxels) inside the block; globally, the id
ranges of all blocks; per block, the final ids written to `supervoxels`. Supervoxels never cross a
block face: the halo gives the watershed context, but only the block's own box is kept.
"""

from __future__ import annotations

import logging

import numpy as np

from emflow.config import function_parameters, resolve_function
from emflow.labels import block_offsets, map_labels, relabel_consecutive
from emflow.storage.output import output_array
from emflow.supervoxels import use_two_d
from emflow.targets import atomic_save_npy, atomic_save_npz

from .base import BlockTask, GlobalTask, stage_task
from .context import InputError, RunContext
from .predict import BlendBlock
from .prepare import PrepareOutput


def given_supervoxels(context: RunContext) -> bool:
    return bool(context.config["input"]["supervoxels_key"])


def _masked_input_supervoxels(context: RunContext, box) -> np.ndarray:
    labels = context.read_input("supervoxels", box)
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ValueError(f"supervoxels dataset holds negative ids in {box}")
    labels = labels.astype(np.uint64, copy=False)
    mask = context.read_mask(box)
    if mask is not None:
        labels = np.where(mask, labels, np.uint64(0))
    return labels


class SupervoxelBlock(BlockTask):
    stage = "supervoxels"
    upstream = (PrepareOutput,)

    def upstream_stages(self) -> list:
        # A predicted boundary map is read by this stage and, through it, by every later one.
        if self.context.predicting:
            return [stage_task(PrepareOutput, self.config_path), stage_task(BlendBlock, self.config_path)]
        return super().upstream_stages()

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        if given_supervoxels(context):
            return {"given": context.inputs["supervoxels"]}
        return {"supervoxels": context.config["supervoxels"], "halo": context.config["blocking"]["halo"]}

    @classmethod
    def input_roles(cls, context: RunContext) -> tuple[str, ...]:
        return ("supervoxels", "mask") if given_supervoxels(context) else ("boundaries", "mask")

    @classmethod
    def linked_upstream(cls, context: RunContext) -> tuple[type[BlockTask], ...]:
        return (BlendBlock,) if context.predicting and not given_supervoxels(context) else ()

    @classmethod
    def upstream_blocks(cls, context: RunContext, block_id: int, upstream: type[BlockTask]) -> list[int]:
        """The blocks whose predicted boundaries fall in this block's box plus halo."""
        begin, end = cls.input_regions(context)[block_id]
        return context.blocking.blocks_intersecting(begin, end)

    @classmethod
    def input_regions(cls, context: RunContext) -> np.ndarray:
        return context.blocking.boxes_with_halo((0, 0, 0) if given_supervoxels(context) else context.config["blocking"]["halo"])

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        inner = context.blocking.block(self.block_id)
        if given_supervoxels(context):
            ids = np.unique(_masked_input_supervoxels(context, inner))
            ids = ids[ids != 0]
            atomic_save_npz(context.partial_path(self.stage, self.block_id), ids=ids)
            return {"number_of_supervoxels": int(ids.size)}

        section = context.config["supervoxels"]
        outer, inner_local = context.blocking.block_with_halo(self.block_id, tuple(context.config["blocking"]["halo"]))
        resolution = tuple(context.config["input"]["resolution"])
        if section["dimensionality"] == "auto":
            two_d = use_two_d(resolution, section["anisotropy_threshold"])
        else:
            two_d = section["dimensionality"] == "2d"
        function = resolve_function(section["function"], "supervoxels.function")
        mask = context.read_mask(outer)
        boundaries = context.read_boundaries(outer)
        inner_boundaries = boundaries[inner_local.slicing]
        labels = function(
            boundaries,
            resolution=resolution,
            two_d=two_d,
            mask=mask,
            **function_parameters(context.config, "supervoxels"),
        )
        labels = np.asarray(labels)
        if labels.shape != outer.shape or not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(
                f"{section['function']} returned {labels.dtype} labels of shape {labels.shape}; "
                f"expected integer labels of shape {outer.shape}"
            )
        labels = labels[inner_local.slicing]
        if mask is not None:
            labels = np.where(mask[inner_local.slicing], labels, 0)
        labels, number_of_supervoxels = relabel_consecutive(labels)
        output_array(context.output_path, "supervoxels_block_local")[inner.slicing] = labels
        logger.info("%d supervoxels (%s)", number_of_supervoxels, "2D per slice" if two_d else "3D")
        # The range of the block's boundary values lets `supervoxel_ids` refuse a constant volume
        # without reading it again.
        return {
            "number_of_supervoxels": int(number_of_supervoxels),
            "boundary_range": [float(inner_boundaries.min()), float(inner_boundaries.max())],
        }


def refuse_constant_boundaries(context: RunContext, block_ranges: list[list[float] | None]) -> None:
    """Raise InputError when every block's boundary values are one and the same value.

    A constant boundary map holds no membrane to cut along; it is also what a raw volume that was
    never filled in gives. `block_ranges`: each block's [min, max] (None for a record written
    before blocks noted their range, which then proves nothing).
    """
    if not block_ranges or any(block_range is None for block_range in block_ranges):
        return
    values = {value for block_range in block_ranges for value in block_range}
    if len(values) == 1:
        what = "the predicted boundary map (output array boundaries)" if context.predicting else f"boundary map {context.input_location('boundaries')}"
        raise InputError(f"{what} is constant: every voxel is {values.pop()}, so there is nothing to segment; check the input data")


class SupervoxelIds(GlobalTask):
    """Where each block's supervoxels go in the global id range 1..number_of_supervoxels."""

    stage = "supervoxel_ids"
    upstream = (SupervoxelBlock,)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        blocks = range(context.blocking.number_of_blocks)
        if given_supervoxels(context):
            ids = np.unique(np.concatenate([context.read_partial(SupervoxelBlock.stage, block_id, "ids") for block_id in blocks]))
            atomic_save_npy(context.global_array_path(self.stage, "ids"), ids.astype(np.uint64))
            number_of_supervoxels = int(ids.size)
        else:
            results = stage_task(SupervoxelBlock, self.config_path).block_results()
            refuse_constant_boundaries(context, [results[block_id].get("boundary_range") for block_id in blocks])
            counts = [results[block_id]["number_of_supervoxels"] for block_id in blocks]
            offsets = block_offsets(np.asarray(counts, dtype=np.uint64))
            atomic_save_npy(context.global_array_path(self.stage, "offsets"), offsets)
            number_of_supervoxels = int(sum(counts))
        logger.info("%d supervoxels in %d blocks", number_of_supervoxels, len(blocks))
        return {"number_of_supervoxels": number_of_supervoxels}


class RelabelSupervoxelBlock(BlockTask):
    stage = "relabel_supervoxels"
    upstream = (SupervoxelIds,)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        inner = context.blocking.block(self.block_id)
        if given_supervoxels(context):
            given = _masked_input_supervoxels(context, inner)
            block_ids = np.unique(given)
            block_ids = block_ids[block_ids != 0]
            # Only this block's ids are looked up in the memory-mapped global list.
            global_ids = context.read_global_array(SupervoxelIds.stage, "ids", mmap=True)
            labels = map_labels(given, block_ids, (np.searchsorted(global_ids, block_ids) + 1).astype(np.uint64))
        else:
            offset = context.read_global_array(SupervoxelIds.stage, "offsets", mmap=True)[self.block_id]
            local = np.asarray(output_array(context.output_path, "supervoxels_block_local")[inner.slicing])
            labels = np.where(local != 0, local + offset, np.uint64(0))
        output_array(context.output_path, "supervoxels")[inner.slicing] = labels
        return {}
