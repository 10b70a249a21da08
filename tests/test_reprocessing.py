"""Cron reprocessing and per-block reruns: new input chunks recompute exactly the blocks that read
them (and what follows), `emflow rerun` invalidates blocks and their dependents, a run lock keeps
overlapping runs apart, and `emflow status` tells done / stale / failed / pending."""

from __future__ import annotations

import fcntl
import os
import shutil
import time

import numpy as np
import pytest
from workflow_helpers import kept_since, read, records_since, run_cli, write_config, write_inputs

from emflow.blocking import Blocking, Box, face_slabs
from emflow.storage.volumes import open_volume
from emflow.targets.journal import COMPACT_LINES_PER_BLOCK, journal_range
from emflow.tasks import adapter
from emflow.tasks.adapter import GROUP_SPLIT, block_groups, split_groups, tapered_block_groups
from emflow.tasks.block_graph import GRAPH_HALO
from emflow.workflows.report import segment_sizes
from emflow.workflows.segmentation import SEGMENTATION
from emflow.workflows.status import workflow_status

# 64 blocks of the 64 × 128 × 128 crop, chunked like the input, so one chunk is one block's box.
BLOCK_SHAPE = (16, 32, 32)
HALO = (4, 8, 8)


@pytest.fixture(scope="module")
def input_copy(tmp_path_factory, flyem_crop):
    """The crop as an input zarr chunked like the blocks, so one chunk is one block's box."""
    return write_inputs(tmp_path_factory.mktemp("input"), flyem_crop, chunks=BLOCK_SHAPE)


def _finished_run(input_path, folder):
    shutil.copytree(input_path, folder / "input.zarr")
    config = write_config(folder / "config.toml", folder / "input.zarr", folder / "out.zarr", block_shape=BLOCK_SHAPE, halo=HALO)
    assert run_cli("run", config, "--workers", "2") == 0
    return config


@pytest.fixture(scope="module")
def finished_run(input_copy, tmp_path_factory):
    """A finished run for tests that leave it as it is; returns its config."""
    return _finished_run(input_copy, tmp_path_factory.mktemp("finished"))


@pytest.fixture
def run_copy(input_copy, tmp_path):
    """A finished run over a copy of the input that the test may change; returns its config.

    Not a copy of `finished_run`: fingerprints hold the inputs' resolved paths, so a copied run
    would be a run over another input.
    """
    return _finished_run(input_copy, tmp_path)


def _blocks_reading(blocking: Blocking, halo, changed: Box) -> set[int]:
    """Blocks whose box grown by `halo` (clipped to the volume) intersects `changed`."""
    reading = set()
    for block_id in range(blocking.number_of_blocks):
        outer, _ = blocking.block_with_halo(block_id, halo)
        if all(
            begin < changed_end and changed_begin < end
            for begin, end, changed_begin, changed_end in zip(outer.begin, outer.end, changed.begin, changed.end)
        ):
            reading.add(block_id)
    return reading


def _graph_blocks_reading(blocking: Blocking, supervoxel_blocks: set[int]) -> set[int]:
    """Blocks whose box, or a slab of `GRAPH_HALO` beyond one of its upper faces (what
    `block_graph` reads), meets the box of one of `supervoxel_blocks`."""
    changed = [blocking.block(block_id) for block_id in supervoxel_blocks]
    reading = set()
    for block_id in range(blocking.number_of_blocks):
        box = blocking.block(block_id)
        end = tuple(min(stop + step, size) for stop, step, size in zip(box.end, GRAPH_HALO, blocking.shape))
        for part in face_slabs(box, Box(box.begin, end)):
            if any(all(b < ce and cb < e for b, e, cb, ce in zip(part.begin, part.end, other.begin, other.end)) for other in changed):
                reading.add(block_id)
    return reading


def test_a_finished_run_is_a_no_op(finished_run):
    started = time.time()
    assert run_cli("run", finished_run) == 0
    assert records_since(finished_run.parent / "out.zarr.work", started) == set()
    assert all(status.done == status.total for status in workflow_status(str(finished_run)))


