"""The workflow config (`emflow run CONFIG`): every section and key, its default and its meaning.

Only the input, the output and the voxel size have no default: a config that names them gets the
recommended pipeline. The block shape and the halo default to "auto", resolved from the volume
when the run is set up (`emflow.storage.geometry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from emflow.affinities import NEAREST_OFFSETS
from emflow.errors import ConfigError

from .schema import AUTO, Section, key, resolve_function

HEADER = """emflow configuration: every key emflow knows, with its default.

A config file names only what it changes; the rest comes from here. A key or section not listed
here is an error, as is a value of another type. Keys marked (required) must be written in every
config file; the value shown for them here is only a placeholder. Relative paths are relative to
the config file. Stages marked "pluggable" take `function = "package.module:function"`; the other
keys of that section are passed to the function as keyword arguments (for a plugin, the keys its
signature accepts). Lengths are in voxels unless a key says nm."""

ROLES = ("boundaries", "affinities", "supervoxels", "mask", "raw", "lifted_labels")
"""The input datasets a config can name (`[input] <role>_key`)."""


@dataclass(frozen=True)
class InputConfig(Section):
    """The input volumes: raw EM data or a boundary map, and optional extras."""

    path: str = key(
        "",
        "Container with the input volumes: a zarr group or array (v2 or v3), or an HDF5 file.\n"
        "TIFF stacks are converted first with `emflow import`.",
        required=True,
    )
    boundaries_key: str = key(
        "",
        'Boundary map in `path`: float, values in [0, 1], 1 = membrane. Axes (z, y, x). "" = predict it\n'
        "from `raw_key` with a CNN (see [predict]), or derive it from `affinities_key`. One of the three\n"
        "keys is required.",
    )
    affinities_key: str = key(
        "",
        "Affinities in `path` (bring your own predictions): float, values in [0, 1], 1 = same object, axes\n"
        "(C, z, y, x), channel c the affinity of each voxel v to v + affinity_offsets[c]. The boundary map\n"
        "is derived from the three nearest-neighbour channels (1 - the mean affinity to the 6 neighbours);\n"
        "the long-range channels feed the mutex watershed and lifted edges ([lifted] source). An\n"
        "alternative to `boundaries_key` and to predicting from `raw_key`.",
    )
    affinity_offsets: tuple[tuple[int, int, int], ...] = key(
        (),
        "Offset (z, y, x) of each channel of `affinities_key`; must hold (-1, 0, 0), (0, -1, 0) and (0, 0, -1).\n"
        "[] = the dataset's `offsets` attribute, which emflow's `predictions` output carries (when predicting,\n"
        "the model's offsets are used).",
    )
    raw_key: str = key(
        "",
        "Raw EM data in `path`: unsigned integers, or floats in [0, 1]. Required when `boundaries_key`\n"
        'is "" (the CNN reads it); otherwise optional, checked for shape and kept for provenance.',
    )
    supervoxels_key: str = key(
        "",
        'Precomputed supervoxels in `path` (optional, "" = run the watershed). Any unsigned or signed\n'
        "integer ids; 0 = background. They are relabelled to consecutive ids 1..n.",
    )
    lifted_labels_key: str = key(
        "",
        'Labels for lifted multicut in `path` (optional, "" = plain multicut): integer object ids, 0 =\n'
        "unknown; e.g. a previous segmentation or sparse proofreading. See [lifted].",
    )
    mask_key: str = key(
        "",
        'Foreground mask in `path` (optional, "" = everything is foreground). Voxels where the mask is 0\n'
        "get supervoxel and segment id 0 and take part in no edge.",
    )
    resolution: tuple[float, float, float] = key((), "Voxel size in nm, (z, y, x); positive.", required=True)

    def check(self, name: str, what: str) -> None:
        if not all(math.isfinite(value) and value > 0 for value in self.resolution):
            raise ConfigError(
                f"{what} input.resolution must be three positive numbers, the voxel size in nm (z, y, x), got {list(self.resolution)}"
            )
        if not self.boundaries_key and not self.affinities_key and not self.raw_key:
            raise ConfigError(
                f"{what} input.boundaries_key, input.affinities_key or input.raw_key is required "
                "(without a boundary map or affinities, boundaries are predicted from raw data)"
            )
        if self.boundaries_key and self.affinities_key:
            raise ConfigError(
                f"{what} input.boundaries_key and input.affinities_key are both given; give one: the boundary map is derived from the affinities"
            )
        if self.affinity_offsets:
            if not self.affinities_key:
                raise ConfigError(f"{what} input.affinity_offsets describes the channels of input.affinities_key, which is not given")
            check_affinity_offsets(self.affinity_offsets, f"{what} input.affinity_offsets")

    def keys(self) -> dict[str, str]:
        """The dataset key of every input role given (see `ROLES`)."""
        return {role: getattr(self, f"{role}_key") for role in ROLES if getattr(self, f"{role}_key")}


@dataclass(frozen=True)
class OutputConfig(Section):
    """Where results go."""

    path: str = key("", "Zarr v3 group the results are written to; created if missing.", required=True)
    work_dir: str = key("", 'Folder for per-block partial results, completion records and logs ("" = `<path>.work`).')
    report: bool = key(
        True,
        "Write a run report (segments, sizes, time and memory per stage, a preview image) into\n"
        "`<work_dir>/report/` at the end of a run that computed something; `emflow report` rewrites it.",
    )
    pyramid: bool = key(
        True,
        "Write multiscale pyramids of the boundary map, supervoxels and segmentation (OME-Zarr levels\n"
        "s1, s2, ... down to one that fits one block; labels take each window's most frequent id),\n"
        "so that viewers (`emflow view`, napari) show large volumes at any zoom.",
    )


@dataclass(frozen=True)
class BlockingConfig(Section):
    """How the volume is cut into blocks, the unit of work of every block-wise stage."""

    block_shape: tuple[int, int, int] | Literal["auto"] = key(
        AUTO,
        "Shape of one block, (z, y, x); also the chunk shape of the block-wise output arrays, so that\n"
        'every block write is whole chunks. Must not exceed the volume along any axis. "auto": about\n'
        "2 million voxels of about equal extent in nm per axis, a whole number of the input's chunks\n"
        "along each axis where they are smaller, clipped to the volume (64 x 128 x 128 at 10 nm).",
        minimum=1,
    )
    halo: tuple[int, int, int] | Literal["auto"] = key(
        AUTO,
        "Context read around each block by the watershed supervoxel stage, (z, y, x), so that seeds and\n"
        'basins near a block face see their neighbourhood. At most `block_shape` along every axis. "auto":\n'
        "none with 3D supervoxels; with 2D supervoxels none along z and an eighth of the block in y and x\n"
        "(32 x 32 for 16 x 256 x 256). On FIB-SEM a halo of 8 x 16 x 16 cost 1.3x the run time for an ARAND\n"
        "0.000 to 0.008 lower (docs/halo_benchmarks.md): set one where that is worth it.",
        minimum=0,
    )

    def check(self, name: str, what: str) -> None:
        if isinstance(self.block_shape, tuple) and isinstance(self.halo, tuple):
            check_halo(self.block_shape, self.halo, what)


def check_affinity_offsets(offsets: tuple[tuple, ...], what: str) -> None:
    """Affinity offsets must be integer 3-vectors, none (0, 0, 0), the three nearest neighbours among them."""
    if not all(float(step).is_integer() for offset in offsets for step in offset) or any(not any(offset) for offset in offsets):
        raise ConfigError(f"{what} must be a list of non-zero integer offsets (z, y, x), got {[list(offset) for offset in offsets]}")
    missing = [list(offset) for offset in NEAREST_OFFSETS if offset not in {tuple(int(step) for step in given) for given in offsets}]
    if missing:
        raise ConfigError(
            f"{what} must hold the nearest-neighbour offsets (-1, 0, 0), (0, -1, 0) and (0, 0, -1), from which the boundary map "
            f"is derived; missing {missing}"
        )


def check_halo(block_shape: tuple[int, ...], halo: tuple[int, ...], what: str = "config key", name: str = "blocking.halo") -> None:
    """A halo (the key `name`) must not exceed the block.

    "Not above" rather than "below": a halo equal to the block still keeps the box a block reads
    within its 26 neighbours (3 blocks per axis), which is what bounds a block's read and memory
    at 27 times its own size. A larger halo breaks that bound, reading more context than data,
    and usually means the two keys were swapped or the halo was given in nm.
    """
    too_large = [axis for axis, (size, block) in enumerate(zip(halo, block_shape)) if size > block]
    if too_large:
        raise ConfigError(
            f"{what} {name} {list(halo)} is larger than blocking.block_shape {list(block_shape)} "
            f"along axis {', '.join(map(str, too_large))}; it must not exceed the block: make it smaller or the blocks larger"
        )


@dataclass(frozen=True)
class PredictConfig(Section):
    """Used when [input] boundaries_key is "": a U-Net predicts boundaries or affinities from raw data,
    block by block, and the boundary map the later stages read is derived from them."""

    model: str = key(
        "auto",
        'Model file written by `emflow train`, or "auto": the model shipped with emflow whose training\n'
        "voxel size is closest to [input] resolution, within 2x along every axis (FlyEM FIB-SEM at 10 nm\n"
        "isotropic, ssTEM at 50 x 4 x 4 nm; their cards are in emflow/data/models/). A model file trained more\n"
        "than 2x away from the input's voxel size runs, with a warning.",
    )
    patch_shape: tuple[int, int, int] = key(
        [0, 0, 0],
        "Sliding-window patch (z, y, x); 0s = the model's training patch. Each axis must be divisible by\n"
        "the network's downsampling. Larger patches waste less on overlap and need more memory.",
        minimum=0,
    )
    overlap: tuple[int, int, int] | Literal["auto"] = key(
        AUTO,
        'Overlap of neighbouring patches (z, y, x), less than the patch; blended with Gaussian weights. "auto":\n'
        "a quarter of the patch along each axis (8 x 24 x 24 for the FIB-SEM model's 32 x 96 x 96 patches).",
        minimum=0,
    )
    batch_size: int = key(1, "Patches per forward pass.")
    device: str = key("auto", '"auto" (a CUDA GPU if there is one, else the CPU), "cpu", "cuda", "cuda:1", ...')
    precision: Literal["auto", "float32", "bfloat16", "float16"] = key(
        "auto", '"auto" (bfloat16 autocast on a GPU, float32 on the CPU), "float32", "bfloat16" or "float16".'
    )
    output_dtype: Literal["float32", "uint8"] = key(
        "uint8",
        'dtype of the `predictions` output array (the network\'s channels): "uint8" (value * 255, a quarter\n'
        'of the bytes, at most 1/510 off) or "float32". The boundary map the run segments is float32 either way.',
    )

    def check(self, name: str, what: str) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{what} predict.batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class MeshesConfig(Section):
    """Triangle meshes of the segments, for 3D views in neuroglancer (`emflow view`), written in its
    precomputed format beside the output group (`<output path>.meshes/segmentation/`). Measured on
    the FlyEM dev cube, per MVox of the volume: 1.3 s and 10 MB at full resolution, 0.26 s and 2.3 MB
    at pyramid level 1 (benchmarks/meshes.py)."""

    enabled: bool = key(False, "Compute meshes at the end of the run.")
    level: int = key(1, "Pyramid level of the segmentation to mesh (0 = full resolution; needs [output] pyramid otherwise).")

    def check(self, name: str, what: str) -> None:
        if self.level < 0:
            raise ConfigError(f"{what} meshes.level must be 0 or more, got {self.level}")


@dataclass(frozen=True)
class LiftedConfig(Section):
    """Lifted multicut ([segmentation] method "multicut"): lifted edges join supervoxels that need not touch,
    solved with the local edges as a lifted multicut (built-in solvers only), globally or hierarchically.
    source "labels" (used when [input] lifted_labels_key is set): each supervoxel takes the label
    covering most of its voxels; every two labelled supervoxels 2 to `graph_depth` hops apart get a
    lifted edge with cost +weight (same label) or -weight (different labels). source "affinities":
    every two supervoxels that do not touch but that a long-range affinity channel joins get a lifted
    edge, its cost the log-odds of 1 - their mean long-range affinity with [multicut] beta (Lee et al.
    2017); needs affinities ([input] affinities_key, or a model predicting them)."""

    source: Literal["labels", "affinities"] = key(
        "labels",
        '"labels" (lifted edges from [input] lifted_labels_key; without it, a plain multicut) or "affinities"\n'
        "(lifted edges from the long-range affinity channels).",
    )
    graph_depth: int = key(3, 'source "labels": largest distance in hops of a lifted edge (at least 2: neighbours are local edges).')
    weight: float = key(1.0, 'source "labels": absolute cost of a lifted edge; positive.')
    weighting: Literal["none", "size"] = key(
        "size",
        'source "affinities": "size" scales each lifted cost by its number of voxel pairs over the largest number,\n'
        'as [costs] weighting does for local edges; "none" leaves them. "size" was chosen on the dev cube\'s tuning\n'
        "half with the shipped model's affinities (benchmarks/methods.py; figures in docs/methods_benchmarks.md).",
    )

    def check(self, name: str, what: str) -> None:
        if self.graph_depth < 2:
            raise ConfigError(f"{what} lifted.graph_depth must be at least 2 (neighbours are local edges), got {self.graph_depth}")
        if self.weight <= 0:
            raise ConfigError(f"{what} lifted.weight must be positive, got {self.weight}")


@dataclass(frozen=True)
class SegmentationConfig(Section):
    """How supervoxels become segments. "multicut": region graph, edge costs and a (lifted, optionally
    hierarchical) multicut ([multicut], [costs], [lifted]). "agglomeration": greedy mean or quantile
    agglomeration of the region graph, one segmentation per threshold ([agglomeration]).
    "mutex-watershed": blockwise mutex watershed fragments, then a mutex watershed of the fragment graph
    ([mutex_watershed]; needs affinities). "stitching": each block segmented on its own with an
    overlap, blocks matched across the overlaps and merged ([stitching]). The README compares them."""

    method: Literal["multicut", "agglomeration", "mutex-watershed", "stitching"] = key(
        "multicut", '"multicut", "agglomeration", "mutex-watershed" or "stitching".'
    )


@dataclass(frozen=True)
class AgglomerationConfig(Section):
    """[segmentation] method "agglomeration" (waterz; Funke et al. 2017): starting from the supervoxels,
    repeatedly merge the two adjacent regions whose boundary has the lowest score, 1 minus the mean (or
    quantile) affinity of all voxel pairs on it, while that score is below the threshold. Affinities
    come from the nearest-neighbour channels ([input] affinities_key, or predicted), or, for a boundary
    map, 1 - the mean boundary value of each face voxel pair. One pass gives every threshold: each
    threshold gets its own segmentation (`segmentation` for the first, `segmentation_threshold_<t>`
    for the others), and the merges with their scores are kept (graph/merges, graph/merge_scores)."""

    linkage: Literal["mean", "quantile"] = key(
        "mean", '"mean" or "quantile" (the `quantile` of the boundary\'s affinities, from 256-bin histograms).'
    )
    quantile: float = key(0.5, 'The quantile of linkage "quantile", in [0, 1] (0.5: the median, as waterz\'s default).')
    thresholds: tuple[float, ...] = key(
        [0.6],
        "Score thresholds in [0, 1] (higher merges more), no repeats. Default chosen on the dev cube's tuning half\n"
        "with the previously shipped model's predictions (benchmarks/methods.py): 0.6 for the mean (adapted Rand error\n"
        "0.224 on the held-out half); with the shipped model's the choice there is 0.65 (0.092 on the held-out half),\n"
        "and 0.55 is best for boundary maps derived from groundtruth. The optimum follows the predictions: tune it.",
    )

    def check(self, name: str, what: str) -> None:
        if not 0.0 <= self.quantile <= 1.0:
            raise ConfigError(f"{what} agglomeration.quantile must lie in [0, 1], got {self.quantile}")
        if not self.thresholds:
            raise ConfigError(f"{what} agglomeration.thresholds must name at least one threshold")
        if not all(0.0 <= threshold <= 1.0 for threshold in self.thresholds) or len(set(self.thresholds)) != len(self.thresholds):
            raise ConfigError(f"{what} agglomeration.thresholds must be distinct numbers in [0, 1], got {list(self.thresholds)}")


@dataclass(frozen=True)
class MutexWatershedConfig(Section):
    """[segmentation] method "mutex-watershed" (Wolf et al. 2018), blockwise as in elf and volara: per
    block (read with `halo`), the mutex watershed of the voxel grid, attractive edges the nearest-
    neighbour affinities, repulsive edges 1 - the long-range ones, cut to the block and split into
    connected fragments, small fragments dissolved; then the mutex watershed of the global fragment
    graph, attractive weight the mean nearest-neighbour affinity of touching fragments, repulsive
    weight 1 - the mean long-range affinity of fragment pairs, both accumulated across blocks. Needs
    affinities with long-range channels. Defaults chosen on the dev cube's tuning half with the shipped
    model's predictions (benchmarks/methods.py, strides (1, 1, 1), (1, 2, 2), (2, 4, 4) x min_size 0, 100)."""

    strides: tuple[int, int, int] = key(
        [2, 4, 4],
        "Keep the repulsive edges of every strides-th voxel per axis (z, y, x): faster, and less\n"
        "over-segmentation from noisy long-range affinities.",
        minimum=1,
    )
    randomized_strides: bool = key(
        False, "Keep a random 1 / prod(strides) of the repulsive edges instead (seeded per block: `seed` + block id)."
    )
    seed: int = key(0, "Seed of `randomized_strides`.")
    min_size: int = key(
        100,
        "Fragments smaller than this (voxels) are dissolved into their neighbours by a seeded watershed on\n"
        "the boundary map the affinities imply.",
    )
    halo: tuple[int, int, int] | Literal["auto"] = key(
        AUTO,
        'Context read around each block for its fragments, (z, y, x); "auto" = the longest offset per axis, so\n'
        "that every repulsive edge of a block's voxels is seen.",
        minimum=0,
    )

    def check(self, name: str, what: str) -> None:
        if self.min_size < 0:
            raise ConfigError(f"{what} mutex_watershed.min_size must be 0 or more, got {self.min_size}")


