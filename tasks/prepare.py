"""Stage 0: create the output group and its block-wise arrays (inputs are checked when the config loads)."""

from __future__ import annotations

import logging

from emflow import __version__
from emflow.storage.output import OWNER_ATTRIBUTE, create_block_array, open_output_group
from emflow.storage.volumes import write_ome_zarr_metadata

from .base import GlobalTask
from .context import RunContext, reference_role


def prediction_channels(context: RunContext) -> int:
    """Output channels of the configured model (imported here because tasks.predict imports this module)."""
    from .predict import describe_model

    return describe_model(context).network_config.out_channels


def input_identity(context: RunContext) -> dict[str, str]:
    """The dataset a run segments (the boundary map, or the raw data it is predicted from): its
    resolved path and key. New data in it, or new parameters, are reprocessing; another dataset is
    another input, whose results an output never takes in silently."""
    described = context.inputs[reference_role(context.inputs)]
    return {"path": described["path"], "key": described["key"]}


class PrepareOutput(GlobalTask):
    stage = "prepare_output"

    @classmethod
    def stage_parameters(cls, context: RunContext) -> dict:
        return {
            "inputs": context.inputs,
            "resolution": context.config["input"]["resolution"],
            "block_shape": context.config["blocking"]["block_shape"],
            "output": str(context.output_path),
            "prediction": {"channels": prediction_channels(context), "dtype": context.config["predict"]["output_dtype"]} if context.predicting else None,
        }

    def run_stage(self, logger: logging.Logger) -> dict:
        context = self.context
        group = open_output_group(context.output_path, create=True)
        group.attrs[OWNER_ATTRIBUTE] = {"version": __version__, "config": context.config, "input": input_identity(context)}
        block_shape = context.blocking.block_shape
        if not context.config["input"]["supervoxels_key"]:
            create_block_array(group, "supervoxels_block_local", context.shape, block_shape, "uint64")
        create_block_array(group, "supervoxels", context.shape, block_shape, "uint64")
        if context.predicting:
            channels = prediction_channels(context)
            dtype = context.config["predict"]["output_dtype"]
            # zstd shrinks float32 probabilities by only a few percent but made writing them a
            # third of the prediction stages' overhead (measured, benchmarks/inference.py).
            compressed = dtype != "float32"
            create_block_array(group, "predictions", (channels, *context.shape), (channels, *block_shape), dtype, compressed=compressed)
            create_block_array(group, "boundaries", context.shape, block_shape, dtype, compressed=compressed)
        segmentation = group.require_group("segmentation")
        create_block_array(segmentation, "s0", context.shape, block_shape, "uint64")
        write_ome_zarr_metadata(segmentation, "s0", context.config["input"]["resolution"], name="segmentation")
        logger.info("created output arrays of shape %s, chunks %s in %s", context.shape, block_shape, context.output_path)
        return {"shape": list(context.shape), "number_of_blocks": context.blocking.number_of_blocks}
