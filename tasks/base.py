"""Base classes shared by the stage modules: fingerprints, completion records, logs, block groups.

Stages and tasks. A stage is one step of a workflow. A global stage is one task. A block-wise stage
is one `BlockTask` per block, each with its own completion record and log, plus one `BlockStage`
task that stands for the whole stage: later stages depend on it, never on single blocks, so the
dependency graph has O(number of blocks) edges.

Block groups. Luigi's scheduler does work proportional to every task it knows, for every task it
hands out, so a run that gives it one task per block is quadratic in the number of blocks; and with
several workers Luigi forks a process per task (see the README's design section for measurements).
`BlockStage` therefore requires at most `[scheduling] block_groups` `BlockGroup` tasks (0: 4 per
worker process, see `use_workers`), each running a contiguous range of block tasks one after the
other in its worker. The scheduler sees a graph whose size does not grow with the volume, and the
run stays linear. Block tasks stay ordinary Luigi tasks: one can be built on its own, and with
`block_groups` at least the number of blocks every group is one block.

Completion. A block task is done when its latest record (a line in its stage's journals, see
`emflow.targets.journal`) holds its block fingerprint. A `BlockStage` is done when its own record
holds the stage fingerprint and no journal of the stage has grown since it was written: one
directory listing (plus, once per process, a `stat` per input chunk for the fingerprints), so a
finished run is checked without reading a block record, while invalidating a block
(`BlockTarget.remove`) reopens its stage.

Fingerprints. A stage's definition hashes the stage's name and algorithm version, the config values
the stage reads (`stage_parameters`), and the fingerprints of the stages it reads from
(`upstream`). The first stage also records the identity of the input datasets (path, key, shape,
dtype). A stage whose blocks read input volumes themselves (`input_roles`) adds the state of the
input chunks (`emflow.storage.chunks`): each block's record holds the definition plus the state of
the chunks that block reads (`input_region`), and the stage's fingerprint, which later stages
see, holds the state of all of them. So changing a parameter makes exactly that stage and
everything downstream of it stale, and nothing upstream; new data in an input chunk makes the
blocks that read it stale, and the stages after them; re-running an unchanged config is a no-op.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import resource
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

import luigi
import numpy as np
from luigi.task_register import Register

from emflow.storage.chunks import forget_chunk_states, region_states
from emflow.targets import BlockJournal, BlockTarget, CompletionState, CompletionTarget, StageCompletionTarget, atomic_write_text, fingerprint

from .context import RunContext, load_context

# Seconds between two progress messages a block group sends to the scheduler (an HTTP call with luigid).
STATUS_INTERVAL = 2.0
# Block groups per stage and worker process when `[scheduling] block_groups` is 0: enough that the
# workers stay busy until the end of a stage, few enough that forks and scheduling stay cheap.
GROUPS_PER_WORKER = 4
# Block groups per stage when `[scheduling] block_groups` is 0 and a central scheduler is shared:
# enough to keep 16 worker processes busy at 4 groups each; more workers want an explicit value.
SHARED_SCHEDULER_BLOCK_GROUPS = 64
# Environment variable: the fraction of block task attempts that fail on purpose (see `inject_failure`).
INJECT_FAILURES_VARIABLE = "EMFLOW_INJECT_FAILURES"


class block_scheduling(luigi.Config):
    """Luigi config section [block_scheduling], set by `use_workers` before a build."""

    auto_block_groups = luigi.IntParameter(default=GROUPS_PER_WORKER)
    worker_processes = luigi.IntParameter(default=1)


def use_workers(workers: int, *, shared_scheduler: bool = False) -> None:
    """Tell the tasks how many worker processes this build has (for `block_groups` = 0, and for
    stages that split the cores among the processes).

    With a `shared_scheduler` (luigid), other processes with other worker counts may build the
    same run, and they must agree on the block groups: `block_groups` = 0 then means a fixed
    `SHARED_SCHEDULER_BLOCK_GROUPS`, whatever this process's worker count.
    """
    workers = max(1, int(workers))
    configuration = luigi.configuration.get_config()
    groups = SHARED_SCHEDULER_BLOCK_GROUPS if shared_scheduler else GROUPS_PER_WORKER * workers
    configuration.set("block_scheduling", "auto_block_groups", str(groups))
    configuration.set("block_scheduling", "worker_processes", str(workers))


class EmflowTask(luigi.Task):
    """A task of one run, identified by its config file (and, for block tasks, a block id)."""

    config_path = luigi.Parameter()

    stage: ClassVar[str]
    version: ClassVar[int] = 1
    upstream: ClassVar[tuple[type["EmflowTask"], ...]] = ()

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict[str, Any]:
        """The config values this stage's result depends on."""
        return {}

    def upstream_stages(self) -> list[luigi.Task]:
        """The stage tasks (global tasks or `BlockStage`s) whose results this stage reads."""
        return [stage_task(task_class, self.config_path) for task_class in self.upstream]

    @property
    def context(self) -> RunContext:
        return load_context(self.config_path)

    @property
    def block_key(self) -> int | None:
        return None

    def stage_task(self) -> luigi.Task:
        """The task standing for this task's whole stage."""
        return self

    def stage_fingerprint(self) -> str:
        return _stage_fingerprint(self.stage_task(), self.context)

    def requires(self):
        return self.upstream_stages()

    def output(self) -> CompletionTarget:
        context = self.context
        return CompletionTarget(context.record_path(self.stage), self.stage_fingerprint())

    def run(self) -> None:
        self.output().write(self.execute())

    def execute(self) -> dict[str, Any]:
        """Run the stage's work with its own log and failure record; return its result summary."""
        context = self.context
        log_path = context.log_path(self.stage, self.block_key)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logger = logging.getLogger(f"emflow.{self.stage}.{self.block_key}")
        logger.setLevel(logging.INFO)
        logger.propagate = False
        # The log file is created by the first message only: most blocks have nothing to say, and
        # creating a file costs more than the rest of a block's bookkeeping. A log of an earlier
        # attempt goes, so that a block's log is always about its last run.
        log_path.unlink(missing_ok=True)
        handler = logging.FileHandler(log_path, mode="w", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        failure_path = context.failure_path(self.stage, self.block_key)
        retries = context.config["scheduling"]["retries"]
        rss_at_start = current_rss_bytes()
        started = time.perf_counter()
        try:
            for attempt in range(1, retries + 2):
                try:
                    result = self.run_stage(logger) or {}
                    inject_failure(self.stage, self.block_key)
                    break
                except Exception:
                    if attempt > retries:
                        raise
                    logger.warning("%s block %s, attempt %d of %d failed, trying again:\n%s", self.stage, self.block_key, attempt, retries + 1, traceback.format_exc())
        except BaseException as error:
            logger.error("%s block %s failed:\n%s", self.stage, self.block_key, traceback.format_exc())
            record = {"stage": self.stage, "block_id": self.block_key, "error": f"{type(error).__name__}: {error}", "log": str(log_path)}
            atomic_write_text(failure_path, json.dumps(record))
            raise
        finally:
            logger.removeHandler(handler)
            handler.close()
            # One logger per block would otherwise stay in logging's registry for the whole run.
            logging.Logger.manager.loggerDict.pop(logger.name, None)
        if failure_path.exists():
            failure_path.unlink()
        # The process's peak so far: with worker processes (forked per task) the peak of this task's
        # process, the figure a job system's memory limit must cover. The resident set at the start
        # tells what the process inherited (a forked worker counts its parent's pages too).
        peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            **result,
            "attempts": attempt,
            "seconds": round(time.perf_counter() - started, 6),
            "peak_rss_bytes": peak_rss_bytes,
            "rss_at_start_bytes": rss_at_start,
        }

    def run_stage(self, logger: logging.Logger) -> dict[str, Any] | None:
        """Compute and write this task's result; return a small JSON-able summary."""
        raise NotImplementedError


