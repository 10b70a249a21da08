"""A trained network with what it takes to use it: target, offsets, input normalisation.

`TrainedModel.state()` is a plain dict of tensors, numbers, strings and lists, so a model file
loads with `torch.load(..., weights_only=True)` (no pickled code runs when a model is opened).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .affinities import boundaries_from_affinities, check_offsets
from .model_choice import check_resolution
from .unet import UNet3D, UNetConfig, check_patch_shape

TARGETS = ("boundaries", "affinities")
FORMAT_VERSION = 1


def out_channels_for(target: str, offsets: Sequence[Sequence[int]]) -> int:
    """Network output channels a target needs: one per affinity offset, or one boundary map."""
    return len(offsets) if target == "affinities" else 1


def scale_raw(raw: np.ndarray) -> np.ndarray:
    """Raw EM data as float32 in [0, 1]: unsigned integers divided by their dtype's maximum,
    floats taken as they are (they must already be in [0, 1])."""
    raw = np.asarray(raw)
    if np.issubdtype(raw.dtype, np.unsignedinteger):
        return raw.astype(np.float32) / np.float32(np.iinfo(raw.dtype).max)
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float32, copy=False)
    raise ValueError(f"raw data must be unsigned integer or float, got {raw.dtype}")


@dataclass
class TrainedModel:
    """network: the U-Net; target: "boundaries" (1 channel) or "affinities" (one channel per
    offset); input_mean, input_std: statistics of the scaled training raw data (`scale_raw`), used
    to standardise any input; patch_shape: the training patch (z, y, x), the default inference
    patch; metadata: training provenance (config, iterations, time, validation loss);
    resolution: voxel size (z, y, x) in nm of the training data, None if not recorded (files
    written before emflow recorded it); modality: imaging modality of the training data, e.g.
    "FIB-SEM" or "ssTEM", "" if not recorded. `choose_model` picks a model by its resolution."""

    network: UNet3D
    target: str
    offsets: tuple[tuple[int, int, int], ...]
    input_mean: float
    input_std: float
    patch_shape: tuple[int, int, int]
    metadata: dict[str, Any] = field(default_factory=dict)
    resolution: tuple[float, float, float] | None = None
    modality: str = ""

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"model target must be one of {TARGETS}, got {self.target!r}")
        expected = out_channels_for(self.target, self.offsets)
        if self.target == "affinities":
            self.offsets = tuple(tuple(int(step) for step in offset) for offset in check_offsets(self.offsets))
        if self.network.config.out_channels != expected:
            raise ValueError(f"a {self.target} model needs {expected} output channels, the network has {self.network.config.out_channels}")
        self.patch_shape = check_patch_shape(self.patch_shape, self.network.config)
        if self.resolution is not None:
            self.resolution = check_resolution(self.resolution)

    @property
    def out_channels(self) -> int:
        return self.network.config.out_channels

    def state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "network_config": self.network.config.as_dict(),
            "network_state": {name: tensor.detach().cpu() for name, tensor in self.network.state_dict().items()},
            "target": self.target,
            "offsets": [list(offset) for offset in self.offsets],
            "input_mean": float(self.input_mean),
            "input_std": float(self.input_std),
            "patch_shape": list(self.patch_shape),
            "metadata": self.metadata,
            "resolution": None if self.resolution is None else list(self.resolution),
            "modality": self.modality,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TrainedModel:
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format version {state.get('format_version')!r} (this emflow reads {FORMAT_VERSION})")
        network = UNet3D(UNetConfig(**state["network_config"]))
        network.load_state_dict(state["network_state"])
        network.eval()
        return cls(
            network=network,
            target=state["target"],
            offsets=tuple(tuple(offset) for offset in state["offsets"]),
            input_mean=state["input_mean"],
            input_std=state["input_std"],
            patch_shape=tuple(state["patch_shape"]),
            metadata=state["metadata"],
            # Optional: model files written before emflow recorded them lack both.
            resolution=None if state.get("resolution") is None else tuple(state["resolution"]),
            modality=state.get("modality", ""),
        )

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Network input from raw data: scaled to [0, 1], then standardised; float32."""
        return (scale_raw(raw) - np.float32(self.input_mean)) / np.float32(self.input_std)

    def boundaries(self, probabilities: np.ndarray) -> np.ndarray:
        """Boundary map (z, y, x) from the network's probabilities (C, z, y, x)."""
        if self.target == "boundaries":
            return probabilities[0]
        return boundaries_from_affinities(probabilities, self.offsets)

    def predictor(self, device: str = "auto", precision: str = "auto") -> Predictor:
        return Predictor(self.network, resolve_device(device), precision)


def resolve_device(device: str) -> torch.device:
    """ "auto" = the first CUDA GPU if there is one, else the CPU; otherwise a torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    return resolved


class Predictor:
    """Callable: float32 (N, 1, z, y, x) normalised patches → float32 (N, C, z, y, x) probabilities.

    precision: "float32", "bfloat16" or "float16" (autocast on a GPU), or "auto" = bfloat16 on a
    GPU and float32 on the CPU, where reduced precision is slower.
    """

    def __init__(self, network: UNet3D, device: torch.device, precision: str = "auto"):
        if precision not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"precision must be 'auto', 'float32', 'bfloat16' or 'float16', got {precision!r}")
        if precision == "auto":
            precision = "bfloat16" if device.type == "cuda" else "float32"
        self.device = device
        self.precision = precision
        self.network = network.to(device).eval()

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=getattr(torch, self.precision))
            if self.precision != "float32"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits = self.network(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32)).to(self.device))
            return torch.sigmoid(logits.float()).cpu().numpy()


def model_input_statistics(raw: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of scaled raw data (what `TrainedModel.normalize` removes)."""
    scaled = scale_raw(raw)
    return float(scaled.mean()), float(max(scaled.std(), 1e-6))
