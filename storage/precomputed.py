"""Segment meshes on disk in neuroglancer's precomputed legacy (single-resolution) mesh format.

Why the legacy format and not the multi-resolution one (``neuroglancer_multilod_draco``): the
multi-resolution format stores each level of detail of a segment as Draco-compressed fragments in
an octree of its bounding box, which needs a Draco encoder and a simplified mesh per level. Neither
is at hand: bioimage-cpp's ``simplify_mesh`` took 0.4 s for a 3,000-face mesh but 33 s for a
20,000-face one (measured on FlyEM bodies), far too slow for whole neurons, and the only Draco
encoder on PyPI is a separate compiled package. The legacy format is the one every neuroglancer
version reads, needs neither, and is written straight from `emflow.meshes.Meshes`. Its cost is no
level of detail: neuroglancer loads a segment's whole mesh when the segment is selected. Meshing a
downsampled pyramid level instead of ``s0`` keeps meshes small (see benchmarks/meshes.py).

Layout of a mesh folder (a precomputed data source: ``precomputed://<url of the folder>``):

- ``info``: ``{"@type": "neuroglancer_legacy_mesh"}``;
- ``<id>:0``: the segment's manifest, ``{"fragments": ["<id>.mesh"]}``;
- ``<id>.mesh``: its merged mesh: uint32 number of vertices, float32 (x, y, z) per vertex in nm,
  then uint32 vertex indices, three per triangle, all little-endian.

The folder lies beside the output group, not inside it (``mesh_folder``): zarr takes every file in
a group's folder for a member and warns about each one it cannot open.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emflow.meshes import Meshes
from emflow.targets import atomic_write_bytes, atomic_write_text

MESH_INFO = {"@type": "neuroglancer_legacy_mesh"}


def mesh_folder(output_path: str | Path, image: str = "segmentation") -> Path:
    """Where the meshes of the label image ``image`` of the output group ``output_path`` are written."""
    return Path(f"{output_path}.meshes") / image


def write_legacy_meshes(folder: str | Path, meshes: Meshes) -> int:
    """Write each segment's mesh and manifest into ``folder`` (created if missing), and the ``info`` file.

    Every file is written atomically; segments without faces get no files. Meshes of other
    segments already in the folder are kept, so id ranges can be written by separate tasks.

    Args:
        folder: the mesh folder, e.g. ``mesh_folder(output_path)``.
        meshes: merged meshes (`emflow.meshes.merge_meshes`), vertices in nm, (z, y, x).

    Returns:
        the number of bytes of mesh data written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for index, segment_id in enumerate(meshes.ids.tolist()):
        vertices, faces = meshes.mesh(index)
        if not len(faces):
            continue
        data = encode_fragment(vertices, faces)
        atomic_write_bytes(folder / f"{segment_id}.mesh", data)
        atomic_write_text(folder / f"{segment_id}:0", json.dumps({"fragments": [f"{segment_id}.mesh"]}))
        written += len(data)
    atomic_write_text(folder / "info", json.dumps(MESH_INFO))
    return written


def encode_fragment(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """One mesh in the legacy fragment encoding; ``vertices`` (V, 3) in nm (z, y, x), ``faces`` (F, 3).

    Reversing the axes to neuroglancer's (x, y, z) mirrors the mesh, which turns the faces'
    clockwise (z, y, x) order into the counter-clockwise (x, y, z) order seen from outside.
    """
    header = np.asarray([len(vertices)], dtype="<u4").tobytes()
    return header + np.ascontiguousarray(vertices[:, ::-1], dtype="<f4").tobytes() + np.ascontiguousarray(faces, dtype="<u4").tobytes()


def read_legacy_mesh(folder: str | Path, segment_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices, faces)`` of one segment as written by `write_legacy_meshes`: (z, y, x) nm, (F, 3) uint32.

    All fragments the manifest lists are joined (vertices of later fragments counted on).
    """
    folder = Path(folder)
    manifest = json.loads((folder / f"{int(segment_id)}:0").read_text())
    all_vertices, all_faces, count = [], [], 0
    for fragment in manifest["fragments"]:
        data = (folder / fragment).read_bytes()
        number = int(np.frombuffer(data, dtype="<u4", count=1)[0])
        vertices = np.frombuffer(data, dtype="<f4", count=3 * number, offset=4).reshape(number, 3)[:, ::-1]
        faces = np.frombuffer(data, dtype="<u4", offset=4 + 12 * number).reshape(-1, 3)
        all_vertices.append(vertices)
        all_faces.append(faces + count)
        count += number
    return np.concatenate(all_vertices).astype(np.float32), np.concatenate(all_faces).astype(np.uint32)
