"""The prediction stages of `emflow run` / `emflow predict`: block-wise = whole-volume, dtypes,
fingerprints, writes behind the blocks."""

import errno
import json
import signal
import threading
import time

import numpy as np
import pytest
from test_crash_safety import KillPoint, run_to_end
from workflow_helpers import RESOLUTION, read, records_since, run_cli, write_config

from emflow.blocking import Blocking, Box
from emflow.cluster import LocalScheduler
from emflow.inference import SUM_SCALE, PatchGrid, fixed_point
from emflow.storage.models import load_model
from emflow.storage.store import Store
from emflow.storage.volumes import open_volume, write_volume
from emflow.targets import JournalReader
from emflow.targets.journal import journal_range
from emflow.workflows.run import run_workflow
from emflow.workflows.segmentation import load_run
from emflow.workflows.status import workflow_status

CROP = np.s_[:40, :72, :80]


@pytest.fixture
def raw_input(tmp_path, flyem_crop):
    path = tmp_path / "input.zarr"
    write_volume(path, "raw", flyem_crop["raw"][CROP], resolution=RESOLUTION, chunks=(16, 32, 32))
    return path


def predict_config(tmp_path, raw_input, model, name, block_shape=(16, 32, 32), **predict):
    return write_config(
        tmp_path / f"{name}.toml",
        raw_input,
        tmp_path / f"{name}.zarr",
        block_shape=block_shape,
        input={"boundaries_key": None},
        predict={"model": str(model), "patch_shape": [16, 32, 32], "overlap": [4, 8, 8], **predict},
    )


def test_block_wise_prediction_equals_a_single_block_prediction(tmp_path, raw_input, small_affinity_model):
    # float32 predictions: block-wise and whole differ by the order of floating-point sums and by
    # the sums' storage as float16: each run's within 2^-11 of a voxel's value (at most 1),
    # however many blocks' sums reach the voxel (up to 8 here, a corner of 2x2x2 blocks' spans).
    tolerance = 2 * 2**-11 + 1e-6
    blocks = predict_config(tmp_path, raw_input, small_affinity_model, "blocks", batch_size=3, output_dtype="float32")
    whole = predict_config(tmp_path, raw_input, small_affinity_model, "whole", block_shape=(40, 72, 80), output_dtype="float32")
    assert run_workflow(blocks, LocalScheduler(2), until="blend_predictions").succeeded
    assert run_workflow(whole, until="blend_predictions").succeeded
    for name in ("predictions", "boundaries"):
        block_wise, single = read(tmp_path / "blocks.zarr", name), read(tmp_path / "whole.zarr", name)
        assert block_wise.dtype == np.float32 and np.isfinite(block_wise).all()
        np.testing.assert_allclose(block_wise, single, rtol=0, atol=tolerance)
    model = load_model(small_affinity_model)
    assert read(tmp_path / "blocks.zarr", "predictions").shape == (model.out_channels, 40, 72, 80)
    np.testing.assert_allclose(
        read(tmp_path / "blocks.zarr", "boundaries"), model.boundaries(read(tmp_path / "whole.zarr", "predictions")), rtol=0, atol=tolerance
    )
    # `emflow predict` runs only up to the prediction; nothing of the segmentation yet.
    statuses = {status.stage: status for status in workflow_status(str(blocks))}
    assert statuses["blend_predictions"].done == statuses["blend_predictions"].total == 3 * 3 * 3
    assert statuses["supervoxels"].done == 0


def test_blending_runs_torch_on_one_thread_and_gives_the_threads_back_after_it():
    import torch

    from emflow.tasks.predict import _one_torch_thread

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), _one_torch_thread():
            raise RuntimeError("a block that fails")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


# Torn writes of the two prediction stages: a block's CNN sums (its .npy partial) and a chunk of the
# blended probabilities.
PREDICTION_KILL_POINTS = {
    "predict-sums-torn": (r"^file killed\.zarr\.work/blocks/predict/\d+\.npy$", 3, "torn"),
    "blend-chunk-torn": (r"^chunk killed\.zarr/predictions/s0/c/", 3, "torn"),
}


# What an earlier emflow stored as a block's sums, and how far from the exact sums: float32 sums
# themselves, then 16-bit fixed point, 0.5 / SUM_SCALE per stored sum, up to 8 of which meet here.
EARLIER_SUMS = {
    "float32": (np.ascontiguousarray, 1e-6),
    "uint16": (lambda sums: fixed_point(sums, np.uint16), 8 * 0.5 / SUM_SCALE),
}


