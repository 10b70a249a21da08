"""Build emflow/data/demo_crop.h5, the small real-data volume shipped for the demo.

Source: ../shared/data/flyem_medulla_dev/volume.h5 (FlyEM medulla FIB-SEM, 10 nm isotropic,
CC BY; see emflow/data/DEMO_DATA.md). The crop is 64x128x128 voxels (z, y, x). Its offset is picked
by one rule that looks at the groundtruth only, never at any segmentation result: among offsets on
a 16-voxel grid, the crop containing the most distinct neuron ids (ties: smallest offset in z, y, x
order), so that the demo has many neurons to separate.

Usage: python benchmarks/make_demo_crop.py [--source PATH] [--output PATH]
"""

import argparse
import itertools
from pathlib import Path

import h5py
import numpy as np

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPOSITORY_ROOT.parent / "shared" / "data" / "flyem_medulla_dev" / "volume.h5"
DEFAULT_OUTPUT = REPOSITORY_ROOT / "emflow" / "data" / "demo_crop.h5"

CROP_SHAPE = (64, 128, 128)
OFFSET_GRID_STEP = 16
RESOLUTION_NM_ZYX = [10, 10, 10]
MAXIMUM_FILE_BYTES = 2 * 2**20


def most_populated_crop_offset(neuron_ids: np.ndarray, crop_shape, step: int) -> tuple[int, ...]:
    """Offset (z, y, x) on a ``step`` grid of the ``crop_shape`` crop with the most distinct ids.

    Ties go to the smallest offset in z, y, x order.
    """
    candidate_starts = [range(0, extent - size + 1, step) for extent, size in zip(neuron_ids.shape, crop_shape)]
    best_offset, best_count = None, -1
    for offset in itertools.product(*candidate_starts):
        crop = neuron_ids[tuple(slice(o, o + s) for o, s in zip(offset, crop_shape))]
        count = np.unique(crop).size
        if count > best_count:
            best_offset, best_count = offset, count
    return best_offset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args()

    with h5py.File(arguments.source, "r") as source:
        neuron_ids = source["labels/neuron_ids"][...]
        offset = most_populated_crop_offset(neuron_ids, CROP_SHAPE, OFFSET_GRID_STEP)
        crop = tuple(slice(o, o + s) for o, s in zip(offset, CROP_SHAPE))
        raw = source["raw"][crop]
    neuron_ids = neuron_ids[crop].astype(np.uint32)

    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(arguments.output, "w") as output:
        output.attrs["source"] = (
            "janelia-flyem/neuroproof_examples@ce839e17deaf4c01153827c6d028dfecfbb4b958 "
            "training_sample2, via shared/data/flyem_medulla_dev/volume.h5"
        )
        output.attrs["crop_offset_zyx"] = list(offset)
        output.attrs["license"] = "CC BY 3.0, see LICENSE-flyem-medulla.txt"
        for name, data in (("raw", raw.astype(np.uint8)), ("neuron_ids", neuron_ids)):
            dataset = output.create_dataset(name, data=data, chunks=(32, 64, 64), compression="gzip", compression_opts=9)
            dataset.attrs["resolution_nm_zyx"] = RESOLUTION_NM_ZYX

    size = arguments.output.stat().st_size
    if size >= MAXIMUM_FILE_BYTES:
        raise SystemExit(f"{arguments.output} is {size} bytes, over the {MAXIMUM_FILE_BYTES} limit")
    print(
        f"wrote {arguments.output} ({size} bytes): crop offset (z, y, x) = {offset}, "
        f"shape {CROP_SHAPE}, {np.unique(neuron_ids).size} neuron ids"
    )


if __name__ == "__main__":
    main()
