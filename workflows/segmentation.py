"""The segmentation workflow: (raw → CNN prediction →) boundary map (or affinities) → supervoxels →
segments by one of four methods → segmentation.

- multicut: region adjacency graph → edge costs → (lifted, hierarchical) multicut;
- agglomeration: affinity statistics of the region graph → mean or quantile agglomeration;
- mutex watershed: blockwise mutex watershed fragments (the supervoxels) → affinity statistics →
  mutex watershed of the fragment graph;
- stitching: each block segmented on its own with an overlap (its objects the supervoxels) →
  matches across the overlaps → union-find.

`segmentation_stages` is the only place that knows which stages a config runs (prediction, given
affinities or supervoxels, the method, lifted edges, scales); everything else follows from the
stage specs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path

from emflow.affinity_statistics import long_range_channels
from emflow.config import AUTO, RunConfig, check_halo, load_config, replace
from emflow.edge_classifier import channel_names
from emflow.errors import ConfigError
from emflow.storage.edge_classifiers import load_edge_classifier
from emflow.storage.geometry import Geometry, resolve_geometry
from emflow.storage.inputs import (
    check_writable,
    describe_inputs,
    input_affinity_offsets,
    reference_role,
    refuse_unwritten_input,
    validate_inputs,
)
from emflow.storage.layout import Layout
from emflow.storage.models import describe_model
from emflow.storage.store import Store, Volume, level_name
from emflow.tasks.adapter import Workflow
from emflow.tasks.affinities import DERIVE_BOUNDARIES, affinity_array, affinity_offsets
from emflow.tasks.agglomeration import AGGLOMERATION, segmentation_volumes
from emflow.tasks.block_graph import BLOCK_GRAPH
from emflow.tasks.context import Run
from emflow.tasks.edge_classifier import channel_feature_stages
from emflow.tasks.edge_costs import classifier_reads_affinities, edge_classifier_path, edge_costs_stage
from emflow.tasks.hierarchical_multicut import hierarchical_stages
from emflow.tasks.lifted_edges import LABEL_OVERLAPS, LIFTED_EDGES, LIFTED_EDGES_FROM_AFFINITIES
from emflow.tasks.merge_graph import MERGE_GRAPH
from emflow.tasks.meshes import mesh_stages
from emflow.tasks.multicut import multicut_stage
from emflow.tasks.mutex_watershed import MUTEX_WATERSHED, fragment_stage
from emflow.tasks.pair_statistics import statistics_stage
from emflow.tasks.predict import BLEND_PREDICTIONS, PREDICT, model_path
from emflow.tasks.prepare import PREPARE_OUTPUT
from emflow.tasks.pyramid import pyramid_stage
from emflow.tasks.spec import StageSpec
from emflow.tasks.stitching import SEGMENT_BLOCKS, STITCH, STITCH_FACES
from emflow.tasks.supervoxels import GIVEN, GIVEN_STAGES, SUPERVOXEL_OFFSETS, WATERSHED_STAGES, two_d_supervoxels
from emflow.tasks.write import write_stage


def has_boundaries_volume(config: RunConfig) -> bool:
    """Whether the output holds a boundary map: predicted, or derived from given affinities for the
    supervoxels of every method but the mutex watershed, which makes its fragments from the affinities."""
    return config.predicting or bool(config.input.affinities_key) and config.method != "mutex-watershed"


def downsampled_images(config: RunConfig) -> tuple[tuple[str, bool], ...]:
    """The output images whose pyramid levels are downsampled: (volume name, whether it holds labels)."""
    boundaries = (("boundaries", False),) if has_boundaries_volume(config) else ()
    return boundaries + (("supervoxels", True),)


def pyramid_images(config: RunConfig) -> tuple[tuple[str, bool], ...]:
    """The output images that get pyramids: (volume name, whether it holds labels). The
    segmentations' levels are written from the supervoxels' levels (`write_stage`)."""
    return downsampled_images(config) + tuple((name, True) for name in segmentation_volumes(config))


def segmentation_stages(config: RunConfig, geometry: Geometry) -> tuple[StageSpec, ...]:
    """The stages a config runs, in run order."""
    given_supervoxels = bool(config.input.supervoxels_key)
    lifted = config.lifted_multicut
    n_scales = config.multicut.n_scales
    method = config.method
    # The array holding the run's affinities; None when it has only a boundary map.
    affinities = affinity_array(config) if affinity_offsets(config) else None
    stages: list[StageSpec] = [PREPARE_OUTPUT]
    if config.predicting:
        stages += [PREDICT, BLEND_PREDICTIONS]
    elif has_boundaries_volume(config):
        stages += [DERIVE_BOUNDARIES]
    if method == "mutex-watershed":
        assert affinities is not None
        stages += [fragment_stage(affinities), SUPERVOXEL_OFFSETS]
    elif method == "stitching":
        stages += [SEGMENT_BLOCKS, SUPERVOXEL_OFFSETS]
    else:
        stages += GIVEN_STAGES if given_supervoxels else WATERSHED_STAGES
    if method == "multicut":
        stages += [BLOCK_GRAPH, MERGE_GRAPH]
        learned = edge_classifier_path(config) is not None
        if learned:
            # Only the channels the classifier was trained on: the shipped one uses the boundary
            # map's alone, and computing the 9 predicted affinity channels' besides made the stage
            # 2.0 task s instead of 0.54 on the dev cube's held-out half (docs/cnn_benchmarks.md).
            stages += channel_feature_stages(affinities if classifier_reads_affinities(config) else None)
        stages += [edge_costs_stage(learned)]
        if lifted and config.lifted.source == "affinities":
            stages += [statistics_stage(("long_range",), affinities), LIFTED_EDGES_FROM_AFFINITIES]
        elif lifted:
            stages += [LABEL_OVERLAPS, LIFTED_EDGES]
        if n_scales:
            stages += hierarchical_stages(n_scales, lifted=lifted, given_supervoxels=given_supervoxels)
        stages += [multicut_stage(n_scales, lifted=lifted)]
    elif method == "agglomeration":
        stages += [statistics_stage(("nearest",), affinities), AGGLOMERATION]
    elif method == "mutex-watershed":
        stages += [statistics_stage(("nearest", "long_range"), affinities), MUTEX_WATERSHED]
    else:
        stages += [STITCH_FACES, STITCH]
    node_label_stage = stages[-1].name
    stages += [write_stage(node_label_stage, segmentation_volumes(config))]
    for level in range(1, len(geometry.level_factors) + 1):
        stages += [pyramid_stage(level, downsampled_images(config)), write_stage(node_label_stage, segmentation_volumes(config), level)]
    if config.meshes.enabled:
        # A volume that fits one block has no pyramid: its meshes come from the full resolution.
        stages += mesh_stages(min(config.meshes.level, len(geometry.level_factors)))
    return tuple(stages)


def output_volumes(config: RunConfig, geometry: Geometry) -> dict[str, Volume]:
    """The output group's block-wise arrays, by name: level 0 of each OME-Zarr image, and the
    levels of the pyramid images."""
    volumes = {"supervoxels": Volume("supervoxels", "uint64", label=True)}
    volumes |= {name: Volume(name, "uint64", label=True) for name in segmentation_volumes(config)}
    if config.predicting:
        description = describe_model(model_path(config))
        dtype = config.predict.output_dtype
        # Affinity predictions say which offset each channel holds, so that they can be given back
        # as `[input] affinities_key` without `affinity_offsets`.
        attributes = (("offsets", description.offsets),) if description.target == "affinities" else ()
        # Stored raw: zstd shrank float32 probabilities by a few percent but made writing them a
        # third of the prediction stages' overhead, and uint8 ones to 0.59 of their bytes at 50 ms
        # per 64x128x128 block (8 % of its forward pass) (benchmarks/inference.py).
        volumes["predictions"] = Volume(
            "predictions",
            dtype,
            channels=description.network_config.out_channels,
            quantized=dtype == "uint8",
            compressed=False,
            attributes=attributes,
        )
    if has_boundaries_volume(config):
        # The map the supervoxels and edge features come from is float32 whatever the predictions'
        # dtype: quantising it would tie the watershed's heights.
        volumes["boundaries"] = Volume("boundaries", "float32", compressed=False)
    for name, _ in pyramid_images(config):
        for level in range(1, len(geometry.level_factors) + 1):
            volumes[level_name(name, level)] = dataclasses.replace(volumes[name], level=level)
    return volumes


def check_method(config: RunConfig, geometry: Geometry) -> None:
    """Raise ConfigError for settings of the segmentation method that the run's data or geometry rule out."""
    if config.needs_affinities:
        offsets = affinity_offsets(config)
        if not offsets or not long_range_channels(offsets):
            what = f"the model {model_path(config)} predicts a boundary map" if not offsets else "the affinities have no long-range channel"
            raise ConfigError(
                f"config key {config.needs_affinities} needs affinities with long-range channels, and {what}: give them as input.affinities_key "
                "(with input.affinity_offsets), or predict them with a model trained on affinities ([predict] model)"
            )
    classifier = edge_classifier_path(config) if config.method == "multicut" else None
    if classifier is not None:
        available = channel_names(affinity_offsets(config))
        trained = load_edge_classifier(classifier).channels
        if not set(trained) <= set(available):
            raise ConfigError(
                f"config key costs.classifier: {classifier} was trained on the channels {', '.join(trained)}, and this run has "
                f'{", ".join(available)}: train one for its channels (emflow train-edges) or set costs.classifier = ""'
            )
    if config.method == "mutex-watershed" and config.mutex_watershed.halo != AUTO:
        check_halo(geometry.block_shape, config.mutex_watershed.halo, name="mutex_watershed.halo")
    if config.method == "stitching":
        check_halo(geometry.block_shape, config.stitching.overlap, name="stitching.overlap")