@pytest.mark.parametrize("encode, error", EARLIER_SUMS.values(), ids=EARLIER_SUMS.keys())
def test_sums_of_an_earlier_emflow_are_blended_without_running_the_network_again(
    tmp_path, raw_input, small_affinity_model, monkeypatch, encode, error
):
    import emflow.tasks.predict as predict_stage

    monkeypatch.setattr(predict_stage, "encode_sums", encode)
    upgraded = predict_config(tmp_path, raw_input, small_affinity_model, "upgraded", output_dtype="float32")
    assert run_workflow(upgraded, until="predict").succeeded
    partials = sorted((tmp_path / "upgraded.zarr.work" / "blocks" / "predict").glob("*.npy"))
    assert partials and all(np.load(path, mmap_mode="r").dtype == encode(np.zeros((1, 1, 1, 1), np.float32)).dtype for path in partials)
    monkeypatch.undo()

    started = time.time()
    assert run_workflow(upgraded, until="blend_predictions").succeeded
    assert not {block for stage, block in records_since(tmp_path / "upgraded.zarr.work", started) if stage == "predict"}
    fresh = predict_config(tmp_path, raw_input, small_affinity_model, "fresh", output_dtype="float32")
    assert run_workflow(fresh, until="blend_predictions").succeeded
    # The fresh run's sums are float16: within 2^-11 of a voxel's value (at most 1).
    tolerance = error + 2**-11 + 1e-6
    upgraded_predictions, fresh_predictions = read(tmp_path / "upgraded.zarr", "predictions"), read(tmp_path / "fresh.zarr", "predictions")
    np.testing.assert_allclose(upgraded_predictions, fresh_predictions, rtol=0, atol=tolerance)
    assert not np.array_equal(upgraded_predictions, fresh_predictions)  # the partials were read as they were stored


@pytest.mark.parametrize("pattern, occurrence, moment", PREDICTION_KILL_POINTS.values(), ids=PREDICTION_KILL_POINTS.keys())
def test_a_prediction_killed_mid_write_resumes_to_the_identical_result(
    tmp_path, raw_input, small_affinity_model, pattern, occurrence, moment
):
    # Two workers: each worker process (forked) runs torch with one thread, which keeps it safe from
    # the OpenMP threads of this test process, which a fork leaves hanging.
    blocks = (24, 40, 48)
    killed = predict_config(tmp_path, raw_input, small_affinity_model, "killed", block_shape=blocks)
    code, log = run_to_end(killed, workers=2, kill_point=KillPoint(pattern, occurrence, moment, tmp_path / "trace.txt"))
    assert code == -signal.SIGKILL, f"the run was not killed at write {occurrence} matching {pattern!r} (exit {code}):\n{log}"
    code, log = run_to_end(killed, workers=2)
    assert code == 0, f"the rerun after the kill failed (exit {code}):\n{log}"
    reference = predict_config(tmp_path, raw_input, small_affinity_model, "reference", block_shape=blocks)
    assert run_workflow(reference, until="blend_predictions").succeeded
    for key in ("predictions", "boundaries"):
        assert read(tmp_path / "killed.zarr", key).tobytes() == read(tmp_path / "reference.zarr", key).tobytes(), key


def test_predictions_are_uint8_by_default_and_the_boundary_map_float32_either_way(tmp_path, raw_input, small_affinity_model):
    config = predict_config(tmp_path, raw_input, small_affinity_model, "quantised")
    float_config = predict_config(tmp_path, raw_input, small_affinity_model, "float", output_dtype="float32")
    assert run_cli("run", config, "--workers", "2") == 0
    assert run_cli("run", float_config, "--workers", "2") == 0
    quantised = read(tmp_path / "quantised.zarr", "predictions")
    assert quantised.dtype == np.uint8
    np.testing.assert_array_equal(quantised, np.round(read(tmp_path / "float.zarr", "predictions") * 255).astype(np.uint8))
    # The boundary map, and so the segmentation, do not depend on the predictions' dtype.
    for name in ("boundaries", "segmentation"):
        assert read(tmp_path / "quantised.zarr", name).tobytes() == read(tmp_path / "float.zarr", name).tobytes(), name
    assert read(tmp_path / "quantised.zarr", "boundaries").dtype == np.float32
    assert read(tmp_path / "quantised.zarr", "segmentation").min() > 0


