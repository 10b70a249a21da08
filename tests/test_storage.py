"""emflow.storage: locations, opening zarr v2/v3, OME-Zarr and HDF5, imports, and their errors."""

import itertools
import json
import os
import stat
import time

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from emflow.storage import (
    IMPORT_COMPLETE_ATTRIBUTE,
    HDF5Volume,
    chunk_io,
    import_volume,
    open_volume,
    opened_volume,
    parse_location,
    read_resolution,
    volumes,
    write_ome_zarr_metadata,
    write_volume,
)
from emflow.storage.chunk_io import (
    LocalArray,
    direct_layout,
    open_local_array,
    plain_selection,
    read_chunks,
    read_selection,
    stored_units,
    write_chunks,
    write_selection,
)
from emflow.storage.output import (
    ForeignOutputError,
    create_output_group,
    open_output_group,
    opened_output_array,
    output_array,
    read_global_array,
    table_layout,
    write_global_array,
)
from emflow.storage.volumes import read_region


@pytest.fixture
def flyem_h5(tmp_path, flyem_crop):
    """A temporary HDF5 file with the FlyEM raw crop at /volumes/raw (with resolution attribute)."""
    path = tmp_path / "crop.h5"
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset("volumes/raw", data=flyem_crop["raw"], chunks=(16, 32, 32))
        dataset.attrs["resolution_nm_zyx"] = [10, 10, 10]
    return path


# -- parse_location ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("file.zarr:key", ("file.zarr", "key")),
        ("out/seg.zarr:a/b", ("out/seg.zarr", "a/b")),
        ("file.h5:key", ("file.h5", "key")),
        ("/abs/path.hdf5:/group/ds", ("/abs/path.hdf5", "/group/ds")),
        ("/data/x.h5.d/volume.zarr:raw", ("/data/x.h5.d/volume.zarr", "raw")),
        ("store_without_suffix:raw", ("store_without_suffix", "raw")),
    ],
)
def test_parse_location(text, expected):
    assert parse_location(text) == expected


@pytest.mark.parametrize("text", ["file.zarr", "file.h5:", "file.hdf5:/", "no_key_at_all"])
def test_parse_location_without_key(text):
    with pytest.raises(ValueError, match="names no dataset"):
        parse_location(text)


# -- open_volume ------------------------------------------------------------------------------


def test_open_zarr_v3_and_v2_arrays(tmp_path, flyem_crop):
    labels = flyem_crop["neuron_ids"][:16, :32, :32]
    v3 = zarr.open_group(tmp_path / "v3.zarr", mode="w", zarr_format=3)
    v3.create_array("labels/ids", data=labels, chunks=(8, 16, 16))
    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    v2.create_array("ids", data=labels, chunks=(8, 16, 16))
    zarr.create_array(tmp_path / "root_array.zarr", data=labels, chunks=(8, 16, 16), zarr_format=2)

    for path, key in [("v3.zarr", "labels/ids"), ("v3.zarr", "/labels/ids/"), ("v2.zarr", "ids"), ("root_array.zarr", "")]:
        volume = open_volume(tmp_path / path, key)
        assert (volume.shape, volume.dtype, volume.ndim) == (labels.shape, labels.dtype, 3)
        np.testing.assert_array_equal(volume[2:5, :, 7], labels[2:5, :, 7])


def test_write_through_zarr_in_r_plus_mode(tmp_path):
    write_volume(tmp_path / "v.zarr", "a", np.zeros((4, 4, 4), np.uint8))
    open_volume(tmp_path / "v.zarr", "a", mode="r+")[1, 2, 3] = 7
    assert open_volume(tmp_path / "v.zarr", "a")[1, 2, 3] == 7


def test_a_zarr_array_opened_for_reading_is_kept_until_its_metadata_changes(tmp_path, flyem_crop):
    labels = flyem_crop["neuron_ids"][:16, :32, :32]
    group = zarr.open_group(tmp_path / "v.zarr", mode="w", zarr_format=3)
    group.create_array("ids", data=labels, chunks=(8, 16, 16))
    with opened_volume(tmp_path / "v.zarr", "ids") as first:
        np.testing.assert_array_equal(first[...], labels)
    with opened_volume(tmp_path / "v.zarr", "ids") as again:
        assert again is first
    # Chunks written meanwhile are read afresh by the kept array.
    open_volume(tmp_path / "v.zarr", "ids", mode="r+")[0, 0, :4] = 7
    with opened_volume(tmp_path / "v.zarr", "ids") as again:
        assert again is first and (again[0, 0, :4] == 7).all()
    # An array written anew (other dtype and chunks: new metadata) is opened again.
    group = zarr.open_group(tmp_path / "v.zarr", mode="r+")
    del group["ids"]
    group.create_array("ids", data=labels.astype(np.uint16) + 1, chunks=(16, 32, 32))
    with opened_volume(tmp_path / "v.zarr", "ids") as rewritten:
        assert rewritten is not first and rewritten.dtype == np.uint16
        np.testing.assert_array_equal(rewritten[...], labels.astype(np.uint16) + 1)


def test_the_output_group_and_its_arrays_are_kept_until_their_metadata_changes(tmp_path, flyem_crop):
    labels = flyem_crop["neuron_ids"][:16, :32, :32].astype(np.uint64)
    create_output_group(tmp_path / "out.zarr")
    group = open_output_group(tmp_path / "out.zarr")
    group.create_array("ids", data=labels, chunks=(8, 16, 16))
    assert open_output_group(tmp_path / "out.zarr") is open_output_group(tmp_path / "out.zarr")
    first = opened_output_array(tmp_path / "out.zarr", "ids")
    assert opened_output_array(tmp_path / "out.zarr", "ids") is first
    np.testing.assert_array_equal(read_selection(first, (slice(None),) * 3), labels)
    # An array created again with other chunks (a later run's prepare_output, here or in another
    # process) is opened again, and read and written with its own chunks.
    open_output_group(tmp_path / "out.zarr").create_array("ids", data=labels + 1, chunks=(16, 32, 32), overwrite=True)
    again = opened_output_array(tmp_path / "out.zarr", "ids")
    assert again is not first and again.chunks == (16, 32, 32)
    write_selection(again, (slice(0, 16), slice(0, 32), slice(0, 32)), labels + 2)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "out.zarr" / "ids", mode="r")[...], labels + 2)
    # The group's metadata written anew (its attributes replaced): the group is opened again, and
    # no longer being emflow's, refused, though it was kept before.
    zarr.open_group(tmp_path / "out.zarr", mode="r+").attrs.put({"someone": "else"})
    with pytest.raises(ForeignOutputError):
        open_output_group(tmp_path / "out.zarr")