@dataclass(frozen=True)
class StitchingConfig(Section):
    """[segmentation] method "stitching" (Plaza & Berg 2016), pluggable: each block is segmented on its own,
    grown by `overlap` voxels per side; the objects of face-neighbouring blocks are matched in the slab
    where the grown blocks overlap and merged globally by union-find. The per-block segmenter is
    `method` ("multicut": supervoxels ([supervoxels]) and a multicut of the block's own region graph
    with [multicut] beta and solver; "agglomeration": the block's region graph agglomerated with
    [agglomeration] linkage, quantile and its first threshold), or a plugin. Signature:
      function(boundaries, *, resolution, mask, **parameters) -> labels
    boundaries: float32 (z, y, x) of the grown block; mask: bool array or None. Returns integer labels
    of the same shape, 0 = background. A pair (a, b) of objects of two blocks overlapping in n(a, b)
    voxels is a candidate when n(a, b) >= min_overlap; f_a, f_b are n(a, b) over each object's slab
    voxels. Modes: "conservative" merges candidates with f_a and f_b >= fraction that meet in one
    connected region only and lie in no second such pair (few merges, many splits); "medium" merges
    mutual best candidates; "aggressive" also candidates with max(f_a, f_b) >= 0.5 (bridges objects
    one block split)."""

    default_function = ""
    reserved = frozenset({"function", "mode", "overlap", "method", "min_overlap", "fraction"})

    function: str = key("", '"" = the built-in segmenter named by `method`, or a plugin "package.module:function".')
    method: Literal["multicut", "agglomeration"] = key("multicut", 'The built-in per-block segmenter: "multicut" or "agglomeration".')
    mode: Literal["conservative", "medium", "aggressive"] = key(
        "medium",
        '"conservative", "medium" or "aggressive" (see above). "medium" was best on the dev cube\'s tuning half\n'
        "with the shipped model's predictions (benchmarks/methods.py).",
    )
    overlap: tuple[int, int, int] = key([8, 8, 8], "Voxels (z, y, x) each block is grown by per side; at most the block shape.", minimum=1)
    min_overlap: int = key(20, "Fewest common voxels of a candidate pair (and of a meeting region, in conservative mode).")
    fraction: float = key(0.8, "Overlap fraction of conservative mode, in (0.5, 1].")
    extra: tuple[tuple[str, Any], ...] = field(default=())  # a plugin's keys (see Section)

    def check(self, name: str, what: str) -> None:
        if self.uses_plugin:
            resolve_function(self.function, f"{name}.function")
        if self.min_overlap < 1:
            raise ConfigError(f"{what} stitching.min_overlap must be at least 1, got {self.min_overlap}")
        if not 0.5 < self.fraction <= 1.0:
            raise ConfigError(f"{what} stitching.fraction must lie in (0.5, 1], got {self.fraction}")


