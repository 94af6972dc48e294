"""predict.py and sandbox-export on a run with several classes (issue 30, parts 2 and 5): dancers' ``parts``
predicted as class-id PNGs with the colour legend of the panels, scored per class against class masks, exported
to ONNX / TorchScript within the export's tolerance at two input sizes, and predicted through the export into
the same class maps as through the checkpoint."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from tests.test_export import TINY, run_command
from sandbox.analysis.class_prediction import class_scores, exported_targets, run_targets
from sandbox.analysis.export import RTOL, export_run
from sandbox.data.classes import colors
from sandbox.data.masks import to_class_map
from sandbox.data.synthetic import PART_CLASSES, Dancers
from sandbox.errors import SandboxError
from sandbox.runs.exported import load_exported
from sandbox.runs.load import load_run

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = [c.name for c in PART_CLASSES]
# a few epochs at a high rate: enough that the tiny net's class maps hold several classes, so that equal maps
# mean something
PARTS = [*TINY[:-3], "data.num_train=16", "train.epochs=4", "train.lr=1e-2", "track.wandb=disabled",
         "train.mixed_precision=no"]


@pytest.fixture(scope="module")
def parts_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    code, _, err = run_command("train", "--config", ROOT / "configs" / "unet_parts.yaml", f"out_dir={root}",
                               "name=parts", *PARTS)
    assert code == 0, err
    return root / "parts"


@pytest.fixture(scope="module")
def parts_exports(parts_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {fmt: export_run(str(parts_run), fmt=fmt, out_arg=str(root / fmt)) / f"model.{ext}"
            for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"))}


@pytest.fixture(scope="module")
def dancers_folder(tmp_path_factory):
    """Test dancers at the net's 32 px as a dataset root: images/ and masks/ (RGB colour masks of the parts)."""
    root = tmp_path_factory.mktemp("dancers")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    data = Dancers("test", num=4, size=32, seed=3)
    for i in range(4):
        s = data[i]
        Image.fromarray((s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            root / "images" / f"d{i}.png")
        Image.fromarray(colors(PART_CLASSES)[s["parts"][0].numpy().astype(int)]).save(root / "masks" / f"d{i}.png")
    return root


def rows_of(path):
    return list(csv.DictReader(open(path)))


# ----------------------------------------------------------------------------- the scores

def test_class_scores_against_a_hand_count():
    """truth [[a, b], [b, c]], prediction [[a, b], [c, c]], class d in neither: IoU a 1, b 1/2 (1 hit, 1 missed),
    c 1/2 (1 hit, 1 extra), d NaN and left out of the mean; mIoU 2/3, mean Dice (1 + 2/3 + 2/3) / 3, pixel
    accuracy 3/4, the worst class b (the first of the two at 1/2)."""
    got = class_scores(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 2]]), ["a", "b", "c", "d"], "parts_")
    assert got["parts_iou_a"] == 1 and got["parts_iou_b"] == 0.5 and got["parts_iou_c"] == 0.5
    assert np.isnan(got["parts_iou_d"])
    assert got["parts_miou"] == pytest.approx(2 / 3) and got["parts_mdice"] == pytest.approx(7 / 9)
    assert got["parts_pixel_acc"] == 0.75 and (got["parts_worst_class"], got["parts_worst_iou"]) == ("b", 0.5)
    unlabelled = class_scores(np.array([[2, 1]]), np.array([[-1, 1]]), ["a", "b", "c"])
    assert unlabelled["iou_b"] == 1 and np.isnan(unlabelled["iou_c"])  # the unlabelled pixel counts for nothing


def test_class_scores_agree_with_the_metrics_of_training_and_evaluate():
    """The same numbers as sandbox.metrics.class_metrics (what val/ and eval/ report) on random maps."""
    from sandbox.metrics import class_metrics

    rng = np.random.default_rng(0)
    truth, ids = rng.integers(-1, 4, (2, 9, 13)), rng.integers(0, 5, (2, 9, 13))  # class 4 predicted, never true
    logits = torch.nn.functional.one_hot(torch.from_numpy(ids), 5).permute(0, 3, 1, 2).float()
    ref = class_metrics(logits, torch.from_numpy(truth)[:, None].float())
    for j in range(2):
        got = class_scores(ids[j], truth[j], list("vwxyz"))
        assert np.allclose([got[f"iou_{n}"] for n in "vwxyz"], ref["iou"][j].numpy(), equal_nan=True)
        assert got["miou"] == pytest.approx(float(ref["miou"][j]))
        assert got["pixel_acc"] == pytest.approx(float(ref["pixel_acc"][j]))


