"""Segmentation methods side by side on the FlyEM dev cube's held-out half: emflow's workflows
(`[segmentation] method`) beside elf's and waterz's in-memory equivalents.

`python -m benchmarks --only methods --markdown docs/methods_benchmarks.md`, or on its own
`python -m benchmarks.methods [--quick]`. The region is the dev cube (flyem_medulla_dev/volume.h5,
125x250x250, 10 nm) at y < 128, all z and x (125x128x250), which the shipped model did not see in
training; parameters are chosen on the other half, y >= 128, and only reported on y < 128. Inputs:

- CNN: the shipped model's affinities (offsets (-1,0,0), (0,-1,0), (0,0,-1), then 3 and 9 voxels
  along each axis), predicted for the whole cube in one blended pass (`predict_box`, the model's
  32x96x96 patches, overlap 8x24x24) and cached in `--cache`; emflow's workflows get them as
  `[input] affinities_key` (bring your own predictions), the contenders get the boundary map the
  workflow derives from them, 1 - the mean nearest-neighbour affinity of each voxel.
- GT boundaries: `boundaries_from_labels(neuron_ids, sigma=1, noise=0.1, seed=0)`, the boundary map
  of the other benchmarks (`[input] boundaries_key`). Agglomeration scores come from it (a face voxel
  pair's affinity is 1 - the mean of the two voxels' boundary values), and so do waterz's
  nearest-neighbour affinities.
- GT affinities: `affinities_from_labels(neuron_ids, offsets)` plus Gaussian noise of standard
  deviation 0.2, clipped to [0, 1] (seed 0), for the mutex watershed: a near-perfect reference, like
  the GT boundaries. Independent noise per voxel pair makes a sharp transition: on the tuning half
  the mutex watershed's adapted Rand error is 0.02 at noise 0.15 and 0.2 (the groundtruth's own
  disconnected pieces), 0.55 at 0.25, when the largest of millions of noisy boundary affinities
  start to outweigh the repulsion.

Tuning (in memory, on y >= 128, with the functions the stages call; the lowest adapted Rand error
wins): agglomeration thresholds 0.05..0.95 for emflow, waterz and elf's MALA; lifted cost weighting
"none" or "size"; stitching mode; mutex watershed strides None, (1, 2, 2), (2, 4, 4) x min_size 0,
100. emflow's defaults are the choices for the CNN input.

Contenders on y < 128:
- emflow, each method one `emflow run` (`run_workflow`, 1 worker, the default blocks 64x128x128
  (4 blocks on the half) and halo, no pyramid or report) with the chosen parameters: multicut
  (beta 0.5), lifted multicut from the long-range affinities, agglomeration mean and quantile 0.5
  (every reported threshold from one run), mutex watershed (fragment halo "auto" = 9), stitching
  (per-block multicut, overlap 8, each mode). The two whose result depends on the blocking, the
  mutex watershed and stitching (chosen mode), once more with 64x64x128 blocks (8 blocks). Time is
  the whole workflow: reading and writing every intermediate array, supervoxels included.
- emflow's whole-volume mutex watershed in memory, the reference of the blockwise one.
- elf (python-elf, on bioimage-cpp): `simple_multicut_workflow` with emflow's parameters, its own
  supervoxels; `mala_clustering` (a median over one value per edge, the mean affinity, not over
  voxel pairs) and waterz 0.10 (`OneMinus<MeanAffinity>`, `OneMinus<HistogramQuantileAffinity<50,
  256 bins>>`) on the supervoxels of emflow's multicut run, so that their agglomerations and
  emflow's start from the same fragments; elf's `mutex_watershed` with the same strides (no size
  filter; its input is 1 - affinities, elf flips the attractive channels back). waterz is used when
  it imports (not a dependency of emflow) and reported "unavailable" otherwise.

Each measured run is a fresh (spawned) child process: seconds of the call, and its peak resident
memory above what it held when the call started (interpreter, imports and the inputs), from
/proc/self/status VmHWM after resetting it. Quality: `emflow.evaluation.evaluate` against the
groundtruth (label 0 ignored).

Prints a Markdown table and writes benchmarks/results/methods.json.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import tomli_w
import zarr

from emflow.affinities import affinities_from_labels, boundaries_from_affinities
from emflow.affinity_statistics import boundary_pair_statistics, long_range_channels, nearest_neighbour_channels, pair_statistics
from emflow.agglomeration import merge_history
from emflow.boundaries import boundaries_from_labels
from emflow.cluster import LocalScheduler
from emflow.costs import edge_costs_from_features
from emflow.evaluation import evaluate
from emflow.graph import in_core_graph_features
from emflow.lifted_edges import lifted_edges_from_affinities
from emflow.multicut import solve_lifted_multicut
from emflow.mutex_watershed import mutex_watershed
from emflow.stitching import MODES, multicut_block_segmenter, stitch_blocks
from emflow.storage.geometry import auto_block_shape
from emflow.supervoxels import distance_transform_watershed
from emflow.workflows.run import run_workflow

try:
    from benchmarks.elf_multicut import elf_parameters
    from benchmarks.end_to_end import machine_description, write_results
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from elf_multicut import elf_parameters
    from end_to_end import machine_description, write_results

# The contenders' packages are imported here, not in the measured calls, so that their import time
# is not counted; a missing one is reported as unavailable.
MISSING: dict[str, str] = {}
try:
    import waterz
except ImportError as error:
    MISSING["waterz"] = f"{type(error).__name__}: {error}"
try:
    from elf.segmentation.clustering import mala_clustering
    from elf.segmentation.features import compute_affinity_features, compute_boundary_mean_and_length, compute_rag
    from elf.segmentation.mutex_watershed import mutex_watershed as elf_mws
    from elf.segmentation.workflows import simple_multicut_workflow
except ImportError as error:
    MISSING["elf"] = f"{type(error).__name__}: {error}"

BENCHMARKS_DIR = Path(__file__).resolve().parent
DATA_PATH = BENCHMARKS_DIR.parents[1] / "shared" / "data" / "flyem_medulla_dev" / "volume.h5"
REGIONS = {"tune": np.s_[:, 128:, :], "report": np.s_[:, :128, :]}
GT_AFFINITY_NOISE = 0.2
THRESHOLDS = [round(0.05 * step, 2) for step in range(1, 20)]
REPORTED_THRESHOLDS = (0.3, 0.5, 0.7)
MWS_GRID = [{"strides": strides, "min_size": min_size} for strides in (None, (1, 2, 2), (2, 4, 4)) for min_size in (0, 100)]
MALA_THRESHOLDS = [round(0.1 * step, 1) for step in range(2, 9)]
# emflow's default ("auto") blocks at 10 nm, 64x128x128: those of every emflow run (4 blocks on the
# half) and of the in-memory stitching of the tuning; the methods whose result depends on the
# blocking (mutex watershed, stitching) also run with half as long blocks along y (8 blocks).
DEFAULT_BLOCK_SHAPE = auto_block_shape((125, 250, 250), (10.0, 10.0, 10.0))
SMALL_BLOCK_SHAPE = (64, 64, 128)
STITCH_OVERLAP = (8, 8, 8)
QUALITY_KEYS = ("adapted_rand_error", "voi_split", "voi_merge")


# --- inputs ------------------------------------------------------------------------------------


def cnn_affinities(cache: Path) -> tuple[np.ndarray, list]:
    """The shipped model's affinities for the whole dev cube, predicted once per model file and cached."""
    from emflow.inference import PatchGrid, predict_box
    from emflow.storage.models import file_digest, load_model, shipped_model_path

    model = load_model(shipped_model_path())
    # Keyed by the model's digest: a retrained model must not be scored with its predecessor's affinities.
    path = cache / f"dev_cube_affinities_{file_digest(shipped_model_path())[:12]}.npy"
    if not path.exists():
        import torch

        torch.set_num_threads(1)
        with h5py.File(DATA_PATH, "r") as f:
            raw = f["raw"][:]
        print("predicting the dev cube with the shipped model (about 3 minutes on 2 cores) ...", flush=True)
        grid = PatchGrid(raw.shape, model.patch_shape, (8, 24, 24))
        affinities = predict_box(model.predictor("cpu"), model.normalize(raw), grid, (0, 0, 0), raw.shape)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".partial.npy"), affinities)
        path.with_suffix(".partial.npy").rename(path)
    return np.load(path), [list(offset) for offset in model.offsets]