@dataclass(frozen=True)
class SchedulingConfig(Section):
    """How the task graph runs; none of these keys changes a result."""

    block_groups: int = key(
        0,
        'The block tasks of one stage run inside at most this many Luigi tasks ("block groups"), each\n'
        "running its blocks one after the other in one worker process. Luigi's scheduler slows down with\n"
        "the square of the number of tasks it knows, and each task it runs with several workers costs a\n"
        "process fork, so fewer groups are faster; more balance the load better. 0 = 4 per worker process\n"
        "of the `emflow run` that builds the task graph (1 with a single worker process), or, with a central scheduler (where several\n"
        "`emflow run` processes with different --workers must agree on the groups), 64; with the local\n"
        "scheduler and several workers, no fewer than 4 blocks per group where a stage has few, and groups\n"
        "that taper (the last a third of the first) and run those with the most blocks left to run first, so that\n"
        "the workers end together.\n"
        "Set it explicitly for more than 16 worker processes in all. A value at least the number of blocks\n"
        "makes every block its own Luigi task, each shown in luigid's visualiser.",
    )
    retries: int = key(
        2,
        "A failed block (or global task) is run again up to this many times in the same worker before the\n"
        "run counts it as failed: a transient failure (a flaky network filesystem, a killed process) then\n"
        "costs one block, not a rerun. Its log keeps every attempt.",
    )

    def check(self, name: str, what: str) -> None:
        if self.block_groups < 0:
            raise ConfigError(f"{what} scheduling.block_groups must be 0 (auto) or more, got {self.block_groups}")
        if self.retries < 0:
            raise ConfigError(f"{what} scheduling.retries must be 0 or more, got {self.retries}")


