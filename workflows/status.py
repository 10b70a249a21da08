"""What a user asks of a workflow's state: per-stage status, failed tasks, invalidation, progress."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from emflow.cluster.progress import StageProgress
from emflow.errors import UsageError
from emflow.targets import CompletionState, JournalReader
from emflow.tasks.adapter import Workflow, block_fingerprints, forget_input_states, invalidate_records, stage_record, stage_target
from emflow.tasks.context import Run
from emflow.tasks.spec import StageSpec

from .segmentation import SEGMENTATION


@dataclass(frozen=True)
class StageStatus:
    """Tasks of one stage by state: done; stale (a record of another config or of input chunks
    that changed since); failed (the last attempt raised, see `failed_tasks`); pending (the rest)."""

    stage: str
    done: int
    stale: int
    pending: int
    failed: int = 0

    @property
    def total(self) -> int:
        return self.done + self.stale + self.pending + self.failed


def stage_status(run: Run, spec: StageSpec) -> StageStatus:
    """How many tasks of one stage are done, stale, failed or pending.

    A finished block-wise stage is answered from its stage record and one directory listing;
    otherwise from one read of the stage's block journals.
    """
    failed = failed_tasks(run, spec)
    if not spec.blockwise:
        state = stage_record(run, spec.name).state()
        if failed and state is not CompletionState.DONE:
            return StageStatus(spec.name, done=0, stale=0, pending=0, failed=1)
        return StageStatus(spec.name, *(int(state is value) for value in CompletionState))
    target = stage_target(run, spec.name)
    total = target.number_of_blocks
    if target.exists():
        return StageStatus(spec.name, done=total, stale=0, pending=0)
    states = target.block_states()
    failed = [block_id for block_id in failed if states.get(block_id) is not CompletionState.DONE]
    for block_id in failed:
        states.pop(block_id, None)
    counts = list(states.values())
    done, stale = counts.count(CompletionState.DONE), counts.count(CompletionState.STALE)
    return StageStatus(spec.name, done=done, stale=stale, pending=total - done - stale - len(failed), failed=len(failed))


def failed_tasks(run: Run, spec: StageSpec) -> list[int | None]:
    """The tasks of a stage that have a failure record: block ids, or [None] for a global stage.

    A task writes its failure record when its last attempt raises and removes it when it succeeds.
    """
    if not spec.blockwise:
        return [None] if run.layout.failure(spec.name, None).exists() else []
    try:
        names = os.listdir(run.layout.failures(spec.name))
    except FileNotFoundError:
        return []
    return sorted(int(name[: -len(".json")]) for name in names if name.endswith(".json") and name[: -len(".json")].isdigit())


def workflow_status(config_path: str, until: str = "", *, workflow: Workflow = SEGMENTATION) -> list[StageStatus]:
    """Per stage, how many tasks are done, stale, failed or pending, with the inputs as they are now."""
    forget_input_states()
    run = workflow.load_run(config_path)
    return [stage_status(run, spec) for spec in workflow.stages(config_path, until)]


def dependent_stages(run: Run, stage: str) -> list[StageSpec]:
    """The stages that read stage `stage`'s results, directly or through other stages, in run order."""
    readers = {run.stage(stage).name}
    dependents = []
    for spec in run.stages:
        if spec.name not in readers and any(upstream.name in readers for upstream in run.upstream(spec)):
            readers.add(spec.name)
            dependents.append(spec)
    return dependents


def invalidate(run: Run, stage: str, block_ids: list[int] | None = None) -> list[str]:
    """Make tasks of one stage, and everything that read them, pending again; return what was invalidated.

    `block_ids` None: the whole stage. A later block-wise stage linked block by block to the stages
    it reads (e.g. blending reads its neighbours' predictions) loses the blocks that read invalidated
    blocks; any other later stage that reads an invalidated stage, directly or through others, is
    invalidated as a whole. Results stay in place until the tasks run again.
    """
    spec = run.stage(stage)
    if block_ids is not None and not spec.blockwise:
        raise UsageError(f"stage {stage} is one global task, not block-wise; rerun it without --blocks")
    if block_ids is not None:
        number_of_blocks = spec.blocks(run).number_of_blocks
        out_of_range = [block_id for block_id in block_ids if not 0 <= block_id < number_of_blocks]
        if out_of_range:
            raise UsageError(f"stage {stage} has blocks 0 to {number_of_blocks - 1}; no block {out_of_range[0]}")
    # Per invalidated stage, its invalidated blocks (None: all its tasks).
    invalidated: dict[str, set[int] | None] = {stage: None if block_ids is None else set(block_ids)}
    for dependent in dependent_stages(run, stage):
        invalidated[dependent.name] = _blocks_reading(run, dependent, invalidated)
    # A linked stage none of whose blocks read an invalidated block keeps all of them.
    invalidated = {name: blocks for name, blocks in invalidated.items() if blocks is None or blocks}
    for name, blocks in invalidated.items():
        invalidate_records(run, name, None if blocks is None else sorted(blocks))
    return [name if blocks is None else f"{name} blocks {', '.join(map(str, sorted(blocks)))}" for name, blocks in invalidated.items()]


def _blocks_reading(run: Run, spec: StageSpec, invalidated: dict[str, set[int] | None]) -> set[int] | None:
    """The blocks of `spec` that read invalidated tasks; None: the whole stage (it reads an
    invalidated stage that is not linked to it block by block)."""
    reading: set[int] = set()
    for read in run.reads(spec):
        producer = run.producer(read)
        if producer is None or producer.name not in invalidated:
            continue
        blocks = invalidated[producer.name]
        linked = run.linked_blocks(spec, read)
        if blocks is None or linked is None:
            return None
        reading |= {block_id for block_id, ids in enumerate(linked) if blocks.intersection(ids.tolist())}
    creators = [upstream.name for upstream in run.upstream(spec) if upstream.creates_outputs]
    if any(name in invalidated for name in creators):
        return None
    return reading


def progress_reporter(config_path: str, until: str = "", *, workflow: Workflow = SEGMENTATION) -> Callable[[], list[StageProgress]]:
    """A callable giving each stage's progress: tasks done out of all, and whether it can run
    (every stage it reads from is done); `emflow.cluster.progress` shows it.

    Block journals are read incrementally, so each call costs only the records added since the last.
    """
    run = workflow.load_run(config_path)
    stages = workflow.stages(config_path, until)
    readers = {spec.name: JournalReader(run.layout.block_records(spec.name)) for spec in stages if spec.blockwise}

    def progress() -> list[StageProgress]:
        snapshot, complete = [], {}
        for spec in stages:
            target = stage_record(run, spec.name)
            if spec.blockwise:
                total = spec.blocks(run).number_of_blocks
                if target.exists():
                    done = total
                else:
                    fingerprints = block_fingerprints(run, spec.name)
                    records = readers[spec.name].refresh()
                    done = sum(1 for block_id, record in records.items() if block_id < total and record.fingerprint == fingerprints[block_id])
            else:
                total, done = 1, int(target.exists())
            complete[spec.name] = done == total
            ready = all(complete.get(upstream.name, True) for upstream in run.upstream(spec))
            snapshot.append(StageProgress(spec.name, done, total, blockwise=spec.blockwise, ready=ready))
        return snapshot

    return progress
