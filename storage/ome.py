"""OME-Zarr 0.5 metadata of the multiscale images and label images emflow writes.

An image is a zarr v3 group whose arrays ``s0``, ``s1``, ... are its resolution levels, ``s0`` the
full resolution; level ``k + 1`` is level ``k`` downsampled by whole factors per axis (see
`emflow.pyramid`). The group's attribute ``ome`` describes the levels: axes (``z, y, x``, or a
channel axis ``c`` first) with their units, and per level a ``scale`` (voxel size) and, from
``s1`` on, a ``translation``. OME-Zarr places a voxel's coordinate at its centre, so a voxel of
level ``k`` that averages ``F`` voxels of ``s0`` along an axis has its centre ``(F - 1) / 2``
voxels of ``s0`` after that of the first one: the translation, which keeps every level aligned
with ``s0``. Each array's ``dimension_names`` repeat the axis names, as OME-Zarr 0.5 requires.

A label image (segmentation, supervoxels) has the same layout plus the ``image-label`` metadata
that tells readers such as napari's (the ``ome-zarr`` package) to show it as labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from emflow.errors import InputError

if TYPE_CHECKING:
    import zarr

OME_VERSION = "0.5"
SPACE_AXES = ("z", "y", "x")
CHANNEL_AXIS = "c"

# Nanometres per unit, for the OME-Zarr space units emflow reads and writes.
NANOMETERS_PER_UNIT = {
    "picometer": 1e-3,
    "angstrom": 0.1,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "meter": 1e9,
}

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


def level_path(level: int) -> str:
    """Name of resolution level ``level`` inside an image group: ``s0`` is full resolution."""
    return f"s{int(level)}"


def axis_names(space_dimensions: int, *, channel: bool = False) -> tuple[str, ...]:
    """Axis names of an array with ``space_dimensions`` (2 or 3) space axes, after a channel axis if ``channel``."""
    if space_dimensions not in (2, 3):
        raise ValueError(f"OME-Zarr images have 2 or 3 space axes, got {space_dimensions}")
    return ((CHANNEL_AXIS,) if channel else ()) + SPACE_AXES[-space_dimensions:]


def create_level(group: zarr.Group, level: int, shape, chunks, dtype, *, channel: bool = False, compressed: bool = True) -> zarr.Array:
    """(Re)create level ``level`` of the image ``group`` as an array filled with zeros, its axes named.

    ``shape`` and ``chunks`` include the channel axis first when ``channel``. ``compressed=False``
    stores chunks as raw bytes (for float network outputs that compression barely shrinks).
    """
    shape = tuple(int(size) for size in shape)
    return group.create_array(
        level_path(level),
        shape=shape,
        chunks=tuple(int(size) for size in chunks),
        dtype=dtype,
        fill_value=0,
        dimension_names=axis_names(len(shape) - int(channel), channel=channel),
        overwrite=True,
        **({} if compressed else {"compressors": None}),
    )


def create_levels(group: zarr.Group, level_factors, *, compressed: bool = True) -> list[zarr.Array]:
    """(Re)create the levels ``s1..sN`` of ``group`` below its ``s0``, filled with zeros, to be
    computed block by block: shapes from ``level_factors`` (see `level_shapes`), the dtype, chunks
    and channel axis of ``s0``. Returns the new arrays, ``s1`` first."""
    first = _level_array(group, level_path(0))
    channel = first.metadata.dimension_names is not None and first.metadata.dimension_names[0] == CHANNEL_AXIS
    channels = tuple(first.shape[:1]) if channel else ()
    shapes = level_shapes(first.shape[int(channel) :], level_factors)[1:]
    return [
        create_level(group, level, channels + shape, first.chunks, first.dtype, channel=channel, compressed=compressed)
        for level, shape in enumerate(shapes, start=1)
    ]


def level_shapes(shape, level_factors) -> list[tuple[int, ...]]:
    """Shapes of levels 0..N: each level's shape is the previous one divided by its factors, rounded up.

    ``shape`` is the space shape of ``s0``; ``level_factors[k]`` the factors (one per space axis)
    from level ``k`` to level ``k + 1``.
    """
    shapes = [tuple(int(size) for size in shape)]
    for factors in level_factors:
        shapes.append(tuple(-(-size // int(factor)) for size, factor in zip(shapes[-1], factors)))
    return shapes


def level_transformations(resolution, level_factors) -> list[list[dict]]:
    """The ``coordinateTransformations`` of levels 0..N: scale, and from level 1 on the translation
    that puts each voxel's centre at the centre of the ``s0`` voxels it stands for (module docstring)."""
    resolution = np.asarray(resolution, dtype=np.float64)
    cumulative = np.ones_like(resolution)
    transformations = [[{"type": "scale", "scale": resolution.tolist()}]]
    for factors in level_factors:
        cumulative = cumulative * np.asarray(factors, dtype=np.float64)
        transformations.append(
            [
                {"type": "scale", "scale": (resolution * cumulative).tolist()},
                {"type": "translation", "translation": (resolution * (cumulative - 1) / 2).tolist()},
            ]
        )
    return transformations