def test_open_hdf5_keeps_the_file_open_until_closed(flyem_h5, flyem_crop):
    with open_volume(flyem_h5, "volumes/raw") as volume:
        assert isinstance(volume, HDF5Volume)
        assert (volume.shape, volume.dtype, volume.ndim) == ((64, 128, 128), np.uint8, 3)
        np.testing.assert_array_equal(volume[10:20, 5], flyem_crop["raw"][10:20, 5])
        assert read_resolution(volume) == (10.0, 10.0, 10.0)
    assert "closed" in repr(volume)
    # h5py's error for a closed file's dataset is an OSError, RuntimeError or ValueError, depending on
    # its version and on what was read before.
    with pytest.raises((OSError, RuntimeError, ValueError)):
        volume[0, 0, 0]


def test_open_real_hdf5_dataset_by_absolute_key(data_dir):
    path, key = parse_location(f"{data_dir / 'flyem_medulla_dev' / 'volume.h5'}:/labels/neuron_ids")
    with open_volume(path, key) as volume:
        assert volume.shape == (125, 250, 250) and volume.dtype == np.uint32
        assert read_resolution(volume) == (10.0, 10.0, 10.0)


def test_ome_zarr_0_5_group_opens_its_first_dataset(tmp_path, flyem_crop):
    group = zarr.open_group(tmp_path / "image.zarr", mode="w", zarr_format=3)
    image = group.create_group("raw")
    image.create_array("s0", data=flyem_crop["raw"], chunks=(32, 64, 64))
    image.create_array("s1", data=flyem_crop["raw"][::2, ::2, ::2], chunks=(32, 64, 64))
    image.attrs["unrelated"] = 1
    write_ome_zarr_metadata(image, "s0", (0.04, 0.008, 0.008), unit="micrometer", name="raw")

    ome = zarr.open_group(tmp_path / "image.zarr", mode="r")["raw"].attrs["ome"]
    assert ome == {
        "version": "0.5",
        "multiscales": [
            {
                "name": "raw",
                "axes": [{"name": axis, "type": "space", "unit": "micrometer"} for axis in "zyx"],
                "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0.04, 0.008, 0.008]}]}],
            }
        ],
    }
    assert zarr.open_group(tmp_path / "image.zarr", mode="r")["raw"].attrs["unrelated"] == 1

    volume = open_volume(*parse_location(f"{tmp_path / 'image.zarr'}:raw"))
    assert volume.shape == (64, 128, 128)
    assert read_resolution(volume) == pytest.approx((40.0, 8.0, 8.0))


def test_ome_zarr_0_4_group_on_zarr_v2(tmp_path, flyem_crop):
    group = zarr.open_group(tmp_path / "image.zarr", mode="w", zarr_format=2)
    group.create_array("0", data=flyem_crop["raw"][:, ::2, ::2], chunks=(32, 64, 64))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                *({"name": axis, "type": "space", "unit": "nanometer"} for axis in "zyx"),
            ],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 10, 20, 20]}]}],
            "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 1, 1]}],
        }
    ]

    volume = open_volume(tmp_path / "image.zarr", "")
    assert volume.shape == (64, 64, 64)
    # The multiscale-level scale multiplies the dataset's; the channel axis is dropped.
    assert read_resolution(volume) == (20.0, 20.0, 20.0)


def test_resolution_is_none_when_not_recorded(tmp_path):
    write_volume(tmp_path / "v.zarr", "a", np.zeros((2, 2, 2), np.uint8))
    assert read_resolution(open_volume(tmp_path / "v.zarr", "a")) is None


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.zarr"):
        open_volume(tmp_path / "nothing.zarr", "raw")
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        open_volume(tmp_path / "nothing.h5", "raw")


def test_missing_key_lists_what_exists(tmp_path, flyem_h5):
    write_volume(tmp_path / "v.zarr", "labels/ids", np.zeros((2, 2, 2), np.uint8))
    write_volume(tmp_path / "v.zarr", "raw", np.zeros((2, 2, 2), np.uint8))

    with pytest.raises(KeyError, match=r"'labels/nope'.*v\.zarr.*'nope'.*'labels'.*contains: ids"):
        open_volume(tmp_path / "v.zarr", "labels/nope")
    with pytest.raises(KeyError, match=r"'membranes'.*contains: labels, raw"):
        open_volume(tmp_path / "v.zarr", "membranes")
    with pytest.raises(KeyError, match="'raw' is an array, not a group"):
        open_volume(tmp_path / "v.zarr", "raw/s0")
    with pytest.raises(KeyError, match=r"'volumes/labels'.*crop\.h5.*contains: raw"):
        open_volume(flyem_h5, "volumes/labels")


def test_group_without_ome_metadata_is_not_a_volume(tmp_path, flyem_h5):
    write_volume(tmp_path / "v.zarr", "labels/ids", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="without OME-Zarr multiscales.*contains: ids"):
        open_volume(tmp_path / "v.zarr", "labels")
    with pytest.raises(ValueError, match="HDF5 group, not a dataset.*contains: raw"):
        open_volume(flyem_h5, "volumes")


