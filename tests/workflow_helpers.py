"""Helpers for the workflow tests: write real-data inputs and configs, run the CLI in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tomli_w
import zarr

from emflow.affinities import affinities_from_labels, boundary_target
from emflow.boundaries import boundaries_from_labels
from emflow.cli.main import main
from emflow.labels import relabel_consecutive, smallest_member_labels
from emflow.storage.volumes import open_volume, write_volume
from emflow.targets import JournalReader

RESOLUTION = [10.0, 10.0, 10.0]


def write_inputs(folder: Path, crop: dict[str, np.ndarray], chunks=(32, 64, 64)) -> Path:
    """An input zarr group with raw, ground truth, oversegmentation and a GT-derived boundary map."""
    path = folder / "input.zarr"
    write_volume(path, "raw", crop["raw"], resolution=RESOLUTION, chunks=chunks)
    write_volume(path, "neuron_ids", crop["neuron_ids"], resolution=RESOLUTION, chunks=chunks)
    write_volume(path, "oversegmentation", crop["oversegmentation"], resolution=RESOLUTION, chunks=chunks)
    boundaries = boundaries_from_labels(crop["neuron_ids"], sigma=1.0, noise=0.1, seed=0)
    write_volume(path, "boundaries", boundaries, resolution=RESOLUTION, chunks=chunks)
    return path


def write_affinities(path: Path, affinities: np.ndarray, offsets, block_shape) -> None:
    """`affinities` (C, z, y, x) as the input group's `affinities` array, chunked by channels and
    blocks, with its `offsets` attribute."""
    array = zarr.open_group(str(path), mode="a").create_array("affinities", data=affinities, chunks=(len(offsets), *block_shape))
    array.attrs["offsets"] = [list(offset) for offset in offsets]


def noisy_groundtruth_affinities(neuron_ids: np.ndarray, offsets, noise: float, seed: int) -> np.ndarray:
    """Affinities of the ground truth with its membranes as background, plus Gaussian noise of
    standard deviation `noise`, clipped to [0, 1]: imperfect but realistic affinities for tests."""
    membranes = np.where(boundary_target(neuron_ids) > 0, 0, neuron_ids)
    affinities, _ = affinities_from_labels(membranes, offsets)
    normal = np.random.default_rng(seed).standard_normal(affinities.shape, dtype=np.float32)
    return np.clip(affinities + noise * normal, 0, 1)


def write_config(path: Path, input_path: Path, output_path: Path, *, block_shape=(32, 64, 64), halo=(4, 8, 8), **sections) -> Path:
    """A config for the tests; `sections` update the defaults below, and a value of None removes a key."""
    config = {
        "input": {"path": str(input_path), "boundaries_key": "boundaries", "raw_key": "raw", "resolution": RESOLUTION},
        # Pyramids and run reports have tests of their own; the others look at level 0 and the data.
        "output": {"path": str(output_path), "pyramid": False, "report": False},
        "blocking": {"block_shape": list(block_shape), "halo": halo if isinstance(halo, str) else list(halo)},
        "multicut": {"beta": 0.5, "solver": "kernighan-lin"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
        config[section] = {key: value for key, value in config[section].items() if value is not None}
    path.write_text(tomli_w.dumps(config))
    return path


def _block_records_since(work_dir: Path, since: float):
    """(stage, block id, record) of every current block record written after `since`."""
    for path in (work_dir / "status").iterdir():
        if path.is_dir():
            for block_id, record in JournalReader(path).refresh().items():
                if record.finished > since and record.fingerprint:
                    yield path.name, block_id, record


def records_since(work_dir: Path, since: float) -> set[tuple[str, int | None]]:
    """(stage, block id) of every block record, and (stage, None) of every stage record, written after `since`."""
    written: set[tuple[str, int | None]] = {(stage, block_id) for stage, block_id, _ in _block_records_since(work_dir, since)}
    for path in (work_dir / "status").iterdir():
        if path.is_file() and json.loads(path.read_text())["finished"] > since:
            written.add((path.stem, None))
    return written


def kept_since(work_dir: Path, since: float) -> set[tuple[str, int]]:
    """(stage, block id) of every block kept by early cutoff (its record written anew, its output
    not) after `since`."""
    return {(stage, block_id) for stage, block_id, record in _block_records_since(work_dir, since) if record.result.get("kept")}


def run_cli(*arguments: str) -> int:
    return main([str(argument) for argument in arguments])


def read(path: Path, key: str) -> np.ndarray:
    return np.asarray(open_volume(path, key)[...])


def read_node_ids(path: Path) -> np.ndarray:
    """A run's supervoxels as the graph's node ids. Block b's supervoxel l is stored as
    b * stride + l and is node offsets[b] + l: a strictly increasing map onto 1..n (every node has
    voxels), so the node ids are the stored ids relabelled consecutively."""
    return relabel_consecutive(read(path, "supervoxels"))[0]


def as_segment_ids(path: Path, node_labels: np.ndarray) -> np.ndarray:
    """In-memory node labels of a run's graph as the run stores them: each segment numbered by its
    smallest supervoxel id (`emflow.tasks.supervoxels.segment_labels`)."""
    ids = np.unique(read(path, "supervoxels"))
    return smallest_member_labels(node_labels, np.concatenate([[0], ids[ids != 0]]).astype(np.uint64))


def as_segment_volume(path: Path, segmentation: np.ndarray) -> np.ndarray:
    """An in-memory segmentation whose segments are unions of a run's supervoxels, numbered as the
    run numbers its segments: each by its smallest supervoxel id (0 stays 0)."""
    supervoxels, segments = read(path, "supervoxels").ravel(), np.asarray(segmentation).ravel()
    order = np.lexsort((supervoxels, segments))
    ids, first, inverse = np.unique(segments[order], return_index=True, return_inverse=True)
    smallest = np.where(ids == 0, 0, supervoxels[order][first]).astype(np.uint64)
    renumbered = np.empty(segments.shape, dtype=np.uint64)
    renumbered[order] = smallest[inverse.ravel()]
    return renumbered.reshape(np.shape(segmentation))
