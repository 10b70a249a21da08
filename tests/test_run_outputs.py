"""What a run writes for people to look at: the run report, and segment meshes."""

import json
import time

import numpy as np
import pytest
from workflow_helpers import noisy_groundtruth_affinities, read, run_cli, write_affinities, write_config, write_inputs

from emflow.blocking import Box
from emflow.meshes import block_meshes
from emflow.storage.precomputed import mesh_folder, read_legacy_mesh


@pytest.fixture(scope="module")
def finished(tmp_path_factory, workflow_inputs):
    folder = tmp_path_factory.mktemp("outputs")
    config = write_config(
        folder / "config.toml",
        workflow_inputs,
        folder / "out.zarr",
        block_shape=(16, 32, 32),
        halo=(4, 8, 8),
        output={"pyramid": True, "report": True},
        meshes={"enabled": True, "level": 1},
    )
    assert run_cli("run", config, "--workers", "2") == 0
    return config, folder / "out.zarr"


def test_the_run_report_holds_segments_stages_and_a_preview(finished):
    config, output = finished
    report = output.parent / "out.zarr.work" / "report"
    data = json.loads((report / "run_report.json").read_text())
    segmentation = read(output, "segmentation")
    ids, counts = np.unique(segmentation[segmentation != 0], return_counts=True)
    assert data["segments"]["number_of_segments"] == len(ids)
    assert data["segments"]["largest_voxels"] == counts.max()
    assert {"supervoxels", "block_graph", "multicut", "write_segmentation", "pyramid_s1", "meshes"} <= set(data["stages"])
    assert all(stage["seconds"] > 0 for stage in data["stages"].values())
    assert {"run_preview.png", "run_sizes.svg", "run_stages.svg"} <= {path.name for path in report.iterdir()}
    # A no-op rerun leaves the report alone; `emflow report` writes it again.
    written = (report / "run_report.json").stat().st_mtime_ns
    assert run_cli("run", config) == 0
    assert (report / "run_report.json").stat().st_mtime_ns == written
    time.sleep(0.01)
    assert run_cli("report", config) == 0
    assert (report / "run_report.json").stat().st_mtime_ns > written


def test_a_section_wider_than_the_preview_is_read_from_the_pyramid(finished, monkeypatch):
    """The preview reads the finest pyramid level whose sections fit its width (here made narrow
    enough for level 1), not every chunk of level 0 the section crosses, and the input under it at
    every k-th voxel."""
    import emflow.tasks.preview as preview
    import emflow.workflows.report as report
    from emflow.storage.volumes import opened_volume
    from emflow.workflows.segmentation import load_run

    config, output = finished
    run = load_run(str(config))
    middle = run.geometry.shape[0] // 2
    assert report.preview_level(run) == 0
    monkeypatch.setattr(preview, "PREVIEW_PIXELS", max(run.geometry.level_shape(1)[1:]))
    assert report.preview_level(run) == 1
    raw, segmentation = report.preview_sections(run, middle, report.preview_level(run))
    scale = run.geometry.level_scale(1)
    assert np.array_equal(segmentation, read(output, "segmentation/s1")[middle // scale[0]])
    background = run.inputs["raw" if "raw" in run.inputs else "boundaries"]
    with opened_volume(background.path, background.key) as volume:
        assert np.array_equal(raw, np.asarray(volume[middle])[:: scale[1], :: scale[2]])
    assert raw.shape == segmentation.shape == run.geometry.level_shape(1)[1:]


def test_a_preview_over_a_derived_boundary_map_reads_its_level_too(tmp_path, flyem_crop, monkeypatch):
    """Without raw data the preview shows the boundary map; derived from affinities, it is an output
    with levels of its own, read at the segmentation's level."""
    import emflow.tasks.preview as preview
    import emflow.workflows.report as report
    from emflow.workflows.segmentation import load_run

    offsets = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3]]
    inputs = write_inputs(tmp_path / "inputs", flyem_crop)
    write_affinities(inputs, noisy_groundtruth_affinities(flyem_crop["neuron_ids"], offsets, 0.3, seed=1), offsets, (32, 64, 64))
    config = write_config(
        tmp_path / "config.toml",
        inputs,
        tmp_path / "out.zarr",
        input={"boundaries_key": None, "raw_key": None, "affinities_key": "affinities"},
        output={"pyramid": True, "report": True},
    )
    assert run_cli("run", config) == 0
    run = load_run(str(config))
    monkeypatch.setattr(preview, "PREVIEW_PIXELS", max(run.geometry.level_shape(1)[1:]))
    middle = run.geometry.shape[0] // 2
    boundaries, segmentation = report.preview_sections(run, middle, report.preview_level(run))
    z = middle // run.geometry.level_scale(1)[0]
    assert np.array_equal(segmentation, read(tmp_path / "out.zarr", "segmentation/s1")[z])
    assert np.array_equal(boundaries, run.store.read("boundaries_s1", Box((z, 0, 0), (z + 1, *segmentation.shape)))[0])
    report.write_report(run, reuse_preview=False)


