"""emflow.meshes and storage.precomputed: meshes of real ground-truth bodies, blockwise equal to whole-volume."""

import json

import numpy as np
import pytest

from emflow.blocking import Blocking, Box
from emflow.meshes import Meshes, block_meshes, merge_meshes, mesh_read_box
from emflow.storage.precomputed import mesh_folder, read_legacy_mesh, write_legacy_meshes

RESOLUTION = (10.0, 10.0, 10.0)


@pytest.fixture(scope="module")
def labels(flyem_crop):
    return flyem_crop["neuron_ids"]


def blockwise_meshes(labels: np.ndarray, block_shape, resolution=RESOLUTION) -> Meshes:
    """As the mesh stages compute them: each block reads its box plus one voxel on the upper faces; then one merge."""
    blocking = Blocking(labels.shape, block_shape)
    parts = []
    for block_id in range(blocking.number_of_blocks):
        block = blocking.block(block_id)
        parts.append(block_meshes(labels[mesh_read_box(block, labels.shape).slicing], block, labels.shape, resolution))
    return merge_meshes(parts)


def triangles(meshes: Meshes) -> np.ndarray:
    """All triangles as sorted rows (segment, vertex keys rotated to start at the smallest), orientation kept.

    Vertices of a binary mask's isosurface lie on a half-voxel grid: each becomes one integer key.
    """
    grid = np.rint(meshes.vertices.astype(np.float64) / (RESOLUTION[0] / 2)).astype(np.int64) + 4
    keys = (grid[:, 0] * 4096 + grid[:, 1]) * 4096 + grid[:, 2]
    corners = keys[global_faces(meshes)]  # (F, 3)
    start = np.argmin(corners, axis=1)
    rotated = corners[np.arange(len(corners))[:, None], (start[:, None] + np.arange(3)) % 3]
    rows = np.column_stack([np.repeat(meshes.ids, np.diff(meshes.face_offsets)).astype(np.int64), rotated])
    return rows[np.lexsort(rows.T[::-1])]


def global_faces(meshes: Meshes) -> np.ndarray:
    """Faces indexing all vertices of all segments (segments share none)."""
    return meshes.faces.astype(np.int64) + np.repeat(meshes.vertex_offsets[:-1], np.diff(meshes.face_offsets))[:, None]


def test_blockwise_meshes_equal_whole_volume_and_are_closed(labels):
    whole = block_meshes(labels, Box((0, 0, 0), labels.shape), labels.shape, RESOLUTION)
    merged = blockwise_meshes(labels, (24, 40, 48))
    ids = np.unique(labels)
    np.testing.assert_array_equal(merged.ids, ids[ids != 0])
    np.testing.assert_array_equal(whole.ids, merged.ids)
    # Triangle for triangle (with orientation) the whole-volume surface, its vertices welded as in one piece.
    np.testing.assert_array_equal(triangles(merged), triangles(whole))
    np.testing.assert_array_equal(merged.vertex_offsets, whole.vertex_offsets)
    # Closed: every edge borders exactly two faces, once each way round (consistent orientation).
    faces = global_faces(merged)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed_keys = directed[:, 0] * len(merged.vertices) + directed[:, 1]
    undirected_keys = directed.min(axis=1) * len(merged.vertices) + directed.max(axis=1)
    directed_keys.sort()
    undirected_keys.sort()
    assert (np.diff(directed_keys) > 0).all()
    assert (undirected_keys[0::2] == undirected_keys[1::2]).all() and (np.diff(undirected_keys[0::2]) > 0).all()


def test_a_body_mesh_has_the_area_and_volume_of_its_voxels(labels):
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    body = ids[np.argmax(counts)]
    merged = blockwise_meshes(labels, (32, 64, 64))
    vertices, faces = merged.mesh(int(np.searchsorted(merged.ids, body)))
    corners = vertices[faces].astype(np.float64)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    area = np.linalg.norm(normals, axis=1).sum() / 2
    mask = np.pad(labels == body, 1)
    voxel_faces = sum(int(np.count_nonzero(np.diff(mask, axis=axis))) for axis in range(3))
    voxel_area = voxel_faces * RESOLUTION[0] ** 2
    # A surface of normal n has |n|_1 times its area in voxel faces, between 1 and √3: marching cubes
    # cuts the staircase's corners, so its area lies between 1/√3 and 1 of the voxel faces' area.
    assert 1 / np.sqrt(3) < area / voxel_area < 1
    # Enclosed volume (divergence theorem; faces counter-clockwise from outside in x, y, z) ≈ voxel volume.
    volume = -np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6
    assert volume == pytest.approx(counts.max() * np.prod(RESOLUTION), rel=0.05)
    assert vertices.min() >= -RESOLUTION[0] / 2
    assert (vertices.max(axis=0) <= (np.asarray(labels.shape) - 0.5) * RESOLUTION).all()


def test_written_meshes_read_back_and_are_neuroglancer_legacy_meshes(tmp_path, labels):
    merged = blockwise_meshes(labels[:32, :64, :64], (16, 32, 32))
    folder = mesh_folder(tmp_path / "out.zarr")
    written = write_legacy_meshes(folder, merged)
    assert folder == tmp_path / "out.zarr.meshes" / "segmentation"
    assert json.loads((folder / "info").read_text()) == {"@type": "neuroglancer_legacy_mesh"}
    total = 0
    for index, segment_id in enumerate(merged.ids.tolist()):
        vertices, faces = merged.mesh(index)
        assert json.loads((folder / f"{segment_id}:0").read_text()) == {"fragments": [f"{segment_id}.mesh"]}
        data = (folder / f"{segment_id}.mesh").read_bytes()
        total += len(data)
        # uint32 vertex count, float32 x y z, uint32 indices.
        assert len(data) == 4 + 12 * len(vertices) + 12 * len(faces)
        assert np.frombuffer(data, "<u4", 1)[0] == len(vertices)
        np.testing.assert_array_equal(np.frombuffer(data, "<f4", 3, offset=4), vertices[0, ::-1])
        read_vertices, read_faces = read_legacy_mesh(folder, segment_id)
        np.testing.assert_array_equal(read_vertices, vertices)
        np.testing.assert_array_equal(read_faces, faces)
    assert written == total


def test_meshes_of_a_downsampled_level_and_id_ranges(labels):
    from emflow.pyramid import downsample_labels

    coarse = downsample_labels(labels, (2, 2, 2))
    meshes = blockwise_meshes(coarse, (16, 32, 32), resolution=(20.0, 20.0, 20.0))
    full = blockwise_meshes(labels, (32, 64, 64))
    assert len(meshes.faces) < len(full.faces) / 3
    lower = merge_meshes([meshes], id_range=(0, int(meshes.ids[5])))
    np.testing.assert_array_equal(lower.ids, meshes.ids[:5])
    np.testing.assert_array_equal(lower.faces, meshes.faces[: meshes.face_offsets[5]])
    with pytest.raises(ValueError, match="upper one-voxel halo"):
        block_meshes(labels[:10, :10, :10], Box((0, 0, 0), (10, 10, 10)), labels.shape, RESOLUTION)
