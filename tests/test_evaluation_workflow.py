"""`emflow evaluate` as a workflow: block by block equal to the in-memory metrics, with skeleton
metrics and a report, standard output the JSON document alone."""

import json

import h5py
import numpy as np
import pytest
from workflow_helpers import run_cli

from emflow.evaluation import evaluate as evaluate_in_memory
from emflow.storage.volumes import write_volume
from emflow.workflows.evaluation import evaluate


@pytest.fixture(scope="module")
def cube(tmp_path_factory, data_dir):
    """The whole dev cube: ground truth, and its oversegmentation as the segmentation under test."""
    with h5py.File(data_dir / "flyem_medulla_dev" / "volume.h5", "r") as volume:
        arrays = {
            "neuron_ids": volume["labels/neuron_ids"][...],
            "oversegmentation": volume["labels/oversegmentation"][...],
            "raw": volume["raw"][...],
        }
    path = tmp_path_factory.mktemp("cube") / "cube.zarr"
    for name, array in arrays.items():
        write_volume(path, name, array, resolution=[10.0, 10.0, 10.0], chunks=(42, 84, 84))
    return path, arrays


def test_27_blocks_equal_the_in_memory_metrics(cube):
    path, arrays = cube
    report, result = evaluate(f"{path}:oversegmentation", f"{path}:neuron_ids", block_shape=(42, 84, 84), workers=2, skeleton_metrics=False)
    assert report.succeeded
    expected = evaluate_in_memory(arrays["oversegmentation"], arrays["neuron_ids"])
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert result["number_of_groundtruth_bodies"] == len(np.unique(arrays["neuron_ids"][arrays["neuron_ids"] != 0]))
    worst = result["worst_splits"][0]
    assert worst["position_nm"] == [10.0 * coordinate for coordinate in worst["position_voxel"]]


def test_cli_prints_json_alone_with_skeleton_metrics_and_writes_a_report(cube, tmp_path, capsys):
    path, arrays = cube
    crop = np.s_[:48, :96, :96]
    write_volume(
        tmp_path / "crop.zarr", "segmentation", arrays["oversegmentation"][crop], resolution=[10.0, 10.0, 10.0], chunks=(24, 48, 48)
    )
    write_volume(tmp_path / "crop.zarr", "groundtruth", arrays["neuron_ids"][crop], resolution=[10.0, 10.0, 10.0], chunks=(24, 48, 48))
    write_volume(tmp_path / "crop.zarr", "raw", arrays["raw"][crop], resolution=[10.0, 10.0, 10.0], chunks=(24, 48, 48))
    crop_path = tmp_path / "crop.zarr"
    capsys.readouterr()
    code = run_cli(
        "evaluate", f"{crop_path}:segmentation", f"{crop_path}:groundtruth", "--report", tmp_path / "report", "--raw", f"{crop_path}:raw"
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["adapted_rand_error"] == pytest.approx(
        evaluate_in_memory(arrays["oversegmentation"][crop], arrays["neuron_ids"][crop])["adapted_rand_error"]
    )
    assert 0 < printed["expected_run_length_nm"] <= printed["gt_expected_run_length_nm"]
    assert printed["normalized_erl"] == pytest.approx(printed["expected_run_length_nm"] / printed["gt_expected_run_length_nm"])
    assert printed["judgement"]
    assert (tmp_path / "report" / "report.html").exists()
    assert {path.name for path in (tmp_path / "report").iterdir()} >= {
        "worst_merge_0.png",
        "worst_split_0.png",
        "voi_per_block.png",
        "sizes.svg",
    }
