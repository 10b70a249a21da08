"""The first stage: create the output group and its volumes (inputs are checked when the run is set up)."""

from __future__ import annotations

import dataclasses

from emflow import __version__
from emflow.config import as_dict
from emflow.storage.inputs import reference_role

from .context import GlobalContext, Run
from .spec import StageSpec


def input_identity(run: Run) -> dict[str, str]:
    """The dataset a run segments (the boundary map, or the raw data it is predicted from): its
    resolved path and key. New data in it, or new parameters, are reprocessing; another dataset is
    another input, whose results an output never takes in silently."""
    dataset = run.inputs[reference_role(run.inputs)]
    return {"path": dataset.path, "key": dataset.key}


def _prepare_output(stage: GlobalContext) -> dict:
    run = stage.run
    # The work folder whose records describe this output (`emflow.workflows.run.check_run`).
    owner = {"version": __version__, "config": as_dict(run.config), "input": input_identity(run), "work_dir": str(run.layout.work_dir)}
    run.store.mark_output(owner)
    geometry = run.geometry
    run.store.create_volumes(geometry.shape, geometry.block_shape, geometry.resolution, geometry.level_factors)
    stage.log.info(
        "created output arrays of shape %s, chunks %s in %s", run.geometry.shape, run.geometry.block_shape, run.layout.output_path
    )
    return {"shape": list(run.geometry.shape), "number_of_blocks": run.geometry.blocking.number_of_blocks}


def _parameters(run: Run) -> dict:
    return {
        "inputs": {role: dataset.identity() for role, dataset in run.inputs.items()},
        "resolution": list(run.geometry.resolution),
        "block_shape": list(run.geometry.block_shape),
        "level_factors": [list(factors) for factors in run.geometry.level_factors],
        "output": str(run.layout.output_path),
        "volumes": {name: dataclasses.asdict(volume) for name, volume in run.store.volumes.items()},
    }


PREPARE_OUTPUT = StageSpec(name="prepare_output", blockwise=False, run=_prepare_output, parameters=_parameters, creates_outputs=True)
