"""(Raw → CNN prediction →) boundary map → supervoxels → region-adjacency graph → edge costs → multicut → segmentation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import luigi

from emflow.targets import BlockJournal, CompletionState, JournalReader
from emflow.tasks.base import BlockStage, forget_input_states, stage_task
from emflow.tasks.block_graph import BlockGraph
from emflow.tasks.context import load_context
from emflow.tasks.edge_costs import EdgeCosts
from emflow.tasks.hierarchical_multicut import MulticutProblem, SubproblemBlock
from emflow.tasks.lifted_edges import LabelOverlapBlock, LiftedEdges, lifted
from emflow.tasks.merge_graph import MergeGraph
from emflow.tasks.multicut import Multicut
from emflow.tasks.predict import BlendBlock, PredictBlock
from emflow.tasks.prepare import PrepareOutput
from emflow.tasks.supervoxels import RelabelSupervoxelBlock, SupervoxelBlock, SupervoxelIds
from emflow.tasks.write import WriteSegmentation

GRAPH_STAGES = (PrepareOutput, SupervoxelBlock, SupervoxelIds, RelabelSupervoxelBlock, BlockGraph, MergeGraph, EdgeCosts)


def workflow_stages(config_path: str, until: str = "") -> list[luigi.Task]:
    """The stage tasks of the workflow in the order they run (see `emflow.tasks.base.stage_task`),
    up to and including the stage named `until` ("" = all)."""
    stages = _all_stages(config_path)
    if not until:
        return stages
    names = [stage.stage for stage in stages]
    if until not in names:
        raise ValueError(f"this workflow has no stage {until!r}; its stages are {', '.join(names)}")
    return stages[: names.index(until) + 1]


def _all_stages(config_path: str) -> list[luigi.Task]:
    context = load_context(config_path)
    graph_stages = GRAPH_STAGES[:1] + (PredictBlock, BlendBlock) + GRAPH_STAGES[1:] if context.predicting else GRAPH_STAGES
    stages = [stage_task(task_class, config_path) for task_class in graph_stages]
    if lifted(context):
        stages += [stage_task(LabelOverlapBlock, config_path), stage_task(LiftedEdges, config_path)]
    n_scales = context.config["multicut"]["n_scales"]
    for scale in range(n_scales):
        stages += [stage_task(MulticutProblem, config_path, scale=scale), stage_task(SubproblemBlock, config_path, scale=scale)]
    if n_scales:
        stages.append(stage_task(MulticutProblem, config_path, scale=n_scales))
    return stages + [stage_task(Multicut, config_path), stage_task(WriteSegmentation, config_path)]


class MulticutSegmentation(luigi.WrapperTask):
    """The whole workflow: complete when every stage is complete.

    Every stage is required directly, not only the last: Luigi does not look behind a complete
    task, so a lost upstream record (a deleted or damaged block) would otherwise go unnoticed.
    """

    config_path = luigi.Parameter()
    until = luigi.Parameter(default="")

    def requires(self):
        return workflow_stages(self.config_path, self.until)


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


def stage_status(stage: luigi.Task) -> StageStatus:
    """How many tasks of one stage are done, stale, failed or pending.

    A finished block-wise stage is answered from its stage record and one directory listing;
    otherwise from one read of the stage's block journals.
    """
    failed = failed_tasks(stage)
    if not isinstance(stage, BlockStage):
        state = stage.output().state()
        if failed and state is not CompletionState.DONE:
            return StageStatus(stage.stage, done=0, stale=0, pending=0, failed=1)
        return StageStatus(stage.stage, *(int(state is value) for value in CompletionState))
    total = stage.number_of_blocks
    if stage.complete():
        return StageStatus(stage.stage, done=total, stale=0, pending=0)
    states = stage.output().block_states()
    failed = [block_id for block_id in failed if states.get(block_id) is not CompletionState.DONE]
    for block_id in failed:
        states.pop(block_id, None)
    states = list(states.values())
    done, stale = states.count(CompletionState.DONE), states.count(CompletionState.STALE)
    return StageStatus(stage.stage, done=done, stale=stale, pending=total - done - stale - len(failed), failed=len(failed))


def failed_tasks(stage: luigi.Task) -> list[int | None]:
    """The tasks of a stage that have a failure record: block ids, or [None] for a global stage.

    A task writes its failure record when its last attempt raises and removes it when it succeeds.
    """
    context = load_context(stage.config_path)
    if not isinstance(stage, BlockStage):
        return [None] if context.failure_path(stage.stage, None).exists() else []
    folder = context.failure_path(stage.stage, 0).parent
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(name[: -len(".json")]) for name in names if name.endswith(".json") and name[: -len(".json")].isdigit())


def workflow_status(config_path: str, until: str = "") -> list[StageStatus]:
    """Per stage, how many tasks are done, stale, failed or pending, with the inputs as they are now."""
    forget_input_states()
    return [stage_status(stage) for stage in workflow_stages(config_path, until)]


def dependent_stages(config_path: str, stage_name: str) -> list[luigi.Task]:
    """The stages that read stage `stage_name`'s results, directly or through other stages, in run order."""
    stages = workflow_stages(config_path)
    names = [stage.stage for stage in stages]
    if stage_name not in names:
        raise ValueError(f"this workflow has no stage {stage_name!r}; its stages are {', '.join(names)}")
    readers = {stage_name}
    dependents = []
    for stage in stages[names.index(stage_name) + 1 :]:
        definition = stage.prototype if isinstance(stage, BlockStage) else stage
        if any(upstream.stage in readers for upstream in definition.upstream_stages()):
            readers.add(stage.stage)
            dependents.append(stage)
    return dependents


