"""Mergeable statistics of affinities between pairs of labels (supervoxels, fragments).

The *voxel pairs* of an affinity channel with offset ``o`` are ``(p, p + o)`` with both voxels in
the volume; the channel's value at ``p`` is their affinity (the convention of
:mod:`emflow.affinities`: 1 = same object). A voxel pair whose two labels differ and are both
non-zero adds its affinity to the *label pair* ``(u, v)``, ``u < v``, of its two labels. For
nearest-neighbour channels the label pairs are the edges of the region graph of
:mod:`emflow.graph`; for long-range channels they are pairs of labels up to ``|o|`` apart, which
need not touch.

Per label pair the statistics are the number of voxel pairs, the sum of their affinities and a
histogram of :data:`HISTOGRAM_BINS` bins over [0, 1]. All three are integers: affinities are
clipped to [0, 1] and rounded to multiples of ``2**-24`` (:data:`FIXED_POINT_SCALE`; float32 has
24 significant bits, so affinities near 1 are kept exactly and smaller ones to within 3e-8), and
the sum is kept in those units. Integer sums do not depend on the order of addition, so merging
block results is exact: blockwise statistics equal the whole volume's bit for bit, and mean and
quantile linkages (:mod:`emflow.agglomeration`) combine exactly.

Blockwise: a voxel pair's *anchor* is ``p + min(o, 0)`` (per axis), so both its voxels lie in
``anchor + [0, |o|]``. A block owns the voxel pairs whose anchor lies in its inner box and reads
its labels and affinities with a halo of :func:`statistics_halo` voxels on the forward faces
(clipped to the volume); the inner boxes of a blocking then count every voxel pair once. For a
nearest-neighbour channel the anchor is the pair's first voxel, the ownership rule of
:func:`emflow.graph.block_edge_statistics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .affinities import check_offsets
from .blocking import Box

HISTOGRAM_BINS = 256
"""Histogram bins over [0, 1]; bin ``b`` holds affinities in ``[b / 256, (b + 1) / 256)``, 1.0 in the last (as waterz)."""

FIXED_POINT_SCALE = 2**24
"""Affinities are stored as integers in units of ``1 / FIXED_POINT_SCALE``."""

_MAX_KEY_SPAN = 189_000_000  # span**2 * HISTOGRAM_BINS < 2**63: keys fit int64


@dataclass(frozen=True)
class PairStatistics:
    """Affinity statistics of label pairs.

    Fields
    ------
    pairs:
        ``(P, 2)`` ``uint64`` label pairs ``(u, v)``, ``0 < u < v``, sorted lexicographically,
        unique.
    counts:
        ``(P,)`` ``int64`` number of voxel pairs.
    sums:
        ``(P,)`` ``int64`` sum of the voxel pairs' affinities in units of ``2**-24``.
    histogram_offsets, histogram_bins, histogram_counts:
        Sparse histograms, row by row: pair ``i``'s non-empty bins are
        ``histogram_bins[histogram_offsets[i]:histogram_offsets[i + 1]]`` (``uint8``, ascending)
        with their ``int64`` voxel-pair counts; ``histogram_offsets`` is ``(P + 1,)`` ``int64``.
        A pair has at most ``min(count, 256)`` non-empty bins, so the histograms never take more
        room than the voxel pairs behind them.
    """

    pairs: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    histogram_offsets: np.ndarray
    histogram_bins: np.ndarray
    histogram_counts: np.ndarray

    def __len__(self) -> int:
        return len(self.pairs)

    def mean(self) -> np.ndarray:
        """``(P,)`` ``float64`` mean affinity of each pair."""
        return self.sums / (self.counts.astype(np.float64) * FIXED_POINT_SCALE)

    def quantile(self, q: float) -> np.ndarray:
        """``(P,)`` ``float64`` ``q``-quantile of each pair's affinities, from its histogram.

        The quantile is the centre ``(b + 0.5) / 256`` of the bin ``b`` that holds the
        ``min(floor(q * count) + 1, count)``-th smallest value (:func:`quantile_ranks`): ``q = 0``
        gives the bin of the minimum, ``q = 1`` that of the maximum, ``q = 0.5`` the upper median.
        This is waterz's ``HistogramQuantileAffinity`` for ``q`` in percent, with the same bins.
        """
        ranks = quantile_ranks(self.counts, q)
        cumulative = np.cumsum(self.histogram_counts)
        before = np.concatenate([[0], cumulative])[self.histogram_offsets[:-1]]
        # The cumulative counts rise globally, so the first entry reaching `before + rank` lies in
        # the pair's own row.
        entries = np.searchsorted(cumulative, before + ranks, side="left")
        return bin_centres(self.histogram_bins[entries])

    def dense_histograms(self) -> np.ndarray:
        """``(P, 256)`` ``int64`` histograms (for small ``P``: 2 KiB per pair)."""
        dense = np.zeros((len(self), HISTOGRAM_BINS), dtype=np.int64)
        rows = np.repeat(np.arange(len(self)), np.diff(self.histogram_offsets))
        dense[rows, self.histogram_bins] = self.histogram_counts
        return dense

    def select(self, keep: np.ndarray) -> PairStatistics:
        """The statistics of the pairs where the ``(P,)`` bool ``keep`` is True."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"keep must have shape ({len(self)},), got {keep.shape}")
        row_sizes = np.diff(self.histogram_offsets)
        entries = np.repeat(keep, row_sizes)
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(row_sizes[keep], out=offsets[1:])
        return PairStatistics(
            self.pairs[keep],
            self.counts[keep],
            self.sums[keep],
            offsets,
            self.histogram_bins[entries],
            self.histogram_counts[entries],
        )


