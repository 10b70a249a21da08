"""Bad input: one clear message naming the problem, a non-zero exit, and nothing existing overwritten.

One table, one row per bad input. Each row builds its input in its own folder and runs `emflow run`
in-process. Exit code 2: the problem is found before any task runs, so not a file may be created or
changed. Exit code 1: the problem can only be found while a block runs (a NaN in its box, a damaged
chunk); the message then names the stage, the block, the dataset, the problem and the block's log,
the log holds the problem, and no file that existed before the run may change. Exit code 0: a case
that looks like an error but is not (changed parameters over the same input are reprocessing).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from workflow_helpers import RESOLUTION, read, run_cli, write_config, write_inputs

from emflow.storage.volumes import write_volume

# The crop's 64 x 128 x 128 voxels in 2 x 2 x 2 blocks, so that a full run takes about a second.
BLOCK_SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    """The crop's inputs plus a second boundary map, for a run that changes only the dataset key."""
    path = write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)
    write_volume(path, "boundaries_copy", read(path, "boundaries"), resolution=RESOLUTION, chunks=BLOCK_SHAPE)
    return path


@dataclass
class Case:
    """What a row runs and expects; `fragments` must all appear in stderr."""

    config: Path
    fragments: tuple[str, ...] = ()
    # Folders whose pre-existing files must keep their bytes and mtime (default: the row's folder and the inputs).
    keep: tuple[Path, ...] | None = None
    # Further checks after the run (the failed block's log, a rerun after repair, ...).
    then: Callable[[str], None] | None = field(default=None, repr=False)


def _config(tmp: Path, inputs: Path, **sections) -> Path:
    return write_config(tmp / "config.toml", inputs, tmp / "out.zarr", block_shape=sections.pop("block_shape", BLOCK_SHAPE), **sections)


def config_case(*fragments: str, **sections) -> Callable[[Path, Path], Case]:
    """A row whose only fault is in the config: `sections` as `write_config` takes them."""
    return lambda tmp, inputs: Case(_config(tmp, inputs, **sections), fragments)


def _boundary_map_case(data: np.ndarray, *fragments: str) -> Callable[[Path, Path], Case]:
    """A row whose boundary map (the only input) is `data`."""

    def build(tmp: Path, inputs: Path) -> Case:
        write_volume(tmp / "in.zarr", "boundaries", data, resolution=RESOLUTION)
        config = write_config(
            tmp / "config.toml", tmp / "in.zarr", tmp / "out.zarr", block_shape=(8, 16, 16), halo=(2, 4, 4), input={"raw_key": ""}
        )
        return Case(config, (f"{tmp}/in.zarr:boundaries", *fragments))

    return build


def missing_config_file(tmp, inputs):
    return Case(tmp / "nope.toml", ("config file not found", f"{tmp}/nope.toml"))


def invalid_toml(tmp, inputs):
    (tmp / "bad.toml").write_text("[input\npath = 1")
    return Case(tmp / "bad.toml", (f"{tmp}/bad.toml", "not valid TOML"))


def missing_input_file(tmp, inputs):
    config = write_config(tmp / "config.toml", tmp / "missing.zarr", tmp / "out.zarr")
    return Case(config, ("input.path", "not found", f"{tmp}/missing.zarr"))


def input_file_not_a_volume(tmp, inputs):
    (tmp / "in.h5").write_bytes(b"this is not HDF5")
    config = write_config(tmp / "config.toml", tmp / "in.h5", tmp / "out.zarr")
    return Case(config, (f"{tmp}/in.h5", "cannot be opened as an HDF5 file"))


def constant_hdf5_dataset(tmp, inputs):
    """An HDF5 dataset created and never written: every voxel is its fill value."""
    with h5py.File(tmp / "in.h5", "w") as file:
        file.create_dataset("boundaries", shape=(16, 32, 32), dtype="float32", chunks=(8, 16, 16), fillvalue=1.0)
    config = write_config(
        tmp / "config.toml", tmp / "in.h5", tmp / "out.zarr", block_shape=(8, 16, 16), halo=(2, 4, 4), input={"raw_key": ""}
    )
    return Case(config, (f"{tmp}/in.h5:boundaries", "is constant", "fill value 1.0"))


def shape_mismatch(tmp, inputs):
    write_volume(tmp / "in.zarr", "boundaries", np.full((32, 64, 64), 0.5, np.float32), resolution=RESOLUTION)
    write_volume(tmp / "in.zarr", "raw", np.ones((32, 64, 48), np.uint8), resolution=RESOLUTION)
    config = write_config(tmp / "config.toml", tmp / "in.zarr", tmp / "out.zarr", block_shape=(16, 32, 32))
    return Case(
        config, (f"raw dataset {tmp}/in.zarr:raw has shape (32, 64, 48)", f"boundary map {tmp}/in.zarr:boundaries has shape (32, 64, 64)")
    )


