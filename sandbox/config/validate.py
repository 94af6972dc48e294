"""Cross-field checks and registry names of a resolved :class:`Config`: pure (it never changes the
config), raising a :class:`ConfigError` that names the key path."""
from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

from sandbox.config.schema import RANGES, Config, within
from sandbox.data import DATASETS
from sandbox.data.classes import target_classes
from sandbox.data.conditions import condition_factors
from sandbox.errors import ConfigError, short, short_key
from sandbox.losses import LOSSES, build_loss
from sandbox.models import MODELS, check_model_options
from sandbox.nn.core import stage_widths


# ----------------------------------------------------------------------------- semantics

def _positive(path: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{path}: got {short(value)}, expected a {kind} number")


def _check_ranges(cfg: Config) -> None:
    """Every key of :data:`~sandbox.config.schema.RANGES` inside its interval (unset keys pass)."""
    for path, interval in RANGES.items():
        value = functools.reduce(lambda node, key: getattr(node, key, None), path.split("."), cfg)
        if value is not None and not within(value, interval):
            kind = "an integer" if isinstance(value, int) else "a value"
            raise ConfigError(f"{path}: got {short(value)}, expected {kind} in {interval}")


NAME_PART_BYTES = 255  # a file name's limit on the usual filesystems (ext4, xfs, btrfs, APFS, NTFS)
NAME_BYTES = 1024  # the whole name: runs/<name>/checkpoints/... must stay far below PATH_MAX (4096)


def _check_name(name: str) -> None:
    """The run directory is ``<out_dir>/<name>``: a folder below out_dir, never out_dir itself
    (``.``, where it would mix with the other runs) nor outside it; printable (a newline or an escape
    sequence would forge lines in every message and command that prints it), each folder of it a
    name the filesystem takes (over 255 bytes was a raw ENAMETOOLONG when the run started)."""
    parts = Path(name).parts
    longest = max((len(p.encode("utf-8", "surrogatepass")) for p in parts), default=0)
    if (not name.strip() or not parts or ".." in parts or Path(name).is_absolute() or not name.isprintable()
            or longest > NAME_PART_BYTES or len(name.encode("utf-8", "surrogatepass")) > NAME_BYTES):
        raise ConfigError(f"name: got {short(name)}, expected a non-empty relative run name (a folder below "
                          "out_dir: not '.', no '..', printable characters only (no control characters), each "
                          f"folder at most {NAME_PART_BYTES} bytes, at most {NAME_BYTES} in all)")


def validate(cfg: Config) -> None:
    """Cross-field checks and registry names; raises ConfigError naming the key path."""
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
        raise ConfigError(f"model.dropout: got {short(cfg.model.dropout)}, expected a value in [0, 1)")
    if not 0 < cfg.train.warmup_frac < 1:
        raise ConfigError(f"train.warmup_frac: got {short(cfg.train.warmup_frac)}, expected a value in (0, 1)")
    if cfg.train.clip is not None:
        _positive("train.clip", cfg.train.clip)
    _check_ranges(cfg)
    _check_name(cfg.name)
    if cfg.train.optimizer == "sgd" and cfg.train.momentum == 0:
        raise ConfigError("train.momentum: got 0.0; sgd takes Nesterov momentum, which needs a value in (0, 1)")
    if cfg.train.diverge_factor is not None and not cfg.train.diverge_factor > 1:
        raise ConfigError(f"train.diverge_factor: got {short(cfg.train.diverge_factor)}, expected a factor above 1 "
                          "(e.g. 1000), or null for no divergence check")

    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {short(cfg.data.name)}; accepted: {', '.join(DATASETS.names())}")
    if cfg.model.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {short(cfg.model.name)}; accepted: {', '.join(MODELS.names())}")
    check_model_options(cfg.model.name, {k: v for k, v in vars(cfg.model).items() if k != "name"})
    _validate_data(cfg)
    _validate_model(cfg)
    _validate_loss(cfg)
    _validate_classes(cfg)
    if cfg.train.monitor.split("/")[0] not in ("val", "train"):
        raise ConfigError(f"train.monitor: got {short(cfg.train.monitor)}, expected a logged metric such as "
                          "val/dice, val/iou or val/loss")
    if cfg.train.stop_at is not None:
        _validate_stop_at(cfg.train.stop_at, cfg.train.monitor)
    _validate_generative(cfg, MODELS)


def _validate_stop_at(stop, monitor: str) -> None:
    """``train.stop_at``: a target value, on a metric the loop can see at an epoch's end (val/ or train/), and
    its direction: ``mode`` may default to ``train.monitor_mode`` only for the monitored metric itself (a loss
    target under a Dice monitor would otherwise be "reached" by any loss above it, at epoch 1)."""
    if stop.metric.split("/")[0] not in ("val", "train") or stop.metric in ("val/", "train/"):
        raise ConfigError(f"train.stop_at.metric: got {short(stop.metric)}, expected a logged metric such as "
                          "val/dice or val/kid_own")
    if stop.value is None:
        raise ConfigError(f"train.stop_at.value: missing; expected the target of the metric, e.g. "
                          f"train.stop_at={{metric: {stop.metric}, value: 0.9}}")
    if stop.mode is None and stop.metric != monitor:
        raise ConfigError(f"train.stop_at.mode: missing for {stop.metric} (not train.monitor {monitor}, whose "
                          f"mode is the default); expected max (reached at >= value) or min (reached at <= value), "
                          f"e.g. train.stop_at={{metric: {stop.metric}, value: {stop.value}, mode: min}}")


def _validate_data(cfg: Config) -> None:
    d = cfg.data
    for key in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(d, key) < 1:
            raise ConfigError(f"data.{key}: got {short(getattr(d, key))}, expected a fraction in [0, 1)")
    if d.val_fraction + d.test_fraction >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {d.val_fraction + d.test_fraction:g} "
                          "leaves nothing to train on; expected a sum below 1")
    if not 0 < d.train_fraction <= 1:
        raise ConfigError(f"data.train_fraction: got {short(d.train_fraction)}, "
                          "expected a fraction in (0, 1] (0.01 = 1 %)")
    if d.group_by is not None:
        _validate_group_by(d.group_by, d.name)
    if d.size_schedule:
        for epoch, size in d.size_schedule.items():
            if epoch < 0 or not within(size, RANGES["data.size"]):
                raise ConfigError(f"data.size_schedule: got {{{short(epoch)}: {short(size)}}}, expected "
                                  f"{{epoch >= 0: size in {RANGES['data.size']}}}")
    if d.condition is not None:
        _validate_condition(cfg)
    else:
        for key in ("cond_drop", "guidance"):
            if getattr(cfg.model, key, None) is not None:
                raise ConfigError(f"model.{key}: got {short(getattr(cfg.model, key))}, but data.condition is null, so "
                                  "there is no condition to drop or guide towards; set data.condition or leave "
                                  f"model.{key} unset")