def quantile_ranks(counts: np.ndarray, q: float) -> np.ndarray:
    """``min(floor(q * counts) + 1, counts)``: the 1-based rank of the ``q``-quantile among ``counts`` values (int64)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    counts = np.asarray(counts, dtype=np.int64)
    return np.minimum(np.floor(q * counts.astype(np.float64)).astype(np.int64) + 1, counts)


def bin_centres(bins) -> np.ndarray:
    """Affinity at the centre of histogram bins, ``(bins + 0.5) / 256`` (float64)."""
    return (np.asarray(bins, dtype=np.float64) + 0.5) / HISTOGRAM_BINS


def nearest_neighbour_channels(offsets: Sequence[Sequence[int]] | np.ndarray) -> list[int]:
    """Indices of the channels whose offset is a nearest neighbour (one step along one axis)."""
    return [channel for channel, offset in enumerate(check_offsets(offsets)) if np.abs(offset).sum() == 1]


def long_range_channels(offsets: Sequence[Sequence[int]] | np.ndarray) -> list[int]:
    """Indices of the channels whose offset is longer than one step."""
    return [channel for channel, offset in enumerate(check_offsets(offsets)) if np.abs(offset).sum() > 1]


def statistics_halo(offsets: Sequence[Sequence[int]], channels: Sequence[int] | None = None) -> tuple[int, ...]:
    """Forward halo (voxels per axis) a block needs for the voxel pairs of ``channels`` (default all)."""
    offsets_array = check_offsets(offsets)
    channels = range(len(offsets_array)) if channels is None else list(channels)
    return tuple(int(step) for step in np.abs(offsets_array[list(channels)]).max(axis=0))


def block_pair_statistics(
    labels: np.ndarray,
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    own_box: Box,
    *,
    channels: Sequence[int] | None = None,
) -> PairStatistics:
    """Statistics of the voxel pairs one block owns, from affinities.

    ``labels`` are the block's integer ids ``(z, y, x)`` read with a forward halo of at least
    :func:`statistics_halo` (clipped to the volume), ``affinities`` float ``(C, z, y, x)`` of the
    same box with one channel per row of ``offsets``, ``own_box`` the block's inner box in the
    coordinates of that array, ``channels`` the channels to count (default: all), e.g.
    :func:`nearest_neighbour_channels` for region-graph edges or :func:`long_range_channels` for
    lifted and repulsive pairs. Single-threaded, because workflows parallelise over blocks.
    """
    labels = _as_labels(labels)
    offsets_array = check_offsets(offsets)
    affinities = np.asarray(affinities)
    if affinities.shape != (len(offsets_array),) + labels.shape:
        raise ValueError(f"affinities must have shape {(len(offsets_array),) + labels.shape}, got {affinities.shape}")
    channels = range(len(offsets_array)) if channels is None else list(channels)
    encoder = _PairKeys(labels)
    keys, values = [], []
    for channel in channels:
        pair = _owned_pairs(labels, offsets_array[channel], own_box)
        if pair is None:
            continue
        # The first slicing is p, where the channel stores the affinity of (p, p + offset).
        first_slicing, second_slicing = pair
        first, second = labels[first_slicing], labels[second_slicing]
        cross = (first != second) & (first != 0) & (second != 0)
        fixed, bins = _quantized(affinities[channel][first_slicing][cross])
        keys.append(encoder.keys(first[cross], second[cross], bins))
        values.append(fixed)
    return _aggregate(encoder, keys, values)


def block_boundary_pair_statistics(labels: np.ndarray, boundaries: np.ndarray, own_box: Box) -> PairStatistics:
    """Statistics of the face voxel pairs one block owns, from a boundary map.

    For a boundary map (float ``(z, y, x)``, 1 = membrane) instead of affinities, the affinity of
    a face voxel pair ``(x, x + e_axis)`` is 1 minus the mean of the two voxels' boundary values,
    so that the pair's boundary value is the one :mod:`emflow.graph` uses. ``labels`` and
    ``boundaries`` are read with a forward halo of one voxel; ``own_box`` as in
    :func:`block_pair_statistics`.
    """
    labels = _as_labels(labels)
    boundaries = np.asarray(boundaries)
    if boundaries.shape != labels.shape:
        raise ValueError(f"boundaries must have shape {labels.shape}, got {boundaries.shape}")
    encoder = _PairKeys(labels)
    keys, values = [], []
    for axis in range(labels.ndim):
        offset = np.zeros(labels.ndim, dtype=np.int64)
        offset[axis] = 1
        pair = _owned_pairs(labels, offset, own_box)
        if pair is None:
            continue
        first_slicing, second_slicing = pair
        first, second = labels[first_slicing], labels[second_slicing]
        cross = (first != second) & (first != 0) & (second != 0)
        boundary = (boundaries[first_slicing][cross].astype(np.float64) + boundaries[second_slicing][cross]) / 2
        fixed, bins = _quantized(1.0 - boundary)
        keys.append(encoder.keys(first[cross], second[cross], bins))
        values.append(fixed)
    return _aggregate(encoder, keys, values)


def pair_statistics(
    labels: np.ndarray,
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    *,
    channels: Sequence[int] | None = None,
) -> PairStatistics:
    """Statistics of a whole volume held in memory; equal to merging any blocking's block results."""
    labels = np.asarray(labels)
    return block_pair_statistics(labels, affinities, offsets, Box((0,) * labels.ndim, labels.shape), channels=channels)


