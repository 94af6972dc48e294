"""YAML + dotted overrides -> a typed :class:`~sandbox.config.schema.Config`.

``load_config("configs/unet_dice.yaml", ["train.epochs=3", "model.depth=4"])`` reads the file,
applies the overrides, checks every key and type against the schema, fills in derived values
(:mod:`sandbox.config.resolve`) and validates the result (:mod:`sandbox.config.validate`). A
wrong key, type or value is one :class:`ConfigError` line naming the key path and what would be
accepted.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sandbox.config.resolve import resolve
from sandbox.config.schema import Config
from sandbox.config.validate import validate
from sandbox.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``1e-3`` is a float and only true/false are booleans
    (PyYAML's 1.1 rules read ``1e-3`` as a string and ``no``/``off`` as False, which would turn
    ``mixed_precision: no`` into a boolean)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)

# ----------------------------------------------------------------------------- loading

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin in (list, dict):
        return f"a {origin.__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: got {value!r}, expected {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: got {value!r}, expected {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: got {value!r}, expected a list")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: got {value!r}, expected a mapping")
        key_tp, val_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if key_tp is int:
                try:
                    k = int(k)
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}: key {k!r} is not an integer") from None
            out[k if key_tp is int else str(k)] = _coerce(v, val_tp, f"{path}.{k}")
        return out
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: got {value!r}, expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: got {value!r}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: got {value!r}, expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: got {value!r}, expected a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: got {data!r}, expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ConfigError(f"unknown key {key_path!r}; accepted keys{' under ' + path if path else ''}: "
                              + ", ".join(names))
        kwargs[key] = _coerce(value, hints[key], key_path)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c=value`` in a nested dict, creating the sections it names."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "model.widths=[8,16]"]`` -> ``[("train.epochs", 3), ...]`` (values read as YAML)."""
    parsed = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key.path=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml_text(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = ""
        configs = sorted(Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
        if configs:
            hint = "; available: " + ", ".join(str(c) for c in configs)
        raise ConfigError(f"config file {str(path)!r} not found{hint}")
    try:
        data = load_yaml_text(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def config_from_dict(data: dict, overrides: list[str] | None = None, source: str | None = None) -> Config:
    data = dict(data)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    where = f"{source}: " if source else ""
    try:
        cfg = _from_dict(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    cfg.source = source
    try:
        cfg = resolve(cfg)
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    return config_from_dict(data, overrides, str(path) if path is not None else None)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

