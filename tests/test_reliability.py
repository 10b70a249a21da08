"""A run treated as a user's cluster treats it: outputs deleted or edited, work-folder results
deleted or garbled, a full or read-only file system, half-imported inputs, data in a sliver of its
dtype's range, two configs on one output, a central scheduler that goes away, a host whose clock is
ahead, garbage in the journals, outputs placed where they must not be.

Each test goes through the command line (in-process, `run_cli`, or as a child process) and asserts
the exact recovery: where the run can recover, the result equals an uninterrupted run's bitwise.
The tests that need a small file system mount a tmpfs and so run as root only; otherwise they are
skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_crash_safety import RESULT_ARRAYS
from workflow_helpers import RESOLUTION, read, records_since, run_cli, write_config, write_inputs

from emflow.storage.volumes import open_volume, write_volume
from emflow.targets import BlockJournal, JournalReader, compact_journal, parse_record
from emflow.targets.journal import journal_name
from emflow.workflows.report import SIZES_STAGE
from emflow.workflows.status import workflow_status


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, flyem_crop) -> Path:
    return write_inputs(tmp_path_factory.mktemp("inputs"), flyem_crop)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs) -> dict[str, np.ndarray]:
    """The result arrays of an uninterrupted run of the default test config (8 blocks)."""
    folder = tmp_path_factory.mktemp("reference")
    assert run_cli("run", write_config(folder / "config.toml", inputs, folder / "out.zarr")) == 0
    return {key: read(folder / "out.zarr", key) for key in RESULT_ARRAYS}


def assert_identical(output: Path, reference: dict[str, np.ndarray]) -> None:
    for key, expected in reference.items():
        actual = read(output, key)
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), key
        assert actual.tobytes() == expected.tobytes(), f"{key} differs from an uninterrupted run's"


def finished_run(folder: Path, inputs: Path, **sections) -> Path:
    config = write_config(folder / "config.toml", inputs, folder / "out.zarr", **sections)
    assert run_cli("run", config) == 0
    return config


def all_done(config: Path) -> bool:
    return all(status.done == status.total for status in workflow_status(str(config.resolve())))


def rewritten(work: Path, since: float) -> set[tuple[str, int | None]]:
    """(stage, block) of the records written since `since` (stage records as (stage, None))."""
    return records_since(work, since)


# --- 1. missing or changed output is never reported as complete --------------------------------


def predicting_run(folder: Path, name: str, raw: np.ndarray, model: Path, block_shape=(8, 16, 16), **sections) -> Path:
    """Config of a run that predicts with `model` from `raw`, written as `<name>_input.zarr` ("config":
    `input.zarr`), into `<name>.zarr` ("config": `out.zarr`), in blocks and input chunks of
    `block_shape`; `sections` add config sections."""
    input_path, output_path = (
        (folder / "input.zarr", folder / "out.zarr") if name == "config" else (folder / f"{name}_input.zarr", folder / f"{name}.zarr")
    )
    write_volume(input_path, "raw", raw, resolution=RESOLUTION, chunks=block_shape)
    return write_config(
        folder / f"{name}.toml",
        input_path,
        output_path,
        block_shape=block_shape,
        halo=(2, 4, 4),
        input={"boundaries_key": None},
        predict={"model": str(model), "patch_shape": [16, 32, 32], "overlap": [4, 8, 8]},
        **sections,
    )


def changed_in_one_chunk(input_path: Path, raw: np.ndarray) -> np.ndarray:
    """Invert the raw data of one input chunk in place; return the whole new raw data."""
    changed = np.s_[0:8, 0:16, 0:16]
    new_raw = raw.copy()
    new_raw[changed] = 255 - new_raw[changed]
    open_volume(input_path, "raw", mode="r+")[changed] = new_raw[changed]
    return new_raw


def _delete_the_output(output: Path) -> None:
    shutil.rmtree(output)


def _delete_a_segmentation_chunk(output: Path) -> None:
    (output / "segmentation" / "s0" / "c" / "1" / "1" / "1").unlink()


def _edit_a_segmentation_block(output: Path) -> None:
    segmentation = open_volume(output, "segmentation", mode="r+")
    segmentation[32:64, 64:128, 64:128] = 7


def _delete_the_edge_costs(output: Path) -> None:
    shutil.rmtree(output / "graph" / "edge_costs")


# damage, the tasks that must run again (None: all of the stage's), the line the run prints
OUTPUT_DAMAGE = {
    "output-deleted": (_delete_the_output, None, "does not exist: every task that wrote into it runs again"),
    "chunk-deleted": (
        _delete_a_segmentation_chunk,
        {("write_segmentation", 7), ("write_segmentation", None)},
        "segmentation/s0/c/1/1/1 is missing",
    ),
    "block-edited": (
        _edit_a_segmentation_block,
        {("write_segmentation", 7), ("write_segmentation", None)},
        "segmentation/s0/c/1/1/1 was changed",
    ),
    "edge-costs-deleted": (_delete_the_edge_costs, {("edge_costs", None)}, "graph/edge_costs/c/0 is missing"),
}


@pytest.mark.parametrize("damage, rerun, message", OUTPUT_DAMAGE.values(), ids=OUTPUT_DAMAGE.keys())
def test_missing_or_changed_output_is_found_and_exactly_it_is_computed_again(tmp_path, inputs, reference, capsys, damage, rerun, message):
    config = finished_run(tmp_path, inputs)
    damage(tmp_path / "out.zarr")
    assert not all_done(config), "emflow status calls the damaged output done"
    started = time.time()
    capsys.readouterr()
    assert run_cli("run", config) == 0
    assert message in capsys.readouterr().err
    assert_identical(tmp_path / "out.zarr", reference)
    if rerun is not None:
        assert rewritten(tmp_path / "out.zarr.work", started) == rerun
    assert all_done(config)


# --- 2. damaged work-folder results are computed again when a task needs them -------------------


def test_deleted_cnn_sums_and_new_raw_data_recompute_the_predict_blocks_blending_needs(tmp_path, flyem_crop, small_affinity_model, capsys):
    raw = np.ascontiguousarray(flyem_crop["raw"][:32, :64, :64])
    config = predicting_run(tmp_path, "config", raw, small_affinity_model)
    assert run_cli("run", config) == 0
    shutil.rmtree(tmp_path / "out.zarr.work" / "blocks" / "predict")  # as the README suggests once a run is done
    new_raw = changed_in_one_chunk(tmp_path / "input.zarr", raw)

    started = time.time()
    capsys.readouterr()
    assert run_cli("run", config) == 0
    assert "computing again predict" in capsys.readouterr().err
    redone = rewritten(tmp_path / "out.zarr.work", started)
    predicted = {block_id for stage, block_id in redone if stage == "predict" and block_id is not None}
    blended = {block_id for stage, block_id in redone if stage == "blend_predictions" and block_id is not None}
    assert blended and len(blended) < 64, "only the blocks that add up the changed CNN sums are blended again"
    assert len(predicted) < 64, "only the CNN sums blending needs are computed again, not the whole volume"

    fresh = predicting_run(tmp_path, "fresh", new_raw, small_affinity_model)
    assert run_cli("run", fresh) == 0
    for key in ("predictions", "boundaries", "segmentation"):
        assert read(tmp_path / "out.zarr", key).tobytes() == read(tmp_path / "fresh.zarr", key).tobytes(), key


def test_a_deleted_graph_partial_is_computed_again_when_the_graph_is_merged_again(tmp_path, inputs, reference, capsys):
    config = finished_run(tmp_path, inputs)
    work = tmp_path / "out.zarr.work"
    (work / "blocks" / "block_graph" / "3.npz").unlink()
    assert all_done(config), "a missing partial result no pending task reads is no damage (emflow clean removes them)"
    started = time.time()
    capsys.readouterr()
    assert run_cli("rerun", config, "--stage", "merge_graph") == 0
    assert "computing again block_graph 1 block (3)" in capsys.readouterr().err
    assert {block_id for stage, block_id in rewritten(work, started) if stage == "block_graph"} == {3, None}
    assert_identical(tmp_path / "out.zarr", reference)


def test_garbage_node_labels_are_computed_again_when_a_segmentation_block_needs_them(tmp_path, inputs, reference):
    config = finished_run(tmp_path, inputs)
    work = tmp_path / "out.zarr.work"
    (work / "global" / "multicut" / "node_labels.npy").write_bytes(b"\x80\x04 not a numpy file")
    _delete_a_segmentation_chunk(tmp_path / "out.zarr")
    started = time.time()
    assert run_cli("run", config) == 0
    assert rewritten(work, started) == {("multicut", None), ("write_segmentation", 7), ("write_segmentation", None)}
    assert_identical(tmp_path / "out.zarr", reference)


# --- 3. a run that cannot write stops with one line and resumes identically ---------------------


@contextlib.contextmanager
def small_file_system(folder: Path, size: str):
    """A tmpfs of `size` at `folder` (root only: skips otherwise, with the reason), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; this test runs as root only")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


