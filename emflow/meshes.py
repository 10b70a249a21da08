"""Triangle meshes of segments, computed block by block and merged per segment.

A segment's surface is the marching-cubes isosurface (bioimage-cpp, Lewiner's topology-resolving
variant) of its binary mask at level 0.5. Marching cubes works cell by cell, a cell being the cube
between 2 × 2 × 2 voxel centres, so the surface splits exactly into blocks: a block owns the cells
whose lower corner lies in its inner box (the first block along an axis also the cells below the
volume's lower face), reads its labels with one voxel more on the upper faces
(:func:`mesh_read_box`), and pads them with background at the faces of the volume, where surfaces
are closed. The fragments of all blocks (:func:`block_meshes`) together are the whole-volume
surface, triangle for triangle; :func:`merge_meshes` joins each segment's fragments and welds the
vertices that neighbouring blocks share on their common face, so that a segment's merged mesh is
closed.

Vertices are in nanometres, (z, y, x) order, with voxel ``i``'s centre at ``i * resolution``
(the OME-Zarr convention). Meshing a downsampled pyramid level (its voxel size as ``resolution``)
gives coarser, smaller meshes in the same coordinates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from bioimage_cpp.mesh import marching_cubes

from .blocking import Box
from .labels import relabel_consecutive


@dataclass(frozen=True)
class Meshes:
    """Triangle meshes of several segments, in concatenated arrays.

    Segment ``ids[i]`` has the vertices ``vertices[vertex_offsets[i]:vertex_offsets[i + 1]]`` and
    the faces ``faces[face_offsets[i]:face_offsets[i + 1]]``, whose indices count from its first
    vertex. ``ids``: (n,) uint64, ascending; offsets: (n + 1,) int64; ``vertices``: (V, 3) float32,
    nm, (z, y, x); ``faces``: (F, 3) uint32, oriented alike: counter-clockwise seen from outside
    in (x, y, z) coordinates, neuroglancer's (so clockwise in (z, y, x)).
    """

    ids: np.ndarray
    vertex_offsets: np.ndarray
    face_offsets: np.ndarray
    vertices: np.ndarray
    faces: np.ndarray

    def mesh(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices, faces)`` of the ``index``-th segment (``ids[index]``)."""
        return (
            self.vertices[self.vertex_offsets[index] : self.vertex_offsets[index + 1]],
            self.faces[self.face_offsets[index] : self.face_offsets[index + 1]],
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as named arrays, to save (e.g. as a block's .npz) and rebuild with ``Meshes(**arrays)``."""
        return {name: getattr(self, name) for name in ("ids", "vertex_offsets", "face_offsets", "vertices", "faces")}

    @classmethod
    def empty(cls) -> Meshes:
        no_offsets = np.zeros(1, np.int64)
        return cls(np.zeros(0, np.uint64), no_offsets, no_offsets, np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32))


def mesh_read_box(block: Box, shape) -> Box:
    """The region of the labels :func:`block_meshes` reads for ``block``: one voxel more on its upper faces."""
    return Box(block.begin, tuple(min(end + 1, size) for end, size in zip(block.end, shape)))


def block_meshes(labels: np.ndarray, block: Box, shape, resolution) -> Meshes:
    """The mesh fragments of every segment in the cells ``block`` owns (module docstring).

    Args:
        labels: integer ids of the region ``mesh_read_box(block, shape)``; 0 is background and
            gets no mesh.
        block: the block's inner box, voxels of the labelled volume.
        shape: shape of the labelled volume.
        resolution: voxel size in nm (z, y, x).

    Returns:
        the fragments, one per segment that has surface in the block. Single-threaded, because
        workflows parallelise over blocks; one marching-cubes call per segment, on its bounding
        box.
    """
    # Imported here: scipy costs every process that imports this module 0.2 to 0.3 s, and every
    # run imports it, most without meshes (the meshes stage has the building process import it).
    from scipy import ndimage

    labels = np.asarray(labels)
    expected = mesh_read_box(block, shape).shape
    if labels.shape != expected:
        raise ValueError(f"labels of shape {labels.shape} do not cover {block} with its upper one-voxel halo: expected shape {expected}")
    low = tuple(int(begin == 0) for begin in block.begin)
    high = tuple(int(end == size) for end, size in zip(block.end, shape))
    padded = np.pad(labels, list(zip(low, high)))
    origin = np.asarray(block.begin, dtype=np.float64) - low
    resolution = np.asarray(resolution, dtype=np.float64)
    # Consecutive ids (in the order of the original ones), so that find_objects' table has one entry per segment.
    compact, _ = relabel_consecutive(padded)
    pieces = []
    for index, box in enumerate(ndimage.find_objects(compact)):
        # One voxel around the segment's bounding box holds every cell its surface passes through.
        box = tuple(slice(max(part.start - 1, 0), min(part.stop + 1, size)) for part, size in zip(box, padded.shape))
        mask = compact[box] == index + 1
        if mask.all():  # fills the region this block reads: its surface lies in other blocks
            continue
        vertices, faces, _, _ = marching_cubes(mask.view(np.uint8), 0.5, allow_degenerate=False)
        if len(faces):
            segment_id = padded[box].flat[int(np.argmax(mask))]
            corner = origin + [part.start for part in box]
            pieces.append((segment_id, ((vertices + corner) * resolution).astype(np.float32), faces.astype(np.uint32)))
    return _concatenate(pieces)


def merge_meshes(parts: Iterable[Meshes], id_range: tuple[int, int] | None = None) -> Meshes:
    """Join the fragments of each segment and weld the vertices they share.

    Args:
        parts: the :func:`block_meshes` of the blocks (any order), consumed once.
        id_range: ``(first, stop)``: keep only the segments with ``first <= id < stop``, so that
            the merge can be split into tasks over id ranges.

    Returns:
        one mesh per segment; vertices with equal coordinates are one vertex, so a segment whose
        fragments cover its whole surface has a closed mesh.
    """
    pieces = []
    for part in parts:
        for index, segment_id in enumerate(part.ids):
            if id_range is None or id_range[0] <= segment_id < id_range[1]:
                pieces.append((segment_id, *part.mesh(index)))
    if not pieces:
        return Meshes.empty()
    joined = _concatenate(pieces)  # segments may repeat here, one entry per fragment
    ids = np.unique(joined.ids)
    fragment_segment = np.searchsorted(ids, joined.ids)  # each fragment's segment, 0..len(ids)-1
    vertex_segment = np.repeat(fragment_segment, np.diff(joined.vertex_offsets))
    face_segment = np.repeat(fragment_segment, np.diff(joined.face_offsets))
    # A vertex is its segment and its coordinates: unique rows come sorted by segment, then z, y, x.
    # (np.unique(axis=0) does the same 5 times slower: it compares rows as opaque bytes.)
    vertices = joined.vertices
    order = np.lexsort((vertices[:, 2], vertices[:, 1], vertices[:, 0], vertex_segment))
    sorted_segment, sorted_vertices = vertex_segment[order], vertices[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (sorted_segment[1:] != sorted_segment[:-1]) | (sorted_vertices[1:] != sorted_vertices[:-1]).any(axis=1)
    vertex_map = np.empty(len(order), dtype=np.int64)
    vertex_map[order] = np.cumsum(starts) - 1
    first_vertex = np.repeat(joined.vertex_offsets[:-1], np.diff(joined.face_offsets))
    welded_faces = vertex_map[joined.faces.astype(np.int64) + first_vertex[:, None]]
    vertex_offsets = np.concatenate([[0], np.cumsum(np.bincount(sorted_segment[starts], minlength=len(ids)))]).astype(np.int64)
    order = np.argsort(face_segment, kind="stable")
    local_faces = welded_faces[order] - vertex_offsets[face_segment[order]][:, None]
    return Meshes(
        ids=ids.astype(np.uint64),
        vertex_offsets=vertex_offsets,
        face_offsets=np.concatenate([[0], np.cumsum(np.bincount(face_segment, minlength=len(ids)))]).astype(np.int64),
        vertices=sorted_vertices[starts],
        faces=local_faces.astype(np.uint32),
    )


def _concatenate(pieces: list[tuple[int, np.ndarray, np.ndarray]]) -> Meshes:
    """Meshes of ``(segment_id, vertices, faces)`` pieces, in the order given."""
    if not pieces:
        return Meshes.empty()
    return Meshes(
        ids=np.asarray([piece[0] for piece in pieces], dtype=np.uint64),
        vertex_offsets=np.concatenate([[0], np.cumsum([len(piece[1]) for piece in pieces])]).astype(np.int64),
        face_offsets=np.concatenate([[0], np.cumsum([len(piece[2]) for piece in pieces])]).astype(np.int64),
        vertices=np.concatenate([piece[1] for piece in pieces]).astype(np.float32, copy=False),
        faces=np.concatenate([piece[2] for piece in pieces]).astype(np.uint32, copy=False),
    )
