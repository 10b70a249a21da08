"""Segment a boundary map with elf's in-core `simple_multicut_workflow`, using emflow's default parameters.

The elf contender of benchmarks/end_to_end.py, run there as a child process of its own so that its
peak memory is measured cleanly. It reads the whole boundary map, runs elf (distance-transform
watershed, region adjacency graph, mean-boundary edge costs, multicut, projection to voxels) and
writes the segmentation as a zarr v3 array. The report (JSON) holds the time of each phase.

Supervoxels are 2D per section (`use_2dws`) where emflow's `[supervoxels] dimensionality = "auto"`
picks 2D for the boundary map's voxel size, else 3D. emflow's default cost weighting "auto" is
"orientation", elf's "xyz" scheme, with per-section supervoxels, and "size", elf's "all", with 3D
ones (where elf has no z-edge mask to weigh by: "xyz" raises there).

If elf, or a dependency it imports (nifty and vigra are conda-only), cannot be imported, the
report says "unavailable" with the reason and the exit code is 3, so that the caller can say so
instead of failing.

Usage: python benchmarks/elf_multicut.py BOUNDARIES SEGMENTATION REPORT [--threads N] [--chunks Z Y X]
  BOUNDARIES and SEGMENTATION are locations file.zarr:key (or file.h5:key for BOUNDARIES).
"""

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from emflow.config import RunConfig, as_dict
from emflow.config.schema import defaults
from emflow.storage.volumes import open_volume, parse_location, read_resolution, write_volume
from emflow.tasks.edge_costs import cost_parameters
from emflow.tasks.supervoxels import two_d_supervoxels

EXIT_UNAVAILABLE = 3

# emflow's cost weighting names mapped to elf's weighting schemes (`compute_edge_costs`) of the same
# meaning: costs scaled by edge size / largest edge size ("all"), with the edges between sections and
# the in-plane edges normalised apart ("xyz", per-section supervoxels only), or not at all.
ELF_WEIGHTING_SCHEMES = {"size": "all", "orientation": "xyz", "none": "none"}


def elf_parameters(resolution=(1.0, 1.0, 1.0)) -> dict:
    """Keyword arguments of `simple_multicut_workflow` equal to emflow's defaults for a boundary map of
    voxel size `resolution` (z, y, x), which decides 2D or 3D supervoxels as emflow's "auto" does.

    Both "kernighan-lin" solvers are greedy additive contraction followed by Kernighan-Lin moves.
    """
    config = defaults(RunConfig)
    supervoxels = as_dict(config)["supervoxels"]
    return {
        "use_2dws": two_d_supervoxels(config, tuple(resolution)),
        "multicut_solver": config.multicut.solver,
        # emflow's "auto" is "orientation" (elf's "xyz", which needs 2D supervoxels) with 2D supervoxels, else "size".
        "weighting_scheme": ELF_WEIGHTING_SCHEMES[cost_parameters(config, tuple(resolution))["weighting"]],
        "beta": config.multicut.beta,
        "ws_kwargs": {
            "threshold": supervoxels["threshold"],
            "sigma_seeds": supervoxels["sigma_seeds"],
            "sigma_weights": supervoxels["sigma_weights"],
            "min_size": supervoxels["min_size"],
            "alpha": supervoxels["alpha"],
            "pixel_pitch": None,
            "apply_nonmax_suppression": False,
        },
    }


def report_unavailable(report: Path, error: ImportError) -> int:
    report.write_text(json.dumps({"status": "unavailable", "reason": f"{type(error).__name__}: {error}"}))
    return EXIT_UNAVAILABLE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("boundaries", help="boundary map location, file.zarr:key")
    parser.add_argument("segmentation", help="where to write the segmentation, file.zarr:key")
    parser.add_argument("report", type=Path, help="JSON file for the phase timings")
    parser.add_argument("--threads", type=int, default=1, help="threads elf may use (default 1)")
    parser.add_argument("--chunks", type=int, nargs=3, metavar=("Z", "Y", "X"), help="chunk shape of the segmentation")
    arguments = parser.parse_args()

    try:
        from elf.segmentation.workflows import simple_multicut_workflow
    except ImportError as error:
        return report_unavailable(arguments.report, error)

    started = time.perf_counter()
    boundaries_volume = open_volume(*parse_location(arguments.boundaries))
    boundaries = np.asarray(boundaries_volume[...], dtype=np.float32)
    resolution = read_resolution(boundaries_volume)
    read_done = time.perf_counter()
    parameters = elf_parameters(resolution or (1.0, 1.0, 1.0))  # none recorded: isotropic
    try:
        segmentation = simple_multicut_workflow(boundaries, n_threads=arguments.threads, **parameters)
    except ImportError as error:  # a solver or feature that lazily imports a conda-only package
        return report_unavailable(arguments.report, error)
    segment_done = time.perf_counter()
    # bioimage-cpp hands back uint64 as numpy's 'Q' type, which zarr does not recognise although it
    # is the same type as 'L' (uint64) on 64-bit Linux.
    segmentation = segmentation.view(np.dtype(segmentation.dtype.str))
    segmentation_path, segmentation_key = parse_location(arguments.segmentation)
    write_volume(segmentation_path, segmentation_key, segmentation, resolution=resolution, chunks=arguments.chunks)
    write_done = time.perf_counter()

    arguments.report.write_text(
        json.dumps(
            {
                "status": "ok",
                "version": metadata.version("python-elf"),
                "parameters": parameters,
                "threads": arguments.threads,
                "seconds": {
                    "read": read_done - started,
                    "simple_multicut_workflow": segment_done - read_done,
                    "write": write_done - segment_done,
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