def write_multiscale_metadata(
    group: zarr.Group,
    resolution,
    level_factors: Sequence[Sequence[int]] = (),
    *,
    unit: str = "nanometer",
    name: str | None = None,
    label: bool = False,
    label_source: str | None = None,
    downsampling: str | None = None,
) -> dict:
    """Describe the levels ``s0..sN`` of ``group`` as an OME-Zarr 0.5 image (or label image).

    Sets the group attribute ``ome`` (other attributes are left alone), after checking every level:
    it must exist, have the axes of ``s0`` and the shape that ``level_factors`` give. Arrays whose
    ``dimension_names`` are missing get them; differing names are an error.

    Args:
        group: zarr v3 group holding ``s0`` .. ``sN``, N = ``len(level_factors)``.
        resolution: voxel size of ``s0`` per space axis (z, y, x; or y, x) in ``unit``. An array
            with one axis more than ``resolution`` has a channel axis first (``c``, never scaled).
        level_factors: per level k, the whole downsampling factors (one per space axis) from
            level k to level k + 1.
        unit: OME-Zarr space unit, one of picometer, angstrom, nanometer, micrometer, millimeter,
            centimeter, meter.
        name: optional image name.
        label: write ``image-label`` metadata too, so that readers show the image as labels.
        label_source: for a label image, the path of the image it labels, relative to ``group``.
        downsampling: how the levels were made (the multiscale's ``type``, e.g. "mean", "mode").

    Returns:
        the ``ome`` attribute written.

    Raises:
        ValueError: for a zarr v2 group (OME-Zarr 0.5 requires v3), an unknown unit, a resolution
            that is not one positive number per space axis, a level of another shape or ndim, or
            differing ``dimension_names``.
        KeyError: if a level does not exist in ``group``.
    """
    _check_group_and_unit(group, unit)
    first = _level_array(group, level_path(0))
    space_dimensions = len(tuple(resolution))
    channel = first.ndim == space_dimensions + 1
    if first.ndim not in (space_dimensions, space_dimensions + 1) or space_dimensions not in (2, 3):
        raise ValueError(
            f"resolution {tuple(resolution)} does not fit {level_path(0)!r} of shape {first.shape}: one value per space axis (z, y, x or y, x)"
        )
    _check_resolution(resolution, axis_names(space_dimensions))
    level_factors = _checked_factors(level_factors, space_dimensions)
    names = axis_names(space_dimensions, channel=channel)
    channels = first.shape[:1] if channel else ()
    for level, shape in enumerate(level_shapes(first.shape[int(channel) :], level_factors)):
        array = first if level == 0 else _level_array(group, level_path(level))
        if tuple(array.shape) != channels + shape:
            raise ValueError(f"level {level_path(level)!r} has shape {array.shape}, expected {channels + shape} from the level factors")
        _name_axes(array, names)
    ome = multiscale_attributes(
        resolution, level_factors, channel=channel, unit=unit, name=name, label=label, label_source=label_source, downsampling=downsampling
    )
    group.attrs["ome"] = ome
    return ome


def multiscale_attributes(
    resolution,
    level_factors: Sequence[Sequence[int]] = (),
    *,
    channel: bool = False,
    unit: str = "nanometer",
    name: str | None = None,
    label: bool = False,
    label_source: str | None = None,
    downsampling: str | None = None,
) -> dict:
    """The ``ome`` attribute describing levels ``s0..sN`` as an OME-Zarr 0.5 image (or label
    image), from what they are made of alone: arguments as `write_multiscale_metadata`'s, and
    `channel` for a channel axis before the space axes. ValueError for an unknown unit, a
    resolution that is not one positive number per space axis, or bad level factors."""
    if unit not in NANOMETERS_PER_UNIT:
        raise ValueError(f"unsupported space unit {unit!r}; expected one of {', '.join(NANOMETERS_PER_UNIT)}")
    space_dimensions = len(tuple(resolution))
    names = axis_names(space_dimensions, channel=channel)
    _check_resolution(resolution, names[int(channel) :])
    level_factors = _checked_factors(level_factors, space_dimensions)
    datasets = [
        {"path": level_path(level), "coordinateTransformations": _with_channel(transformations, channel)}
        for level, transformations in enumerate(level_transformations(resolution, level_factors))
    ]
    ome = {"version": OME_VERSION, "multiscales": [_multiscale(names, datasets, unit, name, downsampling)]}
    if label:
        ome["image-label"] = {"version": OME_VERSION} | ({"source": {"image": label_source}} if label_source else {})
    return ome


def _checked_factors(level_factors, space_dimensions: int) -> list[tuple[int, ...]]:
    level_factors = [tuple(int(factor) for factor in factors) for factors in level_factors]
    for factors in level_factors:
        if len(factors) != space_dimensions or min(factors) < 1:
            raise ValueError(f"level factors {factors} must be {space_dimensions} whole numbers of at least 1")
    return level_factors


