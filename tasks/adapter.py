"""Luigi tasks made from stage specs: one generic adapter for every stage of every workflow.

Tasks. A global stage is one task. A block-wise stage is one task per block, each with its own
completion record and log, run inside at most `[scheduling] block_groups` group tasks, plus one
task standing for the whole stage: later stages depend on it, never on single blocks, so the
dependency graph has O(stages) edges. A person watching luigid's visualiser sees the stage's name as
the task family (`supervoxels` with `blocks=51-52` for a group, `supervoxels.stage` for the whole
stage) and each group's progress as its status message.

Block groups. Luigi's scheduler does work proportional to every task it knows, for every task it
hands out, so a run that gives it one task per block is quadratic in the number of blocks; and with
several workers each task starts in a process of its own (forked by Luigi, or a persistent one of
`emflow.cluster.pool`; see the README's design section for measurements).
A group runs its contiguous range of blocks one after the other in its worker.

Completion. A block is done when its latest record (a line in its stage's journals, see
`emflow.targets.journal`) holds its block fingerprint and the output chunks it wrote are as it
wrote them. A block-wise stage is done when its own record holds the stage fingerprint, no journal
of the stage has grown since it was written (one directory listing) and the output chunks of all
its blocks are as they were then (one `stat` per chunk; plus, once per process, a `stat` per input
chunk for the fingerprints). A global stage is done when its record holds its fingerprint and the
tables it wrote are as it wrote them.

Data. What a task wrote is recorded with its record (`block_data`, `global_data`): per file, its
size, modification time and digest (`emflow.targets.atomic.DIGEST_PREFIX`), taken right after the
task wrote it. Output files (chunks of volumes, tables, the volumes' metadata) are checked by every
completeness check: a missing or changed one makes its task pending again. Work-folder files
(per-block partials, global bundles) are only read by later tasks, so they are checked when a task
that reads them is pending (`emflow.workflows.status.plan_repairs`): `emflow clean` may remove them
from a finished run. The digests are for `emflow verify`, which reads every file.

Fingerprints. A stage's definition hashes its name and version, the config values it declares, its
blocking, the identity of the input datasets it reads, and the fingerprints of the stages it reads
from. Where a block-wise stage reads input volumes over regions, each block's fingerprint adds the
state of the input chunks its regions cover (`emflow.storage.chunks`); where it reads the blocks of
a block-wise stage over regions (it is *linked* to it), each block's fingerprint adds the
fingerprints of exactly the blocks it reads, and the definition holds only that stage's static
definition. A stage's fingerprint, which later stages see, covers all its blocks. Changing a
parameter makes exactly that stage and everything downstream stale; new data in an input chunk makes
the blocks that read it stale, the linked blocks that read those, and the stages after them.

Early cutoff. Fingerprints are computed before anything runs, from input chunk states, so a block
downstream of a recomputed block is stale even when that block wrote the same bytes again. A stage
with a `content_key` (`StageSpec`) looks at contents when it runs: a stale block whose linked
upstream blocks recorded the same file digests, whose input chunks are as they were and whose global
inputs the spec calls the same (`ContentKeys`) keeps its output; its record is written anew with
the new fingerprint over the files it wrote then, if they are still as recorded. On the 62.5 MVox
reprocessing benchmark this keeps 423 of the 512 `write_segmentation` blocks after new data in one
input chunk (docs/operations_benchmarks.md).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import math
import os
import random
import resource
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import luigi
import numpy as np

from emflow.errors import UsageError
from emflow.storage.chunks import chunk_files, file_states, folder_states, forget_chunk_states, region_states, same_state, states_array
from emflow.storage.layout import failure_fallback
from emflow.storage.store import describe_box
from emflow.storage.volumes import metadata_state
from emflow.targets import (
    BlockJournal,
    BlockRecord,
    CompletionState,
    CompletionTarget,
    JournalReader,
    StageCompletionTarget,
    atomic_write_text,
    compact_journal,
    fingerprint,
    record_state,
)
from emflow.targets.atomic import CannotWrite, cannot_write
from emflow.targets.collection import garbage_collection_paused
from emflow.targets.logs import QuietFileHandler

from .context import BlockContext, GlobalContext, Run
from .spec import BOX, Read, StageSpec
from .write_behind import WriteBehind

# Seconds between two progress messages a block group sends to the scheduler (an HTTP call with luigid).
STATUS_INTERVAL = 2.0
# Block groups per stage and worker process when `[scheduling] block_groups` is 0 and the local
# scheduler has several workers: enough that the workers stay busy until the end of a stage, few
# enough that scheduling stays cheap. One worker has one group per stage: it has no load to
# balance, and each group ends by waiting for its last block's writes (`StageSpec.writes_behind`)
# and begins by opening its arrays. `emflow predict --workers 1` of benchmarks/inference.py's crop
# (8 blocks; what `predict` and `blend_predictions` spend beside the forward passes, their spans less
# the forward passes; 6 alternating pairs): median 0.88 s with 4 groups per stage, 0.72 s with one.
GROUPS_PER_WORKER = 4
# Fewest blocks of an automatic block group where a stage has few blocks (a pyramid level), when
# the local scheduler has several workers: a group's first block pays for opening its arrays and
# its first pages (measured when each group was a forked process: 0.03 to 0.07 s more than the
# next; in the persistent processes of `emflow.cluster.pool`, 0.15 s in `pyramid_s1`), which a
# group of one block pays for every block.
MIN_BLOCKS_PER_AUTO_GROUP = 4
# Where automatic groups are tapered (`tapered_block_groups`): the last group's size over the
# first's. 62.5 MVox run (64 blocks, 8 groups), its blocks' seconds from the journals, the groups
# handed out to 2 workers in every order: equal groups leave 0.69 core-s idle at the end of
# `supervoxels` (mean over 200 random orders; 13.6 task s in all), groups of 12 down to 4 blocks
# handed out largest first 0.10.
TAPER = 1 / 3
# Priorities of one stage's tasks lie within one step: its block groups, larger groups first.
PRIORITY_STEP = 2**32
# Block groups per stage when `[scheduling] block_groups` is 0 and a central scheduler is shared:
# enough to keep 16 worker processes busy at 4 groups each; more workers want an explicit value.
SHARED_SCHEDULER_BLOCK_GROUPS = 64
# Environment variable: the fraction of block task attempts that fail on purpose (see `inject_failure`).
INJECT_FAILURES_VARIABLE = "EMFLOW_INJECT_FAILURES"


class block_scheduling(luigi.Config):
    """Luigi config section [block_scheduling], set by `use_workers` before a build."""

    auto_block_groups = luigi.IntParameter(default=GROUPS_PER_WORKER)
    min_blocks_per_auto_group = luigi.IntParameter(default=1)
    worker_processes = luigi.IntParameter(default=1)
    split_stale_groups = luigi.BoolParameter(default=False)


def use_workers(workers: int, *, shared_scheduler: bool = False) -> None:
    """Tell the tasks how many worker processes this build has (for `block_groups` = 0, and for
    stages that split the cores among the processes).

    With a `shared_scheduler` (luigid), other processes with other worker counts may build the
    same run, and they must agree on the block groups: `block_groups` = 0 then means a fixed
    `SHARED_SCHEDULER_BLOCK_GROUPS`, whatever this process's worker count.

    The building process keeps freed memory from here on (`reuse_freed_memory`), and so do the
    workers it forks.
    """
    reuse_freed_memory()
    workers = max(1, int(workers))
    configuration = luigi.configuration.get_config()
    local_worker_processes = workers > 1 and not shared_scheduler
    if shared_scheduler:
        groups = SHARED_SCHEDULER_BLOCK_GROUPS
    else:
        groups = GROUPS_PER_WORKER * workers if local_worker_processes else 1
    configuration.set("block_scheduling", "auto_block_groups", str(groups))
    # A cluster wants as many groups as there are blocks: there the groups' first blocks are the
    # lesser cost.
    configuration.set("block_scheduling", "min_blocks_per_auto_group", str(MIN_BLOCKS_PER_AUTO_GROUP if local_worker_processes else 1))
    configuration.set("block_scheduling", "worker_processes", str(workers))
    # Groups split where the stale blocks are (`split_groups`) balance the local workers. Not with
    # a shared scheduler: processes scheduling at other moments would see other stale blocks, so
    # they would not agree on the groups.
    configuration.set("block_scheduling", "split_stale_groups", str(local_worker_processes))


def worker_processes() -> int:
    """Worker processes of this build (`use_workers`), for stages that split the cores among them."""
    return block_scheduling().worker_processes


# --- the workflow's Luigi tasks -------------------------------------------------------------------


class Workflow:
    """A kind of workflow: its name and how a config file becomes a `Run` (`load_run`, cached by
    the caller per config file). Makes the Luigi tasks of its stages."""

    def __init__(self, name: str, load_run: Callable[[str], Run]):
        self.name = name
        self.load_run = load_run

    def stage_task(self, config_path: str, stage: str) -> luigi.Task:
        """The task standing for a whole stage: its global task, or its block-wise stage task."""
        spec = self.load_run(config_path).stage(stage)
        return _task_class(self, stage, "stage" if spec.blockwise else "global")(config_path=config_path)

    def block_task(self, config_path: str, stage: str, block_id: int) -> luigi.Task:
        """The task running one block of a block-wise stage on its own (a group of one block)."""
        return _task_class(self, stage, "group")(config_path=config_path, blocks=format_blocks(block_id, block_id + 1))

    def root_task(self, config_path: str, until: str = "") -> luigi.Task:
        """The task requiring every stage task up to and including `until` ("" = all)."""
        return _task_class(self, self.name, "root")(config_path=config_path, until=until)

    def stages(self, config_path: str, until: str = "") -> list[StageSpec]:
        """The stage specs in run order, up to and including `until` ("" = all)."""
        run = self.load_run(config_path)
        names = [spec.name for spec in run.stages]
        if not until:
            return list(run.stages)
        if until not in names:
            raise UsageError(f"this workflow has no stage {until!r}; its stages are {', '.join(names)}")
        return list(run.stages[: names.index(until) + 1])


@functools.cache
def _task_class(workflow: Workflow, name: str, kind: str) -> type:
    """The Luigi task class of a stage (kind "global", "stage" or "group") or of the whole workflow
    ("root"); its family is the stage's name (with ".stage" for a block-wise stage as a whole)."""
    base = {"global": _GlobalTask, "stage": _BlockStageTask, "group": _BlockGroupTask, "root": _RootTask}[kind]
    family = f"{name}.stage" if kind == "stage" else name
    return type(family, (base,), {"workflow": workflow, "stage_name": name, "task_namespace": "", "__module__": __name__})


