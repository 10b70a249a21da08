"""The end of a successful `emflow run` or `emflow predict` on the terminal: what was made, where, and at what cost."""

from __future__ import annotations

import sys
from typing import TextIO

from emflow.cluster import RunReport
from emflow.cluster.progress import format_duration
from emflow.workflows.summary import RunSummary


def format_bytes(size: int) -> str:
    """A memory size as people read it: "512 MiB", "1.4 GiB"; "-" when unknown (0)."""
    if size <= 0:
        return "-"
    if size < 2**30:
        return f"{size / 2**20:.0f} MiB"
    return f"{size / 2**30:.1f} GiB"


def print_summary(summary: RunSummary, report: RunReport, what: str = "run", stream: TextIO | None = None, *, view: bool = True) -> None:
    """Print e.g.::

    emflow: run complete in 56.1 s
      output: /data/result.zarr
        segmentation  (125, 250, 250) uint64, 1234 segments
      look at it: emflow view /data/my.toml

      stage                 tasks   time (s)   peak memory
      prepare_output            1       0.04        187 MiB
      ...
      (time: summed over a stage's tasks; peak memory: the largest of its tasks' processes)
    """
    stream = sys.stdout if stream is None else stream
    where = f" (SLURM job array {report.job_id})" if report.job_id is not None else ""
    ran = [stage for stage in summary.stages if stage.ran_now]
    if ran:
        clock = f" ({format_duration(report.seconds)})" if report.seconds >= 60 else ""
        headline = f"{what} complete in {report.seconds:.1f} s{clock}{where}"
    else:
        headline = f"nothing to do: every stage was done before ({report.seconds:.1f} s to check){where}"
    lines = [f"emflow: {headline}", f"  output: {summary.output_path}"]
    for array in summary.arrays:
        segments = f", {summary.segments[array.name]} segments" if array.name in summary.segments else ""
        lines.append(f"    {array.name}  {array.shape} {array.dtype}{segments}")
    if view:
        lines.append(f"  look at it: emflow view {summary.config_path}")
    width = max(len("stage"), *(len(stage.stage) for stage in summary.stages))
    lines += ["", f"  {'stage':<{width}}  {'tasks':>6}  {'time (s)':>9}  {'peak memory':>11}"]
    for stage in summary.stages:
        earlier = "" if stage.ran_now else "  (done before this run)"
        lines.append(
            f"  {stage.stage:<{width}}  {stage.tasks:>6}  {stage.seconds:>9.2f}  {format_bytes(stage.peak_rss_bytes):>11}{earlier}"
        )
    total = sum(stage.seconds for stage in ran)
    lines.append(
        f"  {'this run':<{width}}  {sum(stage.tasks for stage in ran):>6}  {total:>9.2f}  {format_bytes(max((s.peak_rss_bytes for s in ran), default=0)):>11}"
    )
    lines.append(
        "  (time: summed over a stage's tasks, so more than the wall time with several workers; peak memory: the largest of its tasks' processes)"
    )
    print("\n".join(lines), file=stream, flush=True)


# The metrics the demo prints, in this order, with what they mean.
DEMO_METRICS = (
    ("adapted_rand_error", "adapted Rand error", "0 = perfect"),
    ("voi_split", "VOI split", "bits; over-segmentation"),
    ("voi_merge", "VOI merge", "bits; under-segmentation"),
    ("rand_precision", "Rand precision", "falls with false merges"),
    ("rand_recall", "Rand recall", "falls with false splits"),
    ("cremi_score", "CREMI score", "sqrt(VOI x adapted Rand error)"),
)


def print_demo_scores(result, stream: TextIO | None = None) -> None:
    """The demo's scores against its ground truth, their judgement, and where to look at the result."""
    from emflow.evaluation import judgement

    stream = sys.stdout if stream is None else stream
    metrics = result.metrics
    width = max(len(label) for _, label, _ in DEMO_METRICS)
    lines = ["", "scores against the crop's ground truth (label 0 ignored):"]
    lines += [f"  {label:<{width}}  {metrics[key]:.3f}  ({meaning})" for key, label, meaning in DEMO_METRICS if key in metrics]
    lines += [
        f"judgement: {judgement(metrics)}",
        f"segmentation: {result.segmentation} (all metrics: {result.metrics_path})",
    ]
    if result.evaluation_report is not None:
        lines.append(f"evaluation report: {result.evaluation_report} (worst merges and splits drawn)")
    lines += [
        f"preview: {result.preview} (run report beside it)",
        f"look at it: emflow view {result.config_path}",
    ]
    print("\n".join(lines), file=stream, flush=True)


ISBI_SCORES = (
    ("v_rand", "V_rand"),
    ("v_rand_split", "V_rand split"),
    ("v_rand_merge", "V_rand merge"),
    ("v_info", "V_info"),
    ("v_info_split", "V_info split"),
    ("v_info_merge", "V_info merge"),
)


def print_sstem_scores(result, stream: TextIO | None = None) -> None:
    """The ssTEM demo's ISBI 2012 scores, per section and their mean, and where to look at the result."""
    stream = sys.stdout if stream is None else stream
    scores = result.scores
    header = "section  " + "  ".join(f"{label:>12}" for _, label in ISBI_SCORES)
    lines = ["", "ISBI 2012 scores (foreground-restricted, per section; 1 = perfect):", header]
    for section, values in zip(result.sections, scores["sections"]):
        if values is not None:
            lines.append(f"{section:>7}  " + "  ".join(f"{values[key]:>12.4f}" for key, _ in ISBI_SCORES))
    lines.append(f"{'mean':>7}  " + "  ".join(f"{scores[key]:>12.4f}" for key, _ in ISBI_SCORES))
    lines += [
        f"segmentation: {result.segmentation} (scores: {result.metrics_path})",
        f"preview: {result.preview} (run report beside it)",
        f"look at it: emflow view {result.config_path}",
    ]
    print("\n".join(lines), file=stream, flush=True)