def _change_one_input_chunk(input_path) -> Box:
    """New data in a chunk in the middle of the volume, so that blocks on every side of it read it
    in their halo; returns its box."""
    boundaries = open_volume(input_path, "boundaries", mode="r+")
    changed = Box((16, 32, 64), (32, 64, 96))
    new_data = np.asarray(boundaries[changed.slicing])
    new_data[:, :, :16] = 1.0 - new_data[:, :, :16]  # a real change: membranes where there were none
    boundaries[changed.slicing] = new_data
    return changed


def _assert_equals_a_fresh_run(tmp_path) -> None:
    fresh = write_config(tmp_path / "fresh.toml", tmp_path / "input.zarr", tmp_path / "fresh.zarr", block_shape=BLOCK_SHAPE, halo=HALO)
    assert run_cli("run", fresh) == 0
    for key in ("supervoxels", "segmentation", "graph/edges", "graph/edge_features", "graph/node_labels"):
        assert np.array_equal(read(tmp_path / "out.zarr", key), read(tmp_path / "fresh.zarr", key)), key


def test_new_data_in_one_input_chunk_recomputes_exactly_the_blocks_that_read_it(run_copy, flyem_crop, tmp_path):
    # The copy's files are new ones: read their partials as the run report and the graph merge
    # do, so that the run below reads those that did not change through their caches.
    copied = SEGMENTATION.load_run(str(run_copy))
    segment_sizes(copied)
    graph_blocks = copied.stage("block_graph").blocks(copied).number_of_blocks
    copied.store.load_partials(
        "block_graph", graph_blocks, ("edges", "statistics"), copied.layout.partials_cache("merge_graph", "block_graph")
    )
    changed = _change_one_input_chunk(tmp_path / "input.zarr")
    blocking = Blocking(flyem_crop["raw"].shape, BLOCK_SHAPE)
    expected_supervoxel_blocks = _blocks_reading(blocking, HALO, changed)
    assert 8 <= len(expected_supervoxel_blocks) < blocking.number_of_blocks // 2

    statuses = {status.stage: status for status in workflow_status(str(run_copy))}
    assert statuses["supervoxels"].stale == len(expected_supervoxel_blocks)
    assert statuses["supervoxels"].done == blocking.number_of_blocks - len(expected_supervoxel_blocks)
    # Supervoxel ids are numbered per block, so the graph of a block that reads no changed
    # supervoxels is kept; the global stages and the segmentation (from their node labels) are not.
    expected_graph_blocks = _graph_blocks_reading(blocking, expected_supervoxel_blocks)
    assert len(expected_graph_blocks) < blocking.number_of_blocks
    assert statuses["block_graph"].stale == len(expected_graph_blocks)
    assert statuses["block_graph"].done == blocking.number_of_blocks - len(expected_graph_blocks)
    assert statuses["prepare_output"].done == 1
    assert all(status.done == 0 for name, status in statuses.items() if name not in ("prepare_output", "supervoxels", "block_graph"))

    segmentation_before = read(tmp_path / "out.zarr", "segmentation")
    started = time.time()
    assert run_cli("run", run_copy) == 0
    rerun = records_since(tmp_path / "out.zarr.work", started)
    kept = kept_since(tmp_path / "out.zarr.work", started)
    assert {block_id for stage, block_id in rerun if stage == "supervoxels" and block_id is not None} == expected_supervoxel_blocks
    assert ("prepare_output", None) not in rerun
    assert {block_id for stage, block_id in rerun if stage == "block_graph" and block_id is not None} == expected_graph_blocks
    # Every write_segmentation block was stale (the multicut ran again). Early cutoff kept those
    # whose supervoxels and segment ids are as they were: segment ids are the segments' smallest
    # supervoxel ids, so only segments the change reached have new ids.
    written = {block_id for stage, block_id in rerun if stage == "write_segmentation" and block_id is not None}
    kept_blocks = {block_id for stage, block_id in kept if stage == "write_segmentation"}
    assert written == set(range(blocking.number_of_blocks))
    assert 0 < len(kept_blocks) < blocking.number_of_blocks
    segmentation = read(tmp_path / "out.zarr", "segmentation")
    for block_id in kept_blocks:
        box = blocking.block(block_id).slicing
        assert np.array_equal(segmentation[box], segmentation_before[box]), block_id
    assert not np.array_equal(segmentation, segmentation_before)
    # A kept block's record names the files it wrote before: every one still has its digest.
    assert run_cli("verify", run_copy) == 0
    # The report's segment sizes, read through the supervoxel sizes kept above, are the new segmentation's.
    _, voxels = np.unique(segmentation[segmentation != 0], return_counts=True)
    assert sorted(segment_sizes(SEGMENTATION.load_run(str(run_copy)))) == sorted(voxels)

    # The reprocessed output equals a fresh run over the new input.
    _assert_equals_a_fresh_run(tmp_path)


