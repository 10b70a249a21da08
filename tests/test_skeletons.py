"""emflow.skeletons: blockwise TEASAR skeletons of real GT bodies, and the expected run length along them."""

from collections import defaultdict

import networkx as nx
import numpy as np
import pytest
import skimage.measure
from bioimage_cpp.skeleton import teasar_labels

from emflow import skeletons as sk
from emflow.blocking import Blocking
from emflow.skeletons import Skeletons, run_lengths, skeleton_metrics
from emflow.storage.skeletons import read_skeletons, write_skeletons

RESOLUTION = (10.0, 10.0, 10.0)
BLOCK_SHAPE_27 = (22, 43, 43)


@pytest.fixture(scope="module")
def groundtruth_skeletons(flyem_crop):
    """Skeletons of every GT body of the crop, computed in 27 blocks and stitched."""
    return sk.skeletonize_blockwise(flyem_crop["neuron_ids"], BLOCK_SHAPE_27, RESOLUTION)


def _edge_set(nodes, edges):
    return {tuple(sorted((tuple(nodes[u]), tuple(nodes[v])))) for u, v in edges}


def test_blockwise_skeletons_are_stitched_trees_inside_their_bodies(flyem_crop, groundtruth_skeletons):
    groundtruth = flyem_crop["neuron_ids"]
    skeletons = groundtruth_skeletons
    voxels = sk.node_voxels(skeletons, RESOLUTION)

    np.testing.assert_array_equal(groundtruth[tuple(voxels.T)], skeletons.skeleton_ids)
    assert len(np.unique(voxels, axis=0)) == len(voxels)
    # Edges join 26-neighbours: paths run through voxels, also across block faces.
    assert np.abs(voxels[skeletons.edges[:, 0]] - voxels[skeletons.edges[:, 1]]).max() == 1
    assert (skeletons.edges[:, 0] < skeletons.edges[:, 1]).all()
    bodies = np.unique(groundtruth[groundtruth != 0])
    np.testing.assert_array_equal(np.unique(skeletons.skeleton_ids), bodies)
    for body in bodies:
        nodes = np.flatnonzero(skeletons.skeleton_ids == body)
        graph = nx.Graph()
        graph.add_nodes_from(nodes)
        graph.add_edges_from(skeletons.edges[np.isin(skeletons.edges[:, 0], nodes)])
        # One tree per 26-connected piece of the body: the blocks' fragments joined, without cycles.
        pieces = skimage.measure.label(groundtruth == body, connectivity=3).max()
        assert nx.number_connected_components(graph) == pieces, body
        assert nx.is_forest(graph)


def test_one_block_gives_in_core_teasar(flyem_crop):
    groundtruth = flyem_crop["neuron_ids"][:32, :64, :64]
    skeletons = sk.skeletonize_blockwise(groundtruth, groundtruth.shape, RESOLUTION)

    in_core = teasar_labels(groundtruth, spacing=RESOLUTION)

    assert sorted(in_core) == np.unique(skeletons.skeleton_ids).tolist()
    for body, (vertices, edges, _) in in_core.items():
        mine = skeletons.skeleton_ids == body
        offset = np.flatnonzero(mine)[0]
        own_edges = skeletons.edges[np.isin(skeletons.edges[:, 0], np.flatnonzero(mine))] - offset
        assert _edge_set(skeletons.nodes[mine], own_edges) == _edge_set(vertices, edges)


def test_fragments_round_trip_through_flat_arrays(flyem_crop):
    groundtruth = flyem_crop["neuron_ids"]
    blocking = Blocking(groundtruth.shape, BLOCK_SHAPE_27)
    region = sk.skeleton_block_region(blocking, 13)  # the middle block: every face is open
    assert region.shape == tuple(b + 1 for b in BLOCK_SHAPE_27)
    fragments = sk.block_skeleton_fragments(groundtruth[region.slicing], blocking.block(13), groundtruth.shape, RESOLUTION)

    restored = sk.fragments_from_arrays(sk.fragments_to_arrays(fragments))

    assert list(restored) == sorted(fragments) and len(fragments) >= 3
    for label, parts in fragments.items():
        for mine, theirs in zip(restored[label], parts):
            np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ValueError, match="region"):
        sk.block_skeleton_fragments(groundtruth[blocking.block(13).slicing], blocking.block(13), groundtruth.shape, RESOLUTION)


