"""The volume's geometry for a run: shape, voxel size, block shape and halo ("auto" resolved here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from emflow.blocking import Blocking
from emflow.config import AUTO, check_halo
from emflow.errors import ConfigError
from emflow.pyramid import pyramid_factors

from .ome import level_shapes

# "auto" blocks: this many voxels, twice as long in y and x as in z in nm: 64 x 128 x 128 at
# isotropic voxels, the shape measured fastest end to end (docs/benchmarks.md), 16 x 256 x 256 at
# 50 x 4 x 4 nm serial sections.
AUTO_BLOCK_VOXELS = 64 * 128 * 128
AUTO_BLOCK_ASPECT_NM = (1.0, 2.0, 2.0)
# "auto" halo of the watershed supervoxels: with 3D supervoxels none; with 2D (per-section)
# supervoxels none along z, whose sections are segmented one by one, and this fraction of the
# block in y and x (32 x 32 for 16 x 256 x 256). Measured (docs/halo_benchmarks.md):
# - 3D, FlyEM dev cube, 64 x 128 x 128 blocks: a halo of 8 x 16 x 16 (this default until then)
#   made the 62.5 MVox run 22.2 s instead of 17.4 s (the watershed on 1.95x the block's voxels,
#   26 neighbouring chunks decoded) and bought ARAND 0.002 on GT-derived boundaries, 0.000 with
#   the CNN (4x8x8 with 32 x 64 x 64 blocks: 0.008); the multicut mends most of the faces.
# - 2D, ISBI 2012 held-out sections: an in-plane halo of 32 buys V_rand 0.0075, a z halo nothing.
AUTO_HALO_FRACTION_2D = 1 / 8


@dataclass(frozen=True)
class Geometry:
    """Shape (z, y, x) in voxels, voxel size in nm, and the blocking of a run; `level_factors`:
    the downsampling factors from each pyramid level to the next (`emflow.pyramid.pyramid_factors`),
    empty without a pyramid."""

    shape: tuple[int, ...]
    resolution: tuple[float, ...]
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    level_factors: tuple[tuple[int, ...], ...] = ()

    @property
    def blocking(self) -> Blocking:
        return Blocking(self.shape, self.block_shape)

    def level_shape(self, level: int) -> tuple[int, ...]:
        return level_shapes(self.shape, self.level_factors[:level])[-1]

    def level_scale(self, level: int) -> tuple[int, ...]:
        """Voxels of level 0 per voxel of pyramid level `level`, per axis."""
        return tuple(math.prod(factors[axis] for factors in self.level_factors[:level]) for axis in range(len(self.shape)))

    def level_resolution(self, level: int) -> tuple[float, ...]:
        """Voxel size of pyramid level `level`, nm."""
        return tuple(size * factor for size, factor in zip(self.resolution, self.level_scale(level)))

    def level_blocking(self, level: int) -> Blocking:
        """Blocks of pyramid level `level`: the block shape, clipped to the level's shape."""
        shape = self.level_shape(level)
        return Blocking(shape, tuple(min(block, size) for block, size in zip(self.block_shape, shape)))


def resolve_geometry(
    shape, resolution, block_shape, halo, input_chunks=None, *, pyramid: bool = False, per_section_supervoxels: bool = False
) -> Geometry:
    """The geometry of a run from the config's `[blocking]` values, "auto" resolved.

    "auto" block shape (`auto_block_shape`), clipped to the volume; "auto" halo (`auto_halo`):
    none, or with `per_section_supervoxels` none along z and an eighth of the block in y and x. An
    explicit block shape larger than the volume, or a halo larger than the block, raises
    ConfigError naming the key. `pyramid`: levels down to one that fits one block.
    """
    shape = tuple(int(size) for size in shape)
    if block_shape == AUTO:
        block_shape = auto_block_shape(shape, resolution, input_chunks)
    elif any(block > size for block, size in zip(block_shape, shape)):
        raise ConfigError(
            f"config key blocking.block_shape {list(block_shape)} is larger than the volume {list(shape)} along axis "
            f"{', '.join(str(axis) for axis, (block, size) in enumerate(zip(block_shape, shape)) if block > size)}; make the blocks smaller"
        )
    block_shape = tuple(int(size) for size in block_shape)
    if halo == AUTO:
        halo = auto_halo(block_shape, per_section_supervoxels)
    halo = tuple(int(size) for size in halo)
    check_halo(block_shape, halo)
    level_factors = tuple(pyramid_factors(resolution, shape, block_shape)) if pyramid else ()
    return Geometry(shape, tuple(float(value) for value in resolution), block_shape, halo, level_factors)


def auto_halo(block_shape, per_section_supervoxels: bool) -> tuple[int, ...]:
    """The "auto" halo of the watershed supervoxels for blocks of `block_shape` (z, y, x)."""
    if not per_section_supervoxels:
        return (0,) * len(block_shape)
    return (0, *(int(size * AUTO_HALO_FRACTION_2D) for size in block_shape[1:]))


def auto_block_shape(shape, resolution, input_chunks=None) -> tuple[int, ...]:
    """About `AUTO_BLOCK_VOXELS` voxels with extents in nm in the ratio `AUTO_BLOCK_ASPECT_NM`,
    each axis rounded to a power of two, or to whole input chunks along axes where the input's
    chunks are smaller than that; clipped to the volume.

    Whole chunks: a block then decodes no chunk that other blocks decode too (except for halos).
    """
    # Extents e_i = c * aspect_i / resolution_i voxels with prod(e_i) = AUTO_BLOCK_VOXELS.
    relative = [aspect / voxel for aspect, voxel in zip(AUTO_BLOCK_ASPECT_NM, resolution)]
    scale = (AUTO_BLOCK_VOXELS / math.prod(relative)) ** (1 / len(relative))
    block = []
    for axis, extent in enumerate(relative):
        target = max(1.0, extent * scale)
        size = 2 ** round(math.log2(target))
        chunk = input_chunks[axis] if input_chunks else None
        if chunk and chunk < size:
            size = max(1, round(target / chunk)) * chunk
        block.append(min(size, shape[axis]))
    return tuple(block)
