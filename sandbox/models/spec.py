"""The model registry and what each entry declares about itself.

``MODELS[name]`` is a :class:`ModelSpec`: calling it builds the model
(``MODELS["unet"](targets={"mask": 1}, width=16, depth=3) -> nn.Module``); its fields say which
task it serves (``segmentation`` | ``generative``), which trainer drives it and how its options
are checked, so no code elsewhere asks ``isinstance`` or ``hasattr`` to find out. A new family
registers a spec from its own module and is imported in ``sandbox/models/__init__.py``.

The option checks every family shares are here too; the allowed values of choice options are read
from the config schema's ``Literal`` annotations (the one list).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from torch import nn

from sandbox.config.schema import ModelConfig, choices
from sandbox.errors import ConfigError, short
from sandbox.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: ``build(targets=..., **options)`` plus what the rest of the sandbox reads."""

    name: str
    build: Callable[..., nn.Module]
    task: Literal["segmentation", "generative"]
    trainer: str  # a TRAINERS name
    check: Callable[[dict[str, Any]], None]  # raises ConfigError naming model.<key>
    downsamples: bool = True  # False: any data.size works (no 2**depth constraint)
    takes_loss: bool = True  # False: its trainer optimises its own objective only (the GAN): no loss section
    default_loss: dict[str, dict[str, Any]] | None = None  # the loss section when a config gives none
    logit_targets: tuple[str, ...] = ()  # outputs that are logits: losses of probabilities get their sigmoid
    doc: str = ""

    def __call__(self, targets: dict[str, int] | None = None, **options: Any) -> nn.Module:
        return self.build(targets=targets, **options)

    def check_options(self, options: dict[str, Any]) -> None:
        self.check(options)


MODELS: Registry[ModelSpec] = Registry("model")


def register(spec: ModelSpec) -> ModelSpec:
    MODELS.register(spec.name)(spec)
    return spec


def names_for(task: str) -> list[str]:
    """Registered model names of one task, e.g. ``names_for("segmentation")``."""
    return [n for n in MODELS if MODELS[n].task == task]


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming ``model.<key>`` for an unknown model, an unknown or
    out-of-range option, or an illegal combination (e.g. ``model.upsample: simpleconv never
    resizes; leave it unset``). ``options``: the model section without ``name``; ``None``
    means "the model's default"."""
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; accepted: {', '.join(MODELS.names())}")
    MODELS[name].check_options(options)


# ----------------------------------------------------------------------------- shared option checks

def check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"model.{key}: got {value!r}, expected an integer >= {low}")


def check_choices(options: dict[str, Any], keys: Sequence[str]) -> None:
    """Each of ``keys`` present in ``options`` must be one of the schema's values for it."""
    for key in keys:
        if key in options:
            accepted = choices(ModelConfig, key)
            if options[key] not in accepted:
                raise ConfigError(f"model.{key}: got {options[key]!r}, expected one of "
                                  f"{', '.join(map(repr, accepted))}")


def check_common(options: dict[str, Any], ints: Sequence[tuple[str, int]]) -> None:
    """Integer bounds, dropout in [0, 1) and ``widths`` matching ``depth`` (default 3)."""
    for key, low in ints:
        if key in options:
            check_int(key, options[key], low)
    d = options.get("dropout")
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1):
        raise ConfigError(f"model.dropout: got {d!r}, expected a number in [0, 1)")
    depth = options.get("depth", 3)
    if "widths" in options:
        w = options["widths"]
        if not isinstance(w, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096
                                                   for v in w):
            raise ConfigError(f"model.widths: got {short(w)}, expected a list of integers in [1, 4096]")
        if len(w) != depth + 1:
            raise ConfigError(f"model.widths: got {len(w)} widths for model.depth={depth}; "
                              f"expected depth + 1 = {depth + 1} (or drop widths and set model.width)")