@dataclass(frozen=True)
class SupervoxelsConfig(Section):
    """Stage 1 (pluggable): supervoxels, per block with halo. Signature:
      function(boundaries, *, resolution, two_d, mask, **parameters) -> labels
    boundaries: float32 (z, y, x) block plus halo; resolution: nm (z, y, x); two_d: bool; mask: bool
    array or None. Returns integer labels of the same shape, 0 only where `mask` is False."""

    default_function = "emflow.supervoxels:distance_transform_watershed"
    reserved = frozenset({"function", "dimensionality", "anisotropy_threshold"})

    function: str = key(default_function, 'The supervoxel function, "package.module:function".')
    dimensionality: Literal["auto", "2d", "3d"] = key(
        "auto",
        '"auto" = 2D per z-slice when z resolution / xy resolution >= anisotropy_threshold, else 3D;\n'
        '"2d" or "3d" forces the choice. Resolved here and passed to the function as `two_d`.',
    )
    anisotropy_threshold: float = key(2.0, 'Ratio of z to xy voxel size from which "auto" chooses 2D supervoxels.')
    threshold: float = key(0.5, "Voxels with boundary value below this are foreground for the distance transform.")
    sigma_seeds: float = key(2.0, "Gaussian sigma for smoothing the distance transform before finding seeds.")
    sigma_weights: float = key(
        1.0,
        "Gaussian sigma for smoothing the boundary map used as the flooding heightmap. Membranes are\n"
        "only a few voxels thick; stronger smoothing erodes thin ones and merges neurons.",
    )
    min_size: int = key(25, "Supervoxels smaller than this (voxels) are dissolved into their neighbours.")
    alpha: float = key(0.8, "Heightmap = alpha * boundaries + (1 - alpha) * inverted normalised distance.")
    extra: tuple[tuple[str, Any], ...] = field(default=())  # a plugin's keys (see Section)

    def check(self, name: str, what: str) -> None:
        resolve_function(self.function, f"{name}.function")


