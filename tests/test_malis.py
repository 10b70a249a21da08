import numpy as np
import pytest
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from emflow.malis import malis_loss, malis_weights

# Offsets of the three affinity channels: each edge joins a voxel to the one before it.
OFFSETS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def _edges(shape):
    """All (flat index into (3,) + shape, voxel, neighbour) edges, by explicit enumeration."""
    edges = []
    for channel, offset in enumerate(OFFSETS):
        for position in np.ndindex(*shape):
            before = tuple(p - o for p, o in zip(position, offset))
            if min(before) < 0:
                continue
            edges.append(
                (
                    np.ravel_multi_index((channel,) + position, (3,) + shape),
                    np.ravel_multi_index(position, shape),
                    np.ravel_multi_index(before, shape),
                )
            )
    return edges


def _groundtruth_merges(labels, edges):
    flat_labels = labels.ravel()
    return np.array([flat_labels[v] == flat_labels[u] != 0 for _, v, u in edges])


def _joining_edges(edge_values, edges, number_of_voxels):
    """(number_of_voxels, number_of_voxels) flat index of the edge that first connects each pair
    when edges are added strongest first; a threshold sweep with connected components, one
    added edge at a time, so nothing is shared with the union-find implementation."""
    order = sorted(range(len(edges)), key=lambda i: (-edge_values[i], edges[i][0]))
    joined_by = np.full((number_of_voxels, number_of_voxels), -1)
    for added in range(1, len(order) + 1):
        active = [edges[i] for i in order[:added]]
        graph = coo_matrix(
            (np.ones(added), ([v for _, v, _ in active], [u for _, _, u in active])),
            shape=(number_of_voxels, number_of_voxels),
        )
        _, component = connected_components(graph, directed=False)
        newly_joined = (component[:, None] == component[None, :]) & (joined_by < 0)
        joined_by[newly_joined] = edges[order[added - 1]][0]
    return joined_by


def _brute_force_weights(affinities, labels, constrained):
    """O(n^2) reference for malis_weights: for every labelled pair its maximin edge."""
    shape = labels.shape
    edges = _edges(shape)
    flat_affinities = affinities.ravel()
    values = np.array([flat_affinities[f] for f, _, _ in edges], dtype=np.float64)
    if constrained:
        merges = _groundtruth_merges(labels, edges)
        positive_values, negative_values = np.where(merges, values, 0.0), np.where(merges, 1.0, values)
    else:
        positive_values = negative_values = values

    flat_labels = labels.ravel()
    positive = np.zeros(affinities.size)
    negative = np.zeros(affinities.size)
    positive_joins = _joining_edges(positive_values, edges, flat_labels.size)
    negative_joins = _joining_edges(negative_values, edges, flat_labels.size)
    for first in range(flat_labels.size):
        for second in range(first + 1, flat_labels.size):
            if flat_labels[first] == 0 or flat_labels[second] == 0:
                continue
            if flat_labels[first] == flat_labels[second]:
                positive[positive_joins[first, second]] += 1
            else:
                negative[negative_joins[first, second]] += 1
    return positive.reshape(affinities.shape), negative.reshape(affinities.shape)


def _brute_force_loss(affinities, positive, negative):
    normaliser = max(1.0, positive.sum() + negative.sum())
    per_edge = list(zip(positive.ravel(), negative.ravel(), affinities.ravel()))
    loss = sum(p * (1 - a) ** 2 + n * a**2 for p, n, a in per_edge)
    gradient = np.array([(-2 * p * (1 - a) + 2 * n * a) / normaliser for p, n, a in per_edge])
    return loss / normaliser, gradient.reshape(affinities.shape)


def _random_problem(seed, shape, ties):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=shape).astype(np.uint32)
    affinities = rng.uniform(size=(3,) + shape)
    if ties:
        # Few distinct values, 0 and 1 among them, so every tie rule matters.
        affinities = np.round(affinities * 3) / 3
    return affinities, labels