def test_unsupported_formats_and_modes(tmp_path, data_dir):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a volume")
    with pytest.raises(ValueError, match="unsupported volume format"):
        open_volume(text_file, "raw")
    with pytest.raises(ValueError, match="is a TIFF file.*`emflow import .*train-labels.tif data.zarr --key train-labels"):
        open_volume(data_dir / "isbi2012" / "train-labels.tif", "")
    write_volume(tmp_path / "v.zarr", "a", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        open_volume(tmp_path / "v.zarr", "a", mode="w")


# -- import_volume ----------------------------------------------------------------------------


def test_import_hdf5_crop(tmp_path, flyem_h5, flyem_crop):
    destination = tmp_path / "imported.zarr"
    import_volume(flyem_h5, destination, "volumes/raw", source_key="volumes/raw")

    volume = open_volume(destination, "volumes/raw")
    assert volume.metadata.zarr_format == 3
    assert volume.chunks == (64, 64, 64)
    assert volume.metadata.dimension_names == ("z", "y", "x")
    assert dict(volume.attrs) == {"resolution_nm_zyx": [10.0, 10.0, 10.0], IMPORT_COMPLETE_ATTRIBUTE: True}
    np.testing.assert_array_equal(volume[...], flyem_crop["raw"])


def test_import_streams_in_chunk_blocks(tmp_path, flyem_h5, flyem_crop, monkeypatch):
    # A tiny block budget forces one block per chunk instead of whole slabs.
    monkeypatch.setattr(volumes, "_COPY_BLOCK_BYTES", 1024)
    reads = []
    original_getitem = HDF5Volume.__getitem__
    monkeypatch.setattr(HDF5Volume, "__getitem__", lambda self, s: reads.append(s) or original_getitem(self, s))

    import_volume(flyem_h5, tmp_path / "i.zarr", "raw", source_key="volumes/raw", chunks=(32, 48, 48), resolution=(1, 2, 3))

    volume = open_volume(tmp_path / "i.zarr", "raw")
    np.testing.assert_array_equal(volume[...], flyem_crop["raw"])
    assert volume.chunks == (32, 48, 48)
    assert read_resolution(volume) == (1.0, 2.0, 3.0)
    assert len(reads) == 2 * 3 * 3
    assert max(np.prod([s.stop - s.start for s in block]) for block in reads) == 32 * 48 * 48


def test_import_tiff_stack(tmp_path, data_dir):
    source = data_dir / "isbi2012" / "train-labels-instances-2d.tif"
    import_volume(source, tmp_path / "isbi.zarr", "labels", resolution=[50, 4, 4])

    volume = open_volume(tmp_path / "isbi.zarr", "labels")
    expected = tifffile.imread(source)
    assert volume.shape == (30, 512, 512) and volume.dtype == np.uint16
    np.testing.assert_array_equal(volume[...], expected)
    assert read_resolution(volume) == (50.0, 4.0, 4.0)


def test_import_single_image_tiff_needs_a_voxel_size(tmp_path, data_dir):
    image = tifffile.imread(data_dir / "isbi2012" / "train-labels.tif", key=0)[:100, :200]
    tifffile.imwrite(tmp_path / "slice.tiff", image)

    with pytest.raises(ValueError, match=r"voxel size of .*slice\.tiff is not recorded.*--resolution"):
        import_volume(tmp_path / "slice.tiff", tmp_path / "s.zarr", "slice")
    assert not (tmp_path / "s.zarr").exists()

    import_volume(tmp_path / "slice.tiff", tmp_path / "s.zarr", "slice", resolution=(4, 4))
    volume = open_volume(tmp_path / "s.zarr", "slice")
    np.testing.assert_array_equal(volume[...], image)
    assert volume.chunks == (100, 200)
    assert volume.metadata.dimension_names == ("y", "x")
    assert read_resolution(volume) == (4.0, 4.0)


def test_import_reads_the_voxel_size_of_tiff_metadata(tmp_path, data_dir):
    stack = tifffile.imread(data_dir / "isbi2012" / "train-volume.tif")[:6, :64, :96]
    # ImageJ: pixels per micron in the resolution tags, plane spacing and unit in its metadata.
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, resolution=(250.0, 250.0), metadata={"spacing": 0.05, "unit": "um"})
    # Plain TIFF: pixels per centimetre (ResolutionUnit 3) of one image.
    tifffile.imwrite(tmp_path / "plane.tif", stack[0], resolution=(2.5e6, 2.5e6), resolutionunit=3)

    import_volume(tmp_path / "imagej.tif", tmp_path / "t.zarr", "stack")
    import_volume(tmp_path / "plane.tif", tmp_path / "t.zarr", "plane")
    assert read_resolution(open_volume(tmp_path / "t.zarr", "stack")) == pytest.approx((50.0, 4.0, 4.0))
    assert read_resolution(open_volume(tmp_path / "t.zarr", "plane")) == pytest.approx((4.0, 4.0))
    np.testing.assert_array_equal(open_volume(tmp_path / "t.zarr", "stack")[...], stack)


def test_import_refuses_to_overwrite_a_completed_array(tmp_path, flyem_h5):
    import_volume(flyem_h5, tmp_path / "i.zarr", "raw", source_key="volumes/raw")
    with pytest.raises(FileExistsError, match=r"i\.zarr:raw"):
        import_volume(flyem_h5, tmp_path / "i.zarr", "raw", source_key="volumes/raw")
    with pytest.raises(FileExistsError, match="is a group"):
        import_volume(flyem_h5, tmp_path / "i.zarr", "", source_key="volumes/raw")


def test_import_redoes_an_interrupted_import(tmp_path, flyem_h5, flyem_crop):
    group = zarr.open_group(tmp_path / "i.zarr", mode="w", zarr_format=3)
    leftover = group.create_array("raw", shape=(3, 3), dtype=np.float32)
    leftover[...] = 1

    import_volume(flyem_h5, tmp_path / "i.zarr", "raw", source_key="volumes/raw")

    volume = open_volume(tmp_path / "i.zarr", "raw")
    np.testing.assert_array_equal(volume[...], flyem_crop["raw"])
    assert volume.attrs[IMPORT_COMPLETE_ATTRIBUTE] is True


def test_import_errors(tmp_path, flyem_h5, data_dir):
    tiff = data_dir / "isbi2012" / "train-labels.tif"
    with pytest.raises(
        ValueError, match=r"holds 1 dataset: volumes/raw \(64, 128, 128\) uint8\. Name the one to import.*--source-key volumes/raw"
    ):
        import_volume(flyem_h5, tmp_path / "i.zarr", "raw")
    with pytest.raises(ValueError, match="TIFF"):
        import_volume(tiff, tmp_path / "i.zarr", "raw", source_key="x")
    with pytest.raises(ValueError, match=r"resolution \(10, 10\) has 2 values.*\(64, 128, 128\)"):
        import_volume(flyem_h5, tmp_path / "i.zarr", "raw", source_key="volumes/raw", resolution=(10, 10))
    with pytest.raises(KeyError, match="'volumes/nope'"):
        import_volume(flyem_h5, tmp_path / "i.zarr", "raw", source_key="volumes/nope")
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        import_volume(tmp_path / "missing.tif", tmp_path / "i.zarr", "raw")
    assert not (tmp_path / "i.zarr").exists()


def test_import_refuses_a_zarr_v2_destination_and_leaves_it_alone(tmp_path, flyem_h5):
    zarr.open_group(tmp_path / "old.zarr", mode="w", zarr_format=2)
    with pytest.raises(ValueError, match="zarr v2"):
        import_volume(flyem_h5, tmp_path / "old.zarr", "raw", source_key="volumes/raw")
    assert not (tmp_path / "old.zarr" / "zarr.json").exists()


