"""Serve an emflow output to neuroglancer on this machine: raw data, boundaries, segmentation and meshes.

Two local HTTP servers, both on 127.0.0.1 unless told otherwise: neuroglancer's own (its bundled
client, which needs no internet, and the Python-side volumes), and a file server for the zarr
stores and mesh folders, which the client reads directly (``zarr3://`` and ``precomputed://``
sources). An OME-Zarr image (emflow's output images, imported raw data) is read through its pyramid;
what the client cannot read itself (HDF5, plain zarr arrays without OME metadata) is served as a
neuroglancer ``LocalVolume`` from Python, shifted by half a voxel to OME-Zarr's convention that a
voxel's coordinate is its centre, so that every layer lines up.

The neuroglancer package installable from wheels alone is 2.40 (2.41 needs ``atomicwrites>=1.4.1``,
published as a source archive only); its client reads OME-Zarr 0.4 metadata, not 0.5's. The file
server therefore adds to each served ``zarr.json`` holding OME-Zarr 0.5 ``ome.multiscales`` a copy
of them in the 0.4 place with version "0.5-dev", which that client reads the same way; the files
on disk are never changed, and newer clients read ``ome`` and ignore the copy.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tornado.httpserver
import tornado.netutil
import tornado.web
import zarr

from emflow.errors import UsageError
from emflow.storage.ome import ome_multiscales
from emflow.storage.output import OWNER_ATTRIBUTE
from emflow.storage.precomputed import mesh_folder
from emflow.storage.volumes import HDF5Volume, open_volume, opened_volume

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ViewSources:
    """What to show: the output group, and the input datasets (``(path, key)``, or None) with their voxel size in nm (z, y, x)."""

    output_path: Path
    resolution: tuple[float, float, float]
    raw: tuple[str, str] | None = None
    boundaries: tuple[str, str] | None = None


def sources_from_config(config_path: str | Path) -> ViewSources:
    """The sources of the run a config describes (output path, input path and keys, resolution)."""
    from emflow.config import load_config

    settings = load_config(config_path).input
    return ViewSources(
        output_path=Path(load_config(config_path).output.path),
        resolution=tuple(float(value) for value in settings.resolution),
        raw=(settings.path, settings.raw_key) if settings.raw_key else None,
        boundaries=(settings.path, settings.boundaries_key) if settings.boundaries_key else None,
    )


def sources_from_output(output_path: str | Path) -> ViewSources:
    """The sources recorded in an output group: emflow keeps the run's config in its attributes."""
    group = zarr.open_group(str(output_path), mode="r")
    owner = group.attrs.get(OWNER_ATTRIBUTE)
    if not isinstance(owner, dict) or "config" not in owner:
        raise UsageError(f"{output_path} is not an output group written by an emflow run (no run config in its attributes)")
    settings = owner["config"]["input"]
    return ViewSources(
        output_path=Path(output_path),
        resolution=tuple(float(value) for value in settings["resolution"]),
        raw=(settings["path"], settings["raw_key"]) if settings.get("raw_key") else None,
        boundaries=(settings["path"], settings["boundaries_key"]) if settings.get("boundaries_key") else None,
    )


@dataclass
class RunningViewer:
    """A served viewer: open ``url`` in a browser; ``stop()`` ends both servers."""

    url: str
    data_url: str
    viewer: object
    _file_server: object = field(repr=False)
    _closers: list = field(default_factory=list, repr=False)

    def stop(self) -> None:
        import neuroglancer

        self._file_server.stop()
        neuroglancer.server.stop()
        for close in self._closers:
            close()


def serve(sources: ViewSources, *, port: int = 0, bind_address: str = LOOPBACK) -> RunningViewer:
    """Start neuroglancer on ``bind_address:port`` (0: any free port) showing ``sources``.

    Layers: ``raw`` (grey), ``boundaries`` (translucent cyan; the output's predicted boundaries, or
    the input's), ``segmentation`` over them with its meshes when they were written (select a
    segment, e.g. by double-clicking it, to see its mesh in the 3D panel). Returns at once; the
    servers run in background threads until ``stop()``.
    """
    import neuroglancer

    output_path = Path(sources.output_path)
    if not (output_path / "zarr.json").is_file():
        raise FileNotFoundError(f"output group {output_path} does not exist (the workflow has not run yet)")
    roots = {"output": output_path}
    meshes = mesh_folder(output_path)
    if (meshes / "info").is_file():
        roots["meshes"] = meshes
    file_server = _FileServer(roots, bind_address)
    neuroglancer.set_server_bind_address(bind_address, port)
    viewer = neuroglancer.Viewer()
    closers = []
    dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=list(sources.resolution))
    with viewer.txn() as state:
        # Display axes in neuroglancer's order (the "xy" panel shows x and y); layers match them by name.
        state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=list(sources.resolution)[::-1])
        state.layout = "4panel"
        raw = _layer_source(sources.raw, "raw", file_server, dimensions, closers) if sources.raw else None
        if raw is not None:
            state.layers["raw"] = neuroglancer.ImageLayer(source=raw)
        boundaries = None
        if "boundaries" in _members(output_path):
            boundaries = _layer_source(("output", "boundaries"), "output", file_server, dimensions, closers)
        if boundaries is None and sources.boundaries:
            boundaries = _layer_source(sources.boundaries, "boundaries", file_server, dimensions, closers)
        if boundaries is not None:
            shader = "#uicontrol invlerp normalized\nvoid main() { emitRGBA(vec4(0.0, 1.0, 1.0, 0.5 * normalized())); }\n"
            state.layers["boundaries"] = neuroglancer.ImageLayer(source=boundaries, shader=shader)
        segmentation = [_layer_source(("output", "segmentation"), "output", file_server, dimensions, closers)]
        if "meshes" in roots:
            segmentation.append(f"precomputed://{file_server.url}/meshes")
        state.layers["segmentation"] = neuroglancer.SegmentationLayer(source=segmentation)
        with opened_volume(output_path, "segmentation") as volume:
            shape = tuple(volume.shape)
        state.position = [size / 2 for size in shape[::-1]]
        # Voxels per screen pixel: the whole section fits into a panel about 500 pixels wide.
        state.cross_section_scale = max(shape[1:]) / 500
    return RunningViewer(url=viewer.get_viewer_url(), data_url=file_server.url, viewer=viewer, _file_server=file_server, _closers=closers)


