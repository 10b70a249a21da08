"""Hierarchical (block-wise) vs global multicut: energy, time and quality, side by side with elf.

The problems are built from the FlyEM medulla dev cube (../shared/data/flyem_medulla_dev/volume.h5,
125x250x250, 10 nm isotropic; see its SOURCE.md) the way the emflow workflow builds them:
- boundary map `boundaries_from_labels(neuron_ids, sigma=1.0, noise=0.1, seed=0)`;
- supervoxels per base block: `emflow.supervoxels.distance_transform_watershed` with the defaults of
  emflow's default config on the block plus the default halo ("auto": none with these 3D
  supervoxels, `emflow.storage.geometry.resolve_geometry`), cropped to the block,
  relabelled consecutively and offset per block with `emflow.labels.block_offsets`, so that no
  supervoxel crosses a block face and the nodes of block b are the ids after those of blocks < b;
- graph and edge features `emflow.graph.in_core_graph_features`, costs
  `emflow.costs.edge_costs_from_features` (default beta 0.5 and weighting, "orientation"), node -> base block
  `emflow.hierarchical_multicut.node_block_ids_from_counts`.

Two problems: the whole dev cube with blocks 32x64x64 (4x4x4 blocks), and (not with --quick) the
dev cube tiled 2x per axis, every other copy mirrored (`mirrored_groundtruth_tiling` of
end_to_end.py; 250x500x500), with emflow's default blocks ("auto", `emflow.storage.geometry.auto_block_shape`
on the shape and voxel size: 64x128x128 at 10 nm, 4x4x4 blocks).

Contenders on each problem, all single-threaded, all Kernighan-Lin warm-started with greedy additive:
- global: `emflow.multicut.solve_multicut` on the whole graph (the reference energy);
- emflow hierarchical, n_scales 1, 2, 3: `emflow.hierarchical_multicut.hierarchical_multicut`
  (sub-problems of blocks of 2**s base blocks per axis for s < n_scales, uncut inner edges
  contracted, the reduced problem solved globally);
- elf `elf.segmentation.multicut.blockwise_multicut` (python-elf, in memory) with the same base block
  shape, no halo, 1 thread, n_levels 1 and 2. An exception is recorded as the contender's status
  ("crashed: <type>: <message>") and the others still run; without elf, "unavailable: <reason>".

Measured per contender: wall time of the solver call alone (problem already in memory;
time.perf_counter), the best of 3 calls when the first takes under 2 s, else that one call; the
multicut energy (`emflow.multicut.multicut_energy`, sum of the costs of cut edges, lower is better)
and its gap to the global solve, (E - E_global) / |E_global| in percent (negative = better than
global); the number of segments; and the adapted Rand error and VOI of the segmentation (node labels
projected onto the supervoxels) against the groundtruth (`emflow.evaluation.evaluate`, groundtruth
label 0 ignored). Building the problem is timed too, but it is not part of any contender's time.

Usage: python -m benchmarks.hierarchical_multicut [--quick] [--json PATH]
Prints a Markdown section and writes benchmarks/results/hierarchical_multicut.json. --quick: the
whole dev cube only (well under a minute on 2 cores). Needs the `bench` extra for elf.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np

from emflow.blocking import Blocking
from emflow.boundaries import boundaries_from_labels
from emflow.config import RunConfig
from emflow.config.schema import defaults
from emflow.costs import edge_costs_from_features
from emflow.evaluation import evaluate
from emflow.graph import in_core_graph_features, undirected_graph
from emflow.hierarchical_multicut import hierarchical_multicut, node_block_ids_from_counts
from emflow.labels import block_offsets, relabel_consecutive
from emflow.multicut import multicut_energy, multicut_problem, multicut_solver, solve_multicut
from emflow.storage.geometry import auto_block_shape, resolve_geometry
from emflow.supervoxels import distance_transform_watershed
from emflow.tasks.edge_costs import cost_parameters
from emflow.tasks.supervoxels import two_d_supervoxels

try:
    from benchmarks.end_to_end import mirrored_groundtruth_tiling, write_results
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from end_to_end import mirrored_groundtruth_tiling, write_results

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
# As tests/conftest.py: the shared data folder beside the repository.
DATA_DIR = BENCHMARKS_DIR.parents[1] / "shared" / "data"
SOURCE_PATH = DATA_DIR / "flyem_medulla_dev" / "volume.h5"

REPEAT_BELOW_SECONDS = 2.0
REPEATS = 3
EMFLOW_SCALES = (1, 2, 3)
ELF_LEVELS = (1, 2)
ELF_THREADS = 1
TITLE = "### Hierarchical vs global multicut"

# (name, tiling factor per axis, block shape or None for emflow's "auto" block shape of the tiled
# volume, `auto_block_shape`); the second is skipped with --quick.
PROBLEMS = (
    ("dev cube", 1, (32, 64, 64)),
    ("dev cube tiled 2x, mirrored", 2, None),
)


def load_groundtruth() -> tuple[np.ndarray, tuple[float, ...]]:
    with h5py.File(SOURCE_PATH, "r") as source:
        dataset = source["labels/neuron_ids"]
        return dataset[...], tuple(float(value) for value in dataset.attrs["resolution_nm_zyx"])


def block_supervoxels(
    boundaries: np.ndarray, blocking: Blocking, resolution: tuple[float, ...], config: RunConfig, halo: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Supervoxels as the workflow's supervoxel stages make them, and the count per block."""
    section = config.supervoxels
    two_d = two_d_supervoxels(config, resolution)
    parameters = section.parameters()
    local = np.zeros(boundaries.shape, dtype=np.uint64)
    counts = np.zeros(blocking.number_of_blocks, dtype=np.uint64)
    for block_id in range(blocking.number_of_blocks):
        outer, inner_local = blocking.block_with_halo(block_id, halo)
        labels = distance_transform_watershed(boundaries[outer.slicing], resolution=resolution, two_d=two_d, **parameters)
        labels, counts[block_id] = relabel_consecutive(labels[inner_local.slicing])
        local[blocking.block(block_id).slicing] = labels
    offsets = block_offsets(counts)
    for block_id in range(blocking.number_of_blocks):
        inner = blocking.block(block_id).slicing
        local[inner] = np.where(local[inner] != 0, local[inner] + offsets[block_id], np.uint64(0))
    return local, counts


