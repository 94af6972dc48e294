"""YAML + dotted overrides -> a typed :class:`~sandbox.config.schema.Config`.

``load_config("configs/unet_dice.yaml", ["train.epochs=3", "model.depth=4"])`` reads the file,
applies the overrides, checks every key and type against the schema, fills in derived values
(:mod:`sandbox.config.resolve`) and validates the result (:mod:`sandbox.config.validate`). A
wrong key, type or value is one :class:`ConfigError` line naming the key path and what would be
accepted.
"""
from __future__ import annotations

import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sandbox.config.resolve import resolve
from sandbox.config.schema import Config
from sandbox.config.validate import validate
from sandbox.config.yamlfile import as_mapping, load_yaml_text, parse_yaml_file, read_yaml
from sandbox.errors import ConfigError, short

__all__ = ["load_config", "config_from_dict", "parse_overrides", "read_yaml", "load_yaml_text", "save_config"]

log = logging.getLogger("sandbox")




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
            raise ConfigError(f"override {short(item)} is not of the form key.path=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml_text(raw, f"override {short(item)}") if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


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
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    An empty file (or one of comments only) is the defaults, with a warning rather than an error:
    it is valid YAML that changes nothing, as ``path=None`` does, and the run's config.yaml records
    every value used; the warning only makes sure it is not silent (a file saved empty by mistake)."""
    data = {}
    if path is not None:
        raw = parse_yaml_file(path)
        if raw is None:
            log.warning("%s: empty config file; using the defaults of every key (sandbox/config/schema.py)", path)
        data = as_mapping(raw, path)
    return config_from_dict(data, overrides, str(path) if path is not None else None)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