class _ListedParams:
    """Luigi lists a task class's parameters by walking `dir(cls)` on every call (each task made,
    each task id): 939 calls while Luigi's `Worker.add` planned the 343 tasks of a one-chunk cron
    run (benchmarks/reprocessing.py), which took 48 ms, 32 ms with the lists kept. A class's
    parameters are fixed when it is made, so each class lists them once."""

    _listed_params: list[tuple[str, luigi.Parameter]]

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        listed = cls.__dict__.get("_listed_params")
        if listed is None:
            listed = super().get_params()  # type: ignore[misc]
            cls._listed_params = listed
        return list(listed)


class _StageTaskBase(_ListedParams, luigi.Task):
    config_path = luigi.Parameter()
    workflow: Workflow
    stage_name: str

    @classmethod
    def get_task_family(cls) -> str:
        return cls.__name__

    @property
    def run_context(self) -> Run:
        return self.workflow.load_run(self.config_path)

    @property
    def spec(self) -> StageSpec:
        return self.run_context.stage(self.stage_name)

    @property
    def priority(self) -> int:  # type: ignore[override]
        """Of the tasks ready to run, Luigi hands out those of higher priority first: here those of
        stages with the most work on one chain of dependents after them (`Run.work_after`: tasks,
        a block-wise stage counting its blocks), the run order deciding between equal amounts.
        So the block graph the segmentation waits for goes before the pyramid levels, the pyramid
        levels fill the time a worker would idle beside a global stage, the multicut, which the
        segmentation's blocks wait for, goes before the next pyramid level, and that level, which
        the later levels wait for, before the segmentation's blocks instead of running alone at
        the end. Counted in stages, the multicut (one stage after it) went after the second level
        (two): it waited 11-25 ms for a worker in the cron run of benchmarks/reprocessing.py, and
        so did everything after it."""
        run = self.run_context
        names = [spec.name for spec in run.stages]
        return (run.work_after(self.spec) * len(names) + len(names) - names.index(self.stage_name)) * PRIORITY_STEP

    def requires(self):
        return [self.workflow.stage_task(self.config_path, upstream.name) for upstream in self.run_context.upstream(self.spec)]


class _GlobalTask(_StageTaskBase):
    """A global stage: one task."""

    def output(self) -> CompletionTarget:
        return stage_record(self.run_context, self.stage_name)

    def run(self) -> None:
        run = self.run_context
        result, data = execute(run, self.spec, None)
        with _failure_recorded(run, self.spec, None):
            self.output().write(result, data)