def region_inputs(cache: Path, quick: bool) -> dict:
    """Per region: groundtruth and the three inputs of the module docstring (``quick``: z < 32 only)."""
    affinities, offsets = cnn_affinities(cache)
    with h5py.File(DATA_PATH, "r") as f:
        groundtruth = f["labels/neuron_ids"][:]
    inputs = {}
    for name, region in REGIONS.items():
        region = (slice(0, 32) if quick else slice(None),) + region[1:]
        truth = np.ascontiguousarray(groundtruth[region])
        cnn = np.ascontiguousarray(affinities[(slice(None),) + region])
        gt_affinities, _ = affinities_from_labels(truth, offsets)
        rng = np.random.default_rng(0)
        gt_affinities = np.clip(gt_affinities + GT_AFFINITY_NOISE * rng.standard_normal(gt_affinities.shape, dtype=np.float32), 0, 1)
        inputs[name] = {
            "groundtruth": truth,
            "offsets": offsets,
            "CNN": {"affinities": cnn, "boundaries": boundaries_from_affinities(cnn, offsets)},
            "GT boundaries": {"boundaries": boundaries_from_labels(truth, sigma=1.0, noise=0.1, seed=0)},
            "GT affinities": {"affinities": gt_affinities},
        }
    return inputs


# --- measuring ---------------------------------------------------------------------------------