def test_write_volume_round_trip(tmp_path, flyem_crop):
    write_volume(tmp_path / "w.zarr", "labels/ids", flyem_crop["neuron_ids"], resolution=[10, 10, 10], chunks=(32, 64, 64))
    volume = open_volume(tmp_path / "w.zarr", "labels/ids")
    np.testing.assert_array_equal(volume[...], flyem_crop["neuron_ids"])
    assert volume.chunks == (32, 64, 64)
    assert read_resolution(volume) == (10.0, 10.0, 10.0)


# -- write_ome_zarr_metadata errors -----------------------------------------------------------


def test_ome_metadata_errors(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    group.create_array("s0", shape=(4, 4, 4), dtype=np.uint8)
    group.create_array("flat", shape=(4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="unsupported space unit 'nm'"):
        write_ome_zarr_metadata(group, "s0", (1, 1, 1), unit="nm")
    with pytest.raises(KeyError, match="'s1'"):
        write_ome_zarr_metadata(group, "s1", (1, 1, 1))
    with pytest.raises(ValueError, match="3D"):
        write_ome_zarr_metadata(group, "flat", (1, 1, 1))
    with pytest.raises(ValueError, match="three positive numbers"):
        write_ome_zarr_metadata(group, "s0", (1, 1))
    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    v2.create_array("s0", shape=(4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="zarr v3"):
        write_ome_zarr_metadata(v2, "s0", (1, 1, 1))
    assert "ome" not in group.attrs


def test_import_folder_of_tiff_planes_in_numeric_order(tmp_path, data_dir):
    stack = tifffile.imread(data_dir / "isbi2012" / "train-volume.tif")[:12, :64, :96]
    folder = tmp_path / "planes"
    folder.mkdir()
    for z, plane in enumerate(stack):
        tifffile.imwrite(folder / f"slice_{z}.tif", plane)
    import_volume(folder, tmp_path / "out.zarr", "raw", resolution=(50, 4, 4))
    imported = open_volume(tmp_path / "out.zarr", "raw")
    assert np.array_equal(imported[...], stack), "slice_10 must follow slice_9, not slice_1"
    assert read_resolution(imported) == (50.0, 4.0, 4.0)


# --- chunk files read and written without zarr's event loop (emflow.storage.chunk_io) -----------


def _stored_files(folder) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "zarr.json"
    }


@pytest.mark.parametrize(
    ("name", "dtype", "compressed", "fill_value"),
    [("raw", "uint8", True, 0), ("oversegmentation", "uint64", True, 0), ("neuron_ids", "uint32", False, 7)],
)
def test_chunk_files_written_directly_hold_zarrs_bytes_and_read_back_as_zarr_reads_them(
    tmp_path, flyem_crop, name, dtype, compressed, fill_value
):
    """Real labels and raw data in arrays shaped so that chunks end past the array: written
    through zarr and through `write_chunks`, every chunk file holds the same bytes (the end chunks'
    padding included); any region reads the same through zarr and `read_chunks`, chunks never
    written (the fill value) included."""
    data = flyem_crop[name][:50, :100, :90].astype(dtype)
    options = {} if compressed else {"compressors": None}
    arrays = [
        zarr.create_array(tmp_path / f"{writer}.zarr", shape=data.shape, chunks=(16, 32, 32), dtype=dtype, fill_value=fill_value, **options)
        for writer in ("zarr", "direct")
    ]
    whole = tuple(slice(0, extent) for extent in data.shape)
    arrays[0].with_config({"write_empty_chunks": True})[whole] = data
    layout = direct_layout(arrays[1])
    assert layout is not None
    write_chunks(layout, whole, data)
    assert _stored_files(tmp_path / "direct.zarr") == _stored_files(tmp_path / "zarr.zarr")
    assert len(_stored_files(tmp_path / "direct.zarr")) == 4 * 4 * 3

    partial = zarr.create_array(
        tmp_path / "partial.zarr", shape=data.shape, chunks=(16, 32, 32), dtype=dtype, fill_value=fill_value, **options
    )
    write_selection(partial, (slice(16, 48), slice(0, 64), slice(64, 90)), data[16:48, :64, 64:90])  # whole chunks, the last x ones
    assert len(_stored_files(tmp_path / "partial.zarr")) == 2 * 2 * 1
    generator = np.random.default_rng(0)
    for _ in range(40):
        begin = [int(generator.integers(0, extent)) for extent in data.shape]
        selection = tuple(slice(low, int(generator.integers(low, extent + 1))) for low, extent in zip(begin, data.shape))
        for array in (arrays[1], partial):
            assert np.array_equal(read_chunks(direct_layout(array), selection), array[selection]), selection
    assert read_selection(arrays[1], whole).dtype == np.dtype(dtype)


def test_decoded_chunks_are_kept_for_halo_reads_and_never_outlive_their_file(tmp_path, flyem_crop, monkeypatch):
    """Reads of block boxes grown by a halo, block after block as a group runs them: each chunk
    file is decoded once while the cache holds it, the values are zarr's, a chunk replaced by a
    write (zarr's or emflow's) is read anew, and the cache stays within its capacity."""
    data = flyem_crop["raw"][:48, :96, :96].astype(np.float32) / np.float32(255)
    array = zarr.create_array(tmp_path / "b.zarr", shape=data.shape, chunks=(16, 32, 32), dtype="float32")
    array[...] = data
    layout = direct_layout(array)
    cache = chunk_io.ChunkCache(capacity=1 << 30)
    monkeypatch.setattr(chunk_io, "CHUNK_CACHE", cache)
    decoded = []
    real_decoded = chunk_io._decoded
    monkeypatch.setattr(chunk_io, "_decoded", lambda *arguments: decoded.append(arguments[2]) or real_decoded(*arguments))
    halo = (4, 8, 8)
    for block in itertools.product(range(3), range(3), range(3)):
        box = tuple(
            slice(max(0, index * size - margin), min(extent, (index + 1) * size + margin))
            for index, size, margin, extent in zip(block, (16, 32, 32), halo, data.shape)
        )
        assert np.array_equal(read_chunks(layout, box), data[box])
    assert sorted(decoded) == sorted(itertools.product(range(3), range(3), range(3)))  # each of the 27 chunks once

    replaced = data[:16, :32, :32] + 1
    array[:16, :32, :32] = replaced  # zarr renames a new file over the chunk's
    assert np.array_equal(read_chunks(layout, (slice(0, 20), slice(0, 40), slice(0, 40)))[:16, :32, :32], replaced)
    write_chunks(layout, (slice(0, 16), slice(0, 32), slice(0, 32)), data[:16, :32, :32])
    assert np.array_equal(read_chunks(layout, (slice(0, 20), slice(0, 40), slice(0, 40))), data[:20, :40, :40])

    # Reads within one chunk (a block's own, the slab beyond its face) or of whole chunks keep
    # nothing; a small cache drops the oldest chunks.
    chunk_bytes = 16 * 32 * 32 * 4
    small = chunk_io.ChunkCache(capacity=3 * chunk_bytes)
    monkeypatch.setattr(chunk_io, "CHUNK_CACHE", small)
    read_chunks(layout, (slice(16, 32), slice(32, 64), slice(32, 64)))
    read_chunks(layout, (slice(16, 32), slice(32, 64), slice(64, 65)))
    read_chunks(layout, (slice(0, 32), slice(0, 64), slice(0, 64)))  # whole chunks (a pyramid level's read)
    assert small._bytes == 0
    for block in range(3):
        read_chunks(layout, (slice(0, 20), slice(block * 32, block * 32 + 8), slice(0, 40)))
        assert small._bytes <= 3 * chunk_bytes
    decoded.clear()
    read_chunks(layout, (slice(16, 20), slice(64, 72), slice(32, 40)))  # chunk (1, 2, 1), read last: kept
    assert decoded == []
    read_chunks(layout, (slice(0, 4), slice(64, 72), slice(0, 8)))  # chunk (0, 2, 0), the last read's first: dropped
    assert decoded == [(0, 2, 0)]


@pytest.mark.parametrize(
    ("dtype", "options", "fill_value"),
    [("uint64", {}, 0), ("float32", {"compressors": None}, float("nan")), ("uint8", {"chunk_key_encoding": {"name": "v2"}}, 3)],
)
def test_a_local_array_reads_what_zarr_reads_without_importing_it(tmp_path, flyem_crop, dtype, options, fill_value):
    """Real labels in arrays whose chunks end past the array, with chunks never written: any basic
    index (integers, slices with steps, Ellipsis, negative positions) reads the values, shape and
    dtype zarr reads; shape, chunks, attributes and the chunk files' layout are zarr's."""
    data = flyem_crop["oversegmentation"][:50, :100, :90].astype(dtype)
    array = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(16, 32, 32), dtype=dtype, fill_value=fill_value, **options)
    array[:48, :64] = data[:48, :64]
    array.attrs["resolution_nm_zyx"] = [10.0, 10.0, 10.0]
    local = open_local_array(str(tmp_path / "a.zarr"))
    assert local is not None
    assert (local.shape, local.chunks, local.dtype, dict(local.attrs)) == (array.shape, array.chunks, array.dtype, dict(array.attrs))
    units, zarr_units = stored_units(local), stored_units(array)
    assert (units.folder, units.unit_shape) == (zarr_units.folder, zarr_units.unit_shape)
    assert all(units.key_of(position) == zarr_units.key_of(position) for position in itertools.product(range(4), range(4), range(3)))
    generator = np.random.default_rng(1)
    selections = [..., (5,), (-1, slice(None, None, 7)), (slice(3, 49, 5), ..., 89), (slice(60, 10),), (0, 0, 0), (slice(-20, None), -3)]
    for _ in range(30):
        selections.append(
            tuple(
                slice(*sorted(int(value) for value in generator.integers(0, extent + 1, 2)), int(generator.integers(1, 4)))
                for extent in data.shape
            )
        )
    for selection in selections:
        expected = np.asarray(array[selection])
        assert np.array_equal(local[selection], expected, equal_nan=True) and local[selection].shape == expected.shape, selection
    assert np.array_equal(np.asarray(local), array[...], equal_nan=True)
    with pytest.raises(IndexError):
        local[50, 0, 0]


def test_arrays_a_local_array_cannot_read_are_opened_by_zarr(tmp_path, flyem_crop):
    data = flyem_crop["raw"][:32, :64, :64]
    folders = {
        "sharded": {"chunks": (8, 16, 16), "shards": (16, 32, 32)},
        "blosc": {"chunks": (16, 32, 32), "compressors": zarr.codecs.BloscCodec()},
        "v2": {"chunks": (16, 32, 32), "zarr_format": 2},
    }
    for name, options in folders.items():
        zarr.create_array(tmp_path / f"{name}.zarr", shape=data.shape, dtype="uint8", **options)[...] = data
        assert open_local_array(str(tmp_path / f"{name}.zarr")) is None, name
        with opened_volume(tmp_path / f"{name}.zarr", "") as volume:
            assert not isinstance(volume, LocalArray)
            assert np.array_equal(read_region(volume, (slice(0, 32), slice(0, 64), slice(0, 64)), name), data)
    zarr.create_array(tmp_path / "plain.zarr", shape=data.shape, chunks=(16, 32, 32), dtype="uint8")[...] = data
    with opened_volume(tmp_path / "plain.zarr", "") as volume:
        assert isinstance(volume, LocalArray) and np.array_equal(volume[...], data)
    assert open_local_array(str(tmp_path / "nothing.zarr")) is None
    # An OME-Zarr image (as `emflow import` writes one): its full-resolution level, as zarr opens it.
    zarr.open_group(tmp_path / "source.zarr", mode="w").create_array("raw", data=data, chunks=(16, 32, 32))
    import_volume(tmp_path / "source.zarr", tmp_path / "image.zarr", key="raw", source_key="raw", resolution=(10.0, 10.0, 10.0))
    with opened_volume(tmp_path / "image.zarr", "raw") as volume:
        assert isinstance(volume, LocalArray) and volume.path == str(tmp_path / "image.zarr" / "raw" / "s0")
        assert np.array_equal(volume[...], data) and volume.shape == open_volume(tmp_path / "image.zarr", "raw").shape


def test_arrays_that_chunk_io_cannot_read_exactly_are_left_to_zarr(tmp_path, flyem_crop):
    data = flyem_crop["raw"][:32, :64, :64]
    sharded = zarr.create_array(tmp_path / "sharded.zarr", shape=data.shape, chunks=(8, 16, 16), shards=(16, 32, 32), dtype="uint8")
    blosc = zarr.create_array(
        tmp_path / "blosc.zarr", shape=data.shape, chunks=(16, 32, 32), dtype="uint8", compressors=zarr.codecs.BloscCodec()
    )
    version_2 = zarr.create_array(tmp_path / "v2.zarr", shape=data.shape, chunks=(16, 32, 32), dtype="uint8", zarr_format=2)
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=data.shape, chunks=(16, 32, 32), dtype="uint8")
    for array in (sharded, blosc, version_2, in_memory):
        assert direct_layout(array) is None
        write_selection(array, (slice(0, 32), slice(0, 64), slice(0, 64)), data)
        assert np.array_equal(read_selection(array, (slice(3, 30), slice(5, 60), slice(0, 64))), data[3:30, 5:60])
    # Selections other than plain, in-range slices go to zarr too.
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=data.shape, chunks=(16, 32, 32), dtype="uint8")
    plain[...] = data
    assert plain_selection((slice(0, 8), slice(None), 3), data.shape) is None
    assert plain_selection((slice(0, 8, 2), slice(None), slice(None)), data.shape) is None
    assert np.array_equal(read_selection(plain, (slice(0, 8), slice(None), 3)), data[0:8, :, 3])


