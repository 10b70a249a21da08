"""Learned edge costs: blockwise channel features equal in-core ones, trees evaluated with numpy equal
scikit-learn's, classifier files, the workflow stages, `emflow train-edges` and its resumption, and
the shipped classifier's provenance."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tomli_w
import zarr
from sklearn.ensemble import HistGradientBoostingClassifier
from workflow_helpers import noisy_groundtruth_affinities, read, read_node_ids, run_cli, write_affinities, write_config, write_inputs

from emflow.affinities import boundaries_from_affinities
from emflow.blocking import Blocking
from emflow.boundaries import boundaries_from_labels
from emflow.costs import probabilities_to_costs
from emflow.edge_classifier import (
    CHANNEL_STATISTICS,
    HISTOGRAM_BINS,
    block_channel_statistics,
    block_node_sizes,
    boosted_trees_from_sklearn,
    channel_names,
    edge_feature_matrix,
    edge_labels,
    feature_names,
    histogram_quantiles,
    in_core_channel_features,
    merge_channel_features,
    node_sizes,
    train_edge_classifier,
)
from emflow.errors import InputError
from emflow.graph import FEATURE_NAMES, in_core_graph_features, merge_edges
from emflow.labels import label_overlaps, majority_labels, relabel_consecutive
from emflow.storage.edge_classifiers import classifier_beside, load_edge_classifier, save_edge_classifier
from emflow.storage.models import file_digest, shipped_model_path
from emflow.workflows.segmentation import load_run

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_SHAPE = (32, 64, 64)
OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3]]


@pytest.fixture(scope="module")
def problem(flyem_crop):
    """The crop's real supervoxels (its oversegmentation), with a noisy GT-derived boundary map and
    the raw data scaled to [0, 1] as channels: real edges whose boundary evidence is imperfect."""
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    boundaries = boundaries_from_labels(flyem_crop["neuron_ids"], sigma=1.0, noise=0.8, seed=3)
    channels = np.stack([boundaries, flyem_crop["raw"].astype(np.float32) / 255])
    return supervoxels, channels


def test_blockwise_channel_features_equal_the_in_core_ones(problem):
    supervoxels, channels = problem
    edges, features, face_sizes, sizes = in_core_channel_features(supervoxels, channels)
    assert features.shape == (len(edges), 2, len(CHANNEL_STATISTICS))

    blocking = Blocking(supervoxels.shape, (24, 48, 40))
    block_results, block_sizes = [], []
    for block_id in range(blocking.number_of_blocks):
        outer, own_box = blocking.block_with_halo(block_id, (1, 1, 1))
        block_results.append(block_channel_statistics(supervoxels[outer.slicing], channels[(slice(None),) + outer.slicing], own_box))
        block_sizes.append(block_node_sizes(supervoxels[outer.slicing], own_box))
    block_edges = merge_edges([result[0] for result in block_results])
    block_features, block_face_sizes = merge_channel_features(len(sizes), block_edges, iter(block_results))

    assert np.array_equal(block_edges, edges)
    np.testing.assert_array_equal(block_face_sizes, face_sizes)
    np.testing.assert_array_equal(node_sizes(len(sizes), block_sizes), sizes)
    assert sizes.sum() == supervoxels.size - (supervoxels == 0).sum()
    # Quantiles come from integer histograms: exact. Moments merge in another order: to rounding.
    quantiles = [CHANNEL_STATISTICS.index(name) for name in CHANNEL_STATISTICS if name.startswith("q")]
    np.testing.assert_array_equal(block_features[:, :, quantiles], features[:, :, quantiles])
    np.testing.assert_allclose(block_features, features, rtol=1e-10, atol=1e-12)

    # The boundary channel's moments are emflow.graph's edge features.
    reference_edges, reference, _ = in_core_graph_features(supervoxels, channels[0])
    assert np.array_equal(reference_edges, edges)
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(
            features[:, 0, CHANNEL_STATISTICS.index(name)], reference[:, FEATURE_NAMES.index(name)], rtol=1e-10, atol=1e-12
        )
    np.testing.assert_array_equal(face_sizes, reference[:, FEATURE_NAMES.index("size")])


def test_histogram_quantiles_are_within_a_bin_of_the_exact_ones(problem):
    values = problem[1][1].ravel()[::7].astype(np.float64)
    histogram = np.histogram(values, bins=HISTOGRAM_BINS, range=(0, 1))[0]
    quantiles = (0.1, 0.5, 0.9)
    found = histogram_quantiles(histogram[None], quantiles)[0]
    exact = np.quantile(values, quantiles)
    assert np.all(np.abs(found - exact) <= 1 / HISTOGRAM_BINS)
    assert np.all(np.diff(found) >= 0)
    assert histogram_quantiles(np.zeros((1, HISTOGRAM_BINS)), quantiles).tolist() == [[0.0, 0.0, 0.0]]


@pytest.fixture(scope="module")
def edge_problem(problem, flyem_crop):
    supervoxels, channels = problem
    edges, channel_features, face_sizes, sizes = in_core_channel_features(supervoxels, channels)
    features = edge_feature_matrix(edges, channel_features, face_sizes, sizes)
    cut, valid = edge_labels(edges, majority_labels(len(sizes), *label_overlaps(supervoxels, flyem_crop["neuron_ids"])))
    # Training and held-out edges: the two halves of the crop along x, by the edges' supervoxels' centroids.
    x = np.broadcast_to(np.arange(supervoxels.shape[2]), supervoxels.shape).ravel()
    centroid_x = np.bincount(supervoxels.ravel().astype(np.int64), weights=x, minlength=len(sizes)) / np.maximum(sizes, 1)
    first = centroid_x[edges.astype(np.int64)].mean(axis=1) < supervoxels.shape[2] / 2
    return features, cut, valid, channel_features, first & valid, ~first & valid


def test_edges_are_cut_where_majority_bodies_differ(flyem_crop):
    supervoxels, _ = relabel_consecutive(flyem_crop["oversegmentation"])
    groundtruth = flyem_crop["neuron_ids"]
    edges, _, number_of_nodes = in_core_graph_features(supervoxels, np.zeros(supervoxels.shape, np.float32))
    bodies = majority_labels(number_of_nodes, *label_overlaps(supervoxels, groundtruth))
    cut, valid = edge_labels(edges, bodies)
    assert valid.all() and 0.2 < cut.mean() < 0.95  # the GT labels every voxel here
    u, v = edges[np.flatnonzero(~cut)[0]]
    for node in (u, v):
        ids, counts = np.unique(groundtruth[supervoxels == node], return_counts=True)
        assert ids[counts.argmax()] == bodies[u]
    bodies[edges[0, 0]] = 0
    assert not edge_labels(edges, bodies)[1][edges[:, 0] == edges[0, 0]].any()


def test_trees_evaluated_with_numpy_equal_scikit_learns_probabilities(edge_problem):
    features, cut, _, _, training, held_out = edge_problem
    estimator = HistGradientBoostingClassifier(max_iter=30, early_stopping=False, random_state=0).fit(features[training], cut[training])
    trees = boosted_trees_from_sklearn(estimator)
    with_missing = features[held_out].copy()
    with_missing[::5, 3] = np.nan  # scikit-learn's missing-value rule, too
    for data in (features[held_out], with_missing):
        np.testing.assert_allclose(trees.probabilities(data), estimator.predict_proba(data)[:, 1], rtol=1e-12, atol=1e-14)


def test_a_trained_classifier_beats_the_boundary_mean_on_held_out_edges(edge_problem):
    features, cut, _, channel_features, training, held_out = edge_problem
    names = feature_names(["boundaries", "raw"])
    assert features.shape[1] == len(names) and training.sum() > 300 and held_out.sum() > 300
    # The baseline gets its best threshold on the training edges, as the classifier gets them.
    mean = channel_features[:, 0, CHANNEL_STATISTICS.index("mean")]
    thresholds = np.linspace(0, 1, 101)
    best = thresholds[np.argmax([((mean[training] > t) == cut[training]).mean() for t in thresholds])]
    baseline = ((mean[held_out] > best) == cut[held_out]).mean()

    classifier = train_edge_classifier(features[training], cut[training], names, iterations=100)
    probabilities = classifier.cut_probabilities(features[held_out], names)
    learned = ((probabilities > 0.5) == cut[held_out]).mean()
    assert 1 - learned <= 0.9 * (1 - baseline), (learned, baseline)
    again = train_edge_classifier(features[training], cut[training], names, iterations=100)
    np.testing.assert_array_equal(again.cut_probabilities(features[held_out], names), probabilities)
    with pytest.raises(ValueError, match="trained on the channels boundaries, raw"):
        classifier.cut_probabilities(features[:, 9:], feature_names(["raw"]))


def test_classifier_files_are_reproducible_and_damage_is_named(tmp_path, edge_problem):
    features, cut, _, _, training, held_out = edge_problem
    names = feature_names(["boundaries", "raw"])
    classifier = train_edge_classifier(features[training], cut[training], names, iterations=20, metadata={"data": "test"})
    path = tmp_path / "classifier.npz"
    save_edge_classifier(path, classifier)
    loaded = load_edge_classifier(path)
    assert loaded.feature_names == names and loaded.metadata["data"] == "test" and loaded.metadata["iterations"] == 20
    np.testing.assert_array_equal(loaded.cut_probabilities(features, names), classifier.cut_probabilities(features, names))
    # The same classifier gives the same bytes: a file's digest is its identity.
    save_edge_classifier(
        tmp_path / "again.npz", train_edge_classifier(features[training], cut[training], names, iterations=20, metadata={"data": "test"})
    )
    assert file_digest(tmp_path / "again.npz") == file_digest(path)

    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="not a readable emflow edge classifier"):
        load_edge_classifier(path)
    with pytest.raises(InputError, match="not found"):
        load_edge_classifier(tmp_path / "missing.npz")


# --- the workflow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    """The crop with noisy GT-derived affinities (as in test_methods_workflow) and its ground truth."""
    path = write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)
    write_affinities(path, noisy_groundtruth_affinities(flyem_crop["neuron_ids"], OFFSETS, 0.3, seed=1), OFFSETS, BLOCK_SHAPE)
    return path


def _config(folder, inputs, **sections):
    sections["input"] = {"boundaries_key": None, "affinities_key": "affinities", **sections.get("input", {})}
    return write_config(folder / "config.toml", inputs, folder / "out.zarr", block_shape=BLOCK_SHAPE, **sections)


def _training_config(folder, inputs, output, channels=("boundaries", "affinities"), **sections):
    run = _config(folder, inputs, **sections)
    config = folder / "edge_training.toml"
    edge_training = {
        "runs": [run.name],
        "groundtruth": [f"{inputs}:neuron_ids"],
        "output": output,
        "iterations": 50,
        "channels": list(channels),
    }
    config.write_text(tomli_w.dumps({"edge_training": edge_training}))
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, inputs):
    folder = tmp_path_factory.mktemp("train_edges")
    assert run_cli("train-edges", _training_config(folder, inputs, "classifier.npz")) == 0
    return folder / "classifier.npz"


def test_train_edges_learns_from_the_runs_graph_and_the_ground_truth(trained, inputs, flyem_crop):
    classifier = load_edge_classifier(trained)
    assert classifier.feature_names == feature_names(channel_names([tuple(offset) for offset in OFFSETS]))
    assert classifier.metadata["sources"][0]["groundtruth"].endswith(":neuron_ids") and classifier.metadata["iterations"] == 50
    assert classifier.metadata["edges"] == classifier.metadata["sources"][0]["edges"] > 300


def test_a_run_with_learned_costs_uses_the_in_core_features_and_the_classifiers_probabilities(tmp_path, trained, inputs):
    assert run_cli("run", _config(tmp_path, inputs, costs={"classifier": str(trained)})) == 0
    out = tmp_path / "out.zarr"
    supervoxels = read_node_ids(out)
    affinities = read(inputs, "affinities")
    boundaries = boundaries_from_affinities(affinities, OFFSETS)
    np.testing.assert_array_equal(read(out, "boundaries"), boundaries)
    edges, channel_features, face_sizes, sizes = in_core_channel_features(supervoxels, np.concatenate([boundaries[None], affinities]))
    expected = edge_feature_matrix(edges, channel_features, face_sizes, sizes)
    assert np.array_equal(read(out, "graph/edges"), edges)
    np.testing.assert_allclose(read(out, "graph/classifier_features"), expected, rtol=1e-10, atol=1e-12)
    names = tuple(zarr.open_array(str(out / "graph" / "classifier_features"), mode="r").attrs["feature_names"])
    probabilities = load_edge_classifier(trained).cut_probabilities(read(out, "graph/classifier_features"), names)
    expected_costs = probabilities_to_costs(probabilities, beta=0.5, edge_sizes=face_sizes, weighting="size")
    np.testing.assert_allclose(read(out, "graph/edge_costs"), expected_costs, rtol=1e-12)
    # The classifier's costs differ from the boundary map's: it is the classifier that made them.
    features = read(out, "graph/edge_features")
    assert not np.allclose(read(out, "graph/edge_costs"), probabilities_to_costs(features[:, 0], edge_sizes=face_sizes, weighting="size"))


def test_a_classifier_of_the_boundary_map_alone_serves_a_run_given_a_boundary_map(tmp_path, inputs):
    boundary_map = {"input": {"affinities_key": None, "boundaries_key": "boundaries"}}
    (tmp_path / "train").mkdir()
    assert (
        run_cli("train-edges", _training_config(tmp_path / "train", inputs, "classifier.npz", channels=("boundaries",), **boundary_map))
        == 0
    )
    classifier = load_edge_classifier(tmp_path / "train" / "classifier.npz")
    names = feature_names(["boundaries"])
    assert classifier.feature_names == names
    # Monotonic in the boundary statistics: a face with more membrane evidence is never likelier merged.
    features = np.tile(np.linspace(0, 1, 21)[:, None], (1, len(names)))
    features[:, CHANNEL_STATISTICS.index("std")] = 0.1
    features[:, len(CHANNEL_STATISTICS) :] = np.log1p([200, 5000, 20000])
    assert np.all(np.diff(classifier.cut_probabilities(features, names)) >= 0)
    (tmp_path / "run").mkdir()
    costs = {"classifier": str(tmp_path / "train" / "classifier.npz")}
    assert run_cli("run", _config(tmp_path / "run", inputs, costs=costs, **boundary_map)) == 0
    assert read(tmp_path / "run" / "out.zarr", "graph/classifier_features").shape[1] == len(names)


def test_a_run_computes_only_the_channels_its_classifier_uses(tmp_path, inputs):
    """A classifier of the boundary map alone, on a run that has affinities: the affinity channels
    are neither read nor described, and the features are the in-core ones of the boundary map."""
    (tmp_path / "train").mkdir()
    assert run_cli("train-edges", _training_config(tmp_path / "train", inputs, "classifier.npz", channels=("boundaries",))) == 0
    classifier_path = tmp_path / "train" / "classifier.npz"
    assert list(load_edge_classifier(classifier_path).channels) == ["boundaries"]
    (tmp_path / "run").mkdir()
    config = _config(tmp_path / "run", inputs, costs={"classifier": str(classifier_path)})
    assert run_cli("run", config) == 0
    stages = {spec.name: spec for spec in load_run(str(config)).stages}
    assert {read.name for read in stages["channel_features"].reads} == {"supervoxels", "boundaries"}
    out = tmp_path / "run" / "out.zarr"
    edges, channel_features, face_sizes, sizes = in_core_channel_features(read_node_ids(out), read(out, "boundaries")[None])
    assert np.array_equal(read(out, "graph/edges"), edges)
    np.testing.assert_allclose(
        read(out, "graph/classifier_features"), edge_feature_matrix(edges, channel_features, face_sizes, sizes), rtol=1e-10, atol=1e-12
    )
    names = tuple(zarr.open_array(str(out / "graph" / "classifier_features"), mode="r").attrs["feature_names"])
    assert names == feature_names(["boundaries"])


def test_a_classifier_that_does_not_fit_the_run_is_refused_in_one_line(tmp_path, trained, inputs, capsys):
    boundary_map = _config(
        tmp_path, inputs, input={"affinities_key": None, "boundaries_key": "boundaries"}, costs={"classifier": str(trained)}
    )
    assert run_cli("run", boundary_map) == 2
    assert "was trained on the channels affinity(" in capsys.readouterr().err
    three = tmp_path / "three"
    three.mkdir()
    group = zarr.open_group(str(inputs), mode="r")
    copy = write_inputs(
        three, {"raw": group["raw"][...], "neuron_ids": group["neuron_ids"][...], "oversegmentation": group["oversegmentation"][...]}
    )
    write_affinities(copy, group["affinities"][:3], OFFSETS[:3], BLOCK_SHAPE)
    assert run_cli("run", _config(three, copy, costs={"classifier": str(trained)})) == 2
    assert "was trained on the channels" in capsys.readouterr().err


def test_train_edges_interrupted_and_run_again_writes_the_same_file(tmp_path, trained, inputs):
    folder = tmp_path / "interrupted"
    folder.mkdir()
    config = _training_config(folder, inputs, "classifier.npz")
    environment = {**os.environ, "EMFLOW_INJECT_FAILURES": "1"}
    failed = subprocess.run([sys.executable, "-m", "emflow", "train-edges", str(config)], env=environment, capture_output=True, text=True)
    assert failed.returncode != 0 and not (folder / "classifier.npz").exists()
    assert run_cli("train-edges", config) == 0
    assert file_digest(folder / "classifier.npz") == file_digest(trained)


def test_the_retraining_command_of_the_card_resumes_bitwise(tmp_path):
    """A short run (8 sections of each volume) of the command the classifier's card gives."""
    command = [sys.executable, "-m", "benchmarks.train_edge_classifier", "--max-z", "8"]
    first = [*command, "--work-dir", str(tmp_path / "first"), "--output", str(tmp_path / "first.npz")]
    assert subprocess.run(first, cwd=REPOSITORY, capture_output=True).returncode == 0
    second = [*command, "--work-dir", str(tmp_path / "second"), "--output", str(tmp_path / "second.npz")]
    environment = {**os.environ, "EMFLOW_INJECT_FAILURES": "0.5"}
    interrupted = subprocess.run(second, cwd=REPOSITORY, env=environment, capture_output=True)
    if interrupted.returncode == 0:  # every injected failure was retried away: interrupt harder
        shutil.rmtree(tmp_path / "second" / "gala_test_work")
        (tmp_path / "second.npz").unlink()
    assert subprocess.run(second, cwd=REPOSITORY, capture_output=True).returncode == 0
    assert file_digest(tmp_path / "second.npz") == file_digest(tmp_path / "first.npz")


def test_the_shipped_classifier_was_trained_on_the_shipped_models_predictions():
    model = shipped_model_path()
    classifier = load_edge_classifier(classifier_beside(model))
    sources = classifier.metadata["sources"]
    assert {source["model_sha256"] for source in sources} == {file_digest(model)}
    # None of the dev cube's held-out half (y < 128), which benchmarks/cnn_accuracy.py scores.
    assert [source["run"] for source in sources] == ["dev_y128.toml", "gala_train.toml", "gala_test.toml"]
    assert classifier.feature_names == feature_names(["boundaries"]) and classifier.metadata["channels"] == ["boundaries"]


def test_the_classifier_card_names_this_file_and_its_retraining_command():
    path = classifier_beside(shipped_model_path())
    card = path.with_suffix(".md").read_text()
    assert f"sha256 `{file_digest(path)}`" in card
    assert "python -m benchmarks.train_edge_classifier" in card
    assert path.with_suffix(".md").name in shipped_model_path().with_suffix(".md").read_text()
