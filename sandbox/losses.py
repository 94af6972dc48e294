"""Pluggable losses: ``LOSSES[name](**opts) -> nn.Module`` with ``(pred, target) -> scalar``.

A loss spec is per target and weighted, straight from YAML::

    loss: {mask: {dice: 1.0, bce: {weight: 0.5, pos_weight: 2.0}}, depth: {l1: 0.16, ms_ssim: 0.84}}

Mask losses (bce, ce, dice, focal, jaccard) take logits (``from_logits: true``, the default) or
probabilities; regression losses (l1, mse, ssim, ms_ssim) take values in [0, 1].
:func:`build_loss` turns a spec into a :class:`CompositeLoss` whose ``forward(outputs, batch)``
returns ``(total, parts)`` with parts named ``<target>/<loss>`` (logged as
``train/loss/<target>/<loss>``). On a target output as logits (``mask``) a loss not ``from_logits``
gets ``sigmoid(logits)`` (``mask: {mse: 1}``: MSE of probabilities); all run in float32, autocast off.

Several classes (:mod:`sandbox.data.classes`): on K > 1 logits ``(B, K, H, W)`` the target is a class
map ``(B, 1, H, W)`` of ids (softmax; id -1 unlabelled, left out) or, multi-label, ``(B, K, H, W)`` in
{0, 1} (independent sigmoids). ``ce`` is cross-entropy (class weights, ignore_index, label smoothing),
``dice``/``jaccard`` become soft per-class scores averaged over the classes present in each image,
``focal`` the multi-class focal loss. With K = 1 every loss computes exactly what it did before.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim, ssim
from torch import nn

from sandbox.errors import ConfigError, SandboxError
from sandbox.metrics.regression import ssim_window
from sandbox.registry import Registry

LOSSES: Registry = Registry("loss")


class _Float32Loss(nn.Module):
    """Base: ``forward`` casts both inputs to float32 and runs ``compute`` with autocast off
    (casting alone is not enough: autocast would run SSIM's convolutions in bf16 again)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return self.compute(pred.float(), target.float())

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _probs(pred: torch.Tensor, from_logits: bool) -> torch.Tensor:
    return torch.sigmoid(pred) if from_logits else pred


def _classes(pred: torch.Tensor, target: torch.Tensor, from_logits: bool, ignore_index: int = -1):
    """K > 1 outputs against a class map: ``(probs (B, K, H, W), one-hot (B, K, H, W), valid (B, 1, H, W))``.

    A ``(B, 1, H, W)`` target holds ids (softmax; pixels equal to ``ignore_index`` are not valid); a
    ``(B, K, H, W)`` target is multi-label (sigmoid per channel, every pixel valid)."""
    if target.shape[1] == pred.shape[1]:  # multi-label: one binary channel per class
        return _probs(pred, from_logits), target, torch.ones_like(target[:, :1])
    if target.shape[1] != 1:
        raise SandboxError(f"a {pred.shape[1]}-class output against a target of {target.shape[1]} channels; "
                           "expected a class map of 1 channel (ids) or one channel per class (multi-label)")
    ids = _ids(target, pred.shape[1], ignore_index)
    valid = (ids != ignore_index).unsqueeze(1)
    onehot = F.one_hot(ids.clamp(0, pred.shape[1] - 1), pred.shape[1]).permute(0, 3, 1, 2).float() * valid
    probs = torch.softmax(pred, 1) if from_logits else pred
    return probs * valid, onehot, valid


def _ids(target: torch.Tensor, k: int, ignore_index: int) -> torch.Tensor:
    """``(B, 1, H, W)`` float ids -> ``(B, H, W)`` long, every labelled id in ``0..k-1`` (else one line)."""
    ids = target[:, 0].long()
    labelled = ids != ignore_index
    if ((ids < 0) | (ids >= k))[labelled].any():
        raise SandboxError(f"class ids outside 0..{k - 1} in the target of a {k}-class output "
                           f"(unlabelled pixels are {ignore_index}); expected ids of data.classes")
    return ids


def _per_class_mean(score: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` scores -> one value: per image the mean over its present classes, then over images
    (images with no labelled pixel left out; every image absent: the mean over all, never NaN)."""
    n = present.sum(1)
    per_image = (score * present).sum(1) / n.clamp_min(1)
    has = n > 0
    return per_image[has].mean() if has.any() else score.mean()


@LOSSES.register("bce")
class BCELoss(_Float32Loss):
    """Binary cross-entropy on logits (``from_logits=True``) or probabilities.

    ``pred, target: (B, 1, H, W)``, target in {0, 1} -> mean over pixels. Uses the
    log-sum-exp form, safe under autocast (never Sigmoid + BCELoss).
    """

    def __init__(self, from_logits: bool = True, pos_weight: float | None = None):
        super().__init__()
        if pos_weight is not None and not from_logits:
            raise ConfigError("loss bce: pos_weight needs from_logits: true")
        self.from_logits, self.pos_weight = from_logits, pos_weight

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=pred.device)
            return F.binary_cross_entropy_with_logits(pred, target, pos_weight=pw)
        return F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target)


@LOSSES.register("ce")
class CrossEntropyLoss(_Float32Loss):
    """Cross-entropy over classes, mean over labelled pixels; logits only.

    K > 1 logits ``(B, K, H, W)`` against ids ``(B, 1, H, W)``: softmax cross-entropy, pixels whose
    id is ``ignore_index`` (the sandbox's -1 by default) left out; ``class_weights`` (K values) weigh
    each pixel by its true class (normalised by the weights of the labelled pixels, as torch does);
    ``label_smoothing`` e spreads e over the K classes (target ``(1 - e) onehot + e / K``). A
    multi-label target ``(B, K, H, W)`` gets binary cross-entropy per channel. K = 1 (a binary mask)
    is the two-class case: binary cross-entropy of the one logit, ``class_weights`` then being
    ``[background, foreground]`` and the smoothed target ``(1 - e) t + e / 2``.
    """

    from_logits = True

    def __init__(self, class_weights: list[float] | None = None, ignore_index: int = -1,
                 label_smoothing: float = 0.0):
        super().__init__()
        if class_weights is not None and (not isinstance(class_weights, (list, tuple)) or not class_weights or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in class_weights)):
            raise ConfigError(f"loss ce: class_weights got {class_weights!r}, expected a list of non-negative "
                              "numbers, one per class in id order")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"loss ce: label_smoothing got {label_smoothing!r}, expected a value in [0, 1)")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"loss ce: ignore_index got {ignore_index!r}, expected an integer class id")
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ignore_index, self.label_smoothing = ignore_index, float(label_smoothing)

    def _weights(self, k: int, device) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        if len(self.class_weights) != max(k, 2):  # a binary mask is two classes: [background, foreground]
            raise SandboxError(f"loss ce: {len(self.class_weights)} class_weights for {max(k, 2)} classes; "
                               "expected one weight per class in id order")
        return torch.tensor(self.class_weights, device=device)

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k, e = pred.shape[1], self.label_smoothing
        w = self._weights(k, pred.device)
        if k > 1 and target.shape[1] == 1:
            return F.cross_entropy(pred, _ids(target, k, self.ignore_index), weight=w, ignore_index=self.ignore_index,
                                   label_smoothing=e)
        smoothed = target * (1 - e) + e / 2  # binary or multi-label: each channel its own two classes
        if w is None:
            return F.binary_cross_entropy_with_logits(pred, smoothed)
        # weights by channel (multi-label) or by the pixel's true class (binary), normalised as torch's CE
        pixel_w = w.view(1, k, 1, 1).expand_as(pred) if k > 1 else w[1] * target + w[0] * (1 - target)
        loss = F.binary_cross_entropy_with_logits(pred, smoothed, weight=pixel_w, reduction="sum")
        return loss / pixel_w.sum().clamp_min(torch.finfo(loss.dtype).tiny)


@LOSSES.register("focal")
class FocalLoss(_Float32Loss):
    """Binary focal loss ``mean(-a_t (1 - p_t)^gamma log p_t)`` (Lin et al. 2017).

    ``pred, target: (B, 1, H, W)``; ``p_t = p`` on foreground, ``1 - p`` on background;
    ``a_t = alpha`` on foreground, ``1 - alpha`` on background, or 1 when ``alpha`` is None
    (the default, as in segmentation_models_pytorch; torchvision uses 0.25). ``gamma=0,
    alpha=None`` is exactly BCE; larger ``gamma`` down-weights pixels already right.
    """

    def __init__(self, from_logits: bool = True, alpha: float | None = None, gamma: float = 2.0):
        super().__init__()
        if alpha is not None and not 0 <= alpha <= 1:
            raise ConfigError(f"loss focal: alpha got {alpha!r}, expected a value in [0, 1] or null")
        if gamma < 0:
            raise ConfigError(f"loss focal: gamma got {gamma!r}, expected a non-negative number")
        self.from_logits, self.alpha, self.gamma = from_logits, alpha, gamma

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] > 1 and target.shape[1] == 1:  # class ids: the softmax focal loss
            return self._classes(pred, target)
        if self.from_logits:
            ce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        else:
            ce = F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target, reduction="none")
        p = _probs(pred, self.from_logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t).pow(self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return loss.mean()

    def _classes(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``mean over labelled pixels of -(1 - p_t)^gamma log p_t``, ``p_t`` the softmax probability of the
        true class (``alpha``, a foreground weight, has no meaning here: use ce's class_weights for that)."""
        if self.alpha is not None:
            raise SandboxError("loss focal: alpha weighs a binary mask's foreground; with several classes leave "
                               "it null (class weights: loss ce)")
        probs, onehot, valid = _classes(pred, target, self.from_logits)
        p_t = (probs * onehot).sum(1, keepdim=True).clamp_min(1e-6)
        loss = -(1 - p_t).pow(self.gamma) * p_t.log() * valid
        return loss.sum() / valid.sum().clamp_min(1)


@LOSSES.register("dice")
class DiceLoss(_Float32Loss):
    """Soft Dice loss, averaged over images: ``1 - mean_b (2·Σ p·t + s) / (Σ p + Σ t + s)``.

    ``pred, target: (B, 1, H, W)``; ``p = sigmoid(pred)`` when ``from_logits``. The sums
    run over each image's pixels, so every image weighs the same whatever its mask area.

    Convention for empty targets (``Σ t = 0``): with the additive smoothing ``s`` (default
    1, in pixels) the image's Dice is ``s / (Σ p + s)``, so predicting nothing scores 1
    (loss 0) and any predicted foreground is penalised, approaching loss 1 as ``Σ p``
    grows. An empty target is never ignored.
    """

    def __init__(self, from_logits: bool = True, smooth: float = 1.0):
        super().__init__()
        self.from_logits, self.smooth = from_logits, smooth

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] > 1:
            return 1 - self._classes(pred, target)
        p, t = _probs(pred, self.from_logits), target
        dims = tuple(range(1, p.ndim))
        inter = (p * t).sum(dims)
        dice = (2 * inter + self.smooth) / (p.sum(dims) + t.sum(dims) + self.smooth)
        return 1 - dice.mean()

    def _classes(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """K classes: per image and class ``(2 I + s) / (P + T + s)`` over the labelled pixels, averaged over
        the classes present in the image's target (``T > 0``), then over images."""
        p, t, _ = _classes(pred, target, self.from_logits)
        inter, ps, ts = (p * t).sum((2, 3)), p.sum((2, 3)), t.sum((2, 3))
        return _per_class_mean(self.score(inter, ps, ts), ts > 0)

    def score(self, inter: torch.Tensor, ps: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return (2 * inter + self.smooth) / (ps + ts + self.smooth)


@LOSSES.register("jaccard")
class JaccardLoss(DiceLoss):
    """Soft IoU (Jaccard) loss, averaged over images: ``1 - mean_b (I + s) / (Σ p + Σ t - I + s)``
    with ``I = Σ p·t``. ``pred, target: (B, 1, H, W)``.

    Same empty-target convention as :class:`DiceLoss`: with ``Σ t = 0`` the image's IoU is
    ``s / (Σ p + s)``, so predicting nothing is loss 0 and predicted foreground is penalised.
    """

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] > 1:
            return 1 - self._classes(pred, target)
        p, t = _probs(pred, self.from_logits), target
        dims = tuple(range(1, p.ndim))
        inter = (p * t).sum(dims)
        iou = (inter + self.smooth) / (p.sum(dims) + t.sum(dims) - inter + self.smooth)
        return 1 - iou.mean()

    def score(self, inter: torch.Tensor, ps: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return (inter + self.smooth) / (ps + ts - inter + self.smooth)


@LOSSES.register("l1")
class L1Loss(_Float32Loss):
    """Mean absolute error. ``pred, target: (B, K, H, W)`` values (depth in [0, 1])."""

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred, target)


@LOSSES.register("mse")
class MSELoss(_Float32Loss):
    """Mean squared error. ``pred, target: (B, K, H, W)`` values (depth in [0, 1])."""

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


def _check_window(name: str, win_size: Any, data_range: Any) -> None:
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ConfigError(f"loss {name}: win_size got {win_size!r}, expected an odd integer >= 3")
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or data_range <= 0:
        raise ConfigError(f"loss {name}: data_range got {data_range!r}, expected a positive number")


@LOSSES.register("ssim")
class SSIMLoss(_Float32Loss):
    """``1 - SSIM(pred, target)`` (pytorch-msssim, Gaussian window, sigma 1.5), mean over images.

    ``pred, target: (B, K, H, W)`` values in ``[0, data_range]``. A window larger than the
    image shrinks by the rule of :func:`sandbox.metrics.ssim_window`.
    """

    def __init__(self, data_range: float = 1.0, win_size: int = 11):
        super().__init__()
        _check_window("ssim", win_size, data_range)
        self.data_range, self.win_size = float(data_range), win_size

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        win = ssim_window(self.win_size, min(pred.shape[-2:]), "loss ssim")
        return 1 - ssim(pred, target, data_range=self.data_range, win_size=win)


@LOSSES.register("ms_ssim")
class MSSSIMLoss(_Float32Loss):
    """``1 - MS-SSIM(pred, target)`` (pytorch-msssim), mean over images.

    ``pred, target: (B, K, H, W)`` values in ``[0, data_range]``; ``weights``: per-scale
    exponents, finest first (default pytorch-msssim's 5 scales). A side must exceed ``(win_size - 1)
    * 16``: the window shrinks by :func:`sandbox.metrics.ssim_window` (7 at 128 px, 3 at 64 px); sides
    <= 32 px raise a SandboxError.
    """

    def __init__(self, data_range: float = 1.0, win_size: int = 11, weights: list[float] | None = None):
        super().__init__()
        _check_window("ms_ssim", win_size, data_range)
        if weights is not None and (not isinstance(weights, (list, tuple)) or not weights or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in weights)):
            raise ConfigError(f"loss ms_ssim: weights got {weights!r}, expected a non-empty list of "
                              "non-negative numbers, one per scale (finest first)")
        self.data_range, self.win_size = float(data_range), win_size
        self.weights = None if weights is None else [float(w) for w in weights]

    def compute(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        levels = len(self.weights) if self.weights is not None else 5  # pytorch-msssim's default scales
        win = ssim_window(self.win_size, min(pred.shape[-2:]), "loss ms_ssim", levels)
        return 1 - ms_ssim(pred, target, data_range=self.data_range, win_size=win, weights=self.weights)


class CompositeLoss(nn.Module):
    """Weighted sum of losses per target, optionally with an adaptive balance between two targets.

    ``forward(outputs: {target: (B, K, H, W)}, batch: {target: (B, K, H, W)}) -> (total, parts)``
    with ``parts = {"mask/dice": unweighted value, ...}`` (detached).

    ``balance = {"scale": "depth", "to": "mask", "min": 0.1, "max": 10.0}``: every step the
    weighted sum of ``scale``'s terms is multiplied by ``clamp(L_to / L_scale, min, max)``,
    a ratio of detached values (a per-step weight, not a gradient path), so the two targets
    pull with comparable strength; the factor is returned as ``parts["balance/<scale>"]``.
    ``logit_targets`` (the model's, ``ModelSpec.logit_targets``): on those, every loss but a
    ``from_logits=True`` one gets ``sigmoid(output)``; the one place that knows both sides.
    """

    def __init__(self, terms: dict[str, dict[str, tuple[float, nn.Module]]], balance: dict | None = None,
                 logit_targets: tuple[str, ...] = ()):
        super().__init__()
        self.logit_targets = tuple(logit_targets)
        self.weights = {t: {n: w for n, (w, _) in losses.items()} for t, losses in terms.items()}
        self.losses = nn.ModuleDict(
            {t: nn.ModuleDict({n: m for n, (_, m) in losses.items()}) for t, losses in terms.items()})
        self.balance = None if balance is None else dict(balance)

    @property
    def targets(self) -> list[str]:
        return list(self.weights)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]):
        per_target: dict[str, torch.Tensor] = {}
        parts: dict[str, torch.Tensor] = {}
        for target, losses in self.losses.items():
            for name, fn in losses.items():
                pred = outputs[target]
                if target in self.logit_targets and not getattr(fn, "from_logits", False):
                    # a loss of probabilities on a logit head: softmax over the classes of a class map
                    classes = pred.shape[1] > 1 and batch[target].shape[1] == 1
                    pred = torch.softmax(pred.float(), 1) if classes else torch.sigmoid(pred.float())
                value = fn(pred, batch[target])
                parts[f"{target}/{name}"] = value.detach()
                term = self.weights[target][name] * value
                per_target[target] = term if target not in per_target else per_target[target] + term
        if self.balance is not None:
            b = self.balance
            scale, ref = per_target[b["scale"]].detach(), per_target[b["to"]].detach()
            # tiny floor: a zero loss to rescale gives the max factor, never inf/NaN in the logs
            factor = (ref / scale.clamp_min(torch.finfo(scale.dtype).tiny)).clamp(b["min"], b["max"])
            per_target[b["scale"]] = per_target[b["scale"]] * factor
            parts[f"balance/{b['scale']}"] = factor
        return sum(per_target.values()), parts


def _check_balance(balance: dict, targets: list[str]) -> dict:
    keys = ("scale", "to", "min", "max")
    unknown = sorted(set(balance) - set(keys))
    if unknown:
        raise ConfigError(f"loss_balance: unknown key(s) {unknown}; accepted keys: {', '.join(keys)}")
    b = {"min": 0.1, "max": 10.0, **balance}
    for key in ("scale", "to"):
        if key not in b or b[key] not in targets:
            raise ConfigError(f"loss_balance.{key}: got {b.get(key)!r}, expected a loss target: {', '.join(targets)}")
    if b["scale"] == b["to"]:
        raise ConfigError(f"loss_balance.to: got {b['to']!r}, the same target as loss_balance.scale; "
                          f"expected another loss target: {', '.join(t for t in targets if t != b['scale'])}")
    for key in ("min", "max"):
        if isinstance(b[key], bool) or not isinstance(b[key], (int, float)) or b[key] <= 0:
            raise ConfigError(f"loss_balance.{key}: got {b[key]!r}, expected a positive number")
    if b["min"] > b["max"]:
        raise ConfigError(f"loss_balance.min: got {b['min']!r} > loss_balance.max {b['max']!r}; expected min <= max")
    return {**b, "min": float(b["min"]), "max": float(b["max"])}


def build_loss(spec: dict[str, dict[str, Any]], balance: dict | None = None,
               logit_targets: tuple[str, ...] = ()) -> CompositeLoss:
    """``{"mask": {"dice": 1.0, "bce": {"weight": 0.5, "pos_weight": 2}}}`` -> CompositeLoss.

    ``balance``: None or ``{"scale": target, "to": target, "min": 0.1, "max": 10.0}``; both
    targets must be in ``spec``. ``logit_targets``: see :class:`CompositeLoss`.
    """
    terms: dict[str, dict[str, tuple[float, nn.Module]]] = {}
    for target, losses in spec.items():
        terms[target] = {}
        for name, s in losses.items():
            where = f"loss.{target}.{name}"
            opts = dict(s) if isinstance(s, dict) else {"weight": s}
            weight = float(opts.pop("weight", 1.0))
            cls = LOSSES[name]
            try:
                module = cls(**opts)
            except TypeError as exc:
                raise ConfigError(f"{where}: bad option(s) {sorted(opts)} ({exc})") from None
            except ConfigError as exc:  # an option's value: name the YAML key
                raise ConfigError(f"{where}: {str(exc).removeprefix(f'loss {name}: ')}") from None
            terms[target][name] = (weight, module)
    if balance is not None:
        balance = _check_balance(balance, list(spec))
    return CompositeLoss(terms, balance, logit_targets)
