"""Which section the run report's preview shows, and its pieces saved by the blocks that hold them.

The preview shows the middle z section of the segmentation over the data under it (`background`),
at the finest pyramid level that fits `PREVIEW_PIXELS` (`preview_level`). Reading that section
back at the end of a run decodes every chunk it crosses: on the 62.5 MVox benchmark run, 16 chunks
of 64 x 128 x 128 of the segmentation and 16 of the boundary map for a 500 x 500 section, 0.09 of
the report's 0.16 s. The blocks that write the segmentation's section, and the supervoxel blocks
that read the boundary map's, hold it in memory already: each saves its piece (`section_piece`),
and the report puts the pieces together (`emflow.workflows.report.preview_sections`), reading the
volumes only where a piece is missing (a run of an earlier emflow).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emflow.blocking import Box
from emflow.report.images import PREVIEW_PIXELS
from emflow.storage.store import level_name

from .affinities import INPUT as AFFINITIES
from .context import Run

# What the preview shows beside the segmentation, by `background`, for its caption.
BACKGROUNDS = {"raw": "raw data", "boundaries": "boundary map", AFFINITIES: "mean nearest-neighbour affinity"}
# The partial fields a block saves its piece of the preview's section in, and which section
# (begin, end, steps: `level_section`) it is of.
SECTION_FIELD, SECTION_OF_FIELD = "preview_section", "preview_section_of"


def background(run: Run) -> str:
    """The data the preview shows under the segmentation: the raw input, else the boundary map
    (given, predicted or derived from affinities), else the given affinities (a mutex watershed
    of them has no boundary map). Every run has one of them (`[input]` requires it)."""
    return next(name for name in BACKGROUNDS if name in run.inputs or name in run.store.volumes)


def middle_section(run: Run) -> int:
    """The level-0 z index of the section the preview shows."""
    return run.geometry.shape[0] // 2


def preview_level(run: Run) -> int:
    """The pyramid level the report's preview is read from: the finest level of the segmentation
    whose sections fit `PREVIEW_PIXELS` along y and x (else its coarsest, of which the preview shows
    the middle, `preview_window`). The preview shows no more pixels than that, and reading a
    section at level 0 decodes every chunk the section crosses: for a 10,000 x 10,000 voxel section
    of uint64 labels in chunks of 64 x 128 x 128, about 50 GB, at the end of every run."""
    levels = [level for level in range(len(run.geometry.level_factors) + 1) if level_name("segmentation", level) in run.store.volumes]
    return next((level for level in levels if max(run.geometry.level_shape(level)[1:]) <= PREVIEW_PIXELS), levels[-1])


def preview_window(run: Run, level: int) -> tuple[slice, slice]:
    """The (y, x) part of level `level`'s sections the preview shows: all of it, or along an axis
    longer than `PREVIEW_PIXELS` (no pyramid level small enough: `[output] pyramid = false`) the
    middle `PREVIEW_PIXELS`, whose chunks are all a report then reads of the section."""
    y, x = (_middle(size, PREVIEW_PIXELS) for size in run.geometry.level_shape(level)[1:])
    return y, x


def _middle(size: int, length: int) -> slice:
    """The middle `length` of `size` (all of it when it is shorter)."""
    start = max(0, (size - length) // 2)
    return slice(start, start + min(size, length))


def _level0_window(run: Run, level: int) -> tuple[slice, slice]:
    """`preview_window` in level-0 voxels, every k-th along y and x (k: the level's scale)."""
    steps, shape = run.geometry.level_scale(level)[1:], run.geometry.shape[1:]
    y, x = (
        slice(part.start * step, min(part.stop * step, size), step) for part, step, size in zip(preview_window(run, level), steps, shape)
    )
    return y, x


def level_section(run: Run, name: str, level: int, section_index: int) -> tuple[str, Box, tuple[int, int]]:
    """Where the preview's section of volume `name` is read: the volume (level `level` of `name`, or
    level 0 where `name` has no such level), the box of it that holds the section (one voxel deep,
    for level-0 section `section_index`, `preview_window`), and the steps along y and x within the
    box (1; every k-th voxel of level 0, k the level's scale, where read from level 0)."""
    if level_name(name, level) not in run.store.volumes:
        y, x = _level0_window(run, level)
        return level_name(name, 0), Box((section_index, y.start, x.start), (section_index + 1, y.stop, x.stop)), (y.step, x.step)
    z = section_index // run.geometry.level_scale(level)[0]
    y, x = preview_window(run, level)
    return level_name(name, level), Box((z, y.start, x.start), (z + 1, y.stop, x.stop)), (1, 1)


def section_shape(section: Box, steps: tuple[int, int]) -> tuple[int, int]:
    """(Y, X) of the section `level_section` gives."""
    y, x = (len(range(begin, end, step)) for begin, end, step in zip(section.begin[1:], section.end[1:], steps))
    return y, x


def section_piece(section: Box, steps: tuple[int, int], box: Box) -> tuple[tuple[int | slice, ...], tuple[slice, slice]] | None:
    """The part of a section (`level_section`) that lies in `box` (a block's box, in the same
    volume's voxels): its slicing of an array over `box` (z, y, x: one z, every step-th y and x),
    and where it goes in the section's (Y, X) image; None where `box` holds none of it."""
    z = section.begin[0]
    if not box.begin[0] <= z < box.end[0]:
        return None
    source: list[int | slice] = [z - box.begin[0]]
    target: list[slice] = []
    for begin, end, step, box_begin, box_end in zip(section.begin[1:], section.end[1:], steps, box.begin[1:], box.end[1:]):
        count = len(range(begin, end, step))
        first = min(count, max(0, -(-(box_begin - begin) // step)))
        stop = min(count, max(0, -(-(box_end - begin) // step)))
        if stop <= first:
            return None
        source.append(slice(begin + first * step - box_begin, begin + (stop - 1) * step - box_begin + 1, step))
        target.append(slice(first, stop))
    return tuple(source), (target[0], target[1])


def block_section(run: Run, name: str, box: Box, data: np.ndarray, level: int = 0) -> dict[str, np.ndarray]:
    """A block's piece of the preview's section of volume `name` at pyramid level `level`, from
    `data` (the block's `box` of that level of `name`), as partial fields: the piece
    (`SECTION_FIELD`) and the section it is of (`SECTION_OF_FIELD`); none where the preview reads
    the section elsewhere or `box` holds none of it."""
    volume, section, steps = level_section(run, name, preview_level(run), middle_section(run))
    piece = section_piece(section, steps, box) if volume == level_name(name, level) else None
    if piece is None:
        return {}
    return {SECTION_FIELD: np.ascontiguousarray(data[piece[0]]), SECTION_OF_FIELD: _section_of(section, steps)}


def _section_of(section: Box, steps: tuple[int, int]) -> np.ndarray:
    return np.array([*section.begin, *section.end, *steps], dtype=np.int64)


def assemble_section(
    section: Box, steps: tuple[int, int], boxes: dict[int, Box], load: Callable[[int], dict[str, np.ndarray]]
) -> np.ndarray:
    """The section (`level_section`) put together from the pieces (`block_section`) in the partial
    fields `load(block_id)` of the blocks `boxes` (block id: box) that hold some of it. Raises
    KeyError where a block saved no piece of this section (OSError: no partial)."""
    image = np.zeros(0)
    for block_id, box in boxes.items():
        piece = section_piece(section, steps, box)
        if piece is None:
            continue
        fields = load(block_id)
        if not np.array_equal(fields[SECTION_OF_FIELD], _section_of(section, steps)):
            raise KeyError(f"block {block_id} saved a piece of another section")
        if not image.size:
            image = np.zeros(section_shape(section, steps), dtype=fields[SECTION_FIELD].dtype)
        image[piece[1]] = fields[SECTION_FIELD]
    return image