class _BlockStageTask(_StageTaskBase):
    """All blocks of a block-wise stage, run as block groups: what later stages depend on."""

    # Its run only writes the stage's record: in the worker's process (`emflow.cluster.runner.Worker`).
    runs_in_worker = True

    def requires(self):
        group_class = _task_class(self.workflow, self.stage_name, "group")
        return [group_class(config_path=self.config_path, blocks=format_blocks(first, stop)) for first, stop in self.groups()]

    def groups(self) -> list[tuple[int, int]]:
        """The block groups of the stage: `[scheduling] block_groups` ranges, or automatic ones,
        split where the stale blocks are for local worker processes (`split_groups`). Found once
        per look at the task graph (`forget_input_states`): the stage's task and each group of a
        later stage that reads its blocks (`_BlockGroupTask.requires`) ask, and must agree while
        the blocks run and their records change the stale ones."""
        return found_once_per_look(self.run_context, ("groups", self.stage_name), self._groups)

    def _groups(self) -> list[tuple[int, int]]:
        run, number_of_blocks = self.run_context, self.number_of_blocks
        configured = run.config.scheduling.block_groups
        if configured:
            return block_groups(number_of_blocks, configured)
        scheduling = block_scheduling()
        groups = min(scheduling.auto_block_groups, -(-number_of_blocks // scheduling.min_blocks_per_auto_group))
        if not scheduling.split_stale_groups:
            return block_groups(number_of_blocks, groups)
        # Stale by their records' fingerprints only: the groups decide what runs (`complete`),
        # this only where to split.
        records = stage_target(run, self.stage_name).block_records()
        expected = block_fingerprints(run, self.stage_name)
        stale = [
            block_id
            for block_id in range(number_of_blocks)
            if block_id not in records or record_state(records[block_id].fingerprint, expected[block_id]) is not CompletionState.DONE
        ]
        return split_groups(
            tapered_block_groups(number_of_blocks, groups, scheduling.min_blocks_per_auto_group),
            stale,
            groups,
            scheduling.min_blocks_per_auto_group,
        )

    @property
    def number_of_blocks(self) -> int:
        return self.spec.blocks(self.run_context).number_of_blocks

    def output(self) -> StageCompletionTarget:
        return stage_target(self.run_context, self.stage_name)

    def run(self) -> None:
        run = self.run_context
        with _failure_recorded(run, self.spec, None):
            self.output().write({"number_of_blocks": self.number_of_blocks}, totals=task_costs)
        failure = run.layout.failure(self.stage_name, None)
        if failure.exists():
            failure.unlink()


class _BlockGroupTask(_StageTaskBase):
    """Blocks `blocks` ("51-52": 51 to 52, or "51") of one stage, run one after the other in one worker."""

    blocks = luigi.Parameter()
    # How many blocks the group had to run when `complete` last looked (None: it has not).
    pending_count: int | None = None

    @property
    def block_range(self) -> tuple[int, int]:
        first, _, last = self.blocks.partition("-")
        return int(first), int(last or first) + 1

    @property
    def priority(self) -> int:  # type: ignore[override]
        """The stage's priority, and of its groups those with more blocks to run first: with
        tapered groups (`tapered_block_groups`) the small ones are left for the end, where they
        even out the workers' last blocks. The blocks to run are those `complete` found pending
        (Luigi asks a task whether it is complete before it asks its priority), so that the split
        groups of a cron run (`split_groups`), whose ranges hold a few stale blocks each, go by
        the blocks they run, not by their ranges; all of the range before `complete` was asked."""
        first, stop = self.block_range
        return super().priority + (stop - first if self.pending_count is None else self.pending_count)

    def requires(self):
        """The stages this one reads, each as a whole, except a block-wise stage whose every read
        here is linked (`Run.linked_blocks`): of that one, the block groups holding the blocks
        this group's blocks read. A group then runs once those are done, beside the last groups of
        the stage before it instead of after all of them: in a cron run of
        benchmarks/reprocessing.py, one worker idled 40-50 ms at the end of `supervoxels` while
        the other ran the last group, and the stage's record was written, before `block_graph`
        could start."""
        run, spec = self.run_context, self.spec
        first, stop = self.block_range
        required = []
        for upstream in run.upstream(spec):
            links = [run.linked_blocks(spec, read) for read in run.reads(spec) if run.producer(read) is upstream]
            if not links or any(linked is None for linked in links):
                required.append(self.workflow.stage_task(self.config_path, upstream.name))
                continue
            read_blocks = np.unique(np.concatenate([linked[block_id] for linked in links for block_id in range(first, stop)]))
            for group in self.workflow.stage_task(self.config_path, upstream.name).requires():
                group_first, group_stop = group.block_range
                if np.any((read_blocks >= group_first) & (read_blocks < group_stop)):
                    required.append(group)
        return required

    def complete(self) -> bool:
        self.pending_count = len(self._pending_blocks())
        return not self.pending_count

    def _pending_blocks(self) -> dict[int, BlockRecord | None]:
        """Blocks of the group without a current record (one read of the group's journals), each
        with its latest record (None: none), whose sequence number its new record must pass."""
        first, stop = self.block_range
        target = stage_target(self.run_context, self.stage_name)
        records = target.block_records((first, stop))
        states = target.block_states_of(records, (first, stop))
        return {block_id: records.get(block_id) for block_id in range(first, stop) if states.get(block_id) is not CompletionState.DONE}

    def run(self) -> None:
        run, spec = self.run_context, self.spec
        pending = self._pending_blocks()
        keys = ContentKeys(run, spec, list(pending)) if spec.content_key is not None else None
        failed = []
        last_report = time.monotonic()
        first, stop = self.block_range
        with BlockJournal(run.layout.block_records(spec.name), first, stop) as journal, WriteBehind(spec.writes_behind) as behind:
            for position, (block_id, latest) in enumerate(pending.items(), start=1):
                seq = 0 if latest is None else latest.seq
                # Taken before the block reads its input: input written meanwhile makes it stale again.
                expected = block_fingerprints(run, spec.name)[block_id]
                started = time.perf_counter()
                key = None if keys is None else keys.of(block_id)
                if key is not None and latest is not None and keeps_its_output(run, spec, block_id, latest, key):
                    kept = {**latest.result, "kept": True, "seconds": round(time.perf_counter() - started, 6)}
                    behind.submit(functools.partial(_record_block, run, spec, journal, block_id, expected, seq, kept, latest.data))
                else:
                    writes: list[Callable[[], None]] | None = [] if spec.writes_behind else None
                    try:
                        result, data = execute(run, spec, block_id, writes)
                    except CannotWrite:
                        raise  # the other blocks could not write either: stop here (see `execute`)
                    except Exception:
                        failed.append(block_id)  # its failure record and log name the problem; go on with the others
                    else:
                        result = result if key is None else {**result, "content_key": key}
                        if writes is None:
                            behind.submit(functools.partial(_record_block, run, spec, journal, block_id, expected, seq, result, data))
                        else:
                            behind.submit(
                                functools.partial(_write_block, run, spec, journal, block_id, expected, seq, result, writes, failed)
                            )
                if time.monotonic() - last_report > STATUS_INTERVAL or position == len(pending):
                    self._report(
                        f"{spec.name} blocks {self.blocks}: {position} of {len(pending)} run, {len(failed)} failed",
                        round(100 * position / len(pending)),
                    )
                    last_report = time.monotonic()
        compact_journal(journal.path, stop - first)
        if failed:
            listing = "; ".join(f"block {block_id} (log: {run.layout.log(spec.name, block_id)})" for block_id in failed)
            raise BlockFailures(f"{spec.name}: {len(failed)} of {len(pending)} blocks failed: {listing}")

    def _report(self, message: str, percentage: int) -> None:
        """Progress for luigid's visualiser. A scheduler that does not answer fails the run in the
        process that asks it for work (`emflow.cluster.runner`), not the blocks of a group."""
        try:
            self.set_status_message(message)
            self.set_progress_percentage(percentage)
        except Exception:  # luigi.rpc.RPCError, and whatever a dying connection raises
            pass


def _record_block(
    run: Run, spec: StageSpec, journal: BlockJournal, block_id: int, expected: str, seq: int, result: dict, data: dict | None
) -> None:
    """Append a block's record to its group's journal."""
    with _failure_recorded(run, spec, block_id):
        journal.append(block_id, expected, result, after=seq, data=data)


def _write_block(
    run: Run,
    spec: StageSpec,
    journal: BlockJournal,
    block_id: int,
    expected: str,
    seq: int,
    result: dict,
    writes: list[Callable[[], None]],
    failed: list[int],
) -> None:
    """Do the writes a block left to be done later (`StageSpec.writes_behind`), then record it
    with what they wrote and how long they took; a write that fails fails the block (`failed`),
    or the run where it cannot write (see `execute`)."""
    started = time.perf_counter()
    try:
        with _block_log(run, spec, block_id, mode="a") as logger, _failure_recorded(run, spec, block_id, logger):
            for write in writes:
                write()
            data = block_data(run, spec, block_id)
    except CannotWrite:
        raise
    except Exception:
        failed.append(block_id)
        return
    result = {**result, "write_seconds": round(time.perf_counter() - started, 6)}
    _record_block(run, spec, journal, block_id, expected, seq, result, data)


class _RootTask(_ListedParams, luigi.WrapperTask):
    """The whole workflow: complete when every stage is complete.

    Every stage is required directly, not only the last: Luigi does not look behind a complete
    task, so a lost upstream record (a deleted or damaged block) would otherwise go unnoticed.
    """

    config_path = luigi.Parameter()
    until = luigi.Parameter(default="")
    workflow: Workflow
    runs_in_worker = True  # it runs nothing (see `_BlockStageTask`)

    @classmethod
    def get_task_family(cls) -> str:
        return cls.__name__

    def requires(self):
        return [self.workflow.stage_task(self.config_path, spec.name) for spec in self.workflow.stages(self.config_path, self.until)]


def invalidate_records(run: Run, name: str, block_ids: list[int] | None = None) -> None:
    """Make tasks of stage `name` pending (`block_ids` None: all of them), and nothing else.

    A global stage's record goes; a block gets a journal line without fingerprint, which overrides
    its earlier records and reopens its stage.
    """
    spec = run.stage(name)
    if not spec.blockwise:
        stage_record(run, name).remove()
        return
    target = stage_target(run, name)
    records = target.block_records()
    with BlockJournal(target.block_folder, 0, target.number_of_blocks, own_file=True) as journal:
        for block_id in range(target.number_of_blocks) if block_ids is None else block_ids:
            journal.append(block_id, None, after=records[block_id].seq if block_id in records else 0)


def format_blocks(first: int, stop: int) -> str:
    """Blocks first..stop-1 as people read them: "51-52", or "51" for one block."""
    return str(first) if stop - first == 1 else f"{first}-{stop - 1}"


def block_groups(number_of_blocks: int, max_groups: int) -> list[tuple[int, int]]:
    """Split blocks 0..number_of_blocks-1 into at most `max_groups` contiguous, near-equal ranges.

    Returns (first, stop) pairs. Sizes differ by at most one block, so the groups balance.
    """
    count = max(1, min(number_of_blocks, max_groups))
    bounds = [round(index * number_of_blocks / count) for index in range(count + 1)]
    return [(first, stop) for first, stop in zip(bounds[:-1], bounds[1:]) if stop > first]


def tapered_block_groups(number_of_blocks: int, max_groups: int, min_blocks: int) -> list[tuple[int, int]]:
    """Split blocks 0..number_of_blocks-1 into at most `max_groups` contiguous ranges whose sizes
    fall linearly, the last a `TAPER` of the first; near-equal ranges (`block_groups`) where the
    last would hold fewer than `min_blocks` blocks.

    Returns (first, stop) pairs. Handed out largest first (`_BlockGroupTask.priority`), the groups
    of several workers end together: each worker's last group is a small one.
    """
    count = max(1, min(number_of_blocks, max_groups))
    weights = np.linspace(1, TAPER, count)
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])
    bounds = [round(number_of_blocks * value / cumulative[-1]) for value in cumulative]
    if bounds[-1] - bounds[-2] < min_blocks:
        return block_groups(number_of_blocks, max_groups)
    return [(first, stop) for first, stop in zip(bounds[:-1], bounds[1:]) if stop > first]


