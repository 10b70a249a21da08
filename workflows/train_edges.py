"""`emflow train-edges`: an edge classifier from the region graphs of runs and their ground truth.

Each run of the config runs (or resumes) up to the classifier's features (`edge_feature_stages`:
the segmentation's stages to the merged graph, then the channel features); its supervoxels are
compared with the ground truth block by block for the edges' labels (`emflow.edge_classifier.edge_labels`);
the trees are fitted on all runs' labelled edges and written atomically. Everything is seeded and
the runs resume bitwise, so an interrupted command, run again, writes the same file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emflow.cluster.backends import LocalScheduler
from emflow.config import RunConfig, load_edge_training_config, replace
from emflow.edge_classifier import edge_labels, feature_channel, feature_channels, is_affinity_channel, train_edge_classifier
from emflow.errors import ConfigError, InputError, OutputError
from emflow.labels import label_overlaps, majority_labels
from emflow.storage.edge_classifiers import save_edge_classifier
from emflow.storage.geometry import Geometry
from emflow.storage.models import file_digest
from emflow.storage.volumes import opened_volume, parse_location, read_region
from emflow.tasks.adapter import Workflow, stage_results
from emflow.tasks.affinities import affinity_array, affinity_offsets
from emflow.tasks.context import Run
from emflow.tasks.edge_classifier import channel_feature_stages
from emflow.tasks.predict import model_path
from emflow.tasks.spec import StageSpec
from emflow.tasks.supervoxels import node_id_map_from

from .run import run_workflow
from .segmentation import load_run, segmentation_stages


def edge_feature_stages(config: RunConfig, geometry: Geometry) -> tuple[StageSpec, ...]:
    """The segmentation's stages up to the merged graph, then the edge classifier's features, of
    every channel the run has (training chooses among them)."""
    if config.method != "multicut":
        raise ConfigError(f"emflow train-edges learns the multicut's edge costs; this run has segmentation.method = {config.method!r}")
    stages = segmentation_stages(replace(config, costs={"classifier": ""}), geometry)
    names = [spec.name for spec in stages]
    affinities = affinity_array(config) if affinity_offsets(config) else None
    return (*stages[: names.index("merge_graph") + 1], *channel_feature_stages(affinities))


def selected_features(names: tuple[str, ...], channels: tuple[str, ...]) -> list[int]:
    """The columns of the features named `names` that belong to `channels` ("boundaries",
    "affinities"), and the size features."""
    kinds = {"boundaries": lambda channel: channel == "boundaries", "affinities": is_affinity_channel}
    return [
        index
        for index, name in enumerate(names)
        if not feature_channel(name) or any(kinds[kind](feature_channel(name)) for kind in channels)
    ]


EDGE_FEATURES = Workflow("edge_features", lambda config_path: load_run(config_path, edge_feature_stages))


@dataclass(frozen=True)
class EdgeTrainingReport:
    output: Path
    edges: int
    cut_fraction: float


def _groundtruth_overlaps(run: Run, location: str) -> tuple[np.ndarray, np.ndarray]:
    """(node, body) voxel counts of the run's supervoxels against the ground truth, block by block."""
    path, key = parse_location(location)
    pairs, counts = [], []
    to_nodes = node_id_map_from(stage_results(run, "supervoxel_ids"), lambda: run.store.load_global("supervoxel_ids", "offsets", mmap=True))
    with opened_volume(path, key) as groundtruth:
        if tuple(groundtruth.shape) != tuple(run.geometry.shape):
            raise InputError(f"ground truth {location} has shape {tuple(groundtruth.shape)}, the run's volume {tuple(run.geometry.shape)}")
        blocking = run.geometry.blocking
        for block_id in range(blocking.number_of_blocks):
            box = blocking.block(block_id)
            block_pairs, block_counts = label_overlaps(run.store.read("supervoxels", box), read_region(groundtruth, box.slicing, location))
            pairs.append(np.column_stack([to_nodes(block_pairs[:, 0]), block_pairs[:, 1]]))
            counts.append(block_counts)
    if not sum(len(block_counts) for block_counts in counts):
        raise InputError(f"ground truth {location} labels no voxel of the run's supervoxels")
    return np.concatenate(pairs), np.concatenate(counts)


def train_edges(config_path: str | Path, *, backend=None, log: Callable[[str], None] = print) -> EdgeTrainingReport:
    """Train and write the classifier of an `emflow train-edges` config (see the module docstring)."""
    config = load_edge_training_config(config_path).edge_training
    base = Path(config_path).expanduser().resolve().parent
    features, cuts, sources = [], [], []
    names: tuple[str, ...] | None = None
    for run_config, location in zip(config.runs, config.groundtruth):
        run_path = str((base / run_config).resolve())
        log(f"features of {run_config} ...")
        report = run_workflow(run_path, backend or LocalScheduler(), workflow=EDGE_FEATURES, say=log)
        if not report.succeeded:
            raise OutputError(f"the run {run_config} did not finish (see {report.scheduler_log}); run emflow train-edges again to resume")
        run = EDGE_FEATURES.load_run(run_path)
        run_names = tuple(run.store.table_attributes("graph/classifier_features")["feature_names"])
        columns = selected_features(run_names, config.channels)
        if "affinities" in config.channels and not any(map(is_affinity_channel, feature_channels(run_names))):
            raise ConfigError(f'edge_training.channels includes "affinities", and the run {run_config} has none')
        if names is not None and tuple(run_names[column] for column in columns) != names:
            raise ConfigError(f"run {run_config} has other affinity channels than the runs before it; train on runs of one model")
        names = tuple(run_names[column] for column in columns)
        ground_path, key = parse_location(location)
        pairs, counts = _groundtruth_overlaps(run, f"{(base / ground_path).resolve()}:{key}")
        edges = run.store.read_table("graph/edges")
        number_of_nodes = int(run.store.table_attributes("graph/edges")["number_of_nodes"])
        cut, valid = edge_labels(edges, majority_labels(number_of_nodes, pairs, counts))
        features.append(run.store.read_table("graph/classifier_features")[valid][:, columns])
        cuts.append(cut[valid])
        model = {"model": model_path(run.config).name, "model_sha256": file_digest(model_path(run.config))} if run.config.predicting else {}
        sources.append({"run": run_config, "groundtruth": location, "edges": int(valid.sum()), **model})
        log(f"{run_config}: {int(valid.sum())} labelled edges, {cut[valid].mean():.1%} cut")
    assert names is not None
    all_cuts = np.concatenate(cuts)
    log(f"training on {len(all_cuts)} edges ({len(names)} features) ...")
    classifier = train_edge_classifier(
        np.concatenate(features),
        all_cuts,
        names,
        iterations=config.iterations,
        learning_rate=config.learning_rate,
        min_samples_leaf=config.min_samples_leaf,
        seed=config.seed,
        metadata={"sources": sources, "channels": list(config.channels)},
    )
    save_edge_classifier(config.output, classifier)
    return EdgeTrainingReport(Path(config.output), int(len(all_cuts)), float(all_cuts.mean()))
