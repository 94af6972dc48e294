"""Paths through a latent space: lerp, slerp, multi-point paths and their endpoint images."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sandbox.build import build_data
from sandbox.data.folders import open_image, to_rgb
from sandbox.data.transforms import fit_to_size
from sandbox.errors import SandboxError

PARALLEL_EPS = 1e-4  # |sin(angle)| below this: slerp is ill-conditioned, lerp is the same path


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return a + (b - a) * t if 0 < t < 1 else (a.clone() if t <= 0 else b.clone())


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of ``(D,)`` codes; the norm goes linearly from |a| to |b|.

    ``t=0`` gives ``a`` and ``t=1`` gives ``b`` exactly; codes at (nearly) the same or opposite
    direction, or zero codes, fall back to :func:`lerp`.
    """
    if t <= 0 or t >= 1:
        return a.clone() if t <= 0 else b.clone()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return lerp(a, b, t)
    ua, ub = a / na, b / nb
    omega = torch.arccos((ua * ub).sum().clamp(-1, 1))
    so = torch.sin(omega)
    if so.abs() < PARALLEL_EPS:
        return lerp(a, b, t)
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / so
    return direction * ((1 - t) * na + t * nb)


def path(codes: torch.Tensor, steps: int, mode: str = "slerp", cycle: bool = False) -> torch.Tensor:
    """``codes: (K, D)`` endpoints -> ``(F, D)`` frames through them in order.

    ``steps`` frames per segment (``steps >= 2``: the start of the segment plus ``steps - 1``
    more); the path ends on the last endpoint, or with ``cycle`` on the first one again, so
    ``F = segments * (steps - 1) + 1``.
    """
    if steps < 2:
        raise SandboxError(f"--steps {steps}: expected at least 2 frames per segment")
    if len(codes) < 2:
        raise SandboxError(f"interpolation needs at least 2 endpoints, got {len(codes)}")
    step = {"slerp": slerp, "lerp": lerp}[mode]
    points = list(codes) + ([codes[0]] if cycle else [])
    frames = []
    for a, b in zip(points[:-1], points[1:]):
        frames += [step(a, b, i / (steps - 1)) for i in range(steps - 1)]
    frames.append(points[-1].clone())
    return torch.stack(frames)


def endpoint_images(cfg, items: list[str], split: str) -> tuple[torch.Tensor, list[str]]:
    """``--from`` items (image files or split indices) -> ``(K, C, S, S)`` in [0, 1] and short labels."""
    dataset, images, labels = None, [], []
    for item in items:
        if item.lstrip("-").isdigit():
            if dataset is None:
                dataset = build_data(cfg, (split,))[split]
            i = int(item)
            if not 0 <= i < len(dataset):
                raise SandboxError(f"--from {item}: index out of range; the {split} split has {len(dataset)} images "
                                   f"(0..{len(dataset) - 1})")
            images.append(dataset[i]["image"])
            labels.append(f"{split}{i}")
        else:
            p = Path(item)
            if not p.is_file():
                raise SandboxError(f"--from {item!r}: no such file; expected an image file or an index into "
                                   f"the {split} split")
            img, _ = fit_to_size(to_rgb(open_image(p)), cfg.data.size, cfg.data.resize, "image")
            images.append(torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0))
            labels.append(p.stem.split(".")[0][:16])
    return torch.stack(images), labels