@dataclass(frozen=True)
class CostsConfig(Section):
    """Stage 4 (pluggable): edge costs from edge features. Signature:
      function(features, *, beta, **parameters) -> edge_costs
    features: float64 (number_of_edges, 6), columns mean, std, min, max, size of the boundary map on
    the face between two supervoxels and z_size, the face's voxel pairs between sections
    (emflow.graph.FEATURE_NAMES). Returns float64 (number_of_edges,); positive = attractive."""

    default_function = "emflow.costs:edge_costs_from_features"
    reserved = frozenset({"function", "classifier"})

    function: str = key(default_function, 'The edge cost function, "package.module:function".')
    weighting: Literal["auto", "none", "size", "orientation"] = key(
        "auto",
        '"size" scales costs by the face size relative to the largest face, so that many tiny, noisy\n'
        'faces cannot outvote the large faces of the same pair of objects; "orientation" does so for the pairs\n'
        'between sections and the in-plane pairs apart (elf\'s "xyz"), so that on serial-section data the large\n'
        'overlaps between sections cannot outvote in-plane evidence; "none" leaves costs as they are. "auto":\n'
        '"orientation" where the supervoxels are per section ([supervoxels] dimensionality), else "size".',
    )
    classifier: str = key(
        AUTO,
        "Learned edge costs (emflow.edge_classifier): an edge classifier file (`emflow train-edges`) whose cut\n"
        "probabilities, from statistics of the boundary map and every affinity channel on each face and the\n"
        "sizes, replace the mean boundary value in the costs (with [multicut] beta and `weighting`); needs\n"
        'affinities with the channels it was trained on. "" = costs from the boundary map by `function`.\n'
        '"auto" = the classifier shipped with the model the run predicts with, where the model has one (the\n'
        'FIB-SEM model does), else "": raw data with the shipped FIB-SEM model gets learned costs, a given boundary\n'
        "map or given affinities get boundary-map costs.",
    )
    extra: tuple[tuple[str, Any], ...] = field(default=())  # a plugin's keys (see Section)

    def check(self, name: str, what: str) -> None:
        resolve_function(self.function, f"{name}.function")
        if self.classifier not in ("", AUTO) and self.function != self.default_function:
            raise ConfigError(f"{what} costs.classifier and costs.function = {self.function!r} both make the costs: give one")


