"""What a finished run made and what it cost: the output, its segments, time and peak memory per stage.

Everything is read back from the completion records (each task's record holds its `seconds` and
its process's `peak_rss_bytes`, `emflow.tasks.adapter.execute`) and from the output group, so a
summary can be made for any finished run, not only by the process that ran it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from emflow.tasks.adapter import Workflow, stage_costs, stage_results
from emflow.tasks.context import Run
from emflow.tasks.spec import StageSpec

from .segmentation import SEGMENTATION

# The stage that writes the full-resolution segmentation volumes.
WRITE_STAGE = "write_segmentation"


@dataclass(frozen=True)
class StageCost:
    """One stage's `tasks` (blocks, or 1), their `seconds` summed (with several workers the stage's
    wall time is shorter) and the largest peak resident memory of their processes (`peak_rss_bytes`,
    0 where not recorded). `ran_now`: False when the stage was done before this run (the figures are
    then those of the run that did it)."""

    stage: str
    tasks: int
    seconds: float
    peak_rss_bytes: int
    ran_now: bool = True


@dataclass(frozen=True)
class OutputArray:
    """An array the run's last stage wrote: its name in the output group, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class RunSummary:
    """A finished run: where its output is, what its last stage wrote there, the number of segments
    of each segmentation volume (by name; none for a run that wrote none, such as `emflow predict`)
    and the cost of each stage."""

    config_path: Path
    output_path: Path
    arrays: tuple[OutputArray, ...]
    segments: dict[str, int]
    stages: tuple[StageCost, ...]

    @property
    def peak_rss_bytes(self) -> int:
        """The largest peak resident memory of any task of the run's stages."""
        return max((stage.peak_rss_bytes for stage in self.stages), default=0)


def stage_cost(run: Run, spec: StageSpec, *, ran_now: bool = True) -> StageCost:
    """Tasks, summed seconds and largest peak RSS of a finished stage, from its records (`stage_costs`)."""
    costs = stage_costs(run, spec.name)
    return StageCost(spec.name, costs["tasks"], float(costs["seconds"]), int(costs["peak_rss_bytes"]), ran_now=ran_now)


def run_summary(
    config_path: str | Path, until: str = "", *, done_before: Collection[str] = (), workflow: Workflow = SEGMENTATION
) -> RunSummary:
    """The summary of a finished run of a config (up to stage `until`, "" = all).

    `done_before`: names of the stages that were complete before this run started (their costs are
    marked as an earlier run's). Raises FileNotFoundError when a stage is not finished.
    """
    config_path = Path(config_path).expanduser().resolve()
    run = workflow.load_run(str(config_path))
    stages = workflow.stages(str(config_path), until)
    costs = tuple(stage_cost(run, spec, ran_now=spec.name not in done_before) for spec in stages)
    segments = segment_counts(run) if any(spec.name == WRITE_STAGE for spec in stages) else {}
    arrays = []
    # What the run made: the full-resolution volumes of the last stage that writes any (pyramid
    # levels and meshes only show it at other scales).
    product = next((spec for spec in reversed(stages) if any(_full_resolution(run, write) for write in spec.writes)), stages[-1])
    for write in product.writes:
        if _full_resolution(run, write):
            array = run.store.output_array(write.name)
            arrays.append(OutputArray(write.name, tuple(int(size) for size in array.shape), str(array.dtype)))
    return RunSummary(config_path, run.layout.output_path, tuple(arrays), segments, costs)


def node_label_source(run: Run) -> str:
    """The global stage whose node labels the segmentation is written from (multicut, agglomeration, ...)."""
    return next(read.name for read in run.stage(WRITE_STAGE).reads if read.kind == "bundle")


def segment_counts(run: Run) -> dict[str, int]:
    """The number of segments of each segmentation volume a finished run wrote, by name, as the
    stage its node labels come from recorded it: "number_of_segments" for one volume, "segments"
    for one per agglomeration threshold."""
    result = stage_results(run, node_label_source(run))
    counts = result["segments"] if "segments" in result else [result["number_of_segments"]]
    return dict(zip((write.name for write in run.stage(WRITE_STAGE).writes), counts))


def _full_resolution(run: Run, write) -> bool:
    return write.kind == "array" and run.store.volumes[write.name].level == 0