class GlobalTask(EmflowTask):
    """A stage that is global by nature (one task for the whole volume)."""


class BlockTask(EmflowTask):
    """One block of a block-wise stage.

    Parameters other than `config_path` and `block_id` (such as a scale) belong to the stage: every
    block of one `BlockStage` has the same values.
    """

    block_id = luigi.IntParameter()

    @property
    def block_key(self) -> int:
        return self.block_id

    @classmethod
    def input_roles(cls, context: RunContext) -> tuple[str, ...]:
        """The input datasets ([input] `<role>_key`) the blocks of this stage read themselves."""
        return ()

    @classmethod
    def input_regions(cls, context: RunContext) -> np.ndarray:
        """The box of those datasets each block reads (for stages with `input_roles`): int64
        (number_of_blocks, 2, 3), begin and end. Computed for all blocks at once, as a check of a
        finished run needs them all."""
        raise NotImplementedError

    @classmethod
    def linked_upstream(cls, context: RunContext) -> tuple[type["BlockTask"], ...]:
        """Block-wise upstream stages whose blocks this stage's blocks read directly (`upstream_blocks`)."""
        return ()

    @classmethod
    def upstream_blocks(cls, context: RunContext, block_id: int, upstream: type["BlockTask"]) -> list[int]:
        """The blocks of linked stage `upstream` whose results block `block_id` reads."""
        raise NotImplementedError

    def block_fingerprint(self) -> str:
        """What this block's record must hold to be done: see `BlockStage.block_fingerprints`."""
        return self.stage_task().block_fingerprints(self.block_id, self.block_id + 1)[0]

    def output(self) -> BlockTarget:
        context = self.context
        return BlockTarget(context.block_record_folder(self.stage), self.block_id, self.block_fingerprint())

    def number_of_blocks(self, context: RunContext) -> int:
        """How many blocks this stage has."""
        return context.blocking.number_of_blocks

    @functools.cached_property  # parameters only, so it cannot go stale
    def _block_stage(self) -> "BlockStage":
        parameters = {name: value for name, value in self.param_kwargs.items() if name not in ("config_path", "block_id")}
        return BlockStage(config_path=self.config_path, family=self.get_task_family(), parameters=parameters)

    def stage_task(self) -> "BlockStage":
        return self._block_stage