def test_read_npz_reads_block_partials_as_np_load_does(tmp_path, flyem_crop):
    from emflow.blocking import Box
    from emflow.boundaries import boundaries_from_labels
    from emflow.graph import block_edge_statistics
    from emflow.storage.npz import _parse, read_npz
    from emflow.targets import atomic_save_npz

    # A block graph's partial of real data, as block_graph writes it, and arrays of other shapes:
    # empty, 0-d, one-byte and big-endian types.
    labels = np.ascontiguousarray(flyem_crop["oversegmentation"][:32, :64, :64])
    own_box = Box((0, 0, 0), (31, 63, 63))
    edges, statistics = block_edge_statistics(labels, boundaries_from_labels(labels).astype(np.float32), own_box)
    cases = {
        "graph": {"edges": edges, "statistics": statistics},
        "others": {
            "empty": np.zeros((0, 2), np.uint64),
            "scalar": np.array(3.5),
            "flags": np.array([True, False]),
            "big": np.arange(5, dtype=">i4"),
        },
    }
    for name, arrays in cases.items():
        path = tmp_path / f"{name}.npz"
        atomic_save_npz(path, **arrays)
        assert _parse(path.read_bytes()) is not None  # the fast path, not np.load's
        read = read_npz(path)
        with np.load(path) as loaded:
            assert read.keys() == set(loaded.files)
            for key in loaded.files:
                assert read[key].dtype == loaded[key].dtype and read[key].flags.writeable
                np.testing.assert_array_equal(read[key], loaded[key])
    assert len(edges) > 100