CONDITION_TRAINERS: tuple[str, ...] = ("denoising",)  # the trainers that read batch["condition"] (issue 31)


def _validate_condition(cfg: Config) -> None:
    """``data.condition``: a value the dataset can yield (:func:`sandbox.data.conditions.condition_factors`),
    a model whose trainer reads it, and no augmentation that would change an image but not its parameters."""
    condition_factors(DATASETS[cfg.data.name], cfg.data.condition)
    trainer = MODELS[cfg.model.name].trainer
    if trainer not in CONDITION_TRAINERS:
        takes = [n for n in MODELS.names() if MODELS[n].trainer in CONDITION_TRAINERS]
        raise ConfigError(f"data.condition: model {cfg.model.name} takes no condition (models that do: "
                          f"{', '.join(takes) or 'none yet'}); set data.condition: null")
    if cfg.data.condition == "params" and cfg.data.augment:
        raise ConfigError("data.condition: params with data.augment: a flip or crop changes the attractor drawn "
                          "but not its parameters, so the condition would name another image; remove data.augment")


def _validate_group_by(pattern: str, dataset: str) -> None:
    """``data.group_by``: a regex that compiles, for the datasets split from file lists (folders)."""
    if not getattr(DATASETS[dataset], "split_from_files", False):
        raise ConfigError(f"data.group_by: dataset {short(dataset)} is not split from files (its splits are "
                          "generated apart, so no sequence crosses them); group_by applies to folder and images")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"data.group_by: {short(pattern)} is not a regular expression ({exc}); expected a "
                          r"pattern on the file stem whose first group is the group id, e.g. '^(clip\d+)_'") from None