# ----------------------------------------------------------------------------- predict on a parts run

def test_predict_on_a_parts_run_writes_class_maps_with_the_legend_and_scores_each_class(parts_run, dancers_folder,
                                                                                        tmp_path):
    code, said, err = run_command("predict", "--run", parts_run, "--input", dancers_folder, "--out", tmp_path / "p")
    assert code == 0, err
    assert "predicted 4 image(s)" in said and "mean mIoU" in said and "over 4 with masks" in said
    _, model = load_run(parts_run, device="cpu")
    rows = {r["name"]: r for r in rows_of(tmp_path / "p" / "predictions.csv")}
    for i in range(4):
        png = Image.open(tmp_path / "p" / f"d{i}_parts.png")
        assert png.mode == "P" and png.getpalette()[:15] == colors(PART_CLASSES).ravel().tolist()
        ids = np.asarray(png)
        x = torch.from_numpy(np.array(Image.open(dancers_folder / "images" / f"d{i}.png"))).permute(2, 0, 1)
        with torch.no_grad():  # at the net's own size nothing is resized: the map is the logits' argmax
            assert (ids == model(x[None].float() / 255)["parts"][0].argmax(0).numpy()).all()
        assert (to_class_map(png, PART_CLASSES, "p.png") == ids).all()  # reads back by the folder rules
        truth = to_class_map(Image.open(dancers_folder / "masks" / f"d{i}.png"), PART_CLASSES, "m.png")
        row = rows[f"d{i}"]
        ious = {}
        for c, n in enumerate(NAMES):  # counted here by hand, class by class
            union = ((ids == c) | (truth == c)).sum()
            ious[n] = ((ids == c) & (truth == c)).sum() / union if union else float("nan")
            assert float(row[f"parts_iou_{n}"]) == pytest.approx(ious[n], abs=1e-6, nan_ok=True), (i, n)
        present = [n for c, n in enumerate(NAMES) if (truth == c).any()]
        assert float(row["iou"]) == float(row["parts_miou"]) == pytest.approx(np.mean([ious[n] for n in present]),
                                                                              abs=1e-6)
        assert row["parts_worst_class"] == min(present, key=lambda n: ious[n])
        assert float(row["parts_pixel_acc"]) == pytest.approx((ids == truth).mean(), abs=1e-6)
        overlay = np.asarray(Image.open(tmp_path / "p" / f"d{i}_parts_overlay.png").convert("RGB"))
        legend = overlay[32:].reshape(-1, 3)  # the strip under the image: a swatch of every class's colour
        assert overlay.shape[1] == 32 and overlay.shape[0] > 32
        assert all((legend == c).all(1).any() for c in colors(PART_CLASSES)), i
    everything = np.concatenate([np.asarray(Image.open(tmp_path / "p" / f"d{i}_parts.png")).ravel() for i in range(4)])
    assert len(np.unique(everything)) >= 2  # the tiny net draws more than one class: the checks above can fail


def test_a_run_with_a_mask_and_parts_scores_the_mask_and_draws_both(dancers_folder, tmp_path):
    code, _, err = run_command("train", "--config", ROOT / "configs" / "unet_parts.yaml", f"out_dir={tmp_path}",
                               "name=both", *TINY, "loss={mask: {dice: 1.0}, parts: {ce: 1.0}}")
    assert code == 0, err
    shutil.copytree(dancers_folder / "images", tmp_path / "photos")
    masks = tmp_path / "binary"  # the binary truth: the person is every part but the background
    masks.mkdir()
    for f in (dancers_folder / "masks").iterdir():
        Image.fromarray(((np.asarray(Image.open(f)) > 0).any(-1) * 255).astype(np.uint8)).save(masks / f.name)
    code, _, err = run_command("predict", "--run", tmp_path / "both", "--input", tmp_path / "photos", "--mask-dir",
                               masks, "--out", tmp_path / "p")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "p").iterdir() if p.name.startswith("d0"))
    assert names == ["d0_mask.png", "d0_overlay.png", "d0_parts.png", "d0_parts_overlay.png"]
    row = rows_of(tmp_path / "p" / "predictions.csv")[0]
    assert list(row)[-1] == "written" and row["dice"] != ""  # the binary mask's columns, scored as before
    pred = np.asarray(Image.open(tmp_path / "p" / "d0_mask.png")) > 0
    truth = np.asarray(Image.open(masks / "d0.png")) > 0
    assert float(row["dice"]) == pytest.approx(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()), abs=1e-6)