def test_read_npz_leaves_other_files_to_np_load(tmp_path):
    from emflow.storage.npz import _parse, read_npz

    rng = np.random.default_rng(3)
    arrays = {"fortran": np.asfortranarray(rng.random((4, 5))), "records": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])}
    np.savez_compressed(tmp_path / "compressed.npz", values=rng.random(10))
    np.savez(tmp_path / "layouts.npz", **arrays)
    for name in ("compressed", "layouts"):
        path = tmp_path / f"{name}.npz"
        assert _parse(path.read_bytes()) is None
        with np.load(path) as loaded:
            assert all(np.array_equal(read_npz(path)[key], loaded[key]) for key in loaded.files)
    with pytest.raises(FileNotFoundError):
        read_npz(tmp_path / "missing.npz")
    # A file cut short anywhere is np.load's to judge too.
    np.savez(tmp_path / "plain.npz", values=rng.random(10), ids=np.arange(4, dtype=np.uint64))
    whole = (tmp_path / "plain.npz").read_bytes()
    assert _parse(whole) is not None and all(_parse(whole[:end]) is None for end in range(len(whole)))


def test_saved_arrays_hold_np_saves_bytes_and_the_digest_taken_while_writing_is_theirs(tmp_path, flyem_crop):
    """`atomic_save_npy` writes the bytes `np.save` writes: real data written in many pieces
    (`WRITE_PIECE_BYTES`), and empty, 0-d, bool, big-endian and Fortran-order arrays. The digest
    remembered while writing (C-contiguous arrays and .npz files) is the XXH3-128 of the file, and
    `file_state` gives it; a Fortran-order array's file is read back instead."""
    import io
    import os

    import xxhash

    from emflow.storage.chunks import file_state
    from emflow.targets import atomic_save_npy, atomic_save_npz
    from emflow.targets.atomic import WRITE_PIECE_BYTES, written_digest

    raw = np.ascontiguousarray(np.tile(flyem_crop["raw"].astype(np.float32), (2, 1, 1, 1)))
    assert raw.nbytes >= 8 * WRITE_PIECE_BYTES
    cases = {
        "raw": raw,
        "empty": np.zeros((0, 2), np.uint64),
        "scalar": np.array(3.5),
        "flags": np.array([True, False]),
        "big": np.arange(5, dtype=">i4"),
        "fortran": np.asfortranarray(flyem_crop["oversegmentation"][:4, :5, :6]),
    }
    for name, array in cases.items():
        path = tmp_path / f"{name}.npy"
        atomic_save_npy(path, array)
        expected = io.BytesIO()
        np.save(expected, array)
        assert path.read_bytes() == expected.getvalue(), name
        digest = "xxh3-128:" + xxhash.xxh3_128(expected.getvalue()).hexdigest()
        assert written_digest(path, os.stat(path)) == (None if name == "fortran" else digest), name
        assert file_state(path, digest=True)[2] == digest
        np.testing.assert_array_equal(np.load(path), array)
    bundle = tmp_path / "bundle.npz"
    atomic_save_npz(bundle, **cases)
    assert written_digest(bundle, os.stat(bundle)) == "xxh3-128:" + xxhash.xxh3_128(bundle.read_bytes()).hexdigest()