def boundary_pair_statistics(labels: np.ndarray, boundaries: np.ndarray) -> PairStatistics:
    """:func:`block_boundary_pair_statistics` of a whole volume held in memory."""
    labels = np.asarray(labels)
    return block_boundary_pair_statistics(labels, boundaries, Box((0,) * labels.ndim, labels.shape))


def merge_pair_statistics(parts: Iterable[PairStatistics]) -> PairStatistics:
    """Combine statistics of the same pairs from several blocks (or of merged groups of blocks).

    Counts, sums and histograms add; the result is exact and does not depend on the order of
    ``parts``. Outputs are valid inputs, so a large merge can run as a tree of smaller ones.
    """
    parts = list(parts)
    if not parts:
        return _empty()
    pairs = np.concatenate([part.pairs for part in parts]).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    sorted_pairs = pairs[order]
    starts = _run_starts(sorted_pairs[:, 0], sorted_pairs[:, 1])
    merged_index = np.empty(len(pairs), dtype=np.int64)
    merged_index[order] = _run_index(len(pairs), starts)
    counts = _add_runs(np.concatenate([part.counts for part in parts])[order], starts)
    sums = _add_runs(np.concatenate([part.sums for part in parts])[order], starts)

    # Histogram entries keyed by (merged pair, bin), summed per key.
    row_offset = np.cumsum([0] + [len(part) for part in parts])
    entry_rows = np.concatenate(
        [np.repeat(np.arange(len(part)) + row_offset[index], np.diff(part.histogram_offsets)) for index, part in enumerate(parts)]
    )
    keys = merged_index[entry_rows] * HISTOGRAM_BINS + np.concatenate([part.histogram_bins for part in parts])
    entry_order = np.argsort(keys)
    entry_counts = np.concatenate([part.histogram_counts for part in parts])[entry_order]
    return _from_sorted_pairs(sorted_pairs[starts], counts, sums, keys[entry_order], entry_counts)


def _as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 3D integer array, got {labels.dtype} of shape {labels.shape}")
    return labels


def _owned_pairs(labels: np.ndarray, offset, own_box: Box):
    """Slicings (p, p + offset) over the voxel pairs whose anchor lies in ``own_box``, or None if none."""
    first, second = [], []
    for begin, end, size, step in zip(own_box.begin, own_box.end, labels.shape, offset):
        step = int(step)
        # Anchors a in [begin, end) with a + |step| inside the array.
        last = min(end, size - abs(step))
        if last <= begin:
            return None
        first.append(slice(begin + max(-step, 0), last + max(-step, 0)))
        second.append(slice(begin + max(step, 0), last + max(step, 0)))
    return tuple(first), tuple(second)