def write_ome_zarr_metadata(
    group: zarr.Group,
    dataset_path: str,
    resolution,
    unit: str = "nanometer",
    name: str | None = None,
) -> None:
    """Describe one (z, y, x) array of a zarr v3 group as a single-scale OME-Zarr 0.5 image.

    Sets the group attribute ``ome`` = ``{"version": "0.5", "multiscales": [{"name": name,
    "axes": [z, y, x as type "space" with unit], "datasets": [{"path": dataset_path,
    "coordinateTransformations": [{"type": "scale", "scale": resolution}]}]}]}``, leaving other
    attributes alone (``name`` is left out when None), and names the array's axes. Images of
    several levels, label images and channel axes: `write_multiscale_metadata`.

    Raises:
        ValueError: for a zarr v2 group, an unknown unit, a resolution that is not three positive
            numbers, or a dataset that is not a 3D array.
        KeyError: if ``dataset_path`` does not exist in ``group``.
    """
    _check_group_and_unit(group, unit)
    dataset = _level_array(group, dataset_path)
    if dataset.ndim != 3:
        raise ValueError(f"{dataset_path!r} must be a 3D (z, y, x) array")
    _check_resolution(resolution, SPACE_AXES)
    _name_axes(dataset, SPACE_AXES)
    datasets = [{"path": dataset_path, "coordinateTransformations": level_transformations(resolution, ())[0]}]
    group.attrs["ome"] = {"version": OME_VERSION, "multiscales": [_multiscale(SPACE_AXES, datasets, unit, name, None)]}


def ome_multiscales(attributes) -> list | None:
    """The OME-Zarr ``multiscales`` list of a group's attributes: 0.5 (under ``ome``) or 0.4."""
    if "ome" in attributes and "multiscales" in attributes["ome"]:
        return attributes["ome"]["multiscales"]
    return attributes.get("multiscales")


def nanometers_per(unit: str | None) -> float:
    """Nanometres per OME-Zarr space unit; an axis without unit counts as nanometres (emflow's convention)."""
    if unit is None:
        return 1.0
    if unit not in NANOMETERS_PER_UNIT:
        raise UnsupportedUnitError(f"unsupported space unit {unit!r}; expected one of {', '.join(NANOMETERS_PER_UNIT)}")
    return NANOMETERS_PER_UNIT[unit]


class UnsupportedUnitError(InputError, ValueError):
    """A volume's metadata names a space unit emflow does not know."""


def _multiscale(names, datasets, unit: str, name: str | None, downsampling: str | None) -> dict:
    multiscale = {} if name is None else {"name": name}
    multiscale["axes"] = [
        {"name": CHANNEL_AXIS, "type": "channel"} if axis == CHANNEL_AXIS else {"name": axis, "type": "space", "unit": unit}
        for axis in names
    ]
    multiscale["datasets"] = datasets
    if downsampling is not None:
        multiscale["type"] = downsampling
    return multiscale


def _with_channel(transformations: list[dict], channel: bool) -> list[dict]:
    if not channel:
        return transformations
    # The channel axis is neither scaled nor moved.
    return [
        {"type": kind, kind: [1.0 if kind == "scale" else 0.0] + values}
        for kind, values in ((transformation["type"], transformation[transformation["type"]]) for transformation in transformations)
    ]


def _check_group_and_unit(group: zarr.Group, unit: str) -> None:
    if unit not in NANOMETERS_PER_UNIT:
        raise ValueError(f"unsupported space unit {unit!r}; expected one of {', '.join(NANOMETERS_PER_UNIT)}")
    if group.metadata.zarr_format != 3:
        raise ValueError("OME-Zarr 0.5 metadata needs a zarr v3 group; this group is zarr v2")


def _check_resolution(resolution, names: tuple[str, ...]) -> None:
    values = [float(value) for value in resolution]
    if len(values) != len(names) or not all(math.isfinite(value) and value > 0 for value in values):
        count = _NUMBER_WORDS.get(len(names), str(len(names)))
        raise ValueError(f"resolution must be {count} positive numbers ({', '.join(names)}), got {tuple(resolution)}")


def _level_array(group: zarr.Group, path: str) -> zarr.Array:
    import zarr

    if path not in group:
        raise KeyError(f"no dataset {path!r} in group {group.path or '/'!r}")
    array = group[path]
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{path!r} in group {group.path or '/'!r} is a group, not an array")
    return array


def _name_axes(array: zarr.Array, names: tuple[str, ...]) -> None:
    """Give ``array`` the ``dimension_names`` ``names`` if it has none; raise if it has others."""
    current = array.metadata.dimension_names
    if current is not None and any(name is not None for name in current):
        if tuple(current) != tuple(names):
            raise ValueError(f"array {array.path!r} has dimension_names {tuple(current)}, expected {tuple(names)}")
        return
    # zarr has no call that changes an existing array's metadata: its zarr.json is rewritten with
    # the names added, which leaves the data untouched.
    from zarr.core.buffer import cpu
    from zarr.core.sync import sync

    key = f"{array.path}/zarr.json" if array.path else "zarr.json"
    document = json.loads(sync(array.store.get(key, prototype=cpu.buffer_prototype)).to_bytes())
    document["dimension_names"] = list(names)
    sync(array.store.set(key, cpu.Buffer.from_bytes(json.dumps(document, indent=2).encode())))