def _memory_status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Vm"))
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _child(function, connection) -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        start = _memory_status()["VmRSS"]
        began = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - began
        connection.send(("ok", result, seconds, _memory_status()["VmHWM"] - start))
    except BaseException:  # report any failure to the parent instead of dying silently
        connection.send(("error", traceback.format_exc(), 0.0, 0))
    finally:
        connection.close()


def measured(function):
    """Run ``function()`` in a fresh child process: (result, seconds, peak RSS above the child's start).

    ``function`` must pickle (a module-level function or a ``functools.partial`` of one); its
    arguments arrive in the child before the peak is reset, so the peak counts what the call
    allocates beyond its inputs. A spawned, not forked, child: a fork would reuse the parent's
    freed heap and under-report.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(function, sender))
    process.start()
    status, result, seconds, peak = receiver.recv()
    process.join()
    if status != "ok":
        raise RuntimeError(f"measured run failed:\n{result}")
    return result, seconds, peak


def quality(segmentation: np.ndarray, groundtruth: np.ndarray) -> dict:
    metrics = evaluate(segmentation, groundtruth)
    return {key: metrics[key] for key in QUALITY_KEYS}


# --- contenders in memory ---------------------------------------------------------------------


def emflow_lifted_multicut(boundaries, affinities, offsets, weighting):
    supervoxels = distance_transform_watershed(boundaries)
    edges, features, number_of_nodes = in_core_graph_features(supervoxels, boundaries)
    long_range = pair_statistics(supervoxels, affinities, offsets, channels=long_range_channels(offsets))
    lifted_edges, lifted_costs = lifted_edges_from_affinities(number_of_nodes, edges, long_range, weighting=weighting)
    node_labels = solve_lifted_multicut(number_of_nodes, edges, edge_costs_from_features(features), lifted_edges, lifted_costs)
    return node_labels[supervoxels]


def nearest_statistics(supervoxels, data, offsets):
    if "affinities" in data:
        return pair_statistics(supervoxels, data["affinities"], offsets, channels=nearest_neighbour_channels(offsets))
    return boundary_pair_statistics(supervoxels, data["boundaries"])


def emflow_agglomeration(supervoxels, data, offsets, linkage, thresholds):
    statistics = nearest_statistics(supervoxels, data, offsets)
    history = merge_history(int(supervoxels.max()) + 1, statistics, linkage=linkage, stop_score=max(thresholds))
    return {threshold: history.labels_at_threshold(threshold)[supervoxels] for threshold in thresholds}


def waterz_affinities(data, offsets):
    """Nearest-neighbour affinities (z, y, x channels) for waterz; from a boundary map as the statistics take them."""
    if "affinities" in data:
        return np.ascontiguousarray(data["affinities"][nearest_neighbour_channels(offsets)], dtype=np.float32)
    boundaries = data["boundaries"].astype(np.float64)
    affinities = np.zeros((3,) + boundaries.shape, dtype=np.float32)
    for axis in range(3):
        here = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        there = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        affinities[axis][here] = 1.0 - (boundaries[here] + boundaries[there]) / 2
    return affinities


@contextlib.contextmanager
def quiet_stdout():
    """Send file descriptor 1 to /dev/null: waterz's C++ narrates every step on it."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def waterz_agglomeration(supervoxels, data, offsets, linkage, thresholds):
    scoring = {
        "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
        "quantile": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>",
    }[linkage]
    affinities = waterz_affinities(data, offsets)
    fragments = supervoxels.astype(np.uint64)
    with quiet_stdout():
        results = [
            segmentation.copy()
            for segmentation in waterz.agglomerate(affinities, sorted(thresholds), fragments=fragments, scoring_function=scoring)
        ]
    return dict(zip(sorted(thresholds), results))