def test_early_cutoff_never_keeps_an_output_changed_since_it_was_written(run_copy, tmp_path):
    _change_one_input_chunk(tmp_path / "input.zarr")
    # A block far from the change, which early cutoff would keep: its segmentation is overwritten.
    far = Blocking((64, 128, 128), BLOCK_SHAPE).block(0)
    open_volume(tmp_path / "out.zarr", "segmentation", mode="r+")[far.slicing] = 7
    started = time.time()
    assert run_cli("run", run_copy) == 0
    assert ("write_segmentation", 0) in records_since(tmp_path / "out.zarr.work", started)
    assert ("write_segmentation", 0) not in kept_since(tmp_path / "out.zarr.work", started)
    _assert_equals_a_fresh_run(tmp_path)


def test_rerun_blocks_invalidates_them_and_their_dependents(run_copy, tmp_path, capsys):
    reference = read(tmp_path / "out.zarr", "segmentation")
    started = time.time()
    capsys.readouterr()
    assert run_cli("rerun", run_copy, "--stage", "supervoxels", "--blocks", "3,17") == 0
    assert "supervoxels blocks 3, 17" in capsys.readouterr().err
    rerun = records_since(tmp_path / "out.zarr.work", started)
    assert {block_id for stage, block_id in rerun if stage == "supervoxels"} == {3, 17, None}
    blocking = Blocking((64, 128, 128), BLOCK_SHAPE)
    assert {block_id for stage, block_id in rerun if stage == "block_graph"} == _graph_blocks_reading(blocking, {3, 17}) | {None}
    assert {block_id for stage, block_id in rerun if stage == "write_segmentation"} == set(range(blocking.number_of_blocks)) | {None}
    assert {("supervoxel_ids", None), ("merge_graph", None), ("edge_costs", None), ("multicut", None)} <= rerun
    assert ("prepare_output", None) not in rerun
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), reference)


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--stage", "watershed"], "no stage 'watershed'"),
        (["--stage", "supervoxels", "--blocks", "64"], "no block 64"),
        (["--stage", "multicut", "--blocks", "1"], "global task"),
        ([], "--stage"),
    ],
)
def test_rerun_refuses_unknown_stages_and_blocks(finished_run, capsys, arguments, fragment):
    capsys.readouterr()
    assert run_cli("rerun", finished_run, *arguments) == 2
    assert fragment in capsys.readouterr().err
    assert all(status.done == status.total for status in workflow_status(str(finished_run))), "nothing was invalidated"


