"""Training: targets and weights, the MALIS term's gradient, resumable and reproducible runs, config errors."""

import json

import numpy as np
import pytest
import tomli_w
import torch
from conftest import DATA_DIR

from emflow import malis
from emflow.affinities import boundary_target
from emflow.cli.main import main
from emflow.config import ConfigError
from emflow.storage.models import file_digest, latest_checkpoint, load_model, shipped_model_path
from emflow.storage.volumes import import_volume
from emflow.training import balanced_weights, malis_loss, training_targets
from emflow.workflows.train import train

VOLUME = DATA_DIR / "flyem_medulla_dev" / "volume.h5"
ISBI = DATA_DIR / "isbi2012"
SSTEM_CONFIG = shipped_model_path("sstem_isbi2012_boundaries.pt").with_suffix(".train.toml")
FIB_CONFIG = shipped_model_path("flyem_fib_affinities.pt").with_suffix(".train.toml")


def write_training_config(path, output, **sections):
    config = {
        "data": {
            "path": str(VOLUME),
            "raw_key": "raw",
            "labels_key": "labels/neuron_ids",
            "train_start": [0, 128, 0],
            "train_stop": [40, 0, 0],
            "validation_stop": [40, 128, 0],
        },
        "model": {"depth": 2, "width": 4, "pooling": [[1, 2, 2]], "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [0, -4, 0]]},
        "training": {
            "output": str(output),
            "iterations": 4,
            "patch_shape": [8, 32, 32],
            "checkpoint_every": 2,
            "log_every": 1,
            "validate_every": 2,
            "validation_patches": 2,
            "threads": 1,
        },
        "augmentation": {"missing_section_probability": 0.1, "misalignment_probability": 0.5, "blur_probability": 0.1},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps(config))
    return path


def _losses(output):
    return [
        {key: value for key, value in json.loads(line).items() if key != "seconds"}
        for line in (output / "training_log.jsonl").read_text().splitlines()
    ]


def test_balanced_weights_give_each_class_half_of_the_valid_weight(flyem_crop):
    labels = flyem_crop["neuron_ids"][:16, :32, :32].astype(np.int64)
    target, mask = training_targets(labels, "affinities", [(-1, 0, 0), (0, -9, 0)])
    weights = balanced_weights(target, mask)
    for channel in range(2):
        valid = mask[channel] > 0
        positive = valid & (target[channel] > 0.5)
        assert 0 < positive.sum() < valid.sum()
        assert weights[channel][positive].sum() == pytest.approx(valid.sum() / 2, rel=1e-5)
        assert weights[channel][valid & ~positive].sum() == pytest.approx(valid.sum() / 2, rel=1e-5)
        assert not weights[channel][~valid].any()


def test_malis_term_backpropagates_the_core_gradient(flyem_crop):
    labels = flyem_crop["neuron_ids"][:6, :10, :12].astype(np.int64)
    rng = np.random.default_rng(3)
    affinities = rng.random((3,) + labels.shape)
    tensor = torch.tensor(affinities, requires_grad=True)
    loss = malis_loss(tensor, labels)
    loss.backward()
    expected_loss, expected_gradient = malis.malis_loss(affinities, labels, constrained=True)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(tensor.grad.numpy(), expected_gradient, rtol=1e-10, atol=1e-15)


def test_a_resumed_run_takes_the_same_steps_as_an_uninterrupted_one(tmp_path):
    straight = write_training_config(tmp_path / "straight.toml", tmp_path / "straight")
    report = train(straight, log=lambda line: None)
    assert report.resumed_from == 0 and report.validation_loss is not None
    # Run again when finished: nothing to train, and the model file comes out byte for byte the same.
    digest = file_digest(report.model_path)
    again = train(straight, log=lambda line: None)
    assert again.resumed_from == 4 and again.validation_loss == report.validation_loss
    assert file_digest(report.model_path) == digest

    interrupted = write_training_config(tmp_path / "interrupted.toml", tmp_path / "interrupted", training={"iterations": 3})
    train(interrupted, log=lambda line: None)
    # A run killed after iteration 3, before its checkpoint: only iteration 2's checkpoint is left,
    # and the log already has iteration 3.
    (tmp_path / "interrupted" / "checkpoints" / "iteration_00000003.pt").unlink()
    assert latest_checkpoint(tmp_path / "interrupted" / "checkpoints").name == "iteration_00000002.pt"
    write_training_config(tmp_path / "interrupted.toml", tmp_path / "interrupted")
    messages = []
    resumed = train(interrupted, log=messages.append)
    assert resumed.resumed_from == 2 and "resuming" in messages[0]

    first, second = load_model(report.model_path), load_model(resumed.model_path)
    for name, tensor in first.network.state_dict().items():
        torch.testing.assert_close(second.network.state_dict()[name], tensor, rtol=0, atol=0)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "interrupted")
    assert first.metadata["iterations"] == 4 and first.target == "affinities" and first.patch_shape == (8, 32, 32)
    assert not list((tmp_path / "straight" / "checkpoints").glob("*.partial"))