def test_a_new_model_makes_prediction_and_everything_after_it_stale_but_a_batch_size_does_not(tmp_path, raw_input, small_affinity_model):
    import shutil

    import torch

    from emflow.storage.models import save_model

    config = predict_config(tmp_path, raw_input, small_affinity_model, "run")
    assert run_cli("run", config) == 0
    predict_config(tmp_path, raw_input, small_affinity_model, "run", batch_size=4)
    assert all(status.stale == status.pending == 0 for status in workflow_status(str(config)))

    retrained = load_model(small_affinity_model)
    with torch.no_grad():
        retrained.network.head.bias += 0.5
    other_model = tmp_path / "retrained.pt"
    save_model(other_model, retrained)
    predict_config(tmp_path, raw_input, other_model, "run")
    stale = {status.stage for status in workflow_status(str(config)) if status.stale}
    assert stale == {
        "predict",
        "blend_predictions",
        "supervoxels",
        "block_graph",
        "supervoxel_ids",
        "merge_graph",
        "edge_costs",
        "multicut",
        "write_segmentation",
    }
    # A model is known by its bytes, not its path: a copy of the first model makes nothing stale.
    copy = shutil.copy(small_affinity_model, tmp_path / "copy.pt")
    predict_config(tmp_path, raw_input, copy, "run")
    assert not any(status.stale for status in workflow_status(str(config)))


def test_prediction_needs_raw_data_the_model_can_read(tmp_path, raw_input, small_affinity_model, capsys):
    write_volume(raw_input, "signed", np.zeros((40, 72, 80), np.int16), resolution=RESOLUTION)
    config = predict_config(tmp_path, raw_input, small_affinity_model, "signed")
    write_config(
        config,
        raw_input,
        tmp_path / "signed.zarr",
        input={"boundaries_key": None, "raw_key": "signed"},
        predict={"model": str(small_affinity_model)},
    )
    assert run_cli("run", config) == 2
    assert "must be unsigned integer or float" in capsys.readouterr().err

    config = predict_config(tmp_path, raw_input, tmp_path / "missing.pt", "missing")
    assert run_cli("run", config) == 2
    assert "model file not found" in capsys.readouterr().err

    config = predict_config(tmp_path, raw_input, small_affinity_model, "odd_patch", patch_shape=[16, 30, 32])
    assert run_cli("run", config) == 2
    assert "predict.patch_shape" in capsys.readouterr().err
    assert not (tmp_path / "odd_patch.zarr").exists()


def test_predict_refuses_a_config_that_names_a_boundary_map(tmp_path, raw_input, small_affinity_model, capsys):
    write_volume(raw_input, "boundaries", np.random.default_rng(0).random((40, 72, 80), np.float32), resolution=RESOLUTION)
    config = write_config(tmp_path / "config.toml", raw_input, tmp_path / "out.zarr", predict={"model": str(small_affinity_model)})
    assert run_cli("predict", config) == 2
    assert "nothing to predict" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_new_raw_data_in_one_chunk_repredicts_only_the_blocks_that_read_it(tmp_path, flyem_crop, small_affinity_model):
    """Prediction, blending and supervoxels are linked block to block: a changed raw chunk reaches
    only the blocks whose patches read it, the blocks that blend those, and the supervoxel blocks
    whose halo reads the blended ones. The result equals a fresh run over the changed raw data."""
    # The whole crop, 4 x 4 x 4 blocks: a blended block reads one patch around it, so a smaller
    # volume would be reached everywhere from one corner.
    raw_input = tmp_path / "input.zarr"
    write_volume(raw_input, "raw", flyem_crop["raw"], resolution=RESOLUTION, chunks=(16, 32, 32))
    config = predict_config(tmp_path, raw_input, small_affinity_model, "cron")
    assert run_cli("run", config, "--workers", "2") == 0
    raw = open_volume(raw_input, "raw", mode="r+")
    changed = Box((0, 0, 0), (16, 32, 32))  # one stored chunk
    raw[changed.slicing] = 255 - np.asarray(raw[changed.slicing])
    started = time.time()
    assert run_cli("run", config, "--workers", "2") == 0
    rerun = records_since(tmp_path / "cron.zarr.work", started)
    recomputed = {
        stage: {block for name, block in rerun if name == stage and block is not None}
        for stage in ("predict", "blend_predictions", "supervoxels")
    }

    # The same sets, from the geometry alone.
    blocking = Blocking(raw.shape, (16, 32, 32))
    grid = PatchGrid(raw.shape, (16, 32, 32), (4, 8, 8))

    def intersects(begin, end, box):
        return all(first < box_end and box_begin < last for first, last, box_begin, box_end in zip(begin, end, box.begin, box.end))

    def patch_span(block_id):
        box = blocking.block(block_id)
        origins = grid.patches_of_block(box.begin, box.end)
        if any(len(axis) == 0 for axis in origins):
            return None
        return [int(axis[0]) for axis in origins], [int(axis[-1]) + size for axis, size in zip(origins, grid.patch_shape)]

    spans = {block_id: patch_span(block_id) for block_id in range(blocking.number_of_blocks)}
    predicted = {block_id for block_id, span in spans.items() if span is not None and intersects(*span, changed)}

    def blended_box(block_id):  # the block grown by one voxel, clipped
        box = blocking.block(block_id)
        return Box(tuple(max(begin - 1, 0) for begin in box.begin), tuple(min(end + 1, size) for end, size in zip(box.end, raw.shape)))

    blended = {
        block_id
        for block_id in range(blocking.number_of_blocks)
        if any(intersects(*spans[other], blended_box(block_id)) for other in predicted)
    }
    halo = (4, 8, 8)
    segmented = {
        block_id
        for block_id in range(blocking.number_of_blocks)
        if any(
            intersects(blocking.block(other).begin, blocking.block(other).end, blocking.block_with_halo(block_id, halo)[0])
            for other in blended
        )
    }
    assert recomputed["predict"] == predicted and 0 < len(predicted) < blocking.number_of_blocks
    assert recomputed["blend_predictions"] == blended and len(blended) < blocking.number_of_blocks
    assert recomputed["supervoxels"] == segmented

    fresh = predict_config(tmp_path, raw_input, small_affinity_model, "fresh")
    assert run_cli("run", fresh, "--workers", "2") == 0
    for key in ("boundaries", "supervoxels", "segmentation"):
        assert np.array_equal(read(tmp_path / "cron.zarr", key), read(tmp_path / "fresh.zarr", key)), key


