"""emflow.evaluation against skimage.metrics on real EM data, plus the metrics' defining properties."""

import math

import numpy as np
import pytest
import skimage.measure
import skimage.metrics
import tifffile
import zarr

from emflow import evaluation
from emflow.blocking import Blocking
from emflow.evaluation import adapted_rand_error, contingency_table, evaluate, variation_of_information


def _with_unlabelled_boundaries(neuron_ids: np.ndarray) -> np.ndarray:
    """GT with 0 on voxels whose +z/+y/+x neighbour has another id, like GT with unlabelled membranes."""
    groundtruth = neuron_ids.copy()
    for axis in range(neuron_ids.ndim):
        front = [slice(None)] * neuron_ids.ndim
        back = [slice(None)] * neuron_ids.ndim
        front[axis], back[axis] = slice(None, -1), slice(1, None)
        groundtruth[tuple(front)][neuron_ids[tuple(front)] != neuron_ids[tuple(back)]] = 0
    return groundtruth


@pytest.fixture(scope="module")
def flyem(flyem_crop):
    """Oversegmentation and GT (neuron ids, and the same with boundary voxels unlabelled)."""
    return {
        "segmentation": flyem_crop["oversegmentation"],
        "groundtruth": flyem_crop["neuron_ids"],
        "groundtruth_with_zeros": _with_unlabelled_boundaries(flyem_crop["neuron_ids"]),
    }


@pytest.fixture(scope="module")
def isbi_slice(data_dir):
    """One 512x512 ISBI slice: GT instances (0 = membrane) and a crude segmentation of the raw."""
    groundtruth = tifffile.imread(data_dir / "isbi2012" / "train-labels-instances-2d.tif", key=3)
    raw = tifffile.imread(data_dir / "isbi2012" / "train-volume.tif", key=3)
    segmentation = skimage.measure.label(raw > 120, connectivity=1)
    return segmentation, groundtruth


def _skimage_metrics(segmentation, groundtruth, ignore_labels):
    split, merge = skimage.metrics.variation_of_information(groundtruth, segmentation, ignore_labels=ignore_labels)
    error, skimage_precision, skimage_recall = skimage.metrics.adapted_rand_error(
        image_true=groundtruth, image_test=segmentation, ignore_labels=ignore_labels
    )
    # skimage returns precision and recall swapped (scikit-image issue #6485).
    return (split, merge), (error, skimage_recall, skimage_precision)


@pytest.mark.parametrize("groundtruth_key", ["groundtruth", "groundtruth_with_zeros"])
@pytest.mark.parametrize("ignore_labels", [(), (0,)])
def test_matches_skimage_on_flyem(flyem, groundtruth_key, ignore_labels):
    segmentation, groundtruth = flyem["segmentation"], flyem[groundtruth_key]
    expected_voi, expected_rand = _skimage_metrics(segmentation, groundtruth, ignore_labels)

    voi = variation_of_information(segmentation, groundtruth, ignore_labels=ignore_labels)
    rand = adapted_rand_error(segmentation, groundtruth, ignore_labels=ignore_labels)

    np.testing.assert_allclose(voi, expected_voi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rand, expected_rand, rtol=1e-10, atol=1e-12)
    # A real oversegmentation: splits dominate merges, and precision beats recall.
    assert voi[0] > 1.0 > voi[1] > 0
    assert rand[1] > rand[2]


def test_matches_skimage_on_isbi_2d(isbi_slice):
    segmentation, groundtruth = isbi_slice
    expected_voi, expected_rand = _skimage_metrics(segmentation, groundtruth, (0,))

    np.testing.assert_allclose(variation_of_information(segmentation, groundtruth, ignore_labels=(0,)), expected_voi, rtol=1e-10)
    np.testing.assert_allclose(adapted_rand_error(segmentation, groundtruth), expected_rand, rtol=1e-10)