@torch.no_grad()
def interpolate(model, cfg, items: list[str] | None, random: int | None, split: str = "test", steps: int = 8,
                mode: str = "slerp", cycle: bool = False,
                seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """``(frames (F, C, S, S) in [0, 1], endpoint labels, endpoint images (K, C, S, S) or None)``: codes of
    ``items`` (image files or indices into ``split``), else ``random`` (default 3) prior samples from
    ``seed`` (no images), decoded along the path.

    Codes of any shape are interpolated flat (the image-shaped noise of ``ddpm``/``flow`` included).
    Models whose latent is Gaussian noise (``latent_is_noise``) take slerp only: the midpoint of a
    straight line between two independent N(0, I) draws in D dimensions has norm about
    ``sqrt(D / 2)``, far off the ``sqrt(D)`` shell the sampler starts from (a grey, blurred frame)."""
    if mode == "lerp" and model.latent_is_noise:
        raise SandboxError("--mode lerp: this model's latent is Gaussian noise, where a straight line leaves the "
                           "shell of typical noise (norm sqrt(D / 2) halfway); use --mode slerp")
    dev = next(model.parameters()).device
    if items:
        images, labels = endpoint_images(cfg, items, split)
        codes = model.encode(images.to(dev)).float()
    else:
        k = 3 if random is None else random
        if k < 2:
            raise SandboxError(f"--random {k}: expected at least 2 endpoints")
        codes = model.prior(k, torch.Generator().manual_seed(seed)).float()
        labels, images = [f"random{k}", f"seed{seed}"], None
    frames = path(codes.flatten(1).cpu(), steps, mode, cycle).reshape(-1, *codes.shape[1:])
    return model.decode(frames.to(dev)).float().cpu(), labels, images


def strip(frames: torch.Tensor, images: torch.Tensor | None, cycle: bool = False) -> torch.Tensor:
    """The picture of a path: its frames, between the real images of its endpoints where it has them (the
    first, and the last; with ``cycle`` the first again), so that the reconstructions can be judged."""
    if images is None:
        return frames
    last = images[:1] if cycle else images[-1:]
    return torch.cat([images[:1].to(frames), frames, last.to(frames)])


def walk_endpoints(factor: str | None, items: list[str] | None, to: float | None,
                   random: int | None) -> tuple[float, float] | None:
    """interpolate.py's ``(--from, --to)`` of a factor walk (None without ``--factor`` and ``--to``): one number
    after ``--from``, ``--to`` given, no ``--random``; one line otherwise."""
    if factor is None and to is None:
        return None
    one = items[0] if items and len(items) == 1 else ""
    try:
        start = float(one)
    except ValueError:
        start = math.nan
    if factor is None or to is None or random is not None or not math.isfinite(start):
        raise SandboxError("--factor: expected one number after --from and one after --to (e.g. --factor a "
                           "--from -1.5 --to 1.5), and no --random")
    return start, to


def walk_values(factor, start: float, end: float, frames: int) -> torch.Tensor:
    """The values of a factor walk: ``frames`` from ``start`` to ``end`` (both included) for a continuous factor;
    each class id from ``start`` to ``end`` for a class factor (``frames`` unused), ids checked in one line."""
    if not factor.classes:
        if frames < 2:
            raise SandboxError(f"--frames {frames}: expected at least 2 frames")
        return torch.linspace(float(start), float(end), frames)
    for v in (start, end):
        if v != int(v) or not 0 <= v < factor.classes:
            raise SandboxError(f"--from/--to {v:g}: {factor.name} is a class factor; expected class ids in "
                               f"[0, {factor.classes - 1}]")
    step = 1 if end >= start else -1
    return torch.arange(int(start), int(end) + step, step, dtype=torch.float32)


@torch.no_grad()
def factor_walk(model, cfg, factor: str, start: float, end: float, frames: int = 8, split: str = "test",
                at: int = 0, seed: int = 0, guidance: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames (F, C, S, S) in [0, 1], values (F,))``: a conditional model's samples from one fixed noise
    (seeded ``seed``) under the condition of ``split``'s sample ``at`` with ``factor`` walked from ``start``
    to ``end`` (:func:`walk_values`), the other factors held at that sample's; ``guidance`` None: the model's.
    A stochastic sampler (ddpm's ancestral) draws its fresh noise per frame: the deterministic ones hold
    everything but the condition fixed."""
    if not getattr(model, "conditional", False):
        raise SandboxError("--factor: this run was trained without data.condition, so it has no factor to walk; "
                           "train with data.condition (e.g. configs/flow_attractors_cond.yaml)")
    names = [f.name for f in model.factors]
    if factor not in names:
        raise SandboxError(f"--factor {factor}: not a factor of this run; its factors are {', '.join(names)}")
    j = names.index(factor)
    values = walk_values(model.factors[j], start, end, frames)
    data = build_data(cfg, (split,))[split]
    if not 0 <= at < len(data):
        raise SandboxError(f"--at {at}: index out of range; the {split} split has {len(data)} images "
                           f"(0..{len(data) - 1})")
    conditions = data[at]["condition"].float().repeat(len(values), 1)
    conditions[:, j] = values
    noise = model.prior(1, torch.Generator().manual_seed(seed)).expand(len(values), *model.latent_shape)
    images = model.decode(noise.contiguous(), torch.Generator().manual_seed(seed + 1), conditions, guidance)
    return images.float().cpu(), values


def save_factor_walk(model, cfg, folder: Path, factor: str, start: float, end: float, frames: int = 8,
                     split: str = "test", at: int = 0, seed: int = 0,
                     guidance: float | None = None) -> tuple[int, Path, Path]:
    """:func:`factor_walk` written as ``folder/walk_<factor>_<from>_to_<to>_<split><at>_seed<seed>.{png,gif}``
    (a strip of the frames and a looping GIF); returns ``(frames, png, gif)``."""
    from sandbox.viz.grids import save_gif, save_grid

    images, _ = factor_walk(model, cfg, factor, start, end, frames, split, at, seed, guidance)
    stem = f"walk_{factor}_{start:g}_to_{end:g}_{split}{at}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    png = save_grid(images, folder / f"{stem}.png", nrow=len(images))
    return len(images), png, save_gif(images, folder / f"{stem}.gif")
