"""Multicut edge costs from boundary probabilities.

Sign convention (shared with :mod:`emflow.multicut`): a positive cost is
attractive (the edge prefers to be merged), a negative one repulsive.
"""

from __future__ import annotations

import numpy as np

from .graph import FEATURE_NAMES

WEIGHTINGS = ("none", "size", "orientation")


def auto_weighting(two_d_supervoxels: bool) -> str:
    """The weighting `[costs] weighting = "auto"` means: ``"orientation"`` for supervoxels computed
    per section (serial-section data), where one size scale lets the overlaps between sections
    outvote the in-plane contacts (docs/anisotropic_benchmarks.md), ``"size"`` for 3D supervoxels.
    On isotropic FlyEM data the two were equal with a well-trained network's predictions but not
    with a weaker one's: adapted Rand error 0.224 (size) against 0.254 (orientation) on the dev
    cube's held-out half, 0.135 against 0.281 on gala's test crop (benchmarks/cnn_accuracy.py data,
    the previously shipped model)."""
    return "orientation" if two_d_supervoxels else "size"


# Keeps the log-odds finite for probabilities of exactly 0 or 1.
_EPSILON = 1e-3


def probabilities_to_costs(
    probabilities: np.ndarray,
    *,
    beta: float = 0.5,
    edge_sizes: np.ndarray | None = None,
    weighting: str = "none",
    z_sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Log-odds edge costs from per-edge boundary probabilities.

    ``probabilities`` is ``(E,)``, the probability that an edge lies on a
    true boundary (1 = cut), clipped to ``[1e-3, 1 - 1e-3]``. The cost is
    ``log((1 - p) / p) + log((1 - beta) / beta)``; ``beta`` in (0, 1) is the
    boundary bias, larger values favour cutting (over-segmentation).

    Weightings (``edge_sizes``: ``(E,)`` voxel-pair counts; ``z_sizes``:
    ``(E,)`` counts of those pairs between z-neighbours):

    - ``"none"``: costs as they are.
    - ``"size"``: costs times ``edge_sizes / max(edge_sizes)``, so that small
      contacts weigh less, as elf's ``transform_probabilities_to_costs``.
    - ``"orientation"``: the pairs between sections and the in-plane pairs
      are normalised apart, costs times ``z / max(z) + xy / max(xy)`` with
      ``z = z_sizes`` and ``xy = edge_sizes - z_sizes`` (a term whose maximum
      is 0 is left out). With supervoxels computed per section every edge is
      one or the other, and this is elf's ``"xyz"`` weighting scheme
      (``compute_edge_costs``): the overlap areas between sections are
      hundreds of pairs and the in-plane contact lines tens, so that a
      single size scale lets the z-edges outvote the in-plane evidence and
      merges neurons. On isotropic data with 3D supervoxels both terms are
      about proportional to the size, and it weighs about as ``"size"`` does.

    Returns ``(E,)`` ``float64`` costs.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must lie in (0, 1), got {beta}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 1:
        raise ValueError(f"probabilities must be 1D, got shape {probabilities.shape}")
    if np.isnan(probabilities).any():
        raise ValueError("probabilities contain NaN")

    p = np.clip(probabilities, _EPSILON, 1.0 - _EPSILON)
    costs = np.log((1.0 - p) / p) + np.log((1.0 - beta) / beta)
    if weighting == "none":
        return costs
    if edge_sizes is None:
        raise ValueError(f"weighting={weighting!r} needs edge_sizes")
    edge_sizes = _as_counts(edge_sizes, "edge_sizes", probabilities.shape)
    if not (edge_sizes > 0).all():
        raise ValueError("edge_sizes must be positive")
    if not edge_sizes.size:
        return costs
    if weighting == "size":
        return costs * (edge_sizes / edge_sizes.max())
    if z_sizes is None:
        raise ValueError('weighting="orientation" needs z_sizes')
    z_sizes = _as_counts(z_sizes, "z_sizes", probabilities.shape)
    if not ((z_sizes >= 0) & (z_sizes <= edge_sizes)).all():
        raise ValueError("z_sizes must lie between 0 and edge_sizes")
    weights = np.zeros_like(costs)
    for sizes in (z_sizes, edge_sizes - z_sizes):
        if sizes.max() > 0:
            weights += sizes / sizes.max()
    return costs * weights


def _as_counts(values, name: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(f"{name} shape {values.shape} does not match probabilities {shape}")
    return values


def edge_costs_from_features(
    features: np.ndarray,
    *,
    beta: float = 0.5,
    weighting: str = "orientation",
) -> np.ndarray:
    """Edge costs from ``(E, 6)`` edge features with columns :data:`emflow.graph.FEATURE_NAMES`.

    The mean boundary value on an edge is its boundary probability, the size
    and z_size columns the edge's pair counts; see :func:`probabilities_to_costs`.
    Returns ``(E,)`` ``float64`` costs.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features must have shape (E, {len(FEATURE_NAMES)}), got {features.shape}")
    return probabilities_to_costs(
        features[:, FEATURE_NAMES.index("mean")],
        beta=beta,
        edge_sizes=features[:, FEATURE_NAMES.index("size")],
        weighting=weighting,
        z_sizes=features[:, FEATURE_NAMES.index("z_size")],
    )
