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


# ----------------------------------------------------------------------------- metrics

def one_hot_logits(pred_ids, k: int) -> torch.Tensor:
    """Logits whose argmax is ``pred_ids`` (2x2) -> ``(1, K, 2, 2)``."""
    return torch.nn.functional.one_hot(torch.tensor(pred_ids), k).permute(2, 0, 1)[None].float() * 5


def test_miou_against_a_hand_count_absent_classes_excluded():
    from sandbox.metrics import class_metrics, class_scores

    truth, pred = ids([[0, 0], [1, 1]]), one_hot_logits([[0, 1], [1, 2]], 4)
    m = class_metrics(pred, truth)
    # class 0: TP 1 (top left), FP 0, FN 1 (top right taken for 1)           -> IoU 1/2, Dice 2/3
    # class 1: TP 1 (bottom left), FP 1 (top right), FN 1 (bottom right as 2) -> IoU 1/3, Dice 2/4
    # class 2: TP 0, FP 1, FN 0: predicted, never true -> IoU 0, but not in the truth: out of the mIoU
    # class 3: in neither -> NaN, out of the mIoU
    assert m["tp"][0].tolist() == [1, 1, 0, 0] and m["fp"][0].tolist() == [0, 1, 1, 0]
    assert m["fn"][0].tolist() == [1, 1, 0, 0]
    assert m["iou"][0, :3].tolist() == pytest.approx([1 / 2, 1 / 3, 0.0]) and math.isnan(m["iou"][0, 3])
    assert m["miou"].item() == pytest.approx((1 / 2 + 1 / 3) / 2)  # 5/12, not (1/2 + 1/3 + 0) / 3
    assert m["pixel_acc"].item() == pytest.approx(2 / 4)
    assert m["confusion"][0].tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    sc = class_scores(m["tp"][0], m["fp"][0], m["fn"][0])
    assert sc["miou"].item() == pytest.approx(5 / 12) and sc["mdice"].item() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert sc["present"].tolist() == [True, True, False, False]
    # an unlabelled pixel (-1) counts nowhere: top right unlabelled -> class 0 IoU 1/1, class 1 1/2
    m = class_metrics(pred, ids([[0, -1], [1, 1]]))
    assert m["iou"][0, :2].tolist() == pytest.approx([1.0, 1 / 2]) and m["pixel_acc"].item() == pytest.approx(2 / 3)


def test_split_miou_sums_counts_over_images():
    from sandbox.metrics import class_metrics, class_scores

    # image 2 is all class 3, right: class 3 is now in the truth, IoU 1
    truth = torch.cat([ids([[0, 0], [1, 1]]), ids([[3, 3], [3, 3]])])
    pred = torch.cat([one_hot_logits([[0, 1], [1, 2]], 4), one_hot_logits([[3, 3], [3, 3]], 4)])
    m = class_metrics(pred, truth)
    sc = class_scores(m["tp"].sum(0), m["fp"].sum(0), m["fn"].sum(0))
    assert sc["miou"].item() == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)


def test_multilabel_metrics_per_channel():
    from sandbox.metrics import class_metrics

    truth = torch.tensor([[[1, 1], [0, 0]], [[0, 1], [1, 1]]], dtype=torch.float32)[None]  # 2 overlapping classes
    logits = torch.tensor([[[1, -1], [-1, -1]], [[1, 1], [1, 1]]], dtype=torch.float32)[None] * 5
    m = class_metrics(logits, truth)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 3, FP 1 -> 3/4; no confusion matrix (pixels have several classes)
    assert m["iou"][0].tolist() == pytest.approx([1 / 2, 3 / 4]) and "confusion" not in m


# ----------------------------------------------------------------------------- dancers' parts

def test_default_dancers_data_unchanged_by_the_parts_target():
    """sha256 of image, mask and depth of three samples, recorded before the parts target existed."""
    import hashlib

    from sandbox.data import Dancers

    ds = Dancers("train", num=3, size=64, seed=0)
    got = [hashlib.sha256(b"".join(a.tobytes() for a in ds.render(i)[:3])).hexdigest()[:16] for i in range(3)]
    assert got == ["f153adba5addc4cf", "95414a8f584e76bd", "6686d019fabd3e4e"]


