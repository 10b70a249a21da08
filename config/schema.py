"""Typed configuration: sections are frozen dataclasses, and everything else is derived from them.

A config file is a TOML document of sections; each section is a dataclass whose fields are its
keys, declared with `key(default, doc)`. From those declarations come:

- validation (`load`): unknown sections and keys, the type of every value (from the field's type
  hint: bool, int, float, str, `Literal` choices, fixed-length number lists, lists of integer
  vectors, `"auto"` alternatives), each with one message naming the key, what it must be and what
  it got; then each section's `check` for ranges and relations between keys;
- the documented defaults (`defaults_text`), printed by `emflow config defaults`: every section's
  docstring and every key's doc above its default;
- the values a stage's fingerprint depends on (`as_dict`).

Why dataclasses and not pydantic: the messages are part of emflow's contract (one line naming the
key, the expected type and the value given, the same for every key), plugin sections accept the
keys of a function's signature, and a frozen dataclass is hashable, so a loaded config can key the
caches of a run. pydantic would need a translation layer for each of these and another dependency.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from emflow.errors import ConfigError

AUTO = "auto"


def key(default: Any, doc: str, *, required: bool = False, minimum: float | None = None) -> Any:
    """A config key: a dataclass field with its default and its documentation.

    `required`: the default (an empty value) only stands for "not given", and a config file must
    write the key. `minimum`: for integer vectors, the least value of each entry (0 or 1), named
    in the message ("non-negative" or "positive").
    """
    if isinstance(default, list):
        default = _frozen(default)
    return dataclasses.field(default=default, metadata={"doc": doc, "required": required, "minimum": minimum})


class Section:
    """A config section: subclasses are frozen dataclasses whose fields are declared with `key`.

    Plugin sections set `default_function` and `reserved`: their `function` key names a function
    "package.module:function"; with the default function, the section's own keys are its
    parameters; with another (a plugin), the keys of the plugin's signature are accepted instead,
    held in `extra`, and the `reserved` keys stay emflow's own.
    """

    default_function: ClassVar[str | None] = None
    reserved: ClassVar[frozenset[str]] = frozenset()
    if TYPE_CHECKING:  # the keys of plugin sections (declared by each of them)
        function: str
        extra: tuple[tuple[str, Any], ...]

    def check(self, name: str, what: str) -> None:
        """Raise ConfigError for values out of range (types are checked already). `name`: the
        section's name; `what`: "config key" or "training config key", for messages."""

    @property
    def uses_plugin(self) -> bool:
        return self.default_function is not None and self.function != self.default_function

    def parameters(self) -> dict[str, Any]:
        """The keyword arguments a plugin section passes to its function."""
        if self.uses_plugin:
            return {name: _thawed(value) for name, value in self.extra}
        return {field.name: _thawed(getattr(self, field.name)) for field in _keys(type(self)) if field.name not in self.reserved}


class Schema(Protocol):
    """A config: a dataclass whose fields are sections, with the keys holding paths and its checks across sections."""

    paths: ClassVar[tuple[tuple[str, str], ...]]

    def check(self) -> None: ...


def as_dict(value: Any) -> Any:
    """A config or section as plain JSON-like data (lists, dicts), plugin keys included."""
    if dataclasses.is_dataclass(value):
        result = {field.name: as_dict(getattr(value, field.name)) for field in dataclasses.fields(value) if field.name != "extra"}
        result.update({name: _thawed(item) for name, item in getattr(value, "extra", ())})
        return result
    return _thawed(value)


