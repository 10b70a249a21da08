"""The run report's preview section, put together from the pieces blocks saved (`emflow.tasks.preview`)."""

import numpy as np
import pytest

from emflow.blocking import Blocking, Box
from emflow.tasks.preview import SECTION_FIELD, SECTION_OF_FIELD, assemble_section, section_piece, section_shape


def _pieces(volume: np.ndarray, blocking: Blocking, section: Box, steps: tuple[int, int]) -> dict[int, dict[str, np.ndarray]]:
    """What each block holding some of `section` saves: its piece, cut from its box of `volume`."""
    pieces = {}
    for block_id in range(blocking.number_of_blocks):
        box = blocking.block(block_id)
        piece = section_piece(section, steps, box)
        if piece is not None:
            of = np.array([*section.begin, *section.end, *steps])
            pieces[block_id] = {SECTION_FIELD: volume[box.slicing][piece[0]], SECTION_OF_FIELD: of}
    return pieces


@pytest.mark.parametrize("seed", range(6))
def test_pieces_of_the_blocks_put_together_give_the_section_at_every_step(seed):
    """Random volumes, blockings and sections (windows at every k-th voxel, as a preview of a
    pyramid level reads data that has none): the pieces equal the section sliced from the volume."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(size) for size in rng.integers(5, 40, 3))
    volume = rng.integers(0, 2**40, shape, dtype=np.uint64)
    blocking = Blocking(shape, tuple(int(rng.integers(1, size + 1)) for size in shape))
    z = int(rng.integers(0, shape[0]))
    y, x = (sorted(int(value) for value in rng.choice(size + 1, 2, replace=False)) for size in shape[1:])
    steps = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    section = Box((z, y[0], x[0]), (z + 1, y[1], x[1]))
    expected = volume[z, y[0] : y[1] : steps[0], x[0] : x[1] : steps[1]]
    assert section_shape(section, steps) == expected.shape
    pieces = _pieces(volume, blocking, section, steps)
    boxes = {block_id: blocking.block(block_id) for block_id in blocking.blocks_intersecting(section.begin, section.end)}
    assert set(pieces) <= set(boxes)
    assembled = assemble_section(section, steps, boxes, pieces.__getitem__)
    assert assembled.dtype == volume.dtype and np.array_equal(assembled, expected)


def test_a_piece_of_another_section_or_none_is_refused():
    """A block's piece of another window (a preview drawn with other settings) or no piece at all
    raises KeyError, so that the report reads the section instead."""
    volume = np.arange(8 * 12 * 12, dtype=np.uint64).reshape(8, 12, 12)
    blocking = Blocking(volume.shape, (4, 6, 6))
    section, other = Box((5, 0, 0), (6, 12, 12)), Box((5, 1, 0), (6, 12, 12))
    boxes = {block_id: blocking.block(block_id) for block_id in blocking.blocks_intersecting(section.begin, section.end)}
    pieces = _pieces(volume, blocking, other, (1, 1))
    with pytest.raises(KeyError):
        assemble_section(section, (1, 1), boxes, pieces.__getitem__)
    pieces = _pieces(volume, blocking, section, (1, 1))
    del pieces[max(pieces)]
    with pytest.raises(KeyError):
        assemble_section(section, (1, 1), boxes, pieces.__getitem__)
