"""Typed config tree: YAML + dotted overrides, validated at load time with clear errors.

``load_config("configs/unet_dice.yaml", ["train.epochs=3", "model.depth=4"])`` returns a
:class:`Config`. Unknown keys, wrong types, bad values and unknown registry names raise a
:class:`ConfigError` naming the key path and the accepted values. Modules never see this
object: the builders in :mod:`sandbox.build` turn it into plain arguments.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

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

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]


@dataclass
class DataConfig:
    name: str = "dancers"  # a DATASETS name
    size: int = 128  # square side the net sees, in pixels
    num_train: int = 1000  # synthetic datasets: number of samples per split
    num_val: int = 200
    num_test: int = 200
    difficulty: float = 1.0  # dancers: clutter, contrast and limb thinness (0 easy .. 2 hard)
    seq_len: int = 8  # dancers: frames per dance sequence (poses change smoothly within one)
    cache: bool = True  # render synthetic samples once and keep them in memory
    batch_size: int = 16
    num_workers: int = 0  # 0 is fastest on 2 cores (see DESIGN.md field notes)
    # labelled / unlabelled folders (data.name: folder | images)
    root: Optional[str] = None  # the dataset folder
    image_dir: str = "images"  # sub-folder of root with the images
    mask_dir: str = "masks"  # sub-folder of root with the masks (paired with images by file stem)
    depth_dir: Optional[str] = None  # optional sub-folder with depth maps
    mask_threshold: float = 0.5  # a mask pixel is foreground above this fraction of the format's max value
    resize: Literal["stretch", "pad"] = "stretch"  # to data.size: stretch, or keep aspect and pad
    val_fraction: float = 0.15  # folders: seeded split fractions of all pairs
    test_fraction: float = 0.15
    train_fraction: float = 1.0  # keep this fraction of what is left for training (0.01 = 1 %)
    splits: Optional[str] = None  # a splits/ directory (train.csv, val.csv, test.csv) to reuse exactly
    augment: list[dict[str, Any]] = field(default_factory=list)  # [{HorizontalFlip: {p: 0.5}}, ...]
    size_schedule: Optional[dict[int, int]] = None  # progressive resizing {epoch: size}, e.g. {0: 80, 5: 160}


@dataclass
class ModelConfig:
    name: str = "unet"  # a MODELS name
    in_channels: int = 3
    width: int = 16  # channels of the first stage; doubles at each downsampling
    widths: Optional[list[int]] = None  # explicit per-stage widths (length depth + 1)
    depth: int = 3  # number of 2x downsamplings; the bottleneck side is size / 2**depth
    blocks: int = 2  # convolutions per stage
    block: Literal["plain", "residual"] = "plain"
    norm: Literal["batch", "group", "none"] = "batch"
    upsample: Optional[Literal["transpose", "pixel_shuffle", "bilinear"]] = None  # None: the model's default
    skip: Optional[Literal["none", "concat", "add"]] = None  # None: the model's default
    downsample: Optional[Literal["maxpool", "stride"]] = None  # None: the model's default (maxpool)
    dilation: int = 1
    dropout: float = 0.0
    encoder: Literal["core", "resnet18"] = "core"  # resnet18: torchvision ResNet-18 behind the same contract
    weights: Optional[str] = None  # resnet18: null (from scratch) or a local .pth file; nothing is downloaded
    freeze_encoder: bool = False
    # generative models (ae, vae, dcgan, aae); None everywhere else, so segmentation builders never see them
    latent_dim: Optional[int] = None  # size of the latent code (null: the model's default, 64)
    size: Optional[int] = None  # image side the decoder produces; null: data.size (filled in at load time)
    prior: Optional[Literal["gaussian", "mixture"]] = None  # aae: prior on the codes (null: gaussian)
    prior_components: Optional[int] = None  # aae, prior: mixture: number of Gaussian components (null: 10)
    ema: Optional[float] = None  # decay of an EMA copy of the generator/decoder used for sampling (e.g. 0.999)
    d_norm: Optional[Literal["batch", "group", "none"]] = None  # dcgan: the discriminator's norm (null: model.norm)


@dataclass
class TrainConfig:
    epochs: int = 8
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    momentum: float = 0.9  # sgd only
    scheduler: Literal["none", "cosine", "onecycle", "cyclic", "step", "plateau"] = "onecycle"
    warmup_frac: float = 0.3  # onecycle: fraction of steps rising to lr; others: linear warm-up fraction
    cycle_epochs: float = 2.0  # cyclic (triangular2): epochs per half cycle
    step_epochs: int = 3  # step: decay every this many epochs; plateau: patience in epochs
    gamma: float = 0.1  # step / plateau: lr factor
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/Inf loss stops the run, or skips the step (counted)
    checkpoint_every: int = 0  # also save checkpoints/last every this many optimizer steps (0: at epoch ends)
    keep_last_n: int = 0  # also keep checkpoints/epoch_NNN for the last n epochs (0: only best and last)
    sync_bn: bool = True  # several GPU processes: BatchNorm statistics over the global batch (SyncBatchNorm)
    compile: bool = False  # torch.compile the model (slow first epoch; see bench/)
    mixed_precision: MixedPrecision = "auto"  # auto: what `accelerate launch` says, else bf16 where the device has fast bf16 kernels, else "no"
    grad_accum: int = 1
    clip: Optional[float] = 1.0  # max gradient norm; null disables clipping
    monitor: str = "val/dice"  # metric that picks checkpoints/best
    monitor_mode: Literal["max", "min"] = "max"
    resume: Optional[str] = None  # a run directory or a checkpoint directory
    channels_last: bool = True  # measured faster on CPU and GPU for conv nets
    threads: int = 0  # torch CPU threads; 0 = cores / local processes
    log_every: int = 10  # optimizer steps between train log lines in metrics.jsonl
    num_images: int = 6  # validation samples drawn in the image panel each epoch
    # generative trainers (autoencoder, vae, gan, aae)
    beta: float = 1.0  # vae: KL weight; loss = recon + beta * KL / (C*H*W) (beta = 2 sigma^2 of a Gaussian decoder with mse)
    kl_warmup_frac: float = 0.0  # vae: fraction of the steps over which the KL weight rises linearly 0 -> beta
    d_lr: Optional[float] = None  # gan: discriminator lr (null: train.lr); aae: regularisation phase lr (null: train.lr / 10)
    n_critic: int = 1  # gan: discriminator updates per generator update
    label_smoothing: float = 0.0  # gan/aae: the discriminator's "real" target is 1 - this (one-sided; 0.1 is common)
    beta1: Optional[float] = None  # adam/adamw beta1 (null: 0.5 in gan/aae trainers as in DCGAN, else 0.9)
    fid_samples: int = 512  # generated images for val/fid_own each epoch (0: off)
    probe_samples: int = 1000  # attractors: training images the latent probe is fitted on (0: off)


@dataclass
class TrackConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in, else offline
    project: str = "sandbox"
    entity: Optional[str] = None
    group: Optional[str] = None  # runs of one experiment share it; default: the config file's stem
    tags: list[str] = field(default_factory=list)


@dataclass
class BalanceConfig:
    """Adaptive balance between two targets' losses: ``loss[scale] *= clamp(loss[to] / loss[scale], min, max)``
    (ratio of detached values, recomputed every step and logged as ``train/loss/balance/<scale>``)."""
    scale: str = "depth"  # the target whose loss is rescaled
    to: str = "mask"  # the reference target
    min: float = 0.1
    max: float = 10.0


@dataclass
class Config:
    name: str = "run"  # the run directory: <out_dir>/<name>
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict[str, dict[str, Any]] = field(default_factory=lambda: {"mask": {"dice": 1.0}})
    loss_balance: Optional[BalanceConfig] = None  # e.g. {scale: depth, to: mask, min: 0.1, max: 10}
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    source: Optional[str] = None  # the YAML file this was loaded from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# ----------------------------------------------------------------------------- semantics

def model_widths(m: ModelConfig) -> list[int]:
    """Per-stage widths: explicit ``widths`` or ``width * 2**i`` for ``depth + 1`` stages."""
    if m.widths is not None:
        return list(m.widths)
    return [m.width * 2**i for i in range(m.depth + 1)]


def _positive(path: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path}: got {value!r}, expected a {'non-negative' if allow_zero else 'positive'} number")


def validate(cfg: Config) -> None:
    """Cross-field checks and registry names; raises ConfigError naming the key path."""
    # Imported here: the registries import torch-heavy modules, the schema above does not.
    from sandbox.data import DATASETS
    from sandbox.losses import LOSSES
    from sandbox.models import MODELS

    for path, value in [("data.size", cfg.data.size), ("data.batch_size", cfg.data.batch_size),
                        ("data.num_train", cfg.data.num_train), ("data.seq_len", cfg.data.seq_len),
                        ("model.width", cfg.model.width), ("model.blocks", cfg.model.blocks),
                        ("model.in_channels", cfg.model.in_channels), ("model.dilation", cfg.model.dilation),
                        ("train.epochs", cfg.train.epochs), ("train.lr", cfg.train.lr),
                        ("train.grad_accum", cfg.train.grad_accum), ("train.log_every", cfg.train.log_every)]:
        _positive(path, value)
    for path, value in [("data.num_val", cfg.data.num_val), ("data.num_test", cfg.data.num_test),
                        ("data.num_workers", cfg.data.num_workers), ("model.depth", cfg.model.depth),
                        ("model.dropout", cfg.model.dropout), ("train.weight_decay", cfg.train.weight_decay),
                        ("train.threads", cfg.train.threads), ("train.num_images", cfg.train.num_images),
                        ("data.difficulty", cfg.data.difficulty)]:
        _positive(path, value, allow_zero=True)
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigError(f"model.dropout: got {cfg.model.dropout}, expected a value in [0, 1)")
    if not 0 < cfg.train.warmup_frac < 1:
        raise ConfigError(f"train.warmup_frac: got {cfg.train.warmup_frac}, expected a value in (0, 1)")
    if cfg.train.clip is not None:
        _positive("train.clip", cfg.train.clip)
    if not cfg.name.strip() or ".." in Path(cfg.name).parts or Path(cfg.name).is_absolute():
        raise ConfigError(f"name: got {cfg.name!r}, expected a non-empty relative run name (no '..')")

    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {cfg.data.name!r}; accepted: {', '.join(DATASETS.names())}")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; accepted: {', '.join(MODELS.names())}")
    from sandbox.models import check_model_options

    check_model_options(cfg.model.name, {k: v for k, v in vars(cfg.model).items() if k != "name"})
    d = cfg.data
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(d, key) < 1:
            raise ConfigError(f"data.{key}: got {getattr(d, key)}, expected a fraction in [0, 1)")
    if d.val_fraction + d.test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {d.val_fraction + d.test_fraction:g} "
                          "leaves nothing to train on; expected a sum below 1")
    if not 0 < d.train_fraction <= 1:
        raise ConfigError(f"data.train_fraction: got {d.train_fraction}, expected a fraction in (0, 1] (0.01 = 1 %)")
    if d.size_schedule:
        for epoch, size in d.size_schedule.items():
            if epoch < 0 or size <= 0:
                raise ConfigError(f"data.size_schedule: got {{{epoch}: {size}}}, expected {{epoch >= 0: size > 0}}")

    m = cfg.model
    if m.widths is not None:
        if len(m.widths) != m.depth + 1:
            raise ConfigError(f"model.widths: got {len(m.widths)} widths for model.depth={m.depth}; "
                              f"expected depth + 1 = {m.depth + 1} (or drop widths and set model.width)")
        if any(w <= 0 for w in m.widths):
            raise ConfigError(f"model.widths: got {m.widths}, expected positive integers")
    downsamples = getattr(MODELS[m.name], "downsamples", True)
    if downsamples and cfg.data.size % (2**m.depth) != 0:
        ok = [d for d in range(0, 8) if cfg.data.size % 2**d == 0 and cfg.data.size // 2**d >= 2]
        raise ConfigError(f"model.depth: {m.depth} halves data.size={cfg.data.size} to a non-integer side "
                          f"({cfg.data.size}/{2**m.depth}); accepted depths for this size: {ok}")
    if downsamples and cfg.data.size // 2**m.depth < 2:
        raise ConfigError(f"model.depth: {m.depth} shrinks data.size={cfg.data.size} below 2 px at the bottleneck; "
                          f"use a smaller depth or a larger data.size")
    if m.norm == "group":
        bad = [w for w in model_widths(m) if w % min(8, w) != 0]
        if bad:
            raise ConfigError(f"model.norm: group norm needs widths divisible by 8, got {bad}")

    if not cfg.loss:
        raise ConfigError("loss: empty; expected e.g. {mask: {dice: 1.0}}")
    targets = DATASETS[cfg.data.name].targets
    for target, spec in cfg.loss.items():
        if target not in targets:
            raise ConfigError(f"loss.{target}: dataset {cfg.data.name!r} has no target {target!r}; "
                              f"accepted: {', '.join(targets)}")
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"loss.{target}: got {spec!r}, expected a mapping of loss name to weight, "
                              "e.g. {dice: 1.0, bce: 0.5}")
        for name, weight in spec.items():
            if name not in LOSSES:
                raise ConfigError(f"loss.{target}.{name}: unknown loss; accepted: {', '.join(LOSSES.names())}")
            if isinstance(weight, dict):
                w = weight.get("weight", 1.0)
            else:
                w = weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"loss.{target}.{name}: got weight {w!r}, expected a non-negative number "
                                  "(or a mapping {weight: w, <loss options>})")
    # build the losses once: bad options, targets and clamps fail here, naming loss.<target>.<name>
    from sandbox.losses import build_loss

    build_loss(cfg.loss, balance=dataclasses.asdict(cfg.loss_balance) if cfg.loss_balance is not None else None)
    if cfg.train.monitor.split("/")[0] not in ("val", "train"):
        raise ConfigError(f"train.monitor: got {cfg.train.monitor!r}, expected a logged metric such as "
                          "val/dice, val/iou or val/loss")
    _validate_generative(cfg, MODELS)


def _validate_generative(cfg: Config, models) -> None:
    """Generative models: a fixed image side (model.size, filled from data.size), the image target only."""
    m, t = cfg.model, cfg.train
    generative = getattr(models[m.name], "generative", False)
    own = {"latent_dim": m.latent_dim, "size": m.size, "prior": m.prior, "prior_components": m.prior_components,
           "ema": m.ema, "d_norm": m.d_norm}
    if not generative:
        used = [k for k, v in own.items() if v is not None]
        if used:
            raise ConfigError(f"model.{used[0]}: only generative models (ae, vae, dcgan, aae) take it; "
                              f"{m.name} does not; leave it unset")
    else:
        if m.size is None:
            m.size = cfg.data.size  # the decoder's output side is fixed at build time
        if m.size != cfg.data.size:
            raise ConfigError(f"model.size: {m.size} px but data.size is {cfg.data.size}; a generative model "
                              "produces one image size: make them equal (or leave model.size unset)")
        if cfg.data.size_schedule:
            raise ConfigError("data.size_schedule: generative models produce one image size; remove it")
        if set(cfg.loss) != {"image"}:
            raise ConfigError(f"loss: {m.name} reconstructs images; expected loss.image only (e.g. "
                              f"{{image: {{mse: 1.0}}}}), got targets {', '.join(cfg.loss)}")
        if models[m.name].trainer == "aae" and t.grad_accum > 1:
            raise ConfigError(f"train.grad_accum: got {t.grad_accum}; the aae trainer steps the encoder in two phases "
                              "per batch (reconstruction, then fooling the discriminator) and accumulated gradients "
                              "would mix them: use 1 and raise data.batch_size (or launch more processes)")
    for path, value in [("train.beta", t.beta), ("train.fid_samples", t.fid_samples),
                        ("train.probe_samples", t.probe_samples)]:
        _positive(path, value, allow_zero=True)
    if not 0 <= t.kl_warmup_frac <= 1:
        raise ConfigError(f"train.kl_warmup_frac: got {t.kl_warmup_frac}, expected a fraction in [0, 1]")
    if not 0 <= t.label_smoothing < 0.5:
        raise ConfigError(f"train.label_smoothing: got {t.label_smoothing}, expected a value in [0, 0.5)")
    if t.d_lr is not None:
        _positive("train.d_lr", t.d_lr)
    _positive("train.n_critic", t.n_critic)
    if t.beta1 is not None and not 0 <= t.beta1 < 1:
        raise ConfigError(f"train.beta1: got {t.beta1}, expected a value in [0, 1)")
