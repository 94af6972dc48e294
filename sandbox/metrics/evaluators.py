"""Evaluators trained on the data: features that see what a person sees.

The random features of :mod:`sandbox.metrics.generative` (``kid_own``) are a cheap per-epoch signal, but
they rank blurred blobs above a 1 px blur of real images (results/evaluators/). The evaluators here learn
from the training split what the dataset knows:

* :class:`FeatureNet` (the core :class:`~sandbox.nn.core.Encoder`, pooled to 4 x 4, one hidden layer)
  regresses standardised targets (attractors: the Clifford parameters ``(a, b, c, d)``) and/or classifies
  labels (faces: gender, race); its hidden layer is the feature space for the Fréchet distance, KID and
  precision/recall of :mod:`sandbox.metrics.generative` (:func:`domain_scores`: the same functions, other
  features).
* :func:`train_evaluator`: fixed seed, CPU, a fixed number of steps, nothing drawn from the global RNG.
* :func:`cached_evaluator`: one file pair per key (dataset, its seed, image size, evaluator seed, steps):
  ``<key>.safetensors`` (weights only: never a pickle) and ``<key>.json`` (the key, the target statistics,
  the held-out score per target, the training indices and split). A file that safetensors cannot read is
  refused with a one-line error, never unpickled.

Two-sample tests on these features or on pixels: :mod:`sandbox.metrics.two_sample`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sandbox.errors import SandboxError
from sandbox.metrics.generative import frechet_distance, kid, precision_recall
from sandbox.nn.core import Encoder

VERSION = 1  # bump when the net or its training changes: old cache files then no longer match a key
FEATURE_DIM = 128
STEPS, BATCH, LR = 1500, 32, 2e-3


class FeatureNet(nn.Module):
    """``x: (B, 3, S, S) in [0, 1] -> (B, outputs)``; :meth:`features` gives the ``(B, FEATURE_DIM)`` hidden layer."""

    def __init__(self, outputs: int, widths=(16, 32, 64), feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.encoder = Encoder(3, widths, blocks=1, norm="batch")
        # 4 x 4 pooled, not global: an attractor's parameters are in its layout, which a global mean loses
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(F.adaptive_avg_pool2d(self.encoder((x.float() - 0.5) / 0.25)[-1], 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class Targets:
    """What an evaluator predicts: ``regress (N, R)`` float columns (standardised by their training mean/std)
    and ``classes {name: (N,) long}`` with ``n_classes {name: K}``; ``names``: the regression columns."""
    regress: torch.Tensor | None = None
    names: tuple[str, ...] = ()
    classes: dict[str, torch.Tensor] = field(default_factory=dict)
    n_classes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.regress) if self.regress is not None else len(next(iter(self.classes.values())))

    @property
    def outputs(self) -> int:
        return len(self.names) + sum(self.n_classes.values())

    def take(self, idx) -> "Targets":
        return Targets(None if self.regress is None else self.regress[idx], self.names,
                       {k: v[idx] for k, v in self.classes.items()}, self.n_classes)


@dataclass
class Evaluator:
    """A trained :class:`FeatureNet` (eval mode, CPU) with its target statistics and metadata (``meta``: the key,
    the held-out score per target, the split and indices it was trained on)."""
    net: FeatureNet
    mean: torch.Tensor  # (R,) of the regression targets
    std: torch.Tensor
    meta: dict

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        images = self._fit(images)
        with torch.autocast(device_type="cpu", enabled=False):
            return torch.cat([self.net.features(images[i:i + batch]) for i in range(0, len(images), batch)])

    @torch.no_grad()
    def regress(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """``(N, R)`` the regression targets estimated for ``images``, in the data's units."""
        images = self._fit(images)
        r = len(self.mean)
        out = torch.cat([self.net(images[i:i + batch])[:, :r] for i in range(0, len(images), batch)])
        return out * self.std + self.mean

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        """Images on CPU at the evaluator's size (samples of another size are resized, antialiased)."""
        images = images.detach().float().cpu()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        size = self.meta["size"]
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images


def _loss(out: torch.Tensor, y: Targets) -> torch.Tensor:
    r = len(y.names)
    loss = F.mse_loss(out[:, :r], y.regress) if r else out.new_zeros(())
    start = r
    for name, k in y.n_classes.items():
        loss = loss + F.cross_entropy(out[:, start:start + k], y.classes[name])
        start += k
    return loss


@torch.no_grad()
def heldout_scores(net: FeatureNet, images: torch.Tensor, y: Targets) -> dict[str, float]:
    """R² per regression column (``r2_<name>``) and accuracy per label (``acc_<name>``) on held-out images."""
    out = torch.cat([net(images[i:i + 256]) for i in range(0, len(images), 256)])
    r = len(y.names)
    res = {}
    if r:
        ss_res = (out[:, :r] - y.regress).square().sum(0)
        ss_tot = (y.regress - y.regress.mean(0)).square().sum(0).clamp_min(1e-12)
        res.update({f"r2_{n}": round(float(v), 4) for n, v in zip(y.names, 1 - ss_res / ss_tot)})
    start = r
    for name, k in y.n_classes.items():
        res[f"acc_{name}"] = round(float((out[:, start:start + k].argmax(1) == y.classes[name]).double().mean()), 4)
        start += k
    return res


