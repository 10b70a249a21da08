"""The segmentation workflow: (raw → CNN prediction →) boundary map → supervoxels → region adjacency
graph → edge costs → (lifted) multicut → segmentation.

`segmentation_stages` is the only place that knows which stages a config runs (prediction, given
supervoxels, lifted edges, scales); everything else follows from the stage specs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path

from emflow.config import RunConfig, load_config
from emflow.errors import ConfigError
from emflow.storage.geometry import Geometry, resolve_geometry
from emflow.storage.inputs import check_writable, describe_inputs, reference_role, refuse_unwritten_input, validate_inputs
from emflow.storage.layout import Layout
from emflow.storage.models import describe_model
from emflow.storage.store import Store, Volume, level_name
from emflow.tasks.adapter import Workflow
from emflow.tasks.block_graph import BLOCK_GRAPH
from emflow.tasks.context import Run
from emflow.tasks.edge_costs import EDGE_COSTS
from emflow.tasks.hierarchical_multicut import hierarchical_stages
from emflow.tasks.lifted_edges import LABEL_OVERLAPS, LIFTED_EDGES
from emflow.tasks.merge_graph import MERGE_GRAPH
from emflow.tasks.meshes import mesh_stages
from emflow.tasks.multicut import multicut_stage
from emflow.tasks.predict import BLEND_PREDICTIONS, PREDICT, model_path
from emflow.tasks.prepare import PREPARE_OUTPUT
from emflow.tasks.pyramid import pyramid_stage
from emflow.tasks.spec import StageSpec
from emflow.tasks.supervoxels import GIVEN, GIVEN_STAGES, WATERSHED_STAGES
from emflow.tasks.write import WRITE_SEGMENTATION


def pyramid_images(config: RunConfig) -> tuple[tuple[str, bool], ...]:
    """The output images that get pyramids: (volume name, whether it holds labels)."""
    return ((("boundaries", False),) if config.predicting else ()) + (("supervoxels", True), ("segmentation", True))


def segmentation_stages(config: RunConfig, geometry: Geometry) -> tuple[StageSpec, ...]:
    """The stages a config runs, in run order."""
    given_supervoxels = bool(config.input.supervoxels_key)
    lifted = config.lifted_multicut
    n_scales = config.multicut.n_scales
    stages: list[StageSpec] = [PREPARE_OUTPUT]
    if config.predicting:
        stages += [PREDICT, BLEND_PREDICTIONS]
    stages += GIVEN_STAGES if given_supervoxels else WATERSHED_STAGES
    stages += [BLOCK_GRAPH, MERGE_GRAPH, EDGE_COSTS]
    if lifted:
        stages += [LABEL_OVERLAPS, LIFTED_EDGES]
    if n_scales:
        stages += hierarchical_stages(n_scales, lifted=lifted, given_supervoxels=given_supervoxels)
    stages += [multicut_stage(n_scales, lifted=lifted), WRITE_SEGMENTATION]
    stages += [pyramid_stage(level, pyramid_images(config)) for level in range(1, len(geometry.level_factors) + 1)]
    if config.meshes.enabled:
        # A volume that fits one block has no pyramid: its meshes come from the full resolution.
        stages += mesh_stages(min(config.meshes.level, len(geometry.level_factors)))
    return tuple(stages)


def output_volumes(config: RunConfig, geometry: Geometry) -> dict[str, Volume]:
    """The output group's block-wise arrays, by name: level 0 of each OME-Zarr image, and the
    levels of the pyramid images."""
    volumes = {
        "supervoxels": Volume("supervoxels", "uint64", label=True),
        "segmentation": Volume("segmentation", "uint64", label=True),
    }
    if not config.input.supervoxels_key:
        volumes["supervoxels_block_local"] = Volume("supervoxels_block_local", "uint64", label=True)
    if config.predicting:
        channels = describe_model(model_path(config)).network_config.out_channels
        dtype = config.predict.output_dtype
        # zstd shrinks float32 probabilities by only a few percent but made writing them a third of
        # the prediction stages' overhead (measured, benchmarks/inference.py).
        volumes["predictions"] = Volume("predictions", dtype, channels=channels, quantized=dtype == "uint8", compressed=dtype != "float32")
        volumes["boundaries"] = Volume("boundaries", dtype, quantized=dtype == "uint8", compressed=dtype != "float32")
    for name, _ in pyramid_images(config):
        for level in range(1, len(geometry.level_factors) + 1):
            volumes[level_name(name, level)] = dataclasses.replace(volumes[name], level=level)
    return volumes


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
    reference = inputs[reference_role(inputs)]
    geometry = resolve_geometry(
        reference.shape, config.input.resolution, config.blocking.block_shape, config.blocking.halo, reference.chunks, pyramid=config.output.pyramid
    )
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