def build_problem(groundtruth: np.ndarray, resolution: tuple[float, ...], block_shape: tuple[int, ...]) -> dict:
    config = defaults(RunConfig)
    # The halo the workflow uses with these blocks ("auto" resolved as a run resolves it).
    halo = resolve_geometry(
        groundtruth.shape, resolution, block_shape, config.blocking.halo, per_section_supervoxels=two_d_supervoxels(config, resolution)
    ).halo
    seconds = {}
    started = time.perf_counter()
    boundaries = boundaries_from_labels(groundtruth, sigma=1.0, noise=0.1, seed=0)
    seconds["boundaries"] = time.perf_counter() - started
    blocking = Blocking(groundtruth.shape, block_shape)
    started = time.perf_counter()
    supervoxels, counts = block_supervoxels(boundaries, blocking, resolution, config, halo)
    seconds["supervoxels"] = time.perf_counter() - started
    started = time.perf_counter()
    edges, features, number_of_nodes = in_core_graph_features(supervoxels, boundaries)
    seconds["graph"] = time.perf_counter() - started
    costs = edge_costs_from_features(features, beta=config.multicut.beta, **cost_parameters(config, resolution))
    node_block_ids = node_block_ids_from_counts(counts)
    if len(node_block_ids) != number_of_nodes:
        raise RuntimeError(f"{len(node_block_ids)} node block ids for {number_of_nodes} nodes")
    return {
        "supervoxels": supervoxels,
        "edges": edges,
        "costs": costs,
        "number_of_nodes": number_of_nodes,
        "node_block_ids": node_block_ids,
        "blocking": blocking,
        "build_seconds": seconds,
        "parameters": {
            "supervoxels": config.supervoxels.parameters(),
            "halo": list(halo),
            "beta": config.multicut.beta,
            "costs": cost_parameters(config, resolution),
            "solver": config.multicut.solver,
            "seed": config.multicut.seed,
        },
    }


def timed(solve) -> tuple[np.ndarray, float, list[float]]:
    """The first call's result, the best time and every call's time (3 calls if the first is fast)."""
    times = []
    started = time.perf_counter()
    result = solve()
    times.append(time.perf_counter() - started)
    if times[0] < REPEAT_BELOW_SECONDS:
        for _ in range(REPEATS - 1):
            started = time.perf_counter()
            solve()
            times.append(time.perf_counter() - started)
    return result, min(times), times


def contenders(problem: dict, block_shape: tuple[int, ...]):
    """(name, solve) pairs; solve returns node labels, or raises."""
    n, edges, costs = problem["number_of_nodes"], problem["edges"], problem["costs"]
    solver, seed = problem["parameters"]["solver"], problem["parameters"]["seed"]
    yield "global", lambda: solve_multicut(n, edges, costs, solver=solver, seed=seed)
    for scales in EMFLOW_SCALES:
        yield (
            f"emflow n_scales={scales}",
            lambda scales=scales: hierarchical_multicut(
                multicut_problem(n, edges, costs),
                problem["node_block_ids"],
                problem["blocking"].blocks_per_axis,
                n_scales=scales,
                solver=multicut_solver(solver, seed=seed),
            ),
        )
    try:
        from elf.segmentation.multicut import blockwise_multicut
    except Exception as error:  # python-elf (the bench extra) is optional
        for levels in ELF_LEVELS:
            yield f"elf n_levels={levels}", f"unavailable: {type(error).__name__}: {error}"
        return
    graph = undirected_graph(n, edges)
    for levels in ELF_LEVELS:
        yield (
            f"elf n_levels={levels}",
            lambda levels=levels: blockwise_multicut(
                graph, costs, problem["supervoxels"], solver, block_shape, n_threads=ELF_THREADS, n_levels=levels
            ),
        )


