"""One training step of a boundary or affinity U-Net: patch sampling, targets, losses.

Losses:
- "bce": binary cross-entropy on every valid voxel (and channel), class-balanced so that the rare
  class (boundaries, cut affinities) weighs as much as the frequent one.
- "malis": the constrained MALIS loss of Funke et al. 2017 on the nearest-neighbour affinity
  channels (`emflow.malis`): it weighs each edge by the number of voxel pairs whose maximin edge
  it is, so the network learns what breaks or merges objects, not what is merely frequent.
- "bce+malis": their sum, with MALIS scaled by `malis_weight`; MALIS is usually added once the
  network predicts something (the constrained passes keep an untrained net's contributions sane,
  but BCE gets there faster).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as functional

from .affinities import NEAREST_OFFSETS, affinities_from_labels, boundary_target
from .malis import malis_weights

LOSSES = ("bce", "malis", "bce+malis")


def sample_patch(
    raw: np.ndarray,
    labels: np.ndarray,
    region_start: Sequence[int],
    region_stop: Sequence[int],
    patch_shape: Sequence[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A random patch (uniform origin) of raw and labels inside [region_start, region_stop)."""
    origin = [int(rng.integers(first, last - size + 1)) for first, last, size in zip(region_start, region_stop, patch_shape)]
    slicing = tuple(slice(first, first + size) for first, size in zip(origin, patch_shape))
    return np.asarray(raw[slicing]), np.asarray(labels[slicing])


def training_targets(
    labels: np.ndarray, target: str, offsets: Sequence[Sequence[int]], *, in_plane: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(target, mask), float32 (C, z, y, x): boundary map (C = 1) or affinities (C = offsets).

    in_plane: the labels' ids are not linked across sections, so boundaries come from in-plane
    neighbours only and affinity offsets must lie in-plane (z step 0).
    """
    if target == "boundaries":
        boundaries = boundary_target(labels, in_plane=in_plane)[None]
        return boundaries, np.ones_like(boundaries)
    if in_plane and any(int(offset[0]) != 0 for offset in offsets):
        raise ValueError(f"labels not linked across sections define no affinities across sections; offsets {list(offsets)} step in z")
    return affinities_from_labels(labels, offsets)


def balanced_weights(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-voxel loss weights (C, z, y, x) float32: in each channel, the valid positives and the
    valid negatives each carry half of the total weight (mean weight 1 over valid voxels)."""
    weights = np.zeros_like(target, dtype=np.float32)
    for channel in range(target.shape[0]):
        valid = mask[channel] > 0
        positives = valid & (target[channel] > 0.5)
        negatives = valid & ~(target[channel] > 0.5)
        total = valid.sum()
        for members in (positives, negatives):
            count = members.sum()
            if count:
                weights[channel][members] = total / (2.0 * count) if count < total else 1.0
    return weights


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted binary cross-entropy, averaged over voxels with non-zero weight."""
    losses = functional.binary_cross_entropy_with_logits(logits, target, weight=weights, reduction="sum")
    return losses / torch.clamp((weights > 0).sum(), min=1)


def nearest_channels(offsets: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the (-1, 0, 0), (0, -1, 0), (0, 0, -1) channels among `offsets`."""
    offsets = [tuple(int(step) for step in offset) for offset in offsets]
    missing = [offset for offset in NEAREST_OFFSETS if offset not in offsets]
    if missing:
        raise ValueError(f"MALIS needs the nearest-neighbour affinity offsets; missing {missing}")
    return [offsets.index(offset) for offset in NEAREST_OFFSETS]


def malis_loss(affinities: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Constrained MALIS loss of nearest-neighbour affinities (3, z, y, x) given GT labels (z, y, x).

    The pair counts are computed from the detached affinities (they are piecewise constant in
    them), so autograd gives exactly `emflow.malis.malis_loss`'s gradient.
    """
    positive_weights, negative_weights = malis_weights(affinities.detach().cpu().numpy().astype(np.float64), labels, constrained=True)
    positive = torch.from_numpy(positive_weights).to(affinities)
    negative = torch.from_numpy(negative_weights).to(affinities)
    pairs = torch.clamp(positive.sum() + negative.sum(), min=1.0)
    return (positive * (1 - affinities) ** 2 + negative * affinities**2).sum() / pairs


def training_loss(
    logits: torch.Tensor,
    labels: Sequence[np.ndarray],
    *,
    target: str,
    offsets: Sequence[Sequence[int]],
    loss: str,
    malis_weight: float = 1.0,
    in_plane: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of a batch of logits (N, C, z, y, x) against GT labels, one (z, y, x) array per item.

    in_plane: the labels are 2D per section (see `training_targets`); MALIS, which needs the
    z-affinities, is refused for them.

    Returns the loss to minimise and its parts as floats, for the training log.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    parts: dict[str, torch.Tensor] = {}
    if "bce" in loss:
        targets, weights = [], []
        for item_labels in labels:
            item_target, item_mask = training_targets(item_labels, target, offsets, in_plane=in_plane)
            targets.append(item_target)
            weights.append(balanced_weights(item_target, item_mask))
        parts["bce"] = bce_loss(logits, torch.from_numpy(np.stack(targets)).to(logits), torch.from_numpy(np.stack(weights)).to(logits))
    if "malis" in loss:
        if in_plane:
            raise ValueError("MALIS needs affinities across sections, which labels not linked across sections do not define")
        channels = nearest_channels(offsets)
        probabilities = torch.sigmoid(logits[:, channels])
        parts["malis"] = (
            malis_weight * torch.stack([malis_loss(item, item_labels) for item, item_labels in zip(probabilities, labels)]).mean()
        )
    total = functools.reduce(operator.add, parts.values())  # every loss in LOSSES has a part
    return total, {name: float(value.detach()) for name, value in parts.items()}