@dataclass(frozen=True)
class MulticutConfig(Section):
    """Stage 5 (pluggable): multicut on the global graph. Signature:
      function(number_of_nodes, edges, edge_costs, **parameters) -> node_labels
    edges: uint64 (number_of_edges, 2); node_labels: uint64 (number_of_nodes,), 0 only for node 0."""

    default_function = "emflow.multicut:solve_multicut"
    reserved = frozenset({"function", "beta", "n_scales"})

    function: str = key(default_function, 'The multicut function, "package.module:function".')
    beta: float = key(
        0.5,
        "Boundary bias: costs = log((1 - p) / p) + log((1 - beta) / beta). Lower beta merges\n"
        "more. Read by the edge-cost stage, not passed to the solver.",
    )
    solver: Literal["greedy-additive", "kernighan-lin", "fusion-moves"] = key(
        "kernighan-lin", '"greedy-additive", "kernighan-lin" (greedy additive warm start) or "fusion-moves".'
    )
    seed: int = key(0, "Seed of the solver's randomised steps, for reproducible results.")
    n_scales: int = key(
        0,
        "Hierarchical solve (Pape et al. 2017): 0 = one global solve. With n > 0, for scales 0 .. n-1 the\n"
        "edges inside each block of 2^scale base blocks per axis are solved as sub-problems (one task per\n"
        "block), every inner edge no sub-problem cuts is contracted, and the reduced problem is solved\n"
        "globally at the end. Sub-problems use `solver` and `seed`, so it needs the built-in function.",
    )
    extra: tuple[tuple[str, Any], ...] = field(default=())  # a plugin's keys (see Section)

    def check(self, name: str, what: str) -> None:
        resolve_function(self.function, f"{name}.function")
        if not 0.0 < self.beta < 1.0:
            raise ConfigError(f"{what} multicut.beta must lie strictly between 0 and 1, got {self.beta}")
        if self.n_scales < 0:
            raise ConfigError(f"{what} multicut.n_scales must be 0 or more, got {self.n_scales}")
        if self.n_scales and self.uses_plugin:
            raise ConfigError(
                f"{what} multicut.n_scales > 0 solves sub-problems with the built-in solvers; "
                f"it cannot be combined with multicut.function = {self.function!r}"
            )


