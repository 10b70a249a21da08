"""MALIS: the maximin affinity structured loss for 3D nearest-neighbour affinities.

A segmentation obtained by thresholding affinities merges two voxels exactly when the *maximin
edge* between them (the weakest edge on the path whose weakest edge is strongest) lies above the
threshold. MALIS (Turaga et al. 2009) therefore charges every pair of labelled voxels to its
maximin edge only: a pair of the same groundtruth label wants that edge high, a pair of two
different labels wants it low. Per edge this gives two pair counts, ``positive`` and ``negative``,
and the loss

    loss = (sum_e positive_e * (1 - a_e)^2 + negative_e * a_e^2) / max(1, number of counted pairs).

Maximin edges come from Kruskal's algorithm: adding the edges from the strongest down, the edge
that merges components A and B is the maximin edge of every pair with one voxel in A and one in B,
so it gets ``positive = sum_l |A_l| * |B_l|`` (``A_l``: voxels of A with label l) and
``negative = |A| * |B| - positive``, counting labelled voxels only.

Constrained MALIS (Funke et al. 2017) runs two passes so that one kind of error cannot hide
behind the other. The positive counts come from a pass on affinities where every edge the
groundtruth cuts (different labels, or background at either end) is set to 0, so a same-label
pair is charged to the weakest edge on its best path *through its own object* (to a cut edge only
if the volume splits the object). The negative counts come from a pass where every edge inside one
groundtruth object is set to 1, so a different-label pair is charged to the weakest boundary edge
on its best path, i.e. to the false merge (a cut edge tied at exactly 1 can rank above merge edges
by the tie rule below and then pass the count on to one). The clamps only decide which edge is the
maximin edge; the loss is evaluated on the original affinities.

Conventions:

- ``affinities``: float array of shape (3, z, y, x), values in [0, 1]. Channel d holds the affinity
  between voxel v and the voxel before it along axis d, i.e. at offset (-1, 0, 0), (0, -1, 0),
  (0, 0, -1) for d = 0, 1, 2. Entries at index 0 along axis d point outside the volume: they are
  not edges and always get zero counts and zero gradient.
- ``labels``: integer array of shape (z, y, x); label 0 is background / boundary / unknown. Such
  voxels are graph nodes (maximin paths may pass through them) but no pair containing one is
  counted. A pair is an unordered pair of two distinct voxels.
- Ties: edges are strictly ordered; e ranks above f iff a_e > a_f, or a_e == a_f and the C-order
  flat index of e into the (3, z, y, x) array is smaller. In the constrained passes the rule applies
  to the clamped values. Under this strict order every pair has exactly one maximin edge.

Complexity: O(n log n) for n voxels. The edges are sorted once (numpy), reduced to a maximum
spanning forest with ``scipy.sparse.csgraph.minimum_spanning_tree`` (non-forest edges never merge
two components in Kruskal's order, so they are the maximin edge of no pair), and only the n - 1
forest edges run through a Python union-find (path halving, union by size) whose components carry
label histograms; merging the smaller histogram into the larger keeps the total histogram work at
O(n log n). Components holding a single label keep just that label instead of a dict, which is
the common case inside objects. The constrained negative pass first contracts, vectorised, the
groundtruth merge edges that Kruskal provably processes before anything leaves their object
piece (they make no negative pairs): with merge edges set to 1, all of them unless some cut edge
ties at exactly 1.

References:

- S. C. Turaga, K. L. Briggman, M. Helmstaedter, W. Denk, H. S. Seung. Maximin affinity learning
  of image segmentation. NIPS 2009.
- J. Funke, F. D. Tschopp, W. Grisaitis, A. Sheridan, C. Singh, S. Saalfeld, S. C. Turaga. A Deep
  Structured Learning Approach Towards Automating Connectome Reconstruction from 3D Electron
  Micrographs. arXiv:1709.02974, 2017 (IEEE TPAMI 2019 as "Large Scale Image Segmentation with
  Structured Loss based Deep Learning for Connectome Reconstruction").
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

__all__ = ["malis_weights", "malis_loss"]


def _validate(affinities, labels) -> tuple[np.ndarray, np.ndarray]:
    """Checked float64 affinities (3, z, y, x) and integer labels (z, y, x)."""
    affinities = np.asarray(affinities)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if affinities.shape != (3,) + labels.shape:
        raise ValueError(f"affinities must have shape (3,) + labels.shape = {(3,) + labels.shape}, got {affinities.shape}")
    if not (np.issubdtype(affinities.dtype, np.floating) or np.issubdtype(affinities.dtype, np.integer)):
        raise ValueError(f"affinities must be real numbers, got dtype {affinities.dtype}")
    # float32 -> float64 is exact, so ranks and ties are those of the input values.
    affinities = affinities.astype(np.float64, copy=False)
    if not np.isfinite(affinities).all():
        raise ValueError("affinities must be finite, found NaN or infinite values")
    if affinities.size and (affinities.min() < 0 or affinities.max() > 1):
        # The constrained passes clamp to 0 and 1 as the extremes of the order; values outside
        # [0, 1] would rank beyond them and break that.
        raise ValueError(f"affinities must lie in [0, 1], got values in [{affinities.min()}, {affinities.max()}]")
    return affinities, labels


def _grid_edges(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's edges: (flat_index, voxel, neighbour), int64 arrays of equal length.

    ``flat_index`` is the edge's C-order index into a (3, z, y, x) array, ascending; ``voxel`` and
    ``neighbour`` are flat voxel indices of its two ends, the neighbour one step before the voxel
    along the edge's axis. Entries at index 0 along their axis are left out.
    """
    number_of_voxels = int(np.prod(shape))
    is_edge = np.ones((3,) + shape, dtype=bool)
    # Slices rather than indices so that empty volumes work too.
    is_edge[0, :1, :, :] = False
    is_edge[1, :, :1, :] = False
    is_edge[2, :, :, :1] = False
    flat_index = np.flatnonzero(is_edge)
    axis, voxel = np.divmod(flat_index, number_of_voxels)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    return flat_index, voxel, voxel - strides[axis]