def elf_mala(supervoxels, data, offsets, thresholds):
    rag = compute_rag(supervoxels, n_threads=1)
    if "affinities" in data:
        channels = nearest_neighbour_channels(offsets)
        features = compute_affinity_features(rag, supervoxels, data["affinities"][channels], [offsets[c] for c in channels], n_threads=1)
        indicators, sizes = 1.0 - features[:, 0], features[:, -1]
    else:
        features = compute_boundary_mean_and_length(rag, supervoxels, data["boundaries"], n_threads=1)
        indicators, sizes = features[:, 0], features[:, 1]
    return {threshold: mala_clustering(rag, indicators, sizes, threshold)[supervoxels] for threshold in thresholds}


def elf_multicut(boundaries):
    return simple_multicut_workflow(boundaries.astype(np.float32), n_threads=1, **elf_parameters())


def elf_mutex_watershed(affinities, offsets, strides):
    return elf_mws(1.0 - affinities, offsets, strides=list(strides or (1, 1, 1)))


def clipped(block_shape, shape) -> tuple[int, ...]:
    return tuple(min(block, size) for block, size in zip(block_shape, shape))


def available(module: str) -> str | None:
    """None if the contender's package imported, else why not."""
    return MISSING.get(module)


# --- emflow's workflows ------------------------------------------------------------------------


def write_workflow_inputs(folder: Path, region: dict) -> Path:
    """The report region's inputs as one zarr group: affinities (with their offsets) and boundary maps."""
    path = folder / "inputs.zarr"
    group = zarr.open_group(str(path), mode="w")
    offsets = region["offsets"]
    for key, data in (("cnn_affinities", region["CNN"]["affinities"]), ("gt_affinities", region["GT affinities"]["affinities"])):
        group.create_array(key, data=data.astype(np.float32), chunks=(len(offsets), *clipped(DEFAULT_BLOCK_SHAPE, data.shape[1:]))).attrs[
            "offsets"
        ] = offsets
    boundaries = region["GT boundaries"]["boundaries"]
    group.create_array("gt_boundaries", data=boundaries.astype(np.float32), chunks=clipped(DEFAULT_BLOCK_SHAPE, boundaries.shape))
    return path


def workflow_config(folder: Path, name: str, inputs: Path, input_key: dict, sections: dict) -> Path:
    """An `emflow run` config for one method (`sections`) on the input `input_key` ({"affinities_key": ...} or
    {"boundaries_key": ...}); default blocks unless `sections` set them."""
    config = {
        "input": {"path": str(inputs), "resolution": [10.0, 10.0, 10.0], **input_key},
        "output": {"path": str(folder / f"{name}.zarr"), "pyramid": False, "report": False},
        **sections,
    }
    path = folder / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def run_emflow(config: Path) -> None:
    """`emflow run CONFIG` with one worker, in this process (the measured child; the workflow modules
    are imported with this module, before the child's peak memory is reset)."""
    report = run_workflow(config, LocalScheduler(1), progress_interval=1e9)
    if not report.succeeded:
        raise RuntimeError(f"emflow run {config} failed")


def segmentations_of(output: Path, names: dict) -> dict:
    """The output volumes `names` ({key: volume}) of a finished run."""
    from emflow.storage.volumes import open_volume

    return {key: np.asarray(open_volume(output, volume)[...]) for key, volume in names.items()}