def _validate_model(cfg: Config) -> None:
    m = cfg.model
    if m.widths is not None:
        if len(m.widths) != m.depth + 1:
            raise ConfigError(f"model.widths: got {len(m.widths)} widths for model.depth={m.depth}; "
                              f"expected depth + 1 = {m.depth + 1} (or drop widths and set model.width)")
        if any(w <= 0 for w in m.widths):
            raise ConfigError(f"model.widths: got {short(m.widths)}, expected positive integers")
    downsamples = MODELS[m.name].downsamples
    if downsamples and cfg.data.size % (2**m.depth) != 0:
        ok = [d for d in range(0, 8) if cfg.data.size % 2**d == 0 and cfg.data.size // 2**d >= 2]
        raise ConfigError(f"model.depth: {m.depth} halves data.size={cfg.data.size} to a non-integer side "
                          f"({cfg.data.size}/{2**m.depth}); accepted depths for this size: {ok}")
    if downsamples and cfg.data.size // 2**m.depth < 2:
        raise ConfigError(f"model.depth: {m.depth} shrinks data.size={cfg.data.size} below 2 px at the bottleneck; "
                          f"use a smaller depth or a larger data.size")
    if m.norm == "group":
        bad = [w for w in stage_widths(m.width, m.widths, m.depth) if w % min(8, w) != 0]
        if bad:
            raise ConfigError(f"model.norm: group norm needs widths divisible by 8, got {short(bad)}")



def _validate_loss(cfg: Config) -> None:
    if not cfg.loss and MODELS[cfg.model.name].takes_loss:
        example = "{image: {mse: 1.0}}" if MODELS[cfg.model.name].task == "generative" else "{mask: {dice: 1.0}}"
        raise ConfigError(f"loss: empty; expected e.g. {example}")
    targets = DATASETS[cfg.data.name].targets
    if MODELS[cfg.model.name].task == "generative" and "image" not in targets:  # every dataset yields its
        targets = (*targets, "image")  # "image" (sandbox/data/__init__.py): what a generative model rebuilds
    for target, spec in cfg.loss.items():
        where = f"loss.{short_key(target)}"
        if target not in targets:
            raise ConfigError(f"{where}: dataset {short(cfg.data.name)} has no target {short(target)}; "
                              f"accepted: {', '.join(targets)}")
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"{where}: got {short(spec)}, expected a mapping of loss name to weight, "
                              "e.g. {dice: 1.0, bce: 0.5}")
        for name, weight in spec.items():
            if name not in LOSSES:
                raise ConfigError(f"{where}.{short_key(name)}: unknown loss; accepted: {', '.join(LOSSES.names())}")
            if isinstance(weight, dict):
                w = weight.get("weight", 1.0)
            else:
                w = weight
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"loss.{target}.{name}: got weight {short(w)}, expected a non-negative number "
                                  "(or a mapping {weight: w, <loss options>})")
    # build the losses once: bad options, targets and clamps fail here, naming loss.<target>.<name>
    build_loss(cfg.loss, balance=dataclasses.asdict(cfg.loss_balance) if cfg.loss_balance is not None else None)


CLASS_LOSSES = ("ce", "dice", "jaccard", "focal")  # the losses that take a class map (sandbox/losses.py)


def _validate_classes(cfg: Config) -> None:
    """Several classes: ``data.classes`` parses (folders only), and a class-map target's losses take class maps."""
    d = cfg.data
    if d.classes and not getattr(DATASETS[d.name], "config_classes", False):
        raise ConfigError(f"data.classes: dataset {short(d.name)} names its own classes; data.classes applies to "
                          "data.name=folder (built-in class targets: loss.parts on dancers)")
    classes = target_classes(DATASETS[d.name], d.classes)
    if d.multilabel and not set(classes) & set(cfg.loss or {}):
        raise ConfigError("data.multilabel: no class-map target in loss (e.g. loss.parts on dancers, or "
                          "data.classes on a folder); set data.multilabel: false")
    if d.ignore_index is not None and "mask" not in classes:
        raise ConfigError("data.ignore_index: the unlabelled value of index masks needs data.classes; set both")
    for target, specs in classes.items():
        for name, opts in (cfg.loss or {}).get(target, {}).items():
            if name not in CLASS_LOSSES and not d.multilabel:
                raise ConfigError(f"loss.{target}.{name}: {target} is a map of {len(specs)} classes; accepted: "
                                  f"{', '.join(CLASS_LOSSES)} (or data.multilabel: true for independent channels)")
            weights = opts.get("class_weights") if isinstance(opts, dict) else None
            if weights is not None and len(weights) != len(specs):
                raise ConfigError(f"loss.{target}.{name}.class_weights: {len(weights)} weights for the "
                                  f"{len(specs)} classes {', '.join(s.name for s in specs)}; expected one per class")


