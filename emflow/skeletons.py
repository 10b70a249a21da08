"""Skeletons of groundtruth bodies, computed block by block, and the expected run length along them.

Skeletons come from bioimage-cpp's TEASAR (``bioimage_cpp.skeleton``) run per block and stitched
(``bioimage_cpp.skeleton.distributed``): each block reads its own box plus one voxel on every high
face that has a neighbouring block; both blocks of a shared face pick the same stitch targets on it
(a deterministic function of the face's labels), so the fragments join exactly when merged. Per block:
`block_skeleton_fragments`; global: `merge_skeleton_fragments`. `skeletonize_blockwise` runs both
in one process.

Nodes are in nm, ``(z, y, x)``, voxel centres at ``index * resolution``: node ``p`` lies in voxel
``round(p / resolution)``. Segment ids at the nodes come per block (`block_node_segments`) or in one
process (`node_segments`); `skeleton_metrics` turns them into the expected run length (ERL) of
Januszewski et al. (2018, "High-precision automated reconstruction of neurons with flood-filling
networks", Nat. Methods 15:605) and counts of merges and splits along the skeletons.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from bioimage_cpp.skeleton import distributed

from .blocking import Blocking, Box
from .graph import connected_components

# Label dtypes bioimage-cpp's labelled TEASAR takes as they are.
_TEASAR_DTYPES = tuple(np.dtype(name) for name in ("uint8", "uint16", "uint32", "uint64", "int32", "int64"))


class Skeletons(NamedTuple):
    """A forest of skeletons, one or more trees per body.

    - ``nodes``: (V, 3) float64 positions in nm, (z, y, x).
    - ``edges``: (E, 2) int64 indices into ``nodes``, each edge once, ``u < v``.
    - ``skeleton_ids``: (V,) uint64 body (groundtruth) id of each node; never 0.
    """

    nodes: np.ndarray
    edges: np.ndarray
    skeleton_ids: np.ndarray


def skeleton_block_region(blocking: Blocking, block_id: int) -> Box:
    """The box a block reads for `block_skeleton_fragments`: its own box plus one voxel on every
    high face that has a neighbour (the first plane of that neighbour, shared by both)."""
    box = blocking.block(block_id)
    return Box(box.begin, tuple(min(end + 1, size) for end, size in zip(box.end, blocking.shape)))


def _open_faces(block: Box, volume_shape) -> list[tuple[int, str]]:
    faces = []
    for axis, (begin, end, size) in enumerate(zip(block.begin, block.end, volume_shape)):
        if begin > 0:
            faces.append((axis, "low"))
        if end < size:
            faces.append((axis, "high"))
    return faces


def block_skeleton_fragments(labels, block: Box, volume_shape, resolution, **teasar_options) -> dict:
    """TEASAR skeleton fragments of every body in one block, ready to stitch with the other blocks.

    Args:
        labels: the block's groundtruth labels (integer, 0 = background, not skeletonized) read over
            ``skeleton_block_region(blocking, block_id)``, i.e. from ``block.begin`` to ``block.end``
            plus one voxel on each high face below the volume's end.
        block: the block's own box (``blocking.block(block_id)``), volume coordinates.
        volume_shape: shape of the whole volume, to tell block faces from volume faces.
        resolution: nm per voxel (z, y, x), TEASAR's spacing.
        teasar_options: other keyword arguments of ``bioimage_cpp.skeleton.distributed.block_teasar_labels``
            (scale, constant, pdrf_scale, pdrf_exponent, ...); its defaults otherwise. They must be the
            same for all blocks.

    Returns:
        ``{body id: (vertices, edges, radii)}``: int64 (n, 3) global voxel coordinates, uint64 (m, 2)
        indices, float32 (n,) radii in nm. Store with `fragments_to_arrays`.
    """
    labels = np.asarray(labels)
    region_shape = tuple(min(end + 1, size) - begin for begin, end, size in zip(block.begin, block.end, volume_shape))
    if labels.shape != region_shape:
        raise ValueError(f"labels of shape {labels.shape} do not cover the block's region, shape {region_shape}")
    if labels.dtype not in _TEASAR_DTYPES:
        labels = labels.astype(np.int64)
    faces = _open_faces(block, volume_shape)
    # Targets depend only on a face's labels, so both blocks of a face find the same ones; each block
    # computes those of its own faces instead of waiting for its neighbours.
    targets = distributed.block_border_targets_labels(labels, faces, origin=block.begin, spacing=resolution)
    return distributed.block_teasar_labels(
        labels, open_faces=faces, origin=block.begin, required_targets=targets, spacing=resolution, **teasar_options
    )


def fragments_to_arrays(fragments: dict) -> dict[str, np.ndarray]:
    """A block's fragments (`block_skeleton_fragments`) as flat arrays, e.g. for one ``.npz`` file.

    Returns ``labels`` (L,) int64 body ids, ``vertex_counts`` and ``edge_counts`` (L,) int64,
    ``vertices`` (sum, 3) int64, ``edges`` (sum, 2) uint64 (indices within each body's fragment) and
    ``radii`` float32, concatenated in the order of ``labels``; `fragments_from_arrays` inverts it.
    """
    labels = sorted(fragments)
    parts = [fragments[label] for label in labels]
    return {
        "labels": np.asarray(labels, dtype=np.int64),
        "vertex_counts": np.asarray([len(vertices) for vertices, _, _ in parts], dtype=np.int64),
        "edge_counts": np.asarray([len(edges) for _, edges, _ in parts], dtype=np.int64),
        "vertices": np.concatenate([np.empty((0, 3), np.int64)] + [vertices for vertices, _, _ in parts]),
        "edges": np.concatenate([np.empty((0, 2), np.uint64)] + [edges for _, edges, _ in parts]),
        "radii": np.concatenate([np.empty(0, np.float32)] + [radii for _, _, radii in parts]),
    }


def fragments_from_arrays(arrays) -> dict:
    """Inverse of `fragments_to_arrays` (``arrays``: a dict or an opened ``.npz`` file)."""
    vertex_ends = np.cumsum(arrays["vertex_counts"])
    edge_ends = np.cumsum(arrays["edge_counts"])
    vertices = np.split(np.asarray(arrays["vertices"]), vertex_ends[:-1])
    radii = np.split(np.asarray(arrays["radii"]), vertex_ends[:-1])
    edges = np.split(np.asarray(arrays["edges"]), edge_ends[:-1])
    return {int(label): (v, e, r) for label, v, e, r in zip(arrays["labels"], vertices, edges, radii)}


def merge_skeleton_fragments(fragment_maps: Iterable[dict], resolution) -> Skeletons:
    """Stitch the blocks' fragments into one skeleton forest per body.

    Args:
        fragment_maps: the `block_skeleton_fragments` of all blocks (any order), consumed once.
        resolution: nm per voxel (z, y, x), as given to the blocks.

    Returns:
        Skeletons: per body, the exact union of its fragments (shared face voxels unified) reduced to
        a minimum spanning forest (stitching can close cycles), in nm. A body's trees equal its
        26-connected components. Bodies in increasing id order; memory O(skeleton nodes).
    """
    by_label: dict[int, list] = {}
    for fragments in fragment_maps:
        for label, fragment in fragments.items():
            by_label.setdefault(int(label), []).append(fragment)
    nodes, edges, skeleton_ids, offset = [np.empty((0, 3))], [np.empty((0, 2), np.int64)], [np.empty(0, np.uint64)], 0
    for label in sorted(by_label):
        merged = distributed.minimum_spanning_forest(distributed.merge_block_skeletons(by_label[label]), spacing=resolution)
        vertices, body_edges, _ = distributed.lattice_to_physical(merged, spacing=resolution)
        nodes.append(vertices)
        edges.append(np.sort(body_edges.astype(np.int64), axis=1) + offset)
        skeleton_ids.append(np.full(len(vertices), label, np.uint64))
        offset += len(vertices)
    return Skeletons(np.concatenate(nodes), np.concatenate(edges), np.concatenate(skeleton_ids))


def skeletonize_blockwise(groundtruth, block_shape, resolution, **teasar_options) -> Skeletons:
    """Skeletons of every non-zero body of ``groundtruth`` (array or lazy array-like), block by block
    in this process: `block_skeleton_fragments` per block, then `merge_skeleton_fragments`."""
    shape = tuple(groundtruth.shape)
    blocking = Blocking(shape, tuple(min(b, s) for b, s in zip(block_shape, shape)))

    def fragment_maps():
        for block_id in range(blocking.number_of_blocks):
            region = skeleton_block_region(blocking, block_id)
            labels = np.asarray(groundtruth[region.slicing])
            yield block_skeleton_fragments(labels, blocking.block(block_id), shape, resolution, **teasar_options)

    return merge_skeleton_fragments(fragment_maps(), resolution)


def node_voxels(skeletons: Skeletons, resolution) -> np.ndarray:
    """(V, 3) int64 voxel of each node: ``round(node / resolution)``."""
    return np.rint(skeletons.nodes / np.asarray(resolution, dtype=np.float64)).astype(np.int64)


def block_node_segments(segmentation, begin, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids of the nodes that lie in one block.

    Args:
        segmentation: the block's segmentation, read without halo.
        begin: the block's first voxel (volume coordinates).
        voxels: (V, 3) int64 voxels of all nodes (`node_voxels`).

    Returns:
        ``(node_indices, segment_ids)``: int64 indices of the nodes inside the block and their uint64
        segment ids. Blocks of a blocking find every node inside the volume exactly once.
    """
    segmentation = np.asarray(segmentation)
    local = voxels - np.asarray(begin, dtype=np.int64)
    inside = np.flatnonzero(((local >= 0) & (local < np.asarray(segmentation.shape))).all(axis=1))
    return inside, segmentation[tuple(local[inside].T)].astype(np.uint64)


def node_segments(segmentation, voxels: np.ndarray, block_shape) -> np.ndarray:
    """Segment id at every node voxel, reading only the blocks of ``segmentation`` that hold nodes.

    Args:
        segmentation: label array or lazy array-like (zarr, h5py).
        voxels: (V, 3) int64 node voxels (`node_voxels`).
        block_shape: the blocks read at a time.

    Returns:
        (V,) uint64 segment ids; 0 for nodes outside the volume (as if unsegmented).
    """
    shape = tuple(segmentation.shape)
    blocking = Blocking(shape, tuple(min(b, s) for b, s in zip(block_shape, shape)))
    segments = np.zeros(len(voxels), np.uint64)
    inside = ((voxels >= 0) & (voxels < np.asarray(shape))).all(axis=1)
    block_ids = np.ravel_multi_index(tuple((voxels[inside] // blocking.block_shape).T), blocking.blocks_per_axis)
    for block_id in np.unique(block_ids):
        box = blocking.block(int(block_id))
        indices, ids = block_node_segments(segmentation[box.slicing], box.begin, voxels)
        segments[indices] = ids
    return segments


def _distinct_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((second, first))
    first, second = first[order], second[order]
    keep = np.concatenate([[True], (first[1:] != first[:-1]) | (second[1:] != second[:-1])]) if first.size else np.zeros(0, bool)
    return first[keep], second[keep]


def run_lengths(skeletons: Skeletons, segments: np.ndarray) -> dict:
    """Expected run length of a segmentation along skeletons, and its merges and splits.

    Definitions (FFN, Januszewski et al. 2018, with the merge rule of funlib.evaluate):

    - An edge's length is the Euclidean distance of its nodes, in nm; L is the summed length of all
      edges.
    - Node label 0 means "not segmented" (also nodes outside the volume): an edge with a node in
      segment 0 is *omitted*.
    - A segment other than 0 is a *merger* if it holds nodes of two or more skeletons (bodies).
    - An edge is *correct* if both nodes are in the same segment and that segment is not a merger;
      *split* if its nodes are in two different non-zero segments; *merged* if both are in one merger.
    - Runs are the connected components of the graph of correct edges; a run's length is the sum of
      its edges' lengths. ERL = sum over runs of length^2 / L: the expected length of the correctly
      reconstructed run that contains a point drawn uniformly along the skeletons. Omitted, split and
      merged edges count in L but in no run, so a merger costs its bodies' whole runs through it.
      (funlib.evaluate sums a body's correct edges per segment instead of per connected run; the two
      differ only where a skeleton leaves a segment and comes back.)
    - ``skeleton_splits``: over skeletons, the number of distinct non-zero segments on its nodes
      minus one (the merge operations a proofreader needs); ``skeleton_merges``: over mergers, the
      number of skeletons on their nodes minus one (the splits needed).

    Args:
        skeletons: the skeleton forest (nm).
        segments: (V,) uint64 segment id at each node (`node_segments` / `block_node_segments`).

    Returns:
        dict: ``expected_run_length_nm``, ``skeleton_length_nm``, ``skeleton_merges``,
        ``skeleton_splits``, ``merging_segments`` (number of mergers), and the edge counts
        ``correct_edges``, ``split_edges``, ``merged_edges``, ``omitted_edges``.

    Raises:
        ValueError: if the skeletons have no edge of positive length, or ``segments`` has the wrong length.
    """
    segments = np.asarray(segments, dtype=np.uint64)
    if segments.shape != skeletons.skeleton_ids.shape:
        raise ValueError(f"{len(segments)} segment ids for {len(skeletons.skeleton_ids)} nodes")
    u, v = skeletons.edges[:, 0], skeletons.edges[:, 1]
    lengths = np.linalg.norm(skeletons.nodes[u] - skeletons.nodes[v], axis=1)
    total = float(lengths.sum())
    if total <= 0:
        raise ValueError("the skeletons have no edges of positive length")

    segmented = segments != 0
    segment_of_pair, skeleton_of_pair = _distinct_pairs(segments[segmented], skeletons.skeleton_ids[segmented])
    distinct_segments, skeletons_per_segment = np.unique(segment_of_pair, return_counts=True)
    _, segments_per_skeleton = np.unique(skeleton_of_pair, return_counts=True)
    mergers = distinct_segments[skeletons_per_segment > 1]

    segment_u, segment_v = segments[u], segments[v]
    omitted = (segment_u == 0) | (segment_v == 0)
    split = ~omitted & (segment_u != segment_v)
    merged = ~omitted & ~split & np.isin(segment_u, mergers)
    correct = ~omitted & ~split & ~merged

    number_of_nodes = len(segments)
    run_of_node = connected_components(number_of_nodes, np.column_stack([u[correct], v[correct]]))
    run_length = np.bincount(run_of_node[u[correct]], weights=lengths[correct])
    return {
        "expected_run_length_nm": float(run_length @ run_length / total),
        "skeleton_length_nm": total,
        "skeleton_merges": int((skeletons_per_segment[skeletons_per_segment > 1] - 1).sum()),
        "skeleton_splits": int((segments_per_skeleton - 1).sum()),
        "merging_segments": int(mergers.size),
        "correct_edges": int(np.count_nonzero(correct)),
        "split_edges": int(np.count_nonzero(split)),
        "merged_edges": int(np.count_nonzero(merged)),
        "omitted_edges": int(np.count_nonzero(omitted)),
    }


def skeleton_metrics(skeletons: Skeletons, segments: np.ndarray) -> dict:
    """The skeleton keys of an evaluation report: `run_lengths` of the segmentation and of the groundtruth.

    Returns:
        dict: ``expected_run_length_nm`` (ERL of the segmentation), ``gt_expected_run_length_nm`` (ERL
        of a perfect segmentation: each body's skeleton trees are its runs, so it is below the longest
        skeleton where a body leaves the volume and comes back), ``normalized_erl`` (their ratio, in
        [0, 1]), ``skeleton_length_nm``, ``number_of_skeletons``, ``skeleton_merges``,
        ``skeleton_splits``, and ``skeleton_correct_edges``, ``skeleton_split_edges``,
        ``skeleton_merged_edges``, ``skeleton_omitted_edges`` (see `run_lengths`).
    """
    segmentation_runs = run_lengths(skeletons, segments)
    groundtruth_erl = run_lengths(skeletons, skeletons.skeleton_ids)["expected_run_length_nm"]
    return {
        "expected_run_length_nm": segmentation_runs["expected_run_length_nm"],
        "gt_expected_run_length_nm": groundtruth_erl,
        "normalized_erl": segmentation_runs["expected_run_length_nm"] / groundtruth_erl,
        "skeleton_length_nm": segmentation_runs["skeleton_length_nm"],
        "number_of_skeletons": int(np.unique(skeletons.skeleton_ids).size),
        "skeleton_merges": segmentation_runs["skeleton_merges"],
        "skeleton_splits": segmentation_runs["skeleton_splits"],
        **{f"skeleton_{kind}_edges": segmentation_runs[f"{kind}_edges"] for kind in ("correct", "split", "merged", "omitted")},
    }
