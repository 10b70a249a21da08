"""CNN prediction from raw data (when no boundary map is given), in two block-wise stages.

`predict`: each block runs the grid patches it owns (`emflow.inference`: those centred in it) and
keeps their weighted sums, over the span the patches cover inside the volume, as a partial
result. `blend_predictions`: each block adds up the sums of every block whose span reaches it (the
weights of the patches covering a voxel add up to 1) and writes the network's probabilities
(`predictions`, channels first) and the boundary map derived from them (`boundaries`) for its own
box: whole chunks. No patch runs twice, and the result equals a prediction of the whole volume to
within the float16 the sums are stored in (`emflow.inference.encode_sums`: 2^-11 of a voxel's
value, 4.9e-4 at most, however many blocks' sums meet). A voxel's affinity-derived boundary value
needs the affinities to its neighbours on both sides, so blending reads one voxel more on each
side of the box.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from emflow.errors import ConfigError, InputError
from emflow.inference import PatchGrid, accumulate_patches, blend_sums, clipped_start, encode_sums, inside_volume
from emflow.model_choice import MAX_RESOLUTION_RATIO, NoSuitableModel, resolution_distance
from emflow.storage.models import ModelDescription, cached_model, describe_model, model_domain, shipped_model_for
from emflow.storage.store import describe_slicing
from emflow.storage.volumes import read_region

from .adapter import worker_processes
from .context import BlockContext, Run
from .spec import Read, StageSpec, Write, boxes

# torch and the modules built on it are imported where a model runs, not here: every run imports
# this module, and torch's import costs seconds that a run without prediction (a cron tick with
# nothing to do, above all) should not pay.


def model_path(config) -> Path:
    """The model file a config predicts with: `[predict] model`, or for "auto" the shipped model
    trained closest to the input's voxel size; ConfigError naming every shipped model when none
    was trained within 2x of it along every axis."""
    if config.predict.model != "auto":
        return Path(config.predict.model)
    try:
        return shipped_model_for(config.input.resolution)
    except NoSuitableModel as error:
        raise ConfigError(f'config key predict.model = "auto": {error}') from error


def model_choice(config) -> list[str]:
    """A line saying which shipped model `[predict] model = "auto"` chose, and why; none otherwise."""
    if not config.predicting or config.predict.model != "auto":
        return []
    domain = model_domain(model_path(config))
    trained = (
        f"trained at {list(domain.resolution)} nm (z, y, x)" if domain.resolution is not None else "trained at an unrecorded voxel size"
    )
    return [
        f'predict: model "auto" chose the shipped {domain.name}, {trained}'
        + (f" on {domain.modality}" if domain.modality else "")
        + f", the closest to the input's {list(config.input.resolution)} nm"
    ]


def model_warnings(config) -> list[str]:
    """A warning when the model a config names was trained on a voxel size more than 2x away from
    the input's along some axis (models that do not record theirs are not judged)."""
    if not config.predicting or config.predict.model == "auto":
        return []
    domain = model_domain(model_path(config))
    if (
        domain.resolution is None
        or resolution_distance(domain.resolution, config.input.resolution) <= math.log(MAX_RESOLUTION_RATIO) + 1e-12
    ):
        return []
    return [
        f"warning: model {config.predict.model} was trained at {list(domain.resolution)} nm (z, y, x)"
        + (f" ({domain.modality})" if domain.modality else "")
        + f", more than {MAX_RESOLUTION_RATIO:g}x from the input's voxel size {list(config.input.resolution)} nm along some axis: "
        "expect poor boundaries; train a model for this data (emflow train)"
    ]


def model_description(run: Run) -> ModelDescription:
    return describe_model(model_path(run.config))