def test_file_data_goes_to_the_kernel_in_pieces(tmp_path, flyem_crop, monkeypatch):
    """An atomic write hands the kernel no piece larger than `WRITE_PIECE_BYTES` (large writes
    take their page cache in large folios, which this project's VMs map in slowly: see
    emflow.targets.atomic), and the file holds exactly the bytes given: real data, in parts of
    sizes on and off the piece size."""
    import io
    import os

    from emflow.targets import atomic
    from emflow.targets.atomic import WRITE_PIECE_BYTES, atomic_save_npy, atomic_write_bytes

    calls = []
    opened = os.fdopen

    class Recording(io.RawIOBase):
        def __init__(self, handle):
            self.handle = handle

        def writable(self):
            return True

        def write(self, data):
            calls.append(memoryview(data).nbytes)
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

        def fileno(self):
            return self.handle.fileno()

        def close(self):
            super().close()
            self.handle.close()

    monkeypatch.setattr(atomic.os, "fdopen", lambda descriptor, mode: Recording(opened(descriptor, mode, buffering=0)))
    raw = np.ascontiguousarray(flyem_crop["raw"].astype(np.float32))
    assert raw.nbytes > 8 * WRITE_PIECE_BYTES
    atomic_save_npy(tmp_path / "raw.npy", raw)
    expected = io.BytesIO()
    np.save(expected, raw)
    assert (tmp_path / "raw.npy").read_bytes() == expected.getvalue()
    assert max(calls) <= WRITE_PIECE_BYTES and sum(calls) == len(expected.getvalue())
    for size in (WRITE_PIECE_BYTES - 1, WRITE_PIECE_BYTES, WRITE_PIECE_BYTES + 1, 3 * WRITE_PIECE_BYTES + 5):
        calls.clear()
        data = raw.view(np.uint8).ravel()[:size]
        atomic_write_bytes(tmp_path / "part", memoryview(data))
        assert (tmp_path / "part").read_bytes() == data.tobytes()
        assert max(calls) <= WRITE_PIECE_BYTES and sum(calls) == size


def test_a_file_changed_after_its_write_is_hashed_anew_and_verification_always_reads_the_file(tmp_path, flyem_crop):
    """The remembered digest stands only for the file as written: rewritten in place (its inode
    kept), it is read back. Damage that keeps size and modification time is what only reading
    finds: `file_state(..., read_back=True)`, which `emflow verify` uses, hashes what is on disk,
    with SHA-256 where the recorded digest is one (records of an emflow before XXH3)."""
    import hashlib
    import os

    import xxhash

    from emflow.storage.chunks import file_state
    from emflow.targets import atomic_save_npy

    path = tmp_path / "sums.npy"
    atomic_save_npy(path, np.ascontiguousarray(flyem_crop["raw"][:8], dtype=np.float32))
    written = file_state(path, digest=True)
    with open(path, "r+b") as handle:  # a flipped byte, written in place
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    now = "xxh3-128:" + xxhash.xxh3_128(path.read_bytes()).hexdigest()
    assert now != written[2]
    assert file_state(path, digest=True)[2] == now  # a new modification time: read back
    os.utime(path, ns=(written[1], written[1]))  # damage that hides its modification time
    assert file_state(path, digest=True)[2] == written[2]
    assert file_state(path, digest=True, read_back=True)[2] == now
    legacy = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_state(path, digest=True, read_back=True, like=legacy)[2] == legacy
    assert file_state(path, digest=True, read_back=True, like=written[2])[2] == now


def test_partials_read_through_a_cache_read_only_the_files_written_since(tmp_path, flyem_crop, monkeypatch):
    from emflow.blocking import Blocking
    from emflow.storage import store as store_module
    from emflow.storage.layout import Layout
    from emflow.storage.store import Store

    # Each block's supervoxel ids and sizes, as the given-supervoxels stage saves them: real labels.
    labels = np.asarray(flyem_crop["oversegmentation"])
    blocking = Blocking(labels.shape, (32, 64, 64))
    store = Store(Layout(tmp_path / "out.zarr", tmp_path / "work"), {}, {})
    expected = []
    for block_id in range(blocking.number_of_blocks):
        ids, sizes = np.unique(labels[blocking.block(block_id).slicing], return_counts=True)
        store.save_partial("supervoxels", block_id, ids=ids.astype(np.uint64), sizes=sizes)
        expected.append((ids.astype(np.uint64), sizes))
    cache = tmp_path / "work" / "report" / "sizes.npz"
    files_read = []
    load_partial = Store.load_partial
    monkeypatch.setattr(
        Store,
        "load_partial",
        lambda self, stage, block_id, *fields: files_read.append(block_id) or load_partial(self, stage, block_id, *fields),
    )

    def check(read: list) -> None:
        assert len(read) == len(expected)
        for (ids, sizes), (expected_ids, expected_sizes) in zip(read, expected):
            assert ids.dtype == expected_ids.dtype and sizes.dtype == expected_sizes.dtype
            np.testing.assert_array_equal(ids, expected_ids)
            np.testing.assert_array_equal(sizes, expected_sizes)

    number_of_blocks = blocking.number_of_blocks
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == list(range(number_of_blocks)) and cache.exists()
    # No record names a cache: no digest is taken of it, unlike of the partials it caches.
    from emflow.targets.atomic import written_digest

    assert written_digest(cache, os.stat(cache)) is None
    partial = store.layout.partial("supervoxels", 0, ".npz")
    assert written_digest(partial, os.stat(partial)) is not None
    files_read.clear()
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == []

    # One block written anew (a new file, as every partial write is): only it is read.
    expected[3] = (expected[3][0][::-1].copy(), expected[3][1] * 2)
    store.save_partial("supervoxels", 3, ids=expected[3][0], sizes=expected[3][1])
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == [3]
    files_read.clear()
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == []

    # A cache holding the fields asked for serves them; one it cannot use is read past (damaged, of
    # another number of blocks, without a field asked for): every file is read, and the cache written anew.
    sizes_only = store.load_partials("supervoxels", number_of_blocks, ("sizes",), cache)
    assert files_read == [] and all(np.array_equal(read[0], block[1]) for read, block in zip(sizes_only, expected))
    for unusable, blocks, fields in (
        (lambda: cache.write_bytes(b"PK\x03\x04 not a zip"), number_of_blocks, ("ids", "sizes")),
        (lambda: None, number_of_blocks - 1, ("sizes",)),  # the cache is then of another number of blocks, and sizes only
        (lambda: None, number_of_blocks, ("ids", "sizes")),
    ):
        unusable()
        files_read.clear()
        read = store.load_partials("supervoxels", blocks, fields, cache)
        assert files_read == list(range(blocks)) and len(read) == blocks
    check(read)
    files_read.clear()
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == []
    with pytest.raises(FileNotFoundError):
        store.load_partials("supervoxels", number_of_blocks + 1, ("sizes",), cache)
    assert store_module._read_partials_cache(tmp_path / "missing.npz", ("sizes",), 1)[1] == []

    # Arrays of more than MOST_CACHED_BYTES are not kept: a block written anew is read through the
    # cache there is, which then goes (stale), and from then on every file is read.
    all_bytes = sum(ids.nbytes + sizes.nbytes for ids, sizes in expected)
    monkeypatch.setattr(store_module, "MOST_CACHED_BYTES", all_bytes - 1)
    store.save_partial("supervoxels", 5, ids=expected[5][0], sizes=expected[5][1])
    files_read.clear()
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == [5] and not cache.exists()
    files_read.clear()
    check(store.load_partials("supervoxels", number_of_blocks, ("ids", "sizes"), cache))
    assert files_read == list(range(number_of_blocks)) and not cache.exists()


