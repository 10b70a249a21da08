import numpy as np
import pytest
from bioimage_cpp.segmentation import label

from emflow.blocking import Blocking, Box
from emflow.boundaries import boundaries_from_labels
from emflow.evaluation import evaluate
from emflow.labels import relabel_consecutive
from emflow.stitching import (
    MODES,
    face_merges,
    face_slicings,
    faces,
    grown_box,
    multicut_block_segmenter,
    overlap_statistics,
    relabel_block,
    stitch_blocks,
    stitch_mapping,
)

BLOCK_SHAPE, OVERLAP = (32, 64, 64), (8, 8, 8)


@pytest.fixture(scope="module")
def multicut_results(flyem_crop):
    """Whole-crop multicut and the stitched multicuts of 8 blocks, on a GT-derived boundary map."""
    segmenter = multicut_block_segmenter(boundaries_from_labels(flyem_crop["neuron_ids"], noise=0.1))
    whole = segmenter(Box((0, 0, 0), flyem_crop["neuron_ids"].shape))
    stitched = {mode: stitch_blocks(whole.shape, BLOCK_SHAPE, OVERLAP, segmenter, mode=mode) for mode in MODES}
    return whole, stitched


def test_stitched_multicut_matches_whole_volume(multicut_results, flyem_crop):
    """Measured: whole 0.0232, medium 0.0233, aggressive 0.0233, conservative 0.381 (splits where blocks disagree)."""
    whole, stitched = multicut_results
    groundtruth = flyem_crop["neuron_ids"]
    whole_metrics = evaluate(whole, groundtruth)
    metrics = {mode: evaluate(segmentation, groundtruth) for mode, segmentation in stitched.items()}
    for mode in ("medium", "aggressive"):
        assert metrics[mode]["adapted_rand_error"] < whole_metrics["adapted_rand_error"] + 0.005
    # Conservative splits, aggressive merges: the modes are ordered.
    segments = [len(np.unique(stitched[mode])) for mode in MODES]
    assert segments == sorted(segments, reverse=True) and segments[0] > segments[-1]
    assert metrics["conservative"]["voi_merge"] <= metrics["medium"]["voi_merge"] <= metrics["aggressive"]["voi_merge"]
    assert metrics["conservative"]["voi_split"] >= metrics["medium"]["voi_split"] >= metrics["aggressive"]["voi_split"]
    for segmentation in stitched.values():
        assert segmentation.dtype == np.uint64
        assert np.array_equal(np.unique(segmentation), np.arange(1, segmentation.max() + 1))


def test_groundtruth_blocks_stitch_back_to_groundtruth(flyem_crop):
    """With the groundtruth as per-block segmenter, medium and aggressive stitching give it back
    without a false merge, up to pieces of one neuron that meet only outside the crop (and one
    that crosses between blocks only diagonally); conservative leaves branching neurons split."""
    groundtruth = flyem_crop["neuron_ids"]

    def segmenter(box):
        return groundtruth[box.slicing]

    components = label(groundtruth, connectivity=1)
    for mode in ("medium", "aggressive"):
        metrics = evaluate(stitch_blocks(groundtruth.shape, BLOCK_SHAPE, OVERLAP, segmenter, mode=mode), groundtruth)
        assert metrics["rand_precision"] == 1.0 and metrics["adapted_rand_error"] < 0.001
    conservative = evaluate(stitch_blocks(groundtruth.shape, BLOCK_SHAPE, OVERLAP, segmenter, mode="conservative"), groundtruth)
    assert conservative["rand_precision"] == 1.0 and conservative["adapted_rand_error"] > 0.1
    assert len(np.unique(components)) > len(np.unique(groundtruth))


def slab_of_groundtruth(flyem_crop):
    """The groundtruth in the slab between blocks 3 and 7 (along z; 12 neurons, the most of the
    crop's faces), and the two largest neurons that each cross it in one piece and do not touch
    each other there."""
    groundtruth = flyem_crop["neuron_ids"]
    blocking = Blocking(groundtruth.shape, BLOCK_SHAPE)
    lower_slicing, _ = face_slicings(blocking, 3, 7, OVERLAP)
    lower_box, _ = grown_box(blocking, 3, OVERLAP)
    slab = relabel_consecutive(groundtruth[lower_box.slicing][lower_slicing])[0]
    identity = overlap_statistics(slab, slab)
    one_piece = identity.pairs[identity.pair_regions == 1, 0]
    by_size = one_piece[np.argsort(identity.pair_voxels[identity.pair_regions == 1])[::-1]]
    first, second = next((a, b) for a in by_size for b in by_size if a != b and not _touch(slab == a, slab == b))
    assert (slab == second).sum() > 500
    return slab, first, second