def test_failed_blocks_show_in_status_and_rerun_failed_finishes_identically(run_copy, tmp_path, capsys, monkeypatch):
    reference = read(tmp_path / "out.zarr", "segmentation")
    monkeypatch.setenv("EMFLOW_INJECT_FAILURES", "0.5")
    config = write_config(
        tmp_path / "config.toml",
        tmp_path / "input.zarr",
        tmp_path / "out.zarr",
        block_shape=BLOCK_SHAPE,
        halo=HALO,
        scheduling={"retries": 0},
    )
    assert run_cli("rerun", config, "--stage", "block_graph") == 1
    failed = {int(path.stem) for path in (tmp_path / "out.zarr.work" / "failed" / "block_graph").glob("*.json")}
    statuses = {status.stage: status for status in workflow_status(str(config))}
    assert statuses["block_graph"].failed == len(failed) and 0 < len(failed) < statuses["block_graph"].total
    assert statuses["block_graph"].done + len(failed) == statuses["block_graph"].total
    capsys.readouterr()
    assert run_cli("status", config) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("block_graph"))
    assert row[1:] == [str(statuses["block_graph"].done), "0", str(len(failed)), "0", str(statuses["block_graph"].total)]

    monkeypatch.delenv("EMFLOW_INJECT_FAILURES")
    started = time.time()
    capsys.readouterr()
    assert run_cli("rerun", config, "--failed") == 0
    assert "block_graph blocks" in capsys.readouterr().err
    rerun = records_since(tmp_path / "out.zarr.work", started)
    assert {block_id for stage, block_id in rerun if stage == "block_graph" and block_id is not None} == failed
    assert all(status.done == status.total and status.failed == 0 for status in workflow_status(str(config)))
    assert not list((tmp_path / "out.zarr.work" / "failed").rglob("*.json"))
    assert np.array_equal(read(tmp_path / "out.zarr", "segmentation"), reference)