# Parts a block group is split into where too few groups hold stale blocks (`split_groups`).
GROUP_SPLIT = 8


def split_groups(groups: list[tuple[int, int]], stale: list[int], busy: int, min_blocks: int) -> list[tuple[int, int]]:
    """Split the groups (first, stop) that hold stale blocks (ids ascending) into `GROUP_SPLIT`
    near-equal ranges, again and again, until `busy` groups hold stale blocks or a further split
    would leave fewer than `min_blocks` blocks in a group.

    Why: a cron run with new data in one input chunk has a few dozen stale blocks in one corner of
    the block ids, which the groups of a full run put into two or three groups, and one worker
    then runs most of them (benchmarks/reprocessing.py: 18 of 27 `supervoxels` blocks on one of two
    workers). Splitting only where the stale blocks are keeps the groups of finished ranges whole,
    and the ranges are always those of the same tree (each range split the same way), so a stage
    keeps a bounded set of journals over the runs.
    """
    stale_ids = np.asarray(stale, dtype=np.int64)

    def holds_stale(first: int, stop: int) -> bool:
        return bool(np.searchsorted(stale_ids, first) < np.searchsorted(stale_ids, stop))

    while sum(holds_stale(*group) for group in groups) < busy:
        split = [
            [(first + part_first, first + part_stop) for part_first, part_stop in block_groups(stop - first, GROUP_SPLIT)]
            if holds_stale(first, stop) and (stop - first) // GROUP_SPLIT >= min_blocks
            else [(first, stop)]
            for first, stop in groups
        ]
        if all(len(parts) == 1 for parts in split):
            return groups
        groups = [group for parts in split for group in parts]
    return groups


class BlockFailures(RuntimeError):
    """Some blocks of a group failed; each left a failure record and a log."""


# --- records ------------------------------------------------------------------------------------


def stage_target(run: Run, name: str) -> StageCompletionTarget:
    """The record of a block-wise stage as a whole, with its blocks' records."""
    spec = run.stage(name)
    writes_outputs = any(write.kind == "array" for write in spec.writes)
    return StageCompletionTarget(
        run.layout.stage_record(name),
        stage_fingerprint(run, name),
        block_folder=run.layout.block_records(name),
        number_of_blocks=spec.blocks(run).number_of_blocks,
        block_fingerprints=lambda first, stop: block_fingerprints(run, name)[first:stop],
        changed_blocks=lambda records: changed_outputs(run, spec, records),
        outputs_digest=(lambda: outputs_digest(run, spec)) if writes_outputs else None,
    )


def stage_record(run: Run, name: str) -> CompletionTarget:
    """The completion record of a stage: a global stage's, or a block-wise stage's as a whole."""
    spec = run.stage(name)
    if spec.blockwise:
        return stage_target(run, name)
    return CompletionTarget(
        run.layout.stage_record(name), stage_fingerprint(run, name), data_changed=lambda data: global_outputs_changed(run, spec, data)
    )


