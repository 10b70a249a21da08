"""Affinities for the later stages: which array holds them, their offsets, and the boundary map
derived from them when they are an input (`[input] affinities_key`, bring your own predictions).

Affinities are either an input dataset (C, z, y, x) with `[input] affinity_offsets`, or the
`predictions` output of an affinity model. The boundary map the supervoxel and graph stages read
is then derived by `derive_boundaries`, a block-wise stage writing the `boundaries` output volume,
exactly as `blend_predictions` writes it from predicted affinities: one voxel of context per side,
so that a voxel's forward neighbours count (`emflow.affinities.boundaries_from_affinities`).
"""

from __future__ import annotations

from emflow.affinities import boundaries_from_affinities
from emflow.storage.models import describe_model

from .context import BlockContext
from .predict import model_path
from .spec import Read, StageSpec, Write, boxes

INPUT = "affinities"
"""The input role of given affinities; predicted ones are the output volume `predictions`."""


def affinity_array(config) -> str:
    """The array holding a run's affinities: the input, or the network's predictions."""
    return INPUT if config.input.affinities_key else "predictions"


def affinity_offsets(config) -> tuple[tuple[int, int, int], ...]:
    """The offsets of a run's affinity channels; () when it has no affinities (a boundary map is given,
    or the model predicts one). Given affinities' offsets are resolved when the run is set up."""
    if config.input.affinities_key:
        return config.input.affinity_offsets
    if config.predicting:
        description = describe_model(model_path(config))
        if description.target == "affinities":
            return description.offsets
    return ()


def _derive_boundaries(block: BlockContext) -> dict:
    affinities = block.read(INPUT)
    boundaries = boundaries_from_affinities(affinities, block.config.input.affinity_offsets)
    block.write("boundaries", boundaries[block.inner(INPUT).slicing])
    return {}


DERIVE_BOUNDARIES = StageSpec(
    name="derive_boundaries",
    blockwise=True,
    # A voxel's boundary value needs its affinities to the next voxels: one voxel more on each side.
    reads=(Read.array(INPUT, boxes((1, 1, 1))),),
    writes=(Write.array("boundaries"),),
    config=("input.affinity_offsets",),
    run=_derive_boundaries,
    description="the boundary map of the given affinities: 1 - the mean nearest-neighbour affinity to the 6 neighbours",
)