def test_rerun_of_prediction_blocks_invalidates_only_the_linked_blocks_that_read_them(tmp_path, raw_input, small_affinity_model, capsys):
    config = predict_config(tmp_path, raw_input, small_affinity_model, "rerun")
    assert run_cli("run", config) == 0
    reference = read(tmp_path / "rerun.zarr", "segmentation")
    started = time.time()
    capsys.readouterr()
    assert run_cli("rerun", config, "--stage", "predict", "--blocks", "0") == 0
    message = capsys.readouterr().err
    rerun = records_since(tmp_path / "rerun.zarr.work", started)
    run = load_run(str(config.resolve()))
    blend = run.stage("blend_predictions")
    linked = run.linked_blocks(blend, blend.reads[0])
    readers = {block_id for block_id, upstream in enumerate(linked) if 0 in upstream}
    assert 0 < len(readers) < run.geometry.blocking.number_of_blocks
    assert {block for stage, block in rerun if stage == "predict"} == {0, None}
    assert {block for stage, block in rerun if stage == "blend_predictions"} == readers | {None}
    assert f"blend_predictions blocks {', '.join(map(str, sorted(readers)))}" in message
    # Block ids of later stages come from a global stage: all of them.
    assert {block for stage, block in rerun if stage == "write_segmentation"} == set(range(run.geometry.blocking.number_of_blocks)) | {None}
    assert np.array_equal(read(tmp_path / "rerun.zarr", "segmentation"), reference)


def test_model_auto_chooses_the_shipped_model_by_voxel_size_and_refuses_data_far_from_all(tmp_path, raw_input, capsys):
    from emflow.storage.models import shipped_model_path
    from emflow.tasks.predict import model_path

    config = predict_config(tmp_path, raw_input, "auto", "auto")
    assert model_path(load_run(str(config)).config) == shipped_model_path("flyem_fib_affinities.pt")
    sstem = write_config(
        tmp_path / "sstem.toml", raw_input, tmp_path / "sstem.zarr", input={"boundaries_key": None, "resolution": [45.0, 5.0, 5.0]}
    )
    assert model_path(load_run(str(sstem)).config) == shipped_model_path("sstem_isbi2012_boundaries.pt")
    far = write_config(
        tmp_path / "far.toml", raw_input, tmp_path / "far.zarr", input={"boundaries_key": None, "resolution": [30.0, 30.0, 30.0]}
    )
    assert run_cli("run", far) == 2
    error = capsys.readouterr().err
    assert (
        "predict.model" in error
        and "flyem_fib_affinities.pt" in error
        and "sstem_isbi2012_boundaries.pt" in error
        and "emflow train" in error
    )
    assert not (tmp_path / "far.zarr").exists()