class BlockStage(luigi.Task):
    """All blocks of one block-wise stage, run as block groups: what later stages depend on."""

    config_path = luigi.Parameter()
    family = luigi.Parameter()
    parameters = luigi.DictParameter(default={})

    def block_task(self, block_id: int) -> BlockTask:
        task = Register.get_task_cls(self.family)(config_path=self.config_path, block_id=block_id, **self.parameters)
        # Spares each block building its stage task again (Luigi task construction is not cheap).
        task.__dict__.setdefault("_block_stage", self)
        return task

    @functools.cached_property
    def prototype(self) -> BlockTask:
        """Block 0, asked for what all blocks of the stage share: name, parameters, upstream, count."""
        return self.block_task(0)

    @property
    def stage(self) -> str:
        return self.prototype.stage

    @property
    def number_of_blocks(self) -> int:
        return self.prototype.number_of_blocks(load_context(self.config_path))

    def requires(self):
        configured = load_context(self.config_path).config["scheduling"]["block_groups"]
        groups = configured or block_scheduling().auto_block_groups
        return [
            BlockGroup(config_path=self.config_path, family=self.family, parameters=self.parameters, first_block=first, stop_block=stop)
            for first, stop in block_groups(self.number_of_blocks, groups)
        ]

    def output(self) -> StageCompletionTarget:
        context = load_context(self.config_path)
        return StageCompletionTarget(
            context.record_path(self.stage),
            _stage_fingerprint(self, context),
            block_folder=context.block_record_folder(self.stage),
            number_of_blocks=self.number_of_blocks,
            block_fingerprints=self.block_fingerprints,
        )

    def block_fingerprints(self, first_block: int, stop_block: int) -> list[str]:
        """The fingerprint each block `first_block`..`stop_block - 1` must have in its record.

        The stage's definition (name, version, parameters, upstream stages), plus what the block
        itself reads: the state of its input chunks (`emflow.storage.chunks`) and the fingerprints
        of the blocks of linked upstream stages (`BlockTask.upstream_blocks`). New data in an input
        chunk thus makes exactly the blocks that read it stale, and in a linked stage the blocks
        that read those. The stages after it see the stage's fingerprint, which covers all its blocks.
        """
        return _block_fingerprints(self, load_context(self.config_path))[first_block:stop_block]

    def block_results(self) -> dict[int, dict[str, Any]]:
        """The result summary of every block, read at once (the stage must be done)."""
        target = self.output()
        records = target.block_records()
        expected = self.block_fingerprints(0, self.number_of_blocks)
        missing = [block_id for block_id in range(self.number_of_blocks) if block_id not in records or records[block_id].fingerprint != expected[block_id]]
        if missing:
            raise FileNotFoundError(f"{self.stage}: {len(missing)} blocks have no record with the expected fingerprint, e.g. {missing[:10]}")
        return {block_id: records[block_id].result for block_id in range(self.number_of_blocks)}

    def run(self) -> None:
        self.output().write({"number_of_blocks": self.number_of_blocks})