def test_parts_target_renders_every_part_inside_the_mask():
    import numpy as np

    from sandbox.data import Dancers

    ds = Dancers("val", num=8, size=64, seed=0)
    counts = np.zeros(5, int)
    for i in range(8):
        s = ds[i]
        parts, mask = s["parts"][0].numpy(), s["mask"][0].numpy()
        assert s["parts"].shape == (1, 64, 64) and set(np.unique(parts)) <= {0, 1, 2, 3, 4}
        assert ((parts > 0) == (mask > 0)).all()  # the parts tile the person mask exactly
        counts += np.bincount(parts.astype(int).ravel(), minlength=5)
    assert (counts[1:] > 0).all() and counts[1] < counts[2]  # every part drawn; the head smaller than the torso
    ml = Dancers("val", num=1, size=64, seed=0, multilabel=True)[0]["parts"]
    assert ml.shape == (5, 64, 64) and (ml[1:].sum(0) >= 1).sum() == int(ds[0]["mask"].sum())
    assert ml[2].sum() >= (ds[0]["parts"] == 2).sum()  # the torso's own extent includes what an arm hides


@pytest.mark.real_figures  # its figures' file sizes or pixels
def test_parts_run_logs_per_class_iou_draws_class_maps_and_evaluates(tmp_path, tiny_overrides, monkeypatch):
    import csv

    from tests.conftest import command

    cfg = load_config(ROOT / "configs/unet_parts.yaml", tiny_overrides + ["data.num_test=4"])
    build_trainer(cfg).fit()
    run = tmp_path / "tiny"
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"][-1]
    assert {"val/parts_miou", "val/parts_iou_head", "val/parts_iou_arms", "val/parts_pixel_acc"} <= set(val)
    assert (run / "images" / "val_parts_epoch001.png").stat().st_size > 5000
    monkeypatch.setattr("sys.argv", ["evaluate.py", "--run", str(run)])
    command("evaluate").main()
    rows = list(csv.DictReader(open(run / "eval" / "test.csv")))
    assert len(rows) == 4 and rows[0]["parts_worst_class"] in ("background", "head", "torso", "arms", "legs")
    result = json.loads((run / "eval" / "test.json").read_text())
    assert set(result["classes"]["parts"]["per_class"]) == {"background", "head", "torso", "arms", "legs"}
    lines = (run / "eval" / "test_confusion_parts.csv").read_text().splitlines()
    assert len(lines) == 6 and sum(int(v) for line in lines[1:] for v in line.split(",")[1:]) == 4 * 32 * 32


# ----------------------------------------------------------------------------- folders: palette, RGB, index masks

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

COLOURS = {"background": (0, 0, 0), "cat": (255, 0, 0), "dog": (0, 0, 255)}
TRUTH = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [0, 2, 2, 0], [1, 1, 0, 0]])  # class ids of a 4x4 mask


def coloured_classes():
    from sandbox.data.classes import parse_classes

    return parse_classes([{n: list(c)} for n, c in COLOURS.items()])


def mask_files(folder: Path) -> dict[str, Path]:
    """The same 4x4 class map saved four ways."""
    rgb = np.array(list(COLOURS.values()), np.uint8)[TRUTH]
    paths = {k: folder / f"{k}.png" for k in ("palette", "rgb", "index", "voc")}
    Image.fromarray(rgb).save(paths["rgb"])
    pal = Image.fromarray(np.array([1, 0, 2], np.uint8)[TRUTH], "P")  # palette order red, black, blue: not the ids
    pal.putpalette([255, 0, 0, 0, 0, 0, 0, 0, 255])
    pal.save(paths["palette"])
    Image.fromarray(TRUTH.astype(np.uint8), "L").save(paths["index"])
    voc = Image.fromarray(np.where(np.eye(4, dtype=bool), 255, TRUTH).astype(np.uint8), "P")  # 255: unlabelled
    voc.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    voc.save(paths["voc"])
    return paths


def test_palette_rgb_and_index_masks_read_into_the_same_class_map(tmp_path):
    from sandbox.data.classes import parse_classes
    from sandbox.data.masks import to_class_map

    paths = mask_files(tmp_path)
    by_colour = coloured_classes()
    by_id = parse_classes(list(COLOURS))
    for kind, classes in (("palette", by_colour), ("rgb", by_colour), ("index", by_id)):
        assert (to_class_map(Image.open(paths[kind]), classes, paths[kind]) == TRUTH).all(), kind
    # a VOC-style palette PNG of ids with 255 on unlabelled pixels: -1 there, the ids elsewhere
    voc = to_class_map(Image.open(paths["voc"]), by_id, paths["voc"], ignore_index=255)
    assert (voc == np.where(np.eye(4, dtype=bool), -1, TRUTH)).all()