def _members(output_path: Path) -> set[str]:
    return {child.name for child in output_path.iterdir() if (child / "zarr.json").is_file()}


def _layer_source(location: tuple[str, str], root: str, file_server: _FileServer, dimensions, closers: list):
    """A layer source for ``location``: the file server's URL of an OME-Zarr image, else a LocalVolume."""
    import neuroglancer

    path, key = location
    path = file_server.roots["output"] if path == "output" else Path(path)
    key = key.strip("/")
    node = None
    if path.suffix.lower() != ".h5" and (path / "zarr.json").is_file():
        node = zarr.open_group(str(path), mode="r").get(key) if key else None
    if isinstance(node, zarr.Group) and ome_multiscales(node.attrs):
        if root not in file_server.roots:
            file_server.add_root(root, path)
        return f"zarr3://{file_server.url}/{root}/{key}"
    volume = open_volume(path, key)
    if isinstance(volume, HDF5Volume):
        closers.append(volume.close)
    data = volume.dataset if isinstance(volume, HDF5Volume) else volume
    local = neuroglancer.LocalVolume(data=data, dimensions=dimensions)
    # LocalVolume puts voxel i at [i, i + 1); OME-Zarr sources centre it on i.
    matrix = np.hstack([np.eye(3), np.full((3, 1), -0.5)])
    transform = neuroglancer.CoordinateSpaceTransform(output_dimensions=dimensions, matrix=matrix)
    return neuroglancer.LayerDataSource(url=local, transform=transform)


class _FileServer:
    """Serves folders read-only over HTTP on a free port (CORS open, for the neuroglancer client), in a background thread."""

    def __init__(self, roots: dict[str, Path], bind_address: str):
        import asyncio
        import secrets

        self.roots = dict(roots)
        token = secrets.token_hex(8)
        self._application = tornado.web.Application([])
        for name, folder in self.roots.items():
            self._add_handlers(token, name, folder)
        self._token = token
        sockets = tornado.netutil.bind_sockets(0, address=bind_address)
        self.url = f"http://{bind_address}:{sockets[0].getsockname()[1]}/{token}"
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._http = tornado.httpserver.HTTPServer(self._application)
            self._http.add_sockets(sockets)
            started.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="emflow-view-files", daemon=True)
        self._thread.start()
        started.wait()

    def add_root(self, name: str, folder: Path) -> None:
        self.roots[name] = Path(folder)
        self._add_handlers(self._token, name, Path(folder))

    def _add_handlers(self, token: str, name: str, folder: Path) -> None:
        self._application.add_handlers(
            r".*",
            [
                (rf"/{token}/{name}/(.*zarr\.json)", _ZarrJsonHandler, {"root": str(folder)}),
                (rf"/{token}/{name}/(.*)", _CorsStaticFileHandler, {"path": str(folder)}),
            ],
        )

    def stop(self) -> None:
        def shutdown() -> None:
            self._http.stop()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(timeout=10)


class _CorsStaticFileHandler(tornado.web.StaticFileHandler):
    def set_default_headers(self) -> None:
        _allow_any_origin(self)

    def options(self, *args) -> None:
        self.set_status(204)
        self.finish()


class _ZarrJsonHandler(tornado.web.RequestHandler):
    """A zarr.json, with OME-Zarr 0.5 multiscales copied where clients before neuroglancer 2.41 read them (module docstring)."""

    def initialize(self, root: str) -> None:
        self.root = Path(root).resolve()

    def set_default_headers(self) -> None:
        _allow_any_origin(self)

    def options(self, *args) -> None:
        self.set_status(204)
        self.finish()

    def get(self, relative: str) -> None:
        path = (self.root / relative).resolve()
        if self.root not in path.parents or not path.is_file():
            raise tornado.web.HTTPError(404)
        document = json.loads(path.read_text())
        attributes = document.get("attributes", {})
        if "ome" in attributes and "multiscales" in attributes["ome"] and "multiscales" not in attributes:
            attributes["multiscales"] = [dict(multiscale, version="0.5-dev") for multiscale in attributes["ome"]["multiscales"]]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(document))


def _allow_any_origin(handler: tornado.web.RequestHandler) -> None:
    handler.set_header("Access-Control-Allow-Origin", "*")
    handler.set_header("Access-Control-Allow-Headers", "x-requested-with, range")
    handler.set_header("Access-Control-Expose-Headers", "content-range")
    handler.set_header("Access-Control-Allow-Methods", "GET, OPTIONS")