def _quantized(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point values (int32) and histogram bins (int64) of affinities, clipped to [0, 1].

    The bin comes from the value itself, not from its fixed-point rounding, which may cross a bin
    boundary: ``floor(a * 256)``, exact in floating point, as waterz's ``discretize``.
    """
    values = np.clip(values.astype(np.float64), 0.0, 1.0)
    bins = np.minimum((values * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
    # 2**24 fits int32, which halves the largest array of a block's pairs.
    return np.rint(values * FIXED_POINT_SCALE).astype(np.int32), bins


def _run_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where any of the sorted key columns changes (the starts of runs of equal keys)."""
    if len(sorted_keys[0]) == 0:
        return np.zeros(0, dtype=np.int64)
    changed = np.zeros(len(sorted_keys[0]), dtype=bool)
    changed[0] = True
    for key in sorted_keys:
        changed[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(changed)


def _run_index(length: int, starts: np.ndarray) -> np.ndarray:
    """For each of ``length`` sorted entries, the index of its run (``starts`` from :func:`_run_starts`)."""
    index = np.zeros(length, dtype=np.int64)
    index[starts[1:]] = 1
    return np.cumsum(index)


def _add_runs(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.add.reduceat(values, starts, dtype=np.int64)


class _PairKeys:
    """One int64 key per voxel pair, ``((u - lowest) * span + (v - lowest)) * 256 + bin`` with ``u < v``.

    One sort of the keys then groups a block's voxel pairs by label pair and bin. The block's label
    ids fit unless they span more than 1.9e8; then they are first made dense by a sort of the
    block's voxels (``np.unique``), which is several times slower.
    """

    def __init__(self, labels: np.ndarray):
        foreground = labels != 0
        self.ids = None
        if not foreground.any():
            self.lowest, self.span = 0, 1
            return
        self.lowest = int(labels.min(where=foreground, initial=np.iinfo(labels.dtype).max))
        self.span = int(labels.max()) - self.lowest + 1
        if self.span > _MAX_KEY_SPAN:
            self.ids = np.unique(labels[foreground])
            self.span = len(self.ids)

    def _local(self, labels: np.ndarray) -> np.ndarray:
        if self.ids is None:
            return labels.astype(np.int64) - self.lowest
        return np.searchsorted(self.ids, labels).astype(np.int64)

    def keys(self, first: np.ndarray, second: np.ndarray, bins: np.ndarray) -> np.ndarray:
        first, second = self._local(first), self._local(second)
        keys = np.minimum(first, second) * self.span + np.maximum(first, second)
        keys *= HISTOGRAM_BINS
        keys += bins
        return keys

    def pairs(self, pair_keys: np.ndarray) -> np.ndarray:
        u, v = np.divmod(pair_keys, self.span)
        if self.ids is None:
            return np.stack([u + self.lowest, v + self.lowest], axis=1).astype(np.uint64)
        return np.stack([self.ids[u], self.ids[v]], axis=1).astype(np.uint64)


def _aggregate(encoder: _PairKeys, keys: list[np.ndarray], values: list[np.ndarray]) -> PairStatistics:
    """Statistics from per-voxel-pair keys (:class:`_PairKeys`) and fixed-point affinities."""
    key_array = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    if len(key_array) == 0:
        return _empty()
    order = np.argsort(key_array)
    key_array, value_array = key_array[order], np.concatenate(values)[order]
    del order
    pair_keys = key_array // HISTOGRAM_BINS
    pair_starts = _run_starts(pair_keys)
    counts = np.diff(np.append(pair_starts, len(key_array)))
    sums = _add_runs(value_array, pair_starts)
    del value_array
    entry_starts = _run_starts(key_array)
    entry_counts = np.diff(np.append(entry_starts, len(key_array)))
    # Entries (pair, bin) in order; each entry's pair is the last pair run starting at or before it.
    entry_rows = np.searchsorted(pair_starts, entry_starts, side="right") - 1
    entry_keys = entry_rows * HISTOGRAM_BINS + key_array[entry_starts] % HISTOGRAM_BINS
    return _from_sorted_pairs(encoder.pairs(pair_keys[pair_starts]), counts, sums, entry_keys, entry_counts)


def _from_sorted_pairs(pairs, counts, sums, histogram_keys, histogram_key_counts) -> PairStatistics:
    """Assemble statistics; ``histogram_keys`` are sorted ``pair index * 256 + bin``, repeats summed."""
    starts = _run_starts(histogram_keys)
    entry_keys = histogram_keys[starts]
    entry_counts = _add_runs(histogram_key_counts, starts)
    rows = entry_keys // HISTOGRAM_BINS
    offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(pairs)), out=offsets[1:])
    return PairStatistics(
        pairs=np.asarray(pairs, dtype=np.uint64).reshape(-1, 2),
        counts=np.asarray(counts, dtype=np.int64),
        sums=np.asarray(sums, dtype=np.int64),
        histogram_offsets=offsets,
        histogram_bins=(entry_keys % HISTOGRAM_BINS).astype(np.uint8),
        histogram_counts=entry_counts.astype(np.int64),
    )


def _empty() -> PairStatistics:
    return PairStatistics(
        np.zeros((0, 2), np.uint64),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(1, np.int64),
        np.zeros(0, np.uint8),
        np.zeros(0, np.int64),
    )
