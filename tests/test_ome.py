"""OME-Zarr 0.5 output: validated with ome-zarr-models, read as napari reads it with the ome-zarr package."""

import json

import numpy as np
import pytest
import zarr

from emflow.pyramid import downsample_image, downsample_labels, pyramid_factors
from emflow.storage import import_volume, open_volume, read_resolution
from emflow.storage.ome import create_level, create_levels, write_multiscale_metadata, write_ome_zarr_metadata

ome_zarr_models = pytest.importorskip("ome_zarr_models", reason="ome-zarr-models is a test dependency: pip install ome-zarr-models")
ome_zarr = pytest.importorskip("ome_zarr", reason="ome-zarr is a test dependency: pip install ome-zarr")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402
from ome_zarr_models.v05.image import Image  # noqa: E402
from ome_zarr_models.v05.image_label import ImageLabel  # noqa: E402

RESOLUTION = (10.0, 10.0, 10.0)
BLOCK_SHAPE = (16, 32, 32)


def write_pyramid(group: zarr.Group, volume: np.ndarray, downsample) -> list:
    """Levels s0..sN of `volume` as emflow's pyramid stages write them: s0 first, then each level from the one before."""
    factors = pyramid_factors(RESOLUTION, volume.shape, BLOCK_SHAPE)
    create_level(group, 0, volume.shape, BLOCK_SHAPE, volume.dtype)[...] = volume
    level = volume
    for array, level_factors in zip(create_levels(group, factors), factors):
        level = downsample(level, level_factors)
        array[...] = level
    return factors


def napari_nodes(path):
    """The nodes the ome-zarr reader (napari's OME-Zarr plugin) finds at `path`, with their specs."""
    return list(Reader(parse_url(str(path)))())


def test_image_pyramid_is_valid_ome_zarr_and_reads_as_multiscales(tmp_path, flyem_crop):
    group = zarr.open_group(tmp_path / "out.zarr", mode="w", zarr_format=3).create_group("boundaries")
    factors = write_pyramid(group, flyem_crop["raw"], downsample_image)
    assert factors == [(2, 2, 2), (2, 2, 2)]
    ome = write_multiscale_metadata(group, RESOLUTION, factors, name="boundaries", downsampling="mean")

    image = Image.from_zarr(zarr.open_group(tmp_path / "out.zarr" / "boundaries", mode="r"))
    (multiscale,) = image.ome_attributes.multiscales
    assert [axis.unit for axis in multiscale.axes] == ["nanometer"] * 3
    # Level k's voxel centre sits at the centre of the s0 voxels it averages.
    assert ome["multiscales"][0]["datasets"][2]["coordinateTransformations"] == [
        {"type": "scale", "scale": [40.0, 40.0, 40.0]},
        {"type": "translation", "translation": [15.0, 15.0, 15.0]},
    ]
    for level in ("s0", "s1", "s2"):
        assert group[level].metadata.dimension_names == ("z", "y", "x")

    (node,) = napari_nodes(tmp_path / "out.zarr" / "boundaries")
    assert any(isinstance(spec, Multiscales) for spec in node.specs)
    assert [level.shape for level in node.data] == [(64, 128, 128), (32, 64, 64), (16, 32, 32)]
    np.testing.assert_array_equal(np.asarray(node.data[1]), downsample_image(flyem_crop["raw"], (2, 2, 2)))
    assert read_resolution(open_volume(tmp_path / "out.zarr", "boundaries")) == RESOLUTION


def test_label_pyramid_is_a_valid_label_image_that_napari_reads_as_labels(tmp_path, flyem_crop):
    group = zarr.open_group(tmp_path / "out.zarr", mode="w", zarr_format=3).create_group("segmentation")
    labels = flyem_crop["neuron_ids"].astype(np.uint64)
    factors = write_pyramid(group, labels, downsample_labels)
    write_multiscale_metadata(group, RESOLUTION, factors, name="segmentation", label=True, downsampling="mode")

    label_image = ImageLabel.from_zarr(zarr.open_group(tmp_path / "out.zarr" / "segmentation", mode="r"))
    assert label_image.ome_attributes.image_label is not None
    (node,) = napari_nodes(tmp_path / "out.zarr" / "segmentation")
    assert {type(spec) for spec in node.specs} >= {Label, Multiscales}
    assert node.data[0].dtype == np.uint64 and len(node.data) == len(factors) + 1
    # open_volume still opens the full resolution behind the group's path.
    np.testing.assert_array_equal(open_volume(tmp_path / "out.zarr", "segmentation")[...], labels)


def test_predictions_with_a_channel_axis(tmp_path, flyem_crop):
    group = zarr.open_group(tmp_path / "out.zarr", mode="w", zarr_format=3).create_group("predictions")
    predictions = np.stack([flyem_crop["raw"][:32, :64, :64].astype(np.float32) / 255] * 3)
    create_level(group, 0, predictions.shape, (3, 16, 32, 32), np.float32, channel=True, compressed=False)[...] = predictions
    (s1,) = create_levels(group, [(2, 2, 2)], compressed=False)
    s1[...] = np.stack([downsample_image(channel, (2, 2, 2)) for channel in predictions])
    ome = write_multiscale_metadata(group, RESOLUTION, [(2, 2, 2)], name="predictions", downsampling="mean")

    assert s1.shape == (3, 16, 32, 32) and s1.metadata.dimension_names == ("c", "z", "y", "x")
    assert ome["multiscales"][0]["axes"][0] == {"name": "c", "type": "channel"}
    assert ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][1]["translation"] == [0.0, 5.0, 5.0, 5.0]
    Image.from_zarr(zarr.open_group(tmp_path / "out.zarr" / "predictions", mode="r"))
    assert read_resolution(open_volume(tmp_path / "out.zarr", "predictions")) == RESOLUTION