def _real_problem(flyem_crop, seed, shape, ties):
    """A tiny corner of real GT (a few objects with pieces, some background) and noisy affinities."""
    rng = np.random.default_rng(seed)
    # A corner where four objects meet; every second voxel in y and x for more of them.
    window = np.s_[40 : 40 + shape[0], 80 : 80 + 2 * shape[1] : 2, 92 : 92 + 2 * shape[2] : 2]
    labels = flyem_crop["neuron_ids"][window].copy()
    labels[rng.uniform(size=shape) < 0.1] = 0
    affinities = _affinities_from_labels(labels, noise=0.4, rng=rng)
    if ties:
        affinities = np.round(affinities * 4) / 4
    return affinities, labels


def _affinities_from_labels(labels, noise=0.0, rng=None):
    """GT affinities (1 inside an object, 0 elsewhere) plus Gaussian noise, clipped to [0, 1]."""
    affinities = np.zeros((3,) + labels.shape)
    for channel, offset in enumerate(OFFSETS):
        here = tuple(slice(o, None) for o in offset)
        before = tuple(slice(None, s - o) for s, o in zip(labels.shape, offset))
        affinities[(channel,) + here] = (labels[here] == labels[before]) & (labels[here] != 0)
    if noise:
        affinities += noise * rng.standard_normal(affinities.shape)
    return np.clip(affinities, 0.0, 1.0)


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_counts_loss_and_gradient_match_brute_force_on_random_labels(constrained, ties, seed):
    affinities, labels = _random_problem(seed, (3, 4, 5), ties)
    if ties:
        assert len(np.unique(affinities)) <= 4
    expected_positive, expected_negative = _brute_force_weights(affinities, labels, constrained)
    positive, negative = malis_weights(affinities, labels, constrained=constrained)
    assert positive.dtype == np.float64 and positive.shape == affinities.shape
    np.testing.assert_array_equal(positive, expected_positive)
    np.testing.assert_array_equal(negative, expected_negative)

    expected_loss, expected_gradient = _brute_force_loss(affinities, expected_positive, expected_negative)
    loss, gradient = malis_loss(affinities, labels, constrained=constrained)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    assert gradient.dtype == np.float64 and gradient.shape == affinities.shape
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_counts_match_brute_force_on_real_labels(flyem_crop, constrained, ties):
    # Real objects make pieces large enough for the negative pass's contraction to matter.
    affinities, labels = _real_problem(flyem_crop, seed=2, shape=(4, 6, 7), ties=ties)
    assert len(np.unique(labels[labels != 0])) >= 3
    expected_positive, expected_negative = _brute_force_weights(affinities, labels, constrained)
    positive, negative = malis_weights(affinities, labels, constrained=constrained)
    np.testing.assert_array_equal(positive, expected_positive)
    np.testing.assert_array_equal(negative, expected_negative)


def test_large_label_ids_and_float32_affinities_give_the_same_counts():
    affinities, labels = _random_problem(3, (3, 4, 5), ties=True)
    big_ids = np.array([0, 2**40 + 5, 7, 2**40], dtype=np.uint64)[labels]
    for constrained in (False, True):
        reference = malis_weights(affinities, labels, constrained=constrained)
        # float32 keeps the order and the ties of these values.
        converted = malis_weights(affinities.astype(np.float32), big_ids, constrained=constrained)
        for counts, expected in zip(converted, reference):
            np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("constrained", [False, True])
def test_gradient_matches_finite_differences(constrained):
    rng = np.random.default_rng(5)
    shape = (3, 4, 5)
    labels = rng.integers(0, 4, size=shape)
    # Distinct values a fixed gap apart, in random order.
    affinities = rng.permutation(np.linspace(0.05, 0.95, 3 * np.prod(shape))).reshape((3,) + shape)
    epsilon = 1e-6
    # The counts are piecewise constant: the step must not reorder any two affinities.
    assert np.diff(np.sort(affinities.ravel())).min() > 4 * epsilon

    _, gradient = malis_loss(affinities, labels, constrained=constrained)
    numeric = np.zeros_like(affinities)
    for index in np.ndindex(*affinities.shape):
        step = np.zeros_like(affinities)
        step[index] = epsilon
        numeric[index] = (
            malis_loss(affinities + step, labels, constrained=constrained)[0]
            - malis_loss(affinities - step, labels, constrained=constrained)[0]
        ) / (2 * epsilon)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-9)
    assert np.abs(gradient).max() > 1e-3
    # Entries at index 0 along their own axis are no edges.
    assert not gradient[0, 0].any() and not gradient[1, :, 0].any() and not gradient[2, :, :, 0].any()