def _maximin_pair_counts(
    edge_values: np.ndarray,
    voxel: np.ndarray,
    neighbour: np.ndarray,
    flat_labels: np.ndarray,
    *,
    negative_only: bool = False,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Per edge, the same-label and different-label labelled pairs it is the maximin edge of.

    Args:
        edge_values: float64 (number_of_edges,) affinities, edges in ascending flat-index order
            (so that the stable sort below breaks ties by flat index).
        voxel, neighbour: int64 (number_of_edges,) flat voxel indices of each edge's ends.
        flat_labels: integer (number_of_voxels,) labels, 0 = not counted.
        negative_only: skip the positive counts (returned as None) and contract, in vectorised
            form, the groundtruth merge edges that provably make no negative pairs (see
            ``_contract_leading_merges``) before the loop. In the constrained negative pass,
            where merge edges are set to 1, that is most of them.

    Returns:
        (positive, negative): float64 (number_of_edges,) pair counts; positive is None when
        ``negative_only``.
    """
    number_of_edges = edge_values.size
    number_of_voxels = flat_labels.size
    positive = None if negative_only else np.zeros(number_of_edges, dtype=np.float64)
    negative = np.zeros(number_of_edges, dtype=np.float64)
    if number_of_edges == 0:
        return positive, negative

    rank_order = np.argsort(-edge_values, kind="stable")
    rank_of_edge = np.empty(number_of_edges, dtype=np.int64)
    rank_of_edge[rank_order] = np.arange(number_of_edges)

    if negative_only:
        node_of_voxel, number_of_nodes = _contract_leading_merges(rank_of_edge, voxel, neighbour, flat_labels)
        node_labels = np.zeros(number_of_nodes, dtype=flat_labels.dtype)
        node_labels[node_of_voxel] = flat_labels
        node_sizes = np.bincount(node_of_voxel, minlength=number_of_nodes)
        node_a = node_of_voxel[voxel]
        node_b = node_of_voxel[neighbour]
        # Of parallel edges between two nodes only the strongest can merge them, and a sparse
        # matrix would sum duplicates, so keep the first of each pair in rank order.
        between_nodes = rank_order[node_a[rank_order] != node_b[rank_order]]
        pair_codes = np.minimum(node_a[between_nodes], node_b[between_nodes]) * number_of_nodes + np.maximum(
            node_a[between_nodes], node_b[between_nodes]
        )
        _, first_of_pair = np.unique(pair_codes, return_index=True)
        candidate_edges = between_nodes[first_of_pair]
        node_a, node_b = node_a[candidate_edges], node_b[candidate_edges]
    else:
        # Every voxel is a node of its own.
        node_of_voxel = None
        number_of_nodes = number_of_voxels
        node_labels = flat_labels
        node_sizes = np.ones(number_of_voxels, dtype=np.int64)
        candidate_edges = np.arange(number_of_edges)
        node_a, node_b = voxel, neighbour
    if candidate_edges.size == 0:
        return positive, negative

    # Weights are rank positions + 1: strictly positive because the sparse matrix would silently
    # drop explicit zeros, and distinct, so the forest is unique and follows the exact order.
    graph = coo_matrix(
        ((rank_of_edge[candidate_edges] + 1).astype(np.float64), (node_a, node_b)),
        shape=(number_of_nodes, number_of_nodes),
    ).tocsr()
    forest = minimum_spanning_tree(graph).tocoo()
    forest_edges = rank_order[np.sort(forest.data.astype(np.int64) - 1)]
    # The forest hands back its weights, i.e. ranks, which give the edges and their order.
    edge_ends_a = voxel[forest_edges]
    edge_ends_b = neighbour[forest_edges]
    if node_of_voxel is not None:
        edge_ends_a = node_of_voxel[edge_ends_a]
        edge_ends_b = node_of_voxel[edge_ends_b]

    positive_counts, negative_counts = _kruskal_over_forest(
        edge_ends_a.tolist(),
        edge_ends_b.tolist(),
        _initial_contents(node_labels),
        np.where(node_labels != 0, node_sizes, 0).tolist(),
    )
    if positive is not None:
        positive[forest_edges] = positive_counts
    negative[forest_edges] = negative_counts
    return positive, negative


def _contract_leading_merges(
    rank_of_edge: np.ndarray, voxel: np.ndarray, neighbour: np.ndarray, flat_labels: np.ndarray
) -> tuple[np.ndarray, int]:
    """Nodes for the negative-only pass: voxels joined by merge edges that make no negative pairs.

    A piece is a connected component of the groundtruth merge edges (same non-zero label at both
    ends). Until Kruskal reaches the highest-ranked edge leaving a piece, components inside it hold
    that piece's label only, so its merge edges ranked above that edge join same-label components
    and make no negative pairs. The nodes are the components of those edges.

    Returns:
        (node_of_voxel, number_of_nodes): node index per voxel, int32 or int64 (number_of_voxels,).
    """
    number_of_voxels = flat_labels.size
    voxel_labels = flat_labels[voxel]
    is_merge = (voxel_labels == flat_labels[neighbour]) & (voxel_labels != 0)
    _, piece_of_voxel = _components(voxel[is_merge], neighbour[is_merge], number_of_voxels)
    highest_leaving_rank = np.full(number_of_voxels, rank_of_edge.size, dtype=np.int64)
    leaving = ~is_merge
    for ends in (voxel, neighbour):
        np.minimum.at(highest_leaving_rank, piece_of_voxel[ends[leaving]], rank_of_edge[leaving])
    early_merge = is_merge & (rank_of_edge < highest_leaving_rank[piece_of_voxel[voxel]])
    number_of_nodes, node_of_voxel = _components(voxel[early_merge], neighbour[early_merge], number_of_voxels)
    return node_of_voxel, number_of_nodes


def _components(ends_a: np.ndarray, ends_b: np.ndarray, number_of_nodes: int) -> tuple[int, np.ndarray]:
    """Connected components of an undirected graph given as edge end arrays."""
    graph = coo_matrix((np.ones(ends_a.size, dtype=np.int8), (ends_a, ends_b)), shape=(number_of_nodes, number_of_nodes))
    return connected_components(graph, directed=False)


def _initial_contents(node_labels: np.ndarray) -> list:
    """Per node, its label as one shared Python object per label value, or None for label 0.

    Sharing one object per label lets the hot loop recognise two single-label components of the
    same label by identity (``is``), the cheapest test Python has.
    """
    unique_labels, inverse = np.unique(node_labels, return_inverse=True)
    canonical_labels = unique_labels.tolist()
    zero = int(np.searchsorted(unique_labels, 0))
    if zero < unique_labels.size and unique_labels[zero] == 0:
        canonical_labels[zero] = None
    return list(map(canonical_labels.__getitem__, inverse.ravel().tolist()))


def _kruskal_over_forest(
    edge_ends_a: list[int], edge_ends_b: list[int], content: list, labelled_size: list[int]
) -> tuple[list[int], list[int]]:
    """Union-find over forest edges given strongest first; the pair counts each merge makes.

    Args:
        edge_ends_a, edge_ends_b: node indices of the forest edges' ends, in rank order.
        content: per node, None (unlabelled) or its label object from ``_initial_contents``;
            updated in place to per-root content.
        labelled_size: per node, its number of labelled voxels (a node holds one label); updated
            in place to per-root sizes.

    Returns:
        (positive_counts, negative_counts): per forest edge, Python ints.

    The hot loop of this module, hence plain lists and local names. Per root: ``tree_size`` (nodes
    in its tree, for union by size), ``labelled_size`` (voxels with a non-zero label) and ``content``:
    None for no labelled voxels, the shared label object when all labelled voxels share one label,
    or a dict label -> count otherwise.
    """
    parent = list(range(len(content)))
    tree_size = [1] * len(content)
    positive_counts = [0] * len(edge_ends_a)
    negative_counts = [0] * len(edge_ends_a)
    dict_type = dict

    # root_a and root_b start as the edge's ends and are walked up to their roots in place.
    for index, (root_a, root_b) in enumerate(zip(edge_ends_a, edge_ends_b)):
        # Path halving: every visited node skips to its grandparent.
        up = parent[root_a]
        while up != root_a:
            parent[root_a] = root_a = parent[up]
            up = parent[root_a]
        up = parent[root_b]
        while up != root_b:
            parent[root_b] = root_b = parent[up]
            up = parent[root_b]
        # Forest edges always join two different components, so root_a != root_b here.
        if tree_size[root_a] < tree_size[root_b]:
            root_a, root_b = root_b, root_a
        parent[root_b] = root_a
        tree_size[root_a] += tree_size[root_b]

        content_a = content[root_a]
        content_b = content[root_b]
        # The common case inside objects: both sides hold only the same label (or nothing).
        if content_a is content_b:
            if content_a is not None:
                size_a = labelled_size[root_a]
                size_b = labelled_size[root_b]
                positive_counts[index] = size_a * size_b
                labelled_size[root_a] = size_a + size_b
            continue
        if content_b is None:
            continue
        size_b = labelled_size[root_b]
        if content_a is None:
            content[root_a] = content_b
            labelled_size[root_a] = size_b
            continue
        size_a = labelled_size[root_a]
        labelled_size[root_a] = size_a + size_b

        if type(content_a) is not dict_type:
            if type(content_b) is not dict_type:
                content[root_a] = {content_a: size_a, content_b: size_b}
                negative_counts[index] = size_a * size_b
                continue
            # Keep the dict, add the single label into it.
            content_a, content_b = content_b, content_a
            content[root_a] = content_a
            single_label_size = size_a
        elif type(content_b) is dict_type:
            # Merge the smaller histogram into the larger one.
            if len(content_b) > len(content_a):
                content_a, content_b = content_b, content_a
                content[root_a] = content_a
            same_label_pairs = 0
            get = content_a.get
            for label, count_b in content_b.items():
                count_a = get(label, 0)
                content_a[label] = count_a + count_b
                same_label_pairs += count_a * count_b
            positive_counts[index] = same_label_pairs
            negative_counts[index] = size_a * size_b - same_label_pairs
            continue
        else:
            single_label_size = size_b
        # Here content_a is a dict and content_b a single label held by single_label_size voxels.
        count_a = content_a.get(content_b, 0)
        content_a[content_b] = count_a + single_label_size
        positive_counts[index] = count_a * single_label_size
        negative_counts[index] = size_a * size_b - count_a * single_label_size

    return positive_counts, negative_counts


def malis_weights(affinities, labels, *, constrained: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, the labelled voxel pairs whose maximin edge it is.

    Args:
        affinities: float (3, z, y, x) nearest-neighbour affinities in [0, 1] (see module docs
            for the channel convention and the tie rule).
        labels: integer (z, y, x) groundtruth; 0 = not counted.
        constrained: if True (Funke et al. 2017), positive counts come from a pass with every
            groundtruth cut edge (labels differ, or 0 at either end) set to 0 and negative counts
            from a pass with every groundtruth merge edge (same non-zero label at both ends) set to
            1. If False (Turaga et al. 2009), one pass on the affinities as given gives both.

    Returns:
        (positive_counts, negative_counts): float64 (3, z, y, x). ``positive_counts[e]`` is the
        number of pairs of voxels with the same non-zero label whose maximin edge is e,
        ``negative_counts[e]`` the number with two different non-zero labels. Non-edges (index 0
        along their axis) are 0.

    Raises:
        ValueError: if labels are not 3D integers, affinities do not have shape
            (3,) + labels.shape, or contain non-finite values or values outside [0, 1].
    """
    affinities, labels = _validate(affinities, labels)
    flat_index, voxel, neighbour = _grid_edges(labels.shape)
    flat_labels = labels.ravel()
    edge_values = affinities.ravel()[flat_index]

    positive_counts = np.zeros(affinities.size, dtype=np.float64)
    negative_counts = np.zeros(affinities.size, dtype=np.float64)
    if not constrained:
        positive, negative = _maximin_pair_counts(edge_values, voxel, neighbour, flat_labels)
    else:
        voxel_labels = flat_labels[voxel]
        groundtruth_merges = (voxel_labels == flat_labels[neighbour]) & (voxel_labels != 0)
        positive, _ = _maximin_pair_counts(np.where(groundtruth_merges, edge_values, 0.0), voxel, neighbour, flat_labels)
        _, negative = _maximin_pair_counts(
            np.where(groundtruth_merges, 1.0, edge_values),
            voxel,
            neighbour,
            flat_labels,
            negative_only=True,
        )
    positive_counts[flat_index] = positive
    negative_counts[flat_index] = negative
    return positive_counts.reshape(affinities.shape), negative_counts.reshape(affinities.shape)


def malis_loss(affinities, labels, *, constrained: bool = True) -> tuple[float, np.ndarray]:
    """MALIS loss of affinities against a groundtruth labeling, and its gradient.

    loss = (sum_e positive_e * (1 - a_e)^2 + negative_e * a_e^2) / max(1, number of counted pairs)

    with the counts of :func:`malis_weights` (same ``constrained`` switch) and ``a_e`` the
    affinities as given, also in the constrained case (the clamps only select maximin edges). The
    number of counted pairs is ``positive_counts.sum() + negative_counts.sum()``.

    Args:
        affinities: float (3, z, y, x) nearest-neighbour affinities in [0, 1].
        labels: integer (z, y, x) groundtruth; 0 = not counted.
        constrained: Funke et al. 2017 two-pass counts (True) or Turaga et al. 2009 (False).

    Returns:
        (loss, gradient): the loss as a float, and d loss / d affinities as float64
        (3, z, y, x), taken with the counts held constant: they are piecewise constant in the
        affinities and change only where the edge order does. Zero on non-edges.

    Raises:
        ValueError: as :func:`malis_weights`.
    """
    affinities, labels = _validate(affinities, labels)
    positive_counts, negative_counts = malis_weights(affinities, labels, constrained=constrained)
    normaliser = max(1.0, positive_counts.sum() + negative_counts.sum())
    loss = (positive_counts * (1.0 - affinities) ** 2 + negative_counts * affinities**2).sum()
    gradient = (2.0 / normaliser) * (negative_counts * affinities - positive_counts * (1.0 - affinities))
    return float(loss / normaliser), gradient
