"""Multiscale pyramids of the output images: level k + 1 of the boundary map and the supervoxels,
block by block (the segmentations' levels are written from the supervoxels', `tasks.write`).

Each block of level k + 1 reads the box of level k it covers (`emflow.pyramid.source_box`, no halo)
and writes its own box: whole chunks. Labels take each window's most frequent id, images its mean.
"""

from __future__ import annotations

import numpy as np

from emflow.blocking import Blocking
from emflow.pyramid import downsample_image, downsample_labels, source_parts
from emflow.storage.store import level_name

from .context import BlockContext, Run
from .spec import Read, StageSpec, Write, level_blocks, no_global_reads


def _source_boxes(level: int):
    """Region rule: for each block of level `level`, the box of level `level - 1` it is made from."""

    def region(run: Run, blocking: Blocking) -> np.ndarray:
        factors = np.asarray(run.geometry.level_factors[level - 1], dtype=np.int64)
        source_shape = np.asarray(run.geometry.level_shape(level - 1), dtype=np.int64)
        boxes = blocking.boxes_with_halo((0, 0, 0))
        return np.stack([boxes[:, 0] * factors, np.minimum(boxes[:, 1] * factors, source_shape)], axis=1)

    return region


def _downsample(level: int, images: tuple[tuple[str, bool], ...]):
    def run(block: BlockContext) -> dict:
        factors = block.geometry.level_factors[level - 1]
        chunk_shape = block.geometry.level_blocking(level - 1).block_shape
        for name, label in images:
            source_name = level_name(name, level - 1)
            source = block.region(source_name)
            downsample = downsample_labels if label else downsample_image
            # A source chunk at a time (`source_parts`), not the whole region at once; both
            # downsamplings keep the dtype.
            result = np.empty(block.box.shape, dtype=block.store.volumes[source_name].dtype)
            for part in source_parts(source, chunk_shape, factors):
                values = downsample(block.read_part(source_name, part), factors)
                target = tuple((first - origin) // factor for first, origin, factor in zip(part.begin, source.begin, factors))
                result[tuple(slice(first, first + size) for first, size in zip(target, values.shape))] = values
            block.write(level_name(name, level), result)
        return {}

    return run


def pyramid_stage(level: int, images: tuple[tuple[str, bool], ...]) -> StageSpec:
    """Level `level` (1 or more) of the images `images`, pairs of (volume name, is labels)."""
    return StageSpec(
        name=f"pyramid_s{level}",
        blockwise=True,
        reads=tuple(Read.array(level_name(name, level - 1), _source_boxes(level)) for name, _ in images),
        writes=tuple(Write.array(level_name(name, level)) for name, _ in images),
        blocking=level_blocks(level),
        run=_downsample(level, images),
        content_key=no_global_reads,
    )