def test_an_unknown_colour_is_one_line_naming_file_colour_and_classes(tmp_path):
    from sandbox.data.classes import parse_classes
    from sandbox.data.masks import to_class_map

    rgb = np.array(list(COLOURS.values()), np.uint8)[TRUTH]
    rgb[0, 0] = (0, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(SandboxError) as err:
        to_class_map(Image.open(tmp_path / "odd.png"), coloured_classes(), tmp_path / "odd.png")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'odd.png'}: colour #00ff00 (1 px) is no class")
    assert "known: 0 background #000000, 1 cat #ff0000, 2 dog #0000ff" in msg
    with pytest.raises(SandboxError, match=r"index.png: value 2 \(4 px\) is no class of data.classes; known: 0 a, 1 b"):
        to_class_map(Image.open(mask_files(tmp_path)["index"]), parse_classes(["a", "b"]), tmp_path / "index.png")


def labelled_folder(root: Path, n: int = 8, with_dog: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        ids = np.zeros((16, 16), np.uint8)
        ids[2:8, 2:8] = 1
        if with_dog:
            ids[9:14, 8:15] = 2
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.array(list(COLOURS.values()), np.uint8)[ids]).save(root / "masks" / f"{i}.png")
    return root


def test_a_folder_of_colour_masks_trains_with_data_classes(tmp_path, tiny_overrides, caplog):
    from sandbox import build_data

    root = labelled_folder(tmp_path / "pets", with_dog=False)
    classes = "data.classes=[{background: '#000000'}, {cat: '#ff0000'}, {dog: '#0000ff'}]"
    ov = tiny_overrides + ["data.name=folder", f"data.root={root}", "data.size=16", "model.depth=1", classes,
                           "loss={mask: {ce: 1.0, dice: 1.0}}", "train.monitor=val/miou", "data.val_fraction=0.25"]
    cfg = load_config(ROOT / "configs/unet_dice.yaml", ov)
    with caplog.at_level("WARNING", logger="sandbox"):
        data = build_data(cfg)
    absent = [r.getMessage() for r in caplog.records if "never occur" in r.getMessage()]
    assert len(absent) == 3 and all("class(es) dog never occur" in m for m in absent)  # once per split
    sample = data["train"][0]
    assert sample["mask"].shape == (1, 16, 16) and set(sample["mask"].unique().tolist()) == {0.0, 1.0}
    build_trainer(cfg).fit()
    val = [r for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["split"] == "val"][-1]
    assert {"val/miou", "val/iou_cat", "val/iou_dog"} <= set(val) and val["val/iou_dog"] == "nan"
    # predict draws the class map: a palette PNG that reads back by the same rules, an overlay with the legend
    from sandbox.analysis.prediction import predict_run
    from sandbox.data.masks import to_class_map

    rows = predict_run(str(tmp_path / "tiny"), [str(root)], out_arg=str(tmp_path / "pred"))
    assert len(rows) == 8 and all(0 <= r["iou"] <= 1 for r in rows)
    ids = to_class_map(Image.open(tmp_path / "pred" / "0_classes.png"), coloured_classes(), "0_classes.png")
    assert ids.shape == (16, 16) and (tmp_path / "pred" / "0_overlay.png").stat().st_size > 200
    # an unknown colour stops before training, in one line
    bad = np.zeros((16, 16, 3), np.uint8)
    bad[0, 0] = (9, 9, 9)
    Image.fromarray(bad).save(root / "masks" / "0.png")
    with pytest.raises(SandboxError, match=r"0.png: colour #090909 \(1 px\) is no class of data.classes"):
        build_data(cfg)


def test_multilabel_parts_train_through_the_same_losses_and_metrics(tmp_path, tiny_overrides):
    """data.multilabel: the parts as 5 overlapping channels, sigmoid per class, the same losses and metrics."""
    cfg = load_config(ROOT / "configs/unet_parts.yaml", tiny_overrides + ["data.multilabel=true",
                                                                          "loss={parts: {ce: 1.0, dice: 1.0, bce: 0.5}}"])
    trainer = build_trainer(cfg)
    assert trainer.datasets["train"][0]["parts"].shape == (5, 32, 32)
    trainer.fit()
    val = [r for r in read_metrics(tmp_path / "tiny" / "metrics.jsonl") if r["split"] == "val"][-1]
    assert 0 <= val["val/parts_miou"] <= 1 and "val/parts_iou_legs" in val
    with pytest.raises(ConfigError, match="data.multilabel: no class-map target in loss"):
        load_config(ROOT / "configs/unet_dice.yaml", tiny_overrides + ["data.multilabel=true"])