def test_log_lines_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    config = write_training_config(tmp_path / "config.toml", tmp_path / "out", training={"iterations": 2})
    train(config, log=lambda line: None)
    log = tmp_path / "out" / "training_log.jsonl"
    # What a run killed after logging iteration 3, before its checkpoint, leaves behind.
    log.write_text(log.read_text() + json.dumps({"iteration": 3, "loss": 9.0}) + "\n" + '{"iteration": 4, "lo')
    write_training_config(tmp_path / "config.toml", tmp_path / "out", training={"iterations": 3})
    train(config, log=lambda line: None)
    iterations = [entry["iteration"] for entry in _losses(tmp_path / "out")]
    assert iterations == [1, 2, 3]
    assert _losses(tmp_path / "out")[-1]["loss"] != 9.0


def test_malis_joins_the_loss_at_malis_start(tmp_path):
    config = write_training_config(tmp_path / "config.toml", tmp_path / "out", training={"loss": "bce+malis", "malis_start": 3})
    train(config, log=lambda line: None)
    entries = _losses(tmp_path / "out")
    assert ["malis" in entry for entry in entries] == [False, False, True, True]
    assert all(entry["malis"] >= 0 for entry in entries[2:])


def test_resuming_with_another_config_is_refused(tmp_path):
    config = write_training_config(tmp_path / "config.toml", tmp_path / "out", training={"iterations": 2})
    train(config, log=lambda line: None)
    recorded = (tmp_path / "out" / "training_config.json").read_text()
    write_training_config(tmp_path / "config.toml", tmp_path / "out", training={"learning_rate": 0.01})
    with pytest.raises(ConfigError, match="another config"):
        train(config, log=lambda line: None)
    assert (tmp_path / "out" / "training_config.json").read_text() == recorded


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"training": {"patience": 3}}, "unknown training config key training.patience"),
        ({"model": {"target": "boundaries"}, "training": {"loss": "malis"}}, "MALIS needs"),
        ({"model": {"offsets": [[0, -4, 0]]}, "training": {"loss": "bce+malis"}}, "MALIS needs"),
        ({"training": {"patch_shape": [8, 31, 32]}}, "downsampling"),
        ({"training": {"patch_shape": [64, 32, 32]}}, "smaller than the patch shape"),
        ({"data": {"labels_key": "labels/missing"}}, "labels/missing"),
        ({"model": {"pooling": [[1, 2]]}}, "lists of 3 integers"),
        ({"training": {"loss": "dice"}}, "training.loss"),
        ({"data": {"labels_2d": True}}, "labels not linked across sections"),
        ({"data": {"labels_2d": True}, "model": {"offsets": [[0, -1, 0], [0, 0, -1]]}, "training": {"loss": "bce+malis"}}, "MALIS"),
        ({"data": {"resolution": [40, 0, 4]}}, "data.resolution"),
    ],
)
def test_bad_training_configs_exit_2_naming_the_problem(tmp_path, capsys, sections, message):
    config = write_training_config(tmp_path / "config.toml", tmp_path / "out", **sections)
    assert main(["train", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.pt").exists()


@pytest.fixture(scope="module")
def isbi_zarr(tmp_path_factory):
    """The ISBI 2012 training volume and its per-section instances, converted as the ssTEM model card says."""
    path = tmp_path_factory.mktemp("isbi") / "isbi2012.zarr"
    import_volume(ISBI / "train-volume.tif", path, "raw", resolution=(50, 4, 4))
    import_volume(ISBI / "train-labels-instances-2d.tif", path, "labels_2d", resolution=(50, 4, 4))
    return path


def test_targets_of_per_section_labels_use_in_plane_neighbours_only(isbi_zarr):
    import zarr

    labels = np.asarray(zarr.open_group(isbi_zarr, mode="r")["labels_2d"]["s0"][:4, :64, :64]).astype(np.int64)
    target, mask = training_targets(labels, "boundaries", [], in_plane=True)
    expected = np.stack([boundary_target(section[None])[0] for section in labels])
    np.testing.assert_array_equal(target[0], expected)
    assert 0.1 < target.mean() < 0.5 and mask.all()
    # Ids are numbered per section, so comparing z-neighbours would mark most interiors as boundary.
    assert boundary_target(labels).mean() > 1.5 * target.mean()
    with pytest.raises(ValueError, match="across sections"):
        training_targets(labels, "affinities", [(-1, 0, 0), (0, -1, 0)], in_plane=True)


def _shipped_config_resumes_bitwise(tmp_path, config_path, data_path, patch_shape):
    """Train a shipped training config, shortened to a few iterations of a narrow network on tiny
    patches (on the CPU), straight and interrupted; assert both give the same weights and losses.
    Returns the straight run's model."""
    import tomllib

    def shortened(name, iterations):
        config = tomllib.loads(config_path.read_text())
        config["data"]["path"] = str(data_path)
        config["model"].update({"width": 4})
        config["training"].update(
            {
                "output": str(tmp_path / name),
                "iterations": iterations,
                "batch_size": 1,
                "patch_shape": patch_shape,
                "checkpoint_every": 2,
                "log_every": 1,
                "validate_every": 2,
                "validation_patches": 2,
                "device": "cpu",
            }
        )
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(config))
        return path

    straight = train(shortened("straight", 4), log=lambda line: None)
    train(shortened("interrupted", 3), log=lambda line: None)
    (tmp_path / "interrupted" / "checkpoints" / "iteration_00000003.pt").unlink()
    resumed = train(shortened("interrupted", 4), log=lambda line: None)
    assert resumed.resumed_from == 2
    first, second = load_model(straight.model_path), load_model(resumed.model_path)
    for name, tensor in first.network.state_dict().items():
        torch.testing.assert_close(second.network.state_dict()[name], tensor, rtol=0, atol=0)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "interrupted")
    return first


def test_the_fib_sem_config_trains_and_resumes_bitwise(tmp_path):
    """The shipped FIB-SEM training config (the default model's recipe)."""
    model = _shipped_config_resumes_bitwise(tmp_path, FIB_CONFIG, VOLUME, [8, 32, 32])
    assert model.target == "affinities" and len(model.offsets) == 9
    assert model.resolution == (10.0, 10.0, 10.0) and model.modality == "FIB-SEM"


def test_the_sstem_config_trains_resumes_bitwise_and_records_its_data(tmp_path, isbi_zarr):
    """The shipped ssTEM training config."""
    first = _shipped_config_resumes_bitwise(tmp_path, SSTEM_CONFIG, isbi_zarr, [4, 32, 32])
    assert first.target == "boundaries" and first.network.config.two_d_levels == 2
    assert first.resolution == (50.0, 4.0, 4.0) and first.modality == "ssTEM"
    assert first.metadata["training_config"]["data"]["labels_2d"] is True