class BlockGroup(luigi.Task):
    """Blocks `first_block` to `stop_block - 1` of one stage, run one after the other in one worker."""

    config_path = luigi.Parameter()
    family = luigi.Parameter()
    parameters = luigi.DictParameter(default={})
    first_block = luigi.IntParameter()
    stop_block = luigi.IntParameter()

    @property
    def block_stage(self) -> BlockStage:
        return BlockStage(config_path=self.config_path, family=self.family, parameters=self.parameters)

    def requires(self):
        return self.block_stage.prototype.upstream_stages()

    def complete(self) -> bool:
        return not self._pending_block_ids()

    def _pending_block_ids(self) -> list[int]:
        """Blocks of the group without a current record (one read of the group's journals).

        Block ids, not tasks: the scheduling process checks every group, and a Luigi task per
        block would stay in Luigi's instance cache for the whole run.
        """
        states = self.block_stage.output().block_states((self.first_block, self.stop_block))
        return [block_id for block_id in range(self.first_block, self.stop_block) if states.get(block_id) is not CompletionState.DONE]

    def run(self) -> None:
        block_stage = self.block_stage
        pending = self._pending_block_ids()
        failed = []
        last_report = time.monotonic()
        context = load_context(self.config_path)
        with BlockJournal(context.block_record_folder(block_stage.stage), self.first_block, self.stop_block) as journal:
            for position, block_id in enumerate(pending, start=1):
                task = block_stage.block_task(block_id)
                # Taken before the block reads its input: input written meanwhile makes it stale again.
                block_fingerprint = task.block_fingerprint()
                try:
                    result = task.execute()
                except Exception:
                    failed.append(task)  # its failure record and log name the problem; go on with the others
                else:
                    journal.append(block_id, block_fingerprint, result)
                if time.monotonic() - last_report > STATUS_INTERVAL or position == len(pending):
                    self.set_status_message(f"{position} of {len(pending)} blocks run, {len(failed)} failed")
                    self.set_progress_percentage(round(100 * position / len(pending)))
                    last_report = time.monotonic()
        if failed:
            listing = "; ".join(f"block {task.block_id} (log: {context.log_path(task.stage, task.block_id)})" for task in failed)
            raise BlockFailures(f"{failed[0].stage}: {len(failed)} of {len(pending)} blocks failed: {listing}")


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


