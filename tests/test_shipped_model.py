"""The shipped models: small, loadable, described by their cards, reproducible from their training
configs, and chosen by the input's voxel size."""

import re
import tomllib
from pathlib import Path

import pytest
import torch

from emflow.model import TrainedModel
from emflow.model_choice import ModelDomain, NoSuitableModel, choose_model, resolution_distance
from emflow.storage.models import (
    file_digest,
    load_model,
    model_domain,
    read_model_state,
    shipped_model_for,
    shipped_model_path,
    shipped_models,
    shipped_models_folder,
)

# The FIB-SEM model was trained on a GPU machine from a copy of the dev cube (the same bytes) with
# another output folder, and finished on the CPU from its last checkpoint: its card says so.
WHERE_TRAINED_BY_MODEL = {
    "flyem_fib_affinities.pt": (("data", "path"), ("training", "output"), ("training", "device")),
}
SHIPPED = sorted(path.name for path in shipped_models_folder().glob("*.pt"))
# What each shipped model was trained on: voxel size (z, y, x) in nm and modality.
TRAINED_ON = {
    "flyem_fib_affinities.pt": ((10.0, 10.0, 10.0), "FIB-SEM"),
    "sstem_isbi2012_boundaries.pt": ((50.0, 4.0, 4.0), "ssTEM"),
}


def test_the_default_model_is_the_fib_sem_affinity_model():
    model = load_model(shipped_model_path())
    assert model.target == "affinities"
    assert model.offsets[:3] == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_is_small_loads_and_records_its_data(name):
    path = shipped_model_path(name)
    assert path.stat().st_size <= 5 * 1024 * 1024
    model = load_model(path)
    assert (model.resolution, model.modality) == TRAINED_ON[name]
    assert model_domain(path) == ModelDomain(name, *TRAINED_ON[name])


@pytest.mark.parametrize("name", SHIPPED)
def test_the_model_was_trained_with_the_shipped_training_config(name):
    where_trained = WHERE_TRAINED_BY_MODEL.get(name, ())
    config = tomllib.loads(shipped_model_path(name).with_suffix(".train.toml").read_text())
    model = load_model(shipped_model_path(name))
    trained_with = model.metadata["training_config"]
    for section, values in config.items():
        for key, value in values.items():
            if (section, key) in (("data", "resolution"), ("data", "modality")) and key not in trained_with[section]:
                # Trained before models recorded them, and added to the file afterwards (see its card).
                assert getattr(model, key) == (tuple(value) if key == "resolution" else value), f"{section}.{key}"
                continue
            if (section, key) in where_trained:
                # Where the files lay and the machine the run ended on, not the recipe (see the card);
                # the training data is the same file.
                assert (section, key) != ("data", "path") or Path(trained_with[section][key]).name == Path(value).name
                continue
            # Paths too, as written: relative, so the file carries nothing of the machine it was trained on.
            assert trained_with[section][key] == value, f"{section}.{key}"
    assert model.metadata["iterations"] == config["training"]["iterations"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_model_card_names_this_file_and_its_training_command(name):
    card = shipped_model_path(name).with_suffix(".md").read_text()
    digest = re.search(r"sha256 `([0-9a-f]{64})`", card)
    assert digest and digest.group(1) == file_digest(shipped_model_path(name))
    assert f"emflow train emflow/data/models/{shipped_model_path(name).with_suffix('.train.toml').name}" in card
    metadata = load_model(shipped_model_path(name)).metadata
    assert f"{metadata['iterations']} iterations" in card
    assert metadata["validation_loss"] == pytest.approx(float(re.search(r"validation loss ([0-9.]+)", card).group(1)), abs=5e-4)


def test_model_files_without_voxel_size_and_modality_still_load(tmp_path):
    state = read_model_state(shipped_model_path())
    del state["resolution"], state["modality"]
    path = tmp_path / "old.pt"
    torch.save(state, path)
    old = load_model(path)
    assert old.resolution is None and old.modality == ""
    assert model_domain(path) == ModelDomain("old.pt", None, "")
    for name, tensor in load_model(shipped_model_path()).network.state_dict().items():
        torch.testing.assert_close(old.network.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(ValueError, match="resolution"):
        TrainedModel(**{**vars(old), "resolution": (10, 0, 10)})


def test_the_closest_shipped_model_is_chosen_by_voxel_size():
    models = shipped_models()
    assert [model.name for model in models] == SHIPPED
    assert choose_model((10, 10, 10), models).name == "flyem_fib_affinities.pt"
    assert choose_model((8, 8, 8), models).name == "flyem_fib_affinities.pt"
    assert shipped_model_for((8, 8, 8)) == shipped_model_path()
    if "sstem_isbi2012_boundaries.pt" in SHIPPED:
        # CREMI (40 x 4 x 4 nm) and ISBI 2012 itself.
        assert choose_model((40, 4, 4), models).name == "sstem_isbi2012_boundaries.pt"
        assert choose_model((50, 4, 4), models).name == "sstem_isbi2012_boundaries.pt"
    # The FlyEM cube subsampled to 40 x 10 x 10 nm: 4x the FIB-SEM model's sections, 2.5x the ssTEM model's pixels.
    with pytest.raises(NoSuitableModel) as refused:
        shipped_model_for((40, 10, 10))
    for name in SHIPPED:
        assert name in str(refused.value)


def test_model_choice_distance_ties_and_limits():
    assert resolution_distance((20, 10, 10), (10, 10, 10)) == pytest.approx(resolution_distance((5, 10, 10), (10, 10, 10)))
    models = [
        ModelDomain("a.pt", (10.0, 10.0, 10.0), "FIB-SEM"),
        ModelDomain("b.pt", (40.0, 4.0, 4.0), "ssTEM"),
        ModelDomain("unknown.pt", None),
    ]
    # Exactly 2x along an axis is still accepted; anything beyond is not.
    assert choose_model((20, 10, 10), models).name == "a.pt"
    assert choose_model((20.5, 10, 10), models, max_ratio=2.1).name == "a.pt"
    with pytest.raises(NoSuitableModel, match="unknown.pt: unknown"):
        choose_model((20.5, 10, 10), models)
    # Same largest distance (2x): the smaller sum of the per-axis distances wins.
    tied = [ModelDomain("c.pt", (20.0, 20.0, 20.0)), ModelDomain("d.pt", (20.0, 10.0, 10.0))]
    assert choose_model((10, 10, 10), tied).name == "d.pt"
    with pytest.raises(NoSuitableModel, match="no models"):
        choose_model((10, 10, 10), [])
    with pytest.raises(ValueError, match="resolution"):
        choose_model((10, 10), models)