# --- what tasks wrote ---------------------------------------------------------------------------


def output_files(run: Run, spec: StageSpec) -> list[list[str]]:
    """The output files each block of a block-wise stage writes: the chunk files of the output
    volumes it writes over its box, one list of paths per block, in the same order always.

    Raises FileNotFoundError while an output volume it writes does not exist (no output group)."""
    volumes = [run.store.volumes[write.name] for write in spec.writes if write.kind == "array"]
    # The chunk layout of each volume is cached by its metadata file's state (a recreated output array).
    key = ("output files", spec.name, tuple(_metadata_state(run, volume.path) for volume in volumes))
    if key not in run._memo:
        with garbage_collection_paused():
            files: list[list[str]] = [[] for _ in range(spec.blocks(run).number_of_blocks)]
            for volume in volumes:
                for block_files, volume_files in zip(files, chunk_files(run.layout.output_path, volume.path, run.regions(spec, BOX))):
                    block_files.extend(volume_files)
        run._memo[key] = files
    return run._memo[key]


def partial_files(run: Run, spec: StageSpec) -> list[list[str]]:
    """The partial result files of each block of a block-wise stage (its .npz and .npy: a block
    writes one or none), one list per block; empty lists for a stage without partials."""
    key = ("partial files", spec.name)
    if key not in run._memo:
        number_of_blocks = spec.blocks(run).number_of_blocks
        if any(write.kind == "partials" for write in spec.writes):
            # The paths of `Layout.partial`, joined as strings: a `Path` join per file took 8 ms of
            # a process's first block of 512 (`supervoxels`, 2 files a block).
            folder = f"{run.layout.partials(spec.name)}{os.sep}"
            run._memo[key] = [[f"{folder}{block_id}{suffix}" for suffix in (".npz", ".npy")] for block_id in range(number_of_blocks)]
        else:
            run._memo[key] = [[] for _ in range(number_of_blocks)]
    return run._memo[key]


def _metadata_state(run: Run, path: str) -> tuple[int, int, int]:
    state = metadata_state(run.layout.output_path / path / "zarr.json")
    if state is None:
        raise FileNotFoundError(f"output array {run.layout.output_path / path} does not exist")
    return state


def block_data(run: Run, spec: StageSpec, block_id: int) -> dict[str, list]:
    """What a block wrote, for its record: the state and digest of each of its "outputs"
    (`output_files`) and "partials" (`partial_files`)."""
    return {
        "outputs": file_states(output_files(run, spec)[block_id], digest=True),
        "partials": file_states(partial_files(run, spec)[block_id], digest=True),
    }


class ContentKeys:
    """The content keys of the blocks of a stage with early cutoff (`StageSpec.content_key`): a
    digest of its static definition, the digests of the files the linked upstream blocks it reads
    wrote (from their records, read once here, of the upstream blocks that `block_ids` link to),
    the states of the input chunks it reads, and what the spec's `content_key` says of the global
    stages it reads. Equal keys, equal inputs."""

    def __init__(self, run: Run, spec: StageSpec, block_ids: list[int]):
        self.run, self.spec = run, spec
        self.definition = _definition(run, spec.name, True).encode()
        # The results of the stages these blocks read, read once: they are finished, and a record
        # read for each block's key (write_segmentation reads supervoxel_ids') took 115 µs, 2.7 of
        # the 9.5 s the keys of 23,430 blocks took (one run after new data in one of 20,480 chunks,
        # profiled).
        self.results = functools.cache(functools.partial(stage_results, run))
        self.inputs: list[list[bytes]] = []
        self.linked: list[tuple[list[np.ndarray], dict[int, BlockRecord]]] = []
        for read in run.reads(spec):
            producer = run.producer(read)
            linked = run.linked_blocks(spec, read)
            if producer is None and read.region is not None:
                self.inputs.append(input_states(run, spec, read))
            elif producer is not None and linked is not None:
                # Only the journals of the upstream blocks these blocks read: a block group of a
                # stage with 8 groups read all of its upstream stage's, 8 passes per stage.
                upstream = np.concatenate([linked[block_id] for block_id in block_ids] + [np.zeros(0, dtype=np.int64)])
                span = (int(upstream.min()), int(upstream.max()) + 1) if upstream.size else (0, 0)
                self.linked.append((linked, stage_target(run, producer.name).block_records(span)))

    def of(self, block_id: int) -> str | None:
        """The block's content key; None where it cannot be told (an upstream block without data
        in its record, or the spec's `content_key` says None)."""
        digest = hashlib.sha256(self.definition)
        for states in self.inputs:
            digest.update(b"|" + states[block_id])
        for linked, records in self.linked:
            for upstream in linked[block_id].tolist():
                record = records.get(upstream)
                if record is None or record.data is None:
                    return None
                for state in record.data.get("outputs", []) + record.data.get("partials", []):
                    digest.update(b"|" + (b"-" if state is None else state[2].encode()))
        context = BlockContext(self.run, self.spec, _CONTENT_KEY_LOG, self.results, block_id)
        global_part = self.spec.content_key(context)  # type: ignore[misc]
        if global_part is None:
            return None
        digest.update(b"|" + global_part)
        return digest.hexdigest()


_CONTENT_KEY_LOG = logging.getLogger("emflow.content_key")


def keeps_its_output(run: Run, spec: StageSpec, block_id: int, latest: BlockRecord, key: str) -> bool:
    """Whether a stale block may keep what it wrote (early cutoff): its latest record, not an
    invalidation (`emflow rerun`), was written from inputs with the same content key, and the files
    it wrote are still as recorded."""
    if latest.fingerprint is None or latest.data is None or latest.result.get("content_key") != key:
        return False
    if changed_outputs(run, spec, {block_id: latest}):
        return False
    return first_changed_file(partial_files(run, spec)[block_id], latest.data.get("partials", [])) is None


def first_changed_file(paths: list[str], recorded: list[list | None]) -> tuple[str, list | None, list | None] | None:
    """The first of `paths` that is not as its `recorded` state says (a `stat` each), as (path,
    recorded state, current state); None if every one is."""
    for path, state, current in zip(paths, recorded, file_states(paths)):
        if not same_state(state, current):
            return path, state, current
    return None


def changed_outputs(run: Run, spec: StageSpec, records: dict[int, BlockRecord]) -> dict[int, str]:
    """Of these current records of a block-wise stage, the blocks whose output files are no longer
    as recorded (a `stat` each), with the first such file. Records without data (written before
    emflow recorded it) are taken as they are."""
    if not records or not any(write.kind == "array" for write in spec.writes):
        return {}
    try:
        files = output_files(run, spec)
    except FileNotFoundError as error:
        return {block_id: str(error) for block_id, record in records.items() if record.data is not None}
    changed = {}
    for block_id, record in records.items():
        if record.data is None:
            continue
        recorded = record.data.get("outputs", [])
        paths = files[block_id]
        if len(recorded) != len(paths):
            changed[block_id] = f"its record names {len(recorded)} output files, not {len(paths)}"
            continue
        first = first_changed_file(paths, recorded)
        if first is not None:
            path, _, current = first
            changed[block_id] = f"{path} {'is missing' if current is None else 'was changed'}"
    return changed