def test_a_multilabel_run_or_a_run_without_a_map_is_refused_in_one_line(tmp_path):
    from sandbox import load_config

    cfg = load_config(ROOT / "configs/unet_parts.yaml", ["data.multilabel=true"])
    with pytest.raises(SandboxError, match="parts target is multi-label") as err:
        run_targets(cfg, tmp_path)
    assert "\n" not in str(err.value)
    cfg = load_config(ROOT / "configs/unet_parts.yaml", ["loss={depth: {l1: 1.0}}", "train.monitor=val/loss"])
    with pytest.raises(SandboxError, match="no mask head and no class-map target"):
        run_targets(cfg, tmp_path)


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_parts_export_agrees_with_pytorch_at_two_input_sizes(parts_run, parts_exports, fmt):
    _, model = load_run(parts_run, device="cpu")
    _, exported = load_exported(parts_exports[fmt])
    gen = torch.Generator().manual_seed(2)
    for shape in ((2, 3, 32, 32), (1, 3, 48, 40)):  # the second: a size the export's own check did not use
        x = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            ref, got = model(x)["parts"], exported(x)["parts"]
        assert got.shape == ref.shape == (shape[0], 5, *shape[-2:])
        assert float((got - ref).abs().max()) <= RTOL * max(1.0, float(ref.abs().max())), shape
        top2 = ref.sort(1).values[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) > 2 * RTOL * max(1.0, float(ref.abs().max()))
        assert (ref.argmax(1) == got.argmax(1))[decided].all()


def test_a_parts_export_names_its_classes_and_colours(parts_exports):
    folder = parts_exports["onnx"].parent
    spec = json.loads((folder / "preprocessing.json").read_text())
    listed = [{"name": c.name, "color": list(c.color)} for c in PART_CLASSES]
    (out,) = spec["outputs"]
    assert (out["name"], out["channels"], out["activation"], out["classes"]) == ("parts", 5, "softmax", listed)
    assert spec["classes"] == listed
    card = (folder / "MODEL_CARD.md").read_text()
    legend = ", ".join(f"{i} {c.name} #{bytes(c.color).hex()}" for i, c in enumerate(PART_CLASSES))
    assert legend == "0 background #000000, 1 head #e6194b, 2 torso #3cb44b, 3 arms #ffe119, 4 legs #4363d8"
    assert "classes of `parts`" in card and legend in card
    assert "`parts` (logits of 5 classes" in card and "mask (26, 217, 51)" not in card


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_through_the_export_gives_the_class_maps_of_the_checkpoint(parts_run, parts_exports, dancers_folder,
                                                                           tmp_path, fmt):
    photos = tmp_path / "photos"  # other sizes than the net's: the maps are resized back in both
    photos.mkdir()
    for f in sorted((dancers_folder / "images").iterdir()):
        Image.open(f).resize((45, 38), Image.BILINEAR).save(photos / f.name)
    masks = tmp_path / "masks"
    shutil.copytree(dancers_folder / "masks", masks)
    for f in masks.iterdir():
        Image.open(f).resize((45, 38), Image.NEAREST).save(f)
    for how, source in (("run", ["--run", parts_run]), ("model", ["--model", parts_exports[fmt]])):
        code, _, err = run_command("predict", *source, "--input", photos, "--mask-dir", masks, "--out", tmp_path / how)
        assert code == 0, err
    maps = []
    for i in range(4):
        a, b = (np.asarray(Image.open(tmp_path / how / f"d{i}_parts.png")) for how in ("run", "model"))
        assert a.shape == b.shape == (38, 45) and (a == b).all(), i
        maps.append(a)
    assert len(np.unique(maps)) >= 2
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("image", "mask")} for r in rows]  # noqa: E731
    assert strip(rows_of(tmp_path / "run" / "predictions.csv")) == strip(rows_of(tmp_path / "model" /
                                                                                  "predictions.csv"))


