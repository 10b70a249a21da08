"""Smoke runs of the benchmark scripts: they run end to end and report what they claim to measure.

Timings are not asserted here (benchmarks/ is where speed lives); structure and success are.
"""

from __future__ import annotations

from benchmarks import orchestration
from emflow.targets import JournalReader


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