def _validate_generative(cfg: Config, models) -> None:
    """Generative models: a fixed image side (model.size, filled from data.size), the image target only; a
    model's trainer that refuses gradient accumulation says why (``ModelSpec.no_grad_accum``). Another
    family's model keys never get here: loading refuses them (:func:`sandbox.models.spec.own_options`)."""
    m, t = cfg.model, cfg.train
    spec = models[m.name]
    if spec.task == "generative":
        if m.size is not None and m.size != cfg.data.size:
            raise ConfigError(f"model.size: {m.size} px but data.size is {cfg.data.size}; a generative model "
                              "produces one image size: make them equal (or leave model.size unset)")
        if cfg.data.size_schedule:
            raise ConfigError("data.size_schedule: generative models produce one image size; remove it")
        if spec.takes_loss and set(cfg.loss) != {"image"}:
            raise ConfigError(f"loss: {m.name} reconstructs images; expected loss.image only (e.g. "
                              f"{{image: {{mse: 1.0}}}}), got targets {', '.join(cfg.loss)}")
    if spec.no_grad_accum and t.grad_accum > 1:
        raise ConfigError(f"train.grad_accum: got {short(t.grad_accum)}; {spec.no_grad_accum}: use 1 and raise "
                          "data.batch_size (or launch more processes)")
    for path, value in [("train.beta", t.beta), ("train.fid_samples", t.fid_samples),
                        ("train.probe_samples", t.probe_samples)]:
        _positive(path, value, allow_zero=True)
    if not 0 <= t.kl_warmup_frac <= 1:
        raise ConfigError(f"train.kl_warmup_frac: got {short(t.kl_warmup_frac)}, expected a fraction in [0, 1]")
    if not 0 <= t.label_smoothing < 0.5:
        raise ConfigError(f"train.label_smoothing: got {short(t.label_smoothing)}, expected a value in [0, 0.5)")
    if getattr(m, "gan_loss", None) == "hinge" and t.label_smoothing:
        raise ConfigError(f"train.label_smoothing: got {short(t.label_smoothing)}, but model.gan_loss: hinge has no "
                          "labels to smooth; set train.label_smoothing: 0")
    if t.d_lr is not None:
        _positive("train.d_lr", t.d_lr)
    _positive("train.n_critic", t.n_critic)
    if t.beta1 is not None and not 0 <= t.beta1 < 1:
        raise ConfigError(f"train.beta1: got {short(t.beta1)}, expected a value in [0, 1)")
    if t.param_mse > 0:
        _validate_param_mse(cfg, models)


def _validate_param_mse(cfg: Config, models) -> None:
    """``train.param_mse`` > 0: the model's generator takes the data's generating parameters (its spec derives
    ``cond_dim`` from the data), and the dataset declares them (``param_names``)."""
    if "cond_dim" not in models[cfg.model.name].derived:
        takers = [n for n in models.names() if "cond_dim" in models[n].derived]
        trainers = sorted({models[n].trainer for n in takers})
        raise ConfigError(f"train.param_mse: only the {', '.join(trainers)} trainer ({', '.join(takers)}) takes it; "
                          f"{cfg.model.name} does not; set train.param_mse: 0")
    if not getattr(DATASETS[cfg.data.name], "param_names", ()):
        with_params = [n for n in DATASETS.names() if getattr(DATASETS[n], "param_names", ())]
        raise ConfigError(f"train.param_mse: dataset {cfg.data.name} has no generating parameters to feed the "
                          f"generator (datasets that have them: {', '.join(with_params)}); set train.param_mse: 0")
    if cfg.data.augment:
        raise ConfigError("train.param_mse: data.augment changes the training images but not their parameters, "
                          "so G(v) would be pulled towards a transformed x_v; remove data.augment or set "
                          "train.param_mse: 0")
