"""The `emflow train-edges` config: which finished (or resumable) runs and ground truths train an edge classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from emflow.errors import ConfigError

from .schema import Section, key

HEADER = """emflow edge classifier training (`emflow train-edges CONFIG`): the region graphs of `emflow run` configs
(run up to the classifier's features, resuming where they stopped) with their ground truth train gradient-boosted
trees that give each edge its cut probability; `[costs] classifier` uses the file. Relative paths are relative to
this file."""


@dataclass(frozen=True)
class EdgeTrainingSection(Section):
    """What to train on and how. Edge labels: cut where the two supervoxels' majority ground-truth bodies
    differ; edges touching a supervoxel without labelled voxels are left out."""

    runs: tuple[str, ...] = key(
        (), "emflow run config files (multicut, with affinities: predicted or given), one per volume.", required=True
    )
    groundtruth: tuple[str, ...] = key(
        (), "Ground truth of each run's volume, 'path:key' (0 = unlabelled), in the order of `runs`.", required=True
    )
    output: str = key("", "The classifier file to write (`[costs] classifier`).", required=True)
    channels: tuple[Literal["boundaries", "affinities"], ...] = key(
        ("boundaries",),
        'The channels whose face statistics are features, beside the sizes: "boundaries" (the boundary map) and/or\n'
        '"affinities" (every affinity channel; the runs need affinities). Default chosen by leaving each of the shipped\n'
        "classifier's three training volumes out in turn (beta 0.5): mean adapted Rand error 0.101 with the boundary map\n"
        "alone, 0.110 with every channel; a classifier of the boundary map alone also serves runs given a boundary map.",
    )
    iterations: int = key(200, "Boosting iterations (trees).", minimum=1)
    learning_rate: float = key(0.05, "Shrinkage of each tree's contribution.")
    min_samples_leaf: int = key(20, "Fewest edges in a leaf, so that probabilities are averages, not single votes.", minimum=1)
    seed: int = key(0, "Seed of the boosting's randomised steps: the same data and seed give the same file.")

    def check(self, name: str, what: str) -> None:
        if len(self.runs) != len(self.groundtruth):
            raise ConfigError(
                f"{what} edge_training.groundtruth must name one ground truth per run: {len(self.runs)} runs, {len(self.groundtruth)} given"
            )
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ConfigError(
                f'{what} edge_training.channels must name "boundaries" and/or "affinities" once each, got {list(self.channels)}'
            )
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"{what} edge_training.learning_rate must lie in (0, 1], got {self.learning_rate}")


@dataclass(frozen=True)
class EdgeTrainingConfig:
    edge_training: EdgeTrainingSection

    paths: ClassVar[tuple[tuple[str, str], ...]] = (("edge_training", "output"),)

    def check(self) -> None:
        """Checks across sections: none."""