def patch_overlap(overlap, patch_shape) -> tuple[int, int, int]:
    """`[predict] overlap` for patches of `patch_shape` (z, y, x): "auto" is a quarter of the patch
    along each axis."""
    if isinstance(overlap, str):  # "auto"
        return (patch_shape[0] // 4, patch_shape[1] // 4, patch_shape[2] // 4)
    return overlap


def prediction_grid(run: Run) -> PatchGrid:
    """The patch grid of the run; ConfigError naming the config keys for an unusable patch or overlap."""
    from emflow.unet import check_patch_shape

    description = model_description(run)
    patch_shape = run.config.predict.patch_shape
    if not any(patch_shape):
        patch_shape = description.patch_shape
    volume_shape = run.geometry.shape
    if len(volume_shape) != 3:
        raise ValueError(f"prediction needs a 3D volume (z, y, x), got shape {volume_shape}")
    try:
        patch_shape = check_patch_shape(patch_shape, description.network_config)
        return PatchGrid(volume_shape, patch_shape, patch_overlap(run.config.predict.overlap, patch_shape))
    except ValueError as error:
        raise ConfigError(f"config keys predict.patch_shape / predict.overlap: {error}") from error


def patch_spans(run: Run, blocking) -> np.ndarray:
    """Region rule: the span of the patches each block owns (its mirrored reads stay inside it)."""
    return prediction_grid(run).block_spans(blocking)


class _NormalizedVolume:
    """Network input read lazily from the raw volume: `model.normalize` of whatever is sliced."""

    def __init__(self, volume, model, name: str):
        self.volume, self.model, self.name, self.shape = volume, model, name, tuple(volume.shape)

    def __getitem__(self, slicing) -> np.ndarray:
        raw = read_region(self.volume, slicing, self.name)
        if np.issubdtype(raw.dtype, np.floating) and raw.size and not (np.isfinite(raw).all() and 0 <= raw.min() and raw.max() <= 1):
            raise InputError(
                f"raw data {self.name} must be finite and in [0, 1] when stored as floats; box {describe_slicing(slicing)} is not"
            )
        return self.model.normalize(raw)


def _use_worker_threads() -> None:
    """With several worker processes, split the cores among them. One thread each also keeps a
    forked worker safe if its parent ran torch's OpenMP threads, which a fork can leave hanging."""
    workers = worker_processes()
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _model(block: BlockContext):
    # Building the network is the first torch computation of a worker: threads first.
    _use_worker_threads()
    return cached_model(model_path(block.config))


class _TimedPredictor:
    """A predictor that adds up the seconds spent in it: the forward passes, including a process's
    first, cold one. A block's record keeps them (`network_seconds`), so that what the task adds
    to its network (reading, blending, writing) is measured in the same run."""

    def __init__(self, predictor):
        self.predictor, self.seconds = predictor, 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self.predictor(batch)
        finally:
            self.seconds += time.perf_counter() - start


def _predict(block: BlockContext) -> dict:
    grid = prediction_grid(block.run)
    origins = grid.patches_of_block(block.box.begin, block.box.end)
    if any(len(axis_origins) == 0 for axis_origins in origins):
        block.save_partial_array(None)  # a block smaller than the patch stride may own no patch
        return {"patches": 0}
    predict = block.config.predict
    model = _model(block)
    predictor = _TimedPredictor(model.predictor(predict.device, predict.precision))
    with block.opened("raw") as raw:
        network_input = _NormalizedVolume(raw, model, block.run.inputs["raw"].location)
        span_start, accumulated = accumulate_patches(predictor, network_input, grid, origins, batch_size=predict.batch_size)
    # Only the sums inside the volume are stored, as float16 (`encode_sums`): new file data went to
    # this machine's disk at 0.2-0.5 GB/s after a run's first ~50 MB (README, "CNN"), and still
    # does where the machine has no small pieces of free memory left (emflow.targets.atomic).
    # With 64x128x128 patches overlapping by 8x16x16, a block stores 6 % less per volume face it
    # touches, a corner one 18 %; float16 halves what is left.
    _, stored = inside_volume(span_start, accumulated, grid.volume_shape)
    block.save_partial_array(encode_sums(stored))
    return {
        "patches": int(np.prod([len(axis_origins) for axis_origins in origins])),
        "span_start": list(span_start),
        "device": str(predictor.predictor.device),
        "network_seconds": predictor.seconds,
    }


def _predict_parameters(run: Run) -> dict:
    grid = prediction_grid(run)
    # Device and batch size change results only within float tolerance, so they may change between
    # attempts (e.g. resuming on a GPU host) without making blocks stale.
    # "sums": what a block's partial holds, so that partials of an emflow that kept a sum of weights
    # besides them are computed again, not read as these. How the sums are stored is not in it:
    # blending reads the float32 and 16-bit fixed point sums of earlier emflows as well as float16
    # ones (`emflow.inference.decode_sums`), so an upgrade does not run every block's network again.
    return {
        "model_sha256": model_description(run).sha256,
        "patch_shape": list(grid.patch_shape),
        "overlap": list(grid.overlap),
        "sums": "weights normalised on the grid, inside the volume",
    }


PREDICT = StageSpec(
    name="predict",
    blockwise=True,
    reads=(Read.array("raw", patch_spans),),
    writes=(Write.partials(patch_spans),),
    config=("predict.precision",),
    parameters=_predict_parameters,
    run=_predict,
    # The sums are written while the next block's patches go through the network.
    writes_behind=True,
)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread for a while (what it ran on before, after). Blending converts the
    stored float16 sums with torch (`emflow.inference.decode_sums`) while the previous block's
    outputs are written behind it: with torch's two threads on this project's 2-core machine, the
    three threads took turns, and a block's blending took 2.7-10.5 ms to decode its largest part
    (1-2 ms alone); on one thread 2.9-5.7 ms. What `emflow predict` of the inference crop spent
    beside its forward passes (5 alternating pairs): 0.45-0.48 s, 0.41-0.43 s so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _blend(block: BlockContext) -> dict:
    model = _model(block)
    grid = prediction_grid(block.run)
    blended = block.region("predict")  # the box grown by one voxel, clipped
    parts = []
    for other_id in block.linked_blocks("predict"):
        other = block.blocking.block(other_id)
        # Where the other block's stored sums start: its span's start, clipped to the volume (`_predict`).
        stored_start = clipped_start([int(axis_origins[0]) for axis_origins in grid.patches_of_block(other.begin, other.end)])
        parts.append((block.load_partial_array("predict", other_id), stored_start))
    with _one_torch_thread():
        probabilities = blend_sums(parts, blended.begin, blended.shape, model.out_channels)
    inner = block.box.local_to(blended).slicing
    block.write("boundaries", model.boundaries(probabilities)[inner])
    block.write("predictions", probabilities[(slice(None), *inner)])
    return {}


BLEND_PREDICTIONS = StageSpec(
    name="blend_predictions",
    blockwise=True,
    # A voxel's affinity-derived boundary value needs its neighbours: one voxel more on each side.
    reads=(Read.partials("predict", boxes((1, 1, 1))),),
    writes=(Write.array("predictions"), Write.array("boundaries")),
    config=("predict.output_dtype",),
    run=_blend,
    # The outputs are written while the next block adds up its sums.
    writes_behind=True,
)
