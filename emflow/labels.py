"""Label-id bookkeeping: consecutive relabeling, lookup tables, block offsets, volume-wide block ids.

Label arrays hold non-negative integer ids of any shape; results are
``uint64``. Id ``0`` is background unless stated otherwise.
"""

from __future__ import annotations

import math

import numpy as np
from bioimage_cpp.segmentation import relabel_sequential


def _as_label_array(labels) -> np.ndarray:
    array = np.asarray(labels)
    # An empty list arrives as float64 and has no ids to check.
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {array.dtype}")
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise ValueError("labels must not contain negative ids")
    return array.astype(np.uint64, copy=False)


def relabel_consecutive(labels, keep_zero: bool = True) -> tuple[np.ndarray, int]:
    """Map the ids of ``labels`` to ``1..n`` in increasing order of the old ids.

    With ``keep_zero=True`` id 0 stays 0; with ``keep_zero=False`` 0 is an
    ordinary id (and, being the smallest, becomes 1). Returns the relabeled
    ``uint64`` array (same shape) and ``n``, its largest id.
    """
    array = _as_label_array(labels)
    if array.size == 0:
        return array.copy(), 0
    if not keep_zero and array.min() == 0:
        relabeled, max_id = relabel_consecutive(array, keep_zero=True)
        relabeled += np.uint64(1)
        return relabeled, max_id + 1

    max_id = int(array.max())
    # relabel_sequential allocates a lookup table of length max_id + 1, which is
    # the fast path for dense ids but explodes for sparse global ids.
    if max_id <= 4 * array.size:
        relabeled, _, inverse_map = relabel_sequential(array)
        return relabeled, len(inverse_map) - 1
    old_ids = np.unique(array)
    old_ids = old_ids[old_ids != 0]
    new_ids = np.arange(1, len(old_ids) + 1, dtype=np.uint64)
    return map_labels(array, old_ids, new_ids), len(old_ids)


def map_labels(labels, keys, values) -> np.ndarray:
    """Replace every id ``keys[i]`` in ``labels`` by ``values[i]``.

    ``keys`` must be sorted, unique ``uint64`` ids and ``values`` a ``uint64``
    array of the same length. Id 0 maps to 0 unless 0 is in ``keys``; any
    other id missing from ``keys`` raises ``ValueError``. Returns a ``uint64``
    array with the shape of ``labels``.
    """
    array = _as_label_array(labels)
    keys = _as_label_array(keys)
    values = _as_label_array(values)
    if keys.ndim != 1 or keys.shape != values.shape:
        raise ValueError(f"keys and values must be 1D of the same length, got {keys.shape} and {values.shape}")
    if np.any(keys[1:] <= keys[:-1]):
        raise ValueError("keys must be sorted and unique")
    if keys.size == 0 or keys[0] != 0:
        keys = np.concatenate([np.zeros(1, np.uint64), keys])
        values = np.concatenate([np.zeros(1, np.uint64), values])

    positions = np.searchsorted(keys, array)
    np.minimum(positions, len(keys) - 1, out=positions)
    found = keys[positions] == array
    if not found.all():
        missing = np.unique(array[~found])
        raise ValueError(f"{len(missing)} ids have no mapping, e.g. {missing[:5].tolist()}")
    return values[positions]


def block_offsets(counts) -> np.ndarray:
    """Exclusive cumulative sum of per-block label counts.

    ``counts[b]`` is the number of ids block ``b`` uses (its local ids are
    ``1..counts[b]``). Returns ``uint64`` offsets of the same length such that
    ``offsets[b] + local_id`` are unique, consecutive global ids.
    """
    counts = _as_label_array(counts)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1D, got shape {counts.shape}")
    offsets = np.zeros(len(counts), dtype=np.uint64)
    np.cumsum(counts[:-1], out=offsets[1:])
    return offsets


def supervoxel_id_stride(block_shape) -> int:
    """The stride of volume-wide supervoxel ids: the smallest power of ten above a block's voxel count.

    Block ``b``'s supervoxel ``l`` (``1 <= l <= prod(block_shape)``) has the id ``b * stride + l``
    (:func:`block_supervoxel_ids`): written in decimal, an id reads as its block id followed by its
    number in the block (with blocks of 32x64x64, 12000057 is supervoxel 57 of block 12).
    """
    return 10 ** len(str(math.prod(block_shape)))


def block_supervoxel_ids(local, block_id: int, stride: int) -> np.ndarray:
    """Volume-wide ids of one block's supervoxels: ``block_id * stride + local``; 0 stays 0.

    ``local`` holds the block's ids ``1..n`` (``n < stride``) and 0 for background. Returns a
    ``uint64`` array of its shape.
    """
    array = _as_label_array(local)
    if array.size and int(array.max()) >= stride:
        raise ValueError(f"block {block_id} has supervoxel {int(array.max())}, not below the id stride {stride}")
    return np.where(array != 0, array + np.uint64(block_id * stride), np.uint64(0))