def test_a_replaced_file_is_freed_by_a_thread_beside_the_writer(tmp_path, flyem_crop, monkeypatch):
    """An atomic write over an existing file holds the old file open across the rename and leaves
    closing it to a thread of its own: freeing its blocks (a wait for the device in rename(2) on a
    file system mounted with `discard`) then happens beside the writer. A process forked while old
    files are still held does not keep them; with `_MOST_HELD` held, a write frees in place."""
    import threading

    from emflow.targets import atomic

    def held_inodes() -> list[int]:
        """Inodes of files in tmp_path that this process holds open after their last link went."""
        inodes = []
        for name in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{name}")
                status = os.stat(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)) and status.st_nlink == 0 and stat.S_ISREG(status.st_mode):
                inodes.append(status.st_ino)
        return inodes

    gate = threading.Event()

    class HeldUntilLet(atomic._Releaser):
        def _close(self) -> None:
            gate.wait(30)
            super()._close()

    monkeypatch.setattr(atomic, "_MOST_HELD", 2)
    monkeypatch.setattr(atomic, "_RELEASER", HeldUntilLet())
    raw = np.ascontiguousarray(flyem_crop["raw"][:4])
    paths = [tmp_path / f"chunk_{index}" for index in range(3)]
    for index, path in enumerate(paths):
        atomic.atomic_write_bytes(path, atomic.memory_of(raw[index]))
    old_inodes = [path.stat().st_ino for path in paths]
    for index, path in enumerate(paths):
        atomic.atomic_write_bytes(path, atomic.memory_of(raw[index + 1]))
        assert path.read_bytes() == raw[index + 1].tobytes()
    # The first two old files are held (unlinked, still open); the third, past _MOST_HELD, was freed in rename.
    assert sorted(held_inodes()) == sorted(old_inodes[:2])

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        os._exit(0 if held_inodes() == [] else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "a forked process kept the old files open"

    gate.set()
    deadline = time.monotonic() + 10
    while held_inodes() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held_inodes() == []


def test_an_atomic_write_over_a_fifo_replaces_it_without_waiting_for_a_writer(tmp_path, flyem_crop):
    """The file a write replaces is opened to be held (`_Releaser.hold`) without blocking: a FIFO in
    its place (opened for reading, it would wait for a writer for ever) is replaced like a file."""
    import threading

    from emflow.targets.atomic import atomic_write_bytes, memory_of

    path = tmp_path / "chunk"
    os.mkfifo(path)
    section = np.ascontiguousarray(flyem_crop["raw"][0])
    writer = threading.Thread(target=atomic_write_bytes, args=(path, memory_of(section)), daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "the write waited on the FIFO"
    assert path.is_file() and path.read_bytes() == section.tobytes()


@pytest.mark.parametrize("dtype", ["uint64", "int64", "uint32", "uint8", "bool", "float64", "float32"])
def test_global_arrays_are_the_arrays_zarr_creates(tmp_path, dtype):
    """write_global_array writes the metadata document zarr's create_array writes for the same
    array (compressors as write_global_array chooses them) and chunk files zarr reads back, under
    groups zarr opens, replacing an earlier array of that name with another shape and chunking."""
    rng = np.random.default_rng(0)
    path = tmp_path / "out.zarr"
    create_output_group(path)
    group = open_output_group(path)
    for rows in (7, 1000):
        data = (rng.random((rows, 3)) * 200).astype(dtype)
        attributes = {"number_of_nodes": np.int64(rows), "energy": np.float64(-1.5), "names": ["a", "b"]}
        write_global_array(path, "graph/table", data, attributes)
        reference = zarr.open_group(str(tmp_path / "reference.zarr"), mode="a", zarr_format=3).create_array(
            "graph/table",
            shape=data.shape,
            chunks=data.shape,
            dtype=dtype,
            fill_value=0,
            overwrite=True,
            attributes={"number_of_nodes": rows, "energy": -1.5, "names": ["a", "b"]},
            **({"compressors": None} if np.dtype(dtype).kind == "f" else {}),
        )
        reference[...] = data
        written, expected = (json.loads((folder / "graph/table/zarr.json").read_text()) for folder in (path, tmp_path / "reference.zarr"))
        assert written == expected
        assert json.loads((path / "graph/zarr.json").read_text()) == json.loads((tmp_path / "reference.zarr/graph/zarr.json").read_text())
        read = zarr.open_group(str(path), mode="r")["graph/table"]
        assert read.dtype == np.dtype(dtype) and np.array_equal(read[...], data)
        assert (path / "graph/table/c/0/0").read_bytes() == (tmp_path / "reference.zarr/graph/table/c/0/0").read_bytes()
        assert np.array_equal(read_selection(output_array(path, "graph/table"), (slice(None), slice(None))), data)
        assert read_global_array(path, "graph/table").dtype == np.dtype(dtype)
        assert np.array_equal(read_global_array(path, "graph/table"), data)
    assert group.attrs["emflow"] == {"created": True}


def test_global_arrays_of_other_layouts_are_read_through_zarr(tmp_path):
    """An array of the output group with metadata write_global_array does not write (another
    compressor, other chunk keys) has no direct layout, and reads through zarr alike; one with
    chunks along both axes has one."""
    path = tmp_path / "out.zarr"
    create_output_group(path)
    group = open_output_group(path)
    data = np.arange(60, dtype=np.uint64).reshape(20, 3)
    for name, options in (
        ("blosc", {"chunks": (20, 3), "compressors": zarr.codecs.BloscCodec()}),
        ("v2_keys", {"chunks": (8, 2), "chunk_key_encoding": {"name": "v2", "separator": "."}}),
    ):
        group.create_array(name, shape=data.shape, dtype=data.dtype, fill_value=0, **options)[...] = data
        assert table_layout(str(path / name), json.loads((path / name / "zarr.json").read_text())) is None
        assert np.array_equal(read_global_array(path, name), data)
    group.create_array("tiled", shape=data.shape, dtype=data.dtype, chunks=(8, 2), fill_value=0)[...] = data
    assert table_layout(str(path / "tiled"), json.loads((path / "tiled" / "zarr.json").read_text())).chunk_shape == (8, 2)
    assert np.array_equal(read_global_array(path, "tiled"), data)
