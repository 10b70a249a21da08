"""A 3D U-Net for boundary or affinity prediction (Ronneberger 2015, Çiçek 2016; Funke 2017).

Same-padded convolutions, so output and input patches have the same shape and a patch's shape
must be divisible by the product of the pooling factors along each axis (`total_downsampling`).
Pooling factors are per level and per axis, so serial-section data (z resolution several times
the in-plane one) can pool only in-plane, e.g. (1, 2, 2), until the voxels are about isotropic.
The 2D-3D hybrid (`two_d_levels`, as in Lee 2017) gives the first levels in-plane (1, 3, 3)
kernels, which fit data whose sections are not aligned well enough for 3D filters at full resolution.

The network returns logits; a sigmoid turns them into boundary or affinity probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """The architecture, saved with every model so it can be rebuilt.

    depth: resolution levels (1 = no pooling); width: feature maps at the first level, doubled per
    level; pooling: depth - 1 per-axis (z, y, x) factors; two_d_levels: how many of the first
    levels use (1, 3, 3) kernels; norm: "group" (GroupNorm, independent of batch size) or "none".
    """

    in_channels: int = 1
    out_channels: int = 1
    depth: int = 3
    width: int = 16
    pooling: tuple[tuple[int, int, int], ...] = ((2, 2, 2), (2, 2, 2))
    two_d_levels: int = 0
    norm: str = "group"

    def __post_init__(self):
        pooling = tuple(tuple(int(factor) for factor in factors) for factors in self.pooling)
        object.__setattr__(self, "pooling", pooling)
        if self.depth < 1 or self.width < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"depth, width and channel counts must be positive, got {self}")
        if len(pooling) != self.depth - 1 or any(len(factors) != 3 or min(factors) < 1 for factors in pooling):
            raise ValueError(f"pooling must hold depth - 1 = {self.depth - 1} triples of positive integers, got {self.pooling}")
        if not 0 <= self.two_d_levels <= self.depth:
            raise ValueError(f"two_d_levels must be in 0..depth, got {self.two_d_levels}")
        if self.norm not in ("group", "none"):
            raise ValueError(f"norm must be 'group' or 'none', got {self.norm!r}")

    def as_dict(self) -> dict:
        return {**asdict(self), "pooling": [list(factors) for factors in self.pooling]}


def total_downsampling(pooling: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Per-axis product of the pooling factors: what a patch's shape must be divisible by."""
    z, y, x = (math.prod(factors[axis] for factors in pooling) for axis in range(3))  # (1, 1, 1) without pooling
    return z, y, x


def _conv_block(in_channels: int, out_channels: int, kernel: tuple[int, int, int], norm: str) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers.append(nn.Conv3d(channels, out_channels, kernel, padding=padding))
        if norm == "group":
            # Groups of 4 feature maps; GroupNorm keeps a prediction independent of the batch it is in.
            layers.append(nn.GroupNorm(max(1, out_channels // 4), out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """Input (N, in_channels, z, y, x) float32; output logits (N, out_channels, z, y, x)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        widths = [config.width * 2**level for level in range(config.depth)]
        kernels = [(1, 3, 3) if level < config.two_d_levels else (3, 3, 3) for level in range(config.depth)]
        self.encoders = nn.ModuleList()
        channels = config.in_channels
        for level in range(config.depth):
            self.encoders.append(_conv_block(channels, widths[level], kernels[level], config.norm))
            channels = widths[level]
        self.pools = nn.ModuleList(nn.MaxPool3d(factors, stride=factors) for factors in config.pooling)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose3d(widths[level + 1], widths[level], factors, stride=factors) for level, factors in enumerate(config.pooling)
        )
        self.decoders = nn.ModuleList(
            _conv_block(2 * widths[level], widths[level], kernels[level], config.norm) for level in range(config.depth - 1)
        )
        self.head = nn.Conv3d(widths[0], config.out_channels, 1)

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        skips = []
        features = patch
        for level, encoder in enumerate(self.encoders):
            features = encoder(features)
            if level < len(self.pools):
                skips.append(features)
                features = self.pools[level](features)
        for level in reversed(range(len(self.decoders))):
            features = self.upsamplers[level](features)
            features = self.decoders[level](torch.cat([skips[level], features], dim=1))
        return self.head(features)


def check_patch_shape(patch_shape: Sequence[int], config: UNetConfig) -> tuple[int, int, int]:
    """The patch shape as a tuple; ValueError unless every axis is a positive multiple of the downsampling."""
    patch_shape = tuple(int(size) for size in patch_shape)
    factors = total_downsampling(config.pooling)
    if len(patch_shape) != 3 or any(size <= 0 or size % factor for size, factor in zip(patch_shape, factors)):
        raise ValueError(f"patch shape {patch_shape} must be 3 positive multiples of the network's downsampling {factors}")
    return patch_shape
