import logging
import math

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F

import sandbox.metrics.regression

from sandbox.errors import ConfigError, SandboxError
from sandbox.losses import LOSSES, build_loss
from sandbox.metrics import dice_per_image, iou_per_image, ssim_window


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def logit(p):
    return torch.log(torch.tensor(p) / (1 - torch.tensor(p)))


def test_dice_hand_computed():
    # probabilities p = [0.8, 0.2, 0.6, 0.4], target t = [1, 0, 1, 0]
    p = torch.tensor([0.8, 0.2, 0.6, 0.4]).view(1, 1, 2, 2)
    t = torch.tensor([1.0, 0, 1, 0]).view(1, 1, 2, 2)
    # 2*sum(pt) = 2*1.4 = 2.8; sum p + sum t = 2 + 2 = 4; smooth 1 -> (2.8+1)/(4+1) = 0.76
    loss = LOSSES["dice"](from_logits=False)(p, t)
    assert loss.item() == pytest.approx(1 - 3.8 / 5.0, abs=1e-6)
    loss_logits = LOSSES["dice"]()(torch.logit(p), t)
    assert loss_logits.item() == pytest.approx(1 - 3.8 / 5.0, abs=1e-5)


def test_dice_empty_target_penalises_foreground():
    t = torch.zeros(1, 1, 4, 4)
    dice = LOSSES["dice"](from_logits=False)
    assert dice(torch.zeros(1, 1, 4, 4), t).item() == pytest.approx(0.0)  # nothing predicted: perfect
    # sum p = 16 * 0.5 = 8 -> dice = 1 / (8 + 1), loss = 8/9
    assert dice(torch.full((1, 1, 4, 4), 0.5), t).item() == pytest.approx(8 / 9, abs=1e-6)
    assert dice(torch.ones(1, 1, 4, 4), t).item() > dice(torch.full((1, 1, 4, 4), 0.1), t).item() > 0


def test_dice_is_mean_over_images():
    p = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    t = torch.stack([torch.ones(1, 2, 2), torch.ones(1, 2, 2)])
    # image 0: (8+1)/(8+1) = 1; image 1: 1/(4+1) = 0.2 -> mean 0.6
    assert LOSSES["dice"](from_logits=False)(p, t).item() == pytest.approx(1 - 0.6, abs=1e-6)


def test_bce_hand_computed():
    p, t = [0.9, 0.3], [1.0, 0.0]
    expected = -(math.log(0.9) + math.log(0.7)) / 2
    x = logit(p).view(1, 1, 1, 2)
    y = torch.tensor(t).view(1, 1, 1, 2)
    assert LOSSES["bce"]()(x, y).item() == pytest.approx(expected, abs=1e-5)
    assert LOSSES["bce"](from_logits=False)(torch.tensor(p).view(1, 1, 1, 2), y).item() == pytest.approx(expected, abs=1e-5)
    # empty target: every predicted foreground pixel costs -log(1 - p)
    z = torch.zeros(1, 1, 1, 2)
    assert LOSSES["bce"]()(logit([0.5, 0.5]).view(1, 1, 1, 2), z).item() == pytest.approx(math.log(2), abs=1e-5)