@dataclass(frozen=True)
class RunConfig:
    """A workflow config: one field per section."""

    input: InputConfig
    output: OutputConfig
    blocking: BlockingConfig
    predict: PredictConfig
    meshes: MeshesConfig
    scheduling: SchedulingConfig
    segmentation: SegmentationConfig
    supervoxels: SupervoxelsConfig
    costs: CostsConfig
    multicut: MulticutConfig
    lifted: LiftedConfig
    agglomeration: AgglomerationConfig
    mutex_watershed: MutexWatershedConfig
    stitching: StitchingConfig

    # Keys holding paths, resolved against the config file's folder.
    paths: ClassVar[tuple[tuple[str, str], ...]] = (
        ("input", "path"),
        ("output", "path"),
        ("output", "work_dir"),
        ("predict", "model"),
        ("costs", "classifier"),
    )

    @property
    def predicting(self) -> bool:
        """Whether the boundary map is predicted from raw data (neither `boundaries_key` nor `affinities_key` given)."""
        return not self.input.boundaries_key and not self.input.affinities_key

    @property
    def method(self) -> str:
        return self.segmentation.method

    @property
    def lifted_multicut(self) -> bool:
        """Whether the multicut is lifted: lifted edges from a label volume or from affinities."""
        return self.method == "multicut" and (bool(self.input.lifted_labels_key) or self.lifted.source == "affinities")

    @property
    def needs_affinities(self) -> str:
        """The setting that needs affinities with long-range channels, as messages name it ("" if none does)."""
        if self.method == "mutex-watershed":
            return "segmentation.method = 'mutex-watershed'"
        if self.lifted_multicut and self.lifted.source == "affinities":
            return "lifted.source = 'affinities'"
        return ""

    def check(self) -> None:
        """Checks across sections."""
        if self.meshes.enabled and self.meshes.level and not self.output.pyramid:
            raise ConfigError(
                f"config key meshes.level = {self.meshes.level} meshes a pyramid level: set output.pyramid = true, or meshes.level = 0"
            )
        lifted_key = 'lifted.source = "affinities"' if self.lifted.source == "affinities" else "input.lifted_labels_key"
        if self.lifted_multicut and self.multicut.uses_plugin:
            raise ConfigError(
                f"config key {lifted_key} asks for a lifted multicut, solved with the built-in solvers; "
                f"it cannot be combined with multicut.function = {self.multicut.function!r}"
            )
        if self.lifted.source == "affinities" and self.input.lifted_labels_key:
            raise ConfigError(
                'config keys lifted.source = "affinities" and input.lifted_labels_key are both given; lifted edges come from one '
                'source: set lifted.source = "labels" or remove input.lifted_labels_key'
            )
        method = f"segmentation.method = {self.method!r}"
        if self.method != "multicut":
            for given, name in (
                (self.input.lifted_labels_key, "input.lifted_labels_key"),
                (self.lifted.source == "affinities", "lifted.source"),
                (self.multicut.n_scales, "multicut.n_scales"),
            ):
                if given:
                    raise ConfigError(f"config key {name} belongs to segmentation.method = 'multicut'; it cannot be combined with {method}")
        if self.method == "mutex-watershed" and self.input.supervoxels_key:
            raise ConfigError(
                f"config key input.supervoxels_key cannot be combined with {method}: the mutex watershed makes its own fragments"
            )
        if self.needs_affinities and self.input.boundaries_key:
            raise ConfigError(
                f"config key {self.needs_affinities} needs affinities, and input.boundaries_key gives a boundary map: give input.affinities_key "
                "instead, or leave both out to predict affinities from input.raw_key"
            )