def outputs_digest(run: Run, spec: StageSpec) -> str:
    """One digest of the state (size, modification time) of every output file of every block of a
    stage, in block order: equal digests, every file as it was (one `stat` per file, 4 µs here).

    Kept per process for as long as the stage's journals do not change (until
    `forget_input_states`): a no-op run asks for it several times (status, repairs, Luigi), and its
    files change only with new block records. Damage done to a stage's files while a run goes on
    is found by the next run."""
    key = (run, spec.name, tuple(JournalReader(run.layout.block_records(spec.name)).snapshot().items()))
    if key not in _DIGESTS:
        try:
            files = output_files(run, spec)
        except FileNotFoundError:
            return "missing"
        flat = [path for paths in files for path in paths]
        counts = np.array([len(paths) for paths in files], dtype=np.int64)
        _DIGESTS[key] = hashlib.sha256(states_array(flat).tobytes() + counts.tobytes()).hexdigest()
    return _DIGESTS[key]


# Stage output digests of this process (`outputs_digest`), dropped by `forget_input_states`.
_DIGESTS: dict[tuple, str] = {}


def global_data(run: Run, spec: StageSpec) -> dict[str, Mapping[str, list | None]]:
    """What a global stage wrote, for its record: "outputs", every file of the tables it writes, by
    path in the output group; "bundle", its global arrays, by path in the work folder; "volumes",
    for the stage creating the output, each volume's metadata file. Each with state and digest."""
    data: dict[str, Mapping[str, list | None]] = {
        "outputs": _global_outputs(run, spec, digest=True),
        "bundle": _bundle_files(run, spec, digest=True),
    }
    if spec.creates_outputs:
        data["volumes"] = _volume_metadata(run, digest=True)
    return data


def _global_outputs(run: Run, spec: StageSpec, *, digest: bool) -> dict[str, list]:
    root = run.layout.output_path
    states: dict[str, list] = {}
    for write in spec.writes:
        if write.kind == "table":
            states.update(folder_states(root / write.name, root, digest=digest))
    return states


def _volume_metadata(run: Run, *, digest: bool) -> dict[str, list | None]:
    # The volumes' own metadata, not their groups': later stages add to those (OME pyramid levels).
    paths = [f"{volume.path}/zarr.json" for volume in run.store.volumes.values()]
    return dict(zip(paths, file_states([run.layout.output_path / path for path in paths], digest=digest)))


def _bundle_files(run: Run, spec: StageSpec, *, digest: bool) -> dict[str, list]:
    if not any(write.kind == "bundle" for write in spec.writes):
        return {}
    return folder_states(run.layout.work_dir / "global" / spec.name, run.layout.work_dir, digest=digest)


def global_outputs_changed(run: Run, spec: StageSpec, data: dict[str, Any]) -> str | None:
    """Why the output files a global stage recorded are not as it wrote them (None: they are).

    A volume's metadata counts by its presence only: writing attributes rewrites it (OME axis
    names, a pyramid's levels), and what matters is that the array is still the one created."""
    volumes = data.get("volumes")
    if isinstance(volumes, dict):
        missing = [path for path, state in _volume_metadata(run, digest=False).items() if state is None]
        if missing:
            return f"{run.layout.output_path / missing[0]} is missing"
    return _changed_files(data.get("outputs"), _global_outputs(run, spec, digest=False), run.layout.output_path)


def bundle_changed(run: Run, spec: StageSpec, data: dict[str, Any]) -> str | None:
    """Why the global arrays a global stage recorded are not as it wrote them (None: they are)."""
    return _changed_files(data.get("bundle"), _bundle_files(run, spec, digest=False), run.layout.work_dir)


def _changed_files(recorded: Any, current: dict[str, list], root: Path) -> str | None:
    if not isinstance(recorded, dict):
        return None  # a record without data: taken as it is
    for path in sorted(set(recorded) | set(current)):
        if not same_state(recorded.get(path), current.get(path)):
            what = (
                "is missing"
                if current.get(path) is None
                else "was not written by this task"
                if recorded.get(path) is None
                else "was changed"
            )
            return f"{root / path} {what}"
    return None


def stage_results(run: Run, name: str) -> Any:
    """The record results of a finished stage: a global stage's result dict, or {block_id: result}."""
    spec = run.stage(name)
    if not spec.blockwise:
        return stage_record(run, spec.name).result()
    target = stage_target(run, spec.name)
    records = target.block_records()
    expected = block_fingerprints(run, spec.name)
    missing = [
        block_id
        for block_id in range(target.number_of_blocks)
        if block_id not in records or records[block_id].fingerprint != expected[block_id]
    ]
    if missing:
        raise FileNotFoundError(f"{spec.name}: {len(missing)} blocks have no record with the expected fingerprint, e.g. {missing[:10]}")
    return {block_id: records[block_id].result for block_id in range(target.number_of_blocks)}