def load_run(config_path: str, stages: Callable[[RunConfig, Geometry], tuple[StageSpec, ...]] = segmentation_stages) -> Run:
    """The run of a config file with the stages `stages(config, geometry)` (default: the segmentation's),
    cached per process while the file stays the same.

    Raises ConfigError for a bad config or an output location that cannot be written, and
    InputError for unusable inputs, each naming the problem.
    """
    try:
        status = os.stat(config_path)
    except (FileNotFoundError, NotADirectoryError):
        status = None
    if status is None or not stat.S_ISREG(status.st_mode):
        raise ConfigError(f"config file not found: {config_path}")
    # Every block task asks for its run several times; a stat is much cheaper than a read.
    return _run_for_file(stages, str(config_path), status.st_ino, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _run_for_file(stages: Callable, config_path: str, inode: int, size: int, modified_ns: int) -> Run:
    return _run_for_text(stages, config_path, Path(config_path).read_text())


@functools.lru_cache(maxsize=8)
def _run_for_text(stages: Callable, config_path: str, config_text: str) -> Run:
    config = load_config(config_path)
    inputs = describe_inputs(config.input.path, config.input.keys())
    validate_inputs(inputs)
    refuse_unwritten_input(inputs)
    if "affinities" in inputs:
        config = replace(config, input={"affinity_offsets": input_affinity_offsets(inputs["affinities"], config.input.affinity_offsets)})
    reference = inputs[reference_role(inputs)]
    geometry = resolve_geometry(
        reference.volume_shape,
        config.input.resolution,
        config.blocking.block_shape,
        config.blocking.halo,
        reference.volume_chunks,
        pyramid=config.output.pyramid,
        per_section_supervoxels=two_d_supervoxels(config, config.input.resolution),
    )
    check_method(config, geometry)
    output_path = Path(config.output.path)
    work_dir = Path(config.output.work_dir or f"{output_path}.work")
    check_writable(output_path, "output.path")
    check_writable(work_dir, "output.work_dir" if config.output.work_dir else "output.work_dir (default: output.path + '.work')")
    layout = Layout(output_path, work_dir)
    # The input role "supervoxels" is stored under another name: `supervoxels` is an output volume.
    arrays = {GIVEN if role == "supervoxels" else role: dataset for role, dataset in inputs.items()}
    store = Store(layout, arrays, output_volumes(config, geometry))
    return Run(config_path, config, arrays, geometry, layout, store, stages(config, geometry))


SEGMENTATION = Workflow("segmentation", load_run)