def test_node_segments_read_block_by_block(flyem_crop, groundtruth_skeletons):
    segmentation = flyem_crop["oversegmentation"]
    voxels = sk.node_voxels(groundtruth_skeletons, RESOLUTION)
    outside = np.array([[-1, 0, 0], [0, 0, 128]])

    segments = sk.node_segments(segmentation, np.concatenate([voxels, outside]), (32, 64, 64))

    np.testing.assert_array_equal(segments[:-2], segmentation[tuple(voxels.T)])
    assert segments[-2:].tolist() == [0, 0]


def test_expected_run_length_of_a_hand_computed_forest():
    # Four bodies (nm); node segments below each node.
    #   body 1: x = 0, 10, 20, 30, 40 (y = 0)          segments 5 5 5 6 6, edges of 10 nm
    #   body 2: x = 0, 30, 60 (y = 100)                segments 7 7 0, edges of 30 nm
    #   body 3: x = 0, 50 (y = 200)                    segments 6 6, one edge of 50 nm
    #   body 4: x = 0, 20, 40, 60, 80, 100 (y = 300)   segments 8 8 9 8 8 8, edges of 20 nm,
    #           and a branch from x = 40 to (y = 340, x = 40), segment 9, 40 nm
    # Segment 6 holds nodes of bodies 1 and 3, so it is a merger and its edges count as merged.
    # Runs (connected correct edges): body 1 x 0-20 (20 nm); body 2 x 0-30 (30 nm); body 4 x 0-20
    # (20 nm), x 60-100 (40 nm, segment 8 again but a run of its own) and the branch (40 nm).
    # Split edges: body 1 x 20-30, body 4 x 20-40 and 40-60; omitted: body 2 x 30-60 (segment 0).
    # L = 40 + 60 + 50 + 140 = 290 nm; ERL = (20^2 + 30^2 + 20^2 + 40^2 + 40^2) / 290 = 4900 / 290.
    coordinates = (
        [(0, 0, x) for x in (0, 10, 20, 30, 40)]
        + [(0, 100, x) for x in (0, 30, 60)]
        + [(0, 200, x) for x in (0, 50)]
        + [(0, 300, x) for x in (0, 20, 40, 60, 80, 100)]
        + [(0, 340, 40)]
    )
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (10, 11), (11, 12), (12, 13), (13, 14), (14, 15), (12, 16)]
    skeleton_ids = [1] * 5 + [2] * 3 + [3] * 2 + [4] * 7
    segments = [5, 5, 5, 6, 6, 7, 7, 0, 6, 6, 8, 8, 9, 8, 8, 8, 9]
    skeletons = Skeletons(np.array(coordinates, float), np.array(edges), np.array(skeleton_ids, np.uint64))

    runs = run_lengths(skeletons, np.array(segments, np.uint64))

    assert runs["expected_run_length_nm"] == pytest.approx(4900 / 290, rel=1e-14)
    assert runs["skeleton_length_nm"] == pytest.approx(290)
    assert (runs["correct_edges"], runs["split_edges"], runs["merged_edges"], runs["omitted_edges"]) == (7, 3, 2, 1)
    # Splits: body 1 in segments {5, 6}, body 4 in {8, 9}; merges: segment 6 holds bodies {1, 3}.
    assert (runs["skeleton_splits"], runs["skeleton_merges"], runs["merging_segments"]) == (2, 1, 1)

    metrics = skeleton_metrics(skeletons, np.array(segments, np.uint64))
    # Perfect segmentation: every body one run: (40^2 + 60^2 + 50^2 + 140^2) / 290.
    assert metrics["gt_expected_run_length_nm"] == pytest.approx((40**2 + 60**2 + 50**2 + 140**2) / 290, rel=1e-14)
    assert metrics["normalized_erl"] == pytest.approx(4900 / (40**2 + 60**2 + 50**2 + 140**2), rel=1e-14)
    assert metrics["number_of_skeletons"] == 4


