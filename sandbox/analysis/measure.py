"""Measure a model instead of trusting its formula: parameters, FLOPs, bottleneck, receptive
field and activation memory, each taking ``(model, size)``. Used by ``sandbox/summary.py``,
compare and sweep reports and benchmarks; ``summarize(cfg)`` builds the model of a config first.

Every function works on a copy of the model or restores its train/eval mode, so measuring
never changes a model that is being trained (no BatchNorm running-stat updates, no mode flips).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, NamedTuple

import torch
from torch import nn

from sandbox.build import build_model
from sandbox.errors import SandboxError
from sandbox.models import MODELS, names_for
from sandbox.nn.core import Encoder


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the block (BatchNorm uses running stats, dropout is off); modes restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def _in_channels(model: nn.Module) -> int:
    """Input channels: the core Encoder's, else the first convolution's (not the Encoder's first
    convolution in module order: with ``downsample=stride`` that is a 2x downsampling conv)."""
    for m in model.modules():
        if isinstance(m, Encoder):
            return m.in_channels
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    raise SandboxError(f"{type(model).__name__} has no convolution to read the input channels from; "
                       "pass in_channels explicitly")


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(model.parameters()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _input(model: nn.Module, size: int, batch: int = 1, in_channels: int | None = None, seed: int = 0):
    """A seeded random image batch ``(batch, C, size, size)`` in [0, 1] on the model's device and dtype."""
    device, dtype = _device_dtype(model)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, in_channels or _in_channels(model), size, size, generator=gen, dtype=dtype)
    return x.to(device)


