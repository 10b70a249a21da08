"""The blockwise mutex watershed (`[segmentation] method = "mutex-watershed"`), in the stages of
`emflow.mutex_watershed`:

1. `supervoxels` (per block): the mutex watershed of the block read with `[mutex_watershed] halo`,
   cut to the block, split into connected fragments, small ones dissolved; ids 1..n per block.
   These fragments are the run's supervoxels, stored under volume-wide ids as watershed
   supervoxels are (`emflow.tasks.supervoxels`).
2. `pair_statistics` (per block): nearest-neighbour and long-range affinity statistics of the
   fragment pairs the block owns (`emflow.tasks.pair_statistics`).
3. `mutex_watershed` (global): the mutex watershed of the fragment graph from the merged statistics,
   O(fragment pairs) memory; then `write_segmentation`.
"""

from __future__ import annotations

import numpy as np

from emflow.affinity_statistics import statistics_halo
from emflow.config import AUTO
from emflow.mutex_watershed import fragment_mutex_watershed, mutex_watershed_fragments

from .affinities import affinity_offsets
from .context import BlockContext, GlobalContext, Run
from .pair_statistics import NAME as STATISTICS
from .pair_statistics import merged_statistics
from .spec import Read, StageSpec, Write
from .supervoxels import NODE_ID_READS, PER_BLOCK_IDS, segment_labels, write_block_supervoxels


def fragment_halo(run: Run) -> tuple[int, ...]:
    """The context of a block's mutex watershed: `[mutex_watershed] halo`; "auto" = the longest offset
    per axis, at most the block shape (explicit halos are checked against it when the run is set up)."""
    halo = run.config.mutex_watershed.halo
    if halo != AUTO:
        return halo
    return tuple(min(size, block) for size, block in zip(statistics_halo(affinity_offsets(run.config)), run.geometry.block_shape))


def fragment_stage(affinities: str) -> StageSpec:
    """Mutex watershed fragments per block from the affinities in array `affinities`."""

    def region(run: Run, blocking) -> np.ndarray:
        return blocking.boxes_with_halo(fragment_halo(run))

    def run(block: BlockContext) -> dict:
        section = block.config.mutex_watershed
        mask = block.read_optional("mask")
        fragments = mutex_watershed_fragments(
            block.read(affinities),
            affinity_offsets(block.config),
            block.inner(affinities),
            strides=section.strides,
            randomized_strides=section.randomized_strides,
            seed=section.seed + block.block_id,
            mask=None if mask is None else mask.astype(bool),
            min_size=section.min_size,
        )
        number_of_fragments = int(fragments.max(initial=0))
        write_block_supervoxels(block, fragments)
        # Voxels per fragment (ids 1..n of the block), for the segment sizes of the run report.
        block.save_partial(sizes=np.bincount(fragments.ravel(), minlength=number_of_fragments + 1)[1:])
        return {"number_of_supervoxels": number_of_fragments}

    return StageSpec(
        name="supervoxels",
        blockwise=True,
        reads=(Read.array(affinities, region), Read.array("mask", region, optional=True)),
        writes=(Write.array("supervoxels"), Write.partials()),
        config=("mutex_watershed",),
        parameters=lambda run: {"offsets": [list(offset) for offset in affinity_offsets(run.config)], "halo": list(fragment_halo(run))},
        run=run,
        description="mutex watershed fragments of one block, ids 1..n within the block",
        version=PER_BLOCK_IDS,
    )


def _mutex_watershed(stage: GlobalContext) -> dict:
    number_of_nodes = stage.results("supervoxel_ids")["number_of_supervoxels"] + 1
    attractive, repulsive = merged_statistics(stage, "nearest"), merged_statistics(stage, "long_range")
    node_labels = segment_labels(stage, fragment_mutex_watershed(number_of_nodes, attractive, repulsive))
    stage.write_table("graph/node_labels", node_labels)
    stage.save_bundle(node_labels=node_labels)
    number_of_segments = int(np.unique(node_labels[1:]).size)
    stage.log.info(
        "%d fragments, %d attractive and %d repulsive pairs: %d segments",
        number_of_nodes - 1,
        len(attractive),
        len(repulsive),
        number_of_segments,
    )
    return {"attractive_pairs": len(attractive), "repulsive_pairs": len(repulsive), "number_of_segments": number_of_segments}


MUTEX_WATERSHED = StageSpec(
    name="mutex_watershed",
    blockwise=False,
    reads=(Read.partials(STATISTICS), *NODE_ID_READS),
    writes=(Write.table("graph/node_labels"), Write.bundle()),
    run=_mutex_watershed,
)