def current_rss_bytes() -> int | None:
    """This process's resident set size now (Linux); None where /proc is not available."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


class BlockFailures(RuntimeError):
    """Some blocks of a group failed; each left a failure record and a log."""


def block_groups(number_of_blocks: int, max_groups: int) -> list[tuple[int, int]]:
    """Split blocks 0..number_of_blocks-1 into at most `max_groups` contiguous, near-equal ranges.

    Returns (first, stop) pairs. Sizes differ by at most one block, so the groups balance.
    """
    count = max(1, min(number_of_blocks, max_groups))
    bounds = [round(index * number_of_blocks / count) for index in range(count + 1)]
    return [(first, stop) for first, stop in zip(bounds[:-1], bounds[1:]) if stop > first]


def stage_task(task_class: type[EmflowTask], config_path: str, **parameters: Any) -> luigi.Task:
    """The task standing for a whole stage: the task itself for a global stage, else its `BlockStage`."""
    if issubclass(task_class, BlockTask):
        return BlockStage(config_path=config_path, family=task_class.get_task_family(), parameters=parameters)
    return task_class(config_path=config_path, **parameters)


def forget_input_states() -> None:
    """Drop this process's fingerprints, so that they take in input chunks written since.

    Called before a run or status looks at the task graph; worker processes forked during the run
    keep what the run started with.
    """
    _stage_definition.cache_clear()
    _stage_fingerprint.cache_clear()
    _block_fingerprints.cache_clear()
    forget_chunk_states()


@functools.lru_cache(maxsize=1024)
def _stage_definition(stage: luigi.Task, context: RunContext, *, static: bool = False) -> str:
    """Fingerprint of what a stage computes: name, version, parameters and its upstream stages.

    An upstream stage enters with its fingerprint, or, when this stage's blocks are linked to its
    blocks, with its static definition only: what its blocks hold then enters block by block (see
    `BlockStage.block_fingerprints`). `static`: leave out all input and block states, upstream too.
    """
    definition = stage.prototype if isinstance(stage, BlockStage) else stage
    linked = {task_class.get_task_family() for task_class in _linked_upstream(stage, context)}
    upstream = [
        _stage_definition(upstream_stage, context, static=True)
        if static or getattr(upstream_stage, "family", None) in linked
        else _stage_fingerprint(upstream_stage, context)
        for upstream_stage in definition.upstream_stages()
    ]
    return fingerprint({"stage": definition.stage, "version": definition.version, "parameters": definition.stage_parameters(context), "upstream": upstream})


@functools.lru_cache(maxsize=1024)
def _stage_fingerprint(stage: luigi.Task, context: RunContext) -> str:
    """What later stages depend on: the stage's definition, and the fingerprints of all its blocks
    where they hold more (input chunk states, linked upstream blocks)."""
    definition = _stage_definition(stage, context)
    if not (_input_roles(stage, context) or _linked_upstream(stage, context)):
        return definition
    return fingerprint([definition, _block_fingerprints(stage, context)])


@functools.lru_cache(maxsize=256)
def _block_fingerprints(stage: "BlockStage", context: RunContext) -> list[str]:
    """The fingerprint of every block of a block-wise stage (see `BlockStage.block_fingerprints`)."""
    definition = _stage_definition(stage, context)
    roles = _input_roles(stage, context)
    linked = _linked_upstream(stage, context)
    if not (roles or linked):
        return [definition] * stage.number_of_blocks
    task_class = type(stage.prototype)
    linked_fingerprints = {upstream: _block_fingerprints(stage_task(upstream, stage.config_path), context) for upstream in linked}
    input_states = []
    if roles:
        regions = task_class.input_regions(context)
        input_states = [region_states(context.inputs[role]["path"], context.inputs[role]["key"], regions) for role in roles]
    fingerprints = []
    # Straight into one hash per block (no JSON): a finished run's check computes every block's.
    for block_id in range(stage.number_of_blocks):
        digest = hashlib.sha256(definition.encode())
        for states in input_states:
            digest.update(b"|")
            digest.update(states[block_id])
        for upstream, upstream_fingerprints in linked_fingerprints.items():
            read = task_class.upstream_blocks(context, block_id, upstream)
            digest.update(f"|{upstream.stage}:{','.join(upstream_fingerprints[upstream_block] for upstream_block in read)}".encode())
        fingerprints.append(digest.hexdigest())
    return fingerprints


def _input_roles(stage: luigi.Task, context: RunContext) -> tuple[str, ...]:
    if not isinstance(stage, BlockStage):
        return ()
    return tuple(role for role in type(stage.prototype).input_roles(context) if role in context.inputs)


def _linked_upstream(stage: luigi.Task, context: RunContext) -> tuple[type[BlockTask], ...]:
    return type(stage.prototype).linked_upstream(context) if isinstance(stage, BlockStage) else ()
