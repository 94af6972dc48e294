"""The config schema: typed dataclasses, one per section. The ``Literal`` annotations here are the
only list of allowed values anywhere in the sandbox (:func:`choices` reads them back).

Pure Python: imports nothing from the sandbox, so every layer may read it.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

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
    num_workers: int = 0  # 0 is fastest on 2 cores (docs/architecture.md; field notes of the design card)
    # labelled / unlabelled folders (data.name: folder | images)
    root: Optional[str] = None  # the dataset folder
    image_dir: str = "images"  # sub-folder of root with the images
    mask_dir: str = "masks"  # sub-folder of root with the masks (paired with images by file stem)
    depth_dir: Optional[str] = None  # optional sub-folder with depth maps
    mask_threshold: float = 0.5  # in [0, 1): a mask pixel is foreground above this fraction of the mask's own
    # full scale (0/1, 0/255 in 8 or 16 bits, palettes: detected per mask, see sandbox/data/masks.py)
    mask_resize: Literal["error", "stretch"] = "error"  # mask of another aspect ratio than its image: stop or stretch
    resize: Literal["stretch", "pad"] = "stretch"  # to data.size: stretch, or keep aspect and pad
    val_fraction: float = 0.15  # folders: seeded split fractions of all pairs
    test_fraction: float = 0.15
    train_fraction: float = 1.0  # keep this fraction of what is left for training (0.01 = 1 %)
    splits: Optional[str] = None  # a splits/ directory (train.csv, val.csv, test.csv) to reuse exactly
    # folders: a regex on the file stem whose first capturing group (or whole match) is the group id, e.g.
    # '^(clip\d+)_': every group lands in one split (frames of one clip never in train and test)
    group_by: Optional[str] = None
    augment: list[dict[str, Any]] = field(default_factory=list)  # [{HorizontalFlip: {p: 0.5}}, ...]
    size_schedule: Optional[dict[int, int]] = None  # progressive resizing {epoch: size}, e.g. {0: 80, 5: 160}
    # several classes (folders): the class names of the mask target in id order, each a name (index masks carry
    # the ids) or {name: colour} for palette / RGB colour masks ('#rrggbb' or [r, g, b]); null: the binary mask.
    # Built-in class targets (dancers' parts) name their own classes (sandbox/data/classes.py)
    classes: Optional[list[Any]] = None
    ignore_index: Optional[int] = None  # index masks: the value of unlabelled pixels (e.g. 255), left out of loss and scores
    multilabel: bool = False  # class targets as independent sigmoid channels (overlapping classes), not one softmax
    # what a conditional generative model is conditioned on (sandbox/data/conditions.py): params (attractors'
    # (a, b, c, d)), or UTKFace file-name factors of a face folder joined by '|' (age|gender|race, age, ...);
    # null: no condition
    condition: Optional[str] = None


@dataclass
class ModelConfig:
    """The ``model:`` keys every family has: its name and the shared conv core (sandbox/nn/core.py).

    Each family's options extend this class in its own module of sandbox/models/ (``ModelSpec.options``:
    e.g. the segmentation models' ``skip`` and ``encoder``, the generative models' ``latent_dim``, a
    family's own ranges in ``field(metadata={"range": ...})``); the config's ``model:`` section is read
    into the class of ``model.name`` (sandbox/config/loading.py), so ``cfg.model`` is an instance of it."""
    name: str = "unet"  # a MODELS name
    in_channels: int = 3
    width: int = 16  # channels of the first stage; doubles at each downsampling
    widths: Optional[list[int]] = None  # explicit per-stage widths (length depth + 1)
    depth: int = 3  # number of 2x downsamplings; the bottleneck side is size / 2**depth
    blocks: int = 2  # convolutions per stage
    block: Literal["plain", "residual"] = "plain"
    norm: Literal["batch", "group", "none"] = "batch"
    # transpose: ConvTranspose k2 s2; transpose_k4: k4 s2 p1 (DCGAN's); transpose_k3: k3 s2 (uneven overlap:
    # the checkerboard of Odena et al. 2016); pixel_shuffle; bilinear (resize-conv). None: the model's default
    upsample: Optional[Literal["transpose", "pixel_shuffle", "bilinear", "transpose_k4", "transpose_k3"]] = None
    downsample: Optional[Literal["maxpool", "stride"]] = None  # None: the model's default (maxpool)
    dilation: int = 1
    dropout: float = 0.0


@dataclass
class EarlyStopConfig:
    """Stop when the monitored metric has not improved for ``patience`` epochs; an epoch improves when,
    made worse by ``min_delta``, it still beats the best so far (sandbox/metrics/selection.py)."""
    patience: int = 5
    min_delta: float = 0.0


@dataclass
class StopAtConfig:
    """Stop after the first epoch whose ``metric`` reaches ``value`` (>= in ``max`` mode, <= in ``min``):
    time-to-target runs (bench/time_to_target.py). Checked where ``train.early_stop`` is, on the epoch's
    train means and validation values; the run keeps its schedule (``train.epochs`` still sets the LR)."""
    metric: str = "val/dice"
    value: Optional[float] = None  # required: the target
    mode: Optional[Literal["max", "min"]] = None  # null: train.monitor_mode


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
    # a logged train/loss above diverge_factor x its running minimum (the run is diverging, maybe never
    # NaN): warn once per run, or stop it as a NaN does; null: no check. Measured on the logged means.
    diverge_factor: Optional[float] = 1000.0
    diverge_action: Literal["warn", "stop"] = "warn"
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
    # warm start: weights only (fresh optimizer, schedule, data, epochs) from runs/<run>[/checkpoints/<which>]
    init_from: Optional[str] = None
    init_from_strict: bool = True  # false: load the tensors whose name and shape match, report the rest
    early_stop: Optional[EarlyStopConfig] = None  # e.g. {patience: 5, min_delta: 0.001}; null: off
    stop_at: Optional[StopAtConfig] = None  # e.g. {metric: val/dice, value: 0.9}: stop once reached; null: off
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
    # gan on data with known generating parameters (attractors): w > 0 feeds G the standardised parameters v
    # beside its noise and adds w * MSE(G(v, z), x_v) to its adversarial loss (the seed's latent correspondence)
    param_mse: float = 0.0


@dataclass
class TrackConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online if logged in, else offline
    project: str = "sandbox"
    entity: Optional[str] = None
    group: Optional[str] = None  # runs of one experiment share it; default: the config file's stem
    tags: list[str] = field(default_factory=list)
    # where the metrics go besides metrics.jsonl (Accelerate's trackers); W&B's mode is still track.wandb,
    # TensorBoard writes runs/<name>/tensorboard/ (pip install tensorboard)
    report_to: list[Literal["wandb", "tensorboard"]] = field(default_factory=lambda: ["wandb"])
    log_checkpoints: bool = False  # W&B: log checkpoints/best as a model artifact at the end of the run


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
    # per target, weighted; null: the model's default ({mask: {dice: 1.0}} for segmentation models)
    loss: Optional[dict[str, dict[str, Any]]] = None
    loss_balance: Optional[BalanceConfig] = None  # e.g. {scale: depth, to: mask, min: 0.1, max: 10}
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    # a staged run: [{name: warm64, data.size: 64, train: {scheduler: onecycle, epochs: 4}}, ...], each stage
    # the config above plus its own keys, trained in order under runs/<name>/stages/ (sandbox/config/stages.py)
    stages: Optional[list[dict[str, Any]]] = None
    source: Optional[str] = None  # the YAML file this was loaded from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Numeric keys' accepted ranges, as the Literals above are the keys' accepted choices: the only list
# of them (a model family's own keys carry theirs in their field's metadata, sandbox/models/spec.py) (validate.py checks it; a message quotes the interval). [a, b] closed, (a, b) open, inf: no
# upper bound. Every float must be finite anyway (loading.py; loss_balance.max alone may be .inf).
RANGES: dict[str, str] = {
    "seed": "[0, 4294967295]",  # numpy's and torch's seeds are unsigned 32-bit
    "data.size": "[8, 4096]",  # px; one 4096 px image is 200 MB per 16 float32 channels of activations
    "data.num_train": "[1, 1000000]",  # synthetic data: the epoch's shuffle is a list of every index
    "data.num_val": "[0, 1000000]",
    "data.num_test": "[0, 1000000]",
    "data.mask_threshold": "[0, 1)",
    "data.ignore_index": "[0, 65535]",  # a value an 8- or 16-bit index mask can hold  # a fraction of the mask's own full scale (1, 255 or 65535)
    "train.momentum": "[0, 1)",
    "train.gamma": "(0, 1)",  # a decay factor (ReduceLROnPlateau refuses 1)
    "train.cycle_epochs": "(0, inf)",
    "train.step_epochs": "[1, inf)",  # step: epochs between decays; plateau: patience
    "train.checkpoint_every": "[0, inf)",  # 0: at epoch ends
    "train.keep_last_n": "[0, inf)",  # 0: only best and last
    "train.fid_samples": "[0, 1000000]",  # generated and held in memory each epoch
    "train.probe_samples": "[0, 1000000]",
    "train.param_mse": "[0, inf)",
    # sizes of things held in memory: far above any use, low enough that the error is ours, not torch's
    # allocator's (a 4096-channel 3x3 conv is 600 MB of float32 weights)
    "data.batch_size": "[1, 65536]",
    "data.num_workers": "[0, 256]",
    "data.seq_len": "[1, 100000]",
    "model.in_channels": "[1, 64]",
    "model.width": "[1, 4096]",
    "model.depth": "[0, 12]",
    "model.blocks": "[1, 64]",
    "model.dilation": "[1, 64]",
    "train.threads": "[0, 1024]",
    "train.grad_accum": "[1, 4096]",
    "train.num_images": "[0, 64]",  # validation samples drawn in one panel
    # step samplers (ddpm, flow: their options' field reads it) and the --steps flags of probe and interpolate
    "model.sample_steps": "[1, 10000]",
    "model.guidance": "[0, inf)",  # classifier-free guidance w (ddpm/flow's options field and interpolate's --guidance)  # net evaluations per sample (heun: about twice as many)
    "train.early_stop.patience": "[1, inf)",  # epochs without improvement before the run stops
    "train.early_stop.min_delta": "[0, inf)",  # in the monitored metric's units
}

def within(value: float, interval: str) -> bool:
    """``within(3, "[1, inf)")``: whether ``value`` lies in ``interval``, written as in :data:`RANGES`
    (validate.py checks the config with it; sandbox/cli.py the command-line flags, with the same ranges)."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    return above and (value <= high if interval[-1] == "]" else value < high)


def choices(section: type, key: str) -> tuple:
    """The allowed values of a ``Literal`` key: ``choices(ModelConfig, "upsample")`` ->
    ``("transpose", "pixel_shuffle", "bilinear", ...)`` (an ``Optional`` is unwrapped)."""
    tp = typing.get_type_hints(section)[key]
    if typing.get_origin(tp) is Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is not Literal:
        raise TypeError(f"{section.__name__}.{key} is not a Literal")
    return typing.get_args(tp)