def _bad_value_case(value: float, name: str) -> Callable[[Path, Path], Case]:
    """The real boundary map with one bad voxel, in block 0 only (the others' halos stop short of it)."""

    def build(tmp: Path, inputs: Path) -> Case:
        boundaries = read(inputs, "boundaries")
        boundaries[20, 40, 40] = value
        write_volume(tmp / "in.zarr", "boundaries", boundaries, resolution=RESOLUTION, chunks=BLOCK_SHAPE)
        config = write_config(tmp / "config.toml", tmp / "in.zarr", tmp / "out.zarr", block_shape=BLOCK_SHAPE, input={"raw_key": ""})
        problem = f"1 {name} value in box z 0:36, y 0:72, x 0:72 (the first at voxel (z, y, x) = (20, 40, 40))"
        return Case(
            config,
            ("supervoxels block 0:", f"{tmp}/in.zarr:boundaries", problem, "log:"),
            then=lambda message: _logs_hold(message, problem),
        )

    return build


def corrupted_chunk(tmp, inputs):
    """Garbage in one zstd chunk of the boundary map: the blocks reading it fail; restored, the run completes."""
    shutil.copytree(inputs, tmp / "in.zarr")
    chunk = tmp / "in.zarr" / "boundaries" / "c" / "1" / "0" / "1"
    intact = chunk.read_bytes()
    chunk.write_bytes(b"\x00 not zstd " * 20)
    config = write_config(tmp / "config.toml", tmp / "in.zarr", tmp / "out.zarr", block_shape=BLOCK_SHAPE)

    def then(message: str) -> None:
        # Block 5 holds the chunk, and the halo of every other block of the 2 x 2 x 2 reaches into it.
        for block_id in range(8):
            assert f"supervoxels block {block_id}:" in message
        _logs_hold(message, f"chunk (1, 0, 1) ({chunk}): RuntimeError")
        chunk.write_bytes(intact)
        assert run_cli("run", config) == 0

    return Case(config, (f"cannot decode {tmp}/in.zarr:boundaries[", f"damaged chunk (1, 0, 1) ({chunk})", "Zstd", "log:"), then=then)


def _logs_hold(message: str, problem: str) -> None:
    logs = [line.split("log:")[1].strip() for line in message.splitlines() if "log:" in line]
    assert logs and all(problem in Path(log).read_text() for log in logs), (problem, logs)


def output_parent_is_a_file(tmp, inputs):
    """Unwritable for root too: the output's folder would have to be created inside a regular file."""
    (tmp / "results").write_text("a file where the output's folder should be")
    config = write_config(tmp / "config.toml", inputs, tmp / "results" / "out.zarr")
    return Case(config, ("config key output.path", f"cannot create {tmp}/results/out.zarr", f"{tmp}/results is a file, not a folder"))


def work_dir_parent_is_a_file(tmp, inputs):
    (tmp / "scratch").write_text("a file")
    config = _config(tmp, inputs, output={"work_dir": str(tmp / "scratch" / "work")})
    return Case(config, ("config key output.work_dir", f"{tmp}/scratch is a file, not a folder"))


def output_path_is_a_file(tmp, inputs):
    (tmp / "out.zarr").write_text("not a zarr group")
    return Case(_config(tmp, inputs), ("config key output.path", f"{tmp}/out.zarr exists and is a file, not a zarr group"))


def foreign_output(tmp, inputs):
    zarr.open_group(str(tmp / "out.zarr"), mode="w").create_array("precious", data=np.arange(10))
    return Case(_config(tmp, inputs), (f"{tmp}/out.zarr", "did not create"))


def _finished_run(tmp: Path, inputs: Path) -> Path:
    config = _config(tmp, inputs)
    assert run_cli("run", config) == 0
    return config


def _different_input_case(change: str, *, keep_work_folder: bool = True) -> Callable[[Path, Path], Case]:
    """An output finished over `inputs`, then a run over another input path or dataset key into it."""

    def build(tmp: Path, inputs: Path) -> Case:
        _finished_run(tmp, inputs)
        if not keep_work_folder:
            shutil.rmtree(tmp / "out.zarr.work")
        if change == "path":
            shutil.copytree(inputs, tmp / "other.zarr")
            config = write_config(tmp / "config.toml", tmp / "other.zarr", tmp / "out.zarr", block_shape=BLOCK_SHAPE)
        else:
            config = _config(tmp, inputs, input={"boundaries_key": "boundaries_copy"})
        return Case(config, ("different input", f"{tmp}/out.zarr"))

    return build