def method_sections(input_name: str, chosen: dict, shape: tuple[int, ...]) -> dict:
    """Per emflow method (row name) on an input of `shape`: its config sections, and for agglomeration the
    chosen threshold (listed first in the sections: it is the run's `segmentation`). The small blocks are
    clipped to the volume (--quick: 32 planes), as emflow refuses a block shape larger than the volume."""
    parameters = chosen.get(f"{input_name}: mutex watershed", {"strides": (2, 4, 4), "min_size": 100})
    mutex_watershed_sections = {
        "segmentation": {"method": "mutex-watershed"},
        "mutex_watershed": {"strides": list(parameters["strides"] or (1, 1, 1)), "min_size": parameters["min_size"]},
    }
    if input_name == "GT affinities":
        return {"emflow mutex watershed": (mutex_watershed_sections, None)}
    methods = {"emflow multicut": ({}, None)}
    if input_name == "CNN":
        methods["emflow lifted multicut"] = (
            {"lifted": {"source": "affinities", "weighting": chosen.get("CNN: lifted weighting", "size")}},
            None,
        )
    for linkage in ("mean", "quantile"):
        threshold = chosen.get(f"{input_name}: emflow {linkage} threshold", 0.5)
        thresholds = [threshold] + [other for other in REPORTED_THRESHOLDS if other != threshold]
        sections = {"segmentation": {"method": "agglomeration"}, "agglomeration": {"linkage": linkage, "thresholds": thresholds}}
        methods[f"emflow agglomeration, {linkage}"] = (sections, threshold)
    small_blocks = {"blocking": {"block_shape": list(clipped(SMALL_BLOCK_SHAPE, shape))}}
    for mode in MODES:
        methods[f"emflow stitching, {mode}"] = ({"segmentation": {"method": "stitching"}, "stitching": {"mode": mode}}, None)
    mode = chosen.get(f"{input_name}: stitching mode", "medium")
    methods[f"emflow stitching, {mode}, small blocks"] = (
        {"segmentation": {"method": "stitching"}, "stitching": {"mode": mode}, **small_blocks},
        None,
    )
    if input_name == "CNN":
        methods["emflow mutex watershed"] = (mutex_watershed_sections, None)
        methods["emflow mutex watershed, small blocks"] = ({**mutex_watershed_sections, **small_blocks}, None)
    return methods


# --- tuning ------------------------------------------------------------------------------------


def best(scores: dict) -> object:
    """The parameter with the lowest adapted Rand error (ties: the first)."""
    return min(scores, key=lambda key: scores[key]["adapted_rand_error"])


def tune(inputs: dict) -> dict:
    """Parameters chosen on the tuning half, per input."""
    region = inputs["tune"]
    groundtruth, offsets = region["groundtruth"], region["offsets"]
    chosen = {}
    for input_name in ("CNN", "GT boundaries"):
        data = region[input_name]
        supervoxels = distance_transform_watershed(data["boundaries"])
        for linkage in ("mean", "quantile"):
            scores = {t: quality(s, groundtruth) for t, s in emflow_agglomeration(supervoxels, data, offsets, linkage, THRESHOLDS).items()}
            chosen[f"{input_name}: emflow {linkage} threshold"] = best(scores)
            if available("waterz") is None:
                segmentations = waterz_agglomeration(supervoxels, data, offsets, linkage, THRESHOLDS)
                scores = {t: quality(s, groundtruth) for t, s in segmentations.items()}
                chosen[f"{input_name}: waterz {linkage} threshold"] = best(scores)
        if available("elf") is None:
            scores = {t: quality(s, groundtruth) for t, s in elf_mala(supervoxels, data, offsets, MALA_THRESHOLDS).items()}
            chosen[f"{input_name}: elf mala threshold"] = best(scores)
        if input_name == "GT boundaries":
            continue
        scores = {
            weighting: quality(emflow_lifted_multicut(data["boundaries"], data["affinities"], offsets, weighting), groundtruth)
            for weighting in ("none", "size")
        }
        chosen[f"{input_name}: lifted weighting"] = best(scores)
        block_shape, segmenter = clipped(DEFAULT_BLOCK_SHAPE, supervoxels.shape), multicut_block_segmenter(data["boundaries"])
        stitched = {
            mode: quality(stitch_blocks(supervoxels.shape, block_shape, STITCH_OVERLAP, segmenter, mode=mode), groundtruth)
            for mode in MODES
        }
        chosen[f"{input_name}: stitching mode"] = best(stitched)
    for input_name in ("CNN", "GT affinities"):
        affinities = region[input_name]["affinities"]
        scores = {
            index: quality(mutex_watershed(affinities, offsets, **parameters), groundtruth) for index, parameters in enumerate(MWS_GRID)
        }
        chosen[f"{input_name}: mutex watershed"] = MWS_GRID[best(scores)]
        print(f"tuned {input_name} mutex watershed: {chosen[f'{input_name}: mutex watershed']}", flush=True)
    return chosen


# --- the report --------------------------------------------------------------------------------

