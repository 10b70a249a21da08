"""The workflow config (`emflow run CONFIG`): every section and key, its default and its meaning.

Only the input, the output and the voxel size have no default: a config that names them gets the
recommended pipeline. The block shape and the halo default to "auto", resolved from the volume
when the run is set up (`emflow.storage.geometry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from emflow.errors import ConfigError

from .schema import AUTO, Section, key, resolve_function

HEADER = """emflow configuration: every key emflow knows, with its default.

A config file names only what it changes; the rest comes from here. A key or section not listed
here is an error, as is a value of another type. Keys marked (required) must be written in every
config file; the value shown for them here is only a placeholder. Relative paths are relative to
the config file. Stages marked "pluggable" take `function = "package.module:function"`; the other
keys of that section are passed to the function as keyword arguments (for a plugin, the keys its
signature accepts). Lengths are in voxels unless a key says nm."""

ROLES = ("boundaries", "supervoxels", "mask", "raw", "lifted_labels")
"""The input datasets a config can name (`[input] <role>_key`)."""


@dataclass(frozen=True)
class InputConfig(Section):
    """The input volumes: raw EM data or a boundary map, and optional extras."""

    path: str = key("", "Container with the input volumes: a zarr group or array (v2 or v3), or an HDF5 file.\n"
                    "TIFF stacks are converted first with `emflow import`.", required=True)
    boundaries_key: str = key("", "Boundary map in `path`: float, values in [0, 1], 1 = membrane. Axes (z, y, x). \"\" = predict it\n"
                              "from `raw_key` with a CNN (see [predict]). One of the two keys is required.")
    raw_key: str = key("", "Raw EM data in `path`: unsigned integers, or floats in [0, 1]. Required when `boundaries_key`\n"
                       "is \"\" (the CNN reads it); otherwise optional, checked for shape and kept for provenance.")
    supervoxels_key: str = key("", "Precomputed supervoxels in `path` (optional, \"\" = run the watershed). Any unsigned or signed\n"
                               "integer ids; 0 = background. They are relabelled to consecutive ids 1..n.")
    lifted_labels_key: str = key("", "Labels for lifted multicut in `path` (optional, \"\" = plain multicut): integer object ids, 0 =\n"
                                 "unknown; e.g. a previous segmentation or sparse proofreading. See [lifted].")
    mask_key: str = key("", "Foreground mask in `path` (optional, \"\" = everything is foreground). Voxels where the mask is 0\n"
                        "get supervoxel and segment id 0 and take part in no edge.")
    resolution: tuple[float, float, float] = key((), "Voxel size in nm, (z, y, x); positive.", required=True)

    def check(self, name: str, what: str) -> None:
        if not all(math.isfinite(value) and value > 0 for value in self.resolution):
            raise ConfigError(f"{what} input.resolution must be three positive numbers, the voxel size in nm (z, y, x), got {list(self.resolution)}")
        if not self.boundaries_key and not self.raw_key:
            raise ConfigError(f"{what} input.boundaries_key or input.raw_key is required (without a boundary map, boundaries are predicted from raw data)")

    def keys(self) -> dict[str, str]:
        """The dataset key of every input role given (see `ROLES`)."""
        return {role: getattr(self, f"{role}_key") for role in ROLES if getattr(self, f"{role}_key")}


@dataclass(frozen=True)
class OutputConfig(Section):
    """Where results go."""

    path: str = key("", "Zarr v3 group the results are written to; created if missing.", required=True)
    work_dir: str = key("", "Folder for per-block partial results, completion records and logs (\"\" = `<path>.work`).")
    report: bool = key(True, "Write a run report (segments, sizes, time and memory per stage, a preview image) into\n"
                       "`<work_dir>/report/` at the end of a run that computed something; `emflow report` rewrites it.")
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
        "every block write is whole chunks. Must not exceed the volume along any axis. \"auto\": about\n"
        "2 million voxels of about equal extent in nm per axis, a whole number of the input's chunks\n"
        "along each axis where they are smaller, clipped to the volume (64 x 128 x 128 at 10 nm).",
        minimum=1,
    )
    halo: tuple[int, int, int] | Literal["auto"] = key(
        AUTO,
        "Context read around each block by the supervoxel stage, (z, y, x), so that seeds and basins\n"
        "near a block face see their neighbourhood. At most `block_shape` along every axis. \"auto\":\n"
        "an eighth of the block shape (8 x 16 x 16 for 64 x 128 x 128 blocks).",
        minimum=0,
    )

    def check(self, name: str, what: str) -> None:
        if isinstance(self.block_shape, tuple) and isinstance(self.halo, tuple):
            check_halo(self.block_shape, self.halo, what)


def check_halo(block_shape: tuple[int, ...], halo: tuple[int, ...], what: str = "config key") -> None:
    """A halo must not exceed the block.

    "Not above" rather than "below": a halo equal to the block still keeps the box a block reads
    within its 26 neighbours (3 blocks per axis), which is what bounds a block's read and memory
    at 27 times its own size. A larger halo breaks that bound, reading more context than data,
    and usually means the two keys were swapped or the halo was given in nm.
    """
    too_large = [axis for axis, (size, block) in enumerate(zip(halo, block_shape)) if size > block]
    if too_large:
        raise ConfigError(
            f"{what} blocking.halo {list(halo)} is larger than blocking.block_shape {list(block_shape)} "
            f"along axis {', '.join(map(str, too_large))}; a halo must not exceed the block: make it smaller or the blocks larger"
        )


@dataclass(frozen=True)
class PredictConfig(Section):
    """Used when [input] boundaries_key is "": a U-Net predicts boundaries or affinities from raw data,
    block by block, and the boundary map the later stages read is derived from them."""

    model: str = key("", "Model file written by `emflow train`; \"\" = the model shipped with emflow (trained on FlyEM\n"
                     "FIB-SEM at 10 nm isotropic, see emflow/data/models/flyem_fib_affinities.md).")
    patch_shape: tuple[int, int, int] = key([0, 0, 0], "Sliding-window patch (z, y, x); 0s = the model's training patch. Each axis must be divisible by\n"
                                            "the network's downsampling. Larger patches waste less on overlap and need more memory.", minimum=0)
    overlap: tuple[int, int, int] = key([8, 24, 24], "Overlap of neighbouring patches (z, y, x), less than the patch; blended with Gaussian weights.", minimum=0)
    batch_size: int = key(1, "Patches per forward pass.")
    device: str = key("auto", "\"auto\" (a CUDA GPU if there is one, else the CPU), \"cpu\", \"cuda\", \"cuda:1\", ...")
    precision: Literal["auto", "float32", "bfloat16", "float16"] = key(
        "auto", "\"auto\" (bfloat16 autocast on a GPU, float32 on the CPU), \"float32\", \"bfloat16\" or \"float16\"."
    )
    output_dtype: Literal["float32", "uint8"] = key(
        "float32", "dtype of the `predictions` and `boundaries` output arrays: \"float32\", or \"uint8\" (value * 255,\n"
        "a quarter of the size, 1/510 maximum error)."
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
    """Used when [input] lifted_labels_key is set. Each supervoxel takes the label covering most of its
    voxels; every two labelled supervoxels 2 to `graph_depth` hops apart in the region adjacency graph
    get a lifted edge with cost +weight (same label, attractive) or -weight (different labels,
    repulsive), solved with the local edges as a lifted multicut (built-in solvers only)."""

    graph_depth: int = key(3, "Largest distance in hops of a lifted edge (at least 2: neighbours are local edges).")
    weight: float = key(1.0, "Absolute cost of a lifted edge; positive.")

    def check(self, name: str, what: str) -> None:
        if self.graph_depth < 2:
            raise ConfigError(f"{what} lifted.graph_depth must be at least 2 (neighbours are local edges), got {self.graph_depth}")
        if self.weight <= 0:
            raise ConfigError(f"{what} lifted.weight must be positive, got {self.weight}")


@dataclass(frozen=True)
class SchedulingConfig(Section):
    """How the task graph runs; none of these keys changes a result."""

    block_groups: int = key(
        0,
        "The block tasks of one stage run inside at most this many Luigi tasks (\"block groups\"), each\n"
        "running its blocks one after the other in one worker process. Luigi's scheduler slows down with\n"
        "the square of the number of tasks it knows, and each task it runs with several workers costs a\n"
        "process fork, so fewer groups are faster; more balance the load better. 0 = 4 per worker process\n"
        "of the `emflow run` that builds the task graph, or, with a central scheduler (where several\n"
        "`emflow run` processes with different --workers must agree on the groups), 64. Set it explicitly\n"
        "for more than 16 worker processes in all. A value at least the number of blocks makes every block\n"
        "its own Luigi task, each shown in luigid's visualiser.",
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

    function: str = key(default_function, "The supervoxel function, \"package.module:function\".")
    dimensionality: Literal["auto", "2d", "3d"] = key(
        "auto", "\"auto\" = 2D per z-slice when z resolution / xy resolution >= anisotropy_threshold, else 3D;\n"
        "\"2d\" or \"3d\" forces the choice. Resolved here and passed to the function as `two_d`."
    )
    anisotropy_threshold: float = key(2.0, "Ratio of z to xy voxel size from which \"auto\" chooses 2D supervoxels.")
    threshold: float = key(0.5, "Voxels with boundary value below this are foreground for the distance transform.")
    sigma_seeds: float = key(2.0, "Gaussian sigma for smoothing the distance transform before finding seeds.")
    sigma_weights: float = key(1.0, "Gaussian sigma for smoothing the boundary map used as the flooding heightmap. Membranes are\n"
                               "only a few voxels thick; stronger smoothing erodes thin ones and merges neurons.")
    min_size: int = key(25, "Supervoxels smaller than this (voxels) are dissolved into their neighbours.")
    alpha: float = key(0.8, "Heightmap = alpha * boundaries + (1 - alpha) * inverted normalised distance.")
    extra: tuple[tuple[str, Any], ...] = field(default=())  # a plugin's keys (see Section)

    def check(self, name: str, what: str) -> None:
        resolve_function(self.function, f"{name}.function")


@dataclass(frozen=True)
class CostsConfig(Section):
    """Stage 4 (pluggable): edge costs from edge features. Signature:
      function(features, *, beta, **parameters) -> edge_costs
    features: float64 (number_of_edges, 5), columns mean, std, min, max, size of the boundary map on
    the face between two supervoxels. Returns float64 (number_of_edges,); positive = attractive."""

    default_function = "emflow.costs:edge_costs_from_features"
    reserved = frozenset({"function"})

    function: str = key(default_function, "The edge cost function, \"package.module:function\".")
    weighting: Literal["none", "size"] = key(
        "size", "\"size\" scales costs by the face size relative to the largest face, so that many tiny, noisy\n"
        "faces cannot outvote the large faces of the same pair of objects; \"none\" leaves costs as they are."
    )
    extra: tuple[tuple[str, Any], ...] = field(default=())  # a plugin's keys (see Section)

    def check(self, name: str, what: str) -> None:
        resolve_function(self.function, f"{name}.function")


@dataclass(frozen=True)
class MulticutConfig(Section):
    """Stage 5 (pluggable): multicut on the global graph. Signature:
      function(number_of_nodes, edges, edge_costs, **parameters) -> node_labels
    edges: uint64 (number_of_edges, 2); node_labels: uint64 (number_of_nodes,), 0 only for node 0."""

    default_function = "emflow.multicut:solve_multicut"
    reserved = frozenset({"function", "beta", "n_scales"})

    function: str = key(default_function, "The multicut function, \"package.module:function\".")
    beta: float = key(0.5, "Boundary bias: costs = log((1 - p) / p) + log((1 - beta) / beta). Lower beta merges\n"
                      "more. Read by the edge-cost stage, not passed to the solver.")
    solver: Literal["greedy-additive", "kernighan-lin", "fusion-moves"] = key(
        "kernighan-lin", "\"greedy-additive\", \"kernighan-lin\" (greedy additive warm start) or \"fusion-moves\"."
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
    lifted: LiftedConfig
    scheduling: SchedulingConfig
    supervoxels: SupervoxelsConfig
    costs: CostsConfig
    multicut: MulticutConfig

    # Keys holding paths, resolved against the config file's folder.
    paths: ClassVar[tuple[tuple[str, str], ...]] = (("input", "path"), ("output", "path"), ("output", "work_dir"), ("predict", "model"))

    @property
    def predicting(self) -> bool:
        """Whether the boundary map is predicted from raw data (no `boundaries_key` given)."""
        return not self.input.boundaries_key

    @property
    def lifted_multicut(self) -> bool:
        return bool(self.input.lifted_labels_key)

    def check(self) -> None:
        """Checks across sections."""
        if self.meshes.enabled and self.meshes.level and not self.output.pyramid:
            raise ConfigError(f"config key meshes.level = {self.meshes.level} meshes a pyramid level: set output.pyramid = true, or meshes.level = 0")
        if self.lifted_multicut and self.multicut.uses_plugin:
            raise ConfigError(
                "config key input.lifted_labels_key asks for a lifted multicut, solved with the built-in solvers; "
                f"it cannot be combined with multicut.function = {self.multicut.function!r}"
            )
