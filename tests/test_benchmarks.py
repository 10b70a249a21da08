"""Smoke runs of the benchmark scripts: they run end to end and report what they claim to measure.

Timings are not asserted here (benchmarks/ is where speed lives); structure and success are.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest
from workflow_helpers import run_cli, write_config

from benchmarks import end_to_end, noop_rerun, orchestration, reprocessing, scaling
from emflow.targets import JournalReader
from emflow.workflows.segmentation import load_run


def test_orchestration_benchmark_runs_every_contender(tmp_path):
    results = orchestration.benchmark([40, 160], [20], 1, tmp_path)
    contenders = {(row["contender"], row["blocks"]) for row in results["rows"]}
    assert contenders == {
        ("emflow local scheduler", 40),
        ("emflow local scheduler", 160),
        ("emflow luigid, 2 worker processes", 40),
        ("emflow luigid, 2 worker processes", 160),
        ("plain Luigi, a task per block", 20),
    }
    assert all(row["succeeded"] and row["seconds"] > 0 for row in results["rows"])
    assert "noop_rerun_seconds" in next(row for row in results["rows"] if row["blocks"] == 160 and "local" in row["contender"])
    assert set(results["scaling"]) == {"emflow local scheduler", "emflow luigid, 2 worker processes"}
    assert "| plain Luigi, a task per block | 20 |" in orchestration.markdown(results)


def test_trivial_workflow_records_every_block_of_every_stage(tmp_path):
    config = orchestration.write_trivial_config(tmp_path, 30)
    assert orchestration.run_emflow(config, workers=2, scheduler_port=None)["succeeded"]
    for stage in range(orchestration.NUMBER_OF_STAGES):
        records = JournalReader(tmp_path / "output.zarr.work" / "status" / f"trivial_{stage}").refresh()
        assert sorted(records) == list(range(30))


def test_stage_io_reference_rewrites_what_each_block_wise_stage_wrote(tmp_path, workflow_inputs):
    config = write_config(tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr", output={"pyramid": True})
    assert run_cli("run", config) == 0
    references = end_to_end.stage_io_reference(config, tmp_path / "reference")

    run = load_run(str(config))
    blockwise = [spec for spec in run.stages if spec.blockwise]
    assert list(references) == [spec.name for spec in blockwise]
    assert "pyramid_s1" in references
    for spec in blockwise:
        reference = references[spec.name]
        assert reference["blocks"] == spec.blocks(run).number_of_blocks
        assert reference["read_seconds"] > 0 and reference["seconds"] == reference["read_seconds"] + reference["write_seconds"]
        # Same values through the same codecs: every chunk file the stage wrote, byte for byte.
        for write in spec.writes:
            if write.kind == "array":
                path = run.store.volumes[write.name].path
                written, rewritten = run.layout.output_path / path, tmp_path / "reference" / spec.name / path
                chunks = sorted(file.relative_to(written) for file in written.rglob("*") if file.is_file() and file.name != "zarr.json")
                assert chunks and chunks == sorted(
                    file.relative_to(rewritten) for file in rewritten.rglob("*") if file.is_file() and file.name != "zarr.json"
                )
                assert all((written / chunk).read_bytes() == (rewritten / chunk).read_bytes() for chunk in chunks)
            elif write.kind == "partials":
                # A block writes a partial result or none (the segmentation's blocks outside the
                # report's preview section, every block of a level it is not read from); the
                # reference writes those there are.
                partials = [run.layout.partial(spec.name, block_id, ".npz") for block_id in range(spec.blocks(run).number_of_blocks)]
                copies = [tmp_path / "reference" / spec.name / "partials" / partial.name for partial in partials]
                assert [partial.exists() for partial in partials] == [copy.exists() for copy in copies]
                for partial, copy in zip(partials, copies):
                    if partial.exists():
                        with np.load(partial) as expected, np.load(copy) as copied:
                            assert expected.files == copied.files
                            assert all(np.array_equal(expected[field], copied[field]) for field in expected.files)

    rows = end_to_end.stage_rows({"supervoxels": 2.0}, references, megavoxels=1.0)
    assert [row["stage"] for row in rows] == list(references)
    assert rows[0]["mvox_per_second"] == 0.5 and rows[0]["ratio"] == 2.0 / references["supervoxels"]["seconds"]
    assert rows[1]["mvox_per_second"] is None


def test_noop_rerun_benchmark_reruns_a_finished_run_without_recomputing(tmp_path):
    results = noop_rerun.run(workers=1, reruns=1, scratch=tmp_path, shape=(16, 16, 24))
    assert results["number_of_blocks"] == 2 * 2 * 3 and results["records"] > 0
    assert len(results["rerun_seconds"]) == 1 and results["full_run_seconds"] > 0
    # New data in the middle chunk (8:16, 8:16, 8:16): its supervoxel block runs again, no other.
    assert results["changed_chunk"] == [[8, 16]] * 3 and results["one_chunk_blocks_recomputed"]["supervoxels"]["blocks"] == 1
    assert results["one_chunk_phases"]["tasks"] > 0
    assert "| full run |" in noop_rerun.markdown(results) and "| run after new data in one input chunk |" in noop_rerun.markdown(results)


def test_run_phases_split_a_run_by_the_records_it_wrote(tmp_path, workflow_inputs):
    config = write_config(tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr")
    work_dir = tmp_path / "out.zarr.work"
    started_at = time.time()
    assert run_cli("run", config) == 0
    ended_at = time.time()
    phases = reprocessing.run_phases(work_dir, started_at, ended_at)
    records = [
        record for folder in (work_dir / "status").iterdir() if folder.is_dir() for record in JournalReader(folder).refresh().values()
    ]
    first = min(end_to_end.task_start(record.finished, record.result) for record in records)
    # No task starts before its process: the first block record's start bounds the first phase.
    assert 0 < phases["before_tasks"] <= first - started_at
    assert phases["tasks"] > 0 and phases["after_tasks"] > 0
    assert phases["before_tasks"] + phases["tasks"] + phases["after_tasks"] == pytest.approx(ended_at - started_at)
    multicut = json.loads((work_dir / "status" / "multicut.json").read_text())["result"]["seconds"]
    assert multicut <= phases["global_stages"] < phases["tasks"]
    # A run that finds everything done writes no record: nothing to split.
    again = time.time()
    assert run_cli("run", config) == 0
    assert reprocessing.run_phases(work_dir, again, time.time()) == {}


def test_tiled_boundary_map_built_in_slabs_is_the_whole_volume_map():
    # A 1 GVox input is built slab by slab (its map in one piece would need 18 GB); the result must
    # be the bytes boundaries_from_labels gives for the whole volume, also for an uneven tiling.
    import h5py

    from emflow.boundaries import boundaries_from_labels

    with h5py.File(end_to_end.SOURCE_PATH, "r") as source:
        neuron_ids = source["labels/neuron_ids"][:40, :96, :80]
    groundtruth = end_to_end.mirrored_groundtruth_tiling(neuron_ids, (2, 1, 3))
    assert groundtruth.shape == (80, 96, 240)
    assert np.array_equal(
        groundtruth[40:, :, 80:160], np.where(neuron_ids != 0, neuron_ids + 4 * (int(neuron_ids.max()) + 1), 0)[::-1, :, ::-1]
    )
    whole = boundaries_from_labels(groundtruth, sigma=1.0, noise=0.1, seed=0)
    for slab_depth in (16, 33):
        slabs = end_to_end.boundaries_by_slabs(groundtruth, np.full(groundtruth.shape, np.nan, np.float32), slab_depth)
        assert np.array_equal(slabs, whole)


def test_scaling_benchmark_runs_emflow_and_reports_every_stage(tmp_path, monkeypatch):
    # Two sizes (the dev cube, 7.8 MVox, and it tiled twice along x), emflow only, twice each: the
    # order of the runs, the structure of the results, table and figure.
    monkeypatch.setattr(scaling, "QUICK_EMFLOW_TILES", ((1, 1, 1), (1, 1, 2)))
    monkeypatch.setattr(scaling, "QUICK_ELF_TILES", ())
    run_dirs = []
    run_emflow_once = end_to_end.run_emflow_once

    def recorded_run(command, run_dir, **options):
        run_dirs.append(run_dir.name)
        return run_emflow_once(command, run_dir, **options)

    monkeypatch.setattr(end_to_end, "run_emflow_once", recorded_run)
    results = scaling.run(quick=True, out=tmp_path, repeats=2)
    # Round the sizes, smallest to largest, once per repetition.
    assert run_dirs == ["run_x1", "run_x1x1x2", "run_x1", "run_x1x1x2"]
    size, larger = results["sizes"]
    assert size["tiles"] == (1, 1, 1) and size["megavoxels"] == 125 * 250 * 250 / 1e6
    assert larger["tiles"] == (1, 1, 2) and larger["megavoxels"] == 2 * size["megavoxels"]
    assert all(len(each["emflow"]["runs"]) == 2 for each in (size, larger))
    emflow = size["emflow"]
    assert emflow["status"] == "ok" and 0 < emflow["max_rss_bytes"] < 2**30 and emflow["quality"]["adapted_rand_error"] < 0.1
    stages = emflow["runs"][-1]["task_seconds_by_stage"]
    assert {"supervoxels", "block_graph", "multicut", "write_segmentation"} <= set(stages)
    machine = emflow["machine"]
    assert 0 < machine["busy"] <= 1 and all(0 <= machine[key] <= 1 for key in ("idle", "iowait", "steal"))
    assert abs(machine["busy"] + machine["idle"] + machine["iowait"] + machine["steal"] - 1) < 1e-9
    page = scaling.markdown(results, "figure.png")
    assert "![MVox/s and largest peak RSS" in page and "| 7.8 | 1x1x1 |" in page
    # The split of MVox/s: task seconds per MVox and the workers' occupancy of the last run.
    last = emflow["runs"][-1]
    per_megavoxel = sum(stages.values()) / size["megavoxels"]
    occupancy = sum(stages.values()) / (last["measurement"]["wall_seconds"] * results["workers"])
    assert f"| 7.8 | {per_megavoxel:.3f} | {occupancy:.0%} | {machine['busy']:.0%} |" in page
    assert all(f"| {stage} |" in page for stage in stages)
    assert scaling.figure(results).startswith(b"\x89PNG")
    assert not any(tmp_path.iterdir()), "each size's input and outputs are removed once measured"


def test_scaling_benchmark_runs_elf_only_where_its_memory_line_says_it_fits(tmp_path):
    # Peaks of 1 GiB at 10 MVox and 2 GiB at 20 MVox: 0.1 GiB per MVox, so 140 MVox would need
    # 14 GiB, more than 60 % of 20 GiB; elf is not started (no input exists to start it on).
    peaks = [(10.0, 2**30), (20.0, 2 * 2**30)]
    skipped = scaling._run_elf(tmp_path / "absent.zarr", tmp_path, 140.0, peaks, 20 * 2**30)
    assert skipped["status"] == "not run: predicted peak 14.0 GiB"
    assert scaling._linear_fit(peaks) == (0.0, 2**30 / 10)


def test_machine_shares_split_the_cores_time_between_two_readings():
    # Two readings of /proc/stat's counters (ticks of all cores) and of the IO stall time (us).
    before = ({"user": 100, "nice": 0, "system": 20, "idle": 500, "iowait": 10, "irq": 0, "softirq": 5, "steal": 0}, 1_000_000)
    after = ({"user": 160, "nice": 0, "system": 30, "idle": 520, "iowait": 20, "irq": 0, "softirq": 5, "steal": 10}, 1_500_000)
    shares = end_to_end.machine_shares(before, after, wall_seconds=2.0)
    # 110 ticks passed: 70 busy (user and system), 20 idle, 10 waiting for IO, 10 stolen.
    assert shares == {"busy": 70 / 110, "idle": 20 / 110, "iowait": 10 / 110, "steal": 10 / 110, "io_stalled": 0.25}
    assert end_to_end.machine_shares((before[0], None), (after[0], None), 2.0)["io_stalled"] is None
    # Over runs, the median of each share; a share one run lacks is None.
    runs = [{"machine": {"busy": value, "io_stalled": stalled}} for value, stalled in ((0.5, 0.1), (0.9, None), (0.7, 0.3))]
    assert end_to_end.median_machine(runs) == {"busy": 0.7, "io_stalled": None}
    assert end_to_end.median_machine([{"machine": None}]) is None
    assert end_to_end.machine_cells({"busy": 0.876, "iowait": 0.01, "steal": 0.123}) == ["88%", "1%", "12%"]
    assert end_to_end.machine_cells({"busy": 0.5, "io_stalled": None}, ("busy", "io_stalled")) == ["50%", "-"]
    assert end_to_end.machine_per_run([{"busy": 0.9, "iowait": 0.0, "steal": 0.01}, None]) == "90%/0%/1%, -/-/-"


def test_run_measured_reports_the_commands_own_time_peak_and_exit_code(tmp_path):
    # The command allocates and touches 64 MiB, sleeps 0.3 s and exits 3: its peak and its time,
    # the launcher's start-up excluded, and its exit code come back.
    command = [sys.executable, "-I", "-S", "-c", "import sys, time; data = bytearray(64 << 20); time.sleep(0.3); sys.exit(3)"]
    measurement = end_to_end.run_measured(command, tmp_path / "command.log")
    assert measurement.exit_code == 3
    assert measurement.wall_seconds >= 0.3
    assert measurement.max_rss_bytes >= 64 << 20
    assert measurement.peak_tree_pss_bytes is None
