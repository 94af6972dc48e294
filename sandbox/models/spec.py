"""The model registry and what each entry declares about itself.

``MODELS[name]`` is a :class:`ModelSpec`: calling it builds the model
(``MODELS["unet"](targets={"mask": 1}, width=16, depth=3) -> nn.Module``); its fields say which
task it serves (``segmentation`` | ``generative``), which trainer drives it, its options and how they
are checked, so no code elsewhere asks ``isinstance`` or ``hasattr`` to find out. A new family
registers a spec from its own module; every module of ``sandbox/models/`` is imported by the package.

A family's options are a dataclass (``ModelSpec.options``) extending the config schema's
:class:`~sandbox.config.schema.ModelConfig` (the name and the shared core): its fields are the
``model:`` keys it takes, with their defaults (``None``: the model's default), their allowed values (a
``Literal`` annotation) and ranges (``field(metadata={"range": "[1, 65536]"})``); ``ModelSpec.check``
adds the family's combinations. The config's ``model:`` section is read into the chosen family's class
(:func:`own_options`); builders receive only those options.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from torch import nn

from sandbox.config.schema import ModelConfig, choices, within
from sandbox.errors import ConfigError, short, short_key
from sandbox.registry import Registry

# The model: section of earlier versions was one flat bag of every family's keys, so a config.yaml written
# then holds each other family's key at its unused value: null, or these. Such a key is dropped on reading;
# another family's key at any other value is refused (:func:`own_options`).
LEGACY_UNUSED: dict[str, tuple] = {"skip": (None, "none"), "encoder": (None, "core"), "freeze_encoder": (None, False)}


def _no_check(options: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: ``build(targets=..., **options)`` plus what the rest of the sandbox reads."""

    name: str
    build: Callable[..., nn.Module]
    task: Literal["segmentation", "generative"]
    trainer: str  # a TRAINERS name
    check: Callable[[dict[str, Any]], None] = _no_check  # the family's combinations; raises ConfigError naming model.<key>
    options: type = ModelConfig  # the dataclass of its model: keys (a ModelConfig subclass)
    derived: tuple[str, ...] = ()  # build arguments sandbox/build.py derives from the data, not config keys
    no_grad_accum: str = ""  # why its trainer refuses train.grad_accum > 1 (empty: it takes it)
    downsamples: bool = True  # False: any data.size works (no 2**depth constraint)
    takes_loss: bool = True  # False: its trainer optimises its own objective only (the GAN): no loss section
    default_loss: dict[str, dict[str, Any]] | None = None  # the loss section when a config gives none
    logit_targets: tuple[str, ...] = ()  # outputs that are logits: losses of probabilities get their sigmoid
    doc: str = ""

    def __call__(self, targets: dict[str, int] | None = None, **options: Any) -> nn.Module:
        own = own_options(self.name, options, self.derived)
        self.check_options(own)
        return self.build(targets=targets, **own)

    def accepted(self) -> list[str]:
        """The ``model:`` keys this family takes, ``name`` aside, in the order of its options class."""
        return [f.name for f in dataclasses.fields(self.options) if f.name != "name"]

    def check_options(self, options: dict[str, Any]) -> None:
        """A key the family does not take refused (:func:`own_options`), the allowed values and ranges of the
        options class's fields, then the family's own check."""
        own = own_options(self.name, options, self.derived)
        check_fields(self.options, own)
        self.check(own)
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
        raise ConfigError(f"model.name: unknown model {short(name)}; accepted: {', '.join(MODELS.names())}")
    MODELS[name].check_options(options)


def own_options(name: str, options: dict[str, Any], derived: Sequence[str] = (), keep_unknown: bool = False
                ) -> dict[str, Any]:
    """The keys of ``options`` that family ``name`` takes (its options class's fields and ``derived``), ``name``
    itself left out. Another family's key at its unused value (null; :data:`LEGACY_UNUSED`), as a
    config.yaml of the flat schema of earlier versions holds, is dropped; another family's key at another
    value is one line naming the keys ``name`` accepts, and so is a key no family has (kept instead with
    ``keep_unknown``, for the config loader to report as every unknown key)."""
    spec = MODELS[name]
    accepted = spec.accepted()
    out = {}
    for key, value in options.items():
        if key == "name":
            continue
        if key in accepted or key in derived:
            out[key] = value
        elif key in _all_keys():
            if value not in LEGACY_UNUSED.get(key, (None,)):
                raise ConfigError(f"model.{key}: unknown option for {name} (got {short(value)}); accepted: "
                                  f"{', '.join(accepted)}")
        elif keep_unknown:
            out[key] = value
        else:
            raise ConfigError(f"model.{short_key(key)}: unknown option for {name}; accepted: {', '.join(accepted)}")
    return out


def _all_keys() -> set[str]:
    """Every family's ``model:`` keys: a key of none of them is a typo, not another family's."""
    return {k for n in MODELS for k in MODELS[n].accepted()}


def check_fields(options_class: type, options: dict[str, Any]) -> None:
    """Each set key of ``options`` (``None``: unset) inside what its field in ``options_class`` declares: one of
    the ``Literal``'s values, and inside ``metadata["range"]`` (an interval as in ``schema.RANGES``)."""
    hints = typing.get_type_hints(options_class)
    for f in dataclasses.fields(options_class):
        value = options.get(f.name)
        if value is None:
            continue
        try:
            allowed = choices(options_class, f.name)
        except TypeError:  # not a Literal
            allowed = None
        if allowed is not None and value not in allowed:
            raise ConfigError(f"model.{f.name}: got {short(value)}, expected one of {', '.join(map(repr, allowed))}")
        interval = f.metadata.get("range")
        if interval is not None:
            integer = int in typing.get_args(hints[f.name]) or hints[f.name] is int
            number = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
            if not number or not within(value, interval):
                kind = "an integer" if integer else "a value"
                raise ConfigError(f"model.{f.name}: got {short(value)}, expected {kind} in {interval}")


def field_range(options_class: type, key: str) -> str:
    """The interval ``metadata["range"]`` of ``options_class``'s field ``key`` (``"[1, 10000]"``)."""
    return next(f.metadata["range"] for f in dataclasses.fields(options_class) if f.name == key)


# ----------------------------------------------------------------------------- shared option checks

def check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"model.{key}: got {value!r}, expected an integer >= {low}")


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
