"""What a user asks of a workflow's state: per-stage status, failed tasks, invalidation, repairs, progress."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from emflow.cluster.progress import StageProgress
from emflow.errors import UsageError
from emflow.targets import CompletionState, JournalReader
from emflow.tasks.adapter import (
    Workflow,
    block_fingerprints,
    bundle_changed,
    changed_outputs,
    first_changed_file,
    forget_input_states,
    invalidate_records,
    partial_files,
    stage_record,
    stage_target,
)
from emflow.tasks.context import Run
from emflow.tasks.spec import StageSpec

from .segmentation import SEGMENTATION


@dataclass(frozen=True)
class StageStatus:
    """Tasks of one stage by state: done; stale (a record of another config or of input chunks
    that changed since, or whose output files were changed or deleted since, or whose work-folder
    results a pending task needs and are gone, see `plan_repairs`); failed (the last attempt
    raised, see `failed_tasks`); pending (the rest)."""

    stage: str
    done: int
    stale: int
    pending: int
    failed: int = 0

    @property
    def total(self) -> int:
        return self.done + self.stale + self.pending + self.failed


def stage_status(run: Run, spec: StageSpec, repairs: dict[str, Repair] | None = None) -> StageStatus:
    """How many tasks of one stage are done, stale, failed or pending (`repairs`: `plan_repairs`'s,
    whose tasks count as stale).

    A finished block-wise stage is answered from its stage record, one directory listing and one
    `stat` per output chunk; otherwise from one read of the stage's block journals.
    """
    failed = failed_tasks(run, spec)
    repair = (repairs or {}).get(spec.name)
    if not spec.blockwise:
        state = stage_record(run, spec.name).state()
        if failed and state is not CompletionState.DONE:
            return StageStatus(spec.name, done=0, stale=0, pending=0, failed=1)
        if state is CompletionState.DONE and repair is not None:
            state = CompletionState.STALE
        return StageStatus(
            spec.name, done=int(state is CompletionState.DONE), stale=int(state in _STALE), pending=int(state is CompletionState.PENDING)
        )
    target = stage_target(run, spec.name)
    total = target.number_of_blocks
    if repair is None and target.exists():
        return StageStatus(spec.name, done=total, stale=0, pending=0)
    states = target.block_states()
    for block_id in repair.blocks if repair is not None and repair.blocks is not None else ():
        states[block_id] = CompletionState.STALE
    failed = [block_id for block_id in failed if states.get(block_id) is not CompletionState.DONE]
    for block_id in failed:
        states.pop(block_id, None)
    counts = list(states.values())
    done, stale = counts.count(CompletionState.DONE), sum(counts.count(state) for state in _STALE)
    return StageStatus(spec.name, done=done, stale=stale, pending=total - done - stale - len(failed), failed=len(failed))


# States of a task with a record that no longer holds.
_STALE = (CompletionState.STALE, CompletionState.CHANGED)


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
    """Per stage, how many tasks are done, stale, failed or pending, with the inputs and outputs as they are now."""
    forget_input_states()
    run = workflow.load_run(config_path)
    stages = workflow.stages(config_path, until)
    repairs = {repair.stage: repair for repair in plan_repairs(run, stages).repairs}
    return [stage_status(run, spec, repairs) for spec in stages]


def done_stages(config_path: str, until: str = "", *, workflow: Workflow = SEGMENTATION) -> list[str]:
    """The stages whose records say they are done, with the inputs and outputs as they are now: one
    completeness check per stage, none per block (what a run's summary calls done before it)."""
    run = workflow.load_run(config_path)
    return [spec.name for spec in workflow.stages(config_path, until) if stage_record(run, spec.name).exists()]


@dataclass(frozen=True)
class Repair:
    """Done tasks of one stage whose work-folder results (per-block partials, global arrays) are
    missing or changed while a pending task reads them: `blocks` (None: the global task), and why."""

    stage: str
    blocks: list[int] | None
    reason: str

    def describe(self) -> str:
        what = self.stage if self.blocks is None else f"{self.stage} {_count(self.blocks, 'block')} ({_listing(self.blocks)})"
        return f"{what}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """What a run must do beyond what records say: `repairs` to make (tasks to invalidate), and
    `changed`, per stage, the tasks whose output files were changed or deleted since they were
    recorded (their completeness checks already find them pending; said here for the user)."""

    repairs: list[Repair]
    changed: dict[str, str]

    def messages(self) -> list[str]:
        """What a run tells the user about them, one line each."""
        lines = [
            f"{stage}: output changed or missing since it was recorded, so computed again: {reason}"
            for stage, reason in self.changed.items()
        ]
        return lines + [f"computing again {repair.describe()}" for repair in self.repairs]


def plan_repairs(run: Run, stages: list[StageSpec]) -> Plan:
    """The done tasks that must run again because a pending task reads their work-folder results
    and those are missing or changed, and, for the user, which output files went missing.

    Work-folder results (partials, bundles) are read only by later tasks: while none of those is
    pending, a missing one costs nothing (`emflow clean` removes them). Stages are visited from the
    last to the first: each pending (or repaired) task asks for the results it reads, checked
    against the states its producer recorded (one `stat` per file); a linked reader asks for the
    blocks it reads only. When the stage creating the output runs again, every task that wrote
    into the output runs again too: Luigi decides what runs before anything runs, and would keep
    them as done. Costs one completeness check per stage when nothing is pending.
    """
    wanted: dict[str, set[int]] = {}  # per producer, the tasks asked for: block ids, or {0} for a global stage
    reasons: dict[str, str] = {}
    changed: dict[str, str] = {}
    repairs = []
    # The stage creating the output, run before and running again, creates its arrays anew: what
    # every later stage wrote into them goes. (Not on a first run: with a central scheduler, another
    # process may have run it and later tasks between this process's looks at their records.)
    created = [spec.name for spec in stages if spec.creates_outputs and stage_record(run, spec.name).state() in _STALE]
    for spec in stages:
        if created and not spec.creates_outputs and any(write.kind in ("array", "table") for write in spec.writes):
            tasks = range(spec.blocks(run).number_of_blocks) if spec.blockwise else [0]
            wanted[spec.name] = set(tasks)
            reasons[spec.name] = f"{created[0]} runs again and creates the output's arrays anew"
    for spec in reversed(stages):
        running = _pending_tasks(run, spec, changed)
        repair = wanted.get(spec.name, set()) - running
        if repair:
            repairs.append(Repair(spec.name, sorted(repair) if spec.blockwise else None, reasons[spec.name]))
        running |= repair
        if running:
            _ask_for_inputs(run, spec, running, wanted, reasons)
    return Plan(repairs[::-1], {spec.name: changed[spec.name] for spec in stages if spec.name in changed})


def _pending_tasks(run: Run, spec: StageSpec, changed: dict[str, str]) -> set[int]:
    """The tasks of a stage that will run: block ids, or {0} for a global stage that will."""
    if not spec.blockwise:
        target = stage_record(run, spec.name)
        state = target.state()
        if state is CompletionState.CHANGED:
            changed[spec.name] = target.changes() or "its output changed"
        return set() if state is CompletionState.DONE else {0}
    target = stage_target(run, spec.name)
    if target.exists():
        return set()
    records = target.block_records()
    states = target.block_states_of(records)
    changed_blocks = sorted(block_id for block_id, state in states.items() if state is CompletionState.CHANGED)
    if changed_blocks:
        example = changed_outputs(run, spec, {changed_blocks[0]: records[changed_blocks[0]]})[changed_blocks[0]]
        changed[spec.name] = f"{_count(changed_blocks, 'block')} ({_listing(changed_blocks)}), e.g. {example}"
    return {block_id for block_id in range(target.number_of_blocks) if states.get(block_id) is not CompletionState.DONE}


def _ask_for_inputs(run: Run, spec: StageSpec, running: set[int], wanted: dict[str, set[int]], reasons: dict[str, str]) -> None:
    """Add to `wanted` the done tasks whose missing or changed work-folder results the running tasks of `spec` read."""
    for read in run.reads(spec):
        producer = run.producer(read)
        if producer is None or read.kind not in ("partials", "bundle"):
            continue  # output volumes and tables are checked by every completeness check
        if not producer.blockwise:
            target = stage_record(run, producer.name)
            record = target.read()
            data = record.get("data") if isinstance(record, dict) and record.get("fingerprint") == target.expected_fingerprint else None
            reason = bundle_changed(run, producer, data) if isinstance(data, dict) else None
            if reason is not None:
                wanted.setdefault(producer.name, set()).add(0)
                reasons.setdefault(producer.name, f"{reason}, and {spec.name} reads it")
            continue
        linked = run.linked_blocks(spec, read)
        if linked is not None:
            needed = sorted(set().union(*(linked[block_id].tolist() for block_id in running)))
        else:
            needed = list(range(producer.blocks(run).number_of_blocks))
        records = stage_target(run, producer.name).block_records()
        files = partial_files(run, producer)
        for block_id in needed:
            record = records.get(block_id)
            if record is None or record.data is None or record.fingerprint is None:
                continue  # pending anyway, or a record from before emflow recorded data: taken as it is
            first = first_changed_file(files[block_id], record.data.get("partials", []))
            if first is not None:
                path, state, current = first
                wanted.setdefault(producer.name, set()).add(block_id)
                what = "is missing" if current is None else "was changed" if state is not None else "was not written by it"
                reasons.setdefault(producer.name, f"partial results missing or changed (e.g. {path} {what}), and {spec.name} reads them")


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _listing(block_ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, block_ids[:limit]))
    return shown + (f", ... ({len(block_ids) - limit} more)" if len(block_ids) > limit else "")


def repair(run: Run, stages: list[StageSpec]) -> Plan:
    """Make the repairs `plan_repairs` finds (invalidate those tasks) and return the plan."""
    plan = plan_repairs(run, stages)
    for needed in plan.repairs:
        invalidate_records(run, needed.stage, needed.blocks)
    return plan


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

    A call parses only the journal lines added since the last (`JournalReader`).
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
                    done = sum(
                        1 for block_id, record in records.items() if block_id < total and record.fingerprint == fingerprints[block_id]
                    )
            else:
                total, done = 1, int(target.exists())
            complete[spec.name] = done == total
            ready = all(complete.get(upstream.name, True) for upstream in run.upstream(spec))
            snapshot.append(StageProgress(spec.name, done, total, blockwise=spec.blockwise, ready=ready))
        return snapshot

    return progress