def test_meshes_of_level_1_are_those_of_the_whole_level(finished):
    _, output = finished
    level = read(output, "segmentation/s1")
    whole = block_meshes(level, Box((0, 0, 0), level.shape), level.shape, (20.0, 20.0, 20.0))
    folder = mesh_folder(output)
    assert json.loads((folder / "info").read_text())["@type"] == "neuroglancer_legacy_mesh"
    for index in range(0, len(whole.ids), max(1, len(whole.ids) // 10)):
        vertices, faces = read_legacy_mesh(folder, int(whole.ids[index]))
        expected_vertices, expected_faces = whole.mesh(index)
        assert len(faces) == len(expected_faces)
        # The same surface: the same set of triangles, by their vertices' coordinates.
        triangles = np.sort(np.round(vertices[faces.astype(np.int64)], 3).reshape(len(faces), -1), axis=0)
        expected = np.sort(np.round(expected_vertices[expected_faces.astype(np.int64)], 3).reshape(len(expected_faces), -1), axis=0)
        assert np.array_equal(np.unique(triangles, axis=0), np.unique(expected, axis=0))


def test_the_report_draws_its_preview_again_only_when_its_section_changed(tmp_path, workflow_inputs, monkeypatch):
    import emflow.report.images as images
    from emflow.storage.chunks import chunk_files
    from emflow.workflows.report import write_report
    from emflow.workflows.segmentation import load_run

    config = write_config(tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr", output={"report": True})
    assert run_cli("run", config) == 0
    run = load_run(str(config))
    report = tmp_path / "out.zarr.work" / "report"
    drawn = (report / "run_preview.png").read_bytes()
    draw = images.preview_image
    calls = []
    monkeypatch.setattr(images, "preview_image", lambda *arrays: calls.append(1) or draw(*arrays))

    write_report(run)  # nothing changed: the preview is kept
    assert calls == [] and (report / "run_preview.png").read_bytes() == drawn

    shape = run.geometry.shape
    middle = shape[0] // 2
    segmentation = run.store.volumes["segmentation"].path
    in_section, elsewhere = (
        chunk_files(tmp_path / "out.zarr", segmentation, np.array([[[z, 0, 0], [z + 1, shape[1], shape[2]]]]))[0][0] for z in (middle, 0)
    )
    assert in_section != elsewhere
    for path in (elsewhere, in_section):
        time.sleep(0.01)
        with open(path, "r+b") as chunk:  # the same bytes again: a new state, as a task's rewrite gives
            content = chunk.read()
            chunk.seek(0)
            chunk.write(content)
        write_report(run)
        assert calls == ([] if path == elsewhere else [1])
    assert (report / "run_preview.png").read_bytes() == drawn  # the same data, drawn the same

    write_report(run, reuse_preview=False)  # `emflow report` draws everything again
    assert calls == [1, 1]


@pytest.mark.parametrize("most_chunks", [0, 10**9])
def test_a_preview_section_read_chunk_by_chunk_or_through_zarr_holds_the_same_voxels(finished, monkeypatch, most_chunks):
    """Sections crossing more than ZARR_READ_CHUNKS chunks are read one chunk at a time
    (`Store.read`), others through zarr's threaded indexing: the same voxels either way."""
    import emflow.workflows.report as report
    from emflow.workflows.segmentation import load_run

    config, output = finished
    run = load_run(str(config))
    middle = run.geometry.shape[0] // 2
    monkeypatch.setattr(report, "ZARR_READ_CHUNKS", most_chunks)
    segmentation = report._read_section(run, "segmentation", Box((middle, 0, 0), (middle + 1, *run.geometry.shape[1:])))
    assert segmentation.shape == run.geometry.shape[1:]
    assert np.array_equal(segmentation, read(output, "segmentation")[middle])


def test_the_preview_is_put_together_from_the_pieces_its_blocks_saved(tmp_path, workflow_inputs, monkeypatch):
    """The blocks writing the segmentation's middle section, and the supervoxel blocks reading the
    boundary map's (shown without raw data), save their pieces of it: the report reads no chunk
    for its preview, and shows the same voxels. A piece missing (a block of an earlier emflow):
    that section is read."""
    import emflow.workflows.report as report
    from emflow.storage.volumes import opened_volume
    from emflow.workflows.segmentation import load_run

    config = write_config(
        tmp_path / "config.toml", workflow_inputs, tmp_path / "out.zarr", input={"raw_key": None}, output={"report": True}
    )
    assert run_cli("run", config, "--workers", "2") == 0
    run = load_run(str(config))
    middle = run.geometry.shape[0] // 2
    segmentation = read(tmp_path / "out.zarr", "segmentation")[middle]
    with opened_volume(run.inputs["boundaries"].path, run.inputs["boundaries"].key) as volume:
        boundaries = np.asarray(volume[middle])
    read_section, opened = report._read_section, report.opened_volume

    def refuse(*arguments):
        raise AssertionError("read a section the blocks saved")

    monkeypatch.setattr(report, "_read_section", refuse)
    monkeypatch.setattr(report, "opened_volume", refuse)
    shown, segmented = report.preview_sections(run, middle, 0)
    assert np.array_equal(shown, boundaries) and np.array_equal(segmented, segmentation)

    monkeypatch.setattr(report, "_read_section", read_section)
    monkeypatch.setattr(report, "opened_volume", opened)
    blocking = run.geometry.blocking
    for stage in ("write_segmentation", "supervoxels"):
        block_id = blocking.blocks_intersecting((middle, 0, 0), (middle + 1, *run.geometry.shape[1:]))[-1]
        run.layout.partial(stage, block_id, ".npz").unlink()
    shown, segmented = report.preview_sections(run, middle, 0)
    assert np.array_equal(shown, boundaries) and np.array_equal(segmented, segmentation)
