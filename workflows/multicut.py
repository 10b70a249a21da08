"""Boundary map → supervoxels → region-adjacency graph → edge costs → multicut → segmentation."""

from __future__ import annotations

from dataclasses import dataclass

import luigi

from emflow.targets import CompletionState
from emflow.tasks.base import BlockTask, EmflowTask, upstream_done
from emflow.tasks.block_graph import BlockGraph
from emflow.tasks.context import load_context
from emflow.tasks.edge_costs import EdgeCosts
from emflow.tasks.merge_graph import MergeGraph
from emflow.tasks.multicut import Multicut
from emflow.tasks.prepare import PrepareOutput
from emflow.tasks.supervoxels import RelabelSupervoxelBlock, SupervoxelBlock, SupervoxelIds
from emflow.tasks.write import WriteSegmentation

STAGES: tuple[type[EmflowTask], ...] = (
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


class MulticutSegmentation(luigi.WrapperTask):
    """The whole workflow: complete when every task of every stage is complete.

    Every stage is required directly, not only the last: Luigi does not look behind a complete
    task, so a lost upstream record (a deleted or damaged block) would otherwise go unnoticed.
    """

    config_path = luigi.Parameter()

    def requires(self):
        return [upstream_done(stage, self.config_path) for stage in STAGES]


def stage_tasks(stage: type[EmflowTask], config_path: str) -> list[EmflowTask]:
    """Every task of one stage: one per block for block-wise stages, else one."""
    if issubclass(stage, BlockTask):
        number_of_blocks = load_context(config_path).blocking.number_of_blocks
        return [stage(config_path=config_path, block_id=block_id) for block_id in range(number_of_blocks)]
    return [stage(config_path=config_path)]


@dataclass(frozen=True)
class StageStatus:
    stage: str
    done: int
    stale: int
    pending: int

    @property
    def total(self) -> int:
        return self.done + self.stale + self.pending


def workflow_status(config_path: str) -> list[StageStatus]:
    """Per stage, how many tasks are done, stale (from another config) or pending."""
    statuses = []
    for stage in STAGES:
        states = [task.output().state() for task in stage_tasks(stage, config_path)]
        statuses.append(
            StageStatus(
                stage=stage.stage,
                done=states.count(CompletionState.DONE),
                stale=states.count(CompletionState.STALE),
                pending=states.count(CompletionState.PENDING),
            )
        )
    return statuses


def progress_reporter(config_path: str, statuses: list[StageStatus], started: float):
    """A callable giving one line of per-stage progress: done-before-the-run plus records written since."""
    context = load_context(config_path)
    done_before = {status.stage: status.done for status in statuses}
    totals = {status.stage: status.total for status in statuses}

    def line() -> str:
        parts = []
        for stage in STAGES:
            if issubclass(stage, BlockTask):
                folder = context.record_path(stage.stage, 0).parent
                paths = folder.iterdir() if folder.exists() else ()
            else:
                record = context.record_path(stage.stage, None)
                paths = [record] if record.exists() else []
            written = sum(1 for path in paths if path.suffix == ".json" and path.stat().st_mtime >= started)
            done = min(totals[stage.stage], done_before[stage.stage] + written)
            parts.append(f"{stage.stage} {done}/{totals[stage.stage]}")
        return "progress: " + ", ".join(parts)

    return line