def _first_output(out: Any, target: str | None) -> torch.Tensor:
    """The tensor to measure: ``out[target]``, else the first head of a dict output, else ``out``."""
    if isinstance(out, dict):
        if target is None:
            return next(iter(out.values()))
        if target not in out:
            raise SandboxError(f"target {target!r} is not an output of the model; accepted: {', '.join(out)}")
        return out[target]
    if target is not None:
        raise SandboxError(f"target {target!r} given, but the model returns a single tensor, not a dict")
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts (shared parameters counted once)."""
    params = list(model.parameters())  # .parameters() already de-duplicates shared tensors
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def flops_per_image(model: nn.Module, size: int, in_channels: int | None = None) -> int:
    """Forward FLOPs for one ``(1, C, size, size)`` image, counted by ``FlopCounterMode``.

    Convention: 2 FLOPs per multiply-add of convolutions (transposed too) and matmuls; bias,
    norm, activation, pooling and other element-wise ops are not counted (they are a few %).
    A training step costs about 3x this per image (forward + backward for inputs and weights).
    """
    return _counted_flops(model, _input(model, size, 1, in_channels))


def _counted_flops(model: nn.Module, *inputs: torch.Tensor, call=None) -> int:
    """FLOPs of ``(call or model)(*inputs)`` in eval mode without gradients (``FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        (call or model)(*inputs)
    return int(counter.get_total_flops())


def bottleneck_shape(model: nn.Module, size: int, in_channels: int | None = None) -> tuple[int, int, int]:
    """Measured ``(C, h, w)`` of the last (coarsest) feature of ``model.encoder`` on a ``size`` x ``size`` input
    (of its convolutional ``core`` where it flattens into a latent vector: the generative models)."""
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise SandboxError(f"{type(model).__name__} has no .encoder; bottleneck_shape needs an encoder-decoder model")
    encoder = getattr(encoder, "core", encoder)
    with _eval_mode(model), torch.no_grad():
        feats = encoder(_input(model, size, 1, in_channels))
    last = feats[-1] if isinstance(feats, (list, tuple)) else feats
    return tuple(last.shape[1:])


def predicted_bottleneck_side(size: int, depth: int, downsamples: bool = True) -> int:
    """``size // 2**depth`` for a model that halves the side ``depth`` times, ``size`` otherwise
    (SimpleConv: its MODELS builder has ``downsamples = False``)."""
    return size // 2**depth if downsamples else size


class ReceptiveField(NamedTuple):
    """An empirically measured receptive field (pixels of the input that move the centre output)."""
    side: int  # side of the bounding box of input pixels with a non-zero gradient
    measured_at: int  # image side it was measured at (larger than asked when it reached the border)
    lower_bound: bool  # still reached the border at the largest size tried: the true RF is >= side


_OPEN_GATES = {nn.ReLU: lambda m: nn.LeakyReLU(0.5), nn.ReLU6: lambda m: nn.LeakyReLU(0.5),
               nn.MaxPool2d: lambda m: nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
               if m.dilation in (1, (1, 1)) else m}


def _open_gates(model: nn.Module) -> nn.Module:
    """Swap gating modules for ones with the same connectivity that pass gradient for every input:
    ReLU -> LeakyReLU(0.5) (an off ReLU blocks its paths), MaxPool -> AvgPool of the same window
    (max-pool sends gradient to the arg-max only). Slope 0.5, not 0.01: no underflow through deep nets."""
    for name, child in model.named_children():
        swap = _OPEN_GATES.get(type(child))
        if swap is not None:
            setattr(model, name, swap(child))
        else:
            _open_gates(child)
    return model


def _rf_box(model: nn.Module, size: int, target: str | None, samples: int) -> tuple[int, bool]:
    """``(bounding-box side, touches the border)`` of ``|d out[centre] / d x| > 0`` at one size."""
    x = _input(model, size, samples, seed=1).requires_grad_(True)
    y = _first_output(model(x), target)
    # Samples are independent in eval mode, so the gradient of the sum is the per-sample gradient.
    y[..., y.shape[-2] // 2, y.shape[-1] // 2].sum().backward()
    hit = (x.grad.abs() > 0).any(0).any(0)  # (H, W): union over samples and channels
    rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
    if rows.numel() == 0:
        raise SandboxError("the centre output does not depend on the input at all (zero gradient everywhere)")
    side = max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1)
    border = bool(rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1)
    return side, border


def measure_receptive_field(model: nn.Module, size: int, target: str | None = None, max_scale: int = 4,
                            samples: int = 1) -> ReceptiveField:
    """Receptive field of the centre output pixel, measured by backprop rather than by formula.

    The output (``target`` or the first head) at the centre pixel is backpropagated to a random
    input; the RF is the side of the bounding box of input pixels whose gradient is non-zero.
    Why this is honest:

    - eval mode on a copy: batch-statistics BatchNorm would couple every pixel (and every
      sample) and report the whole image; eval BatchNorm is a per-channel affine map.
    - the RF is the set of pixels that *can* move the output, so gates that block gradient for
      a particular input are opened on the copy (ReLU -> leaky, max-pool -> average over the
      same window; see :func:`_open_gates`): measured on a width-4 SimpleConv, the centre
      pixel had NO input gradient at all with plain ReLUs (every channel off on some layer).
      Gates the swap cannot see (``F.relu``, ``F.max_pool2d`` in forward) are covered by the
      union over ``samples`` random inputs: raise it for such models (1 suffices for ours).
    - float32 suffices: exact zeros come from structure (padding, gates), not from rounding;
      an exact cancellation has probability ~0 with random weights and inputs.
    - the image border truncates the box: when it reaches the border the model is measured
      again at 2x, then up to ``max_scale`` x ``size``; if it still reaches the border the
      result is a lower bound (``lower_bound=True``) and the RF covers at least the whole image.

    Input sizes are ``size * 2**k``, so a model that needs sizes divisible by ``2**depth`` works.
    """
    probe = _open_gates(copy.deepcopy(model)).eval().requires_grad_(False)  # input gradient only
    scale = 1
    side, border = _rf_box(probe, size, target, samples)
    while border and scale * 2 <= max_scale:
        try:
            side, border = _rf_box(probe, size * scale * 2, target, samples)
        except SandboxError:  # built for one input size (a linear bottleneck): a lower bound at `size`
            break
        scale *= 2
    return ReceptiveField(side, size * scale, border)


def receptive_field(model: nn.Module, size: int, target: str | None = None) -> int:
    """Side in pixels of the measured receptive field (see :func:`measure_receptive_field`);
    it may exceed ``size`` (the centre pixel then sees the whole ``size`` image)."""
    return measure_receptive_field(model, size, target).side


def activation_memory(model: nn.Module, size: int, batch_size: int, dtype_bytes: int = 4,
                      in_channels: int | None = None) -> int:
    """Rough estimate in bytes of the activations a training step keeps for backward.

    Sum over leaf modules (conv, norm, ReLU, pool, ...) of their output sizes in one forward
    pass, times ``batch_size * dtype_bytes``. Outputs that alias a tensor already counted
    (in-place ReLU, Identity) are counted once. Not counted: functional ops outside modules
    (skip concatenations, residual sums), parameters, gradients and optimizer state, and the
    allocator's overhead; so the real peak is of this order, not equal to it.
    """
    seen: dict[int, int] = {}
    keep = []  # hold outputs so that freed memory is not reused and mistaken for an alias

    def hook(module, inputs, output):
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(t, torch.Tensor):
                keep.append(t)
                seen[t.untyped_storage().data_ptr()] = max(seen.get(t.untyped_storage().data_ptr(), 0), t.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with _eval_mode(model), torch.no_grad():
            model(_input(model, size, 1, in_channels))
    finally:
        for h in handles:
            h.remove()
    return sum(seen.values()) * batch_size * dtype_bytes


def segmentation_models() -> list[str]:
    """The registered segmentation models."""
    return names_for("segmentation")


def summarize(cfg, model: nn.Module | None = None) -> dict[str, Any]:
    """Everything above for a :class:`~sandbox.config.Config` (``model``: a prebuilt one, else built).

    Keys: model, size, params, trainable, gflops (forward, per image), bottleneck_predicted (side),
    bottleneck (measured C x h x w), rf (px), rf_at (px it was measured at), rf_lower_bound,
    activation_mb (at ``data.batch_size``, fp32).
    """
    model = model if model is not None else build_model(cfg)
    size, m = cfg.data.size, cfg.model
    total, trainable = count_params(model)
    # A GAN has no image -> image path: measure its discriminator (core Encoder + linear, image ->
    # logit), and count the generator's FLOPs per sample with it.
    gan = not hasattr(model, "encoder") and hasattr(model, "discriminator") and hasattr(model, "generator")
    net = _GANDiscriminator(model.discriminator) if gan else model
    rf = measure_receptive_field(net, size)
    gflops = flops_per_image(net, size, m.in_channels) / 1e9
    if gan:
        z = torch.zeros(1, model.generator.latent_dim, device=_device_dtype(model)[0])  # its input (params + noise)
        gflops += _counted_flops(model, z, call=model.generator) / 1e9
    row = {
        "model": m.name,
        "size": size,
        "params": total,
        "trainable": trainable,
        "gflops": gflops,
        "bottleneck_predicted": predicted_bottleneck_side(size, m.depth, MODELS[m.name].downsamples),
        "bottleneck": bottleneck_shape(net, size, m.in_channels),
        "rf": rf.side,
        "rf_at": rf.measured_at,
        "rf_lower_bound": rf.lower_bound,
        "activation_mb": activation_memory(net, size, cfg.data.batch_size, 4, m.in_channels) / 2**20,
    }
    if gan:
        row["note"] = "GAN: FLOPs = G(z) + D(x) per image; bottleneck, RF and activations of D"
    return row


class _GANDiscriminator(nn.Module):
    """A GAN's discriminator seen as an encoder model, for the measures above."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.encoder = discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[..., None, None]  # (B, 1) logits as a 1x1 "map": its centre is the logit
