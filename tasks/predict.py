"""Stage 0b (when no boundary map is given): CNN prediction from raw data, in two block-wise steps.

`predict`: each block runs the grid patches it owns (`emflow.inference`: those centred in it)
and keeps their weighted sums, over the span the patches cover, as a .npy in the work folder.
`blend_predictions`: each block adds up the sums of every block whose span reaches it, divides,
and writes the network's probabilities (`predictions`, channels first) and the boundary map
derived from them (`boundaries`) for its own box: whole chunks. No patch runs twice, and the
result equals a prediction of the whole volume up to the order of floating-point sums.
A voxel's affinity-derived boundary value needs the affinities to its neighbours on both sides,
so blending covers one voxel more on each side of the box.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from emflow.blocking import Box
from emflow.inference import PatchGrid, accumulate_patches, add_overlap, blend
from emflow.storage.output import output_array
from emflow.storage.volumes import opened_volume, read_region
from emflow.targets import atomic_save_npy

from .base import BlockTask, block_scheduling
from .context import RunContext
from .prepare import PrepareOutput

if TYPE_CHECKING:
    from emflow.model import TrainedModel
    from emflow.unet import UNetConfig

# torch and the modules built on it are imported where a model is used, not here: every run
# imports this module, and torch's import costs seconds that a run without prediction (a cron
# tick with nothing to do, above all) should not pay.


def model_path(context: RunContext) -> Path:
    from emflow.storage.models import shipped_model_path

    return Path(context.config["predict"]["model"] or shipped_model_path())


@dataclass(frozen=True)
class ModelDescription:
    """What the scheduling process needs to know of a model file, read without building the network."""

    sha256: str
    network_config: UNetConfig
    patch_shape: tuple[int, int, int]


@functools.lru_cache(maxsize=4)
def _describe_model(path: str, modified_ns: int, size: int) -> ModelDescription:
    from emflow.storage.models import file_digest, read_model_state
    from emflow.unet import UNetConfig

    state = read_model_state(path)
    try:
        return ModelDescription(file_digest(path), UNetConfig(**state["network_config"]), tuple(state["patch_shape"]))
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a usable emflow model file: {error}") from error


@functools.lru_cache(maxsize=4)
def _load_model(path: str, modified_ns: int, size: int) -> TrainedModel:
    from emflow.storage.models import load_model

    return load_model(path)


def _model_file_key(context: RunContext) -> tuple[str, int, int]:
    path = model_path(context)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (config key predict.model)")
    status = path.stat()
    return str(path), status.st_mtime_ns, status.st_size


def describe_model(context: RunContext) -> ModelDescription:
    """The configured model's description, read once per process while the file stays the same."""
    return _describe_model(*_model_file_key(context))


def prediction_model(context: RunContext) -> TrainedModel:
    """The configured model, loaded once per (worker) process while the file stays the same.

    Building the network is the first torch computation of a worker, so the worker's thread count
    is set first (`_use_worker_threads`).
    """
    _use_worker_threads()
    return _load_model(*_model_file_key(context))


def prediction_grid(context: RunContext) -> PatchGrid:
    """The patch grid of the run; ValueError naming the config key for an unusable patch or overlap."""
    model = describe_model(context)
    patch_shape = context.config["predict"]["patch_shape"]
    if not any(patch_shape):
        patch_shape = model.patch_shape
    try:
        from emflow.unet import check_patch_shape

        patch_shape = check_patch_shape(patch_shape, model.network_config)
        return PatchGrid(context.shape, patch_shape, context.config["predict"]["overlap"])
    except ValueError as error:
        raise ValueError(f"config keys predict.patch_shape / predict.overlap: {error}") from error


def _use_worker_threads() -> None:
    """With several worker processes, split the cores among them. One thread each also keeps a
    forked worker safe if its parent ran torch's OpenMP threads, which a fork can leave hanging."""
    workers = block_scheduling().worker_processes
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@functools.lru_cache(maxsize=4)
def patch_spans(context: RunContext) -> np.ndarray:
    """Per block, the box spanned by the patches it owns, clipped to the volume: int64
    (number_of_blocks, 2, 3), begin and end; begin = end (the block's corner) where it owns none.

    Which patches a block owns is decided per axis (`PatchGrid.patches_of_block`), so the spans
    are computed per position along each axis and combined, not block by block.
    """
    grid = prediction_grid(context)
    blocking = context.blocking
    first_block = blocking.block(0)
    axis_spans = []  # per axis: (begin, end) of the span at each block position along it
    for axis, (blocks, block_size, size) in enumerate(zip(blocking.blocks_per_axis, blocking.block_shape, context.shape)):
        spans = []
        for position in range(blocks):
            begin, end = list(first_block.begin), list(first_block.end)
            begin[axis], end[axis] = position * block_size, min((position + 1) * block_size, size)
            origins = grid.patches_of_block(begin, end)[axis]
            if len(origins) == 0:
                spans.append((begin[axis], begin[axis]))
            else:
                spans.append((max(int(origins[0]), 0), min(int(origins[-1]) + grid.patch_shape[axis], size)))
        axis_spans.append(np.asarray(spans, dtype=np.int64))
    positions = np.stack(np.unravel_index(np.arange(blocking.number_of_blocks), blocking.blocks_per_axis), axis=1)
    spans = np.stack([axis_spans[axis][positions[:, axis]] for axis in range(3)], axis=2)  # (blocks, 2, 3)
    # A block that owns no patch along one axis owns none at all: its span is empty on every axis.
    empty = (spans[:, 0] == spans[:, 1]).any(axis=1)
    corners = blocking.boxes_with_halo((0, 0, 0))[:, 0]
    spans[empty, 0] = corners[empty]
    spans[empty, 1] = corners[empty]
    return spans


