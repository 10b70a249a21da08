"""Configuration: the documented defaults, loading a user's TOML file, and validation.

`defaults.toml` beside this module is the single source of truth for which keys exist, their types
and their defaults; `emflow config defaults` prints it verbatim.
"""

from __future__ import annotations

import importlib
import inspect
import math
import tomllib
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

DEFAULTS_PATH = Path(__file__).with_name("defaults.toml")

REQUIRED_KEYS = (
    ("input", "path"),
    ("input", "resolution"),
    ("output", "path"),
    ("blocking", "block_shape"),
    ("blocking", "halo"),
    ("multicut", "beta"),
    ("multicut", "solver"),
)

# Keys of a pluggable section that emflow consumes itself instead of passing to the function.
RESERVED_KEYS = {
    "supervoxels": {"function", "dimensionality", "anisotropy_threshold"},
    "costs": {"function"},
    "multicut": {"function", "beta", "n_scales"},
}

CHOICES = {
    ("supervoxels", "dimensionality"): ("auto", "2d", "3d"),
    ("costs", "weighting"): ("none", "size"),
    ("multicut", "solver"): ("greedy-additive", "kernighan-lin", "fusion-moves"),
    ("predict", "precision"): ("auto", "float32", "bfloat16", "float16"),
    ("predict", "output_dtype"): ("float32", "uint8"),
}


class ConfigError(ValueError):
    """A config file is unreadable, names an unknown key, or holds a value of the wrong type."""


def default_config_text() -> str:
    return DEFAULTS_PATH.read_text()