def test_evaluate_ignores_groundtruth_zero_like_skimage(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    (split, merge), (error, precision, recall) = _skimage_metrics(segmentation, groundtruth, (0,))

    metrics = evaluate(segmentation, groundtruth)

    assert set(metrics) == {
        "voi_split",
        "voi_merge",
        "voi_sum",
        "adapted_rand_error",
        "rand_precision",
        "rand_recall",
        "cremi_score",
        "number_of_voxels",
    }
    assert metrics["voi_split"] == pytest.approx(split, rel=1e-10)
    assert metrics["voi_merge"] == pytest.approx(merge, rel=1e-10)
    assert metrics["voi_sum"] == pytest.approx(split + merge, rel=1e-10)
    assert metrics["adapted_rand_error"] == pytest.approx(error, rel=1e-10)
    assert metrics["rand_precision"] == pytest.approx(precision, rel=1e-10)
    assert metrics["rand_recall"] == pytest.approx(recall, rel=1e-10)
    assert metrics["cremi_score"] == pytest.approx(math.sqrt((split + merge) * error), rel=1e-10)
    assert metrics["number_of_voxels"] == np.count_nonzero(groundtruth)
    assert 0 < metrics["number_of_voxels"] < groundtruth.size
    # The zeros really are dropped: scoring them as a segment gives a different result.
    assert variation_of_information(segmentation, groundtruth)[0] != pytest.approx(split)


def test_perfect_segmentation_scores_zero_whatever_the_ids(flyem):
    groundtruth = flyem["groundtruth_with_zeros"]
    # Same partition under huge, shuffled uint64 ids; GT-0 voxels form one more segment.
    ids = np.unique(groundtruth)
    new_ids = np.random.default_rng(0).permutation(ids.size).astype(np.uint64) + np.uint64(2**60)
    segmentation = new_ids[np.searchsorted(ids, groundtruth)]

    metrics = evaluate(segmentation, groundtruth)

    assert metrics["voi_split"] == 0 and metrics["voi_merge"] == 0
    assert metrics["adapted_rand_error"] == 0 and metrics["cremi_score"] == 0
    assert metrics["rand_precision"] == 1 and metrics["rand_recall"] == 1


def test_merging_everything_raises_the_merge_term_only(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth"]
    merged = np.ones_like(segmentation)

    oversegmented = evaluate(segmentation, groundtruth)
    merged_metrics = evaluate(merged, groundtruth)

    assert merged_metrics["voi_merge"] > oversegmented["voi_merge"] + 1.0
    assert merged_metrics["voi_split"] == 0
    assert merged_metrics["rand_recall"] == 1
    # Not the Rand error itself: one body fills most of this crop, so merging all costs less
    # Rand error than this oversegmentation does; precision still shows the merge.
    assert merged_metrics["rand_precision"] < 0.6 < 0.9 < oversegmented["rand_precision"]


def test_splitting_everything_raises_the_split_term_only(flyem):
    groundtruth = flyem["groundtruth"][:8, :32, :32]
    every_voxel_alone = np.arange(groundtruth.size, dtype=np.uint64).reshape(groundtruth.shape)

    split, merge = variation_of_information(every_voxel_alone, groundtruth)
    error, precision, recall = adapted_rand_error(every_voxel_alone, groundtruth)

    assert merge == 0 and split > 5
    # No pair of voxels is together in the segmentation: nothing merged, nothing recalled.
    assert (error, precision, recall) == (1.0, 1.0, 0.0)


def test_huge_ids_give_identical_results(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    shifted = segmentation.astype(np.uint64) * np.uint64(2**40) + np.uint64(2**63)

    assert evaluate(shifted, groundtruth) == evaluate(segmentation, groundtruth)


def test_contingency_table_is_independent_of_slab_size(flyem, monkeypatch):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    pairs, expected_counts = np.unique(np.stack([groundtruth.ravel(), segmentation.ravel()]), axis=1, return_counts=True)
    kept = pairs[0] != 0

    # 1000 voxels per slab: fewer than one plane, so every plane is its own slab.
    monkeypatch.setattr(evaluation, "_SLAB_VOXELS", 1000)
    table = contingency_table(segmentation, groundtruth, ignore_labels=(0,))

    counts = table.counts.tocoo()
    triples = sorted(zip(table.groundtruth_ids[counts.row], table.segmentation_ids[counts.col], counts.data))
    assert triples == sorted(zip(pairs[0][kept], pairs[1][kept], expected_counts[kept]))
    assert table.counts.dtype == np.int64
    assert table.groundtruth_ids.dtype == groundtruth.dtype
    assert 0 not in table.groundtruth_ids


def test_lazy_arrays_are_read_slab_by_slab(flyem, tmp_path):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    group = zarr.open_group(tmp_path / "volumes.zarr", mode="w")
    group.create_array("segmentation", data=segmentation, chunks=(16, 64, 64))
    group.create_array("groundtruth", data=groundtruth, chunks=(16, 64, 64))

    assert evaluate(group["segmentation"], group["groundtruth"]) == evaluate(segmentation, groundtruth)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        evaluate(np.zeros((4, 5), np.uint32), np.zeros((4, 6), np.uint32))


def test_groundtruth_without_labels_is_an_error():
    with pytest.raises(ValueError, match="no voxels to evaluate"):
        evaluate(np.ones((4, 4), np.uint32), np.zeros((4, 4), np.uint32))


# Blockwise evaluation ------------------------------------------------------------------------------

BLOCK_SHAPE_27 = (22, 43, 43)  # 3 x 3 x 3 blocks of the (64, 128, 128) crop, clipped at the far faces


def _block_tables(segmentation, groundtruth, block_shape=BLOCK_SHAPE_27):
    blocking = Blocking(groundtruth.shape, block_shape)
    boxes = [blocking.block(block_id) for block_id in range(blocking.number_of_blocks)]
    return [evaluation.block_overlaps(segmentation[box.slicing], groundtruth[box.slicing], box.begin) for box in boxes]


def test_blockwise_evaluation_of_27_blocks_equals_in_memory(flyem, monkeypatch):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    tables = _block_tables(segmentation, groundtruth)
    assert len(tables) == 27

    # A batch of one row forces a streamed merge after every block.
    monkeypatch.setattr(evaluation, "_MERGE_BATCH_ROWS", 1)
    merged = evaluation.merge_overlaps(iter(tables))
    blockwise = evaluation.metrics_from_overlaps(merged)
    in_memory = evaluate(segmentation, groundtruth)

    for key, value in in_memory.items():
        assert blockwise[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    # Only the anchors depend on the blocking; a reversed merge order changes nothing at all.
    whole = evaluation.block_overlaps(segmentation, groundtruth)
    for name in ("groundtruth_ids", "segmentation_ids", "counts", "coordinate_sums"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(whole, name))
    for mine, reversed_order in zip(merged, evaluation.merge_overlaps(reversed(tables))):
        np.testing.assert_array_equal(mine, reversed_order)
    assert blockwise["number_of_groundtruth_bodies"] == np.unique(groundtruth[groundtruth != 0]).size
    assert blockwise["number_of_segments"] == np.unique(segmentation[groundtruth != 0]).size


def test_overlaps_of_volume_reads_lazy_arrays_block_by_block(flyem, tmp_path):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    group = zarr.open_group(tmp_path / "volumes.zarr", mode="w")
    group.create_array("segmentation", data=segmentation, chunks=(16, 64, 64))
    group.create_array("groundtruth", data=groundtruth, chunks=(16, 64, 64))

    table = evaluation.overlaps_of_volume(group["segmentation"], group["groundtruth"], (32, 64, 64))

    expected = evaluate(segmentation, groundtruth)
    metrics = evaluation.metrics_from_overlaps(table)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, rel=1e-12)


def test_block_overlaps_against_a_direct_computation(flyem):
    begin = (16, 32, 48)
    box = np.s_[16:32, 32:64, 48:80]
    segmentation, groundtruth = flyem["segmentation"][box], flyem["groundtruth_with_zeros"][box]

    table = evaluation.block_overlaps(segmentation, groundtruth, begin)

    coordinates = np.indices(groundtruth.shape).reshape(3, -1).T + begin
    pairs = sorted(set(zip(groundtruth.ravel().tolist(), segmentation.ravel().tolist())))
    assert list(zip(table.groundtruth_ids.tolist(), table.segmentation_ids.tolist())) == pairs
    assert len(pairs) > 20
    for row, (groundtruth_id, segmentation_id) in enumerate(pairs):
        members = coordinates[((groundtruth == groundtruth_id) & (segmentation == segmentation_id)).ravel()]
        assert table.counts[row] == len(members) == table.anchor_counts[row]
        np.testing.assert_array_equal(table.coordinate_sums[row], members.sum(axis=0))
        # The anchor: the member nearest the centroid, the first in C order among equals.
        distances = ((members - members.mean(axis=0)) ** 2).sum(axis=1)
        np.testing.assert_array_equal(table.anchors[row], members[np.flatnonzero(np.isclose(distances, distances.min()))[0]])
    assert table.groundtruth_ids.dtype == table.segmentation_ids.dtype == np.uint64


def test_blockwise_evaluation_with_huge_ids(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    shifted = segmentation.astype(np.uint64) * np.uint64(2**40) + np.uint64(2**63)

    table = evaluation.merge_overlaps(_block_tables(shifted, groundtruth))

    assert evaluation.metrics_from_overlaps(table) == pytest.approx(
        evaluation.metrics_from_overlaps(evaluation.merge_overlaps(_block_tables(segmentation, groundtruth)))
    )
    assert table.segmentation_ids.min() >= 2**63


def _voi_cost_per_voxel(segmentation, groundtruth):
    """Direct: each labelled voxel's share (bits) of the VOI split and merge terms; 0 on unlabelled voxels."""
    labelled = groundtruth != 0
    total = np.count_nonzero(labelled)
    _, pair_index, pair_counts = np.unique(
        np.stack([groundtruth[labelled], segmentation[labelled]]), axis=1, return_inverse=True, return_counts=True
    )
    _, body_index, body_counts = np.unique(groundtruth[labelled], return_inverse=True, return_counts=True)
    _, segment_index, segment_counts = np.unique(segmentation[labelled], return_inverse=True, return_counts=True)
    split, merge = np.zeros(groundtruth.shape), np.zeros(groundtruth.shape)
    split[labelled] = -np.log2(pair_counts[pair_index] / body_counts[body_index]) / total
    merge[labelled] = -np.log2(pair_counts[pair_index] / segment_counts[segment_index]) / total
    return split, merge


def test_block_voi_contributions_against_per_voxel_costs(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    tables = _block_tables(segmentation, groundtruth)
    merged = evaluation.merge_overlaps(tables)

    contributions = evaluation.block_voi_contributions(merged, iter(tables))

    split, merge = _voi_cost_per_voxel(segmentation, groundtruth)
    blocking = Blocking(groundtruth.shape, BLOCK_SHAPE_27)
    expected = [[split[blocking.block(b).slicing].sum(), merge[blocking.block(b).slicing].sum()] for b in range(27)]
    np.testing.assert_allclose(contributions, expected, rtol=1e-10, atol=1e-15)
    metrics = evaluation.metrics_from_overlaps(merged)
    np.testing.assert_allclose(contributions.sum(axis=0), [metrics["voi_split"], metrics["voi_merge"]], rtol=1e-12)
    # The blocks really differ, or the heat map would be blank.
    assert contributions[:, 0].max() > 3 * contributions[:, 0].min()
    stranger = evaluation.block_overlaps(segmentation[:8] + 1, groundtruth[:8])
    with pytest.raises(ValueError, match="not one of the table's blocks"):
        evaluation.block_voi_contributions(merged, [stranger])


def test_segmentation_errors_against_a_direct_computation(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    table = evaluation.merge_overlaps(_block_tables(segmentation, groundtruth))

    errors = evaluation.segmentation_errors(table, resolution=(10, 10, 10), number_of_worst=5)

    labelled = groundtruth != 0
    bodies = np.unique(groundtruth[labelled])
    assert [body["groundtruth_id"] for body in errors["bodies"]] == bodies.tolist()
    for body in errors["bodies"]:
        segments, counts = np.unique(segmentation[groundtruth == body["groundtruth_id"]], return_counts=True)
        order = np.lexsort((segments, -counts))
        assert body["segments"] == np.stack([segments[order], counts[order]], axis=1).tolist()
        assert body["voxels"] == counts.sum()
    merging = [s for s in np.unique(segmentation[labelled]) if np.unique(groundtruth[(segmentation == s) & labelled]).size > 1]
    assert [segment["segmentation_id"] for segment in errors["merging_segments"]] == merging

    split_cost, merge_cost = _voi_cost_per_voxel(segmentation, groundtruth)
    body_split = {body: split_cost[groundtruth == body].sum() for body in bodies}
    worst = sorted(body_split, key=lambda body: (-body_split[body], body))[:5]
    assert [error["groundtruth_id"] for error in errors["worst_splits"]] == worst
    segment_merge = {s: merge_cost[(segmentation == s) & labelled].sum() for s in np.unique(segmentation[labelled])}
    worst = sorted(segment_merge, key=lambda s: (-segment_merge[s], s))[:5]
    assert [error["segmentation_id"] for error in errors["worst_merges"]] == worst

    for error in errors["worst_splits"]:
        assert error["voi_split_bits"] == pytest.approx(body_split[error["groundtruth_id"]], rel=1e-10)
        largest = error["overlaps"][0]
        assert largest["voxels"] == max(count for _, count in errors["bodies"][bodies.tolist().index(error["groundtruth_id"])]["segments"])
        overlap = (groundtruth == error["groundtruth_id"]) & (segmentation == largest["segmentation_id"])
        assert overlap[tuple(error["position_voxel"])]
        assert error["position_nm"] == [10.0 * v for v in error["position_voxel"]]
        np.testing.assert_allclose(error["centroid_voxel"], np.argwhere(overlap).mean(axis=0), rtol=1e-12)
    for error in errors["worst_merges"]:
        assert error["voi_merge_bits"] == pytest.approx(segment_merge[error["segmentation_id"]], rel=1e-10)
        for overlap in error["overlaps"]:
            assert groundtruth[tuple(overlap["position_voxel"])] == overlap["groundtruth_id"]
            assert segmentation[tuple(overlap["position_voxel"])] == error["segmentation_id"]
    assert errors["worst_splits"][0]["number_of_segments"] > 10


# ISBI 2012 scores ----------------------------------------------------------------------------------


def _brute_force_isbi_scores(segmentation, groundtruth):
    """V_rand and V_info of one section by counting pixel pairs (Fiji's N^2 normalisation: ordered
    pairs, a pixel with itself included; segmentation 0 pixels are singletons)."""
    labelled = groundtruth.ravel() != 0
    gt, seg = groundtruth.ravel()[labelled], segmentation.ravel()[labelled]
    same_body = gt[:, None] == gt[None, :]
    same_segment = ((seg[:, None] == seg[None, :]) & (seg[:, None] != 0)) | np.eye(seg.size, dtype=bool)
    together = same_body & same_segment
    rand_split, rand_merge = together.sum() / same_body.sum(), together.sum() / same_segment.sum()
    # Entropies from each pixel's share of the pixels it is grouped with: H = -mean(log share).
    n = seg.size
    h_body = -np.mean(np.log(same_body.sum(axis=1) / n))
    h_segment = -np.mean(np.log(same_segment.sum(axis=1) / n))
    h_joint = -np.mean(np.log(together.sum(axis=1) / n))
    information = h_body + h_segment - h_joint
    info_split, info_merge = information / h_segment, information / h_body
    return {
        "v_rand": 2 * rand_split * rand_merge / (rand_split + rand_merge),
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": 2 * info_split * info_merge / (info_split + info_merge),
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


@pytest.fixture(scope="module")
def isbi_crops(data_dir):
    """Three 48x48 crops of ISBI sections: GT instances (0 = membrane) and a thresholded-raw segmentation
    whose 0 pixels (dark) fall inside GT bodies too."""
    groundtruth = tifffile.imread(data_dir / "isbi2012" / "train-labels-instances-2d.tif", key=range(3))
    raw = tifffile.imread(data_dir / "isbi2012" / "train-volume.tif", key=range(3))
    crop = np.s_[:, 200:248, 300:348]
    segmentation = np.stack([skimage.measure.label(section > 110, connectivity=1) for section in raw[crop]])
    return segmentation, groundtruth[crop]


def test_isbi2012_scores_against_brute_force_pair_counting(isbi_crops):
    segmentation, groundtruth = isbi_crops
    assert np.count_nonzero((segmentation == 0) & (groundtruth != 0)) > 50  # unassigned pixels inside bodies

    scores = evaluation.isbi2012_scores(segmentation, groundtruth)

    expected = [_brute_force_isbi_scores(s, g) for s, g in zip(segmentation, groundtruth)]
    assert scores["number_of_sections"] == 3
    for section, brute_force in zip(scores["sections"], expected):
        assert section == pytest.approx(brute_force, rel=1e-10)
    for key in expected[0]:
        assert scores[key] == pytest.approx(np.mean([e[key] for e in expected]), rel=1e-10)
    assert 0.3 < scores["v_rand"] < 0.99 and 0.3 < scores["v_info"] < 0.99


def test_isbi2012_scores_of_the_groundtruth_itself_and_of_extremes(isbi_crops):
    _, groundtruth = isbi_crops
    perfect = evaluation.isbi2012_scores(groundtruth, groundtruth)
    assert {key: value for key, value in perfect.items() if key.startswith("v_")} == pytest.approx(
        dict.fromkeys(["v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge"], 1.0)
    )
    # One segment for everything merges all bodies: nothing split, everything merged.
    # The chance that two labelled pixels share a body (ordered pairs, self pairs included):
    _, body_sizes = np.unique(groundtruth[0][groundtruth[0] != 0], return_counts=True)
    same_body = (body_sizes / body_sizes.sum()) @ (body_sizes / body_sizes.sum())
    merged = evaluation.isbi2012_scores(np.ones_like(groundtruth[0]), groundtruth[0])
    assert merged["v_rand_split"] == 1.0 and merged["v_rand_merge"] == pytest.approx(same_body, rel=1e-12)
    assert same_body < 0.5
    assert (merged["v_info_split"], merged["v_info_merge"]) == (0.0, 1.0)  # Fiji's H(S) = 0 convention
    # All pixels unassigned: every pixel a singleton, so nothing is merged and only self pairs agree.
    unassigned = evaluation.isbi2012_scores(np.zeros_like(groundtruth[0]), groundtruth[0])
    assert unassigned["v_rand_merge"] == 1.0
    assert unassigned["v_rand_split"] == pytest.approx(1 / body_sizes.sum() / same_body, rel=1e-12)
    with_empty = evaluation.isbi2012_scores(np.stack([groundtruth[0], groundtruth[0]]), np.stack([groundtruth[0], 0 * groundtruth[0]]))
    assert with_empty["sections"][1] is None and with_empty["number_of_sections"] == 1


# Judgement -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, split, merge, expected",
    [
        (0.0, 0.0, 0.0, "perfect: "),
        (0.1, 0.5, 0.1, "good: "),
        (0.1000001, 0.5, 0.1, "fair: "),
        (0.3, 0.1, 0.5, "fair: "),
        (0.31, 0.1, 0.1, "poor: "),
    ],
)
def test_judgement_thresholds(error, split, merge, expected):
    line = evaluation.judgement({"adapted_rand_error": error, "voi_split": split, "voi_merge": merge})
    assert line.startswith(expected)
    assert "\n" not in line


def test_judgement_names_the_dominant_error(flyem):
    metrics = evaluate(flyem["segmentation"], flyem["groundtruth"])
    assert "mostly splits" in evaluation.judgement(metrics)
    assert "mostly merges" in evaluation.judgement({**metrics, "voi_split": 0.1, "voi_merge": 0.3})
    assert "alike" in evaluation.judgement({**metrics, "voi_split": 0.2, "voi_merge": 0.3})
    assert "normalized ERL 0.42" in evaluation.judgement({**metrics, "normalized_erl": 0.42})
