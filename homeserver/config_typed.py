"""Typed loading of parsed YAML into frozen dataclasses: the generic half of
``homeserver.config`` (which holds the dataclasses, their defaults and the checks across
keys). A problem is a ``ConfigError`` naming the key, never a traceback."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _describe(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, key: str, base: Path, path_keys: AbstractSet[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key, base, path_keys)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        if key in path_keys:
            return str((base / value).resolve()) if not Path(value).is_absolute() else value
        return value
    if origin is dict:
        _, vtype = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping, got {value!r}")
        return {str(k): _convert(v, vtype, f"{key}.{k}", base, path_keys) for k, v in value.items()}
    if origin is list:
        (itype,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        return [_convert(v, itype, f"{key}[{i}]", base, path_keys) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key, base, path_keys)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def build_dataclass(cls: Any, data: Any, prefix: str, base: Path, path_keys: AbstractSet[str] = frozenset()) -> Any:
    """An instance of the dataclass ``cls`` from parsed YAML ``data``: types checked, unknown
    and missing keys refused, the keys named in ``path_keys`` resolved against ``base``."""
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted(set(map(str, data)) - names):
        raise ConfigError(f"{prefix + '.' if prefix else ''}{unknown}: unknown key")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], key, base, path_keys)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
        elif key in path_keys and isinstance(f.default, str):
            kwargs[f.name] = str((base / f.default).resolve())
    return cls(**kwargs)
