"""The shipped model: small, loadable, described by its card, reproducible from its training config."""

import re
import tomllib

import pytest

from emflow.storage.models import file_digest, load_model, shipped_model_path

TRAINING_CONFIG = shipped_model_path().with_suffix(".train.toml")
MODEL_CARD = shipped_model_path().with_suffix(".md")


def test_the_shipped_model_is_small_and_loads():
    path = shipped_model_path()
    assert path.stat().st_size <= 5 * 1024 * 1024
    model = load_model(path)
    assert model.target == "affinities"
    assert model.offsets[:3] == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def test_the_model_was_trained_with_the_shipped_training_config():
    config = tomllib.loads(TRAINING_CONFIG.read_text())
    metadata = load_model(shipped_model_path()).metadata
    trained_with = metadata["training_config"]
    for section, values in config.items():
        for key, value in values.items():
            # Paths too, as written: relative, so the file carries nothing of the machine it was trained on.
            assert trained_with[section][key] == value, f"{section}.{key}"
    assert metadata["iterations"] == config["training"]["iterations"]


def test_the_model_card_names_this_file_and_its_training_command():
    card = MODEL_CARD.read_text()
    digest = re.search(r"sha256 `([0-9a-f]{64})`", card)
    assert digest and digest.group(1) == file_digest(shipped_model_path())
    assert f"emflow train emflow/data/models/{TRAINING_CONFIG.name}" in card
    metadata = load_model(shipped_model_path()).metadata
    assert f"{metadata['iterations']} iterations" in card
    assert metadata["validation_loss"] == pytest.approx(float(re.search(r"validation loss ([0-9.]+)", card).group(1)), abs=5e-4)