def train_evaluator(images: torch.Tensor, targets: Targets, heldout: float = 0.1, steps: int = STEPS,
                    seed: int = 0, batch: int = BATCH) -> tuple[FeatureNet, torch.Tensor, torch.Tensor, dict]:
    """Train a :class:`FeatureNet` on ``images (N, 3, S, S)`` (all from the training split) minus their last
    ``heldout`` fraction, which scores it. Deterministic: the weights and batches come from ``seed`` inside a
    forked RNG (the caller's random stream is untouched), CPU, ``steps`` AdamW steps with a cosine decay.
    Returns ``(net in eval mode, mean, std, held-out scores)``."""
    n_fit = len(images) - max(1, int(round(len(images) * heldout)))
    if n_fit < 2:
        raise SandboxError(f"evaluator: {len(images)} training images are too few; expected at least 3")
    reg = targets.regress
    mean = reg[:n_fit].mean(0) if reg is not None else torch.zeros(0)
    std = reg[:n_fit].std(0).clamp_min(1e-8) if reg is not None else torch.ones(0)
    y = Targets(None if reg is None else ((reg - mean) / std).float(), targets.names, targets.classes, targets.n_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(targets.outputs)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=max(steps, 1), pct_start=0.1)
        net.train()
        with torch.autocast(device_type="cpu", enabled=False):
            for _ in range(steps):
                idx = torch.randint(0, n_fit, (min(batch, n_fit),), generator=g)
                loss = _loss(net(images[idx].float()), y.take(idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    net.eval()
    rest = torch.arange(n_fit, len(images))
    return net, mean, std, heldout_scores(net, images[rest].float(), y.take(rest))


def cache_key(key: dict) -> str:
    """File stem of an evaluator: readable prefix + a hash of the whole key (any change trains another one)."""
    digest = hashlib.sha256(json.dumps({**key, "version": VERSION}, sort_keys=True).encode()).hexdigest()[:12]
    return f"{key.get('dataset', 'data')}_{key.get('size', '')}px_seed{key.get('data_seed', '')}_{digest}"


def _write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one


def cached_evaluator(cache_dir: str | Path, key: dict, load: Callable[[], tuple[torch.Tensor, Targets, dict]],
                     steps: int = STEPS, seed: int = 0) -> Evaluator:
    """The evaluator of ``key`` (``{"dataset", "size", "data_seed", ...}``) from ``cache_dir``, trained and
    written there first when absent. ``load() -> (images, targets, info)`` reads the training images only when
    training is needed; ``info`` (e.g. ``{"split": "train", "indices": [...]}``) goes into the JSON."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    full = {**key, "steps": steps, "evaluator_seed": seed, "feature_dim": FEATURE_DIM}
    cache_dir = Path(cache_dir)
    stem = cache_key(full)
    weights, meta_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    if weights.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SandboxError(f"{weights}: not a readable safetensors file ({' '.join(str(exc).split())[:80]}); "
                               "nothing from it was loaded: delete it and the evaluator is trained again") from None
        net = FeatureNet(meta["outputs"])
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("target_")})
        return Evaluator(net.eval(), state["target_mean"], state["target_std"], meta)
    images, targets, info = load()
    import time

    t0, c0 = time.perf_counter(), time.process_time()
    net, mean, std, scores = train_evaluator(images, targets, steps=steps, seed=seed)
    meta = {"key": full, **info, "size": int(images.shape[-1]), "outputs": targets.outputs,
            "names": list(targets.names), "n_classes": targets.n_classes, "heldout": scores,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "train_cpu_seconds": round(time.process_time() - c0, 1), "threads": torch.get_num_threads()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    state = {**{k: v.detach().contiguous() for k, v in net.state_dict().items()},
             "target_mean": mean.float().contiguous(), "target_std": std.float().contiguous()}
    _write(weights, lambda p: save_file(state, str(p)))
    _write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=1)))
    return Evaluator(net, mean.float(), std.float(), meta)


def domain_scores(evaluator: Evaluator, real: torch.Tensor, fake: torch.Tensor, seed: int = 0,
                  real_features: torch.Tensor | None = None) -> dict[str, float]:
    """``fid_domain``, ``kid_domain``, ``precision_domain``, ``recall_domain`` of images ``fake`` against ``real``
    in the evaluator's features (:mod:`sandbox.metrics.generative`'s functions)."""
    fr = evaluator.features(real) if real_features is None else real_features
    ff = evaluator.features(fake)
    precision, recall = precision_recall(fr, ff)
    return {"fid_domain": frechet_distance(fr, ff), "kid_domain": kid(fr, ff, seed=seed)[0],
            "precision_domain": precision, "recall_domain": recall}