def default_config() -> dict[str, dict[str, Any]]:
    return tomllib.loads(default_config_text())


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a TOML config, merge it over the defaults and validate it.

    Relative paths in `[input] path`, `[output] path` and `[output] work_dir` are resolved against
    the config file's folder, so a config means the same thing from any working directory.
    """
    path = Path(path)
    user = _read_toml(path, "config file")
    config = merge_config(user)
    base = path.resolve().parent
    for section, key in (("input", "path"), ("output", "path"), ("output", "work_dir"), ("predict", "model")):
        if config[section][key]:
            config[section][key] = str((base / config[section][key]).resolve())
    return config


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error


def merge_config(user: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Merge a parsed user config over the defaults and validate it (see `load_config`)."""
    config = default_config()
    defaults = deepcopy(config)
    for section, values in user.items():
        if section not in defaults:
            raise ConfigError(f"unknown config section [{section}]; known: {', '.join(defaults)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        default_function = defaults[section].get("function")
        function = values.get("function", default_function)
        if function != default_function:
            accepted = _plugin_keywords(section, function)
            # A plugin takes only what the user gives it, not the default function's parameters.
            config[section] = {key: config[section][key] for key in RESERVED_KEYS[section]}
        for key, value in values.items():
            name = f"{section}.{key}"
            if key in RESERVED_KEYS.get(section, ()) or (function == default_function and key in defaults[section]):
                config[section][key] = _checked_value(name, value, defaults[section][key])
            elif function == default_function:
                raise ConfigError(f"unknown config key {name}; known in [{section}]: {', '.join(defaults[section])}")
            elif accepted is not None and key not in accepted:
                raise ConfigError(f"unknown config key {name}: not a parameter of {function}")
            else:
                config[section][key] = value
    _check_required(user, config)
    _check_semantics(config)
    return config


def _checked_value(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list) and default and isinstance(default[0], list):
        # A list of integer vectors (offsets, pooling factors): any number of them, each as long as the default's.
        ok = isinstance(value, list) and all(
            isinstance(item, list) and len(item) == len(default[0]) and all(isinstance(step, int) and not isinstance(step, bool) for step in item)
            for item in value
        )
    elif isinstance(default, list):
        ok = isinstance(value, list) and len(value) == len(default) and all(
            isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
        )
    else:
        ok = type(value) is type(default)
    if not ok:
        if isinstance(default, list) and default and isinstance(default[0], list):
            expected = f"a list of lists of {len(default[0])} integers"
        elif isinstance(default, list):
            expected = f"a list of {len(default)} numbers"
        else:
            expected = type(default).__name__
        raise ConfigError(f"config key {name} must be {expected}, got {value!r}")
    return value


def _check_required(user: dict[str, Any], config: dict[str, dict[str, Any]]) -> None:
    """Required keys must be written in the user's file; their defaults only document a typical value."""
    for section, key in REQUIRED_KEYS:
        if key not in config[section]:
            continue  # a plugin replaced the default function and its parameters
        if user.get(section, {}).get(key, "") == "":
            raise ConfigError(f"config key {section}.{key} is required")


def _check_semantics(config: dict[str, dict[str, Any]]) -> None:
    defaults = default_config()
    for (section, key), choices in CHOICES.items():
        uses_default_function = config[section].get("function") == defaults[section].get("function")
        if key not in config[section] or not (uses_default_function or key in RESERVED_KEYS.get(section, ())):
            continue  # a plugin's own parameters are the plugin's to check
        if config[section][key] not in choices:
            raise ConfigError(f"config key {section}.{key} must be one of {', '.join(map(repr, choices))}, got {config[section][key]!r}")
    resolution = config["input"]["resolution"]
    if not all(math.isfinite(value) and value > 0 for value in resolution):
        raise ConfigError(f"config key input.resolution must be three positive numbers, the voxel size in nm (z, y, x), got {resolution}")
    _check_blocking(config["blocking"])
    if not config["input"]["boundaries_key"] and not config["input"]["raw_key"]:
        raise ConfigError("config key input.boundaries_key or input.raw_key is required (without a boundary map, boundaries are predicted from raw data)")
    for key in ("patch_shape", "overlap"):
        values = config["predict"][key]
        if any(not float(value).is_integer() or value < 0 for value in values):
            raise ConfigError(f"config key predict.{key} must be non-negative integers, got {values}")
        config["predict"][key] = [int(value) for value in values]
    if config["predict"]["batch_size"] < 1:
        raise ConfigError(f"config key predict.batch_size must be at least 1, got {config['predict']['batch_size']}")
    if config["scheduling"]["block_groups"] < 0:
        raise ConfigError(f"config key scheduling.block_groups must be 0 (auto) or more, got {config['scheduling']['block_groups']}")
    if config["scheduling"]["retries"] < 0:
        raise ConfigError(f"config key scheduling.retries must be 0 or more, got {config['scheduling']['retries']}")
    beta = config["multicut"]["beta"]
    if not 0.0 < beta < 1.0:
        raise ConfigError(f"config key multicut.beta must lie strictly between 0 and 1, got {beta}")
    if config["multicut"]["n_scales"] < 0:
        raise ConfigError(f"config key multicut.n_scales must be 0 or more, got {config['multicut']['n_scales']}")
    if config["multicut"]["n_scales"] and config["multicut"]["function"] != defaults["multicut"]["function"]:
        raise ConfigError(
            "config key multicut.n_scales > 0 solves sub-problems with the built-in solvers; "
            f"it cannot be combined with multicut.function = {config['multicut']['function']!r}"
        )
    if config["input"]["lifted_labels_key"] and config["multicut"]["function"] != defaults["multicut"]["function"]:
        raise ConfigError(
            "config key input.lifted_labels_key asks for a lifted multicut, solved with the built-in solvers; "
            f"it cannot be combined with multicut.function = {config['multicut']['function']!r}"
        )
    if config["lifted"]["graph_depth"] < 2:
        raise ConfigError(f"config key lifted.graph_depth must be at least 2 (neighbours are local edges), got {config['lifted']['graph_depth']}")
    if config["lifted"]["weight"] <= 0:
        raise ConfigError(f"config key lifted.weight must be positive, got {config['lifted']['weight']}")
    for section in RESERVED_KEYS:
        resolve_function(config[section]["function"], f"{section}.function")


def _check_blocking(blocking: dict[str, Any]) -> None:
    """Block shape: three positive integers; halo: three non-negative integers, none above the block's.

    "Not above" rather than "below": a halo equal to the block still keeps the box a block reads
    within its 26 neighbours (3 blocks per axis), which is what bounds a block's read and memory
    at 27 times its own size. A larger halo breaks that bound, reading more context than data,
    and usually means the two keys were swapped or the halo was given in nm.
    """
    for key, least, wording in (("block_shape", 1, "positive"), ("halo", 0, "non-negative")):
        values = blocking[key]
        if not all(float(value).is_integer() and value >= least for value in values):
            raise ConfigError(f"config key blocking.{key} must be three {wording} integers (z, y, x), got {values}")
        blocking[key] = [int(value) for value in values]
    too_large = [axis for axis, (halo, block) in enumerate(zip(blocking["halo"], blocking["block_shape"])) if halo > block]
    if too_large:
        raise ConfigError(
            f"config key blocking.halo {blocking['halo']} is larger than blocking.block_shape {blocking['block_shape']} "
            f"along axis {', '.join(map(str, too_large))}; a halo must not exceed the block: make it smaller or the blocks larger"
        )


def resolve_function(spec: str, name: str = "function") -> Callable:
    """Import a plugin given as "package.module:function"."""
    module_name, separator, attribute = spec.partition(":")
    if not separator or not module_name or not attribute:
        raise ConfigError(f"config key {name} must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"config key {name}: cannot import module {module_name!r}: {error}") from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"config key {name}: {module_name} has no function {attribute!r}")
    return function


def _plugin_keywords(section: str, spec: str) -> set[str] | None:
    """Keyword arguments a plugin accepts; None means it takes **kwargs (anything goes)."""
    if section not in RESERVED_KEYS:
        raise ConfigError(f"config key {section}.function: section [{section}] is not pluggable")
    function = resolve_function(spec, f"{section}.function")
    parameters = inspect.signature(function).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return {parameter.name for parameter in parameters}


def function_parameters(config: dict[str, dict[str, Any]], section: str) -> dict[str, Any]:
    """The keyword arguments a pluggable stage passes to its function."""
    return {key: value for key, value in config[section].items() if key not in RESERVED_KEYS[section]}


TRAINING_DEFAULTS_PATH = Path(__file__).with_name("training.toml")

TRAINING_REQUIRED_KEYS = (("data", "path"), ("data", "raw_key"), ("data", "labels_key"), ("training", "output"))

TRAINING_CHOICES = {
    ("model", "target"): ("affinities", "boundaries"),
    ("model", "norm"): ("group", "none"),
    ("training", "loss"): ("bce", "malis", "bce+malis"),
}


def training_config_text() -> str:
    return TRAINING_DEFAULTS_PATH.read_text()


def load_training_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read an `emflow train` config, merged over `training.toml`'s defaults and validated.

    Relative paths (`[data] path`, `[training] output`) are resolved against the config's folder.
    Raises ConfigError naming the first problem.
    """
    path = Path(path)
    user = _read_toml(path, "training config file")
    config = tomllib.loads(training_config_text())
    for section, values in user.items():
        if section not in config:
            raise ConfigError(f"unknown training config section [{section}]; known: {', '.join(config)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, value in values.items():
            if key not in config[section]:
                raise ConfigError(f"unknown training config key {section}.{key}; known in [{section}]: {', '.join(config[section])}")
            config[section][key] = _checked_value(f"{section}.{key}", value, config[section][key])
    for section, key in TRAINING_REQUIRED_KEYS:
        if user.get(section, {}).get(key, "") == "":
            raise ConfigError(f"training config key {section}.{key} is required")
    _check_training_semantics(config)
    base = path.resolve().parent
    for section, key in (("data", "path"), ("training", "output")):
        config[section][key] = str((base / config[section][key]).resolve())
    return config


def _check_training_semantics(config: dict[str, dict[str, Any]]) -> None:
    for (section, key), choices in TRAINING_CHOICES.items():
        if config[section][key] not in choices:
            raise ConfigError(f"training config key {section}.{key} must be one of {', '.join(map(repr, choices))}, got {config[section][key]!r}")
    for key in ("train_start", "train_stop", "validation_start", "validation_stop"):
        if any(not float(value).is_integer() or value < 0 for value in config["data"][key]):
            raise ConfigError(f"training config key data.{key} must be non-negative integers, got {config['data'][key]}")
        config["data"][key] = [int(value) for value in config["data"][key]]
    resolution = config["data"]["resolution"]
    if any(resolution) and not all(math.isfinite(value) and value > 0 for value in resolution):
        raise ConfigError(
            f"training config key data.resolution must be the voxel size in nm (z, y, x), three positive numbers, "
            f"or [0, 0, 0] (not recorded), got {resolution}"
        )
    config["data"]["resolution"] = [float(value) for value in resolution]
    model, training = config["model"], config["training"]
    if config["data"]["labels_2d"] and model["target"] == "affinities" and any(offset[0] != 0 for offset in model["offsets"]):
        raise ConfigError(
            "training config key data.labels_2d: labels not linked across sections define no affinities across sections; "
            "use in-plane model.offsets (z step 0) or model.target = 'boundaries'"
        )
    if config["data"]["labels_2d"] and "malis" in training["loss"]:
        raise ConfigError(
            "training config key training.loss: MALIS needs affinities across sections, which data.labels_2d labels do not define"
        )
    if any(not float(value).is_integer() or value <= 0 for value in training["patch_shape"]):
        raise ConfigError(f"training config key training.patch_shape must be positive integers, got {training['patch_shape']}")
    training["patch_shape"] = [int(value) for value in training["patch_shape"]]
    if model["target"] == "affinities" and not model["offsets"]:
        raise ConfigError("training config key model.offsets must name at least one offset for an affinity model")
    if "malis" in training["loss"]:
        missing = [offset for offset in ([-1, 0, 0], [0, -1, 0], [0, 0, -1]) if offset not in model["offsets"]]
        if model["target"] != "affinities" or missing:
            raise ConfigError("training config key training.loss: MALIS needs model.target = 'affinities' with the nearest-neighbour offsets [-1, 0, 0], [0, -1, 0], [0, 0, -1]")
    for key in ("iterations", "batch_size", "checkpoint_every", "log_every", "validate_every", "validation_patches"):
        if training[key] < 1:
            raise ConfigError(f"training config key training.{key} must be at least 1, got {training[key]}")
    if training["learning_rate"] <= 0 or training["malis_weight"] < 0 or training["malis_start"] < 0 or training["threads"] < 0:
        raise ConfigError("training config keys training.learning_rate must be positive and malis_weight, malis_start, threads non-negative")
    if len(model["pooling"]) != model["depth"] - 1:
        raise ConfigError(f"training config key model.pooling must hold depth - 1 = {model['depth'] - 1} factor triples, got {len(model['pooling'])}")