def test_a_run_overlapping_a_running_one_exits_cleanly(run_copy, tmp_path, capsys):
    boundaries = open_volume(tmp_path / "input.zarr", "boundaries", mode="r+")
    boundaries[0:16, 0:32, 0:32] = 1.0 - np.asarray(boundaries[0:16, 0:32, 0:32])
    lock = os.open(tmp_path / "out.zarr.work" / "run.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a running `emflow run` holds it
        os.pwrite(lock, b'{"pid": 4242, "host": "cron-host"}', 0)
        started = time.time()
        capsys.readouterr()
        assert run_cli("run", run_copy) == 75
        message = capsys.readouterr().err
        assert "another emflow run is working on this output" in message and "4242" in message
        assert records_since(tmp_path / "out.zarr.work", started) == set(), "the overlapping run did nothing"
    finally:
        os.close(lock)
    assert run_cli("run", run_copy) == 0, "once the lock is free, the run goes on"


def test_cron_runs_keep_every_group_journal_within_two_lines_per_block(run_copy, tmp_path):
    """Each run appends a line for every block it finds stale (all of write_segmentation's, kept or
    not), so without compaction the journals, and the time each run spends reading them, would
    grow with every cron run. A group compacts its journal past two lines per block; the output
    stays that of a fresh run and every recorded file its digest."""
    status = tmp_path / "out.zarr.work" / "status"
    for _ in range(3):
        _change_one_input_chunk(tmp_path / "input.zarr")
        assert run_cli("run", run_copy) == 0
        for journal in status.glob("*/*.jsonl"):
            first, stop = journal_range(journal.name)
            assert len(journal.read_bytes().splitlines()) <= COMPACT_LINES_PER_BLOCK * (stop - first), journal
    assert run_cli("verify", run_copy) == 0
    _assert_equals_a_fresh_run(tmp_path)


def test_split_groups_splits_only_where_the_stale_blocks_are_and_always_the_same_way():
    full_run = block_groups(512, 8)
    # A full run (stale blocks everywhere) keeps its groups.
    assert split_groups(full_run, list(range(512)), 8, 4) == full_run
    # The 27 blocks around the middle of an 8x8x8 grid lie in three groups of 64: those three are
    # split in eight, the finished ones stay whole.
    stale = sorted(z * 64 + y * 8 + x for z in (3, 4, 5) for y in (3, 4, 5) for x in (3, 4, 5))
    split = split_groups(full_run, stale, 8, 4)
    assert [first for first, _ in split] == sorted(first for first, _ in split)
    assert split[0][0] == 0 and split[-1][1] == 512 and all(a[1] == b[0] for a, b in zip(split, split[1:]))
    busy = [(first, stop) for first, stop in split if any(first <= block_id < stop for block_id in stale)]
    assert len(busy) == 9 and all(stop - first == 8 for first, stop in busy)
    assert sum(stop - first == 64 for first, stop in split) == 5
    # The same ranges as splitting each group on its own: the ranges of one tree, so a stage keeps
    # a bounded set of journals over the runs.
    assert {(first + a, first + b) for first, stop in full_run[3:6] for a, b in block_groups(stop - first, GROUP_SPLIT)} <= set(split)
    # One stale block: split down to the smallest groups allowed, then no further.
    one = split_groups(full_run, [200], 8, 4)
    assert [(first, stop) for first, stop in one if first <= 200 < stop] == [(200, 208)]
    assert split_groups(full_run, [], 8, 4) == full_run


def test_a_cron_run_with_local_workers_runs_its_stale_blocks_in_split_groups_to_the_identical_result(run_copy, tmp_path, monkeypatch):
    # The test volume's 64 blocks make groups of 8 with two workers; groups of 1 block allowed here
    # so that they can be split.
    monkeypatch.setattr(adapter, "MIN_BLOCKS_PER_AUTO_GROUP", 1)
    journals = tmp_path / "out.zarr.work" / "status" / "supervoxels"
    full_run_ranges = {journal_range(path.name) for path in journals.iterdir()}
    assert full_run_ranges == set(tapered_block_groups(64, 8, adapter.MIN_BLOCKS_PER_AUTO_GROUP))
    changed = _change_one_input_chunk(tmp_path / "input.zarr")
    # Luigi asks a group whether it is complete before it asks its priority: the split groups go
    # by the stale blocks they hold, not by their ranges.
    adapter.use_workers(2)
    adapter.forget_input_states()  # this process ran the full run: its view of the input goes
    stale = _blocks_reading(Blocking((64, 128, 128), BLOCK_SHAPE), HALO, changed)
    stage = SEGMENTATION.stage_task(str(run_copy.resolve()), "supervoxels")
    groups = stage.requires()
    assert sum(group.block_range[1] - group.block_range[0] for group in groups) == 64
    for group in groups:
        holds = sum(group.block_range[0] <= block_id < group.block_range[1] for block_id in stale)
        assert group.complete() == (holds == 0)
        assert group.priority == stage.priority + holds, group.blocks
    assert run_cli("run", run_copy, "--workers", "2") == 0
    new_ranges = {journal_range(path.name) for path in journals.iterdir()} - full_run_ranges
    # Split once: the groups of 4 to 12 blocks in eighths.
    assert new_ranges and all(stop - first <= 2 for first, stop in new_ranges)
    assert all(any(first <= new_first and new_stop <= stop for first, stop in full_run_ranges) for new_first, new_stop in new_ranges)
    _assert_equals_a_fresh_run(tmp_path)


def test_automatic_groups_taper_and_are_handed_out_largest_first(finished_run):
    groups = tapered_block_groups(512, 8, 4)
    sizes = [stop - first for first, stop in groups]
    assert groups[0][0] == 0 and groups[-1][1] == 512 and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 96 and sizes[-1] == 32
    # Near-equal groups where the last tapered one would hold fewer than the fewest blocks allowed.
    assert tapered_block_groups(8, 2, 4) == block_groups(8, 2) == [(0, 4), (4, 8)]
    assert tapered_block_groups(64, 8, 5) == block_groups(64, 8)
    # Luigi hands out the ready task of highest priority first: a stage's larger groups, and any
    # group of a stage before the groups of the stages after it.
    config = str(finished_run.resolve())
    supervoxels = [SEGMENTATION.stage_task(config, "supervoxels").priority + stop - first for first, stop in tapered_block_groups(64, 8, 4)]
    assert supervoxels == sorted(supervoxels, reverse=True)
    group = SEGMENTATION.block_task(config, "supervoxels", 0)
    assert group.priority == SEGMENTATION.stage_task(config, "supervoxels").priority + 1
    assert min(supervoxels) > SEGMENTATION.block_task(config, "block_graph", 0).priority + 512
