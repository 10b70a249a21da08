"""Learned edge costs: a classifier on edge features of several channels, trained against groundtruth.

As in Beier et al. (2017) and cluster_tools' learning workflow: every edge of the region adjacency
graph gets statistics of several channels on the face between its two supervoxels (the raw
intensity, the boundary map, each affinity channel), the face size and its two supervoxels' sizes;
gradient-boosted trees learn from groundtruth which edges to cut, and their cut probabilities become
multicut costs (:func:`emflow.costs.probabilities_to_costs`).

Features are computed blockwise (:func:`block_channel_statistics` and :func:`block_node_sizes` per
block, then :func:`merge_channel_features`) or in memory (:func:`in_core_channel_features`); both
give identical edges and features. Per channel the statistics are those of
:func:`emflow.graph.block_edge_statistics` (mean, std, min, max of the two voxels' mean across each
face voxel pair) and quantiles read from a fixed 32-bin histogram of the same values over [0, 1],
interpolated linearly inside a bin: histograms add up exactly over blocks, sorted values would not.
Channels must hold values in [0, 1] (probabilities, affinities, raw data scaled by
:func:`emflow.model.scale_raw`); values outside fall into the first or last bin.

An edge's groundtruth label (:func:`edge_labels`) compares the majority groundtruth bodies of its
two supervoxels (:func:`emflow.labels.majority_labels`): cut where they differ; edges touching a
supervoxel without labelled voxels carry no label.

The trained trees are kept as plain arrays (:class:`BoostedTrees`) and evaluated with numpy, so a
classifier file holds no pickle and does not depend on the scikit-learn version that trained it;
scikit-learn is needed for training only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bioimage_cpp.graph import distributed

from .blocking import Box
from .graph import FEATURE_NAMES, block_edge_statistics, edge_rows, merge_edges, undirected_graph

CHANNEL_STATISTICS = ("mean", "std", "min", "max", "q10", "q25", "q50", "q75", "q90")
"""Per-channel feature columns, in this order."""

QUANTILES = (0.10, 0.25, 0.50, 0.75, 0.90)
HISTOGRAM_BINS = 32
"""Bins of the per-edge histograms over [0, 1]: quantiles are exact to within 1/32 (linear
interpolation inside a bin usually does much better); 32 bins x 11 channels x 8 bytes is 2.8 kB per
edge while a block is processed."""

SIZE_FEATURES = ("log_face_size", "log_smaller_node_size", "log_larger_node_size")
"""Columns after the channel statistics in :func:`edge_feature_matrix`."""


def _check_channels(supervoxels: np.ndarray, channels: np.ndarray) -> np.ndarray:
    channels = np.asarray(channels)
    if channels.ndim != supervoxels.ndim + 1 or channels.shape[1:] != supervoxels.shape:
        raise ValueError(f"channels must have shape (C, *{supervoxels.shape}), got {channels.shape}")
    if not np.issubdtype(channels.dtype, np.floating):
        raise TypeError(f"channels must be floats in [0, 1], got {channels.dtype}")
    return channels


def _face_histograms(supervoxels: np.ndarray, channels: np.ndarray, own_box: Box, edges: np.ndarray) -> np.ndarray:
    """(len(edges), C, HISTOGRAM_BINS) int64 histograms of the face voxel pairs the block owns.

    The pairs are those of :func:`emflow.graph.block_edge_statistics`: first voxel in ``own_box``,
    second voxel one step forward along an axis and inside the array, ids different and non-zero;
    a pair's value is the mean of its two voxels' values.
    """
    number_of_channels = channels.shape[0]
    counts = np.zeros(len(edges) * number_of_channels * HISTOGRAM_BINS, dtype=np.int64)
    if not len(edges):
        return counts.reshape(0, number_of_channels, HISTOGRAM_BINS)
    for axis in range(supervoxels.ndim):
        last = min(own_box.end[axis], supervoxels.shape[axis] - 1)
        if last <= own_box.begin[axis]:
            continue
        first_slicing = list(own_box.slicing)
        first_slicing[axis] = slice(own_box.begin[axis], last)
        second_slicing = list(first_slicing)
        second_slicing[axis] = slice(own_box.begin[axis] + 1, last + 1)
        first_ids, second_ids = supervoxels[tuple(first_slicing)], supervoxels[tuple(second_slicing)]
        face = (first_ids != second_ids) & (first_ids != 0) & (second_ids != 0)
        if not face.any():
            continue
        u, v = first_ids[face], second_ids[face]
        edge_index = edge_rows(edges, np.stack([np.minimum(u, v), np.maximum(u, v)], axis=1))
        for channel in range(number_of_channels):
            first_values = channels[channel][tuple(first_slicing)][face].astype(np.float64)
            values = 0.5 * (first_values + channels[channel][tuple(second_slicing)][face])
            bins = np.clip((values * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
            counts += np.bincount((edge_index * number_of_channels + channel) * HISTOGRAM_BINS + bins, minlength=counts.size)
    return counts.reshape(len(edges), number_of_channels, HISTOGRAM_BINS)


def block_channel_statistics(supervoxels: np.ndarray, channels: np.ndarray, own_box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial edge statistics of several channels over the voxel pairs one block owns.

    ``supervoxels`` is the block's ``uint64`` ids read with a halo of at least one voxel on the
    forward faces, ``channels`` float ``(C, z, y, x)`` values in [0, 1] of the same spatial shape,
    ``own_box`` the block's inner box in the coordinates of the haloed arrays (ownership as in
    :func:`emflow.graph.block_edge_statistics`).

    Returns ``(edges, stats, histograms)``: ``(n, 2)`` ``uint64`` edges without background,
    ``(n, C, 5)`` ``float64`` ``[count, mean, M2, min, max]`` per channel and ``(n, C, 32)``
    ``int64`` histograms per channel, to be combined by :func:`merge_channel_features`.
    """
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    channels = _check_channels(supervoxels, channels)
    if not len(channels):
        raise ValueError("at least one channel is needed")
    per_channel = [block_edge_statistics(supervoxels, channel, own_box) for channel in channels]
    edges = per_channel[0][0]
    stats = np.stack([channel_stats[:, :5] for _, channel_stats in per_channel], axis=1)
    return edges, stats, _face_histograms(supervoxels, channels, own_box, edges)


