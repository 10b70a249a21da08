"""Multicut edge costs from the edge features: the smallest stage, a spec and a core function."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emflow.config import AUTO, resolve_function
from emflow.costs import auto_weighting, probabilities_to_costs
from emflow.edge_classifier import is_affinity_channel
from emflow.graph import FEATURE_NAMES
from emflow.storage.edge_classifiers import classifier_beside, load_edge_classifier
from emflow.storage.models import file_digest

from .context import GlobalContext
from .predict import model_path
from .spec import Read, StageSpec, Write
from .supervoxels import two_d_supervoxels


def cost_parameters(config, resolution: tuple[float, ...]) -> dict:
    """The keywords `[costs]` passes its function for data of voxel size `resolution` (z, y, x):
    weighting "auto" resolved by the supervoxels' dimensionality (`emflow.costs.auto_weighting`)."""
    parameters = config.costs.parameters()
    if parameters.get("weighting") == "auto":
        parameters["weighting"] = auto_weighting(two_d_supervoxels(config, tuple(resolution)))
    return parameters


def edge_classifier_path(config) -> Path | None:
    """The edge classifier file a run uses ([costs] classifier), or None for boundary-map costs.
    "auto" is the classifier beside the model the run predicts with (`classifier_beside`), if any."""
    classifier = config.costs.classifier
    if classifier == AUTO:
        if not config.predicting or config.costs.uses_plugin:
            return None
        beside = classifier_beside(model_path(config))
        return beside if beside.is_file() else None
    return Path(classifier) if classifier else None


def classifier_reads_affinities(config) -> bool:
    """Whether the run's edge classifier uses features of affinity channels (not only the boundary
    map's and the sizes)."""
    path = edge_classifier_path(config)
    return path is not None and any(is_affinity_channel(channel) for channel in load_edge_classifier(path).channels)


def _edge_costs(stage: GlobalContext) -> dict:
    section = stage.config.costs
    features = stage.read_table("graph/edge_features")
    parameters = cost_parameters(stage.config, stage.geometry.resolution)
    beta = stage.config.multicut.beta
    classifier_path = edge_classifier_path(stage.config)
    if classifier_path is not None:
        classifier = load_edge_classifier(classifier_path)
        names = tuple(stage.table_attributes("graph/classifier_features")["feature_names"])
        cut_probabilities = classifier.cut_probabilities(stage.read_table("graph/classifier_features"), names)
        # The classifier's P(cut) takes the mean boundary value's place; sizes and weighting stay.
        edge_costs = probabilities_to_costs(
            cut_probabilities,
            beta=beta,
            edge_sizes=features[:, FEATURE_NAMES.index("size")],
            z_sizes=features[:, FEATURE_NAMES.index("z_size")],
            **parameters,
        )
    else:
        function = resolve_function(section.function, "costs.function")
        edge_costs = np.asarray(function(features, beta=beta, **parameters), dtype=np.float64)
    if edge_costs.shape != (features.shape[0],) or not np.isfinite(edge_costs).all():
        raise ValueError(f"{section.function} must return {features.shape[0]} finite costs, got shape {edge_costs.shape}")
    stage.write_table("graph/edge_costs", edge_costs)
    return {
        "number_of_edges": int(edge_costs.size),
        "attractive_edges": int((edge_costs > 0).sum()),
        "learned": classifier_path is not None,
    }


def _classifier_digest(run) -> dict:
    path = edge_classifier_path(run.config)
    return {"classifier_sha256": file_digest(path) if path is not None else ""}


def edge_costs_stage(learned: bool) -> StageSpec:
    """The edge-cost stage: from the boundary features, or (`learned`) from the edge classifier's
    features and the classifier file, whose digest is part of the result's identity."""
    tables = ("graph/edge_features", "graph/classifier_features") if learned else ("graph/edge_features",)
    return StageSpec(
        name="edge_costs",
        blockwise=False,
        reads=tuple(Read.table(table) for table in tables),
        writes=(Write.table("graph/edge_costs"),),
        config=("costs", "multicut.beta", "supervoxels.dimensionality", "supervoxels.anisotropy_threshold"),
        parameters=_classifier_digest,
        run=_edge_costs,
    )