def _touch(left, right):
    return any(
        (np.take(left, range(size - 1), axis=axis) & np.take(right, range(1, size), axis=axis)).any()
        or (np.take(right, range(size - 1), axis=axis) & np.take(left, range(1, size), axis=axis)).any()
        for axis, size in enumerate(left.shape)
    )


def test_conservative_refuses_a_pair_meeting_in_two_regions(flyem_crop):
    """Both blocks merged two neurons that do not touch in the slab: the merged pair meets in two
    disconnected regions, which conservative stitching does not join and medium does."""
    slab, first, second = slab_of_groundtruth(flyem_crop)
    merged = np.where(slab == second, first, slab)
    statistics = overlap_statistics(merged, merged)
    row = np.flatnonzero((statistics.pairs == [first, first]).all(axis=1))[0]
    assert statistics.pair_regions[row] == 2
    conservative = face_merges(statistics, "conservative").tolist()
    assert [first, first] not in conservative
    # The neurons that cross the slab in one piece all join.
    one_piece = statistics.pairs[statistics.pair_regions == 1].tolist()
    assert len(one_piece) >= 4 and sorted(conservative) == sorted(one_piece)
    assert [first, first] in face_merges(statistics, "medium").tolist()


def test_conservative_refuses_an_object_with_two_partners(flyem_crop):
    """The lower block merged two neurons the upper one keeps apart: conservative joins neither,
    medium the larger, aggressive both."""
    slab, first, second = slab_of_groundtruth(flyem_crop)
    merged = np.where(slab == second, first, slab)
    statistics = overlap_statistics(merged, slab)
    merges = {mode: face_merges(statistics, mode).tolist() for mode in MODES}
    assert [first, first] not in merges["conservative"] and [first, second] not in merges["conservative"]
    assert [first, first] in merges["medium"] and [first, second] not in merges["medium"]
    assert [first, first] in merges["aggressive"] and [first, second] in merges["aggressive"]
    # Neurons the two blocks agree on join in every mode.
    assert len(merges["conservative"]) >= 4


def test_relabel_block_puts_inner_ids_first():
    labels = np.zeros((4, 4, 4), dtype=np.uint32)
    labels[0] = 7  # outside the inner box
    labels[1:3] = 5
    labels[3] = 9
    inner = Box((1, 0, 0), (3, 4, 4))
    relabelled, inner_count, total_count = relabel_block(labels, inner)
    assert (inner_count, total_count) == (1, 3)
    assert (relabelled[1:3] == 1).all() and (relabelled[0] == 2).all() and (relabelled[3] == 3).all()


def test_stitch_mapping_numbers_groups_by_first_present_object():
    # Block 0: ids 1, 2 inner, 3 outside; block 1: id 1 inner, 2 outside.
    mapping = stitch_mapping([2, 1], [3, 2], np.array([[0, 1, 2]]), [np.array([[2, 1], [3, 2]], dtype=np.uint64)])
    assert mapping[0].tolist() == [0, 1, 2, 0]
    assert mapping[1].tolist() == [0, 2, 0]


def test_one_block_needs_no_stitching(flyem_crop):
    groundtruth = flyem_crop["neuron_ids"][:16, :32, :32]
    segmentation = stitch_blocks(groundtruth.shape, groundtruth.shape, OVERLAP, lambda box: groundtruth[box.slicing])
    assert evaluate(segmentation, groundtruth)["adapted_rand_error"] == 0
    assert [lut.tolist() for lut in stitch_mapping([2], [2], faces(Blocking((4, 4, 4), (4, 4, 4))), [])] == [[0, 1, 2]]


def test_faces_of_a_blocking():
    blocking = Blocking((64, 128, 128), BLOCK_SHAPE)
    rows = faces(blocking)
    assert len(rows) == 12 and rows.dtype == np.int64
    for lower, upper, axis in rows:
        difference = np.subtract(blocking.block_grid_position(upper), blocking.block_grid_position(lower))
        assert difference.tolist() == [int(a == axis) for a in range(3)]
        lower_slicing, upper_slicing = face_slicings(blocking, lower, upper, OVERLAP)
        assert [s.stop - s.start for s in lower_slicing] == [s.stop - s.start for s in upper_slicing]
        assert lower_slicing[axis].stop - lower_slicing[axis].start == 2 * OVERLAP[axis]


def test_rejects_unknown_mode(flyem_crop):
    slab, _, _ = slab_of_groundtruth(flyem_crop)
    with pytest.raises(ValueError, match="mode"):
        face_merges(overlap_statistics(slab, slab), "reckless")
