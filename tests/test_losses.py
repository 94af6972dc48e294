import math

import pytest
import torch

from sandbox.errors import SandboxError
from sandbox.losses import LOSSES, build_loss
from sandbox.metrics import dice_per_image, iou_per_image


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


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_scalar_with_gradient(name):
    torch.manual_seed(0)
    pred = torch.randn(2, 1, 32, 32, requires_grad=True)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss = LOSSES[name]()(pred, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


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
