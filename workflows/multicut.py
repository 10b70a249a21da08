"""(Raw → CNN prediction →) boundary map → supervoxels → region-adjacency graph → edge costs → multicut → segmentation."""

from __future__ import annotations

from dataclasses import dataclass

import luigi

from emflow.targets import CompletionState, JournalReader
from emflow.tasks.base import BlockStage, stage_task
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
    stage: str
    done: int
    stale: int
    pending: int

    @property
    def total(self) -> int:
        return self.done + self.stale + self.pending


def stage_status(stage: luigi.Task) -> StageStatus:
    """How many tasks of one stage are done, stale (from another config) or pending.

    A finished block-wise stage is answered from its stage record and one directory listing;
    otherwise from one read of the stage's block journals.
    """
    if not isinstance(stage, BlockStage):
        state = stage.output().state()
        return StageStatus(stage.stage, *(int(state is value) for value in CompletionState))
    total = stage.number_of_blocks
    if stage.complete():
        return StageStatus(stage.stage, done=total, stale=0, pending=0)
    states = list(stage.output().block_states().values())
    done, stale = states.count(CompletionState.DONE), states.count(CompletionState.STALE)
    return StageStatus(stage.stage, done=done, stale=stale, pending=total - done - stale)


def workflow_status(config_path: str, until: str = "") -> list[StageStatus]:
    """Per stage, how many tasks are done, stale (from another config) or pending."""
    return [stage_status(stage) for stage in workflow_stages(config_path, until)]


def progress_reporter(config_path: str, until: str = ""):
    """A callable giving one line of per-stage progress: blocks done out of all blocks.

    Block journals are read incrementally, so each line costs only the records added since the last.
    """
    stages = workflow_stages(config_path, until)
    readers = {stage.stage: JournalReader(stage.output().block_folder) for stage in stages if isinstance(stage, BlockStage)}

    def line() -> str:
        parts = []
        for stage in stages:
            target = stage.output()
            if isinstance(stage, BlockStage):
                records = readers[stage.stage].refresh()
                total = stage.number_of_blocks
                done = sum(1 for block_id, record in records.items() if block_id < total and record.fingerprint == target.expected_fingerprint)
            else:
                total, done = 1, int(target.exists())
            parts.append(f"{stage.stage} {done}/{total}")
        return "progress: " + ", ".join(parts)

    return line
