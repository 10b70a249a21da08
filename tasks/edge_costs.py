"""Multicut edge costs from the edge features: the smallest stage, a spec and a core function."""

from __future__ import annotations

import numpy as np

from emflow.config import resolve_function
from emflow.costs import auto_weighting

from .context import GlobalContext
from .spec import Read, StageSpec, Write
from .supervoxels import two_d_supervoxels


def cost_parameters(config, resolution: tuple[float, ...]) -> dict:
    """The keywords `[costs]` passes its function for data of voxel size `resolution` (z, y, x):
    weighting "auto" resolved by the supervoxels' dimensionality (`emflow.costs.auto_weighting`)."""
    parameters = config.costs.parameters()
    if parameters.get("weighting") == "auto":
        parameters["weighting"] = auto_weighting(two_d_supervoxels(config, tuple(resolution)))
    return parameters


def _edge_costs(stage: GlobalContext) -> dict:
    section = stage.config.costs
    features = stage.read_table("graph/edge_features")
    function = resolve_function(section.function, "costs.function")
    parameters = cost_parameters(stage.config, stage.geometry.resolution)
    edge_costs = np.asarray(function(features, beta=stage.config.multicut.beta, **parameters), dtype=np.float64)
    if edge_costs.shape != (features.shape[0],) or not np.isfinite(edge_costs).all():
        raise ValueError(f"{section.function} must return {features.shape[0]} finite costs, got shape {edge_costs.shape}")
    stage.write_table("graph/edge_costs", edge_costs)
    return {"number_of_edges": int(edge_costs.size), "attractive_edges": int((edge_costs > 0).sum())}


EDGE_COSTS = StageSpec(
    name="edge_costs",
    blockwise=False,
    reads=(Read.table("graph/edge_features"),),
    writes=(Write.table("graph/edge_costs"),),
    config=("costs", "multicut.beta", "supervoxels.dimensionality", "supervoxels.anisotropy_threshold"),
    run=_edge_costs,
)