class _NormalizedVolume:
    """Network input read lazily from the raw volume: `model.normalize` of whatever is sliced."""

    def __init__(self, volume, model: TrainedModel, name: str):
        self.volume, self.model, self.name, self.shape = volume, model, name, tuple(volume.shape)

    def __getitem__(self, slicing) -> np.ndarray:
        raw = read_region(self.volume, slicing, self.name)
        if np.issubdtype(raw.dtype, np.floating) and raw.size and not (np.isfinite(raw).all() and 0 <= raw.min() and raw.max() <= 1):
            raise ValueError(f"raw data {self.name} must be finite and in [0, 1] when stored as floats; {slicing} is not")
        return self.model.normalize(raw)


class PredictBlock(BlockTask):
    stage = "predict"
    upstream = (PrepareOutput,)

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        grid = prediction_grid(context)
        predict = context.config["predict"]
        # Device and batch size change results only within float tolerance, so they may change
        # between attempts (e.g. resuming on a GPU host) without making blocks stale.
        return {
            "model_sha256": describe_model(context).sha256,
            "patch_shape": list(grid.patch_shape),
            "overlap": list(grid.overlap),
            "precision": predict["precision"],
            "raw": context.inputs["raw"],
        }

    @classmethod
    def input_roles(cls, context: RunContext) -> tuple[str, ...]:
        return ("raw",)

    @classmethod
    def input_regions(cls, context: RunContext) -> np.ndarray:
        """The span of the patches each block owns (mirrored reads at the border stay inside it)."""
        return patch_spans(context)

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        grid = prediction_grid(context)
        box = context.blocking.block(self.block_id)
        origins = grid.patches_of_block(box.begin, box.end)
        path = context.block_array_path(self.stage, self.block_id)
        if any(len(axis_origins) == 0 for axis_origins in origins):
            path.unlink(missing_ok=True)  # a block smaller than the patch stride may own no patch
            return {"patches": 0}
        predict = context.config["predict"]
        model = prediction_model(context)
        predictor = model.predictor(predict["device"], predict["precision"])
        with opened_volume(context.config["input"]["path"], context.config["input"]["raw_key"]) as raw:
            network_input = _NormalizedVolume(raw, model, context.input_location("raw"))
            span_start, accumulated = accumulate_patches(predictor, network_input, grid, origins, batch_size=predict["batch_size"])
        atomic_save_npy(path, accumulated)
        return {"patches": int(np.prod([len(axis_origins) for axis_origins in origins])), "span_start": list(span_start), "device": str(predictor.device)}


class BlendBlock(BlockTask):
    stage = "blend_predictions"
    upstream = (PredictBlock,)

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {"output_dtype": context.config["predict"]["output_dtype"]}

    @classmethod
    def linked_upstream(cls, context: RunContext) -> tuple[type[BlockTask], ...]:
        return (PredictBlock,)

    @classmethod
    def upstream_blocks(cls, context: RunContext, block_id: int, upstream: type[BlockTask]) -> list[int]:
        """The blocks whose patches' span reaches this block's box grown by one voxel."""
        start, stop = cls.blended_box(context, block_id)
        patch_shape = prediction_grid(context).patch_shape
        spans = patch_spans(context)
        # A block's span reaches at most one patch past its box.
        reach_begin = [first - size for first, size in zip(start, patch_shape)]
        reach_end = [last + size for last, size in zip(stop, patch_shape)]
        return [
            other
            for other in context.blocking.blocks_intersecting(reach_begin, reach_end)
            if all(begin < end and begin < last and first < end for begin, end, first, last in zip(*spans[other].tolist(), start, stop))
        ]

    @staticmethod
    def blended_box(context: RunContext, block_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The block's box grown by one voxel (clipped): a voxel's affinity-derived boundary value needs its neighbours."""
        box = context.blocking.block(block_id)
        start = tuple(max(begin - 1, 0) for begin in box.begin)
        stop = tuple(min(end + 1, size) for end, size in zip(box.end, context.shape))
        return start, stop

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        model = prediction_model(context)
        grid = prediction_grid(context)
        box = context.blocking.block(self.block_id)
        start, stop = self.blended_box(context, self.block_id)
        total = np.zeros((model.out_channels + 1,) + tuple(last - first for first, last in zip(start, stop)), dtype=np.float32)
        for block_id in self.upstream_blocks(context, self.block_id, PredictBlock):
            other = context.blocking.block(block_id)
            # The span's own start, which may lie outside the volume (its patches read mirrored data there).
            span_start = [int(axis_origins[0]) for axis_origins in grid.patches_of_block(other.begin, other.end)]
            accumulated = np.load(context.block_array_path(PredictBlock.stage, block_id), mmap_mode="r")
            add_overlap(total, start, accumulated, span_start)
        probabilities = blend(total)
        inner = box.local_to(Box(start, stop)).slicing
        boundaries = model.boundaries(probabilities)[inner]
        probabilities = probabilities[(slice(None),) + inner]
        if context.config["predict"]["output_dtype"] == "uint8":
            boundaries, probabilities = (np.round(array * 255).astype(np.uint8) for array in (boundaries, probabilities))
        output_array(context.output_path, "predictions")[(slice(None),) + box.slicing] = probabilities
        output_array(context.output_path, "boundaries")[box.slicing] = boundaries
        return {}