def invalidate(config_path: str, stage_name: str, block_ids: list[int] | None = None) -> list[str]:
    """Make tasks of one stage, and everything that read them, pending again; return what was invalidated.

    `block_ids` None: the whole stage. A later block-wise stage linked block by block to the stages
    it reads (`BlockTask.upstream_blocks`, e.g. blending reads its neighbours' predictions) loses
    the blocks that read invalidated blocks; any other later stage that reads an invalidated stage,
    directly or through others, is invalidated as a whole. Results stay in place until the tasks
    run again.
    """
    stages = {stage.stage: stage for stage in workflow_stages(config_path)}
    if stage_name not in stages:
        raise ValueError(f"this workflow has no stage {stage_name!r}; its stages are {', '.join(stages)}")
    stage = stages[stage_name]
    if block_ids is not None and not isinstance(stage, BlockStage):
        raise ValueError(f"stage {stage_name} is one global task, not block-wise; rerun it without --blocks")
    if block_ids is not None:
        out_of_range = [block_id for block_id in block_ids if not 0 <= block_id < stage.number_of_blocks]
        if out_of_range:
            raise ValueError(f"stage {stage_name} has blocks 0 to {stage.number_of_blocks - 1}; no block {out_of_range[0]}")
    # Per invalidated stage, its invalidated blocks (None: all its tasks).
    invalidated: dict[str, set[int] | None] = {stage_name: None if block_ids is None else set(block_ids)}
    context = load_context(config_path)
    for dependent in dependent_stages(config_path, stage_name):
        invalidated[dependent.stage] = _blocks_reading(dependent, invalidated, context)
    # A linked stage none of whose blocks read an invalidated block keeps all of them.
    invalidated = {name: blocks for name, blocks in invalidated.items() if blocks is None or blocks}
    for name, blocks in invalidated.items():
        _invalidate_tasks(stages[name], None if blocks is None else sorted(blocks))
    return [name if blocks is None else f"{name} blocks {', '.join(map(str, sorted(blocks)))}" for name, blocks in invalidated.items()]


def _blocks_reading(stage: luigi.Task, invalidated: dict[str, set[int] | None], context) -> set[int] | None:
    """The blocks of `stage` that read invalidated tasks; None: the whole stage (it reads an
    invalidated stage that is not linked to it block by block)."""
    definition = stage.prototype if isinstance(stage, BlockStage) else stage
    linked = {task_class.stage: task_class for task_class in (type(definition).linked_upstream(context) if isinstance(stage, BlockStage) else ())}
    reading: set[int] = set()
    for upstream in definition.upstream_stages():
        blocks = invalidated.get(upstream.stage, set())
        if blocks is None or (blocks and upstream.stage not in linked):
            return None
        if blocks:
            task_class = type(definition)
            reading |= {
                block_id
                for block_id in range(stage.number_of_blocks)
                if blocks.intersection(task_class.upstream_blocks(context, block_id, linked[upstream.stage]))
            }
    return reading


def _invalidate_tasks(stage: luigi.Task, block_ids: list[int] | None) -> None:
    target = stage.output()
    if not isinstance(stage, BlockStage):
        target.remove()
        return
    block_ids = range(stage.number_of_blocks) if block_ids is None else block_ids
    with BlockJournal(target.block_folder, 0, stage.number_of_blocks) as journal:
        for block_id in block_ids:
            journal.append(block_id, None)


def progress_reporter(config_path: str, until: str = ""):
    """A callable giving one line of per-stage progress: blocks done out of all blocks.

    Block journals are read incrementally, so each line costs only the records added since the last.
    """
    stages = workflow_stages(config_path, until)
    readers = {stage.stage: JournalReader(stage.output().block_folder) for stage in stages if isinstance(stage, BlockStage)}
    expected: dict[str, list[str]] = {}  # block fingerprints, computed for a stage when first needed

    def line() -> str:
        parts = []
        for stage in stages:
            target = stage.output()
            if isinstance(stage, BlockStage):
                total = stage.number_of_blocks
                if target.exists():
                    done = total
                else:
                    records = readers[stage.stage].refresh()
                    if stage.stage not in expected:
                        expected[stage.stage] = stage.block_fingerprints(0, total)
                    fingerprints = expected[stage.stage]
                    done = sum(1 for block_id, record in records.items() if block_id < total and record.fingerprint == fingerprints[block_id])
            else:
                total, done = 1, int(target.exists())
            parts.append(f"{stage.stage} {done}/{total}")
        return "progress: " + ", ".join(parts)

    return line
