"""Segment meshes for viewers: marching cubes per block, merged per segment into neuroglancer's
precomputed mesh format beside the output group (`emflow.storage.precomputed`)."""

from __future__ import annotations

import numpy as np

from emflow.blocking import Blocking
from emflow.meshes import Meshes, block_meshes, merge_meshes
from emflow.storage.precomputed import mesh_folder, write_legacy_meshes
from emflow.storage.store import level_name

from .context import BlockContext, GlobalContext, Run
from .spec import Read, StageSpec, Write, level_blocks


def _mesh_read_boxes(run: Run, blocking: Blocking) -> np.ndarray:
    """Region rule: each block's box with one voxel more on its upper faces (`mesh_read_box`)."""
    boxes = blocking.boxes_with_halo((0, 0, 0))
    return np.stack([boxes[:, 0], np.minimum(boxes[:, 1] + 1, np.asarray(blocking.shape))], axis=1)


def _block_meshes(level: int):
    def run(block: BlockContext) -> dict:
        geometry = block.geometry
        meshes = block_meshes(
            block.read(level_name("segmentation", level)), block.box, geometry.level_shape(level), geometry.level_resolution(level)
        )
        block.save_partial(**meshes.arrays())
        return {"segments": int(len(meshes.ids)), "faces": int(len(meshes.faces))}

    return run


def _merge_meshes(stage: GlobalContext) -> dict:
    parts = (Meshes(**dict(zip(FIELDS, arrays))) for arrays in stage.partials("meshes", *FIELDS))
    meshes = merge_meshes(parts)
    folder = mesh_folder(stage.run.layout.output_path)
    written = write_legacy_meshes(folder, meshes)
    stage.log.info("%d meshes, %d faces, %d bytes in %s", len(meshes.ids), len(meshes.faces), written, folder)
    return {"segments": int(len(meshes.ids)), "faces": int(len(meshes.faces)), "bytes": written, "folder": str(folder)}


FIELDS = ("ids", "vertex_offsets", "face_offsets", "vertices", "faces")


def mesh_stages(level: int) -> list[StageSpec]:
    """Meshes of the segmentation's pyramid level `level` (0 = full resolution)."""
    return [
        StageSpec(
            name="meshes",
            blockwise=True,
            reads=(Read.array(level_name("segmentation", level), _mesh_read_boxes),),
            writes=(Write.partials(),),
            blocking=level_blocks(level),
            run=_block_meshes(level),
            imports=("scipy.ndimage",),
        ),
        StageSpec(name="merge_meshes", blockwise=False, reads=(Read.partials("meshes"),), writes=(Write.bundle(),), run=_merge_meshes),
    ]
