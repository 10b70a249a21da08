"""Boundary map → supervoxels → region-adjacency graph → edge costs → multicut → segmentation."""

from __future__ import annotations

from dataclasses import dataclass

import luigi

from emflow.targets import CompletionState, recorded_block_ids
from emflow.tasks.base import BlockStage, stage_task
from emflow.tasks.block_graph import BlockGraph
from emflow.tasks.context import load_context
from emflow.tasks.edge_costs import EdgeCosts
from emflow.tasks.merge_graph import MergeGraph
from emflow.tasks.multicut import Multicut
from emflow.tasks.prepare import PrepareOutput
from emflow.tasks.supervoxels import RelabelSupervoxelBlock, SupervoxelBlock, SupervoxelIds
from emflow.tasks.write import WriteSegmentation

STAGE_CLASSES = (
    PrepareOutput,
    SupervoxelBlock,
    SupervoxelIds,
    RelabelSupervoxelBlock,
    BlockGraph,
    MergeGraph,
    EdgeCosts,
    Multicut,
    WriteSegmentation,
)


def workflow_stages(config_path: str) -> list[luigi.Task]:
    """The stage tasks of the workflow in the order they run (see `emflow.tasks.base.stage_task`)."""
    return [stage_task(task_class, config_path) for task_class in STAGE_CLASSES]


class MulticutSegmentation(luigi.WrapperTask):
    """The whole workflow: complete when every stage is complete.

    Every stage is required directly, not only the last: Luigi does not look behind a complete
    task, so a lost upstream record (a deleted or damaged block) would otherwise go unnoticed.
    """

    config_path = luigi.Parameter()

    def requires(self):
        return workflow_stages(self.config_path)


@dataclass(frozen=True)
class StageStatus:
    stage: str
    done: int
    stale: int
    pending: int
    stale_blocks: frozenset[int] = frozenset()

    @property
    def total(self) -> int:
        return self.done + self.stale + self.pending


def stage_status(stage: luigi.Task) -> StageStatus:
    """How many tasks of one stage are done, stale (from another config) or pending.

    A finished block-wise stage is answered from its stage record and one directory listing;
    otherwise each block record present is read.
    """
    if not isinstance(stage, BlockStage):
        state = stage.output().state()
        return StageStatus(stage.stage, *(int(state is value) for value in CompletionState))
    total = stage.number_of_blocks
    if stage.complete():
        return StageStatus(stage.stage, done=total, stale=0, pending=0)
    recorded = recorded_block_ids(stage.output().block_folder)
    states = {block_id: stage.block_task(block_id).output().state() for block_id in recorded if block_id < total}
    done = sum(state is CompletionState.DONE for state in states.values())
    stale_blocks = frozenset(block_id for block_id, state in states.items() if state is CompletionState.STALE)
    return StageStatus(stage.stage, done=done, stale=len(stale_blocks), pending=total - done - len(stale_blocks), stale_blocks=stale_blocks)


def workflow_status(config_path: str) -> list[StageStatus]:
    """Per stage, how many tasks are done, stale (from another config) or pending."""
    return [stage_status(stage) for stage in workflow_stages(config_path)]


def progress_reporter(config_path: str, statuses: list[StageStatus], started: float):
    """A callable giving one line of per-stage progress, from one directory listing per stage.

    A block counts as done if it was done before the run, or if it has a record now that is not a
    stale one from before the run; a stale record counts once it has been rewritten during the run.
    """
    stages = workflow_stages(config_path)
    before = {status.stage: status for status in statuses}

    def line() -> str:
        parts = []
        for stage in stages:
            status = before[stage.stage]
            if isinstance(stage, BlockStage):
                target = stage.output()
                recorded = recorded_block_ids(target.block_folder)
                rewritten = sum(
                    1 for block_id in status.stale_blocks & recorded if stage.block_task(block_id).output().path.stat().st_mtime >= started
                )
                done = len(recorded - status.stale_blocks) + rewritten
            else:
                done = int(stage.output().path.exists() and stage.output().path.stat().st_mtime >= started) or status.done
            parts.append(f"{stage.stage} {min(done, status.total)}/{status.total}")
        return "progress: " + ", ".join(parts)

    return line
