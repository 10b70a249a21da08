"""The CLI contract: config defaults, plugins, import, demo (`emflow scheduler` and runs through luigid: test_scheduler.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib

import h5py
import networkx as nx
import numpy as np
import pytest
import tifffile
from workflow_helpers import read, read_node_ids, records_since, run_cli, write_config, write_inputs

from emflow.config import default_config
from emflow.costs import edge_costs_from_features
from emflow.evaluation import evaluate, judgement
from emflow.storage.volumes import open_volume
from emflow.workflows.demo import demo_data_path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop):
    return write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)


def test_config_defaults_prints_the_complete_documented_config(capsys):
    assert run_cli("config", "defaults") == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text) == default_config()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            previous = lines[index - 1]
            assert previous.startswith("#") or previous.startswith("[") or "=" in previous and lines[index - 2].startswith("#"), (
                f"undocumented key: {line}"
            )
    for section in ("input", "output", "blocking", "supervoxels", "costs", "multicut"):
        assert f"[{section}]" in text


def test_the_command_exits_fast_with_all_it_printed_and_lets_a_profiler_write(tmp_path):
    """`python -m emflow` ends with `os._exit`, past the interpreter's teardown: what it printed to
    a pipe (block-buffered) still arrives whole, the exit code is main's, and under a profiler,
    which writes after the program returns, it exits as usual."""
    printed = subprocess.run([sys.executable, "-m", "emflow", "config", "defaults"], capture_output=True, text=True, timeout=600)
    assert printed.returncode == 0 and tomllib.loads(printed.stdout) == default_config()
    refused = subprocess.run(
        [sys.executable, "-m", "emflow", "status", str(tmp_path / "none.toml")], capture_output=True, text=True, timeout=600
    )
    assert refused.returncode == 2 and "config file not found" in refused.stderr
    profile = tmp_path / "emflow.prof"
    profiled = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "emflow", "config", "defaults"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert profiled.returncode == 0 and profiled.stdout == printed.stdout
    assert profile.stat().st_size > 0


def test_plugins_replace_supervoxels_costs_and_multicut(tmp_path, inputs):
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        supervoxels={"function": "plugin_functions:slab_supervoxels", "slab_thickness": 8},
        costs={"function": "plugin_functions:mean_boundary_costs"},
        multicut={"function": "plugin_functions:attractive_components", "minimum_cost": 1.0, "solver": None},
    )
    assert run_cli("run", config) == 0
    output = tmp_path / "out.zarr"
    supervoxels = read(output, "supervoxels")
    # The slab plugin cuts supervoxels every 8 slices of its (haloed) input; the first block's
    # input starts at z = 0, so there no supervoxel crosses from z = 8k - 1 to z = 8k.
    for z in (8, 16, 24):
        assert not np.intersect1d(supervoxels[z - 1], supervoxels[z]).size
    assert np.intersect1d(supervoxels[3], supervoxels[4]).size, "without a cut, supervoxels do cross slices"
    features = read(output, "graph/edge_features")
    probabilities = np.clip(features[:, 0], 1e-3, 1 - 1e-3)
    assert np.allclose(read(output, "graph/edge_costs"), np.log((1 - probabilities) / probabilities))
    edges, costs, node_labels = read(output, "graph/edges"), read(output, "graph/edge_costs"), read(output, "graph/node_labels")
    graph = nx.Graph(edges[costs > 1.0].tolist())
    for u, v in graph.edges:
        assert node_labels[u] == node_labels[v]
    assert len(np.unique(node_labels[1:])) == nx.number_connected_components(graph) + (len(node_labels) - 1 - graph.number_of_nodes())


def test_plugin_parameters_are_checked_against_its_signature(tmp_path, inputs, capsys):
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        multicut={"function": "plugin_functions:attractive_components", "minimum_costs": 1.0, "solver": None},
    )
    assert run_cli("run", config) == 2
    assert "multicut.minimum_costs" in capsys.readouterr().err
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        multicut={"function": "plugin_functions:label_everything", "anything": [1, 2]},
    )
    assert run_cli("run", config) == 0
    assert len(np.unique(read(tmp_path / "out.zarr", "segmentation"))) == read_node_ids(tmp_path / "out.zarr").max()


def test_import_tiff_and_hdf5_then_run(tmp_path, flyem_crop, data_dir):
    tifffile.imwrite(tmp_path / "raw.tif", flyem_crop["raw"])
    destination = tmp_path / "imported.zarr"
    assert run_cli("import", tmp_path / "raw.tif", destination, "--key", "raw", "--resolution", "10", "10", "10") == 0
    assert np.array_equal(read(destination, "raw"), flyem_crop["raw"])
    with h5py.File(tmp_path / "source.h5", "w") as source:
        # Membranes are dark in this FIB-SEM data: inverted raw intensity is a (poor) boundary map.
        source["membranes"] = 1.0 - flyem_crop["raw"].astype(np.float32) / 255.0
        # The voxel size recorded in the source is taken over when --resolution is not given.
        source["membranes"].attrs["resolution_nm_zyx"] = [10, 10, 10]
        boundaries = source["membranes"][...]
    assert run_cli("import", f"{tmp_path / 'source.h5'}:membranes", destination, "--key", "boundaries") == 0
    assert np.array_equal(read(destination, "boundaries"), boundaries)
    assert run_cli("import", tmp_path / "raw.tif", destination, "--key", "raw") == 2, "an existing array is never overwritten"
    config = write_config(tmp_path / "config.toml", destination, tmp_path / "out.zarr")
    assert run_cli("run", config) == 0


def test_a_tiff_where_a_volume_is_read_names_emflow_import(tmp_path, inputs, flyem_crop, capsys):
    tiff = tmp_path / "stack.tif"
    tifffile.imwrite(tiff, flyem_crop["raw"])
    command = f"`emflow import {tiff} data.zarr --key stack --resolution Z Y X`"
    config = write_config(tmp_path / "config.toml", tiff, tmp_path / "out.zarr")
    assert run_cli("run", config) == 2
    error = capsys.readouterr().err
    assert f"{tiff} is a TIFF file" in error and command in error and 'path = "data.zarr"' in error
    assert not (tmp_path / "out.zarr").exists()
    for segmentation in (str(tiff), f"{tiff}:raw"):
        assert run_cli("evaluate", segmentation, f"{inputs}:neuron_ids") == 2
        error = capsys.readouterr().err
        assert f"{tiff} is a TIFF file" in error and command in error


def test_an_hdf5_import_without_its_dataset_lists_what_the_file_holds(tmp_path, capsys):
    source = tmp_path / "volume.h5"
    with h5py.File(source, "w") as file:
        file["volumes/raw"] = np.zeros((4, 8, 8), np.uint8)
        file["volumes/labels/neuron_ids"] = np.zeros((4, 8, 8), np.uint32)
    assert run_cli("import", source, tmp_path / "out.zarr", "--key", "raw", "--resolution", "10", "10", "10") == 2
    error = capsys.readouterr().err
    assert f"{source} holds 2 datasets: volumes/labels/neuron_ids (4, 8, 8) uint32; volumes/raw (4, 8, 8) uint8." in error
    # The example is the dataset named like the new array, as a command that works.
    assert f"`emflow import {source}:volumes/raw {tmp_path / 'out.zarr'} --key raw` (or --source-key volumes/raw)" in error
    assert not (tmp_path / "out.zarr").exists()
    assert run_cli("import", f"{source}:volumes/raw", tmp_path / "out.zarr", "--key", "raw", "--resolution", "10", "10", "10") == 0


def test_demo_runs_from_the_shipped_crop_and_scores_it(tmp_path):
    """By default in the user's cache (never the current folder), ending with its scores, their
    judgement and how to look at the result; --out chooses the folder."""
    cwd, cache = tmp_path / "cwd", tmp_path / "cache"
    cwd.mkdir()
    environment = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "emflow", "demo"], capture_output=True, text=True, timeout=600, cwd=cwd, env=environment
    )
    seconds = time.perf_counter() - started
    assert completed.returncode == 0, completed.stderr
    demo_dir = cache / "emflow" / "demo"
    assert f"emflow demo: working in {demo_dir} " in completed.stderr
    assert not any(cwd.iterdir()), "nothing is written into the current folder"
    printed = json.loads((demo_dir / "metrics.json").read_text())
    with h5py.File(demo_data_path(), "r") as demo:
        groundtruth = demo["neuron_ids"][...]
    segmentation = read(demo_dir / "demo_segmentation.zarr", "segmentation")
    assert printed == pytest.approx(evaluate(segmentation, groundtruth))
    assert seconds < 120
    # From raw data through the shipped CNN and edge classifier, on a crop neither was trained on.
    # Measured: adapted Rand error 0.151, VOI 1.40 (0.163 and 1.52 with costs from the boundary map;
    # see the model card); this guards against regressions.
    assert printed["adapted_rand_error"] < 0.2 and printed["voi_sum"] < 1.7
    assert read(demo_dir / "demo_segmentation.zarr", "predictions").shape == (9,) + groundtruth.shape
    out = completed.stdout
    assert f"segmentation  (64, 128, 128) uint64, {np.unique(segmentation[segmentation != 0]).size} segments" in out
    assert f"  adapted Rand error  {printed['adapted_rand_error']:.3f}  (0 = perfect)" in out
    assert f"judgement: {judgement(printed)}\n" in out
    report = demo_dir / "evaluation_report" / "report.html"
    preview = demo_dir / "demo_segmentation.zarr.work" / "report" / "run_preview.png"
    assert out.endswith(
        f"segmentation: {demo_dir / 'demo_segmentation.zarr'}:segmentation (all metrics: {demo_dir / 'metrics.json'})\n"
        f"evaluation report: {report} (worst merges and splits drawn)\n"
        f"preview: {preview} (run report beside it)\n"
        f"look at it: emflow view {demo_dir / 'demo.toml'}\n"
    )
    # The report's numbers are the block-wise evaluation's, equal to the in-memory ones printed.
    reported = json.loads((report.parent / "report.json").read_text())["metrics"]
    assert reported["adapted_rand_error"] == pytest.approx(printed["adapted_rand_error"])
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and any(report.parent.glob("worst_merge_*.png"))

    # --out: here the same folder, whose run is done, so only the scores are computed again.
    again = subprocess.run(
        [sys.executable, "-m", "emflow", "demo", "--out", str(demo_dir)], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert again.returncode == 0, again.stderr
    assert "emflow: nothing to do: every stage was done before" in again.stdout and f"judgement: {judgement(printed)}\n" in again.stdout
    assert not any(cwd.iterdir())


ISBI_MEANS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split", "v_info_merge")


def test_sstem_demo_segments_held_out_isbi_sections_with_the_model_auto_chooses(tmp_path, data_dir):
    """Serial-section TEM from raw data: the ISBI 2012 sections the shipped ssTEM model held out,
    the model picked by the voxel size, scored per section with the challenge's measures."""
    from emflow.evaluation import isbi2012_scores

    cwd, out = tmp_path / "cwd", tmp_path / "sstem"
    cwd.mkdir()
    isbi = data_dir / "isbi2012"
    command = [sys.executable, "-m", "emflow", "demo", "--sstem", "--out", str(out), "--isbi", str(isbi)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert completed.returncode == 0, completed.stderr
    assert 'model "auto" chose the shipped sstem_isbi2012_boundaries.pt' in completed.stderr
    segmentation = read(out / "sstem_segmentation.zarr", "segmentation")
    groundtruth = tifffile.imread(isbi / "train-labels-instances-2d.tif", key=range(24, 30))
    assert segmentation.shape == groundtruth.shape == (6, 512, 512)
    scores = json.loads((out / "sstem_scores.json").read_text())
    expected = isbi2012_scores(segmentation, groundtruth)
    assert len(scores["sections"]) == len(expected["sections"]) == 6
    for written, computed in zip(scores["sections"] + [scores], expected["sections"] + [expected]):
        assert {key: written[key] for key in ISBI_MEANS} == pytest.approx({key: computed[key] for key in ISBI_MEANS})
    # Measured 0.873 / 0.952 (the model card: 0.870 / 0.952 in memory); the FIB-SEM model out of
    # its domain scored 0.59 / 0.77, so this fails if the wrong model or weighting is used.
    assert scores["v_rand"] > 0.8 and scores["v_info"] > 0.9
    rows = [line.split() for line in completed.stdout.splitlines() if line.split()[:1] in (["24"], ["29"], ["mean"])]
    assert [row[0] for row in rows] == ["24", "29", "mean"]
    assert float(rows[-1][1]) == pytest.approx(scores["v_rand"], abs=1e-4)
    assert (out / "sstem_segmentation.zarr.work" / "report" / "run_preview.png").is_file()
    # Per-section supervoxels of serial-section data: the default weighting "auto" is "orientation".
    features = read(out / "sstem_segmentation.zarr", "graph/edge_features")
    assert (features[:, 5] > 0).any() and (features[:, 5] < features[:, 4]).any()  # z-edges and in-plane edges
    np.testing.assert_array_equal(
        read(out / "sstem_segmentation.zarr", "graph/edge_costs"), edge_costs_from_features(features, beta=0.5, weighting="orientation")
    )
    assert not any(cwd.iterdir())

    # Without the data: one line naming the folder and the option, exit 2.
    missing = subprocess.run(
        [sys.executable, "-m", "emflow", "demo", "--sstem", "--out", str(tmp_path / "none"), "--isbi", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2
    assert f"ISBI 2012 data not found in {tmp_path}" in missing.stderr and "--isbi DIR" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        run_cli("--version")
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"emflow {version('emflow')}\n"


def test_a_reader_that_goes_away_is_no_error(tmp_path, inputs):
    """`emflow status c.toml | head -1`: the pipe closes before emflow writes; no traceback, exit 0."""
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    process = subprocess.Popen([sys.executable, "-m", "emflow", "status", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # long before the interpreter has started and printed anything
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0, stderr
    assert stderr == ""


def test_a_run_from_a_boundary_map_imports_neither_torch_nor_scikit_learn(tmp_path, workflow_inputs):
    # Importing torch was 1.2 s of the 4 s no-op rerun of a 20,480-block run: only a run that predicts
    # or trains may pay it (storage.models and tasks.predict import torch where a model is read).
    config = write_config(tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr")
    script = (
        "import sys\n"
        "from emflow.cli.main import main\n"
        "code = main(['run', sys.argv[1], '--workers', '1'])\n"
        "print('imported:', ' '.join(name for name in ('torch', 'sklearn') if name in sys.modules))\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "emflow: run complete" in result.stdout
    assert result.stdout.splitlines()[-1] == "imported: ", result.stdout


def test_a_rerun_after_new_input_data_imports_no_zarr(tmp_path, flyem_crop):
    # Importing zarr was a fifth of a cron run's start: the output in place, every stage but the
    # one creating it reads metadata and chunk files without it (storage.chunk_io.LocalArray).
    inputs = write_inputs(tmp_path, flyem_crop)
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    assert run_cli("run", config) == 0
    boundaries = open_volume(inputs, "boundaries", mode="r+")
    boundaries[32:64, 64:128, 64:128] = 1.0 - np.asarray(boundaries[32:64, 64:128, 64:128])
    script = (
        "import sys\n"
        "from emflow.cli.main import main\n"
        "code = main(['run', sys.argv[1], '--workers', '1'])\n"
        "print('zarr imported:', 'zarr' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    changed = time.time()
    result = subprocess.run([sys.executable, "-c", script, str(config)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    recomputed = records_since(tmp_path / "out.zarr.work", changed)
    assert ("supervoxels", 7) in recomputed and ("write_segmentation", 7) in recomputed, sorted(recomputed)
    assert result.stdout.splitlines()[-1] == "zarr imported: False", result.stdout


def test_a_run_imports_scipy_only_for_a_stage_that_needs_it():
    # scipy (and scikit-image, which imports much of it) cost every process of a run 0.2 to 0.3 s:
    # the `emflow` command and its workflow import none of it; the meshes stage has it preloaded.
    code = (
        "import sys, emflow.cli.main, emflow.workflows.run\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'scipy', 'skimage'}))\n"
        "from emflow.tasks.meshes import mesh_stages\n"
        "from emflow.tasks.spec import preload\n"
        "preload(mesh_stages(0))\n"
        "print('scipy.ndimage' in sys.modules)\n"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert printed.stdout.split("\n")[:2] == ["[]", "True"]
