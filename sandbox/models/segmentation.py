"""Segmentation models on the shared core: SimpleConv, HourGlass and UNet.

All three are ``SegmentationModel(encoder, Decoder, Heads)``. Every option of the core works
in every model; the builders differ only in their defaults, which is the point of the
comparison:

                skip     upsample   downsample   widths      what it tests
    simpleconv  none     (never)    (never)      constant    full resolution, small receptive field
    hourglass   none     transpose  maxpool      doubling    everything through the bottleneck (the seed)
    unet        concat   transpose  maxpool      doubling    skips carry the fine detail (Ronneberger 2015)

``encoder="resnet18"`` (unet, hourglass) swaps the core Encoder for torchvision's ResNet-18
(:mod:`sandbox.nn.resnet`) in front of the same Decoder. :func:`check_model_options` names the
illegal options and combinations with their key path; the builders call it too, so the Python
API and the YAML fail with the same line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from torch import nn

from sandbox.errors import ConfigError, SandboxError
from sandbox.config.schema import ModelConfig
from sandbox.models.spec import ModelSpec, check_common, register
from sandbox.nn.core import Decoder, Encoder, stage_widths
from sandbox.nn.heads import Heads
from sandbox.nn.resnet import MAX_DEPTH as RESNET_MAX_DEPTH
from sandbox.nn.resnet import ResNet18Encoder

# binary and class-map targets: heads return logits (K of them for K classes; the CompositeLoss gives others sigmoid)
LOGIT_TARGETS = ("mask", "parts")

DEFAULTS = {"unet": {"skip": "concat", "upsample": "transpose", "downsample": "maxpool"},
            "hourglass": {"skip": "none", "upsample": "transpose", "downsample": "maxpool"},
            "simpleconv": {"skip": "none", "upsample": "none", "downsample": "none"}}


@dataclass
class SegmentationOptions(ModelConfig):
    """The ``model:`` keys of unet, hourglass and simpleconv: the shared core plus these."""
    skip: Optional[Literal["none", "concat", "add"]] = None  # None: the model's default
    encoder: Literal["core", "resnet18"] = "core"  # resnet18: torchvision ResNet-18 behind the same contract
    weights: Optional[str] = None  # resnet18: null (from scratch) or a local .pth file; nothing is downloaded
    freeze_encoder: bool = False


class SegmentationModel(nn.Module):
    """``forward(x: (B, C, H, W) in [0, 1]) -> {target: (B, K, H, W)}``, H and W divisible by
    ``encoder.reduction``.

    Binary targets (``mask``) come out as logits; regression targets (``depth``, ...) as
    values in [0, 1] (a sigmoid on the head), the range of the data and of SSIM's
    ``data_range=1``.

    The input is standardised inside the model (``(x - mean) / std``) so that data, plots
    and predictions all stay in [0, 1] image space.

    ``freeze_encoder``: the encoder's parameters get ``requires_grad=False`` and the encoder
    stays in eval mode even in ``model.train()``: freezing the weights alone would still let
    BatchNorm's running statistics (buffers) drift with every training batch and dropout
    fire, so the "frozen" features would change under the decoder.
    """

    kind = "segmentation"

    def __init__(self, encoder: nn.Module, decoder: Decoder, targets: dict[str, int],
                 mean: float = 0.5, std: float = 0.25, freeze_encoder: bool = False):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.heads = Heads(decoder.out_channels, targets)
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def targets(self) -> list[str]:
        return list(self.heads.heads.keys())

    def train(self, mode: bool = True) -> "SegmentationModel":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.encoder.reduction
        if x.shape[-2] % r or x.shape[-1] % r:
            raise SandboxError(f"input of {x.shape[-2]}x{x.shape[-1]} px does not halve {self.encoder.depth} times "
                               f"evenly; use sides divisible by {r} (data.size) or a smaller model.depth")
        feats = self.encoder((x - self.mean) / self.std)
        out = self.heads(self.decoder(feats))
        return {k: v if k in LOGIT_TARGETS else torch.sigmoid(v) for k, v in out.items()}

    def loss(self, batch: dict, step) -> tuple[torch.Tensor, dict]:
        """``(total, parts)``: the config's loss (``step.criterion``, a per-target composite) of the forward
        on ``batch["image"]`` against the batch's targets; parts named as the criterion names them
        (``mask/dice``)."""
        return step.criterion((step.forward or self)(batch["image"]), batch)


def _build(name: str, targets: dict[str, int] | None = None, in_channels: int = 3, width: int = 16,
           widths: Sequence[int] | None = None, depth: int = 3, blocks: int = 2, block: str = "plain",
           norm: str = "batch", upsample: str | None = None, skip: str | None = None,
           downsample: str | None = None, dilation: int = 1, dropout: float = 0.0, encoder: str = "core",
           weights: str | Path | None = None, freeze_encoder: bool = False) -> SegmentationModel:
    """The one builder behind every name; ``None`` options take the model's default (``DEFAULTS``).

    With ``encoder="resnet18"`` the ``width``/``widths``, ``blocks``, ``block``, ``norm`` and
    ``dilation`` options shape the decoder only (the encoder is ResNet-18 as published).
    """
    d = DEFAULTS[name]
    ws = stage_widths(width, widths, depth, grow=name != "simpleconv")
    if encoder == "resnet18":
        enc = ResNet18Encoder(in_channels, depth, weights, dropout)
    else:
        enc = Encoder(in_channels, ws, blocks, downsample or d["downsample"], block, dilation, norm, dropout)
    dec = Decoder(enc.out_channels, ws, skip or d["skip"], upsample or d["upsample"], blocks, block, norm, dilation)
    return SegmentationModel(enc, dec, targets or {"mask": 1}, freeze_encoder=freeze_encoder)


def _check_segmentation(name: str, options: dict[str, Any]) -> None:
    """The combinations :class:`SegmentationOptions`' fields cannot say (unknown keys and allowed values are
    checked before, by ``ModelSpec.check_options``)."""
    o = {k: v for k, v in options.items() if v is not None}
    check_common(o, (("in_channels", 1), ("width", 1), ("depth", 0), ("blocks", 1), ("dilation", 1)))
    depth = o.get("depth", 3)
    if "freeze_encoder" in o and not isinstance(o["freeze_encoder"], bool):
        raise ConfigError(f"model.freeze_encoder: got {o['freeze_encoder']!r}, expected true or false")
    encoder = o.get("encoder", "core")
    if name == "simpleconv":
        for key in ("upsample", "downsample"):
            if key in o:
                raise ConfigError(f"model.{key}: simpleconv never resizes; leave it unset")
        if encoder != "core":
            raise ConfigError(f"model.encoder: simpleconv never resizes, but {encoder} halves the input at its "
                              "stem; use model.name=unet or hourglass with it, or model.encoder=core")
    if encoder == "resnet18":
        if not 1 <= depth <= RESNET_MAX_DEPTH:
            raise ConfigError(f"model.encoder: resnet18 supports depth 1..{RESNET_MAX_DEPTH}, got {depth}")
        if "downsample" in o:
            raise ConfigError("model.downsample: resnet18 downsamples by itself (strided stem, max pool, "
                              "strided blocks); leave it unset")
    elif "weights" in o:
        raise ConfigError("model.weights: only model.encoder=resnet18 loads weights; set model.encoder=resnet18 "
                          "or model.weights=null")
    if "weights" in o:
        if not isinstance(o["weights"], (str, Path)):
            raise ConfigError(f"model.weights: got {o['weights']!r}, expected a local file path or null")
        if not Path(o["weights"]).is_file():
            raise ConfigError(f"model.weights: file {str(o['weights'])!r} not found (nothing is downloaded; "
                              "save a torchvision resnet18 state_dict there, or set model.weights=null)")


def _register(name: str, doc: str) -> None:
    def build(targets: dict[str, int] | None = None, **options: Any) -> SegmentationModel:
        return _build(name, targets, **{k: v for k, v in options.items() if v is not None})

    register(ModelSpec(name, build, task="segmentation", trainer="supervised", options=SegmentationOptions,
                       check=lambda options: _check_segmentation(name, options),
                       downsamples=name != "simpleconv",  # config validation: any data.size works without it
                       default_loss={"mask": {"dice": 1.0}}, logit_targets=LOGIT_TARGETS,
                       doc=f"{doc} Options: :class:`SegmentationOptions` (see ``_build``)."))


_register("unet", "UNet: pooling encoder, transposed-conv decoder, concatenated skips.")
_register("hourglass", "HourGlass: the UNet without skips; everything passes through the bottleneck.")
_register("simpleconv", "SimpleConv: ``2 * depth + 1`` stages at full resolution and constant width; no resizing.")
