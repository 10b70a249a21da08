"""Volume I/O for emflow: locations, opening zarr/HDF5 arrays, importing/writing, OME-Zarr metadata, meshes."""

from .ome import write_multiscale_metadata, write_ome_zarr_metadata
from .volumes import (
    IMPORT_COMPLETE_ATTRIBUTE,
    RESOLUTION_ATTRIBUTE,
    HDF5Volume,
    import_volume,
    open_volume,
    opened_volume,
    parse_location,
    read_resolution,
    write_volume,
)

__all__ = [
    "IMPORT_COMPLETE_ATTRIBUTE",
    "RESOLUTION_ATTRIBUTE",
    "HDF5Volume",
    "import_volume",
    "open_volume",
    "opened_volume",
    "parse_location",
    "read_resolution",
    "write_multiscale_metadata",
    "write_ome_zarr_metadata",
    "write_volume",
]