def _changed_parameters_case(*, keep_work_folder: bool) -> Callable[[Path, Path], Case]:
    """A finished output rerun with another beta over the same input: reprocessed, equal to a fresh run."""

    def build(tmp: Path, inputs: Path) -> Case:
        _finished_run(tmp, inputs)
        first = read(tmp / "out.zarr", "segmentation/s0")
        if not keep_work_folder:
            shutil.rmtree(tmp / "out.zarr.work")
        config = _config(tmp, inputs, multicut={"beta": 0.3})

        def then(message: str) -> None:
            fresh = write_config(tmp / "fresh.toml", inputs, tmp / "fresh" / "out.zarr", block_shape=BLOCK_SHAPE, multicut={"beta": 0.3})
            assert run_cli("run", fresh) == 0
            reprocessed = read(tmp / "out.zarr", "segmentation/s0")
            assert np.array_equal(reprocessed, read(tmp / "fresh" / "out.zarr", "segmentation/s0"))
            assert not np.array_equal(reprocessed, first)

        return Case(config, keep=(inputs,), then=then)

    return build


# name, builder, exit code. Rows are grouped by the list; each name says what is wrong.
TABLE = [
    # The config file itself.
    ("missing_config_file", missing_config_file, 2),
    ("invalid_toml", invalid_toml, 2),
    # Input files and datasets.
    ("missing_input_file", missing_input_file, 2),
    (
        "missing_dataset_key",
        config_case(
            "config key input.boundaries_key", "key 'membranes' not found", "contains: boundaries", input={"boundaries_key": "membranes"}
        ),
        2,
    ),
    ("input_file_not_a_volume", input_file_not_a_volume, 2),
    ("wrong_ndim", _boundary_map_case(np.zeros((32, 32), np.float32), "must be 3D (z, y, x), got shape (32, 32)"), 2),
    (
        "wrong_dtype",
        _boundary_map_case(np.zeros((16, 32, 32), np.int16), "must be float with values in [0, 1], or unsigned integer", "got dtype int16"),
        2,
    ),
    (
        "wrong_dtype_of_supervoxels",
        config_case(
            "supervoxels dataset", "input.zarr:boundaries must hold integer ids, got dtype float32", input={"supervoxels_key": "boundaries"}
        ),
        2,
    ),
    ("nan_in_boundaries", _bad_value_case(np.nan, "NaN"), 1),
    ("inf_in_boundaries", _bad_value_case(np.inf, "infinite"), 1),
    ("empty_volume", _boundary_map_case(np.zeros((0, 32, 32), np.float32), "is empty (shape (0, 32, 32))"), 2),
    ("constant_volume", _boundary_map_case(np.zeros((16, 32, 32), np.float32), "is constant", "fill value 0.0"), 2),
    ("constant_hdf5_dataset", constant_hdf5_dataset, 2),
    # Written chunks of one value: found once every block has read its part, by the id-range stage.
    (
        "constant_written_volume",
        _boundary_map_case(np.full((16, 32, 32), 0.25, np.float32), "supervoxel_ids global task", "is constant: every voxel is 0.25"),
        1,
    ),
    ("shape_mismatch_raw_boundaries", shape_mismatch, 2),
    ("corrupted_chunk", corrupted_chunk, 1),
    # Blocking and resolution.
    ("block_shape_wrong_length", config_case("config key blocking.block_shape must be a list of 3 numbers", block_shape=(32, 64)), 2),
    (
        "block_shape_not_a_list",
        config_case("config key blocking.block_shape must be a list of 3 numbers", blocking={"block_shape": "big"}),
        2,
    ),
    ("block_shape_zero", config_case("config key blocking.block_shape must be three positive integers", block_shape=(0, 64, 64)), 2),
    ("block_shape_negative", config_case("config key blocking.block_shape must be three positive integers", block_shape=(32, -64, 64)), 2),
    (
        "block_shape_not_integer",
        config_case("config key blocking.block_shape must be three positive integers", block_shape=(32.5, 64, 64)),
        2,
    ),
    (
        "block_shape_larger_than_volume",
        config_case(
            "config key blocking.block_shape [128, 64, 64] is larger than the volume [64, 128, 128] along axis 0", block_shape=(128, 64, 64)
        ),
        2,
    ),
    (
        "halo_larger_than_block",
        config_case("config key blocking.halo [40, 8, 8] is larger than blocking.block_shape [32, 64, 64] along axis 0", halo=(40, 8, 8)),
        2,
    ),
    ("halo_not_integer", config_case("config key blocking.halo must be three non-negative integers", halo=(1.5, 2, 2)), 2),
    ("halo_negative", config_case("config key blocking.halo must be three non-negative integers", halo=(4, -8, 8)), 2),
    (
        "resolution_zero",
        config_case("config key input.resolution must be three positive numbers", input={"resolution": [0.0, 10.0, 10.0]}),
        2,
    ),
    (
        "resolution_negative",
        config_case("config key input.resolution must be three positive numbers", input={"resolution": [10.0, -10.0, 10.0]}),
        2,
    ),
    ("resolution_wrong_length", config_case("config key input.resolution must be a list of 3 numbers", input={"resolution": [10, 10]}), 2),
    # Config keys and values.
    ("unknown_config_key", config_case("unknown config key multicut.betta", multicut={"betta": 0.5}), 2),
    ("unknown_config_section", config_case("unknown config section [mystery]", mystery={"a": 1}), 2),
    ("wrong_type_of_key", config_case("config key supervoxels.min_size must be int, got 'ten'", supervoxels={"min_size": "ten"}), 2),
    ("wrong_type_of_integer_key", config_case("config key multicut.n_scales must be int, got 1.5", multicut={"n_scales": 1.5}), 2),
    ("beta_out_of_range", config_case("config key multicut.beta must lie strictly between 0 and 1", multicut={"beta": 1.5}), 2),
    ("unknown_solver", config_case("config key multicut.solver must be one of", "'kernighan-lin'", multicut={"solver": "magic"}), 2),
    (
        "plugin_not_importable",
        config_case("config key supervoxels.function", "no_such_module", supervoxels={"function": "no_such_module:f"}),
        2,
    ),
    (
        "negative_block_groups",
        config_case("config key scheduling.block_groups must be 0 (auto) or more", scheduling={"block_groups": -1}),
        2,
    ),
    ("negative_n_scales", config_case("config key multicut.n_scales must be 0 or more", multicut={"n_scales": -1}), 2),
    (
        "n_scales_with_plugin_solver",
        config_case(
            "config key multicut.n_scales",
            "built-in solvers",
            multicut={"n_scales": 1, "function": "plugin_functions:attractive_components", "solver": None},
        ),
        2,
    ),
    (
        "no_boundaries_affinities_or_raw_key",
        config_case(
            "config key input.boundaries_key, input.affinities_key or input.raw_key is required",
            input={"boundaries_key": "", "raw_key": ""},
        ),
        2,
    ),
    # Only the data, the output and the voxel size are required; everything else has a default.
    *[
        (f"required_key_{section}_{key}", config_case(f"config key {section}.{key} is required", **{section: {key: None}}), 2)
        for section, key in (("input", "path"), ("input", "resolution"), ("output", "path"))
    ],
    (
        "blocking_and_multicut_default",
        config_case(blocking={"block_shape": None, "halo": None}, multicut={"beta": None, "solver": None}),
        0,
    ),
    # The output.
    ("output_parent_is_a_file", output_parent_is_a_file, 2),
    ("work_dir_parent_is_a_file", work_dir_parent_is_a_file, 2),
    ("output_path_is_a_file", output_path_is_a_file, 2),
    ("foreign_output", foreign_output, 2),
    ("output_of_a_different_input_path", _different_input_case("path"), 2),
    ("output_of_a_different_input_key", _different_input_case("key"), 2),
    ("output_of_a_different_input_without_its_work_folder", _different_input_case("path", keep_work_folder=False), 2),
    ("changed_parameters_are_reprocessed", _changed_parameters_case(keep_work_folder=True), 0),
    ("changed_parameters_without_the_work_folder_are_reprocessed", _changed_parameters_case(keep_work_folder=False), 0),
]


def _files(folders) -> dict[Path, tuple[int, str] | None]:
    """Every path under `folders`: (mtime, content hash) for files, None for folders."""
    state = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            if path.is_file():
                state[path] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            elif path.is_dir():
                state[path] = None
    return state


@pytest.mark.parametrize("name, build, code", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input(tmp_path, inputs, capsys, name, build, code):
    case = build(tmp_path, inputs)
    keep = case.keep or (tmp_path, inputs)
    before = _files(keep)
    capsys.readouterr()

    assert run_cli("run", case.config) == code
    message = capsys.readouterr().err

    assert "Traceback" not in message
    for fragment in case.fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    after = _files(keep)
    if code == 2:
        # Found before any task ran: one message line, and not a file created or changed.
        assert len([line for line in message.splitlines() if line.startswith("emflow: error:")]) == 1, message
        assert after == before
    else:
        assert {path: after.get(path) for path in before} == before
    if case.then is not None:
        case.then(message)