@pytest.mark.parametrize("case", ["a path as an output name", "fewer classes than channels", "multi-label"])
def test_a_tampered_class_export_is_one_line_and_writes_nothing(parts_exports, dancers_folder, tmp_path, case):
    folder = tmp_path / "export"
    shutil.copytree(parts_exports["onnx"].parent, folder)
    spec = json.loads((folder / "preprocessing.json").read_text())
    out = spec["outputs"][0]
    expected = {"a path as an output name": "field outputs.0.name: got '../../evil'",
                "fewer classes than channels": "field outputs.0.classes",
                "multi-label": "its parts output is multi-label"}[case]
    if case == "a path as an output name":
        out["name"] = "../../evil"
    elif case == "fewer classes than channels":
        out["classes"] = out["classes"][:4]
    else:
        out["activation"], out["multilabel"] = "sigmoid", True
    (folder / "preprocessing.json").write_text(json.dumps(spec))
    code, _, err = run_command("predict", "--model", folder / "model.onnx", "--input", dancers_folder / "images",
                               "--out", tmp_path / "pred" / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "pred").exists() and not (tmp_path / "evil_parts.png").exists()
    if case == "multi-label":  # the same refusal from the library, for callers without the command
        with pytest.raises(SandboxError, match="multi-label"):
            exported_targets(spec, folder / "model.onnx")


def test_a_folder_of_index_masks_exports_and_predicts_its_class_maps_with_the_unlabelled_value(tmp_path):
    """A `mask` with data.classes (index masks, 255 unlabelled): the export carries the classes (no colours: the
    masks hold the ids) and ignore_index, so predict --model reads the same truth and draws the same maps."""
    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        ids = np.zeros((16, 16), np.uint8)
        ids[2:9, 3:10], ids[9:14, 8:15] = 1, 2
        ids[0] = 255  # an unlabelled row
        img = (rng.random((16, 16, 3)) * 60).astype(np.uint8) + (ids[..., None] % 4 * 60).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(ids, "L").save(root / "masks" / f"{i}.png")
    code, _, err = run_command("train", "--config", ROOT / "configs" / "unet_dice.yaml", f"out_dir={tmp_path}",
                               "name=pets", *TINY, "data.name=folder", f"data.root={root}", "data.size=16",
                               "model.depth=1", "data.classes=[background, cat, dog]", "data.ignore_index=255",
                               "loss={mask: {ce: 1.0}}", "train.monitor=val/miou", "data.val_fraction=0.25")
    assert code == 0, err
    folder = export_run(str(tmp_path / "pets"), out_arg=str(tmp_path / "export"))
    (out,) = json.loads((folder / "preprocessing.json").read_text())["outputs"]
    assert out["ignore_index"] == 255 and [c["name"] for c in out["classes"]] == ["background", "cat", "dog"]
    assert all(c["color"] is None for c in out["classes"])
    card = (folder / "MODEL_CARD.md").read_text()  # the colours drawn: the fixed palette by id
    assert "the masks hold the ids): 0 background #000000, 1 cat #1f77b4, 2 dog #ff7f0e" in card
    for how, source in (("run", ["--run", tmp_path / "pets"]), ("model", ["--model", folder / "model.onnx"])):
        code, _, err = run_command("predict", *source, "--input", root, "--out", tmp_path / how)
        assert code == 0, err
    rows = {how: rows_of(tmp_path / how / "predictions.csv") for how in ("run", "model")}
    assert [r["iou"] for r in rows["run"]] == [r["iou"] for r in rows["model"]] and rows["run"][0]["iou"] != ""
    assert rows["run"][0]["worst_class"] in ("background", "cat", "dog")  # a mask's class columns are bare
    for i in range(8):
        a, b = (np.asarray(Image.open(tmp_path / how / f"{i}_classes.png")) for how in ("run", "model"))
        assert (a == b).all(), i


@pytest.mark.real_figures
def test_compare_draws_class_maps_of_parts_runs(parts_run, tmp_path):
    """compare.py (and a study's compare/ of its best seeds) on runs that segment parts without a mask head
    (refused before: "no mask head"): the truth and each run's argmax drawn in the fixed class colours."""
    out = tmp_path / "cmp"
    code, _, err = run_command("compare", "--run", str(parts_run), str(parts_run), "--out", str(out))
    assert code == 0, err
    with Image.open(out / "predictions.png") as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    palette = {tuple(c) for c in colors(PART_CLASSES)}
    drawn = {tuple(p) for p in np.unique(pixels, axis=0)}
    assert len(palette & drawn) >= 3  # the class colours are in the picture (truth and predictions)