def test_a_model_trained_far_from_the_inputs_voxel_size_runs_with_a_warning(tmp_path, raw_input, small_affinity_model, capsys):
    from dataclasses import replace

    from emflow.storage.models import save_model

    far_model = tmp_path / "sstem_like.pt"
    save_model(far_model, replace(load_model(small_affinity_model), resolution=(50.0, 4.0, 4.0), modality="ssTEM"))
    config = predict_config(tmp_path, raw_input, far_model, "far")
    assert run_cli("predict", config) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line and str(far_model) in line]
    assert warnings and "[50.0, 4.0, 4.0]" in warnings[0] and "[10.0, 10.0, 10.0]" in warnings[0] and "ssTEM" in warnings[0]
    # A model trained at the input's voxel size gets none.
    near_model = tmp_path / "near.pt"
    save_model(near_model, replace(load_model(small_affinity_model), resolution=(10.0, 10.0, 10.0)))
    assert run_cli("predict", predict_config(tmp_path, raw_input, near_model, "near")) == 0
    assert "warning: model" not in capsys.readouterr().err


# --- writing behind the blocks (`StageSpec.writes_behind`) ---------------------------------------


def _failing_save(block_to_fail: int, error: OSError, calls: list):
    save = Store.save_partial_array

    def failing(self, stage, block_id, array):
        calls.append((threading.current_thread().name, block_id))
        if block_id == block_to_fail:
            raise error
        save(self, stage, block_id, array)

    return failing


def test_a_write_behind_a_block_that_fails_fails_that_block_alone_and_a_rerun_ends_identical(
    tmp_path, raw_input, small_affinity_model, monkeypatch
):
    config = write_config(
        tmp_path / "failed.toml",
        raw_input,
        tmp_path / "failed.zarr",
        block_shape=(16, 32, 32),
        input={"boundaries_key": None},
        predict={"model": str(small_affinity_model), "patch_shape": [16, 32, 32], "overlap": [4, 8, 8]},
        scheduling={"retries": 0},
    )
    calls = []
    monkeypatch.setattr(Store, "save_partial_array", _failing_save(4, OSError(errno.EIO, "Input/output error"), calls))
    assert not run_workflow(config, until="predict").succeeded
    # The sums were written by the write-behind thread, not by the one running the blocks.
    assert calls and all(thread.startswith("write-behind") for thread, _ in calls)
    work = tmp_path / "failed.zarr.work"
    records = JournalReader(work / "status" / "predict").refresh()
    assert set(records) == set(range(27)) - {4}
    # Every other block's record follows its sums (a block too small to own a patch has none).
    sums = {block_id for block_id, record in records.items() if record.result["patches"]}
    assert len(sums) > 4 and all((work / "blocks" / "predict" / f"{block_id}.npy").exists() for block_id in sums)
    assert all(records[block_id].result["write_seconds"] >= 0 for block_id in sums)
    failure = json.loads((work / "failed" / "predict" / "4.json").read_text())
    assert "Input/output error" in failure["error"] and failure["box"] == "z 0:16, y 32:64, x 32:64"
    assert "Traceback" in (work / "logs" / "predict" / "4.log").read_text()

    monkeypatch.undo()
    started = time.time()
    assert run_workflow(config, until="blend_predictions").succeeded
    rerun = {r.block_id for r in JournalReader(work / "status" / "predict").refresh().values() if r.finished > started}
    assert rerun == {4}
    assert not (work / "failed" / "predict" / "4.json").exists()
    reference = predict_config(tmp_path, raw_input, small_affinity_model, "reference")
    assert run_workflow(reference, until="blend_predictions").succeeded
    for key in ("predictions", "boundaries"):
        assert read(tmp_path / "failed.zarr", key).tobytes() == read(tmp_path / "reference.zarr", key).tobytes(), key


def test_a_write_behind_that_finds_no_space_stops_the_run_with_one_line(tmp_path, raw_input, small_affinity_model, monkeypatch, capsys):
    config = predict_config(tmp_path, raw_input, small_affinity_model, "full")
    calls = []
    monkeypatch.setattr(Store, "save_partial_array", _failing_save(2, OSError(errno.ENOSPC, "No space left on device"), calls))
    capsys.readouterr()
    assert run_cli("predict", config) == 74
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("emflow: error:")]
    assert len(errors) == 1 and "No space left on device (ENOSPC)" in errors[0], err
    assert "Traceback" not in err
    # Block 2's group stopped there: block 3, computed while block 2's sums were being written, was
    # not written, and no block after it ran (other groups are other tasks, which a full disk stops
    # at their first write).
    journals = tmp_path / "full.zarr.work" / "status" / "predict"
    (first, stop), *_ = (found for path in journals.iterdir() if (found := journal_range(path.name)) and found[0] <= 2 < found[1])
    assert stop > 4, "the test needs block 2's group to hold two blocks after it"
    assert {block_id for _, block_id in calls if first <= block_id < stop} == set(range(first, 3))
    assert not {2, 3} & set(JournalReader(journals).refresh())
