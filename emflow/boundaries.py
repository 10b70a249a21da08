"""Synthetic boundary-probability maps derived from instance labelings.

They stand in for a CNN's membrane prediction in tests, the demo and the
benchmarks.
"""

from __future__ import annotations

import numpy as np
from bioimage_cpp.filters import gaussian_smoothing


def boundaries_from_labels(
    labels: np.ndarray,
    *,
    sigma: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Boundary probabilities of a 2D or 3D instance labeling.

    The boundary mask smoothed with a Gaussian of ``sigma`` voxels
    (``smoothed_boundary_mask``), scaled to a maximum of 1, perturbed with
    additive Gaussian noise of standard deviation ``noise`` drawn from
    ``np.random.default_rng(seed)``, and clipped to [0, 1].

    Returns ``float32`` of the shape of ``labels``; deterministic in ``seed``.
    """
    probabilities = smoothed_boundary_mask(labels, sigma)
    return scaled_with_noise(probabilities, probabilities.max(), noise, np.random.default_rng(seed))


def scaled_with_noise(smoothed: np.ndarray, maximum, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The second half of ``boundaries_from_labels``, in place: ``smoothed`` (float32) divided by
    ``maximum`` (when > 0), plus Gaussian noise of standard deviation ``noise`` drawn from ``rng``
    (none drawn for 0), clipped to [0, 1].

    Applied to consecutive z slabs of a map with the map's maximum and one ``rng``, it gives the
    bytes of one call on the whole map: the noise is drawn in C order either way.
    """
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if maximum > 0:
        smoothed /= maximum
    if noise > 0:
        smoothed += noise * rng.standard_normal(smoothed.shape, dtype=np.float32)
    return np.clip(smoothed, 0.0, 1.0, out=smoothed)


def smoothed_boundary_mask(labels: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The boundary mask of a 2D or 3D instance labeling, smoothed, not scaled.

    A voxel is boundary (1) when one of its axis-aligned neighbours has a
    different id or when its own id is 0 (unlabeled). The mask is smoothed
    with a Gaussian of ``sigma`` voxels (0 disables it). Each voxel depends
    only on the labels within the filter's reach plus one voxel, so a map can
    be computed piece by piece with that much context.

    Returns ``float32`` of the shape of ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")

    boundaries = labels == 0
    for axis in range(labels.ndim):
        lower = [slice(None)] * labels.ndim
        upper = [slice(None)] * labels.ndim
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        differs = labels[tuple(lower)] != labels[tuple(upper)]
        boundaries[tuple(lower)] |= differs
        boundaries[tuple(upper)] |= differs

    probabilities = boundaries.astype(np.float32)
    if sigma > 0:
        probabilities = gaussian_smoothing(probabilities, sigma)
    return probabilities
