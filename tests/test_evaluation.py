"""emflow.evaluation against skimage.metrics on real EM data, plus the metrics' defining properties."""

import math

import numpy as np
import pytest
import skimage.measure
import skimage.metrics
import tifffile
import zarr

from emflow import evaluation
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
    split, merge = skimage.metrics.variation_of_information(
        groundtruth, segmentation, ignore_labels=ignore_labels
    )
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

    np.testing.assert_allclose(
        variation_of_information(segmentation, groundtruth, ignore_labels=(0,)), expected_voi, rtol=1e-10
    )
    np.testing.assert_allclose(adapted_rand_error(segmentation, groundtruth), expected_rand, rtol=1e-10)


def test_evaluate_ignores_groundtruth_zero_like_skimage(flyem):
    segmentation, groundtruth = flyem["segmentation"], flyem["groundtruth_with_zeros"]
    (split, merge), (error, precision, recall) = _skimage_metrics(segmentation, groundtruth, (0,))

    metrics = evaluate(segmentation, groundtruth)

    assert set(metrics) == {
        "voi_split", "voi_merge", "voi_sum", "adapted_rand_error",
        "rand_precision", "rand_recall", "cremi_score", "number_of_voxels",
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
    pairs, expected_counts = np.unique(
        np.stack([groundtruth.ravel(), segmentation.ravel()]), axis=1, return_counts=True
    )
    kept = pairs[0] != 0

    # 1000 voxels per slab: fewer than one plane, so every plane is its own slab.
    monkeypatch.setattr(evaluation, "_SLAB_VOXELS", 1000)
    table = contingency_table(segmentation, groundtruth, ignore_labels=(0,))

    counts = table.counts.tocoo()
    triples = sorted(
        zip(table.groundtruth_ids[counts.row], table.segmentation_ids[counts.col], counts.data)
    )
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
