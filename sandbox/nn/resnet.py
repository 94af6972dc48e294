"""A torchvision ResNet-18 behind the Encoder contract of :mod:`sandbox.nn.core`.

    x (B, C, H, W) ────────────────────────────────> f0 = x   (C,   H)      full-resolution skip
    conv1 7x7/2 -> bn1 -> relu ────────────────────> f1       (64,  H/2)    "stem"
    maxpool 3x3/2 -> layer1 ───────────────────────> f2       (64,  H/4)
    layer2 ──> f3 (128, H/8)   layer3 ──> f4 (256, H/16)   layer4 ──> f5 (512, H/32)

``depth`` d in 1..5 keeps ``f0 .. f_d`` (the layers beyond are not built), so the bottleneck
side is ``H / 2**d`` exactly as for the core Encoder, and the same Decoder restores full
resolution with d upsamplings. ``f0`` is the (standardised) input itself: the stem halves the
image at once, so the image is the only full-resolution signal; the Decoder's last step
concatenates it (UNet) or adds a 1x1 projection of it (``skip="add"``), and with ``skip="none"``
it is unused. It has no parameters, so there is nothing to load or freeze for it.

The encoder is torchvision's ResNet-18 as published (BatchNorm, no dilation: BasicBlock has
none); the sandbox's ``norm``/``block``/``blocks``/``dilation`` options shape the decoder.
``weights``: None = random init (torchvision's), or a local state-dict file read with
``torch.load(weights_only=True)``; nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.weights import UnreadableFile, UnsafeFile, load_safely

CHANNELS = (64, 64, 128, 256, 512)  # stem, layer1 .. layer4
MAX_DEPTH = len(CHANNELS)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a local file (also inside ``{"state_dict": ...}`` or
    ``{"model": ...}``, with any DDP ``module.`` prefix removed); one-line SandboxError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SandboxError(f"resnet18 weights: file {str(path)!r} not found (nothing is downloaded; "
                           "save torchvision.models.resnet18(...).state_dict() there, or set model.weights: null)")
    try:
        obj = load_safely(path)
    except UnsafeFile as exc:
        raise SandboxError(f"resnet18 weights: {exc}") from None
    except UnreadableFile as exc:
        raise SandboxError(f"resnet18 weights: cannot read {str(path)!r} as a torch state dict "
                           f"({str(exc).split(' ', 1)[1]})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SandboxError(f"resnet18 weights: {str(path)!r} holds a {type(obj).__name__}, "
                           "expected a state dict {name: tensor} of torchvision's resnet18")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """``(64, 3, 7, 7) -> (64, in_channels, 7, 7)``: the sum over RGB for one channel (a grey image
    repeated thrice gives the same response), else the RGB filters cycled and scaled by
    ``3 / in_channels`` so that the activation scale stays that of a 3-channel input."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


class ResNet18Encoder(nn.Module):
    """``forward(x: (B, C, H, W)) -> [x, f1 (B, 64, H/2, W/2), ..., f_depth]``, fine to coarse.

    ``out_channels = [in_channels, 64, 64, 128, 256, 512][:depth + 1]``; ``reduction = 2**depth``.
    ``dropout`` > 0 applies Dropout2d to the bottleneck feature (the core Encoder drops out in
    its coarsest stages; ResNet-18 has no dropout of its own).
    """

    def __init__(self, in_channels: int = 3, depth: int = MAX_DEPTH, weights: str | Path | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if not 1 <= depth <= MAX_DEPTH:
            raise SandboxError(f"resnet18 supports depth 1..{MAX_DEPTH}, got {depth}")
        from torchvision.models import resnet18  # here: importing torchvision costs ~2 s at start-up

        net = resnet18(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        if weights is not None:
            self._load(net, weights, in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.layers = nn.ModuleList(
            [nn.Sequential(net.maxpool, net.layer1), net.layer2, net.layer3, net.layer4][:depth - 1])
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.out_channels = [in_channels, *CHANNELS[:depth]]

    @staticmethod
    def _load(net: nn.Module, path: str | Path, in_channels: int) -> None:
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}  # any classifier
        w = state.get("conv1.weight")
        if w is not None and w.ndim == 4 and w.shape[1] == 3 and in_channels != 3:
            state["conv1.weight"] = adapt_first_conv(w, in_channels)
        expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
        # old torchvision files predate BatchNorm's num_batches_tracked; BatchNorm fills it in
        missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in expected.items()
                 if k in state and state[k].shape != s]
        problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if keys]
        if problems:
            raise SandboxError(f"resnet18 weights: {str(path)!r} does not match torchvision's resnet18: "
                               + "; ".join(problems))
        net.load_state_dict(state, strict=False)

    @property
    def depth(self) -> int:
        return len(self.out_channels) - 1

    @property
    def reduction(self) -> int:
        """Side of the input divided by side of the bottleneck."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        x = self.stem(x)
        feats.append(x)
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        feats[-1] = self.drop(feats[-1])
        return feats
