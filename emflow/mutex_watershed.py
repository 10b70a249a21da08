"""Mutex watershed (Wolf et al.), on the voxel grid in memory and blockwise over a fragment graph.

The mutex watershed sorts all edges by weight and, from the heaviest, merges the two clusters of an
attractive edge unless a mutex (repulsive) edge already separates them, and puts a mutex between the
two clusters of a repulsive edge unless they are already merged. On affinities (convention of
:mod:`emflow.affinities`, 1 = same object), the nearest-neighbour channels are the attractive
edges, weighted by the affinity, and the long-range channels the repulsive ones, weighted by 1 minus
the affinity. ``strides`` keep only the repulsive edges of every ``strides``-th voxel per axis (or,
with ``randomized_strides``, a random ``1 / prod(strides)`` of them), which speeds it up and
removes repulsion the segmentation rarely needs.

Blockwise, as volara and elf do, in three stages:

1. per block, :func:`mutex_watershed_fragments`: the mutex watershed of the block read with a halo,
   cut to the block's inner box, split into connected components, with fragments below
   ``min_size`` voxels dissolved into their neighbours. Fragments never cross block faces; their
   local ids ``1..n`` become global by adding the block's offset
   (:func:`emflow.labels.block_offsets`).
2. per block, the affinity statistics of fragment pairs
   (:func:`emflow.affinity_statistics.block_pair_statistics`, read with the forward halo
   :func:`~emflow.affinity_statistics.statistics_halo`): nearest-neighbour channels for the
   attractive edges, long-range channels for the repulsive ones; merged over blocks.
3. global, :func:`fragment_mutex_watershed`: the mutex watershed of the fragment graph, attractive
   weight the mean nearest-neighbour affinity of a touching fragment pair, repulsive weight 1 minus
   the mean long-range affinity of a fragment pair.

:func:`blockwise_mutex_watershed` composes the three in memory. It is not the grid mutex watershed
of the whole volume: inside a block fragments follow the voxel-level algorithm, across fragments
the decisions use mean affinities. Measured (``benchmarks/methods.py``, the dev cube's
held-out half, 125x128x250, blocks 64x128x128 with halo 9, adapted Rand error): with the shipped
model's affinities (strides (2, 4, 4), ``min_size`` 100, chosen on the other half) 0.167 in
memory and 0.160 blockwise against the groundtruth, 0.085 between the two; with groundtruth
affinities plus noise 0.2, 0.004 both and 0.000 between; on the test crop with noise 0.25, 0.028
in memory, 0.018 blockwise, 0.011 between (the test's bound). Mean weights make the fragment graph
sensitive to impure fragments: on the test crop with noise-free affinities, the fragment mutex
watershed of the FlyEM oversegmentation (some of whose supervoxels straddle two neurons) has an
adapted Rand error of 0.41, that of groundtruth pieces 0.001. Use it on mutex watershed fragments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from bioimage_cpp.graph.mutex_watershed import mutex_watershed_clustering
from bioimage_cpp.segmentation import label
from bioimage_cpp.segmentation import mutex_watershed as grid_mutex_watershed

from .affinities import NEAREST_OFFSETS, boundaries_from_affinities, check_offsets
from .affinity_statistics import (
    PairStatistics,
    long_range_channels,
    nearest_neighbour_channels,
    pair_statistics,
)
from .blocking import Blocking, Box
from .graph import undirected_graph
from .labels import block_offsets
from .multicut import canonical_labels
from .supervoxels import size_filter


def mutex_watershed_fragments(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    inner_box: Box | None = None,
    *,
    strides: Sequence[int] | None = None,
    randomized_strides: bool = False,
    seed: int = 0,
    mask: np.ndarray | None = None,
    min_size: int = 0,
) -> np.ndarray:
    """Mutex watershed segments of one block, cut to its inner box.

    ``affinities`` are float ``(C, z, y, x)`` in [0, 1] with one channel per row of ``offsets``,
    which must hold the three nearest-neighbour offsets (attractive) and may hold longer ones
    (repulsive); read them for the block with a halo (any width: more context gives better
    fragments at the faces). ``inner_box`` is the block's inner box in the coordinates of that array
    (default: all of it, the in-memory mutex watershed of the volume). ``strides`` are per-axis
    repulsive-edge strides; with ``randomized_strides`` the repulsive edges are sampled at random,
    drawn from ``seed`` (pass a per-block seed, e.g. ``seed + block_id``). ``mask``, optional bool
    ``(z, y, x)`` of the affinities' box: edges touching masked-out voxels are ignored, and those
    voxels get id 0.

    The segments inside the inner box are split into connected components (6-connectivity), and
    components smaller than ``min_size`` voxels are dissolved by a seeded watershed from the larger
    ones on the boundary map the nearest-neighbour affinities imply
    (:func:`emflow.supervoxels.size_filter` on :func:`emflow.affinities.boundaries_from_affinities`):
    a small fragment's voxels go to the neighbours they are least separated from along the
    membrane evidence, the same rule as for supervoxels, rather than all of them to the one
    neighbour with the highest mean affinity, which may touch it along a small part of its surface.

    Returns ``uint64`` ``(inner box shape)`` ids ``1..n``, 0 exactly where ``mask`` is False;
    deterministic for a given ``seed``.
    """
    offsets_array = check_offsets(offsets)
    affinities = np.asarray(affinities)
    if affinities.ndim != 4 or affinities.shape[0] != len(offsets_array):
        raise ValueError(f"affinities must have shape ({len(offsets_array)}, z, y, x), got {affinities.shape}")
    spatial_shape = affinities.shape[1:]
    inner_box = Box((0, 0, 0), spatial_shape) if inner_box is None else inner_box
    if any(end > size for end, size in zip(inner_box.end, spatial_shape)):
        raise ValueError(f"inner box {inner_box} exceeds the affinities' shape {spatial_shape}")
    if min_size < 0:
        raise ValueError(f"min_size must be non-negative, got {min_size}")
    attractive, repulsive = _channels(offsets_array)
    weights = np.concatenate([affinities[attractive], 1.0 - affinities[repulsive]]).astype(np.float32)
    ordered_offsets = [tuple(int(step) for step in offsets_array[channel]) for channel in attractive + repulsive]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != spatial_shape:
            raise ValueError(f"mask must be bool with shape {spatial_shape}, got {mask.dtype} {mask.shape}")

    # bioimage-cpp samples randomized strides from NumPy's global generator; seed it for the call
    # and give the caller's state back.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        segments = grid_mutex_watershed(
            weights,
            ordered_offsets,
            len(attractive),
            strides=None if strides is None else [int(stride) for stride in strides],
            randomized_strides=randomized_strides,
            mask=mask,
        )
    finally:
        np.random.set_state(state)

    fragments = label(segments[inner_box.slicing], connectivity=1)
    inner_mask = None if mask is None else mask[inner_box.slicing]
    if min_size == 0:
        return fragments
    heightmap = boundaries_from_affinities(affinities, offsets)[inner_box.slicing]
    return size_filter(fragments, heightmap, min_size, mask=inner_mask)


def mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    *,
    strides: Sequence[int] | None = None,
    randomized_strides: bool = False,
    seed: int = 0,
    mask: np.ndarray | None = None,
    min_size: int = 0,
) -> np.ndarray:
    """In-memory mutex watershed of a whole volume: :func:`mutex_watershed_fragments` of one block."""
    return mutex_watershed_fragments(
        affinities, offsets, strides=strides, randomized_strides=randomized_strides, seed=seed, mask=mask, min_size=min_size
    )


def fragment_mutex_watershed(number_of_nodes: int, attractive: PairStatistics, repulsive: PairStatistics) -> np.ndarray:
    """Mutex watershed of the fragment graph from merged affinity statistics.

    ``attractive`` are the nearest-neighbour statistics of fragment pairs (the graph's edges, weight
    their mean affinity), ``repulsive`` the long-range ones (mutex edges, weight 1 minus their mean
    affinity; a pair may be both). Node ids are below ``number_of_nodes``; node 0 (background) has
    no edges. Returns ``(number_of_nodes,)`` ``uint64`` labels as
    :func:`emflow.multicut.canonical_labels`.
    """
    graph = undirected_graph(number_of_nodes, attractive.pairs)
    solution = mutex_watershed_clustering(graph, attractive.mean(), repulsive.pairs, 1.0 - repulsive.mean())
    return canonical_labels(solution)


def blockwise_mutex_watershed(
    affinities: np.ndarray,
    offsets: Sequence[Sequence[int]],
    block_shape: Sequence[int],
    halo: Sequence[int],
    *,
    strides: Sequence[int] | None = None,
    randomized_strides: bool = False,
    seed: int = 0,
    mask: np.ndarray | None = None,
    min_size: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The three blockwise stages (module docstring) composed in memory.

    Block ``b`` of ``Blocking(shape, block_shape)`` segments its box grown by ``halo`` voxels per
    side with ``seed + b``; statistics are computed on the whole fragment volume, which equals
    merging them over blocks (:mod:`emflow.affinity_statistics`). Returns
    ``(segmentation, fragments)``, both ``uint64`` ``(z, y, x)``.
    """
    check_offsets(offsets)  # ValueError before any block is segmented; the stages check them again
    blocking = Blocking(affinities.shape[1:], tuple(block_shape))
    block_fragments = []
    for block_id in range(blocking.number_of_blocks):
        outer, inner = blocking.block_with_halo(block_id, halo)
        block_fragments.append(
            mutex_watershed_fragments(
                affinities[(slice(None),) + outer.slicing],
                offsets,
                inner,
                strides=strides,
                randomized_strides=randomized_strides,
                seed=seed + block_id,
                mask=None if mask is None else mask[outer.slicing],
                min_size=min_size,
            )
        )
    fragments = np.zeros(affinities.shape[1:], dtype=np.uint64)
    counts = [int(block.max()) for block in block_fragments]
    for block_id, (offset, block) in enumerate(zip(block_offsets(counts), block_fragments)):
        fragments[blocking.block(block_id).slicing] = np.where(block > 0, block + offset, 0)
    number_of_nodes = sum(counts) + 1
    attractive = pair_statistics(fragments, affinities, offsets, channels=nearest_neighbour_channels(offsets))
    repulsive = pair_statistics(fragments, affinities, offsets, channels=long_range_channels(offsets))
    node_labels = fragment_mutex_watershed(number_of_nodes, attractive, repulsive)
    return node_labels[fragments], fragments


def _channels(offsets: np.ndarray) -> tuple[list[int], list[int]]:
    attractive = nearest_neighbour_channels(offsets)
    if sorted(tuple(int(step) for step in offsets[channel]) for channel in attractive) != sorted(NEAREST_OFFSETS):
        raise ValueError(f"offsets need the nearest-neighbour offsets {NEAREST_OFFSETS} once each, got {offsets.tolist()}")
    return attractive, long_range_channels(offsets)
