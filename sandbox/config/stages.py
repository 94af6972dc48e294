"""The ``stages:`` of a config: one run trained in stages, each the base config plus its own keys.

    stages:
      - {name: onecycle64, data: {size: 64}, train: {scheduler: onecycle, epochs: 4}}
      - {name: cyclic128, data.size: 128, data.augment: [], train.scheduler: cyclic}

A stage's keys are dotted or nested, as on the command line (a mapping under a section of the schema
sets the keys it names; any other value replaces the key's value whole). Stage k (from 1) is its own
run ``<out_dir>/<name>/stages/<k>_<stage name>``: stage 1 starts as the base config says (its
``train.init_from`` included), stage k > 1 from stage k-1's ``checkpoints/last`` (``train.init_from``,
strict; a fresh optimizer and schedule). Every stage's config is built and checked when the config is
loaded, so a bad key in stage 3 is one line naming ``stages[2].<key>`` before stage 1 trains.

Pure: the caller passes the function that turns a config dict into a checked Config
(:func:`sandbox.config.loading.config_from_dict`); the run directories are :mod:`sandbox.runs.stages`.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any, Callable, Union

from sandbox.config.schema import Config
from sandbox.errors import ConfigError, short
from sandbox.invocation import command

#: what a stage may not set, and why; ``model`` and every key under it included
REFUSED = {
    "model": "every stage trains the same model (each starts from the previous stage's weights); set it in the "
             "base config",
    "train.init_from": "stage 1 starts from the base config's train.init_from, each later stage from the previous "
                       "stage's checkpoints/last",
    "train.init_from_strict": "each stage after the first loads the previous stage's weights strictly",
    "train.resume": f"resume the whole staged run: {command('train')} --resume <out_dir>/<name>",
    "out_dir": "the stages run under the base config's <out_dir>/<name>/stages/",
    "stages": "a stage has no stages of its own",
    "source": "it is set when a config is loaded",
}
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
#: each stage is a run of its own, built and checked at load time and trained in turn (a few is usual)
MAX_STAGES = 100


@dataclasses.dataclass
class Stage:
    index: int  # from 1
    name: str  # the stage's own name (``stage`` where none is given)
    keys: dict[str, Any]  # its dotted keys
    cfg: Config  # the stage's run: name <k>_<name>, out_dir <out_dir>/<name>/stages

    @property
    def dirname(self) -> str:
        return self.cfg.name


def plan_stages(cfg: Config, build: Callable[[dict, str | None], Config]) -> list[Stage]:
    """The stages of ``cfg`` (a base config with ``stages``), each built with ``build(data, source)`` and
    checked; a bad one is a ConfigError naming ``stages[i].<key>``."""
    base = cfg.to_dict()
    base.update(stages=None, source=None)
    base["train"].update(resume=None)
    where_runs = Path(cfg.out_dir) / cfg.name / "stages"
    plans: list[Stage] = []
    if len(cfg.stages or []) > MAX_STAGES:
        raise ConfigError(f"stages: {len(cfg.stages):,} stages; at most {MAX_STAGES} (each is a run of its own, "
                          "trained in turn: a few is usual)")
    for i, raw in enumerate(cfg.stages or []):
        at = f"stages[{i}]"
        name = raw.get("name", "stage")
        if not isinstance(name, str) or not STAGE_NAME.fullmatch(name):
            raise ConfigError(f"{at}.name: got {short(name)}, expected up to 40 letters, digits, '_', '.' or '-' "
                              "(the stage's directory is stages/<k>_<name>)")
        keys = flatten({k: v for k, v in raw.items() if k != "name"}, Config)
        for key in keys:
            _check_allowed(key, at)
        data = copy.deepcopy(base)
        for key, value in keys.items():
            _set(data, key, value, at)
        data.update(name=f"{i + 1}_{name}", out_dir=str(where_runs))
        if plans:
            data["train"].update(init_from=str(where_runs / plans[-1].dirname / "checkpoints" / "last"),
                                 init_from_strict=True)
        try:
            stage_cfg = build(data, None)
        except ConfigError as exc:
            raise ConfigError(_name_stage(str(exc), keys, at, name)) from None
        stage_cfg.source = cfg.source
        _check_same_model(cfg, stage_cfg, at)
        plans.append(Stage(i + 1, name, keys, stage_cfg))
    return plans


def flatten(tree: dict, section: Any, prefix: str = "") -> dict[str, Any]:
    """``{data: {size: 64}, train.epochs: 2}`` -> ``{"data.size": 64, "train.epochs": 2}``: a mapping under a
    section of the schema (a dataclass) is descended into, any other value is a leaf."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        sub = _section(key)
        if isinstance(v, dict) and sub is not None:
            out.update(flatten(v, sub, key + "."))
        else:
            out[key] = v
    return out


def _section(dotted: str) -> type | None:
    """The dataclass a dotted key of the Config names (``train.early_stop`` -> EarlyStopConfig), else None."""
    tp: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
        if typing.get_origin(tp) is Union:  # Optional[section]
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), None)
    return tp if dataclasses.is_dataclass(tp) else None


def _check_allowed(key: str, at: str) -> None:
    for refused, why in REFUSED.items():
        if key == refused or key.startswith(refused + "."):
            raise ConfigError(f"{at}.{key}: a stage may not set {refused}{'.*' if refused == 'model' else ''}; "
                              f"{why}")


def _set(tree: dict, dotted: str, value: Any, at: str) -> None:
    parts = dotted.split(".")
    node = tree
    for depth, k in enumerate(parts[:-1]):
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"{at}.{dotted}: {'.'.join(parts[:depth + 1])} is not a section")
    node[parts[-1]] = value


def _name_stage(message: str, keys: dict[str, Any], at: str, name: str) -> str:
    """A stage's config error with the key it names as ``stages[i].<key>`` (the first of the stage's keys the
    message names, longest first); where it names none (a check across keys), ``stages[i] (<name>): ...``."""
    for key in sorted(keys, key=len, reverse=True):
        found = re.search(rf"(?<![\w.\[]){re.escape(key)}(?![\w])", message)
        if found:
            return message[:found.start()] + f"{at}." + message[found.start():]
    return f"{at} ({name}): {message}"


def _check_same_model(base: Config, stage: Config, at: str) -> None:
    """Parameter shapes come from the model section (resolved: a generative model's size follows data.size)
    and the loss targets (one head each): a stage must keep both."""
    for f in dataclasses.fields(base.model):
        there, here = getattr(base.model, f.name), getattr(stage.model, f.name)
        if there != here:
            raise ConfigError(f"{at}: changes model.{f.name} from {short(there)} to {short(here)} (through the "
                              "keys it sets); every stage trains the same model, starting from the previous "
                              "stage's weights")
    if set(base.loss or {}) != set(stage.loss or {}):
        raise ConfigError(f"{at}.loss: targets {sorted(stage.loss or {})}, the base config's {sorted(base.loss or {})}; "
                          "the targets are the model's heads, the same in every stage (a stage may change their "
                          "losses and weights)")