def assert_one_clear_line(err: str, folder: Path, cause: str) -> None:
    assert "Logging error" not in err and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("emflow: error:")]
    assert len(errors) == 1, err
    assert f"cannot write {folder}/" in errors[0] and cause in errors[0], errors[0]
    # Progress lines (timestamped, a few per stage) aside.
    said = [line for line in err.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    assert len(said) <= 6, f"the run said more than it needed to:\n{err}"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_file_system_stops_the_run_with_one_line_and_the_run_resumes_identically(tmp_path, inputs, reference, capsys, workers):
    with small_file_system(tmp_path / "small", "300k") as folder:
        config = write_config(folder / "config.toml", inputs, folder / "out.zarr")
        capsys.readouterr()
        assert run_cli("run", config, "--workers", str(workers)) == 74
        assert_one_clear_line(capsys.readouterr().err, folder, "No space left on device (ENOSPC)")
        remount(folder, "size=64m")
        assert run_cli("run", config, "--workers", str(workers)) == 0
        assert_identical(folder / "out.zarr", reference)


def test_a_run_whose_own_log_is_on_the_full_file_system_still_ends_with_its_exit_code(tmp_path, inputs):
    # cron's `emflow run c.toml >> run.log 2>&1`, with the log beside the data: what the run says is
    # lost once the disk is full, but not its exit code.
    with small_file_system(tmp_path / "small", "300k") as folder:
        config = write_config(folder / "config.toml", inputs, folder / "out.zarr")
        with open(folder / "run.log", "w") as log:
            completed = subprocess.run([sys.executable, "-m", "emflow.cli.main", "run", str(config)], stdout=log, stderr=log, timeout=600)
        assert completed.returncode == 74, (folder / "run.log").read_text()[-3000:]


def test_an_output_turned_read_only_mid_run_stops_it_with_one_line_and_the_run_resumes_identically(tmp_path, inputs, reference, capsys):
    """Read-only by a bind mount of the output onto itself, remounted read-only (root), or by taking
    away write permission (other users; root ignores it)."""
    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr")
    output, journals = tmp_path / "out.zarr", tmp_path / "out.zarr.work" / "status" / "supervoxels"
    root = os.geteuid() == 0
    if root and subprocess.run(["mount", "--bind", str(tmp_path), str(tmp_path)], capture_output=True).returncode == 0:
        subprocess.run(["umount", str(tmp_path)], check=True)
    elif root:
        pytest.skip("bind mounts are not allowed here, and root ignores permissions")

    def turn_read_only() -> None:
        deadline = time.monotonic() + 60
        while len(JournalReader(journals).refresh()) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        if root:
            subprocess.run(["mount", "--bind", str(output), str(output)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(output)], check=True)
        else:
            for folder, _, _ in os.walk(output):
                os.chmod(folder, 0o555)

    watcher = threading.Thread(target=turn_read_only)
    watcher.start()
    capsys.readouterr()
    try:
        code = run_cli("run", config)
    finally:
        watcher.join()
        if root:
            subprocess.run(["umount", str(output)], check=False)
        else:
            for folder, _, _ in os.walk(output):
                os.chmod(folder, 0o755)
    assert code == 74
    assert_one_clear_line(capsys.readouterr().err, output, "Read-only file system (EROFS)" if root else "Permission denied (EACCES)")
    assert run_cli("run", config) == 0
    assert_identical(output, reference)


# --- 4. partly written inputs -------------------------------------------------------------------


def test_an_import_that_did_not_finish_is_refused_and_missing_chunks_are_named(tmp_path, flyem_crop, monkeypatch, capsys):
    import h5py

    from emflow.storage import volumes

    boundaries = read(write_inputs(tmp_path, flyem_crop), "boundaries")
    with h5py.File(tmp_path / "source.h5", "w") as file:  # two slabs of 64 planes: the import copies one, then is killed
        file.create_dataset("boundaries", data=np.concatenate([boundaries, boundaries]))
    blocks = volumes._copy_blocks

    def interrupted(shape, chunks, itemsize):  # the import is killed half-way through its copy
        copies = list(blocks(shape, chunks, itemsize))
        yield from copies[: len(copies) // 2]
        raise KeyboardInterrupt

    monkeypatch.setattr(volumes, "_copy_blocks", interrupted)
    assert (
        run_cli(
            "import",
            tmp_path / "source.h5:boundaries",
            tmp_path / "half.zarr",
            "--key",
            "boundaries",
            "--resolution",
            *map(str, RESOLUTION),
        )
        == 130
    )
    monkeypatch.undo()
    config = write_config(tmp_path / "config.toml", tmp_path / "half.zarr", tmp_path / "out.zarr", input={"raw_key": None})
    capsys.readouterr()
    assert run_cli("run", config) == 2
    message = capsys.readouterr().err
    assert f"{tmp_path}/half.zarr:boundaries was not completely imported" in message and "4 of 8 chunks are written" in message
    assert not (tmp_path / "out.zarr").exists()

    # A complete dataset with a chunk missing inside what was written: named, in z/y/x voxels.
    shutil.copytree(tmp_path / "input.zarr", tmp_path / "holed.zarr")
    (tmp_path / "holed.zarr" / "boundaries" / "c" / "0" / "1" / "0").unlink()
    holed = write_config(tmp_path / "holed.toml", tmp_path / "holed.zarr", tmp_path / "holed_out.zarr")
    capsys.readouterr()
    assert run_cli("run", holed) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("emflow: warning:")]
    expected = f"boundary map {tmp_path}/holed.zarr:boundaries: 1 chunk inside the written region is not stored and reads as the fill value: z 0:32, y 64:128, x 0:64"
    assert len(warnings) == 2 and all(expected in line for line in warnings), "warned before the run and again in its summary"


# --- 5. data in a sliver of its dtype's range ---------------------------------------------------


def test_raw_data_in_a_sliver_of_its_dtype_is_warned_about_with_the_numbers(tmp_path, flyem_crop, small_affinity_model, capsys):
    raw = flyem_crop["raw"][:32, :64, :64].astype(np.uint16)  # 8-bit values in uint16
    config = predicting_run(tmp_path, "config", raw, small_affinity_model, block_shape=(16, 32, 32))
    capsys.readouterr()
    assert run_cli("run", config) == 0
    err = capsys.readouterr().err
    share = 100 * (int(raw.max()) - int(raw.min()) + 1) / 65536
    expected = f"raw data {tmp_path}/input.zarr:raw is uint16 but its values lie in {raw.min()}..{raw.max()} (read from all its 8 stored chunks), {share:.2g} % of the range 0..65535"
    warnings = [line for line in err.splitlines() if line.startswith("emflow: warning:")]
    assert len(warnings) == 2 and all(expected in line for line in warnings), err
    assert err.splitlines()[-1] == warnings[-1], "the run's summary ends with the warning"


def test_a_boundary_map_in_a_sliver_of_its_range_is_warned_about_and_an_all_zero_mask_refused(tmp_path, inputs, capsys):
    boundaries = read(inputs, "boundaries") / 100
    write_volume(tmp_path / "in.zarr", "boundaries", boundaries, resolution=RESOLUTION, chunks=(32, 64, 64))
    write_volume(tmp_path / "in.zarr", "mask", np.zeros(boundaries.shape, np.uint8), resolution=RESOLUTION, chunks=(32, 64, 64))
    config = write_config(tmp_path / "config.toml", tmp_path / "in.zarr", tmp_path / "out.zarr", input={"raw_key": None})
    capsys.readouterr()
    assert run_cli("run", config) == 0
    err = capsys.readouterr().err
    low, high = (f"{value:.4g}" if not float(value).is_integer() else str(int(value)) for value in (boundaries.min(), boundaries.max()))
    assert f"warning: boundary map {tmp_path}/in.zarr:boundaries is float32 but its values lie in {low}..{high}" in err, err

    masked = write_config(
        tmp_path / "masked.toml", tmp_path / "in.zarr", tmp_path / "masked.zarr", input={"raw_key": None, "mask_key": "mask"}
    )
    capsys.readouterr()
    assert run_cli("run", masked) == 2
    assert (
        f"mask dataset {tmp_path}/in.zarr:mask is 0 everywhere (0 (no chunk is stored: every voxel holds the fill value))"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "masked.zarr").exists()


# --- 6. one output, two work folders ------------------------------------------------------------


def test_two_configs_with_other_work_folders_never_share_one_output(tmp_path, inputs, reference, capsys):
    output = tmp_path / "out.zarr"
    a = write_config(tmp_path / "a.toml", inputs, output, output={"work_dir": str(tmp_path / "a.work")})
    b = write_config(tmp_path / "b.toml", inputs, output, output={"work_dir": str(tmp_path / "b.work")}, multicut={"beta": 0.3})
    assert run_cli("run", a) == 0
    capsys.readouterr()
    assert run_cli("run", b) == 2
    assert f"holds the results of the run whose work folder is {tmp_path}/a.work" in capsys.readouterr().err
    assert not (tmp_path / "b.work" / "status").exists(), "refused before anything ran"

    assert run_cli("run", b, "--update") == 0  # b takes the output over
    assert not np.array_equal(read(output, "segmentation"), reference["segmentation/s0"])
    assert run_cli("run", a) == 2, "a never takes b's results for its own"
    assert run_cli("run", a, "--update") == 0
    assert_identical(output, reference)

    # Runs at once: a run of b while a holds the output's lock exits at once.
    lock = os.open(tmp_path / "out.zarr.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        capsys.readouterr()
        assert run_cli("run", b, "--update") == 75
        assert "another emflow run is working on this output" in capsys.readouterr().err
    finally:
        os.close(lock)
    assert_identical(output, reference)


# --- 7. a central scheduler that goes away ------------------------------------------------------


def test_a_central_scheduler_that_goes_away_mid_run_fails_it_within_seconds_with_one_line(tmp_path, inputs, reference):
    from emflow.cluster.luigid import start_luigid, stop_luigid

    config = write_config(tmp_path / "config.toml", inputs, tmp_path / "out.zarr", block_shape=(16, 32, 32))
    server, port = start_luigid(tmp_path / "luigid")
    command = [sys.executable, "-m", "emflow.cli.main", "run", str(config), "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        journals = tmp_path / "out.zarr.work" / "status" / "supervoxels"
        while not JournalReader(journals).refresh() and run.poll() is None:
            time.sleep(0.01)
        stop_luigid(server.pid, timeout=0)
        gone = time.monotonic()
        _, err = run.communicate(timeout=120)
        seconds = time.monotonic() - gone
    finally:
        run.kill()
        stop_luigid(server.pid)
    assert run.returncode == 2 and seconds < 30, (run.returncode, seconds, err[-2000:])
    errors = [line for line in err.splitlines() if line.startswith("emflow: error:")]
    assert len(errors) == 1 and f"central scheduler on 127.0.0.1:{port} stopped answering" in errors[0], err[-2000:]
    assert "Traceback" not in err
    # With a scheduler again, the run resumes and finishes as an uninterrupted run of the config does.
    server, port = start_luigid(tmp_path / "luigid2")
    try:
        assert run_cli("run", config, "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port)) == 0
    finally:
        stop_luigid(server.pid)
    uninterrupted = write_config(tmp_path / "local.toml", inputs, tmp_path / "local.zarr", block_shape=(16, 32, 32))
    assert run_cli("run", uninterrupted) == 0
    assert_identical(tmp_path / "out.zarr", {key: read(tmp_path / "local.zarr", key) for key in RESULT_ARRAYS})


# --- 8. a host whose clock is ahead ---------------------------------------------------------------


def test_an_invalidation_from_a_host_whose_clock_is_ahead_does_not_wedge_the_block(tmp_path, inputs, reference, monkeypatch):
    config = finished_run(tmp_path, inputs, scheduling={"retries": 0})
    clock = time.time
    with monkeypatch.context() as skewed:  # a host a day ahead asks for block 3 again; its run of it fails
        skewed.setattr(time, "time", lambda: clock() + 86400)
        skewed.setenv("EMFLOW_INJECT_FAILURES", "1")
        assert run_cli("rerun", config, "--stage", "supervoxels", "--blocks", "3") == 1
    assert run_cli("run", config) == 0, "this host's run completes the block"
    assert all_done(config)
    assert_identical(tmp_path / "out.zarr", reference)


# --- 9. the journal reader survives any line ----------------------------------------------------


def test_garbage_journal_lines_never_crash_run_or_status(tmp_path, inputs, reference, capsys):
    config = finished_run(tmp_path, inputs)
    journals = tmp_path / "out.zarr.work" / "status"
    garbage = [
        b'{"block_id": 1e400, "fingerprint": null, "finished": 0, "result": {}}\n',
        b'{"block_id": 2, "fingerprint": "x", "finished": 1e400, "result": {}, "seq": 9}\n',
        b'{"block_id": -1, "fingerprint": null, "finished": 0, "result": {}}\n',
        b'{"block_id": true, "fingerprint": null, "finished": 0, "result": {}}\n',
        b"[" * 100000 + b"\n",
        b"\x00" * 64 + b"\n",
        b'{"block_id": 0, "fingerprint": null, "finished": 0, "result": {}, "seq": 99999999999999999999999}\n',
    ]
    for journal in journals.glob("*/*.jsonl"):
        with open(journal, "ab") as handle:
            handle.write(b"".join(garbage))
    assert run_cli("status", config) == 0
    started = time.time()
    assert run_cli("run", config) == 0
    redone = {(stage, block_id) for stage, block_id in rewritten(tmp_path / "out.zarr.work", started) if block_id is not None}
    assert redone == set(), "garbage is no record, and no record of a finished block is lost to it"
    assert_identical(tmp_path / "out.zarr", reference)


def _random_json(generator: random.Random, depth: int = 0):
    kind = generator.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return generator.choice([True, False])
    if kind == 2:
        return generator.choice([0, -1, 1, 2**63, 2**63 - 1, -(2**70), generator.randrange(-(10**30), 10**30)])
    if kind == 3:
        return generator.choice([0.5, -0.0, 1e308, float("inf"), float("-inf"), float("nan"), generator.uniform(-1e9, 1e9)])
    if kind == 4:
        return "".join(chr(generator.randrange(0x20, 0x3000)) for _ in range(generator.randrange(8)))
    if kind == 5:
        return generator.choice(["", "block_id", "fingerprint", "x" * 64])
    if kind == 6:
        return [_random_json(generator, depth + 1) for _ in range(generator.randrange(4))]
    fields = ("block_id", "fingerprint", "finished", "result", "seq", "writer", "data")
    return {
        generator.choice(fields) if generator.random() < 0.8 else str(_random_json(generator, 4)): _random_json(generator, depth + 1)
        for _ in range(generator.randrange(8))
    }


def _random_line(generator: random.Random) -> bytes:
    kind = generator.randrange(4)
    if kind == 0:  # random bytes (no newline inside: one line)
        return bytes(generator.randrange(256) for _ in range(generator.randrange(200))).replace(b"\n", b" ")
    if kind == 1:  # a record with some fields replaced by random values
        record = {
            "block_id": generator.randrange(8),
            "fingerprint": "f" * 64,
            "finished": 1.0,
            "result": {},
            "seq": generator.randrange(5),
            "writer": "h-1",
        }
        for name in generator.sample(sorted(record) + ["data"], generator.randrange(1, 4)):
            record[name] = _random_json(generator)
        text = json.dumps(record)
    elif kind == 2:
        text = json.dumps(_random_json(generator))
    else:  # a valid record cut at a random place
        text = json.dumps({"block_id": 1, "fingerprint": None, "finished": 2.0, "result": {}, "seq": 3, "writer": "h-1"})
        text = text[: generator.randrange(len(text))]
    return text.encode(errors="surrogatepass").replace(b"\n", b" ")


def test_the_journal_reader_survives_any_line(tmp_path):
    """Property test: random bytes and random JSON values, mixed with real records, seeded: the reader
    never raises, takes only well-formed records, and no real record is outranked by a lower one."""
    generator = random.Random(12)
    for trial in range(300):
        folder = tmp_path / str(trial)
        folder.mkdir()
        lines, mine = [], []  # mine: (line index, block id, sequence number) of the real records
        for index in range(generator.randrange(1, 30)):
            if generator.random() < 0.3:
                block_id, seq = generator.randrange(8), generator.randrange(1, 50)
                lines.append(
                    json.dumps(
                        {"block_id": block_id, "fingerprint": "f" * 64, "finished": 0.0, "result": {}, "seq": seq, "writer": "w"}
                    ).encode()
                )
                mine.append((index, block_id, seq))
            else:
                lines.append(_random_line(generator))
        terminated = generator.random() < 0.8  # else the last line is still being written: not read
        (folder / "0-8.jsonl").write_bytes(b"\n".join(lines) + (b"\n" if terminated else b""))
        records = JournalReader(folder).refresh()
        for block_id, record in records.items():
            assert isinstance(record.block_id, int) and 0 <= record.block_id < 2**63 and record.block_id == block_id
            assert record.fingerprint is None or isinstance(record.fingerprint, str)
            assert isinstance(record.result, dict) and isinstance(record.seq, int) and np.isfinite(record.finished)
            assert record.data is None or isinstance(record.data, dict)
        for index, block_id, seq in mine:
            if terminated or index < len(lines) - 1:
                assert records[block_id].seq >= seq, (trial, block_id)


def test_compacting_a_journal_changes_no_blocks_latest_record(tmp_path):
    """Property test, seeded: a group's journal of real records (ties, invalidations, sequence
    numbers 0) and damaged lines, beside an invalidation journal. Compaction leaves every block's
    latest record over both journals as it was, keeps one line per block, and a reader that read
    the journal before it reads on correctly after it, lines appended since included."""
    generator = random.Random(7)

    def record_line() -> bytes:
        record = {
            "block_id": generator.randrange(6),
            "fingerprint": generator.choice([None, "f" * 64, "e" * 64]),
            "finished": float(generator.randrange(3)),
            "result": {"attempt": generator.randrange(1000)},
            "seq": generator.randrange(4),
            "writer": generator.choice(["a-1", "b-2"]),
        }
        return json.dumps(record).encode()

    compacted = 0
    for trial in range(200):
        folder = tmp_path / str(trial)
        folder.mkdir()
        lines = [record_line() if generator.random() < 0.8 else _random_line(generator) for _ in range(generator.randrange(6, 40))]
        journal = folder / "0-6.jsonl"
        journal.write_bytes(b"\n".join(lines) + b"\n")
        (folder / "0-6.h-9.jsonl").write_bytes(b"\n".join(record_line() for _ in range(3)) + b"\n")
        reader = JournalReader(folder)
        before = dict(reader.refresh())
        lines_before = journal.read_bytes().count(b"\n")
        done = compact_journal(journal, 6)
        assert done == (lines_before > 2 * 6), trial
        if done:  # one line per block: each a record, of a block no other line names
            kept = [parse_record(line) for line in journal.read_bytes().splitlines()]
            assert all(kept) and len({record.block_id for record in kept}) == len(kept), trial
            compacted += 1
        assert JournalReader(folder).refresh() == before, trial
        with BlockJournal(folder, 0, 6) as appending:
            appending.append(generator.randrange(6), "d" * 64, {"appended": True}, after=generator.randrange(5))
        assert reader.refresh() == JournalReader(folder).refresh(), trial
    assert compacted > 50


def test_a_journal_is_parsed_once_per_process_and_read_again_when_replaced(tmp_path, monkeypatch):
    """Readers share what the process parsed of a journal: a new reader parses only the lines
    appended since. A journal replaced by another file (here rewritten in place, so on the same
    inode, and longer than what was parsed) is parsed again from its start."""
    from emflow.targets import journal as journal_module

    parsed = []
    monkeypatch.setattr(journal_module, "parse_record", lambda line: parsed.append(line) or parse_record(line))
    folder = tmp_path / "stage"
    with BlockJournal(folder, 0, 8) as appending:
        for block_id in range(5):
            appending.append(block_id, "f" * 64, {"run": 1})
    first = JournalReader(folder).refresh()
    assert sorted(first) == [0, 1, 2, 3, 4] and len(parsed) == 5
    # Read again unchanged: nothing parsed, the records merged before; what a reader was given is its own.
    again = JournalReader(folder).refresh()
    again.pop(0)
    assert len(parsed) == 5 and JournalReader(folder).refresh() == first
    with BlockJournal(folder, 0, 8) as appending:
        appending.append(6, "f" * 64, {"run": 2}, after=0)
    parsed.clear()
    second = JournalReader(folder, (0, 8)).refresh()
    assert len(parsed) == 1, "only the appended line is parsed"
    assert second == {**first, 6: second[6]} and second[6].result == {"run": 2}
    assert JournalReader(folder, (8, 16)).refresh() == {}, "a journal of other blocks is not read"

    journal = folder / journal_name(0, 8)
    inode = journal.stat().st_ino
    other = b"".join(
        json.dumps(
            {"block_id": block_id, "fingerprint": "e" * 64, "finished": 1.0, "result": {"other": True}, "seq": 9, "writer": "h-2"}
        ).encode()
        + b"\n"
        for block_id in (7, 3, 5, 1, 2, 0, 4, 6)
    )
    assert len(other) > journal.stat().st_size
    with open(journal, "r+b") as handle:
        handle.write(other)
        handle.truncate()
    assert journal.stat().st_ino == inode
    parsed.clear()
    replaced = JournalReader(folder).refresh()
    assert len(parsed) == 8
    assert sorted(replaced) == list(range(8)) and all(record.result == {"other": True} for record in replaced.values())
    journal.unlink()
    assert JournalReader(folder).refresh() == {}


# --- 10. output placement and messages ----------------------------------------------------------


def test_outputs_placed_over_the_work_folder_or_inside_the_input_are_refused_before_anything_is_written(
    tmp_path, inputs, reference, capsys, monkeypatch
):
    same = write_config(tmp_path / "same.toml", inputs, tmp_path / "out.zarr", output={"work_dir": str(tmp_path / "out.zarr")})
    capsys.readouterr()
    assert run_cli("run", same) == 2
    assert "must be separate folders" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists(), "no debris left to block the corrected config"
    assert run_cli("run", write_config(tmp_path / "fixed.toml", inputs, tmp_path / "out.zarr")) == 0
    assert_identical(tmp_path / "out.zarr", reference)

    inside = write_config(tmp_path / "inside.toml", inputs, inputs / "out.zarr")
    capsys.readouterr()
    assert run_cli("run", inside) == 2
    assert f"lies inside the input {inputs}" in capsys.readouterr().err
    assert not (inputs / "out.zarr").exists() and not (inputs / "out.zarr.work").exists()

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = write_config(tmp_path / "home.toml", inputs, Path("~/results/out.zarr"))
    assert run_cli("run", home) == 0
    assert_identical(tmp_path / "home" / "results" / "out.zarr", reference)


def test_a_block_failure_names_the_dataset_and_the_box_in_voxels_never_python_reprs(tmp_path, flyem_crop, small_affinity_model, capsys):
    raw = flyem_crop["raw"][:16, :32, :32].astype(np.float32) / 255
    raw[10, 20, 20] = 2.0
    config = predicting_run(tmp_path, "config", raw, small_affinity_model, block_shape=(16, 32, 32), scheduling={"retries": 0})
    capsys.readouterr()
    assert run_cli("run", config) == 1
    err = capsys.readouterr().err
    assert (
        f"predict block 0: InputError: raw data {tmp_path}/input.zarr:raw must be finite and in [0, 1] when stored as floats; box z " in err
    )
    assert "block box: z 0:16, y 0:32, x 0:32" in err
    assert "slice(" not in err and "Box(" not in err


# --- emflow verify and emflow clean -------------------------------------------------------------


def damage_in_place(path: Path) -> None:
    """Flip the bits of the middle byte of a file and give it back its times: a fault that keeps
    size and modification time, which only reading the file finds."""
    status = path.stat()
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def test_verify_finds_bytes_changed_in_place_and_repair_writes_them_again(tmp_path, inputs, reference, capsys):
    config = finished_run(tmp_path, inputs)
    capsys.readouterr()
    assert run_cli("verify", config) == 0
    assert "every file is as written" in capsys.readouterr().out
    chunk = tmp_path / "out.zarr" / "segmentation" / "s0" / "c" / "0" / "1" / "0"
    damage_in_place(chunk)
    assert all_done(config), "size and time are what emflow run checks: this damage only verify finds"
    capsys.readouterr()
    assert run_cli("verify", config) == 1
    assert (
        f"{chunk} is damaged: the same size and time as written, other bytes (its digest differs) (write_segmentation block 2)"
        in capsys.readouterr().err
    )
    assert run_cli("verify", config, "--repair") == 1
    started = time.time()
    assert run_cli("run", config) == 0
    assert rewritten(tmp_path / "out.zarr.work", started) == {("write_segmentation", 2), ("write_segmentation", None)}
    assert run_cli("verify", config) == 0
    assert_identical(tmp_path / "out.zarr", reference)


def test_verify_checks_the_sha256_digests_of_records_an_emflow_before_xxh3_wrote(tmp_path, inputs, capsys):
    """Records written before digests were XXH3-128 hold SHA-256 hex digests: `emflow verify` checks
    those files with SHA-256, so that an upgrade calls no file damaged, and finds real damage."""
    import hashlib

    from emflow.tasks.adapter import output_files
    from emflow.workflows.segmentation import load_run

    config = finished_run(tmp_path, inputs)
    run = load_run(str(config))
    files = output_files(run, run.stage("write_segmentation"))
    for journal in sorted((tmp_path / "out.zarr.work" / "status" / "write_segmentation").glob("*.jsonl")):
        lines = []
        for line in journal.read_text().splitlines():
            record = json.loads(line)
            for state, path in zip(record["data"]["outputs"], files[record["block_id"]]):
                assert state[2].startswith("xxh3-128:")
                state[2] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            lines.append(json.dumps(record))
        journal.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert run_cli("verify", config) == 0
    assert "every file is as written" in capsys.readouterr().out
    chunk = tmp_path / "out.zarr" / "segmentation" / "s0" / "c" / "0" / "1" / "0"
    damage_in_place(chunk)
    assert run_cli("verify", config) == 1
    assert f"{chunk} is damaged: the same size and time as written, other bytes (its digest differs)" in capsys.readouterr().err


def test_clean_keeps_a_rerun_a_no_op_and_reprocessing_recomputes_the_cnn_sums_it_needs(tmp_path, flyem_crop, small_affinity_model, capsys):
    raw = np.ascontiguousarray(flyem_crop["raw"][:32, :64, :64])
    config = predicting_run(tmp_path, "config", raw, small_affinity_model)
    capsys.readouterr()
    assert run_cli("clean", config) == 2, "a run not yet run is not cleaned"
    assert run_cli("run", config) == 0
    work = tmp_path / "out.zarr.work"
    assert (work / "cache" / "merge_graph" / "block_graph.npz").is_file()
    capsys.readouterr()
    assert run_cli("clean", config) == 0
    assert "removed the partial results of predict (" in capsys.readouterr().out
    # Only the supervoxel sizes the run report reads are left; the graph merge's cache of the block
    # graphs went with them.
    assert sorted(path.name for path in (work / "blocks").iterdir()) == [SIZES_STAGE]
    assert list((work / "cache").rglob("*.npz")) == []
    started = time.time()
    assert run_cli("run", config) == 0
    assert rewritten(work, started) == set(), "a rerun after clean does nothing"
    assert all_done(config)
    assert run_cli("verify", config) == 0

    new_raw = changed_in_one_chunk(tmp_path / "input.zarr", raw)
    started = time.time()
    assert run_cli("run", config) == 0
    predicted = {block_id for stage, block_id in rewritten(work, started) if stage == "predict" and block_id is not None}
    assert 0 < len(predicted) < 64
    fresh = predicting_run(tmp_path, "fresh", new_raw, small_affinity_model)
    assert run_cli("run", fresh) == 0
    for key in ("boundaries", "segmentation"):
        assert read(tmp_path / "out.zarr", key).tobytes() == read(tmp_path / "fresh.zarr", key).tobytes(), key
    # The run report can still be written, and counts the new segmentation's voxels.
    assert run_cli("report", config) == 0
    segmentation = read(tmp_path / "out.zarr", "segmentation")
    _, voxels = np.unique(segmentation[segmentation != 0], return_counts=True)
    report = json.loads((work / "report" / "run_report.json").read_text())
    assert report["segments"]["number_of_segments"] == len(voxels) and report["segments"]["largest_voxels"] == voxels.max()


def test_block_records_hold_the_state_and_digest_of_every_file_they_wrote(tmp_path, inputs):
    import xxhash

    finished_run(tmp_path, inputs)
    record = JournalReader(tmp_path / "out.zarr.work" / "status" / "write_segmentation").refresh()[7]
    chunk = tmp_path / "out.zarr" / "segmentation" / "s0" / "c" / "1" / "1" / "1"
    status = chunk.stat()
    assert record.data["outputs"] == [[status.st_size, status.st_mtime_ns, "xxh3-128:" + xxhash.xxh3_128(chunk.read_bytes()).hexdigest()]]
    graph = JournalReader(tmp_path / "out.zarr.work" / "status" / "block_graph").refresh()[3]
    partial = tmp_path / "out.zarr.work" / "blocks" / "block_graph" / "3.npz"
    assert graph.data["partials"][0][:2] == [partial.stat().st_size, partial.stat().st_mtime_ns] and graph.data["partials"][1] is None
    costs = json.loads((tmp_path / "out.zarr.work" / "status" / "edge_costs.json").read_text())["data"]["outputs"]
    assert sorted(costs) == ["graph/edge_costs/c/0", "graph/edge_costs/zarr.json"]
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["emflow"]["work_dir"] == str(tmp_path / "out.zarr.work")
