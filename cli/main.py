"""`emflow run | predict | train | status | config defaults | config training-defaults | import | evaluate | demo`.

Exit codes: 0 success; 1 a task failed (the failed blocks and their logs are named); 2 bad input,
config or output (one message naming the problem, nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except KeyboardInterrupt:
        print("emflow: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as error:
        if not _is_user_error(error):
            raise
        print(f"emflow: error: {_message(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _is_user_error(error: Exception) -> bool:
    from emflow.config import ConfigError
    from emflow.storage.output import ForeignOutputError
    from emflow.tasks.context import InputError
    from emflow.workflows.run import StaleOutputError

    return isinstance(error, (ConfigError, InputError, ForeignOutputError, StaleOutputError, FileNotFoundError, FileExistsError, KeyError, ValueError, TypeError))


def _message(error: Exception) -> str:
    # KeyError's str() wraps the message in quotes.
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emflow", description="Blockwise multicut segmentation of 3D EM volumes.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the workflow of a config file (resumes where it stopped)")
    _add_run_arguments(run)
    run.set_defaults(handler=_run, until="")

    predict = commands.add_parser(
        "predict", help="run only the CNN prediction of a config without boundaries_key (writes predictions and boundaries)"
    )
    _add_run_arguments(predict)
    predict.set_defaults(handler=_run, until="blend_predictions")

    train = commands.add_parser("train", help="train a boundary or affinity U-Net (resumes from its last checkpoint)")
    train.add_argument("config", help="training TOML config file (see `emflow config training-defaults`)")
    train.set_defaults(handler=_train)

    status = commands.add_parser("status", help="per stage: blocks done / stale / pending")
    status.add_argument("config", help="TOML config file")
    status.set_defaults(handler=_status)

    config = commands.add_parser("config", help="configuration helpers")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    defaults = config_commands.add_parser("defaults", help="print the complete default config, documented")
    defaults.set_defaults(handler=_config_defaults)
    training_defaults = config_commands.add_parser("training-defaults", help="print the complete default training config, documented")
    training_defaults.set_defaults(handler=_training_defaults)

    importer = commands.add_parser("import", help="convert a TIFF stack or HDF5 dataset to a zarr array")
    importer.add_argument("source", help="TIFF stack, or HDF5 file (with --source-key or SOURCE as file.h5:key)")
    importer.add_argument("destination", help="zarr group to write into (created if missing)")
    importer.add_argument("--key", required=True, help="name of the new array in the destination")
    importer.add_argument("--source-key", help="dataset in an HDF5 source")
    importer.add_argument("--resolution", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel size in nm")
    importer.set_defaults(handler=_import)

    evaluate = commands.add_parser("evaluate", help="VOI, adapted Rand error and CREMI score as JSON")
    evaluate.add_argument("segmentation", help="file.zarr:key or file.h5:key")
    evaluate.add_argument("groundtruth", help="file.zarr:key or file.h5:key (label 0 is ignored)")
    evaluate.set_defaults(handler=_evaluate)

    demo = commands.add_parser("demo", help="segment the shipped demo crop and score it")
    demo.add_argument("--out", default="emflow-demo", help="folder for the demo's input and results (default ./emflow-demo)")
    demo.add_argument("--workers", type=int, default=2, help="tasks run in parallel (default 2)")
    demo.set_defaults(handler=_demo)
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="TOML config file")
    parser.add_argument("--workers", type=int, default=1, help="tasks run in parallel (default 1)")
    scheduler = parser.add_mutually_exclusive_group()
    scheduler.add_argument("--local-scheduler", action="store_true", help="embedded scheduler (the default)")
    scheduler.add_argument("--scheduler-host", help="host of a running luigid central scheduler")
    parser.add_argument("--scheduler-port", type=int, default=8082, help="port of the central scheduler (default 8082)")
    parser.add_argument("--update", action="store_true", help="recompute results that came from another config, replacing them")


def _report_failures(report) -> None:
    print(f"emflow: run FAILED (luigi status {report.luigi_status}) after {report.seconds:.1f} s", file=sys.stderr)
    for failure in report.failures:
        block = "global task" if failure["block_id"] is None else f"block {failure['block_id']}"
        print(f"  {failure['stage']} {block}: {failure['error']}\n    log: {failure['log']}", file=sys.stderr)
    if not report.failures:
        print(f"  no task recorded a failure (a worker may have died): see {report.scheduler_log}", file=sys.stderr)


def _run(arguments) -> int:
    from emflow.workflows.run import run_workflow

    if arguments.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {arguments.workers}")
    report = run_workflow(
        arguments.config,
        workers=arguments.workers,
        scheduler_host=arguments.scheduler_host,
        scheduler_port=arguments.scheduler_port,
        update=arguments.update,
        until=arguments.until,
    )
    if not report.succeeded:
        _report_failures(report)
        return EXIT_TASK_FAILED
    print(f"emflow: {'prediction' if arguments.until else 'run'} complete in {report.seconds:.1f} s")
    return EXIT_OK


def _train(arguments) -> int:
    from emflow.workflows.train import train

    report = train(arguments.config, log=lambda line: print(line, flush=True))
    validation = "" if report.validation_loss is None else f", validation loss {report.validation_loss:.4f}"
    print(f"emflow train: {report.iterations} iterations in {report.seconds:.0f} s{validation}; model written to {report.model_path}")
    return EXIT_OK


def _status(arguments) -> int:
    from emflow.workflows import workflow_status

    statuses = workflow_status(str(Path(arguments.config).resolve()))
    width = max(len(status.stage) for status in statuses)
    print(f"{'stage':<{width}}  {'done':>7}  {'stale':>7}  {'pending':>7}  {'total':>7}")
    for status in statuses:
        print(f"{status.stage:<{width}}  {status.done:>7}  {status.stale:>7}  {status.pending:>7}  {status.total:>7}")
    return EXIT_OK


def _config_defaults(arguments) -> int:
    from emflow.config import default_config_text

    print(default_config_text(), end="")
    return EXIT_OK


def _training_defaults(arguments) -> int:
    from emflow.config import training_config_text

    print(training_config_text(), end="")
    return EXIT_OK


def _import(arguments) -> int:
    from emflow.storage.volumes import import_volume, parse_location

    source, source_key = arguments.source, arguments.source_key
    if source_key is None and ":" in Path(source).name:
        source, source_key = parse_location(source)
    import_volume(source, arguments.destination, arguments.key, source_key=source_key, resolution=arguments.resolution)
    print(f"emflow: wrote {arguments.destination}:{arguments.key}")
    return EXIT_OK


def _evaluate(arguments) -> int:
    from contextlib import ExitStack

    from emflow.evaluation import evaluate
    from emflow.storage.volumes import opened_volume, parse_location

    with ExitStack() as stack:
        volumes = [
            stack.enter_context(opened_volume(*parse_location(location)))
            for location in (arguments.segmentation, arguments.groundtruth)
        ]
        # The volumes go in as they are: evaluation reads them in slabs, never whole.
        print(json.dumps(evaluate(*volumes), indent=2, sort_keys=True))
    return EXIT_OK


def _demo(arguments) -> int:
    from emflow.workflows.demo import run_demo

    result = run_demo(arguments.out, workers=arguments.workers)
    if not result.report.succeeded:
        _report_failures(result.report)
        return EXIT_TASK_FAILED
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    print(f"emflow demo: segmentation written to {result.segmentation} (run took {result.report.seconds:.1f} s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
