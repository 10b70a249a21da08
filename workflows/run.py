"""Run a workflow from its config file: checks first, then the task graph."""

from __future__ import annotations

from pathlib import Path

from emflow.cluster import RunReport, run_tasks
from emflow.storage.output import OWNER_ATTRIBUTE, open_output_group
from emflow.targets import fingerprint
from emflow.tasks.base import use_workers
from emflow.tasks.context import RunContext, load_context

from .multicut import MulticutSegmentation, StageStatus, progress_reporter, workflow_status


class StaleOutputError(RuntimeError):
    """The output holds results of another config; recomputing them needs the user's consent."""


def check_run(config_path: str | Path, *, update: bool = False, until: str = "") -> tuple[str, list[StageStatus]]:
    """Validate config, inputs and output before any task runs.

    Returns the canonical config path and the status of each stage. Raises ConfigError,
    InputError, FileNotFoundError, KeyError, ForeignOutputError or StaleOutputError with a message
    naming the problem. Stale results are only recomputed (replaced) with `update=True`.
    """
    config_path = str(Path(config_path).resolve())
    context = load_context(config_path)
    if until == "blend_predictions" and not context.predicting:
        raise ValueError(
            f"{config_path} names a boundary map (input.boundaries_key), so there is nothing to predict; "
            "remove that key to predict boundaries from input.raw_key"
        )
    recorded = None
    if context.output_path.exists():
        recorded = open_output_group(context.output_path).attrs[OWNER_ATTRIBUTE].get("finished_with")
    statuses = workflow_status(config_path, until)
    if not update:
        stale = [status for status in statuses if status.stale]
        if stale:
            listing = ", ".join(f"{status.stage} ({status.stale} of {status.total})" for status in stale)
            raise StaleOutputError(
                f"{context.output_path} holds results computed with another config or input: {listing}. "
                "Run again with --update to recompute them (replacing those results), or choose another output path."
            )
        # The output's own record catches a config change even when the work folder is gone.
        if recorded is not None and recorded != _run_fingerprint(context):
            raise StaleOutputError(
                f"{context.output_path} was written with another config or input. Run again with --update to "
                "recompute it (replacing its results), or choose another output path."
            )
    return config_path, statuses


def run_workflow(
    config_path: str | Path,
    *,
    workers: int = 1,
    scheduler_host: str | None = None,
    scheduler_port: int | None = None,
    update: bool = False,
    until: str = "",
    progress_interval: float = 5.0,
) -> RunReport:
    """Run the workflow of a config file, or its stages up to `until` (e.g. "blend_predictions")."""
    config_path, _ = check_run(config_path, update=update, until=until)
    context = load_context(config_path)
    use_workers(workers)
    report = run_tasks(
        [MulticutSegmentation(config_path=config_path, until=until)],
        failure_dir=context.work_dir / "failed",
        scheduler_log=context.work_dir / "logs" / "luigi.log",
        workers=workers,
        scheduler_host=scheduler_host,
        scheduler_port=scheduler_port,
        progress=progress_reporter(config_path, until),
        progress_interval=progress_interval,
    )
    if report.succeeded and not until:
        group = open_output_group(context.output_path)
        group.attrs[OWNER_ATTRIBUTE] = {**group.attrs[OWNER_ATTRIBUTE], "finished_with": _run_fingerprint(context)}
    return report


def _run_fingerprint(context: RunContext) -> str:
    """Everything a finished output depends on: the config (less how it is scheduled) and the inputs' identity."""
    config = {section: values for section, values in context.config.items() if section != "scheduling"}
    return fingerprint({"config": config, "inputs": context.inputs})
