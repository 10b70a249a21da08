"""Bad input gets one clear message naming the problem, a non-zero exit, and no lost data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from workflow_helpers import RESOLUTION, run_cli, write_config, write_inputs
from emflow.storage.volumes import write_volume


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    return write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)


def _fails_with(capsys, arguments, *fragments, code=2):
    capsys.readouterr()
    assert run_cli(*arguments) == code
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_missing_config_file(tmp_path, capsys):
    _fails_with(capsys, ["run", tmp_path / "nope.toml"], "config file not found", "nope.toml")


def test_invalid_toml(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[input\npath = 1")
    _fails_with(capsys, ["run", config], "not valid TOML")


@pytest.mark.parametrize(
    "sections, fragments",
    [
        ({"multicut": {"betta": 0.5}}, ["unknown config key multicut.betta"]),
        ({"mystery": {"a": 1}}, ["unknown config section [mystery]"]),
        ({"blocking": {"block_shape": "big"}}, ["blocking.block_shape", "list of 3 numbers"]),
        ({"blocking": {"halo": [1.5, 2, 2]}}, ["blocking.halo", "integers"]),
        ({"multicut": {"beta": 1.5}}, ["multicut.beta", "between 0 and 1"]),
        ({"multicut": {"solver": "magic"}}, ["multicut.solver", "kernighan-lin"]),
        ({"supervoxels": {"min_size": "ten"}}, ["supervoxels.min_size", "int"]),
        ({"supervoxels": {"function": "no_such_module:f"}}, ["supervoxels.function", "no_such_module"]),
        ({"input": {"resolution": [10, 10]}}, ["input.resolution"]),
        ({"scheduling": {"block_groups": -1}}, ["scheduling.block_groups", "0 (auto) or more"]),
        ({"multicut": {"n_scales": -1}}, ["multicut.n_scales", "0 or more"]),
        ({"multicut": {"n_scales": 1.5}}, ["multicut.n_scales", "int"]),
        (
            {"multicut": {"n_scales": 1, "function": "plugin_functions:attractive_components", "solver": None}},
            ["multicut.n_scales", "built-in solvers"],
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, inputs, capsys, sections, fragments):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", **sections)
    _fails_with(capsys, ["run", config], *fragments)
    assert not (tmp_path / "out.zarr").exists()


def test_missing_required_key(tmp_path, inputs, capsys):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", input={"boundaries_key": "", "raw_key": ""})
    _fails_with(capsys, ["run", config], "input.boundaries_key or input.raw_key is required")


def test_missing_input_file(tmp_path, capsys):
    config = write_config(tmp_path / "config.toml", tmp_path / "missing.zarr", tmp_path / "out.zarr")
    _fails_with(capsys, ["run", config], "missing.zarr")
    assert not (tmp_path / "out.zarr").exists()


def test_missing_dataset(tmp_path, inputs, capsys):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", input={"boundaries_key": "membranes"})
    _fails_with(capsys, ["run", config], "membranes")


def _volume_config(tmp_path, data, key="boundaries"):
    path = tmp_path / "odd.zarr"
    write_volume(path, key, data, resolution=RESOLUTION)
    config = write_config(tmp_path / "config.toml", path, tmp_path / "out.zarr", input={"raw_key": ""})
    return config


@pytest.mark.parametrize(
    "data, fragments",
    [
        (np.zeros((16, 32, 32), dtype=np.uint8), ["must be float", "uint8"]),
        (np.zeros((32, 32), dtype=np.float32), ["must be 3D"]),
        (np.zeros((0, 32, 32), dtype=np.float32), ["empty"]),
    ],
)
def test_unusable_boundary_maps(tmp_path, capsys, data, fragments):
    _fails_with(capsys, ["run", _volume_config(tmp_path, data)], *fragments)
    assert not (tmp_path / "out.zarr").exists()


def test_shape_mismatch_between_inputs(tmp_path, inputs, flyem_crop, capsys):
    write_volume(tmp_path / "small.zarr", "boundaries", np.zeros((8, 8, 8), np.float32), resolution=RESOLUTION)
    write_volume(tmp_path / "small.zarr", "raw", flyem_crop["raw"], resolution=RESOLUTION)
    config = write_config(tmp_path / "config.toml", tmp_path / "small.zarr", tmp_path / "out.zarr", block_shape=(8, 8, 8), halo=(0, 0, 0))
    _fails_with(capsys, ["run", config], "raw", "shape")


def test_block_shape_larger_than_volume(tmp_path, inputs, capsys):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=(128, 64, 64))
    _fails_with(capsys, ["run", config], "block", "axis 0")


def test_nan_in_boundaries_fails_the_block_and_names_it(tmp_path, flyem_crop, capsys):
    boundaries = np.full((32, 64, 64), 0.2, dtype=np.float32)
    boundaries[20, 40, 40] = np.nan
    config = _volume_config(tmp_path, boundaries)
    text = config.read_text().replace("[32, 64, 64]", "[16, 32, 32]")
    config.write_text(text)
    message = _fails_with(capsys, ["run", config], "supervoxels block", "NaN", "log:", code=1)
    log = message.split("log:")[1].split()[0]
    assert "NaN" in open(log).read()


def test_foreign_output_is_never_touched(tmp_path, inputs, capsys):
    foreign = zarr.open_group(str(tmp_path / "out.zarr"), mode="w")
    foreign.create_array("precious", data=np.arange(10))
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    _fails_with(capsys, ["run", config], "did not create")
    assert np.array_equal(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["precious"][...], np.arange(10))
    assert sorted(path.name for path in (tmp_path / "out.zarr").iterdir()) == ["precious", "zarr.json"]


def test_output_path_that_is_a_file(tmp_path, inputs, capsys):
    (tmp_path / "out.zarr").write_text("not a zarr group")
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    _fails_with(capsys, ["run", config], "not a zarr group")
    assert (tmp_path / "out.zarr").read_text() == "not a zarr group"


def test_run_with_different_input_on_existing_output_is_refused(tmp_path, inputs, capsys):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=(32, 64, 64))
    assert run_cli("run", config) == 0
    before = np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["segmentation/s0"][...])
    write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", input={"supervoxels_key": "oversegmentation"})
    _fails_with(capsys, ["run", config], "another config", "supervoxels", "--update")
    after = np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["segmentation/s0"][...])
    assert np.array_equal(before, after)


def test_output_of_another_config_is_refused_even_without_its_work_folder(tmp_path, inputs, capsys):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    assert run_cli("run", config) == 0
    shutil.rmtree(tmp_path / "out.zarr.work")
    before = np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["segmentation/s0"][...])
    write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", multicut={"beta": 0.45})
    _fails_with(capsys, ["run", config], "another config", "--update")
    assert np.array_equal(np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["segmentation/s0"][...]), before)


@pytest.mark.parametrize("section, key", [("blocking", "block_shape"), ("blocking", "halo"), ("multicut", "beta"), ("multicut", "solver"), ("input", "resolution")])
def test_required_keys_must_be_written(tmp_path, inputs, capsys, section, key):
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", **{section: {key: None}})
    _fails_with(capsys, ["run", config], f"{section}.{key} is required")