def node_ids(ids, offsets: np.ndarray, stride: int) -> np.ndarray:
    """The consecutive node ids of volume-wide supervoxel ids (:func:`block_supervoxel_ids`).

    Supervoxel ``l`` of block ``b`` is node ``offsets[b] + l``, with ``offsets`` from
    :func:`block_offsets` of the blocks' supervoxel counts; 0 stays 0. The map is strictly
    increasing, so sorted edge lists stay sorted. Returns ``uint64`` of the shape of ``ids``.
    """
    array = _as_label_array(ids)
    # Node l of block b is id + (offsets[b] - b * stride): one gather of a per-block difference,
    # added modulo 2**64 (the difference may be negative; the sum is the node id). 0.5 against
    # 1.1 ms for a 32x64x64 block of ids, most of it numpy's gather with uint64 indices.
    blocks = (array // np.uint64(stride)).astype(np.intp)
    differences = np.asarray(offsets, dtype=np.int64) - np.arange(len(offsets), dtype=np.int64) * np.int64(stride)
    return array + np.take(differences, blocks).view(np.uint64)


def supervoxel_ids_of_nodes(number_of_nodes: int, offsets: np.ndarray, stride: int) -> np.ndarray:
    """The volume-wide supervoxel id of every node ``0..number_of_nodes - 1``: the inverse of
    :func:`node_ids` (node 0 is 0). Returns ``(number_of_nodes,)`` ``uint64``, strictly increasing."""
    nodes = np.arange(number_of_nodes, dtype=np.uint64)
    offsets = np.asarray(offsets, dtype=np.uint64)
    # Node n > 0 belongs to the last block whose offset is below n (blocks without supervoxels
    # share their offset with the next block).
    blocks = np.maximum(np.searchsorted(offsets, nodes, side="left").astype(np.int64) - 1, 0)
    ids = blocks.astype(np.uint64) * np.uint64(stride) + (nodes - offsets[blocks] if len(offsets) else nodes)
    ids[:1] = 0
    return ids


def smallest_member_labels(node_labels, member_ids) -> np.ndarray:
    """Node labels renumbered so that a segment's id is the smallest id among its members.

    ``node_labels`` ``(N,)``: each node's segment, node 0 the background; ``member_ids`` ``(N,)``:
    the id of each node (strictly increasing, ``member_ids[0] == 0``), e.g. the nodes' supervoxel
    ids (:func:`supervoxel_ids_of_nodes`). A segment's new id depends on nothing but its members:
    where a rerun changes some segments, the others keep their ids. Returns ``(N,)`` ``uint64``;
    node 0 gets 0.
    """
    node_labels = np.asarray(node_labels)
    member_ids = _as_label_array(member_ids)
    if node_labels.shape != member_ids.shape or node_labels.ndim != 1:
        raise ValueError(f"node_labels and member_ids must be 1D of one length, got {node_labels.shape} and {member_ids.shape}")
    labels = np.zeros(len(node_labels), dtype=np.uint64)
    if len(node_labels) > 1:
        # The first node of a segment is its smallest member: ids increase with the node.
        _, first, inverse = np.unique(node_labels[1:], return_index=True, return_inverse=True)
        labels[1:] = member_ids[1:][first][inverse.ravel()]
    return labels


def label_overlaps(supervoxels, labels) -> tuple[np.ndarray, np.ndarray]:
    """How many voxels each supervoxel shares with each label.

    ``supervoxels`` and ``labels`` are integer arrays of the same shape.
    Returns ``(pairs, counts)``: ``(K, 2)`` ``uint64`` (supervoxel, label)
    pairs with both ids non-zero, sorted and unique, and their ``(K,)``
    ``int64`` voxel counts.
    """
    supervoxels = _as_label_array(supervoxels).ravel()
    labels = _as_label_array(labels).ravel()
    if supervoxels.shape != labels.shape:
        raise ValueError(f"supervoxels and labels must have the same shape, got {supervoxels.size} and {labels.size} voxels")
    both = (supervoxels != 0) & (labels != 0)
    pairs, counts = np.unique(np.stack([supervoxels[both], labels[both]], axis=1), axis=0, return_counts=True)
    return pairs.reshape(-1, 2).astype(np.uint64), counts.astype(np.int64)


def majority_labels(number_of_nodes: int, pairs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The label covering most voxels of each node (supervoxel), from overlap counts.

    ``pairs`` ``(K, 2)`` (node, label) and ``counts`` ``(K,)`` as returned by
    :func:`label_overlaps`, possibly concatenated over blocks (repeated pairs
    are summed). Ties go to the smaller label. Returns ``(number_of_nodes,)``
    ``uint64``, 0 for nodes without any labelled voxel.
    """
    pairs = np.asarray(pairs, dtype=np.uint64).reshape(-1, 2)
    counts = np.asarray(counts, dtype=np.int64)
    unique_pairs, inverse = np.unique(pairs, axis=0, return_inverse=True)
    totals = np.bincount(inverse.ravel(), weights=counts, minlength=len(unique_pairs))
    # Sort by node, then by count descending, then by label: the first row per node wins.
    order = np.lexsort((unique_pairs[:, 1], -totals, unique_pairs[:, 0]))
    nodes = unique_pairs[order, 0]
    first = np.ones(len(order), dtype=bool)
    first[1:] = nodes[1:] != nodes[:-1]
    node_labels = np.zeros(number_of_nodes, dtype=np.uint64)
    node_labels[nodes[first]] = unique_pairs[order[first], 1]
    return node_labels
