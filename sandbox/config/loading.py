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
import math
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sandbox.config.resolve import resolve
from sandbox.config.schema import Config, ModelConfig
from sandbox.config.stages import Stage, plan_stages
from sandbox.config.validate import validate
from sandbox.config.yamlfile import as_mapping, dump_yaml, load_yaml_text, parse_yaml_file, read_yaml
from sandbox.errors import ConfigError, short
from sandbox.models import MODELS
from sandbox.models.spec import own_options

__all__ = ["load_config", "config_from_dict", "parse_overrides", "read_yaml", "load_yaml_text", "save_config",
           "stage_configs"]

log = logging.getLogger("sandbox")

INF_OK = {"loss_balance.max"}  # float keys where .inf means something (no upper clamp); elsewhere it is refused
INT_RANGE = (-2**63, 2**63 - 1)  # what numpy and torch take; the checks of validate.py narrow most keys further


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


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the outer shape of the union arm ``tp``; then that arm's own error,
    which names the bad element (``model.widths[2]``), is the one to report."""
    origin = typing.get_origin(tp)
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return tp in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce_union(value: Any, tp: Any, path: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    error = None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, path)
        except ConfigError as exc:
            error = error or (exc if _matches(value, arg) else None)
    raise error or ConfigError(f"{path}: got {short(value)}, expected {_type_name(tp)}")


def _coerce_dict(value: Any, tp: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: got {short(value)}, expected a mapping")
    key_tp, val_tp = typing.get_args(tp)
    out = {}
    for k, v in value.items():
        if key_tp is int:
            digits = k.strip().lstrip("+-") if isinstance(k, str) else ""
            if not (isinstance(k, int) and not isinstance(k, bool)) and not (digits.isdigit() and len(digits) < 19):
                raise ConfigError(f"{path}: key {short(k)} is not an integer")
            k = int(k)
        else:
            k = str(k)
        out[k] = _coerce(v, val_tp, f"{path}.{k}")
    return out


def _finite(value: Any, path: str) -> Any:
    """Values typed ``Any`` (loss options, augmentations) hold no NaN or infinity either."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: got {short(value)}, expected a finite number")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        _finite(v, f"{path}[{k}]" if isinstance(value, list) else f"{path}.{k}")
    return value


def _coerce_scalar(value: Any, tp: Any, path: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: got {short(value)}, expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: got {short(value)}, expected a string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
        raise ConfigError(f"{path}: got {short(value)}, expected {'an integer' if tp is int else 'a number'}")
    if tp is int:
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise ConfigError(f"{path}: got {short(value)}, expected an integer in [-2**63, 2**63 - 1]")
        return value
    try:
        out = float(value)
    except OverflowError:  # an int beyond the float range
        out = math.inf
    if math.isnan(out) or (math.isinf(out) and path not in INF_OK):
        raise ConfigError(f"{path}: got {short(value)}, expected a finite number")
    return out


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats). A wrong
    element of a list or mapping is named by its path: ``model.widths[2]``, ``data.size_schedule.5``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _finite(value, path)
    if origin is Union:
        return _coerce_union(value, tp, path)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: got {short(value)}, expected {_type_name(tp)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: got {short(value)}, expected a list")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return _coerce_dict(value, tp, path)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, path)
    raise TypeError(f"unsupported config annotation {tp!r} at {path}")


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: got {short(data)}, expected a mapping of keys")
    if cls is ModelConfig:
        cls, data = _model_options(data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ConfigError(f"unknown key {short(key_path)}; accepted keys{' under ' + path if path else ''}: "
                              + ", ".join(names))
        kwargs[key] = _coerce(value, hints[key], key_path)
    return cls(**kwargs)


def _model_options(data: dict) -> tuple[type, dict]:
    """The ``model:`` section is the options of the family ``model.name`` names (``ModelSpec.options``):
    that class, and the keys of ``data`` it takes (another family's key at its unused value, as config.yaml
    files of the flat schema of earlier versions hold, dropped; at another value refused in one line that
    names the keys this family accepts: :func:`sandbox.models.spec.own_options`)."""
    name = _coerce(data.get("name", ModelConfig.name), str, "model.name")
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {short(name)}; accepted: {', '.join(MODELS.names())}")
    return MODELS[name].options, {"name": name, **own_options(name, data, keep_unknown=True)}


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c=value`` in a nested dict, creating the sections it names."""
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {short(dotted)}: {short(k)} is not a section")
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
        if cfg.stages:  # every stage built and checked now, before anything trains
            plan_stages(cfg, config_from_dict)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    return cfg


def stage_configs(cfg: Config) -> list[Stage]:
    """The stages of a config with ``stages:``, each with its own checked Config (:mod:`sandbox.config.stages`)."""
    try:
        return plan_stages(cfg, config_from_dict)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}" if cfg.source else str(exc)) from None


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
    Path(path).write_text(dump_yaml(cfg.to_dict()))  # quoted where YAML 1.1 and 1.2 read a string apart

