"""Plugin functions for the plugin tests, importable as `plugin_functions` (tests/ is on sys.path)."""

from __future__ import annotations

import time

import networkx as nx
import numpy as np

from emflow.supervoxels import distance_transform_watershed


def slab_supervoxels(boundaries, *, resolution, two_d, mask, slab_thickness: int = 4):
    """Watershed supervoxels cut into z-slabs: a plugin whose effect is visible in the output."""
    labels = distance_transform_watershed(boundaries, resolution=resolution, two_d=two_d, mask=mask)
    slab = (np.arange(boundaries.shape[0], dtype=np.uint64) // np.uint64(slab_thickness))[:, None, None]
    return labels * (slab.max() + np.uint64(1)) + slab


def mean_boundary_costs(features, *, beta):
    """Costs from the mean boundary value alone, unweighted."""
    probabilities = np.clip(features[:, 0], 1e-3, 1 - 1e-3)
    return np.log((1 - probabilities) / probabilities) + np.log((1 - beta) / beta)


def attractive_components(number_of_nodes, edges, edge_costs, *, minimum_cost: float = 0.0):
    """Segments = connected components of the edges with cost above `minimum_cost`."""
    graph = nx.Graph()
    graph.add_nodes_from(range(1, number_of_nodes))
    graph.add_edges_from(edges[edge_costs > minimum_cost].tolist())
    node_labels = np.zeros(number_of_nodes, dtype=np.uint64)
    for label, component in enumerate(sorted(nx.connected_components(graph), key=min), start=1):
        node_labels[list(component)] = label
    return node_labels


def label_everything(number_of_nodes, edges, edge_costs, **parameters):
    """Accepts any keyword, so the config may pass anything: each node is its own segment."""
    return np.arange(number_of_nodes, dtype=np.uint64)


def failing_supervoxels(boundaries, *, resolution, two_d, mask):
    """A supervoxel plugin that always raises: every supervoxel block fails (tests of failure reports)."""
    raise RuntimeError("failing_supervoxels fails on purpose")


def slow_supervoxels(boundaries, *, seconds: float = 1.0, **parameters):
    """The default supervoxels, `seconds` late: blocks that take long enough to be caught running."""
    time.sleep(seconds)
    return distance_transform_watershed(boundaries, **parameters)


def threshold_components(boundaries, *, resolution, mask, threshold: float = 0.5):
    """A stitching segmenter: connected components of the voxels below `threshold` (membranes are 0)."""
    from bioimage_cpp.segmentation import label

    foreground = boundaries < threshold
    if mask is not None:
        foreground &= mask
    return label(foreground.astype(np.uint32), connectivity=1)