def test_bce_pos_weight():
    x, y = logit([0.9]).view(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    assert LOSSES["bce"](pos_weight=3.0)(x, y).item() == pytest.approx(-3 * math.log(0.9), abs=1e-5)


def make_inputs(module, size, batch=2, seed=0):
    """Logits + binary mask for a loss with ``from_logits=True``, else [0, 1] values + a smooth [0, 1] map."""
    g = torch.Generator().manual_seed(seed)
    if getattr(module, "from_logits", False):
        pred = torch.randn(batch, 1, size, size, generator=g).requires_grad_()
        return pred, pred, (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    target = F.avg_pool2d(torch.rand(batch, 1, size + 4, size + 4, generator=g), 5, stride=1)  # smooth, like depth
    raw = (torch.logit(target) + 0.5 * torch.randn(target.shape, generator=g)).requires_grad_()
    return raw, torch.sigmoid(raw), target


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_scalar_with_gradient(name, size):
    module = LOSSES[name]()
    leaf, pred, target = make_inputs(module, size)
    if name == "ms_ssim" and size <= 32:  # pytorch-msssim would assert; ours names the loss and sizes
        with pytest.raises(SandboxError, match=r"loss ms_ssim: images of side 32 px .* at least 33 px"):
            module(pred, target)
        return
    loss = module(pred, target)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_float32_under_bf16_autocast(name):
    module = LOSSES[name]()
    _, pred, target = make_inputs(module, 64)
    pred = pred.detach().bfloat16()  # what a head returns under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(pred, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(module(pred.float(), target).item(), rel=1e-6, abs=1e-7)


def test_composite_is_weighted_sum_of_parts():
    torch.manual_seed(0)
    comp = build_loss({"mask": {"dice": 1.0, "bce": {"weight": 0.5, "pos_weight": 2.0}}})
    pred = {"mask": torch.randn(2, 1, 8, 8)}
    batch = {"mask": (torch.rand(2, 1, 8, 8) > 0.5).float()}
    total, parts = comp(pred, batch)
    assert set(parts) == {"mask/dice", "mask/bce"}
    assert total.item() == pytest.approx(parts["mask/dice"].item() + 0.5 * parts["mask/bce"].item(), abs=1e-6)
    assert parts["mask/dice"].item() == pytest.approx(LOSSES["dice"]()(pred["mask"], batch["mask"]).item())


def test_bad_loss_option_is_clear():
    with pytest.raises(SandboxError, match=r"loss.mask.dice: bad option"):
        build_loss({"mask": {"dice": {"weight": 1.0, "smoth": 1}}})


def test_hard_metrics_hand_computed():
    logits = torch.tensor([5.0, 5, -5, -5]).view(1, 1, 2, 2)  # predicts [1, 1, 0, 0]
    t = torch.tensor([1.0, 0, 1, 0]).view(1, 1, 2, 2)
    assert dice_per_image(logits, t).item() == pytest.approx(0.5)  # 2*1 / (2 + 2)
    assert iou_per_image(logits, t).item() == pytest.approx(1 / 3)
    empty = torch.zeros(1, 1, 2, 2)
    assert dice_per_image(torch.full((1, 1, 2, 2), -5.0), empty).item() == 1.0  # both empty: perfect
    assert dice_per_image(logits, empty).item() == 0.0  # foreground on an empty target


# ----------------------------------------------------------------------------- focal, jaccard


def test_focal_gamma0_no_alpha_is_bce():
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    focal = LOSSES["focal"](gamma=0.0, alpha=None)
    assert focal(x, t).item() == pytest.approx(LOSSES["bce"]()(x, t).item(), abs=1e-6)
    p = torch.sigmoid(x)
    assert LOSSES["focal"](from_logits=False, gamma=0.0)(p, t).item() == pytest.approx(
        LOSSES["bce"](from_logits=False)(p, t).item(), abs=1e-5)


def test_focal_hand_computed():
    # p = [0.9, 0.3], t = [1, 0] -> p_t = [0.9, 0.7]; gamma 2, alpha 0.25 -> a_t = [0.25, 0.75]
    x, t = logit([0.9, 0.3]).view(1, 1, 1, 2), torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = -(0.25 * 0.1**2 * math.log(0.9) + 0.75 * 0.3**2 * math.log(0.7)) / 2
    assert LOSSES["focal"](alpha=0.25, gamma=2.0)(x, t).item() == pytest.approx(expected, rel=1e-5)


def test_jaccard_hand_computed():
    p = torch.tensor([0.8, 0.2, 0.6, 0.4]).view(1, 1, 2, 2)
    t = torch.tensor([1.0, 0, 1, 0]).view(1, 1, 2, 2)
    # I = 1.4, sum p = 2, sum t = 2 -> (1.4 + 1) / (2 + 2 - 1.4 + 1) = 2.4 / 3.6
    assert LOSSES["jaccard"](from_logits=False)(p, t).item() == pytest.approx(1 - 2.4 / 3.6, abs=1e-6)
    assert LOSSES["jaccard"]()(torch.logit(p), t).item() == pytest.approx(1 - 2.4 / 3.6, abs=1e-5)
    empty, jac = torch.zeros(1, 1, 4, 4), LOSSES["jaccard"](from_logits=False)
    assert jac(torch.zeros(1, 1, 4, 4), empty).item() == pytest.approx(0.0)  # nothing predicted: perfect
    # sum p = 8 -> IoU = 1 / (8 + 1): predicted foreground on an empty target is penalised
    assert jac(torch.full((1, 1, 4, 4), 0.5), empty).item() == pytest.approx(8 / 9, abs=1e-6)


def test_focal_bad_option_names_the_key():
    with pytest.raises(ConfigError, match=r"^loss.mask.focal: alpha got 2.0, expected a value in \[0, 1\]"):
        build_loss({"mask": {"focal": {"alpha": 2.0}}})


# ----------------------------------------------------------------------------- ssim, ms_ssim


@pytest.mark.parametrize("size", [64, 128])
def test_ssim_matches_pytorch_msssim(size):
    x, y = torch.rand(2, 1, size, size), torch.rand(2, 1, size, size)
    expected = 1 - pytorch_msssim.ssim(x, y, data_range=1.0, win_size=11)
    assert LOSSES["ssim"]()(x, y).item() == pytest.approx(expected.item(), abs=1e-6)
    assert LOSSES["ssim"](data_range=255.0, win_size=7)(255 * x, 255 * y).item() == pytest.approx(
        1 - pytorch_msssim.ssim(255 * x, 255 * y, data_range=255.0, win_size=7).item(), abs=1e-5)


@pytest.mark.parametrize("size", [64, 128])
def test_ms_ssim_of_identical_images_is_zero(size):
    x = F.avg_pool2d(torch.rand(2, 1, size + 4, size + 4), 5, stride=1)
    assert LOSSES["ms_ssim"]()(x, x).item() == pytest.approx(0.0, abs=1e-5)


def test_ms_ssim_matches_pytorch_msssim_with_adapted_window(caplog, monkeypatch):
    monkeypatch.setattr(sandbox.metrics.regression, "_ADAPTED", set())  # forget what earlier tests logged
    x = F.avg_pool2d(torch.rand(2, 1, 132, 132), 5, stride=1)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    with caplog.at_level(logging.INFO, logger="sandbox"):
        loss = LOSSES["ms_ssim"]()(x, y)
        LOSSES["ms_ssim"]()(x, y)
    # 128 px: win 11 needs > 160 px, the largest odd window that fits is 7 ((7 - 1) * 16 = 96 < 128)
    assert loss.item() == pytest.approx(1 - pytorch_msssim.ms_ssim(x, y, data_range=1.0, win_size=7).item(), abs=1e-6)
    adapted = [r for r in caplog.records if "win_size 11" in r.getMessage() and "128 px" in r.getMessage()]
    assert len(adapted) == 1  # logged once, not at every step
    assert "using win_size 7" in adapted[0].getMessage() and adapted[0].name == "sandbox"


def test_ms_ssim_weights_single_scale_is_ssim():
    x = F.avg_pool2d(torch.rand(2, 1, 68, 68), 5, stride=1)
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    # one scale: MS-SSIM = relu(SSIM); the window still follows the 16x rule (3 at 64 px)
    one = LOSSES["ms_ssim"](weights=[1.0])(x, y)
    assert one.item() == pytest.approx(LOSSES["ssim"](win_size=3)(x, y).item(), abs=1e-6)
    w = [0.1, 0.2, 0.3, 0.2, 0.2]
    assert LOSSES["ms_ssim"](weights=w)(x, y).item() == pytest.approx(
        1 - pytorch_msssim.ms_ssim(x, y, data_range=1.0, win_size=3, weights=w).item(), abs=1e-6)


@pytest.mark.parametrize("win, side, levels, expected", [
    (11, 64, 0, 11), (11, 8, 0, 7), (11, 3, 0, 3), (7, 6, 0, 5),
    (11, 161, 5, 11), (11, 160, 5, 9), (11, 128, 5, 7), (11, 64, 5, 3), (11, 33, 5, 3), (3, 64, 5, 3),
    (11, 128, 6, 3), (11, 256, 6, 7), (11, 129, 7, 3),
])
def test_ssim_window_rule(win, side, levels, expected):
    assert ssim_window(win, side, "x", levels) == expected


@pytest.mark.parametrize("side, levels, least", [(32, 5, 33), (2, 0, 3), (64, 7, 129)])
def test_ssim_window_too_small_is_clear(side, levels, least):
    with pytest.raises(SandboxError, match=rf"^x: images of side {side} px .* at least {least} px"):
        ssim_window(11, side, "x", levels)


@pytest.mark.parametrize("opts", [{"win_size": 4}, {"win_size": 1}, {"data_range": 0}, {"weights": []}])
def test_ssim_bad_options_are_clear(opts):
    with pytest.raises(ConfigError, match=r"^loss.depth.ms_ssim: (win_size|data_range|weights) got"):
        build_loss({"depth": {"ms_ssim": {"weight": 1.0, **opts}}})


# ----------------------------------------------------------------------------- mixes and balance


def test_depth_mix_is_weighted_sum_of_parts():
    comp = build_loss({"depth": {"l1": 0.16, "ms_ssim": 0.84}})
    _, pred, target = make_inputs(LOSSES["l1"](), 64)
    total, parts = comp({"depth": pred}, {"depth": target})
    assert set(parts) == {"depth/l1", "depth/ms_ssim"}
    l1 = (pred - target).abs().mean().item()
    ms = 1 - pytorch_msssim.ms_ssim(pred, target, data_range=1.0, win_size=3).item()
    assert parts["depth/l1"].item() == pytest.approx(l1, abs=1e-6)
    assert parts["depth/ms_ssim"].item() == pytest.approx(ms, abs=1e-6)
    assert total.item() == pytest.approx(0.16 * l1 + 0.84 * ms, abs=1e-6)


def two_targets(mask_logit_scale=1.0, depth_noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    logits = mask_logit_scale * (torch.randn(2, 1, 8, 8, generator=g) + 4 * (mask - 0.5))
    depth = torch.rand(2, 1, 8, 8, generator=g)
    pred = (depth + depth_noise * torch.randn(2, 1, 8, 8, generator=g)).requires_grad_()
    return {"mask": logits, "depth": pred}, {"mask": mask, "depth": depth}


BALANCE = {"scale": "depth", "to": "mask", "min": 0.1, "max": 10.0}


def test_balance_factor_is_clamped_ratio_and_a_weight_only():
    comp = build_loss({"mask": {"bce": 1.0}, "depth": {"l1": 0.5, "mse": 2.0}}, balance=BALANCE)
    out, batch = two_targets()
    total, parts = comp(out, batch)
    depth_loss = 0.5 * parts["depth/l1"] + 2.0 * parts["depth/mse"]
    ratio = (parts["mask/bce"] / depth_loss).item()
    assert 0.1 < ratio < 10  # this case is inside the clamp
    assert parts["balance/depth"].item() == pytest.approx(ratio, rel=1e-5)
    assert not parts["balance/depth"].requires_grad
    assert total.item() == pytest.approx(parts["mask/bce"].item() + ratio * depth_loss.item(), rel=1e-5)
    # the factor is detached: d total / d depth = factor * d depth_loss / d depth (not 0, as a live ratio would give)
    total.backward()
    ref = out["depth"].detach().clone().requires_grad_()
    (0.5 * (ref - batch["depth"]).abs().mean() + 2.0 * (ref - batch["depth"]).pow(2).mean()).backward()
    torch.testing.assert_close(out["depth"].grad, ratio * ref.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mask_scale, depth_noise, expected", [(20.0, 1e-4, 10.0), (20.0, 0.0, 10.0), (50.0, 5.0, 0.1)])
def test_balance_factor_stays_in_clamp_for_extreme_ratios(mask_scale, depth_noise, expected):
    comp = build_loss({"mask": {"bce": 1.0}, "depth": {"l1": 1.0}}, balance=BALANCE)
    out, batch = two_targets(mask_scale, depth_noise)
    total, parts = comp(out, batch)
    assert parts["balance/depth"].item() == pytest.approx(expected)
    assert total.item() == pytest.approx(parts["mask/bce"].item() + expected * parts["depth/l1"].item(), rel=1e-5)
    assert torch.isfinite(total)


def test_no_balance_keeps_the_plain_sum():
    comp = build_loss({"mask": {"bce": 1.0}, "depth": {"l1": 3.0}})
    out, batch = two_targets()
    total, parts = comp(out, batch)
    assert "balance/depth" not in parts
    assert total.item() == pytest.approx(parts["mask/bce"].item() + 3 * parts["depth/l1"].item(), rel=1e-6)


@pytest.mark.parametrize("balance, match", [
    ({**BALANCE, "scale": "image"}, r"^loss_balance.scale: got 'image', expected a loss target: mask, depth$"),
    ({**BALANCE, "to": "depht"}, r"^loss_balance.to: got 'depht', expected a loss target: mask, depth$"),
    ({**BALANCE, "to": "depth"}, r"^loss_balance.to: got 'depth', the same target as loss_balance.scale"),
    ({**BALANCE, "min": 0}, r"^loss_balance.min: got 0, expected a positive number"),
    ({**BALANCE, "min": 5.0, "max": 2.0}, r"^loss_balance.min: got 5.0 > loss_balance.max 2.0"),
    ({**BALANCE, "maximum": 2.0}, r"^loss_balance: unknown key\(s\) \['maximum'\]; accepted keys: scale, to, min, max"),
])
def test_bad_balance_is_clear(balance, match):
    with pytest.raises(ConfigError, match=match):
        build_loss({"mask": {"bce": 1.0}, "depth": {"l1": 1.0}}, balance=balance)