INPUT_KEYS = {
    "CNN": {"affinities_key": "cnn_affinities"},
    "GT boundaries": {"boundaries_key": "gt_boundaries"},
    "GT affinities": {"affinities_key": "gt_affinities"},
}


def report(inputs: dict, chosen: dict, folder: Path) -> list[dict]:
    region = inputs["report"]
    groundtruth, offsets = region["groundtruth"], region["offsets"]
    workflow_inputs = write_workflow_inputs(folder, region)
    rows = []

    def row(input_name, method, parameters, segmentation, seconds, peak):
        return {
            "input": input_name,
            "method": method,
            "parameters": parameters,
            "status": "ok",
            "seconds": seconds,
            "peak_rss_bytes": peak,
            "segments": int(len(np.unique(segmentation))),
            "quality": quality(segmentation, groundtruth),
        }

    def add(input_name, method, parameters, function, *, per_threshold=None):
        print(f"{input_name}: {method} ...", flush=True)
        try:
            result, seconds, peak = measured(function)
        except RuntimeError as error:
            rows.append({"input": input_name, "method": method, "parameters": parameters, "status": str(error).splitlines()[-1]})
            return None
        segmentations = result if per_threshold else {None: result}
        for threshold, segmentation in segmentations.items():
            row_parameters = dict(parameters, **({} if threshold is None else {"threshold": threshold}))
            if threshold is not None:
                row_parameters["chosen"] = threshold == per_threshold
            rows.append(row(input_name, method, row_parameters, segmentation, seconds, peak))
        return result

    def add_workflow(input_name, method, sections, chosen_threshold):
        """Run one method's workflow; returns its output volumes (None if it failed)."""
        name = f"{input_name}-{method}".replace(" ", "_").replace(",", "")
        config = workflow_config(folder, name, workflow_inputs, INPUT_KEYS[input_name], sections)
        print(f"{input_name}: {method} (emflow run) ...", flush=True)
        try:
            _, seconds, peak = measured(partial(run_emflow, config))
        except RuntimeError as error:
            rows.append({"input": input_name, "method": method, "parameters": sections, "status": str(error).splitlines()[-1]})
            return None
        parameters = {key: value for section in sections.values() for key, value in section.items() if key not in ("method", "thresholds")}
        thresholds = sections.get("agglomeration", {}).get("thresholds", [None])
        volumes = {
            threshold: "segmentation" if index == 0 else f"segmentation_threshold_{threshold:g}"
            for index, threshold in enumerate(thresholds)
        }
        outputs = segmentations_of(folder / f"{name}.zarr", {**volumes, "supervoxels": "supervoxels"})
        for threshold in sorted(volumes, key=lambda value: -1 if value is None else value):
            extra = {} if threshold is None else {"threshold": threshold, "chosen": threshold == chosen_threshold}
            rows.append(row(input_name, method, dict(parameters, **extra), outputs[threshold], seconds, peak))
        return outputs

    for input_name in ("CNN", "GT boundaries", "GT affinities"):
        data = region[input_name]
        outputs = {
            method: add_workflow(input_name, method, sections, threshold)
            for method, (sections, threshold) in method_sections(input_name, chosen, groundtruth.shape).items()
        }
        multicut = outputs.get("emflow multicut")
        if multicut is not None:
            # The contenders' agglomerations start from the supervoxels of emflow's multicut run.
            supervoxels = multicut["supervoxels"]
            for linkage in ("mean", "quantile"):
                if available("waterz") is None:
                    threshold = chosen.get(f"{input_name}: waterz {linkage} threshold")
                    thresholds = sorted({*REPORTED_THRESHOLDS, *([threshold] if threshold is not None else [])})
                    add(
                        input_name,
                        f"waterz, {linkage}",
                        {},
                        partial(waterz_agglomeration, supervoxels, data, offsets, linkage, thresholds),
                        per_threshold=threshold,
                    )
                else:
                    rows.append(
                        {
                            "input": input_name,
                            "method": f"waterz, {linkage}",
                            "parameters": {},
                            "status": f"unavailable: {available('waterz')}",
                        }
                    )
            if available("elf") is None:
                add(input_name, "elf simple_multicut_workflow", {"beta": 0.5}, partial(elf_multicut, data["boundaries"]))
                threshold = chosen.get(f"{input_name}: elf mala threshold", 0.5)
                add(
                    input_name,
                    "elf mala_clustering",
                    {},
                    partial(elf_mala, supervoxels, data, offsets, [threshold]),
                    per_threshold=threshold,
                )
        if "affinities" in data:
            parameters = chosen.get(f"{input_name}: mutex watershed", {"strides": (2, 4, 4), "min_size": 100})
            in_memory = add(
                input_name,
                "emflow mutex watershed, in memory",
                parameters,
                partial(mutex_watershed, data["affinities"], offsets, **parameters),
            )
            blockwise = outputs.get("emflow mutex watershed")
            if in_memory is not None and blockwise is not None:
                # How far the blockwise result is from the in-memory one (the latter as reference).
                rows[-1]["blockwise_against_in_memory"] = quality(blockwise[None], in_memory)
            if available("elf") is None:
                add(
                    input_name,
                    "elf mutex_watershed",
                    {"strides": parameters["strides"]},
                    partial(elf_mutex_watershed, data["affinities"], offsets, parameters["strides"]),
                )
    return rows


