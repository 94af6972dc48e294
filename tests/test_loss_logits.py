"""Losses of probabilities on a logit head: ``loss.mask={mse|l1|ssim|ms_ssim: 1}`` scores
``sigmoid(logits)`` against the binary mask (it silently scored the raw logits), while the
``from_logits`` mask losses still get the logits and a regression target (depth, already in
[0, 1]) is untouched. Every expected value here is computed in the test, in float64, without
the loss modules."""
import pytest
import torch
import torch.nn.functional as F

from sandbox import load_config
from sandbox.build import build_loss as build_loss_for
from sandbox.losses import LOSSES, build_loss
from tests.conftest import ROOT

C1, C2 = 0.01 ** 2, 0.03 ** 2  # SSIM's constants at data_range 1 (Wang et al. 2004)
MS_SSIM_COARSEST = 0.1333  # pytorch-msssim's default exponent of the coarsest scale (the luminance term's)


def reference_ssim(x: torch.Tensor, y: torch.Tensor, win: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM with a Gaussian window, valid convolution, data range 1: the textbook formula."""
    x, y = x.double(), y.double()
    g = torch.exp(-(torch.arange(win, dtype=torch.float64) - win // 2) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    blur = lambda z: F.conv2d(z, (g[:, None] * g[None, :])[None, None])  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))
    return float(s.mean())


def logits_and_mask(size: int = 32, seed: int = 0):
    """Logits of a fair model: the mask's sign at +-3 plus unit noise, so SSIM(sigmoid(L), T) is high."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(2, 1, size, size, generator=g) > 0.5).float()
    return 3 * (2 * mask - 1) + torch.randn(2, 1, size, size, generator=g), mask


def constant_case(size: int):
    """Logits 0 everywhere (sigmoid exactly 0.5) against an all-ones mask: SSIM has a closed form,
    ``(2 p t + C1) / (p^2 + t^2 + C1)`` (no variance, the contrast-structure term is C2 / C2 = 1)."""
    p = 0.5
    return torch.zeros(1, 1, size, size), torch.ones(1, 1, size, size), (2 * p + C1) / (p * p + 1 + C1)


def mask_loss(spec: dict) -> torch.nn.Module:
    """The composite a unet run builds from ``loss.mask=spec`` (the config path, model spec included)."""
    return build_loss_for(load_config(ROOT / "configs/unet_dice.yaml", [f"loss={{mask: {spec}}}"]))


def test_the_model_spec_says_which_outputs_are_logits():
    assert mask_loss({"mse": 1.0}).logit_targets == ("mask", "parts")  # a segmentation net's targets are logits
    ae = load_config(ROOT / "configs/ae_attractors.yaml")
    assert build_loss_for(ae).logit_targets == ()  # reconstructions come out in [0, 1]


def test_mse_and_l1_on_the_mask_score_the_probabilities():
    L, T = logits_and_mask()
    _, parts = mask_loss({"mse": 1.0, "l1": 1.0})({"mask": L}, {"mask": T})
    p = torch.sigmoid(L.double())
    assert parts["mask/mse"].item() == pytest.approx(float(((p - T) ** 2).mean()), rel=1e-6)
    assert parts["mask/l1"].item() == pytest.approx(float((p - T).abs().mean()), rel=1e-6)
    on_logits = float(((L.double() - T) ** 2).mean())  # what it computed before: ~9, not ~0.2
    assert abs(parts["mask/mse"].item() - on_logits) > 1.0


def test_ssim_on_the_mask_scores_the_probabilities():
    L, T = logits_and_mask()
    _, parts = mask_loss({"ssim": 1.0})({"mask": L}, {"mask": T})
    expected = 1 - reference_ssim(torch.sigmoid(L.double()), T)
    assert parts["mask/ssim"].item() == pytest.approx(expected, abs=1e-5)
    assert abs(parts["mask/ssim"].item() - (1 - reference_ssim(L, T))) > 0.05
    zeros, ones, ssim_closed = constant_case(32)
    _, parts = mask_loss({"ssim": 1.0})({"mask": zeros}, {"mask": ones})
    assert parts["mask/ssim"].item() == pytest.approx(1 - ssim_closed, abs=1e-5)  # 0.19998; on logits: 0.9999


def test_ms_ssim_on_the_mask_scores_the_probabilities():
    # constant images: every scale's contrast-structure term is 1, so MS-SSIM is the coarsest
    # scale's SSIM (its luminance term) to that scale's exponent
    zeros, ones, ssim_closed = constant_case(64)
    _, parts = mask_loss({"ms_ssim": 1.0})({"mask": zeros}, {"mask": ones})
    assert parts["mask/ms_ssim"].item() == pytest.approx(1 - ssim_closed ** MS_SSIM_COARSEST, abs=1e-5)  # on logits: 0.71
    L, T = logits_and_mask(64)
    _, parts = mask_loss({"ms_ssim": 1.0})({"mask": L}, {"mask": T})
    assert parts["mask/ms_ssim"].item() == pytest.approx(LOSSES["ms_ssim"]()(torch.sigmoid(L), T).item(), abs=1e-6)
    assert abs(parts["mask/ms_ssim"].item() - LOSSES["ms_ssim"]()(L, T).item()) > 0.05


def test_from_logits_losses_on_the_mask_still_get_the_logits():
    L, T = logits_and_mask()
    _, parts = mask_loss({"bce": 1.0, "dice": {"weight": 1.0, "from_logits": False}})({"mask": L}, {"mask": T})
    assert parts["mask/bce"].item() == pytest.approx(F.binary_cross_entropy_with_logits(L, T).item(), rel=1e-6)
    p = torch.sigmoid(L.double())  # dice set to probabilities: handed the probabilities, not the logits
    dice = (2 * (p * T).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + T.sum((1, 2, 3)) + 1)
    assert parts["mask/dice"].item() == pytest.approx(1 - float(dice.mean()), rel=1e-6)


def test_depth_a_regression_target_in_0_1_is_unchanged():
    g = torch.Generator().manual_seed(1)
    D, T = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    L, M = logits_and_mask()
    comp = build_loss({"mask": {"mse": 1.0}, "depth": {"mse": 1.0, "l1": 1.0, "ssim": 1.0}}, logit_targets=("mask",))
    _, parts = comp({"mask": L, "depth": D}, {"mask": M, "depth": T})
    d = D.double()
    assert parts["depth/mse"].item() == pytest.approx(float(((d - T) ** 2).mean()), rel=1e-6)
    assert parts["depth/l1"].item() == pytest.approx(float((d - T).abs().mean()), rel=1e-6)
    assert parts["depth/ssim"].item() == pytest.approx(1 - reference_ssim(D, T), abs=1e-5)
    assert parts["mask/mse"].item() == pytest.approx(float(((torch.sigmoid(L.double()) - M) ** 2).mean()), rel=1e-6)