def test_single_level_metadata_names_the_axes_of_an_array_made_without_them(tmp_path, flyem_crop):
    # The output's `segmentation/s0` has been made without dimension_names, which ome-zarr-models rejects.
    group = zarr.open_group(tmp_path / "out.zarr", mode="w", zarr_format=3).create_group("segmentation")
    group.create_array("s0", data=flyem_crop["neuron_ids"], chunks=BLOCK_SHAPE)
    write_ome_zarr_metadata(group, "s0", RESOLUTION, name="segmentation")
    assert zarr.open_group(tmp_path / "out.zarr" / "segmentation", mode="r")["s0"].metadata.dimension_names == ("z", "y", "x")
    Image.from_zarr(zarr.open_group(tmp_path / "out.zarr" / "segmentation", mode="r"))
    np.testing.assert_array_equal(open_volume(tmp_path / "out.zarr", "segmentation")[...], flyem_crop["neuron_ids"])


def test_imported_raw_is_a_valid_image(tmp_path, data_dir):
    import_volume(data_dir / "flyem_medulla_dev" / "volume.h5", tmp_path / "raw.zarr", "raw", source_key="raw")
    image = Image.from_zarr(zarr.open_group(tmp_path / "raw.zarr" / "raw", mode="r"))
    assert image.ome_attributes.multiscales[0].datasets[0].coordinateTransformations[0].scale == [10.0, 10.0, 10.0]
    (node,) = napari_nodes(tmp_path / "raw.zarr" / "raw")
    assert any(isinstance(spec, Multiscales) for spec in node.specs) and node.data[0].shape == (125, 250, 250)


def test_metadata_is_checked_against_the_levels(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w", zarr_format=3)
    create_level(group, 0, (8, 8, 8), (4, 4, 4), np.uint8)
    create_level(group, 1, (4, 4, 3), (4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"'s1' has shape \(4, 4, 3\), expected \(4, 4, 4\)"):
        write_multiscale_metadata(group, RESOLUTION, [(2, 2, 2)])
    with pytest.raises(KeyError, match="'s2'"):
        write_multiscale_metadata(group, RESOLUTION, [(2, 2, 3), (2, 2, 2)])
    with pytest.raises(ValueError, match="three positive numbers"):
        write_multiscale_metadata(group, (10, -1, 10))
    group.create_array("s0", shape=(8, 8, 8), dtype=np.uint8, dimension_names=("x", "y", "z"), overwrite=True)
    with pytest.raises(ValueError, match="dimension_names"):
        write_multiscale_metadata(group, RESOLUTION)
    assert "ome" not in group.attrs


def test_block_images_of_the_output_group(tmp_path, flyem_crop):
    """Images as a run creates them (metadata written without zarr): valid OME-Zarr 0.5 that napari's
    reader takes, the documents zarr writes creating the same levels and describing them, and the
    full-resolution level opened by the image's name."""
    from emflow.storage.output import create_block_image, create_output_group, output_array

    path = tmp_path / "out.zarr"
    create_output_group(path)
    factors = pyramid_factors(RESOLUTION, (64, 128, 128), BLOCK_SHAPE)
    supervoxels = create_block_image(path, "supervoxels", (64, 128, 128), BLOCK_SHAPE, np.uint64, RESOLUTION, factors, label=True)
    create_block_image(
        path,
        "predictions",
        (3, 64, 128, 128),
        (3, *BLOCK_SHAPE),
        np.float32,
        RESOLUTION,
        channel=True,
        compressed=False,
        attributes={"offsets": [[-1, 0, 0]]},
    )
    reference = zarr.open_group(tmp_path / "reference.zarr", mode="w", zarr_format=3)
    for name, shape, chunks, dtype, channel, options in (
        ("supervoxels", (64, 128, 128), BLOCK_SHAPE, np.uint64, False, {}),
        ("predictions", (3, 64, 128, 128), (3, *BLOCK_SHAPE), np.float32, True, {"compressed": False}),
    ):
        image = reference.create_group(name)
        create_level(image, 0, shape, chunks, dtype, channel=channel, **options)
        level_factors = factors if name == "supervoxels" else ()
        create_levels(image, level_factors, **options)
        label = name == "supervoxels"
        write_multiscale_metadata(image, RESOLUTION, level_factors, name=name, label=label, downsampling="mode" if label else "mean")
    reference["predictions/s0"].attrs["offsets"] = [[-1, 0, 0]]
    for document in sorted(str(found.relative_to(path)) for found in path.rglob("zarr.json") if found.parent != path):
        assert json.loads((path / document).read_text()) == json.loads((tmp_path / "reference.zarr" / document).read_text()), document
    supervoxels.zarr_array("r+")[:16, :32, :32] = flyem_crop["oversegmentation"][:16, :32, :32]
    # Block tasks open the full-resolution level by the image's name.
    stored = output_array(path, "supervoxels")[:16, :32, :32]
    np.testing.assert_array_equal(stored, flyem_crop["oversegmentation"][:16, :32, :32])
    ImageLabel.from_zarr(zarr.open_group(path / "supervoxels", mode="r"))
    Image.from_zarr(zarr.open_group(path / "predictions", mode="r"))
    assert {type(spec) for spec in napari_nodes(path / "supervoxels")[0].specs} >= {Label, Multiscales}