def _brute_force_erl(skeletons, segments):
    """ERL by walking the edges in Python with networkx: an independent reading of the definition."""
    bodies_of_segment = defaultdict(set)
    for node, segment in enumerate(segments.tolist()):
        if segment != 0:
            bodies_of_segment[segment].add(int(skeletons.skeleton_ids[node]))
    runs, total = nx.Graph(), 0.0
    for u, v in skeletons.edges.tolist():
        length = float(np.sqrt(((skeletons.nodes[u] - skeletons.nodes[v]) ** 2).sum()))
        total += length
        if segments[u] == segments[v] != 0 and len(bodies_of_segment[int(segments[u])]) == 1:
            runs.add_edge(u, v, length=length)
    run_lengths_ = [sum(runs.edges[e]["length"] for e in runs.subgraph(c).edges) for c in nx.connected_components(runs)]
    return sum(length**2 for length in run_lengths_) / total


@pytest.mark.parametrize("segmentation_name", ["oversegmentation", "groundtruth cut at z=32", "two bodies merged"])
def test_expected_run_length_against_brute_force_on_real_skeletons(flyem_crop, groundtruth_skeletons, segmentation_name):
    groundtruth = flyem_crop["neuron_ids"]
    if segmentation_name == "oversegmentation":
        segmentation = flyem_crop["oversegmentation"]
    elif segmentation_name == "groundtruth cut at z=32":
        segmentation = groundtruth.astype(np.uint64) + (np.arange(64) >= 32)[:, None, None] * np.uint64(10**6)
    else:
        bodies, sizes = np.unique(groundtruth, return_counts=True)
        second, third = bodies[np.argsort(-sizes)[1:3]]
        segmentation = np.where(groundtruth == third, second, groundtruth)
    segments = segmentation[tuple(sk.node_voxels(groundtruth_skeletons, RESOLUTION).T)].astype(np.uint64)

    metrics = skeleton_metrics(groundtruth_skeletons, segments)

    assert metrics["expected_run_length_nm"] == pytest.approx(_brute_force_erl(groundtruth_skeletons, segments), rel=1e-12)
    assert metrics["gt_expected_run_length_nm"] == pytest.approx(
        _brute_force_erl(groundtruth_skeletons, groundtruth_skeletons.skeleton_ids), rel=1e-12
    )
    assert 0 < metrics["normalized_erl"] < 1
    if segmentation_name == "two bodies merged":
        assert metrics["skeleton_merges"] == 1 and metrics["skeleton_splits"] == 0
    if segmentation_name == "groundtruth cut at z=32":
        assert metrics["skeleton_merges"] == 0 and metrics["skeleton_splits"] > 0


def test_groundtruth_scores_a_normalized_erl_of_one(groundtruth_skeletons):
    metrics = skeleton_metrics(groundtruth_skeletons, groundtruth_skeletons.skeleton_ids)
    assert metrics["normalized_erl"] == 1.0
    assert metrics["skeleton_merges"] == metrics["skeleton_splits"] == metrics["skeleton_split_edges"] == 0
    # One segment for everything merges all bodies: no correct run is left.
    assert skeleton_metrics(groundtruth_skeletons, np.ones_like(groundtruth_skeletons.skeleton_ids))["expected_run_length_nm"] == 0


def test_skeleton_files_round_trip_and_bad_files_are_named(groundtruth_skeletons, tmp_path):
    path = tmp_path / "skeletons.npz"
    write_skeletons(path, groundtruth_skeletons)

    for mine, theirs in zip(read_skeletons(path), groundtruth_skeletons):
        np.testing.assert_array_equal(mine, theirs)

    bad = tmp_path / "bad.npz"
    np.savez(bad, nodes_nm=np.zeros((2, 3)), edges=np.array([[0, 2]]), skeleton_ids=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"bad\.npz.*outside 0\.\.1.*non-zero"):
        read_skeletons(bad)
    np.savez(bad, nodes_nm=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lacks edges, skeleton_ids"):
        read_skeletons(bad)
