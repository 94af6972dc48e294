"""Several classes (issue 30, parts 1-4): class maps in losses and metrics against hand-computed values
on 2x2 maps, the K = 1 path pinned to the numbers it gave before, the parts target of dancers, and
palette / RGB / index masks read into one class map."""
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

from sandbox import build_trainer, load_config
from sandbox.errors import ConfigError, SandboxError
from sandbox.losses import LOSSES
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT

LN2 = math.log(2)


def ids(rows) -> torch.Tensor:
    """A 2x2 class map as the datasets give it: ``(1, 1, 2, 2)`` float ids, -1 unlabelled."""
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, 2, 2)


def logits_per_pixel(*pixels) -> torch.Tensor:
    """Four pixels' K logits, row-major, -> ``(1, K, 2, 2)``."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, -1, 2, 2)


# ----------------------------------------------------------------------------- losses

def test_cross_entropy_hand_computed_on_a_2x2_map():
    # logits [ln 2, 0, 0] -> softmax [1/2, 1/4, 1/4]; logits [0, ln 3, 0] -> [1/5, 3/5, 1/5]
    a, b = [LN2, 0.0, 0.0], [0.0, math.log(3), 0.0]
    pred = logits_per_pixel(a, b, a, b)
    target = ids([[0, 1], [2, -1]])  # the 4th pixel is unlabelled: left out
    # -ln(1/2) = ln 2, -ln(3/5), -ln(1/4) = 2 ln 2 -> mean over 3 labelled pixels
    plain = (LN2 + math.log(5 / 3) + 2 * LN2) / 3
    assert LOSSES["ce"]()(pred, target).item() == pytest.approx(plain, abs=1e-6)
    # class weights [1, 2, 3]: (1 ln 2 + 2 ln(5/3) + 3 * 2 ln 2) / (1 + 2 + 3)
    weighted = (LN2 + 2 * math.log(5 / 3) + 6 * LN2) / 6
    assert LOSSES["ce"](class_weights=[1, 2, 3])(pred, target).item() == pytest.approx(weighted, abs=1e-6)
    # label smoothing e = 0.3 over K = 3: q = 0.8 on the true class, 0.1 on each other one
    # pixel 1: -(0.8 ln 1/2 + 0.1 ln 1/4 + 0.1 ln 1/4) = 0.8 ln 2 + 0.4 ln 2 = 1.2 ln 2
    # pixel 2: -(0.1 ln 1/5 + 0.8 ln 3/5 + 0.1 ln 1/5) = 0.2 ln 5 + 0.8 ln(5/3)
    # pixel 3: -(0.1 ln 1/2 + 0.1 ln 1/4 + 0.8 ln 1/4) = 0.1 ln 2 + 0.2 ln 2 + 1.6 ln 2 = 1.9 ln 2
    smooth = (1.2 * LN2 + 0.2 * math.log(5) + 0.8 * math.log(5 / 3) + 1.9 * LN2) / 3
    assert LOSSES["ce"](label_smoothing=0.3)(pred, target).item() == pytest.approx(smooth, abs=1e-6)


def test_cross_entropy_of_one_logit_is_bce():
    x, t = torch.randn(2, 1, 4, 4), (torch.rand(2, 1, 4, 4) > 0.5).float()
    assert LOSSES["ce"]()(x, t).item() == pytest.approx(LOSSES["bce"]()(x, t).item(), abs=1e-6)
    # class_weights [background 1, foreground 3] at K = 1: a weighted mean by the true class
    w = 3 * t + (1 - t)
    ref = (torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none") * w).sum() / w.sum()
    assert LOSSES["ce"](class_weights=[1, 3])(x, t).item() == pytest.approx(ref.item(), abs=1e-6)


def test_multiclass_dice_and_jaccard_hand_computed_present_classes_only():
    # probabilities (from_logits=False), K = 3, per pixel [class 0, class 1, class 2]
    probs = logits_per_pixel([0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.3, 0.6, 0.1], [0.9, 0.0, 0.1])
    target = ids([[1, 0], [1, 0]])  # class 2 is absent: left out of the mean
    # class 0: I = 0.6 + 0.9 = 1.5, P = 0.1 + 0.6 + 0.3 + 0.9 = 1.9, T = 2 -> Dice 3.0 / 3.9
    # class 1: I = 0.8 + 0.6 = 1.4, P = 0.8 + 0.2 + 0.6 + 0.0 = 1.6, T = 2 -> Dice 2.8 / 3.6
    dice = (3.0 / 3.9 + 2.8 / 3.6) / 2
    assert LOSSES["dice"](from_logits=False, smooth=0)(probs, target).item() == pytest.approx(1 - dice, abs=1e-6)
    # Jaccard: I / (P + T - I): class 0 1.5 / 2.4, class 1 1.4 / 2.2
    iou = (1.5 / 2.4 + 1.4 / 2.2) / 2
    assert LOSSES["jaccard"](from_logits=False, smooth=0)(probs, target).item() == pytest.approx(1 - iou, abs=1e-6)
    # an unlabelled pixel leaves the sums: pixel 4 (-1) -> class 0: I = 0.6, P = 1.0, T = 1 -> 1.2 / 2.0
    # class 1: I = 1.4, P = 1.6, T = 2 -> 2.8 / 3.6
    partial = (1.2 / 2.0 + 2.8 / 3.6) / 2
    got = LOSSES["dice"](from_logits=False, smooth=0)(probs, ids([[1, 0], [1, -1]])).item()
    assert got == pytest.approx(1 - partial, abs=1e-6)


def test_multiclass_focal_with_gamma_0_is_cross_entropy():
    pred, target = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 1, 5, 5)).float()
    target[0, 0, 0, 0] = -1
    assert LOSSES["focal"](gamma=0.0)(pred, target).item() == pytest.approx(LOSSES["ce"]()(pred, target).item(), abs=1e-5)
    assert LOSSES["focal"](gamma=2.0)(pred, target).item() < LOSSES["ce"]()(pred, target).item()


def test_multilabel_is_per_channel_not_a_second_path():
    """A ``(B, K, H, W)`` target is multi-label: sigmoid per channel, Dice per class; ce is bce per channel."""
    pred, target = torch.randn(2, 3, 4, 4), (torch.rand(2, 3, 4, 4) > 0.5).float()
    assert LOSSES["ce"]()(pred, target).item() == pytest.approx(LOSSES["bce"]()(pred, target).item(), abs=1e-6)
    one = [LOSSES["dice"](smooth=0)(pred[:, c:c + 1], target[:, c:c + 1]).item() for c in range(3)]
    p, t = torch.sigmoid(pred), target
    per = (2 * (p * t).sum((2, 3))) / (p.sum((2, 3)) + t.sum((2, 3)))  # (B, K), every class present here
    assert t.sum((2, 3)).min() > 0
    assert LOSSES["dice"](smooth=0)(pred, target).item() == pytest.approx(1 - per.mean().item(), abs=1e-6)
    assert len(one) == 3


def test_class_ids_out_of_range_are_one_line():
    with pytest.raises(SandboxError, match="class ids outside 0..2"):
        LOSSES["ce"]()(torch.randn(1, 3, 2, 2), ids([[0, 1], [3, 0]]))


# ----------------------------------------------------------------------------- K = 1 unchanged

# val metrics of the main job's config on tiny settings (2 epochs, 32 px), recorded on the commit before
# several classes existed (1b4c333): the binary path must compute exactly these numbers.
K1_PINNED = {"val/loss": 1.272147536277771, "val/loss/mask/dice": 0.8660431504249573,
             "val/loss/mask/bce": 0.8122084736824036, "val/dice": 0.1398298293352127, "val/iou": 0.0751953125}


def test_binary_main_job_numbers_unchanged():
    with tempfile.TemporaryDirectory() as tmp:
        ov = [f"out_dir={tmp}", "name=tiny", "data.size=32", "data.num_train=16", "data.num_val=8",
              "data.batch_size=4", "model.width=4", "model.depth=2", "train.epochs=2", "train.log_every=1",
              "train.num_images=0", "track.wandb=disabled", "train.mixed_precision=no", "train.threads=1"]
        build_trainer(load_config(ROOT / "configs/unet_dice.yaml", ov)).fit()
        val = [r for r in read_metrics(Path(tmp) / "tiny" / "metrics.jsonl") if r["split"] == "val"][-1]
    assert {k: val[k] for k in K1_PINNED} == pytest.approx(K1_PINNED, rel=1e-5), json.dumps(val)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, message", [
    (["data.classes=[a]"], r"data.classes: got \['a'\], expected a list of at least 2 classes"),
    (["data.classes=[{a: '#000000'}, b]"], "some classes have a colour and some not"),
    (["data.classes=[{a: '#000000'}, {b: '#00000'}]"], r"data.classes\[1\]: colour '#00000'; expected '#rrggbb'"),
    (["data.classes=[a, b, c]", "loss={mask: {ce: {class_weights: [1, 2]}}}"],
     "loss.mask.ce.class_weights: 2 weights for the 3 classes a, b, c; expected one per class"),
    (["data.classes=[a, b]", "loss={mask: {bce: 1}}"], "loss.mask.bce: mask is a map of 2 classes; accepted: ce"),
    (["data.name=dancers", "data.classes=[a, b]"], "data.classes: dataset 'dancers' names its own classes"),
    (["data.ignore_index=255"], "data.ignore_index: the unlabelled value of index masks needs data.classes"),
])
def test_class_config_errors_are_one_line(overrides, message):
    base = ["data.name=folder", "data.root=/nonexistent"]
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/unet_dice.yaml", base + overrides)