def block_node_sizes(supervoxels: np.ndarray, own_box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Voxels per supervoxel id inside the block's ``own_box``: ``(ids, counts)``, ``uint64`` and
    ``int64``, id 0 left out; concatenated over a blocking's inner boxes they count every voxel once."""
    ids, counts = np.unique(np.asarray(supervoxels, dtype=np.uint64)[own_box.slicing], return_counts=True)
    foreground = ids != 0
    return ids[foreground], counts[foreground].astype(np.int64)


def merge_channel_features(
    number_of_nodes: int,
    edges: np.ndarray,
    block_results: Iterable[Sequence[np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-block channel statistics into per-channel edge features.

    ``edges`` is the merged ``(E, 2)`` edge array (:func:`emflow.graph.merge_edges`),
    ``number_of_nodes`` exceeds the largest node id, and ``block_results`` yields the results of
    :func:`block_channel_statistics`; it is consumed once, so blocks can be streamed.

    Returns ``(features, face_sizes)``: ``(E, C, 9)`` ``float64`` with columns
    :data:`CHANNEL_STATISTICS` per channel, and the ``(E,)`` ``float64`` voxel-pair counts.
    """
    edges = np.asarray(edges, dtype=np.uint64)
    graph = undirected_graph(number_of_nodes, edges)
    stats: list | None = None
    histograms = np.zeros((0,))
    for block_edges, block_stats, block_histograms in block_results:
        if stats is None:
            stats = [distributed.empty_edge_stats(graph.number_of_edges) for _ in range(block_stats.shape[1])]
            histograms = np.zeros((len(edges), block_stats.shape[1], HISTOGRAM_BINS), dtype=np.int64)
        for channel, channel_stats in enumerate(stats):
            distributed.merge_block_edge_stats(graph, channel_stats, block_edges, np.ascontiguousarray(block_stats[:, channel]))
        if len(block_edges):
            rows = graph.find_edges(np.asarray(block_edges, dtype=np.uint64))
            if (rows < 0).any():
                raise ValueError("block edges that are not in the edge list; this is a bug")
            # Each block lists an edge once, so a fancy-indexed += adds every row.
            histograms[rows] += block_histograms
    if stats is None:
        raise ValueError("no block results to merge")
    finished = [distributed.finalize_edge_features(channel_stats, compute_complex_features=True) for channel_stats in stats]
    columns = [FEATURE_NAMES.index(name) for name in ("mean", "std", "min", "max")]
    moments = np.stack([channel[:, columns] for channel in finished], axis=1)
    features = np.concatenate([moments, histogram_quantiles(histograms, QUANTILES)], axis=2)
    return features, finished[0][:, FEATURE_NAMES.index("size")]


def in_core_channel_features(supervoxels: np.ndarray, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges, channel features, face sizes and node sizes of a whole volume held in memory.

    Returns ``(edges, features, face_sizes, sizes_of_nodes)`` as the blockwise functions give them,
    with the edges of :func:`emflow.graph.in_core_graph_features`; ``sizes_of_nodes`` is
    :func:`node_sizes` for ``max id + 1`` nodes.
    """
    supervoxels = np.asarray(supervoxels, dtype=np.uint64)
    whole = Box((0,) * supervoxels.ndim, supervoxels.shape)
    result = block_channel_statistics(supervoxels, channels, whole)
    number_of_nodes = int(supervoxels.max()) + 1
    edges = merge_edges([result[0]])
    features, face_sizes = merge_channel_features(number_of_nodes, edges, [result])
    return edges, features, face_sizes, node_sizes(number_of_nodes, [block_node_sizes(supervoxels, whole)])


def node_sizes(number_of_nodes: int, block_sizes: Iterable[Sequence[np.ndarray]]) -> np.ndarray:
    """``(number_of_nodes,)`` ``int64`` voxels per supervoxel, summed from :func:`block_node_sizes` results."""
    sizes = np.zeros(number_of_nodes, dtype=np.int64)
    for ids, counts in block_sizes:
        np.add.at(sizes, np.asarray(ids, dtype=np.int64), counts)
    return sizes


def histogram_quantiles(histograms: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles of values in [0, 1] from their ``(..., B)`` histograms over B equal bins.

    The quantile q lies in the first bin whose cumulative count reaches q x total, interpolated
    linearly inside that bin. Returns ``(..., len(quantiles))`` ``float64``; 0 where a histogram is empty.
    """
    histograms = np.asarray(histograms, dtype=np.float64)
    bins = histograms.shape[-1]
    cumulative = np.cumsum(histograms, axis=-1)
    total = cumulative[..., -1:]
    result = []
    for quantile in quantiles:
        target = quantile * total
        bin_index = np.minimum((cumulative < target).sum(axis=-1, keepdims=True), bins - 1)
        inside = np.take_along_axis(histograms, bin_index, axis=-1)
        before = np.take_along_axis(cumulative, bin_index, axis=-1) - inside
        fraction = np.divide(target - before, inside, out=np.zeros_like(target), where=inside > 0)
        result.append(np.where(total > 0, (bin_index + np.clip(fraction, 0.0, 1.0)) / bins, 0.0)[..., 0])
    return np.stack(result, axis=-1)


def channel_names(offsets: Sequence[Sequence[int]]) -> tuple[str, ...]:
    """Names of the channels the workflows pass: the boundary map, then one per affinity offset."""
    return ("boundaries",) + tuple("affinity(" + ",".join(str(int(step)) for step in offset) + ")" for offset in offsets)


def feature_channel(name: str) -> str:
    """The channel a feature of :func:`feature_names` describes ("" for the size features)."""
    channel, _, statistic = name.partition(":")
    return channel if statistic else ""


def is_affinity_channel(channel: str) -> bool:
    """Whether a channel of :func:`channel_names` is an affinity channel."""
    return channel.startswith("affinity(")


def feature_channels(names: Sequence[str]) -> list[str]:
    """The channels the features ``names`` describe, sorted, each once."""
    return sorted({feature_channel(name) for name in names} - {""})


def feature_names(channel_names: Sequence[str]) -> tuple[str, ...]:
    """Names of the columns of :func:`edge_feature_matrix` for channels named ``channel_names``."""
    return tuple(f"{channel}:{statistic}" for channel in channel_names for statistic in CHANNEL_STATISTICS) + SIZE_FEATURES


def edge_feature_matrix(edges: np.ndarray, channel_features: np.ndarray, face_sizes: np.ndarray, sizes_of_nodes: np.ndarray) -> np.ndarray:
    """The classifier's input: ``(E, C x 9 + 3)`` ``float64``, columns :func:`feature_names`.

    ``channel_features`` ``(E, C, 9)`` and ``face_sizes`` ``(E,)`` from
    :func:`merge_channel_features`, ``sizes_of_nodes`` from :func:`node_sizes`. Sizes enter as
    log(1 + voxels), so that trees split them as readily at small as at large sizes.
    """
    edges = np.asarray(edges, dtype=np.int64)
    channel_features = np.asarray(channel_features, dtype=np.float64)
    if channel_features.ndim != 3 or channel_features.shape[2] != len(CHANNEL_STATISTICS) or len(channel_features) != len(edges):
        raise ValueError(f"channel_features must have shape ({len(edges)}, C, {len(CHANNEL_STATISTICS)}), got {channel_features.shape}")
    endpoint_sizes = np.log1p(np.asarray(sizes_of_nodes, dtype=np.float64)[edges]) if len(edges) else np.zeros((0, 2))
    return np.concatenate(
        [
            channel_features.reshape(len(edges), -1),
            np.log1p(np.asarray(face_sizes, dtype=np.float64))[:, None],
            endpoint_sizes.min(axis=1, keepdims=True),
            endpoint_sizes.max(axis=1, keepdims=True),
        ],
        axis=1,
    )


def edge_labels(edges: np.ndarray, node_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groundtruth of each edge from its nodes' majority bodies (:func:`emflow.labels.majority_labels`).

    Returns ``(cut, valid)``, both ``(E,)`` bool: ``cut`` where the two bodies differ, ``valid``
    where both nodes have a body (majority label not 0); only valid edges are for training or scoring.
    """
    edges = np.asarray(edges, dtype=np.int64)
    node_labels = np.asarray(node_labels)
    first, second = node_labels[edges[:, 0]], node_labels[edges[:, 1]]
    return first != second, (first != 0) & (second != 0)


@dataclass(frozen=True)
class BoostedTrees:
    """Binary gradient-boosted regression trees as arrays: P(class 1) = sigmoid(baseline + sum of the
    trees' leaf values).

    Nodes of all trees are concatenated; tree ``t``'s root is node ``roots[t]`` and ``left``/``right``
    are global node indices. An inner node sends a sample left when its ``feature`` value is
    ``<= threshold``, or, for a missing (NaN) value, when ``missing_left``; a leaf holds ``value``.
    """

    baseline: float
    roots: np.ndarray  # (T,) int64
    feature: np.ndarray  # (N,) int64
    threshold: np.ndarray  # (N,) float64
    left: np.ndarray  # (N,) int64
    right: np.ndarray  # (N,) int64
    missing_left: np.ndarray  # (N,) bool
    is_leaf: np.ndarray  # (N,) bool
    value: np.ndarray  # (N,) float64

    ARRAYS = ("roots", "feature", "threshold", "left", "right", "missing_left", "is_leaf", "value")

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """P(class 1) ``(E,)`` ``float64`` of ``(E, F)`` features; equals scikit-learn's
        ``predict_proba(features)[:, 1]`` of the estimator the trees came from."""
        features = np.asarray(features, dtype=np.float64)
        rows = np.arange(len(features))
        raw = np.full(len(features), self.baseline)
        for root in self.roots:
            node = np.full(len(features), root, dtype=np.int64)
            inner = ~self.is_leaf[node]
            while inner.any():
                at = node[inner]
                values = features[rows[inner], self.feature[at]]
                go_left = np.where(np.isnan(values), self.missing_left[at], values <= self.threshold[at])
                node[inner] = np.where(go_left, self.left[at], self.right[at])
                inner = ~self.is_leaf[node]
            raw += self.value[node]
        return 1.0 / (1.0 + np.exp(-raw))


def boosted_trees_from_sklearn(estimator: Any) -> BoostedTrees:
    """The trees of a fitted binary ``HistGradientBoostingClassifier`` without categorical features.

    Reads the estimator's ``_predictors`` and ``_baseline_prediction`` (scikit-learn's private
    attributes, stable since 0.21; the tests compare the result with ``predict_proba``).
    """
    trees = [predictors[0].nodes for predictors in estimator._predictors]
    if any(nodes["is_categorical"].any() for nodes in trees):
        raise ValueError("categorical splits are not supported")
    offsets = np.cumsum([0] + [len(nodes) for nodes in trees[:-1]]).astype(np.int64)
    nodes = np.concatenate(trees)
    tree_offsets = np.repeat(offsets, [len(nodes) for nodes in trees])
    return BoostedTrees(
        baseline=float(np.asarray(estimator._baseline_prediction).ravel()[0]),
        roots=offsets,
        feature=nodes["feature_idx"].astype(np.int64),
        threshold=nodes["num_threshold"].astype(np.float64),
        left=nodes["left"].astype(np.int64) + tree_offsets,
        right=nodes["right"].astype(np.int64) + tree_offsets,
        missing_left=nodes["missing_go_to_left"].astype(bool),
        is_leaf=nodes["is_leaf"].astype(bool),
        value=nodes["value"].astype(np.float64),
    )


@dataclass(frozen=True)
class EdgeClassifier:
    """Trained trees with the feature columns they expect.

    feature_names: the input columns (:func:`feature_names`), checked at prediction time so that a
    classifier trained on other channels cannot be applied silently; metadata: training provenance
    (data, model, counts, parameters).
    """

    trees: BoostedTrees
    feature_names: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> list[str]:
        """The channels its features describe (:func:`feature_channels`)."""
        return feature_channels(self.feature_names)

    def cut_probabilities(self, features: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """P(cut) ``(E,)`` ``float64`` of the edges' ``(E, F)`` features, columns named ``names``,
        which must include the classifier's own (it uses those columns)."""
        names = tuple(names)
        if any(name not in names for name in self.feature_names):
            raise ValueError(
                f"the edge classifier was trained on the channels {', '.join(self.channels)}; "
                f"these edges have {', '.join(feature_channels(names))}"
            )
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(names):
            raise ValueError(f"features must have shape (E, {len(names)}), got {features.shape}")
        return self.trees.probabilities(features[:, [names.index(name) for name in self.feature_names]])


def monotonic_constraints(names: Sequence[str]) -> list[int]:
    """Per feature: +1 where the cut probability may only rise with the value (the boundary map's
    statistics but its std), -1 where it may only fall (the affinities' statistics but their std), 0
    for the rest (spreads, sizes, other channels). Such trees cannot learn a training volume's quirks against the
    physics; measured (leave one of the three training volumes out, beta 0.5), mean ARAND 0.101 with
    constraints against 0.115 without, for the boundary map's features and the sizes."""
    constraints = []
    for name in names:
        channel = feature_channel(name)
        if name.endswith(":std"):
            constraints.append(0)
        else:
            constraints.append(1 if channel == "boundaries" else -1 if is_affinity_channel(channel) else 0)
    return constraints


def train_edge_classifier(
    features: np.ndarray,
    cut: np.ndarray,
    names: Sequence[str],
    *,
    iterations: int = 200,
    learning_rate: float = 0.05,
    min_samples_leaf: int = 20,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> EdgeClassifier:
    """Fit gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) to ``(E, F)``
    edge features against ``(E,)`` bool ``cut`` labels, monotonic in the channels' statistics
    (:func:`monotonic_constraints`).

    ``iterations`` boosting rounds at ``learning_rate``, leaves of at least ``min_samples_leaf``
    edges, no early stopping (it would hold out a random tenth of few edges). Seeded; the same inputs
    give the same trees.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    features = np.asarray(features, dtype=np.float64)
    cut = np.asarray(cut, dtype=bool)
    if features.ndim != 2 or features.shape != (len(cut), len(names)):
        raise ValueError(f"features must have shape ({len(cut)}, {len(names)}), got {features.shape}")
    if cut.all() or not cut.any():
        raise ValueError("training edges must include both cut and merged edges")
    estimator = HistGradientBoostingClassifier(
        max_iter=iterations,
        learning_rate=learning_rate,
        min_samples_leaf=min_samples_leaf,
        monotonic_cst=monotonic_constraints(names),
        early_stopping=False,
        random_state=seed,
    )
    estimator.fit(features, cut)
    parameters = {"iterations": iterations, "learning_rate": learning_rate, "min_samples_leaf": min_samples_leaf, "seed": seed}
    provenance = {**parameters, "edges": int(len(cut)), "cut_fraction": float(cut.mean()), **(metadata or {})}
    return EdgeClassifier(boosted_trees_from_sklearn(estimator), tuple(names), provenance)
