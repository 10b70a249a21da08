"""Configuration: typed sections (`config.run`, `config.training`), loading a user's TOML file, validation.

The dataclasses are the single source of truth for which keys exist, their types, defaults and
meaning (`config.schema`); `emflow config defaults` and `emflow config training-defaults` print the
documented defaults derived from them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from emflow.errors import ConfigError

from . import edge_training, run, training
from .edge_training import EdgeTrainingConfig
from .evaluation import EvaluationConfig
from .run import ROLES, RunConfig, check_halo
from .schema import AUTO, Schema, as_dict, defaults, defaults_text, load, replace, resolve_function
from .training import TrainingConfig

__all__ = [
    "AUTO",
    "ConfigError",
    "EdgeTrainingConfig",
    "EvaluationConfig",
    "ROLES",
    "RunConfig",
    "TrainingConfig",
    "as_dict",
    "check_halo",
    "default_config",
    "default_config_text",
    "edge_training_config_text",
    "load_config",
    "load_edge_training_config",
    "load_evaluation_config",
    "load_training_config",
    "replace",
    "resolve_function",
    "training_config_text",
]


def load_config(path: str | Path) -> RunConfig:
    """Read a workflow config, merge it over the defaults and validate it (ConfigError names the problem).

    Relative paths (`[input] path`, `[output] path` and `work_dir`, `[predict] model`) are resolved
    against the config file's folder, so a config means the same thing from any working directory.
    """
    return _load(RunConfig, path, "config file", "config key")


def load_training_config(path: str | Path) -> TrainingConfig:
    """Read an `emflow train` config, merged over its defaults and validated; relative paths
    (`[data] path`, `[training] output`) are resolved against the config's folder."""
    return _load(TrainingConfig, path, "training config file", "training config key")


def load_edge_training_config(path: str | Path) -> EdgeTrainingConfig:
    """Read an `emflow train-edges` config, validated; `[edge_training] output` is resolved against
    the config's folder (the runs and ground truths are resolved by the command, and kept as written
    in the classifier's provenance)."""
    return _load(EdgeTrainingConfig, path, "edge training config file", "edge training config key")


def load_evaluation_config(path: str | Path) -> EvaluationConfig:
    """Read an evaluation config (written by `emflow evaluate`), validated."""
    return _load(EvaluationConfig, path, "evaluation config file", "evaluation config key")


def default_config_text() -> str:
    return defaults_text(RunConfig, run.HEADER)


def edge_training_config_text() -> str:
    return defaults_text(EdgeTrainingConfig, edge_training.HEADER)


def training_config_text() -> str:
    return defaults_text(TrainingConfig, training.HEADER)


def default_config() -> dict[str, dict[str, Any]]:
    """The defaults as plain data, as `default_config_text` prints them."""
    return as_dict(defaults(RunConfig))


def _load(schema: type[Schema], path: str | Path, what_file: str, what_key: str) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what_file} not found: {path}")
    try:
        user = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a text file: {error}") from error
    config = load(schema, user, what=what_key)
    config.check()
    base = path.resolve().parent
    resolved: dict[str, dict[str, str]] = {}
    for section, key_name in schema.paths:
        value = getattr(getattr(config, section), key_name)
        # "auto" ([predict] model) is a keyword, not a file name.
        if value and value != AUTO:
            resolved.setdefault(section, {})[key_name] = str((base / Path(value).expanduser()).resolve())
    return replace(config, **resolved)
