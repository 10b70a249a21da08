"""Affinity statistics of supervoxel pairs, per block, merged by the global stages that use them.

`pair_statistics` computes, per block, the `emflow.affinity_statistics.PairStatistics` of the voxel
pairs the block owns (those whose anchor lies in its box): of the nearest-neighbour channels
("nearest": the region graph's edges, for agglomeration and the mutex watershed's attractive
edges; from the boundary map when the run has no affinities) and of the long-range channels
("long_range": lifted edges, the mutex watershed's repulsive edges). A block reads the supervoxels
and the affinities over its box grown on its forward faces by `statistics_halo` (1 voxel for
nearest neighbours, the longest offset for long-range channels). The statistics are integers, so
`merged_statistics` gives exactly those of the whole volume, whatever the blocking.
"""

from __future__ import annotations

from emflow.affinity_statistics import (
    PairStatistics,
    block_boundary_pair_statistics,
    block_pair_statistics,
    long_range_channels,
    merge_pair_statistics,
    nearest_neighbour_channels,
    statistics_halo,
)

from .affinities import affinity_offsets
from .context import BlockContext, GlobalContext, Run
from .spec import Read, StageSpec, Write, forward_boxes
from .supervoxels import node_id_map

NAME = "pair_statistics"
KINDS = {"nearest": nearest_neighbour_channels, "long_range": long_range_channels}
FIELDS = ("pairs", "counts", "sums", "histogram_offsets", "histogram_bins", "histogram_counts")


def statistics_stage(kinds: tuple[str, ...], affinities: str | None) -> StageSpec:
    """The block-wise statistics of `kinds` ("nearest", "long_range") from the affinities in array
    `affinities`, or (None; "nearest" only) from the boundary map."""
    if affinities is None and kinds != ("nearest",):
        raise ValueError(f"statistics {kinds} need affinities")

    def halo(run: Run) -> tuple[int, ...]:
        if affinities is None:
            return (1, 1, 1)
        offsets = affinity_offsets(run.config)
        return statistics_halo(offsets, [channel for kind in kinds for channel in KINDS[kind](offsets)])

    region = forward_boxes(halo)
    source = affinities or "boundaries"

    def run(block: BlockContext) -> dict:
        labels, data = block.read("supervoxels"), block.read(source)
        own_box = block.inner("supervoxels")
        offsets = affinity_offsets(block.config)
        fields, result = {}, {}
        for kind in kinds:
            if affinities is None:
                statistics = block_boundary_pair_statistics(labels, data, own_box)
            else:
                statistics = block_pair_statistics(labels, data, offsets, own_box, channels=KINDS[kind](offsets))
            fields.update({f"{kind}_{field}": getattr(statistics, field) for field in FIELDS})
            result[f"{kind}_pairs"] = len(statistics)
        block.save_partial(**fields)
        return result

    return StageSpec(
        name=NAME,
        blockwise=True,
        reads=(Read.array("supervoxels", region), Read.array(source, region)),
        writes=(Write.partials(),),
        parameters=lambda run: {
            "kinds": list(kinds),
            "source": source,
            "offsets": [list(offset) for offset in affinity_offsets(run.config)],
        },
        run=run,
        description=f"affinity statistics ({', '.join(kinds)}) of the supervoxel pairs a block owns",
    )


def merged_statistics(stage: GlobalContext, kind: str) -> PairStatistics:
    """The statistics of `kind` of the whole volume, merged from every block's (O(pairs) memory), of
    node pairs (the stage declares `NODE_ID_READS`)."""
    to_nodes = node_id_map(stage)
    return merge_pair_statistics(
        PairStatistics(to_nodes(pairs), *rest) for pairs, *rest in stage.partials(NAME, *(f"{kind}_{field}" for field in FIELDS))
    )