def task_costs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What tasks cost, from their record results (`execute`): "tasks", their "seconds" summed
    (`math.fsum`: the same whatever the order) and their largest "peak_rss_bytes" (0 where not recorded)."""
    return {
        "tasks": len(results),
        "seconds": math.fsum(result.get("seconds", 0.0) for result in results),
        "peak_rss_bytes": int(max((result.get("peak_rss_bytes") or 0 for result in results), default=0)),
    }


def stage_costs(run: Run, name: str) -> dict[str, Any]:
    """`task_costs` of a finished stage. A block-wise stage's come from its own record while it is
    current (`StageCompletionTarget.totals`: one file, where its blocks' records are tens of MB of
    journal lines at 20,000 blocks), else from every block's record. Raises FileNotFoundError for a
    stage that is not finished (`stage_results`)."""
    spec = run.stage(name)
    if not spec.blockwise:
        return task_costs([stage_results(run, name)])
    totals = stage_target(run, name).totals()
    return totals if totals is not None else task_costs(list(stage_results(run, name).values()))


# --- running a stage's work ---------------------------------------------------------------------


# mallopt parameters of glibc's malloc.h, and the value set: larger than any array of a task's block.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_BYTES = 1 << 30


@functools.cache
def reuse_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the arrays that follow instead of handing it back
    to the system; in a building process (`use_workers`) and every task's (`execute`).

    By default an allocation over the mmap threshold (128 KB at first, adapted up to 32 MB) is
    mapped afresh and unmapped when freed, and freed heap beyond the trim threshold is handed back:
    a block's next arrays then fault their pages in again, one by one, and the first block of a
    freshly forked worker faults in all of them. Measured on this project's 2-core VM, which hands
    freed pages back to its host: a CNN forward pass of a 64x128x128 patch (~1.4 GB of
    activations) 2.45 s of CPU, 1.55 s with this; the 62.5 MVox end-to-end run
    (benchmarks/end_to_end.py, five alternating pairs) median 13.6 s wall and 21.5 task s, 13.2 and
    20.9 with this (block_graph 4.9 to 4.4 task s); at 500 MVox (two alternating pairs) 91 and 95 s
    wall, 84 and 86 s with this. A process keeps its peak memory instead of returning to its
    working set between blocks: the largest peak RSS of those runs 0.25 and 0.31 GiB, 0.30 and 0.43
    with this; a prediction worker's 0.8 to 0.87 GiB, 1.0 to 1.2 with this.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, _KEPT_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _KEPT_BYTES)


@contextmanager
def _block_log(run: Run, spec: StageSpec, block_id: int | None, mode: str = "w") -> Iterator[logging.Logger]:
    """The logger of a block (or the global stage), writing to its log file: afresh (`mode` "w"),
    or after what the block's run wrote there ("a", for its writes done later)."""
    log_path = run.layout.log(spec.name, block_id)
    logger = logging.getLogger(f"emflow.{spec.name}.{block_id}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # The log file is created by the first message only: most blocks have nothing to say, and
    # creating a file costs more than the rest of a block's bookkeeping. A log of an earlier
    # attempt goes, so that a block's log is always about its last run. A log that cannot be
    # written stays short, silently (QuietFileHandler): the failure record says what went wrong.
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "w":
            log_path.unlink(missing_ok=True)
    except OSError:
        pass
    handler = QuietFileHandler(log_path, mode=mode, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()
        # One logger per block would otherwise stay in logging's registry for the whole run.
        logging.Logger.manager.loggerDict.pop(logger.name, None)


def execute(
    run: Run, spec: StageSpec, block_id: int | None, writes: list[Callable[[], None]] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run a stage's work for one block (or the global stage) with its own log and failure record,
    retrying up to `[scheduling] retries` times; return its result summary and what it wrote
    (`block_data` or `global_data`). With `writes` (a list), the block's writes are put there to
    be done later (`StageSpec.writes_behind`), those of its last attempt only, and what it wrote
    is None: the caller takes it after doing them.

    A write that fails for want of space or permission (`CannotWrite`) is not retried: the
    failure record names the file and the cause, and the error goes up, so that the run stops.
    """
    reuse_freed_memory()
    retries = run.config.scheduling.retries
    reset_peak_rss()
    rss_at_start = current_rss_bytes()
    started = time.perf_counter()
    where = spec.name if block_id is None else f"{spec.name} block {block_id}"
    data: dict[str, Any] | None = None
    with _block_log(run, spec, block_id) as logger, _failure_recorded(run, spec, block_id, logger):
        for attempt in range(1, retries + 2):
            try:
                results_of = functools.partial(stage_results, run)  # by stage name
                if writes is not None:
                    writes.clear()  # a failed attempt's writes are not done
                context = (
                    GlobalContext(run, spec, logger, results_of)
                    if block_id is None
                    else BlockContext(run, spec, logger, results_of, block_id, writes)
                )
                result = spec.run(context) or {}
                if block_id is None:
                    data = global_data(run, spec)
                elif writes is None:
                    data = block_data(run, spec, block_id)
                inject_failure(spec.name, block_id)
                break
            except Exception as error:
                if attempt > retries or cannot_write(error) is not None:
                    raise
                logger.warning("%s, attempt %d of %d failed, trying again:\n%s", where, attempt, retries + 1, traceback.format_exc())
    failure_path = run.layout.failure(spec.name, block_id)
    if failure_path.exists():
        failure_path.unlink()
    # The process's peak while this task ran (`reset_peak_rss`), the figure a job system's memory
    # limit must cover. The resident set at the start tells what the process held before: pages
    # a forked worker shares with its parent, memory a persistent one keeps from earlier tasks.
    peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {
        **result,
        "attempts": attempt,
        "seconds": round(time.perf_counter() - started, 6),
        "peak_rss_bytes": peak_rss_bytes,
        "rss_at_start_bytes": rss_at_start,
    }
    return summary, data


@contextmanager
def _failure_recorded(run: Run, spec: StageSpec, block_id: int | None, logger: logging.Logger | None = None) -> Iterator[None]:
    """Write a failure record for a task whose work (or record) raises, and raise on.

    A write that failed for want of space or permission goes up as `CannotWrite`, naming the file
    and the cause; its failure record says so (`cannot_write`). A failure record that cannot be
    written into the work folder (full, read-only) goes to `failure_fallback`; if that fails too,
    the error still goes up, and the run's report falls back on Luigi's word."""
    try:
        yield
    except BaseException as error:
        where = spec.name if block_id is None else f"{spec.name} block {block_id}"
        # A write error names its file, except an error of `write` itself: then the file systems are named.
        layout = run.layout
        failure = cannot_write(error, f"a file in {layout.output_path} or {layout.work_dir}") if isinstance(error, Exception) else None
        if logger is not None:
            logger.error("%s failed:\n%s", where, traceback.format_exc())
        record: dict[str, Any] = {
            "stage": spec.name,
            "block_id": block_id,
            "error": f"{type(error).__name__}: {error}",
            "log": str(layout.log(spec.name, block_id)),
        }
        if block_id is not None:
            record["box"] = describe_box(spec.blocks(run).block(block_id))
        if failure is not None:
            record.update(error=str(failure), cannot_write={"path": failure.filename, "cause": failure.strerror, "errno": failure.errno})
        text = json.dumps(record)
        for path in (layout.failure(spec.name, block_id), failure_fallback(layout.work_dir) / f"{spec.name}.{block_id}.{os.getpid()}.json"):
            try:
                atomic_write_text(path, text)
                break
            except OSError:
                continue
        if failure is not None and failure is not error:
            raise failure from error
        raise


class InjectedFailure(RuntimeError):
    """Raised on purpose by `inject_failure`, to test retries and reruns."""


def inject_failure(stage: str, block_id: int | None) -> None:
    """Raise InjectedFailure for this attempt of a block task with probability `EMFLOW_INJECT_FAILURES`.

    The environment variable (a fraction in [0, 1], unset = 0) exists for fault-injection tests
    and drills. The failure comes after the block has written its outputs but before its record,
    the moment at which a half-finished block is most easily mistaken for a finished one. Global
    tasks never fail on purpose. The draw is random, not seeded, so a rerun fails other blocks.
    """
    fraction = os.environ.get(INJECT_FAILURES_VARIABLE)
    if block_id is None or not fraction:
        return
    try:
        probability = float(fraction)
    except ValueError:
        raise ValueError(f"{INJECT_FAILURES_VARIABLE} must be a fraction between 0 and 1, got {fraction!r}") from None
    if random.random() < probability:
        raise InjectedFailure(f"failure injected by {INJECT_FAILURES_VARIABLE}={fraction} into {stage} block {block_id}")


def reset_peak_rss() -> None:
    """Start this process's peak resident set (`ru_maxrss`, VmHWM) afresh from its resident set
    now (Linux: /proc/self/clear_refs), so that a task's peak is its own, not that of an earlier
    task of the same process (`emflow.cluster.pool`, or one process running every task)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def current_rss_bytes() -> int | None:
    """This process's resident set size now (Linux); None where /proc is not available."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


# --- fingerprints -------------------------------------------------------------------------------


def forget_input_states() -> None:
    """Make this process's fingerprints take in input chunks written since (and changed stage
    parameters, such as a model file's digest), and its output digests (`outputs_digest`) take in
    output files changed since.

    Called before a run or status looks at the task graph; worker processes forked during the run
    keep what the run started with. A fingerprint depends on nothing but the run (fixed per config
    file's state), the states of its input chunks and the stages' parameters, so the fingerprints
    computed so far are kept if those are as they were when next asked for (`_check_input_states`:
    one `stat` per input chunk), and computed again only if not: a no-op run checks its task graph
    twice (before and after taking the run's lock), and the second time need not hash every
    block's fingerprint again (0.27 s of its 5 s at 20,480 blocks).
    """
    global _input_generation
    _input_generation += 1
    _DIGESTS.clear()
    forget_chunk_states()


def _check_input_states(run: Run) -> None:
    """Drop the cached fingerprints if the run's input chunk states or stage parameters changed since
    they were computed; looked at once after each `forget_input_states`."""
    if run._memo.get(("input states checked",)) == _input_generation:
        return
    ndim = len(run.geometry.shape)
    digest = hashlib.sha256(fingerprint([stage_parameters(run, spec) for spec in run.stages]).encode())
    for role, dataset in sorted(run.inputs.items()):
        whole_volume = np.array([[[0] * ndim, list(dataset.shape)[-ndim:]]], dtype=np.int64)
        digest.update(role.encode() + b"|" + region_states(dataset.path, dataset.key, whole_volume)[0])
    states = digest.hexdigest()
    if run._memo.get(("input states",), states) != states:
        # The caches are shared by all runs of the process: dropped whole, rarely.
        _definition.cache_clear()
        _stage_fingerprint.cache_clear()
        _block_fingerprints.cache_clear()
    run._memo[("input states",)] = states
    run._memo[("input states checked",)] = _input_generation


# Raised by `forget_input_states`: a run's cached fingerprints are checked against its inputs once per value.
_input_generation = 0


@functools.lru_cache(maxsize=1024)
def _definition(run: Run, name: str, static: bool = False) -> str:
    """Fingerprint of what a stage computes: name, version, declared config values, blocking, input
    identities and the stages it reads. A producing stage enters with its fingerprint, or with its
    static definition when this stage's blocks are linked to its blocks (what its blocks hold then
    enters block by block). `static`: leave out every input chunk and block state, upstream too."""
    spec = run.stage(name)
    upstream: list[Any] = []
    for read in run.reads(spec):
        producer = run.producer(read)
        if producer is None:
            upstream.append({"input": run.inputs[read.name].identity()})
        elif static or run.linked_blocks(spec, read) is not None:
            upstream.append(_definition(run, producer.name, True))
        else:
            upstream.append(stage_fingerprint(run, producer.name))
    for creator in run.upstream(spec):
        if creator.creates_outputs:
            upstream.append(_definition(run, creator.name, True) if static else stage_fingerprint(run, creator.name))
    return fingerprint(
        {
            "stage": spec.name,
            "version": spec.version,
            "parameters": stage_parameters(run, spec),
            # The halo changes the regions block-wise stages read.
            "blocking": [list(spec.blocks(run).block_shape), list(run.geometry.halo)] if spec.blockwise else None,
            "upstream": upstream,
        }
    )


def stage_parameters(run: Run, spec: StageSpec) -> dict[str, Any]:
    """The config values (and further parameters) a stage's result depends on."""
    from emflow.config import as_dict

    parameters: dict[str, Any] = {}
    for dotted in spec.config:
        value: Any = run.config
        for part in dotted.split("."):
            value = getattr(value, part)
        parameters[dotted] = as_dict(value)
    if spec.parameters is not None:
        parameters[""] = spec.parameters(run)
    return parameters


def stage_fingerprint(run: Run, name: str) -> str:
    """What later stages depend on: the stage's definition, and the fingerprints of all its blocks
    where they hold more (input chunk states, linked upstream blocks)."""
    _check_input_states(run)
    return _stage_fingerprint(run, name)


@functools.lru_cache(maxsize=1024)
def _stage_fingerprint(run: Run, name: str) -> str:
    definition = _definition(run, name)
    if not _has_block_states(run, run.stage(name)):
        return definition
    return fingerprint([definition, block_fingerprints(run, name)])


def block_fingerprints(run: Run, name: str) -> list[str]:
    """The fingerprint every block of a block-wise stage must have in its record."""
    _check_input_states(run)
    return _block_fingerprints(run, name)


def input_states(run: Run, spec: StageSpec, read: Read) -> list[bytes]:
    """Per block of `spec`, the states of the chunks of input `read` in the boxes it reads
    (`Run.read_boxes`: of a faces read, not those only the region's edges and corners meet).
    Found once per look at the task graph (`forget_input_states`), as the fingerprints that take
    them in: the content keys of each block group of `block_graph` found them again for all 512
    blocks, 4 ms a group, in the cron run of benchmarks/reprocessing.py."""

    def found() -> list[bytes]:
        dataset = run.inputs[read.name]
        parts = [region_states(dataset.path, dataset.key, boxes) for boxes in run.read_boxes(spec, read)]
        return parts[0] if len(parts) == 1 else [b"|".join(states) for states in zip(*parts)]

    return found_once_per_look(run, ("input states", spec.name, read), found)


def found_once_per_look(run: Run, key: tuple, find: Callable[[], Any]) -> Any:
    """`find()`, kept in the run's memo under `key` until the next look at the task graph
    (`forget_input_states`): one value per key, replaced, not one per look kept."""
    generation, value = run._memo.get(key, (None, None))
    if generation != _input_generation:
        value = find()
        run._memo[key] = (_input_generation, value)
    return value


def _has_block_states(run: Run, spec: StageSpec) -> bool:
    if not spec.blockwise:
        return False
    return any(
        (run.producer(read) is None and read.region is not None) or run.linked_blocks(spec, read) is not None for read in run.reads(spec)
    )


@functools.lru_cache(maxsize=256)
def _block_fingerprints(run: Run, name: str) -> list[str]:
    spec = run.stage(name)
    definition = _definition(run, name)
    number_of_blocks = spec.blocks(run).number_of_blocks
    if not _has_block_states(run, spec):
        return [definition] * number_of_blocks
    with garbage_collection_paused():
        parts: list[list[bytes]] = []  # per read, per block: what the block's fingerprint adds
        for read in run.reads(spec):
            producer = run.producer(read)
            if producer is None and read.region is not None:
                parts.append(input_states(run, spec, read))
                continue
            linked = run.linked_blocks(spec, read)
            if linked is not None and producer is not None:
                upstream = np.array(block_fingerprints(run, producer.name), dtype="S64")
                parts.append([f"{producer.name}:".encode() + upstream[ids].tobytes() for ids in linked])
        # Straight into one hash per block (no JSON): a finished run's check computes every block's.
        fingerprints = []
        for block_id in range(number_of_blocks):
            digest = hashlib.sha256(definition.encode())
            for part in parts:
                digest.update(b"|")
                digest.update(part[block_id])
            fingerprints.append(digest.hexdigest())
    return fingerprints
