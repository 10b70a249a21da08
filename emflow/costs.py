"""Multicut edge costs from boundary probabilities.

Sign convention (shared with :mod:`emflow.multicut`): a positive cost is
attractive (the edge prefers to be merged), a negative one repulsive.
"""

from __future__ import annotations

import numpy as np

from .graph import FEATURE_NAMES

WEIGHTINGS = ("none", "size")

# Keeps the log-odds finite for probabilities of exactly 0 or 1.
_EPSILON = 1e-3


def probabilities_to_costs(
    probabilities: np.ndarray,
    *,
    beta: float = 0.5,
    edge_sizes: np.ndarray | None = None,
    weighting: str = "none",
) -> np.ndarray:
    """Log-odds edge costs from per-edge boundary probabilities.

    ``probabilities`` is ``(E,)``, the probability that an edge lies on a
    true boundary (1 = cut), clipped to ``[1e-3, 1 - 1e-3]``. The cost is
    ``log((1 - p) / p) + log((1 - beta) / beta)``; ``beta`` in (0, 1) is the
    boundary bias, larger values favour cutting (over-segmentation).
    ``weighting="size"`` multiplies the costs by ``edge_sizes / max(edge_sizes)``
    (``edge_sizes``: ``(E,)`` voxel-pair counts) so that small contacts weigh
    less, as elf's ``transform_probabilities_to_costs``.

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
    if weighting == "size":
        if edge_sizes is None:
            raise ValueError('weighting="size" needs edge_sizes')
        edge_sizes = np.asarray(edge_sizes, dtype=np.float64)
        if edge_sizes.shape != probabilities.shape:
            raise ValueError(
                f"edge_sizes shape {edge_sizes.shape} does not match probabilities {probabilities.shape}"
            )
        if not (edge_sizes > 0).all():
            raise ValueError("edge_sizes must be positive")
        if edge_sizes.size:
            costs *= edge_sizes / edge_sizes.max()
    return costs


def edge_costs_from_features(
    features: np.ndarray,
    *,
    beta: float = 0.5,
    weighting: str = "size",
) -> np.ndarray:
    """Edge costs from ``(E, 5)`` edge features with columns :data:`emflow.graph.FEATURE_NAMES`.

    The mean boundary value on an edge is its boundary probability and the
    size column the edge size; see :func:`probabilities_to_costs`. Returns
    ``(E,)`` ``float64`` costs.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features must have shape (E, {len(FEATURE_NAMES)}), got {features.shape}")
    return probabilities_to_costs(
        features[:, FEATURE_NAMES.index("mean")],
        beta=beta,
        edge_sizes=features[:, FEATURE_NAMES.index("size")],
        weighting=weighting,
    )
