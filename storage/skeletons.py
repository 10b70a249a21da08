"""Skeleton files: one ``.npz`` per skeleton forest (`emflow.skeletons.Skeletons`).

Format (numpy ``.npz``, uncompressed; all keys required):

- ``nodes_nm``: (V, 3) float64 node positions in nm, axes (z, y, x); a node at ``p`` lies in voxel
  ``round(p / resolution)`` of a volume (voxel centres at ``index * resolution``).
- ``edges``: (E, 2) int64 indices into ``nodes_nm``, each undirected edge once.
- ``skeleton_ids``: (V,) uint64 body id of each node (not 0); one body may have several trees.

Skeletons traced elsewhere (SWC, CATMAID) convert by writing these three arrays; SWC lists x, y, z,
so reverse its columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emflow.skeletons import Skeletons
from emflow.targets import atomic_save_npz


def write_skeletons(path: str | Path, skeletons: Skeletons) -> None:
    """Write ``skeletons`` to ``path`` (.npz) atomically."""
    atomic_save_npz(
        path,
        nodes_nm=np.asarray(skeletons.nodes, dtype=np.float64),
        edges=np.asarray(skeletons.edges, dtype=np.int64),
        skeleton_ids=np.asarray(skeletons.skeleton_ids, dtype=np.uint64),
    )


def read_skeletons(path: str | Path) -> Skeletons:
    """Read a skeleton file written by `write_skeletons` (or by hand in its format).

    Raises:
        ValueError: naming the file, if a key is missing or the arrays do not fit together (shapes,
            edges pointing past the nodes, non-finite positions, body id 0).
    """
    with np.load(path) as arrays:
        missing = {"nodes_nm", "edges", "skeleton_ids"} - set(arrays.files)
        if missing:
            raise ValueError(f"skeleton file {path} lacks {', '.join(sorted(missing))}")
        nodes, edges, skeleton_ids = arrays["nodes_nm"], arrays["edges"], arrays["skeleton_ids"]
    problems = []
    if nodes.ndim != 2 or nodes.shape[1] != 3 or not np.isfinite(nodes).all():
        problems.append(f"nodes_nm must be finite (V, 3) positions, got shape {nodes.shape}")
    if edges.size and (edges.ndim != 2 or edges.shape[1] != 2 or edges.dtype.kind not in "iu"):
        problems.append(f"edges must be (E, 2) integer indices, got shape {edges.shape} dtype {edges.dtype}")
    elif edges.size and (edges.min() < 0 or edges.max() >= len(nodes)):
        problems.append(f"edges index nodes outside 0..{len(nodes) - 1}")
    if skeleton_ids.shape != (len(nodes),) or skeleton_ids.dtype.kind not in "iu" or (skeleton_ids == 0).any():
        problems.append(f"skeleton_ids must be {len(nodes)} non-zero integer ids, got shape {skeleton_ids.shape}")
    if problems:
        raise ValueError(f"skeleton file {path}: " + "; ".join(problems))
    return Skeletons(nodes.astype(np.float64), edges.reshape(-1, 2).astype(np.int64), skeleton_ids.astype(np.uint64))