@pytest.mark.parametrize("constrained", [False, True])
def test_counts_cover_every_labelled_pair_once_on_real_data(flyem_crop, constrained):
    rng = np.random.default_rng(0)
    labels = flyem_crop["neuron_ids"][48:56, 48:80, 96:128].copy()
    labels[rng.uniform(size=labels.shape) < 0.05] = 0
    affinities = _affinities_from_labels(labels, noise=0.3, rng=rng)
    positive, negative = malis_weights(affinities, labels, constrained=constrained)

    # The 6-connected grid is connected, so every pair of labelled voxels has a maximin edge.
    object_sizes = np.unique(labels[labels != 0], return_counts=True)[1].astype(np.int64)
    assert len(object_sizes) >= 5
    labelled = int(object_sizes.sum())
    same_label_pairs = int((object_sizes * (object_sizes - 1) // 2).sum())
    assert positive.sum() == same_label_pairs
    assert negative.sum() == labelled * (labelled - 1) // 2 - same_label_pairs
    for counts in (positive, negative):
        assert (counts >= 0).all() and (counts == np.round(counts)).all()
        assert not counts[0, 0].any() and not counts[1, :, 0].any() and not counts[2, :, :, 0].any()


@pytest.mark.parametrize("constrained", [False, True])
def test_one_false_merge_edge_carries_the_pairs_it_merges(flyem_crop, constrained):
    # Each 6-connected piece of a GT object is an object of its own here, so that affinities
    # that are 1 exactly inside objects and 0 elsewhere are perfect.
    neuron_ids = flyem_crop["neuron_ids"][:16, :48, :48]
    labels = np.zeros(neuron_ids.shape, dtype=np.uint32)
    for neuron_id in np.unique(neuron_ids[neuron_ids != 0]):
        pieces, _ = ndimage.label(neuron_ids == neuron_id)
        labels[pieces > 0] = pieces[pieces > 0] + labels.max()
    perfect = _affinities_from_labels(labels)
    assert malis_loss(perfect, labels, constrained=constrained)[0] == 0.0

    # The false merge: the z-edge between the two largest objects that touch along z.
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    upper, lower = labels[1:], labels[:-1]
    touching = np.argwhere((upper != lower) & (upper > 0) & (lower > 0))
    products = sizes[upper[tuple(touching.T)]] * sizes[lower[tuple(touching.T)]]
    z, y, x = touching[np.argmax(products)]
    edge = (0, z + 1, y, x)
    expected = int(products.max())
    assert expected > 10_000

    wrong = perfect.copy()
    wrong[edge] = 0.9
    # Inputs are only read.
    wrong.flags.writeable = labels.flags.writeable = False
    positive, negative = malis_weights(wrong, labels, constrained=constrained)
    # All object-internal edges (1) come first; the false edge then joins two whole objects.
    assert negative[edge] == expected and positive[edge] == 0
    loss, gradient = malis_loss(wrong, labels, constrained=constrained)
    assert loss == pytest.approx(expected * 0.9**2 / (positive.sum() + negative.sum()), rel=1e-12)
    # Every other affinity is already right, so the false merge is the only thing to correct.
    assert gradient[edge] > 0
    assert np.count_nonzero(gradient) == 1


def test_invalid_inputs_are_rejected():
    affinities, labels = _random_problem(0, (3, 4, 5), ties=False)
    with pytest.raises(ValueError, match="shape"):
        malis_weights(affinities[:2], labels)
    with pytest.raises(ValueError, match="3D"):
        malis_weights(affinities[:, 0], labels[0])
    with pytest.raises(ValueError, match="integer"):
        malis_weights(affinities, labels.astype(np.float32))
    not_finite = affinities.copy()
    not_finite[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        malis_loss(not_finite, labels)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        malis_loss(affinities + 1, labels)