def load(schema: type, user: Mapping[str, Any], *, what: str = "config key") -> Any:
    """Validate parsed TOML `user` against the config dataclass `schema` (whose fields are
    sections) and return the typed config. Raises ConfigError naming the first problem."""
    hints = typing.get_type_hints(schema)
    sections = {field.name: hints[field.name] for field in dataclasses.fields(schema)}
    kind = what.removesuffix(" key")
    for name, values in user.items():
        if name not in sections:
            raise ConfigError(f"unknown {kind} section [{name}]; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
    built = {name: load_section(section_type, user.get(name, {}), name, what) for name, section_type in sections.items()}
    config = schema(**built)
    for name in sections:
        getattr(config, name).check(name, what)
    return config


def load_section(cls: type[Section], values: Mapping[str, Any], name: str, what: str) -> Any:
    """One section from its TOML table (see `load`)."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in _keys(cls)}
    function = values.get("function", cls.default_function)
    plugin = cls.default_function is not None and function != cls.default_function
    accepted = _plugin_keywords(name, function) if plugin else None
    checked, extra = {}, {}
    for key_name, value in values.items():
        full_name = f"{name}.{key_name}"
        if key_name in fields and (not plugin or key_name in cls.reserved):
            checked[key_name] = _checked(full_name, value, hints[key_name], fields[key_name], what)
        elif not plugin:
            raise ConfigError(f"unknown {what.removesuffix(' key')} key {full_name}; known in [{name}]: {', '.join(fields)}")
        elif accepted is not None and key_name not in accepted:
            raise ConfigError(f"unknown {what} {full_name}: not a parameter of {function}")
        else:
            extra[key_name] = value
    for key_name, field in fields.items():
        if field.metadata.get("required") and checked.get(key_name, field.default) in ("", ()):
            raise ConfigError(f"{what} {name}.{key_name} is required")
    if "extra" in {field.name for field in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        checked["extra"] = tuple(sorted((name, _frozen(value)) for name, value in extra.items()))
    return cls(**checked)


def defaults_text(schema: type, header: str) -> str:
    """The documented defaults of every section and key, as TOML: what `emflow config defaults` prints."""
    lines = [*_comment(header), ""]
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        section = hints[field.name]
        lines += [*_comment(inspect.cleandoc(section.__doc__ or "")), f"[{field.name}]"]
        for key_field in _keys(section):
            doc = key_field.metadata["doc"]
            if key_field.metadata.get("required"):
                doc = f"(required) {doc}"
            lines += [*_comment(doc), f"{key_field.name} = {_toml_value(key_field.default)}"]
        lines.append("")
    return "\n".join(lines)


def defaults(schema: type) -> Any:
    """The config with every default (required keys hold their empty placeholder)."""
    hints = typing.get_type_hints(schema)
    return schema(**{field.name: hints[field.name]() for field in dataclasses.fields(schema)})


def resolve_function(spec: str, name: str = "function") -> Callable:
    """Import a plugin given as "package.module:function"; ConfigError naming the key `name` if it cannot be."""
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


def replace(config: Any, **sections: Mapping[str, Any]) -> Any:
    """A copy of `config` with keys of some sections replaced (values already valid), for
    settings derived at run time."""
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()})


# --- helpers ------------------------------------------------------------------------------------


def _keys(cls: type) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(cls) if "doc" in field.metadata]


def _plugin_keywords(section: str, spec: str) -> set[str] | None:
    """Keyword arguments a plugin accepts; None means it takes **kwargs (anything goes)."""
    function = resolve_function(spec, f"{section}.function")
    parameters = inspect.signature(function).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return {parameter.name for parameter in parameters}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked(name: str, value: Any, hint: Any, field: dataclasses.Field, what: str) -> Any:
    """`value` converted to the field's type, or ConfigError("{what} {name} must be ..., got ...")."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        converted = _converted(value, option)
        if converted is not _INVALID:
            vector = typing.get_origin(option) is tuple and all(argument is int for argument in typing.get_args(option))
            if vector and field.metadata.get("minimum") is not None:
                _check_integer_vector(name, converted, field.metadata["minimum"], what)
                converted = tuple(int(item) for item in converted)
            return converted
    raise ConfigError(f"{what} {name} must be {' or '.join(_describe(option) for option in options)}, got {value!r}")


_INVALID = object()


def _converted(value: Any, hint: Any) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return value if isinstance(value, bool) else _INVALID
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if hint is float:
        return float(value) if _is_number(value) else _INVALID
    if hint is str:
        return value if isinstance(value, str) else _INVALID
    if origin is Literal:
        return value if value in arguments else _INVALID
    if origin is tuple and not isinstance(value, list):
        return _INVALID
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        items = [_converted(item, arguments[0]) for item in value]
        return _INVALID if _INVALID in items else tuple(items)
    if origin is tuple:
        # Fixed-length vectors take any numbers here; integer vectors are checked for whole values
        # with their own message (`_check_integer_vector`).
        if len(value) != len(arguments) or not all(_is_number(item) for item in value):
            return _INVALID
        return tuple(float(item) if argument is float else item for item, argument in zip(value, arguments))
    raise TypeError(f"unsupported config type {hint!r}")


def _describe(hint: Any) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return f"one of {', '.join(map(repr, arguments))}"
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        inner = typing.get_args(arguments[0])
        if typing.get_origin(arguments[0]) is tuple:
            return f"a list of lists of {len(inner)} integers"
        return f"a list of {_describe(arguments[0])}s"
    if origin is tuple:
        return f"a list of {len(arguments)} numbers"
    return hint.__name__


def _check_integer_vector(name: str, values: tuple, minimum: float, what: str) -> None:
    if not all(float(value).is_integer() and value >= minimum for value in values):
        wording = "positive" if minimum > 0 else "non-negative"
        raise ConfigError(f"{what} {name} must be three {wording} integers (z, y, x), got {list(values)}")


def _frozen(value: Any) -> Any:
    return tuple(_frozen(item) for item in value) if isinstance(value, (list, tuple)) else value


def _thawed(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_thawed(item) for item in value]
    if isinstance(value, Mapping):
        return {name: _thawed(item) for name, item in value.items()}
    return value


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()] if text else []


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)
