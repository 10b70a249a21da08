"""Looking after a finished run: `emflow verify` reads every file the run wrote against the digest
its record holds; `emflow clean` removes the per-block partial results a finished run no longer needs.

What `emflow run` and `emflow status` check is the size and modification time of each file
(`emflow.tasks.adapter`): a file rewritten or deleted is found, one whose bytes changed in place
with its size and time kept (a storage fault, a restored backup with preserved times) is not.
`verify_run` reads every file and compares its digest with the one taken when it was written
(XXH3-128, `emflow.targets.atomic.DIGEST_PREFIX`; SHA-256 for records of an emflow before it): the
check for after a storage incident, at the cost of reading the whole output.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from emflow.errors import UsageError
from emflow.storage.chunks import file_state
from emflow.targets import atomic_write_text
from emflow.tasks.adapter import (
    Workflow,
    block_fingerprints,
    forget_input_states,
    invalidate_records,
    output_files,
    partial_files,
    stage_record,
    stage_target,
)
from emflow.tasks.context import Run

from .report import SIZES_STAGE
from .run import run_lock
from .segmentation import SEGMENTATION
from .status import plan_repairs, stage_status


@dataclass(frozen=True)
class FileProblem:
    """A file a task recorded that is not as it wrote it: "missing", "changed" (another size or
    modification time: `emflow run` finds it too) or "damaged" (the same size and time, other bytes:
    only `emflow verify` finds it). `output`: in the output group (else a work-folder result)."""

    stage: str
    block_id: int | None
    path: str
    problem: str
    output: bool

    def describe(self) -> str:
        task = self.stage if self.block_id is None else f"{self.stage} block {self.block_id}"
        what = {
            "missing": "is missing",
            "changed": "was changed since it was written (another size or time)",
            "damaged": "is damaged: the same size and time as written, other bytes (its digest differs)",
        }[self.problem]
        return f"{self.path} {what} ({task})"


@dataclass
class Verification:
    """What `verify_run` found: files and bytes read, problems, tasks without a current record, and
    partial results that `emflow clean` removed (not problems: recomputed when needed)."""

    files: int = 0
    bytes: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    not_done: int = 0
    removed: int = 0

    @property
    def damage(self) -> list[FileProblem]:
        """Problems to repair: every output problem, and work-folder results with other bytes but
        the same size and time. A missing or rewritten work-folder result is found by the run that
        needs it, and computed again then (`emflow.workflows.status.plan_repairs`)."""
        return [problem for problem in self.problems if problem.output or problem.problem == "damaged"]


def verify_run(config_path: str, *, repair: bool = False, workflow: Workflow = SEGMENTATION) -> Verification:
    """Read every file the finished tasks of a run recorded and compare it with its record.

    With `repair`, the tasks that wrote a damaged, changed or missing output file, or a damaged
    work-folder result, are invalidated (under the run's lock), so that the next `emflow run`
    computes them again (see `Verification.damage`).
    """
    forget_input_states()
    run = workflow.load_run(config_path)
    removed = _cleaned(run)
    verification = Verification()
    for spec in run.stages:
        if spec.blockwise:
            _verify_blocks(run, spec.name, verification, removed)
        else:
            _verify_global(run, spec.name, verification)
    if repair and verification.damage:
        with run_lock(run.layout):
            damaged: dict[str, set[int | None]] = {}
            for problem in verification.damage:
                damaged.setdefault(problem.stage, set()).add(problem.block_id)
            for stage, tasks in damaged.items():
                invalidate_records(run, stage, None if None in tasks else sorted(tasks))
    return verification


def _check(
    verification: Verification, stage: str, block_id: int | None, path: Path | str, recorded, *, output: bool, removed: bool = False
) -> None:
    if recorded is None:
        return  # a file the task did not write (a block writes one of its partial files, or none)
    current = file_state(path, digest=True, read_back=True, like=recorded[2])
    verification.files += current is not None
    verification.bytes += current[0] if current is not None else 0
    if current is None:
        if removed and not output:
            verification.removed += 1
            return
        problem = "missing"
    elif (current[0], current[1]) != (recorded[0], recorded[1]):
        problem = "changed"
    elif recorded[2] and current[2] != recorded[2]:
        problem = "damaged"
    else:
        return
    verification.problems.append(FileProblem(stage, block_id, str(path), problem, output))


def _verify_global(run: Run, stage: str, verification: Verification) -> None:
    target = stage_record(run, stage)
    record = target.read()
    if not isinstance(record, dict) or record.get("fingerprint") != target.expected_fingerprint:
        verification.not_done += 1
        return
    data = record.get("data")
    if not isinstance(data, dict):
        return
    for kind, root, output in (("outputs", run.layout.output_path, True), ("bundle", run.layout.work_dir, False)):
        for relative, recorded in sorted((data.get(kind) or {}).items()):
            _check(verification, stage, None, root / relative, recorded, output=output)
    for relative in sorted(data.get("volumes") or {}):  # by presence only (see `global_outputs_changed`)
        if not (run.layout.output_path / relative).exists():
            verification.problems.append(FileProblem(stage, None, str(run.layout.output_path / relative), "missing", True))


def _verify_blocks(run: Run, stage: str, verification: Verification, removed: set[str]) -> None:
    spec = run.stage(stage)
    target = stage_target(run, stage)
    records = target.block_records()
    expected = block_fingerprints(run, stage)
    try:
        outputs = output_files(run, spec)
    except FileNotFoundError:
        outputs = None  # the output volume is gone: each recorded chunk is missing
    partials = partial_files(run, spec)
    for block_id in range(target.number_of_blocks):
        record = records.get(block_id)
        if record is None or record.fingerprint != expected[block_id]:
            verification.not_done += 1
            continue
        if record.data is None:
            continue
        recorded_outputs = record.data.get("outputs", [])
        paths = (
            outputs[block_id]
            if outputs is not None
            else [f"{run.layout.output_path} (chunk {index} of block {block_id})" for index in range(len(recorded_outputs))]
        )
        for path, recorded in zip(paths, recorded_outputs):
            _check(verification, stage, block_id, path, recorded, output=True)
        for path, recorded in zip(partials[block_id], record.data.get("partials", [])):
            _check(verification, stage, block_id, path, recorded, output=False, removed=stage in removed)


# --- clean --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Removed:
    """The partial results of one stage that `clean_run` removed: how many files, how many bytes."""

    stage: str
    files: int
    bytes: int


def clean_run(config_path: str, *, workflow: Workflow = SEGMENTATION) -> list[Removed]:
    """Remove the per-block partial results (`<work>/blocks/<stage>/`) of a finished run, and note
    it in `<work>/cleaned.json`; refuses (UsageError) a run that is not finished. The supervoxel
    sizes the run report reads (`report.SIZES_STAGE`, one number per supervoxel) are kept: without
    them a report after new data in a few chunks could not count the segments' voxels. What global
    stages kept of the removed partials (`Layout.partials_cache`) goes too.

    Records stay: rerunning the config is still a no-op, since partial results are checked only
    when a task that reads them is pending. Reprocessing that needs some of them (new data in one
    input chunk makes its blocks pending, and blending reads the CNN sums of their neighbours)
    computes those again first. Global arrays (`<work>/global/`, small) are kept: they spare
    reprocessing a global solve.
    """
    forget_input_states()
    run = workflow.load_run(config_path)
    stages = list(run.stages)
    plan = plan_repairs(run, stages)
    unfinished = [status.stage for status in (stage_status(run, spec) for spec in stages) if status.done != status.total]
    if unfinished or plan.repairs:
        raise UsageError(
            f"the run of {config_path} is not finished ({', '.join(unfinished or [repair.stage for repair in plan.repairs])} "
            "still to run): its partial results are still needed. Run it first (emflow run), then clean"
        )
    removed = []
    with run_lock(run.layout):
        for spec in stages:
            folder = run.layout.work_dir / "blocks" / spec.name
            if not spec.blockwise or spec.name == SIZES_STAGE or not folder.is_dir():
                continue
            # What readers kept of these partials (`Layout.partials_cache`) goes with them.
            caches = sorted((run.layout.work_dir / "cache").glob(f"*/{spec.name}.npz"))
            files = [path for path in folder.rglob("*") if path.is_file()] + caches
            size = sum(path.stat().st_size for path in files)
            shutil.rmtree(folder)
            for cache in caches:
                cache.unlink()
            removed.append(Removed(spec.name, len(files), size))
        if removed:
            cleaned = _read_cleaned(run)
            for entry in removed:
                cleaned[entry.stage] = {"files": entry.files, "bytes": entry.bytes, "cleaned": time.time()}
            atomic_write_text(run.layout.clean_record, json.dumps(cleaned, sort_keys=True))
    return removed


def _read_cleaned(run: Run) -> dict:
    try:
        cleaned = json.loads((run.layout.clean_record).read_text())
    except (OSError, ValueError):
        return {}
    return cleaned if isinstance(cleaned, dict) else {}


def _cleaned(run: Run) -> set[str]:
    """The stages whose partial results `emflow clean` removed at some point."""
    return set(_read_cleaned(run))
