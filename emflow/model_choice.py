"""Which model applies to an input: the voxel size and modality a model was trained on, and the
choice of the model closest to an input's voxel size.

No torch here: a run picks and describes its model in the scheduling process, and a run without a
model should not pay torch's import (about 1.2 s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def check_resolution(resolution: Sequence[float]) -> tuple[float, float, float]:
    """A voxel size (z, y, x) in nm as a tuple of floats; ValueError unless three positive finite numbers."""
    values = tuple(float(value) for value in resolution)
    if len(values) != 3 or not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"resolution must be three positive numbers, the voxel size in nm (z, y, x), got {list(resolution)}")
    return values


@dataclass(frozen=True)
class ModelDomain:
    """Where a model file applies, what model choice needs to know of it: its name
    (the file name), the voxel size (z, y, x) in nm and the modality of its training data (None
    and "" when the file does not record them)."""

    name: str
    resolution: tuple[float, float, float] | None
    modality: str = ""


class NoSuitableModel(ValueError):
    """No model was trained on a voxel size close enough to the input's; the message names every model."""


# A model is used for inputs up to twice as fine or coarse as its training data along every axis.
MAX_RESOLUTION_RATIO = 2.0


def resolution_distance(first: Sequence[float], second: Sequence[float]) -> float:
    """How far apart two voxel sizes are: the largest |log(first / second)| over the axes, so
    that a factor of 2 along any axis counts alike, whether finer or coarser, in z or in-plane."""
    return max(abs(math.log(a / b)) for a, b in zip(check_resolution(first), check_resolution(second)))


def choose_model(resolution: Sequence[float], models: Sequence[ModelDomain], *, max_ratio: float = MAX_RESOLUTION_RATIO) -> ModelDomain:
    """The model whose training voxel size is closest to `resolution` (nm, z, y, x).

    Distance: `resolution_distance`; ties go to the smaller sum of |log ratio| over the axes, then
    to the name. Models that record no resolution are never chosen. Raises NoSuitableModel,
    naming each model and its resolution, when every model is more than `max_ratio` times finer
    or coarser than the input along some axis: a network sees structures at the scale it was
    trained on, and at 2x or more away its membranes and neurites no longer look like those.
    """
    resolution = check_resolution(resolution)
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be at least 1, got {max_ratio}")
    candidates = [
        (
            resolution_distance(resolution, model.resolution),
            sum(abs(math.log(a / b)) for a, b in zip(resolution, model.resolution)),
            model.name,
            model,
        )
        for model in models
        if model.resolution is not None
    ]
    # A small tolerance, so that exactly max_ratio away is accepted despite rounding in the logarithm.
    suitable = [candidate for candidate in candidates if candidate[0] <= math.log(max_ratio) + 1e-12]
    if not suitable:
        described = (
            "; ".join(
                f"{model.name}: {'unknown' if model.resolution is None else list(model.resolution)} nm"
                + (f" ({model.modality})" if model.modality else "")
                for model in models
            )
            or "no models"
        )
        raise NoSuitableModel(
            f"no model was trained within {max_ratio:g}x of the voxel size {list(resolution)} nm (z, y, x) along every axis; "
            f"models: {described}. Train one for this data (emflow train) or name a boundary map or model file"
        )
    return min(suitable, key=lambda candidate: candidate[:3])[3]
