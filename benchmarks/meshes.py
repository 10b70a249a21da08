"""Cost of segment meshes: seconds and bytes per MVox of the segmentation, meshed at pyramid levels s0..s2.

The volume is the ground truth of the FlyEM medulla dev cube (../shared/data/flyem_medulla_dev/volume.h5,
125x250x250 at 10 nm, 7.8 MVox, 301 bodies; see its SOURCE.md): dense neurons, so about the most
surface per voxel a segmentation has. Level k is level 0 mode-downsampled by 2^k (emflow.pyramid),
meshed at its own voxel size. Per level, on one core: the per-block meshes (blocks of 64x128x128 of
that level, each read with its one-voxel upper halo), their merge per segment, and the writing of
the legacy precomputed files; bytes are those of the mesh files. Figures are per MVox of level 0.

    python -m benchmarks.meshes [--out results/meshes.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py

from benchmarks.end_to_end import SOURCE_PATH, machine_description, write_results
from emflow.blocking import Blocking
from emflow.meshes import block_meshes, merge_meshes, mesh_read_box
from emflow.pyramid import downsample_labels
from emflow.storage.precomputed import write_legacy_meshes

BLOCK_SHAPE = (64, 128, 128)


def measure_level(labels, resolution) -> dict:
    blocking = Blocking(labels.shape, tuple(min(size, block) for size, block in zip(labels.shape, BLOCK_SHAPE)))
    started = time.perf_counter()
    parts = []
    for block_id in range(blocking.number_of_blocks):
        block = blocking.block(block_id)
        parts.append(block_meshes(labels[mesh_read_box(block, labels.shape).slicing], block, labels.shape, resolution))
    blocks_seconds = time.perf_counter() - started
    started = time.perf_counter()
    meshes = merge_meshes(parts)
    merge_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        written = write_legacy_meshes(folder, meshes)
        write_seconds = time.perf_counter() - started
    return {
        "blocks_s": blocks_seconds,
        "merge_s": merge_seconds,
        "write_s": write_seconds,
        "bytes": written,
        "faces": int(len(meshes.faces)),
        "segments": int(len(meshes.ids)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/meshes.json"))
    arguments = parser.parse_args(argv)
    with h5py.File(SOURCE_PATH, "r") as file:
        labels = file["labels/neuron_ids"][...]
    megavoxels = labels.size / 1e6
    results = {"machine": machine_description(), "megavoxels": megavoxels, "levels": {}}
    print(f"{'level':<6} {'nm':>4} {'blocks s':>9} {'merge s':>8} {'write s':>8} {'s/MVox':>7} {'MB/MVox':>8} {'faces':>9} {'segments':>8}")
    level = labels
    for k in range(3):
        resolution = (10.0 * 2**k,) * 3
        measured = measure_level(level, resolution)
        results["levels"][f"s{k}"] = measured
        seconds = measured["blocks_s"] + measured["merge_s"] + measured["write_s"]
        print(
            f"s{k:<5} {resolution[0]:>4.0f} {measured['blocks_s']:>9.2f} {measured['merge_s']:>8.2f} {measured['write_s']:>8.2f} "
            f"{seconds / megavoxels:>7.3f} {measured['bytes'] / megavoxels / 1e6:>8.2f} {measured['faces']:>9} {measured['segments']:>8}"
        )
        level = downsample_labels(level, (2, 2, 2))
    write_results(arguments.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
