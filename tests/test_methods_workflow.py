"""The segmentation methods as workflows (`[segmentation] method`, `[lifted] source`, `[input] affinities_key`):
each block-wise result against its in-memory reference on the FlyEM crop, kills and reruns of every
new stage, and bad parameters refused with the key named.

Inputs: the crop's groundtruth-derived boundary map, and affinities (nearest neighbours, 3 and 9
voxels along each axis, the shipped model's offsets) of the groundtruth with its boundaries cut out
as 2-voxel membranes, plus Gaussian noise of standard deviation 0.2: a stand-in for CNN predictions
with real neuron shapes that costs no network.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_crash_safety import KillPoint, assert_records_describe_finished_outputs, run_to_end
from workflow_helpers import (
    RESOLUTION,
    as_segment_ids,
    as_segment_volume,
    noisy_groundtruth_affinities,
    read,
    read_node_ids,
    run_cli,
    write_affinities,
    write_config,
    write_inputs,
)

from emflow.affinities import boundaries_from_affinities
from emflow.affinity_statistics import boundary_pair_statistics, long_range_channels, nearest_neighbour_channels, pair_statistics
from emflow.agglomeration import agglomerate
from emflow.blocking import Blocking, Box
from emflow.evaluation import adapted_rand_error
from emflow.lifted_edges import lifted_edges_from_affinities
from emflow.multicut import solve_lifted_multicut
from emflow.mutex_watershed import blockwise_mutex_watershed, mutex_watershed
from emflow.report import images
from emflow.stitching import multicut_block_segmenter, stitch_blocks
from emflow.supervoxels import distance_transform_watershed
from emflow.tasks import preview
from emflow.workflows.segmentation import load_run
from emflow.workflows.summary import run_summary

BLOCK_SHAPE = (32, 64, 64)
OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3], [-9, 0, 0], [0, -9, 0], [0, 0, -9]]
NOISE = 0.2
# The blockwise mutex watershed is not the whole volume's: fragments follow the voxel-level algorithm
# inside blocks only, decisions across them use mean affinities. Measured on these affinities
# (strides (2, 4, 4), min_size 100): adapted Rand error 0.037 between the two, 0.053 (blockwise) and
# 0.042 (in memory) against the groundtruth. Bounds: between, and how much worse blockwise may be.
MUTEX_WATERSHED_BETWEEN = 0.05
MUTEX_WATERSHED_WORSE = 0.02

# Per run: the config sections, and the output arrays that make up its result.
METHODS = {
    "agglomeration": (
        {"segmentation": {"method": "agglomeration"}, "agglomeration": {"thresholds": [0.5, 0.3, 0.7]}},
        (
            "supervoxels",
            "segmentation/s0",
            "segmentation_threshold_0.3/s0",
            "segmentation_threshold_0.7/s0",
            "graph/merges",
            "graph/merge_scores",
        ),
    ),
    "quantile_of_boundaries": (
        {
            "input": {"affinities_key": None, "boundaries_key": "boundaries"},
            "segmentation": {"method": "agglomeration"},
            "agglomeration": {"linkage": "quantile", "quantile": 0.5, "thresholds": [0.55]},
        },
        ("supervoxels", "segmentation/s0", "graph/merges"),
    ),
    "mutex_watershed": ({"segmentation": {"method": "mutex-watershed"}}, ("supervoxels", "segmentation/s0", "graph/node_labels")),
    "lifted_from_affinities": (
        {"lifted": {"source": "affinities"}},
        ("supervoxels", "segmentation/s0", "graph/lifted_edges", "graph/lifted_costs", "graph/node_labels"),
    ),
    "stitching": (
        {"input": {"affinities_key": None, "boundaries_key": "boundaries"}, "segmentation": {"method": "stitching"}},
        ("supervoxels", "segmentation/s0", "graph/node_labels"),
    ),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    path = write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)
    write_affinities(path, noisy_groundtruth_affinities(flyem_crop["neuron_ids"], OFFSETS, NOISE, seed=0), OFFSETS, BLOCK_SHAPE)
    return path


def method_config(folder: Path, inputs: Path, method: str, **extra) -> Path:
    sections = {section: dict(values) for section, values in METHODS[method][0].items()}
    sections["input"] = {"boundaries_key": None, "affinities_key": "affinities", **sections.get("input", {})}
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    return write_config(folder / "config.toml", inputs, folder / "out.zarr", block_shape=BLOCK_SHAPE, **sections)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs) -> dict[str, Path]:
    """An uninterrupted run of each method; its output is `<folder>/out.zarr`."""
    folders = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method)
        assert run_cli("run", method_config(folder, inputs, method), "--workers", "2") == 0, method
        folders[method] = folder
    return folders


def output(runs, method: str) -> Path:
    return runs[method] / "out.zarr"


# --- block-wise results against their in-memory references ------------------------------------


def test_agglomeration_equals_the_in_memory_agglomeration_of_the_same_graph(runs, inputs):
    out = output(runs, "agglomeration")
    supervoxels = read_node_ids(out)
    statistics = pair_statistics(supervoxels, read(inputs, "affinities"), OFFSETS, channels=nearest_neighbour_channels(OFFSETS))
    thresholds = [0.5, 0.3, 0.7]
    expected = agglomerate(int(supervoxels.max()) + 1, statistics, thresholds)
    names = ("segmentation", "segmentation_threshold_0.3", "segmentation_threshold_0.7")
    segments = []
    expected = [as_segment_ids(out, node_labels) for node_labels in expected]
    for name, node_labels in zip(names, expected):
        segmentation = read(out, name)
        assert np.array_equal(segmentation, node_labels[supervoxels]), name
        segments.append(len(np.unique(segmentation)))
    assert segments[1] > segments[0] > segments[2] > 1, "higher thresholds merge more"
    assert np.array_equal(read(out, "graph/node_labels"), expected[0])
    # The merges up to the largest threshold are kept; scores never decrease.
    scores = read(out, "graph/merge_scores")
    assert len(scores) == len(read(out, "graph/merges")) and (np.diff(scores) >= 0).all() and scores.max() < 0.7
    # Every threshold's segmentation is an OME-Zarr label image.
    assert "ome" in zarr.open_group(str(out / "segmentation_threshold_0.7"), mode="r").attrs


def test_agglomeration_of_a_boundary_map_equals_the_in_memory_agglomeration(runs, inputs):
    out = output(runs, "quantile_of_boundaries")
    supervoxels = read_node_ids(out)
    statistics = boundary_pair_statistics(supervoxels, read(inputs, "boundaries"))
    (expected,) = agglomerate(int(supervoxels.max()) + 1, statistics, [0.55], linkage="quantile", quantile=0.5)
    assert np.array_equal(read(out, "segmentation"), as_segment_ids(out, expected)[supervoxels])
    assert len(np.unique(expected)) > 2


def test_blockwise_mutex_watershed_equals_its_in_memory_composition_and_stays_near_the_whole_volume_one(runs, inputs, flyem_crop):
    out = output(runs, "mutex_watershed")
    affinities = read(inputs, "affinities")
    section = load_run(str((runs["mutex_watershed"] / "config.toml").resolve())).config.mutex_watershed
    parameters = {"strides": section.strides, "min_size": section.min_size}
    segmentation, fragments = blockwise_mutex_watershed(affinities, OFFSETS, BLOCK_SHAPE, (9, 9, 9), **parameters)
    assert np.array_equal(read_node_ids(out), fragments), "the fragments stage"
    assert np.array_equal(read(out, "segmentation"), as_segment_volume(out, segmentation)), "the fragment graph's mutex watershed"
    in_memory = mutex_watershed(affinities, OFFSETS, **parameters)
    between = adapted_rand_error(segmentation, in_memory)[0]
    assert between <= MUTEX_WATERSHED_BETWEEN, between
    truth = flyem_crop["neuron_ids"]
    assert adapted_rand_error(segmentation, truth)[0] <= adapted_rand_error(in_memory, truth)[0] + MUTEX_WATERSHED_WORSE


def test_lifted_multicut_from_affinities_equals_the_in_memory_problem_and_solve(runs, inputs):
    out = output(runs, "lifted_from_affinities")
    supervoxels, edges = read_node_ids(out), read(out, "graph/edges")
    number_of_nodes = int(supervoxels.max()) + 1
    long_range = pair_statistics(supervoxels, read(inputs, "affinities"), OFFSETS, channels=long_range_channels(OFFSETS))
    lifted_edges, lifted_costs = lifted_edges_from_affinities(number_of_nodes, edges, long_range, beta=0.5, weighting="size")
    assert len(lifted_edges) > 100 and (lifted_costs > 0).any() and (lifted_costs < 0).any()
    assert np.array_equal(read(out, "graph/lifted_edges"), lifted_edges)
    assert np.array_equal(read(out, "graph/lifted_costs"), lifted_costs)
    expected = solve_lifted_multicut(number_of_nodes, edges, read(out, "graph/edge_costs"), lifted_edges, lifted_costs)
    assert np.array_equal(read(out, "graph/node_labels"), as_segment_ids(out, expected))


def test_stitching_equals_the_in_memory_stitching_of_the_same_block_segmenter(runs, inputs):
    boundaries = read(inputs, "boundaries")

    def segmenter(box: Box) -> np.ndarray:
        block = boundaries[box.slicing]
        supervoxels = distance_transform_watershed(block, resolution=tuple(RESOLUTION))
        return multicut_block_segmenter(block, supervoxels=supervoxels)(Box((0, 0, 0), block.shape))

    expected = stitch_blocks(boundaries.shape, BLOCK_SHAPE, (8, 8, 8), segmenter, mode="medium")
    segmentation = read(output(runs, "stitching"), "segmentation")
    assert np.array_equal(segmentation, as_segment_volume(output(runs, "stitching"), expected))
    # Stitching merged objects across faces: fewer segments than the blocks' objects.
    assert np.unique(segmentation).size - 1 < read_node_ids(output(runs, "stitching")).max()


def _assert_report_shows(out: Path, shown_middle_section: np.ndarray, caption: str) -> None:
    """The run report of the run writing `out` counts the segmentation's segments and previews its
    middle section beside `shown_middle_section`, which the caption names."""
    report_dir = out.parent / f"{out.name}.work" / "report"
    report = json.loads((report_dir / "run_report.json").read_text())
    segmentation = read(out, "segmentation")
    _, voxels = np.unique(segmentation[segmentation != 0], return_counts=True)
    assert report["segments"]["number_of_segments"] == len(voxels) and report["segments"]["largest_voxels"] == voxels.max()
    middle = segmentation.shape[0] // 2
    assert report["figures"]["run_preview.png"].startswith(f"Section z = {middle}: {caption} (left)")
    assert (report_dir / "run_preview.png").read_bytes() == images.rgb_png(images.preview_image(shown_middle_section, segmentation[middle]))


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gets_a_run_report_and_a_summary_counting_its_segments(runs, method, flyem_crop):
    assert run_cli("report", runs[method] / "config.toml") == 0  # the report is off in these runs
    _assert_report_shows(output(runs, method), flyem_crop["raw"][flyem_crop["raw"].shape[0] // 2], "raw data")
    # The summary a run ends with counts each segmentation volume's segments (one per agglomeration threshold).
    counts = run_summary(runs[method] / "config.toml").segments
    volumes = ["segmentation", *(f"segmentation_threshold_{threshold}" for threshold in (0.3, 0.7) if method == "agglomeration")]
    assert sorted(counts) == sorted(volumes)
    for volume in volumes:
        labels = read(output(runs, method), volume)
        assert counts[volume] == np.unique(labels[labels != 0]).size, volume


def test_a_report_without_a_pyramid_level_small_enough_previews_the_middle_of_the_section(runs, flyem_crop, monkeypatch):
    """These runs write no pyramid: with sections wider than the preview's 100 pixels here (1,024
    by default), the report reads and shows their middle 100 x 100 voxels, not every chunk of
    the section (at 10,000 x 10,000 voxels in uint64 chunks of 64 x 128 x 128, 50 GB to decode)."""
    monkeypatch.setattr(preview, "PREVIEW_PIXELS", 100)
    assert run_cli("report", runs["stitching"] / "config.toml") == 0
    out = output(runs, "stitching")
    segmentation = read(out, "segmentation")
    middle, (size_y, size_x) = segmentation.shape[0] // 2, segmentation.shape[1:]
    y, x = slice((size_y - 100) // 2, (size_y - 100) // 2 + 100), slice((size_x - 100) // 2, (size_x - 100) // 2 + 100)
    report_dir = runs["stitching"] / "out.zarr.work" / "report"
    caption = json.loads((report_dir / "run_report.json").read_text())["figures"]["run_preview.png"]
    assert caption.startswith(f"Section z = {middle} (y {y.start}:{y.stop} of {size_y}, x {x.start}:{x.stop} of {size_x}): raw data (left)")
    shown = images.preview_image(flyem_crop["raw"][middle, y, x], segmentation[middle, y, x])
    assert (report_dir / "run_preview.png").read_bytes() == images.rgb_png(shown)


def test_a_mutex_watershed_of_affinities_alone_reports_them_beside_its_segmentation(tmp_path, inputs):
    """Without raw data or a boundary map the preview shows the affinities; the report of such a
    run failed on the boundary map it has not, and the run exited 1 after segmenting."""
    config = method_config(tmp_path, inputs, "mutex_watershed", input={"raw_key": None}, output={"report": True})
    assert run_cli("run", config) == 0
    affinities = np.asarray(zarr.open_array(str(inputs), path="affinities", mode="r"))
    middle = affinities.shape[1] // 2
    nearest = affinities[nearest_neighbour_channels(OFFSETS), middle].mean(axis=0, dtype=np.float32)
    _assert_report_shows(tmp_path / "out.zarr", nearest, "mean nearest-neighbour affinity")


def test_given_predictions_carry_their_offsets_and_are_read_back_as_stored(tmp_path, flyem_crop, small_affinity_model):
    from emflow.storage.models import describe_model
    from emflow.storage.volumes import open_volume, write_volume

    crop = np.s_[:32, :64, :64]
    write_volume(tmp_path / "raw.zarr", "raw", flyem_crop["raw"][crop], resolution=RESOLUTION, chunks=(16, 32, 32))
    predicted = write_config(
        tmp_path / "predict.toml",
        tmp_path / "raw.zarr",
        tmp_path / "predicted.zarr",
        block_shape=(16, 32, 32),
        halo=(2, 4, 4),
        input={"boundaries_key": None},
        predict={"model": str(small_affinity_model), "patch_shape": [16, 32, 32], "overlap": [4, 8, 8]},
    )
    assert run_cli("predict", predicted) == 0
    offsets = open_volume(tmp_path / "predicted.zarr", "predictions").attrs["offsets"]
    assert offsets == [list(offset) for offset in describe_model(small_affinity_model).offsets]
    # The predictions given back as affinities, without `affinity_offsets`: read from the attribute.
    given = write_config(
        tmp_path / "given.toml",
        tmp_path / "predicted.zarr",
        tmp_path / "given.zarr",
        block_shape=(16, 32, 32),
        halo=(2, 4, 4),
        input={"boundaries_key": None, "raw_key": None, "affinities_key": "predictions"},
    )
    assert run_cli("run", given) == 0
    # The predictions are stored as uint8 (value * 255) and read back as value / 255.
    stored = read(tmp_path / "predicted.zarr", "predictions")
    assert stored.dtype == np.uint8
    given_boundaries = read(tmp_path / "given.zarr", "boundaries")
    assert np.array_equal(given_boundaries, boundaries_from_affinities(stored.astype(np.float32) / np.float32(255), offsets))
    np.testing.assert_allclose(given_boundaries, read(tmp_path / "predicted.zarr", "boundaries"), rtol=0, atol=1 / 510 + 1e-6)


# --- kills and reruns of every new stage ------------------------------------------------------

# (method, pattern of the write to kill at, occurrence, moment, workers); the id names the stage.
KILL_POINTS = {
    "derive_boundaries-chunk-torn": ("agglomeration", r"^chunk out\.zarr/boundaries/s0/c/", 3, "torn", 2),
    "pair_statistics-partial-torn": ("agglomeration", r"^file out\.zarr\.work/blocks/pair_statistics/", 2, "torn", 1),
    "agglomeration-record-not-renamed": ("agglomeration", r"^file out\.zarr\.work/status/agglomeration\.json$", 1, "before", 1),
    "agglomeration-second-threshold-chunk-written": ("agglomeration", r"^chunk out\.zarr/segmentation_threshold_0\.3/s0/c/", 2, "after", 2),
    "fragments-journal-line-torn": ("mutex_watershed", r"^journal out\.zarr\.work/status/supervoxels/", 3, "torn", 2),
    "mutex_watershed-bundle-written": ("mutex_watershed", r"^file out\.zarr\.work/global/mutex_watershed/", 1, "after", 1),
    "long_range_statistics-journal-line-written": (
        "lifted_from_affinities",
        r"^journal out\.zarr\.work/status/pair_statistics/",
        4,
        "after",
        1,
    ),
    "lifted_edges-table-not-written": ("lifted_from_affinities", r"^chunk out\.zarr/graph/lifted_costs/c/", 1, "before", 1),
    "stitch_segment-partial-torn": ("stitching", r"^file out\.zarr\.work/blocks/supervoxels/\d+\.npy$", 5, "torn", 2),
    "stitch_faces-journal-line-torn": ("stitching", r"^journal out\.zarr\.work/status/stitch_faces/", 2, "torn", 1),
    "stitch-record-torn": ("stitching", r"^file out\.zarr\.work/status/stitch\.json$", 1, "torn", 1),
}


@pytest.mark.parametrize("method, pattern, occurrence, moment, workers", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_kill_in_a_new_stage_then_rerun_gives_the_identical_result(tmp_path, inputs, runs, method, pattern, occurrence, moment, workers):
    config = method_config(tmp_path, inputs, method)
    trace = tmp_path / "trace.txt"
    code, log = run_to_end(config, workers=workers, kill_point=KillPoint(pattern, occurrence, moment, trace))
    assert code == -signal.SIGKILL, f"the run was not killed at write {occurrence} matching {pattern!r} (exit {code}):\n{log}"
    reference = output(runs, method)
    blocking = Blocking(read(reference, "supervoxels").shape, BLOCK_SHAPE)
    assert_records_describe_finished_outputs(tmp_path / "out.zarr", reference, blocking)
    code, log = run_to_end(config, workers=workers)
    assert code == 0, f"the rerun after the kill failed (exit {code}):\n{log}"
    for key in METHODS[method][1]:
        actual, expected = read(tmp_path / "out.zarr", key), read(reference, key)
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape) and actual.tobytes() == expected.tobytes(), key


# --- bad parameters ---------------------------------------------------------------------------

BAD_PARAMETERS = {
    "unknown_method": ({"segmentation": {"method": "watershed"}}, "config key segmentation.method must be one of"),
    "unknown_linkage": (
        {"segmentation": {"method": "agglomeration"}, "agglomeration": {"linkage": "max"}},
        "config key agglomeration.linkage",
    ),
    "quantile_above_one": ({"agglomeration": {"quantile": 1.5}}, "config key agglomeration.quantile must lie in [0, 1]"),
    "no_thresholds": ({"agglomeration": {"thresholds": []}}, "config key agglomeration.thresholds must name at least one"),
    "repeated_thresholds": (
        {"agglomeration": {"thresholds": [0.5, 0.5]}},
        "config key agglomeration.thresholds must be distinct numbers in [0, 1]",
    ),
    "threshold_not_a_number": ({"agglomeration": {"thresholds": ["high"]}}, "config key agglomeration.thresholds must be a list of floats"),
    "stride_zero": ({"mutex_watershed": {"strides": [0, 4, 4]}}, "config key mutex_watershed.strides must be three positive integers"),
    "negative_min_size": ({"mutex_watershed": {"min_size": -1}}, "config key mutex_watershed.min_size must be 0 or more"),
    "halo_larger_than_block": (
        {"segmentation": {"method": "mutex-watershed"}, "mutex_watershed": {"halo": [40, 9, 9]}},
        "config key mutex_watershed.halo [40, 9, 9] is larger than blocking.block_shape [32, 64, 64]",
    ),
    "unknown_stitching_mode": ({"stitching": {"mode": "wild"}}, "config key stitching.mode must be one of"),
    "overlap_zero": ({"stitching": {"overlap": [0, 8, 8]}}, "config key stitching.overlap must be three positive integers"),
    "overlap_larger_than_block": (
        {"segmentation": {"method": "stitching"}, "stitching": {"overlap": [8, 80, 8]}},
        "config key stitching.overlap [8, 80, 8] is larger than blocking.block_shape",
    ),
    "fraction_too_low": ({"stitching": {"fraction": 0.4}}, "config key stitching.fraction must lie in (0.5, 1]"),
    "min_overlap_zero": ({"stitching": {"min_overlap": 0}}, "config key stitching.min_overlap must be at least 1"),
    "stitching_plugin_not_importable": (
        {"stitching": {"function": "no_such_module:segment"}},
        "config key stitching.function",
        "no_such_module",
    ),
    "unknown_lifted_source": ({"lifted": {"source": "oracle"}}, "config key lifted.source must be one of"),
    "mutex_watershed_of_a_boundary_map": (
        {"input": {"affinities_key": None, "boundaries_key": "boundaries"}, "segmentation": {"method": "mutex-watershed"}},
        "config key segmentation.method = 'mutex-watershed' needs affinities",
        "input.affinities_key",
    ),
    "lifted_affinities_of_a_boundary_map": (
        {"input": {"affinities_key": None, "boundaries_key": "boundaries"}, "lifted": {"source": "affinities"}},
        "config key lifted.source = 'affinities' needs affinities",
    ),
    "affinities_without_long_range_channels": (
        {"segmentation": {"method": "mutex-watershed"}, "input": {"affinities_key": "nearest_affinities"}},
        "needs affinities with long-range channels",
        "the affinities have no long-range channel",
    ),
    "boundaries_and_affinities": (
        {"input": {"boundaries_key": "boundaries"}},
        "input.boundaries_key and input.affinities_key are both given",
    ),
    "offsets_without_affinities": (
        {"input": {"affinities_key": None, "boundaries_key": "boundaries", "affinity_offsets": OFFSETS}},
        "config key input.affinity_offsets describes the channels of input.affinities_key",
    ),
    "offsets_without_nearest_neighbours": (
        {"input": {"affinity_offsets": [[-2, 0, 0], [0, -1, 0], [0, 0, -1]] + OFFSETS[3:]}},
        "config key input.affinity_offsets must hold the nearest-neighbour offsets",
        "missing [[-1, 0, 0]]",
    ),
    "offsets_not_integers": (
        {"input": {"affinity_offsets": [[-1.5, 0, 0]] + OFFSETS[1:]}},
        "config key input.affinity_offsets must be a list of non-zero integer",
    ),
    "offsets_not_one_per_channel": (
        {"input": {"affinity_offsets": OFFSETS[:6]}},
        "have 9 channels, but 6 offsets (input.affinity_offsets)",
    ),
    "affinities_without_offsets": (
        {"input": {"affinities_key": "nearest_affinities_without_offsets"}},
        "config key input.affinity_offsets is required",
    ),
    "agglomeration_with_scales": (
        {"segmentation": {"method": "agglomeration"}, "multicut": {"n_scales": 1}},
        "config key multicut.n_scales belongs to",
    ),
    "mutex_watershed_with_lifted_labels": (
        {"segmentation": {"method": "mutex-watershed"}, "input": {"lifted_labels_key": "neuron_ids"}},
        "config key input.lifted_labels_key belongs to segmentation.method = 'multicut'",
    ),
    "mutex_watershed_with_given_supervoxels": (
        {"segmentation": {"method": "mutex-watershed"}, "input": {"supervoxels_key": "oversegmentation"}},
        "config key input.supervoxels_key cannot be combined with segmentation.method = 'mutex-watershed'",
    ),
}


@pytest.fixture(scope="module")
def bad_inputs(inputs):
    """Affinities with the nearest-neighbour channels only: with and without an offsets attribute."""
    group = zarr.open_group(str(inputs), mode="a")
    nearest = read(inputs, "affinities")[:3]
    group.create_array("nearest_affinities", data=nearest, chunks=(3, *BLOCK_SHAPE), overwrite=True).attrs["offsets"] = OFFSETS[:3]
    group.create_array("nearest_affinities_without_offsets", data=nearest, chunks=(3, *BLOCK_SHAPE), overwrite=True)
    return inputs


@pytest.mark.parametrize("sections, fragments", [(case[0], case[1:]) for case in BAD_PARAMETERS.values()], ids=BAD_PARAMETERS.keys())
def test_bad_method_parameters_are_refused_with_the_key_named(tmp_path, bad_inputs, capsys, sections, fragments):
    sections = {section: dict(values) for section, values in sections.items()}
    sections["input"] = {"boundaries_key": None, "affinities_key": "affinities", **sections.get("input", {})}
    config = write_config(tmp_path / "config.toml", bad_inputs, tmp_path / "out.zarr", block_shape=BLOCK_SHAPE, **sections)
    capsys.readouterr()
    assert run_cli("run", config) == 2
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "out.zarr").exists(), "nothing is written"
    assert len(message.strip().splitlines()) == 1, f"one line: {message!r}"


def test_a_stitching_plugin_segments_each_block_and_is_stitched_as_in_memory(tmp_path, inputs):
    from plugin_functions import threshold_components

    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        block_shape=BLOCK_SHAPE,
        segmentation={"method": "stitching"},
        stitching={"function": "plugin_functions:threshold_components", "threshold": 0.4, "mode": "conservative", "overlap": [4, 8, 8]},
    )
    assert run_cli("run", config) == 0
    boundaries = read(inputs, "boundaries")

    def segmenter(box: Box) -> np.ndarray:
        return threshold_components(boundaries[box.slicing], resolution=tuple(RESOLUTION), mask=None, threshold=0.4)

    expected = stitch_blocks(boundaries.shape, BLOCK_SHAPE, (4, 8, 8), segmenter, mode="conservative")
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), as_segment_volume(tmp_path / "out.zarr", expected))
    assert 1 < expected.max() < read_node_ids(tmp_path / "out.zarr").max()