def run_problem(name: str, factor: int, block_shape: tuple[int, ...] | None, neuron_ids: np.ndarray, resolution) -> dict:
    """The problem `name` and every contender on it; `block_shape` None: emflow's "auto" block shape."""
    groundtruth = neuron_ids if factor == 1 else mirrored_groundtruth_tiling(neuron_ids, factor)
    block_shape = tuple(block_shape or auto_block_shape(groundtruth.shape, resolution))
    print(f"{name}: building the problem ...", file=sys.stderr, flush=True)
    problem = build_problem(groundtruth, resolution, block_shape)
    blocking, edges, costs = problem["blocking"], problem["edges"], problem["costs"]
    result = {
        "name": name,
        "shape": list(groundtruth.shape),
        "tiling": factor,
        "block_shape": list(block_shape),
        "blocks_per_axis": list(blocking.blocks_per_axis),
        "blocks": blocking.number_of_blocks,
        "nodes": problem["number_of_nodes"] - 1,  # node 0 (background) is not a supervoxel
        "edges": int(len(edges)),
        "attractive_edges": int((costs > 0).sum()),
        "build_seconds": problem["build_seconds"],
        "parameters": problem["parameters"],
        "contenders": [],
    }
    global_energy = None
    for contender, solve in contenders(problem, block_shape):
        print(f"{name}: {contender} ...", file=sys.stderr, flush=True)
        entry = {"name": contender}
        if isinstance(solve, str):
            entry["status"] = solve
            result["contenders"].append(entry)
            continue
        try:
            labels, seconds, times = timed(solve)
        except Exception as error:
            entry["status"] = f"crashed: {type(error).__name__}: {error}"
            result["contenders"].append(entry)
            continue
        labels = np.asarray(labels)
        energy = multicut_energy(edges, costs, labels)
        if global_energy is None:
            global_energy = energy
        quality = evaluate(labels[problem["supervoxels"]], groundtruth)
        entry.update(
            status="ok",
            seconds=seconds,
            times=times,
            energy=energy,
            gap_percent=(energy - global_energy) / abs(global_energy) * 100.0,
            segments=int(np.unique(labels[1:]).size),
            adapted_rand_error=quality["adapted_rand_error"],
            voi_split=quality["voi_split"],
            voi_merge=quality["voi_merge"],
        )
        result["contenders"].append(entry)
    return result


def machine_description() -> dict:
    versions = {}
    for name in ("emflow", "numpy", "bioimage-cpp", "python-elf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def run(quick: bool = False) -> dict:
    """Run the benchmark; JSON-able results. `quick`: the whole dev cube only."""
    neuron_ids, resolution = load_groundtruth()
    problems = PROBLEMS[:1] if quick else PROBLEMS
    return {
        "benchmark": "hierarchical_multicut",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine_description(),
        "source": str(SOURCE_PATH),
        "timing": f"best of {REPEATS} calls when the first takes under {REPEAT_BELOW_SECONDS:g} s, else one call",
        "elf_threads": ELF_THREADS,
        "problems": [run_problem(name, factor, block_shape, neuron_ids, resolution) for name, factor, block_shape in problems],
    }


def _shape(values) -> str:
    return "x".join(str(value) for value in values)


def markdown(results: dict) -> str:
    """A Markdown section: one table per problem and a line saying what was measured."""
    lines = [TITLE, ""]
    for problem in results["problems"]:
        lines += [
            f"{problem['name']} ({_shape(problem['shape'])}), blocks {_shape(problem['block_shape'])} "
            f"({_shape(problem['blocks_per_axis'])} = {problem['blocks']}): {problem['nodes']:,} nodes, "
            f"{problem['edges']:,} edges",
            "",
            "| contender | time s | energy | gap to global % | segments | ARAND | VOI split | VOI merge |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for entry in problem["contenders"]:
            if entry["status"] != "ok":
                lines.append(f"| {entry['name']} | {entry['status'].replace('|', '/')} | | | | | | |")
                continue
            lines.append(
                f"| {entry['name']} | {entry['seconds']:.3f} | {entry['energy']:.3f} | {entry['gap_percent']:+.4f} | "
                f"{entry['segments']} | {entry['adapted_rand_error']:.4f} | {entry['voi_split']:.3f} | {entry['voi_merge']:.3f} |"
            )
        lines.append("")
    machine = results["machine"]
    lines.append(
        f"Measured: wall time of the solver call alone on the in-memory problem ({results['timing']}), single-threaded "
        f"(elf {results['elf_threads']} thread), all Kernighan-Lin warm-started by greedy additive; energy = sum of the costs "
        f"of cut edges (lower is better), gap = (E - E_global) / |E_global|; ARAND and VOI (bits) of the node labels projected "
        f"onto the supervoxels against the FlyEM groundtruth. {machine['cpu_count']} cores ({machine['cpu_model']}), "
        f"emflow {machine['versions']['emflow']}, python-elf {machine['versions']['python-elf']}, {results['date'][:10]}."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the whole dev cube only")
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "hierarchical_multicut.json",
        help="where to write the results (default benchmarks/results/hierarchical_multicut.json)",
    )
    arguments = parser.parse_args(argv)
    results = run(quick=arguments.quick)
    write_results(arguments.json, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