def markdown(results: dict) -> str:
    lines = [
        "Dev cube y < 128 (125x128x250 at 10 nm), parameters chosen on y >= 128; emflow rows are `emflow run`, 1 worker, with the "
        f'default blocks {"x".join(map(str, DEFAULT_BLOCK_SHAPE))} (4 blocks), "small blocks" {"x".join(map(str, SMALL_BLOCK_SHAPE))} (8 blocks); '
        "seconds and peak RSS (above the process's start) of each call or run.",
        "",
        "| input | method | parameters | ARAND | VOI split | VOI merge | segments | seconds | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        parameters = ", ".join(f"{key} {value}" for key, value in row["parameters"].items() if key != "chosen")
        if row["parameters"].get("chosen"):
            parameters += " (chosen)"
        if row["status"] != "ok":
            lines.append(f"| {row['input']} | {row['method']} | {parameters} | {row['status']} | | | | | |")
            continue
        q = row["quality"]
        lines.append(
            f"| {row['input']} | {row['method']} | {parameters} | {q['adapted_rand_error']:.3f} | {q['voi_split']:.3f} | "
            f"{q['voi_merge']:.3f} | {row['segments']} | {row['seconds']:.1f} | {row['peak_rss_bytes'] / 2**20:.0f} |"
        )
    for row in results["rows"]:
        if "blockwise_against_in_memory" in row:
            q = row["blockwise_against_in_memory"]
            lines.append(
                f"\n{row['input']}: blockwise (emflow run) against in-memory mutex watershed: ARAND {q['adapted_rand_error']:.3f}, "
                f"VOI split {q['voi_split']:.3f}, merge {q['voi_merge']:.3f}"
            )
    chosen = ", ".join(f"{key}: {value}" for key, value in results["chosen_on_tuning_half"].items())
    lines.append(f"\nChosen on y >= 128: {chosen}.")
    return "\n".join(lines)


def run(quick: bool = False, cache: Path = Path("/tmp/emflow_benchmark_cache")) -> dict:
    """The whole benchmark (`python -m benchmarks --only methods`); `quick`: the first 32 planes of each half."""
    import tempfile

    started = time.perf_counter()
    inputs = region_inputs(cache, quick)
    chosen = tune(inputs)
    print("chosen on y >= 128:", chosen, flush=True)
    with tempfile.TemporaryDirectory(prefix="emflow_methods_") as folder:
        rows = report(inputs, chosen, Path(folder))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "versions": {name: _version(name) for name in ("bioimage-cpp", "python-elf", "waterz")},
        "regions": {"tune": "y >= 128", "report": "y < 128", "z": "< 32 (quick)" if quick else "all"},
        "block_shapes": {"default": DEFAULT_BLOCK_SHAPE, "small": SMALL_BLOCK_SHAPE},
        "gt_affinity_noise": GT_AFFINITY_NOISE,
        "chosen_on_tuning_half": {key: value for key, value in chosen.items()},
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/emflow_benchmark_cache"), help="folder for the cached CNN prediction")
    parser.add_argument("--json", type=Path, default=BENCHMARKS_DIR / "results" / "methods.json")
    parser.add_argument("--quick", action="store_true", help="the first 32 planes of each half: a look, not figures to quote")
    arguments = parser.parse_args(argv)
    results = run(arguments.quick, arguments.cache)
    write_results(arguments.json, results)
    print(markdown(results))
    print(f"\nwrote {arguments.json} ({results['seconds']:.0f} s)")
    return 0


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
