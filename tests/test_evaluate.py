"""evaluate.py and predict.py on a tiny trained run: evaluation reproduces the numbers training
logged, predictions keep every image's original size, and each bad input gives one line and exit 2."""
import csv
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from sandbox import build_trainer, load_config
from sandbox.errors import SandboxError
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT, SHARED_DATA, run_command

TINY = ["name=tiny", "data.size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
        "model.width=4", "model.depth=2", "train.epochs=1", "track.wandb=disabled", "train.mixed_precision=no",
        "train.num_images=0", "train.threads=1"]
METRICS = ("dice", "iou", "pixel_acc", "boundary_f1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    build_trainer(load_config(ROOT / "configs" / "unet_dice.yaml", [f"out_dir={out}", *TINY])).fit()
    return out / "tiny"


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run: tests write eval/ and predictions/ into it or break it."""
    return Path(shutil.copytree(trained, tmp_path / "tiny"))


def call(script: str, *args, monkeypatch) -> None:
    """The CLI's main() in this process (no interpreter start-up): raises SystemExit on bad input."""
    from tests.conftest import command

    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, args)])
    command(script).main()


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def labelled_folder(root: Path, n: int = 6, image_dir: str = "imgs", mask_dir: str = "gt") -> Path:
    """``n`` 40x30 RGB jpgs and 20x15 png masks (smaller than their images, same aspect)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        save(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), root / image_dir / f"p{i}.jpg")
        m = np.zeros((15, 20), np.uint8)
        m[2 + i % 3:12, 4:10 + i] = 255
        save(m, root / mask_dir / f"p{i}.png")
    return root


def np_dice(p: np.ndarray, t: np.ndarray) -> float:
    p, t = p.astype(bool), t.astype(bool)
    s = p.sum() + t.sum()
    return 1.0 if s == 0 else 2 * (p & t).sum() / s


# ----------------------------------------------------------------------------- evaluate

def test_val_reproduces_training_metrics(run):
    res = run_command("evaluate", "--run", run, "--split", "val")
    assert res.code == 0, res.err
    logged = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"][-1]
    result = json.loads((run / "eval" / "val.json").read_text())
    assert result["n"] == 4 and result["split"] == "val" and result["epoch"] == 1
    for k in METRICS:  # fp32 both (mixed_precision=no): the same per-image mean
        assert result["means"][k] == pytest.approx(logged[f"val/{k}"], abs=1e-5), k
    table = rows(run / "eval" / "val.csv")
    assert [int(r["index"]) for r in table] == [0, 1, 2, 3]
    for k in METRICS:
        col = [float(r[k]) for r in table]
        s = result["summary"][k]
        assert s["mean"] == pytest.approx(np.mean(col)) and s["median"] == pytest.approx(np.median(col))
        assert s["min"] == pytest.approx(min(col))
    assert "dice" in res.out and "median" in res.out


def test_split_all_writes_three_and_never_overwrites(run, monkeypatch):
    call("evaluate", "--run", run, "--split", "all", monkeypatch=monkeypatch)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        assert json.loads((run / "eval" / f"{split}.json").read_text())["n"] == n
        assert len(rows(run / "eval" / f"{split}.csv")) == n
    before = (run / "eval" / "val.json").read_text()
    call("evaluate", "--run", run, "--split", "val", monkeypatch=monkeypatch)
    call("evaluate", "--run", run, "--split", "val", "--tag", "again", monkeypatch=monkeypatch)
    assert (run / "eval" / "val.json").read_text() == before
    second = json.loads((run / "eval" / "val_2.json").read_text())
    assert second["means"] == json.loads(before)["means"]  # deterministic
    assert (run / "eval" / "val_again.json").exists() and (run / "eval" / "val_again.csv").exists()


def test_external_folder_as_override(run, tmp_path, monkeypatch):
    from sandbox.data.folders import FolderDataset
    from sandbox.runs.inference import forward
    from sandbox.runs.load import load_run

    root = labelled_folder(tmp_path / "ext")
    over = ["data.name=folder", f"data.root={root}", "data.image_dir=imgs", "data.mask_dir=gt"]
    call("evaluate", "--run", run, "--split", "whole", *over, monkeypatch=monkeypatch)
    result = json.loads((run / "eval" / "whole.json").read_text())
    table = rows(run / "eval" / "whole.csv")
    assert result["n"] == 6 and sorted(r["stem"] for r in table) == [f"p{i}" for i in range(6)]
    assert {r["split"] for r in table} == {"train", "val", "test"} and all(Path(r["path"]).is_file() for r in table)
    # reference: every pair through the folder dataset (masks aligned to their images) and a numpy Dice
    _, model = load_run(run, device="cpu")
    ds = FolderDataset(root, "train", "imgs", "gt", size=32, val_fraction=0.0, test_fraction=0.0)
    assert len(ds) == 6
    for i in range(len(ds)):
        s = ds[i]
        prob = torch.sigmoid(forward(model, s["image"][None])["mask"])[0, 0].numpy()
        row = next(r for r in table if r["stem"] == ds.items[i].stem)
        assert float(row["dice"]) == pytest.approx(np_dice(prob > 0.5, s["mask"][0].numpy()), abs=1e-6)
    # at each image's own size, evaluate scores what predict writes: the same Dice per image
    call("evaluate", "--run", run, "--split", "whole", "--resolution", "original", *over, monkeypatch=monkeypatch)
    full = {r["stem"]: float(r["dice"]) for r in rows(run / "eval" / "whole_2.csv")}
    call("predict", "--run", run, "--input", root / "imgs", "--mask-dir", root / "gt", "--out", tmp_path / "p",
         monkeypatch=monkeypatch)
    predicted = {r["name"]: float(r["dice"]) for r in rows(tmp_path / "p" / "predictions.csv")}
    assert predicted == pytest.approx(full, abs=1e-6)


class _Ramp(torch.nn.Module):
    """Mask logits (and depth) that are a left-to-right ramp, + ``offset``, whatever the image: not mirror-symmetric."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.w, self.offset = torch.nn.Parameter(torch.zeros(())), offset

    def forward(self, x):
        ramp = torch.linspace(-3.0, 3.0, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:]) + 0 * x[:, :1]
        return {"mask": ramp + self.offset, "depth": 0.5 + ramp / 10}


def test_flip_tta_averages_the_mirrored_prediction():
    from sandbox.runs.inference import forward

    x = torch.rand(2, 3, 4, 8)
    plain = forward(_Ramp(), x)
    assert torch.allclose(plain["mask"][0, 0, 0], torch.linspace(-3.0, 3.0, 8))
    # mirrored back, the ramp runs the other way: sigmoid(r) + sigmoid(-r) = 1, so P = 0.5 (logit 0) everywhere,
    # and the depths average to the constant 0.5
    flipped = forward(_Ramp(), x, flip=True)
    assert flipped["mask"].abs().max() < 1e-5 and torch.allclose(flipped["depth"], torch.full_like(x[:, :1], 0.5))
    # a net that sees each pixel alone (1x1 convolution) is mirror-equivariant: the average changes nothing
    net = torch.nn.Conv2d(3, 1, 1)
    pointwise = type("Pointwise", (torch.nn.Module,), {"forward": lambda self, x: {"mask": net(x)}})()
    pointwise.net = net
    assert torch.allclose(forward(pointwise, x, flip=True)["mask"], forward(pointwise, x)["mask"], atol=1e-5)


def test_evaluate_and_predict_with_flip_tta(run, tmp_path, monkeypatch):
    """The ramp + 1 as the run's net: plain, P > 0.5 where ramp > -1 (the right two thirds); with --tta flip
    sigmoid(1 + r) + sigmoid(1 - r) > 1 everywhere, so every pixel is foreground. Both commands pass it on."""
    import sandbox.analysis.evaluation as evaluation
    import sandbox.analysis.prediction as prediction
    from sandbox.build import build_data
    from sandbox.runs.load import load_run

    cfg, _ = load_run(run, device="cpu")
    for module in (evaluation, prediction):
        monkeypatch.setattr(module, "load_run", lambda *a, **k: (cfg, _Ramp(offset=1.0)))
    call("evaluate", "--run", run, "--split", "val", monkeypatch=monkeypatch)
    call("evaluate", "--run", run, "--split", "val", "--tta", "flip", "--tag", "tta", monkeypatch=monkeypatch)
    assert json.loads((run / "eval" / "val_tta.json").read_text())["tta"] == "flip"
    assert json.loads((run / "eval" / "val.json").read_text())["tta"] == "none"
    ds = build_data(cfg, ("val",))["val"]
    right = np.broadcast_to(np.linspace(-3.0, 3.0, 32) > -1.0, (32, 32))
    for plain, tta in zip(rows(run / "eval" / "val.csv"), rows(run / "eval" / "val_tta.csv")):
        truth = ds[int(plain["index"])]["mask"][0].numpy()
        assert float(plain["dice"]) == pytest.approx(np_dice(right, truth), abs=1e-6)
        assert float(tta["dice"]) == pytest.approx(np_dice(np.ones((32, 32), bool), truth), abs=1e-6)
    image = save(np.zeros((32, 32, 3), np.uint8), tmp_path / "in" / "net.png")
    for how, expected in ((["--tta", "flip"], np.ones((32, 32), bool)), ([], right)):
        out = tmp_path / f"p{len(how)}"
        call("predict", "--run", run, "--input", image, "--out", out, *how, monkeypatch=monkeypatch)
        assert np.array_equal(np.asarray(Image.open(out / "net_mask.png")) == 255, expected), how


def test_checkpoint_config_builds_the_model(run, caplog):
    from sandbox.runs.load import load_run

    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("width: 4", "width: 8"))  # edited after training
    cfg, model = load_run(run, device="cpu")
    assert cfg.model.width == 4 and not model.training and "differs" in caplog.text
    # weights saved from a torch.compile'd model carry a prefix; they load all the same
    state = load_file(run / "checkpoints" / "best" / "model.safetensors")
    save_file({f"_orig_mod.{k}": v for k, v in state.items()}, run / "checkpoints" / "best" / "model.safetensors")
    _, again = load_run(run, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(SandboxError, match=r"no checkpoints/epoch_007/model.safetensors; it has best, last"):
        load_run(run, "epoch_007")


# ----------------------------------------------------------------------------- predict

def test_predict_keeps_original_sizes(run, tmp_path):
    from sandbox.runs.inference import forward
    from sandbox.runs.load import load_run

    rng = np.random.default_rng(2)
    d = tmp_path / "in"
    net = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    sizes = {"odd": (37, 45), "gray": (33, 50), "rgba": (41, 29), "deep": (20, 30), "net": (32, 32)}
    save(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8), d / "odd.png")
    save(rng.integers(0, 256, (33, 50), dtype=np.uint8), d / "gray.jpg")
    save(rng.integers(0, 256, (41, 29, 4), dtype=np.uint8), d / "rgba.png")
    save(rng.integers(0, 65536, (20, 30)).astype(np.uint16), d / "deep.png")
    save(net, d / "net.png")
    (d / "notes.txt").write_text("not an image")
    res = run_command("predict", "--run", run, "--input", d, "--out", tmp_path / "out")
    assert res.code == 0, res.err
    assert "predicted 5 image(s)" in res.out and "skipped 1 non-image" in res.out
    for stem, (h, w) in sizes.items():
        mask = np.asarray(Image.open(tmp_path / "out" / f"{stem}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}, stem
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == (w, h)
    # at the net's own size, fitting and mapping back are the identity: the mask is P > 0.5 itself
    _, model = load_run(run, device="cpu")
    prob = torch.sigmoid(forward(model, torch.from_numpy(net).permute(2, 0, 1)[None].float() / 255)["mask"])
    expected = (prob[0, 0].numpy() > 0.5).astype(np.uint8) * 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "net_mask.png")), expected)


def test_predict_writes_depth_maps_for_a_depth_head(tmp_path, monkeypatch):
    from sandbox.runs.inference import forward
    from sandbox.runs.load import load_run

    build_trainer(load_config(ROOT / "configs" / "unet_depth_mask.yaml",
                              [f"out_dir={tmp_path}", *TINY, "name=depth", "loss.depth={l1: 1.0}"])).fit()
    rng = np.random.default_rng(3)
    net, odd = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (27, 40, 3), dtype=np.uint8)
    save(net, tmp_path / "in" / "net.png")
    save(odd, tmp_path / "in" / "odd.png")
    call("predict", "--run", tmp_path / "depth", "--input", tmp_path / "in", "--out", tmp_path / "out",
         monkeypatch=monkeypatch)
    depth = np.asarray(Image.open(tmp_path / "out" / "net_depth.png"))
    assert depth.dtype == np.uint16 and depth.shape == (32, 32)
    assert np.asarray(Image.open(tmp_path / "out" / "odd_depth.png")).shape == (27, 40)
    assert Image.open(tmp_path / "out" / "odd_depth_color.png").size == (40, 27)
    # at the net's size the 16-bit map is the depth head itself, clipped to [0, 1]
    _, model = load_run(tmp_path / "depth", device="cpu")
    pred = forward(model, torch.from_numpy(net).permute(2, 0, 1)[None].float() / 255)["depth"][0, 0].clamp(0, 1)
    assert np.abs(depth / 65535.0 - pred.numpy()).max() < 1e-4


def test_failures_only(run, tmp_path, monkeypatch):
    root = labelled_folder(tmp_path / "ds", n=3, image_dir="images", mask_dir="masks")  # the run's layout
    out = tmp_path / "out"
    args = ["--run", run, "--input", root / "images", "--mask-dir", root / "masks", "--failures-only", "--out", out]
    call("predict", *args, "--fail-below", "1.01", monkeypatch=monkeypatch)
    fails = rows(out / "failures.csv")
    assert len(fails) == 3 and [float(r["dice"]) for r in fails] == sorted(float(r["dice"]) for r in fails)
    for r in fails:  # the Dice is the written mask's, against the truth resized to the image (nearest)
        pred = np.asarray(Image.open(out / f"{r['name']}_mask.png")) > 0
        truth = cv2.resize(np.asarray(Image.open(r["mask"])), (pred.shape[1], pred.shape[0]),
                           interpolation=cv2.INTER_NEAREST) > 127
        assert float(r["dice"]) == pytest.approx(np_dice(pred, truth), abs=1e-6)
    call("predict", *args, "--fail-below", "0.0", monkeypatch=monkeypatch)
    again = tmp_path / "out_2"  # the first folder is kept
    assert rows(again / "failures.csv") == [] and not list(again.glob("*.png"))
    assert len(rows(again / "predictions.csv")) == 3 and len(rows(out / "failures.csv")) == 3
    # a dataset root of the run's layout brings its own masks
    call("predict", "--run", run, "--input", root, "--failures-only", "--fail-below", "1.01",
         "--out", tmp_path / "auto", monkeypatch=monkeypatch)
    assert len(rows(tmp_path / "auto" / "failures.csv")) == 3


def test_predict_on_human_seg(run, tmp_path, monkeypatch):
    from sandbox.data.folders import open_image

    data = SHARED_DATA / "human_seg"
    if not (data / "Training_Images").is_dir():
        pytest.skip(f"{data} not present (real data lives beside the project, not in it)")
    files = [data / "Training_Images" / "56.jpg", data / "Training_Images" / "97.jpg"]  # 97's mask is smaller
    call("predict", "--run", run, "--input", *files, "--mask-dir", data / "Ground_Truth", "--out", tmp_path / "o",
         monkeypatch=monkeypatch)
    table = {r["name"]: r for r in rows(tmp_path / "o" / "predictions.csv")}
    for f in files:
        w, h = open_image(f).size
        assert Image.open(tmp_path / "o" / f"{f.stem}_mask.png").size == (w, h)
        assert 0 <= float(table[f.stem]["dice"]) <= 1


# ----------------------------------------------------------------------------- bad inputs

def _break(run: Path, case: str, tmp: Path) -> list:
    """Set up one bad input; returns the CLI and its arguments."""
    if case == "not a run":
        (tmp / "empty").mkdir()
        return ["evaluate", "--run", tmp / "empty"]
    if case == "no best checkpoint":
        shutil.rmtree(run / "checkpoints" / "best")
        return ["evaluate", "--run", run]
    if case in ("other model config", "no mask head"):
        for p in (run / "config.yaml", run / "checkpoints" / "best" / "config.yaml"):
            text = p.read_text()
            p.write_text(text.replace("width: 4", "width: 8") if case == "other model config" else
                         text.replace("loss:\n  mask:", "loss:\n  depth:"))
        return ["evaluate", "--run", run]
    if case == "model override":
        return ["evaluate", "--run", run, "model.width=8"]
    if case == "input missing":
        return ["predict", "--run", run, "--input", tmp / "nope"]
    if case == "no images":
        (tmp / "docs").mkdir()
        (tmp / "docs" / "a.txt").write_text("x")
        return ["predict", "--run", run, "--input", tmp / "docs"]
    if case == "unreadable image":
        save(np.zeros((9, 9, 3), np.uint8), tmp / "mixed" / "a.png")
        (tmp / "mixed" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return ["predict", "--run", run, "--input", tmp / "mixed", "--out", tmp / "out"]
    if case == "failures without truth":
        save(np.zeros((9, 9, 3), np.uint8), tmp / "plain" / "a.png")
        return ["predict", "--run", run, "--input", tmp / "plain", "--failures-only"]
    raise AssertionError(case)


BAD = [("not a run", r"empty' is not a run directory: no config.yaml; expected runs/<name>"),
       ("no best checkpoint", r"run '.*' has no checkpoints/best/model.safetensors; it has last \(pick one with --which\)"),
       ("other model config", r"model.safetensors' was trained with a different model config .*\(4, 3, 3, 3\) there, \(8, 3"),
       ("no mask head", r"has no mask head .*expected a segmentation run"),
       ("model override", r"override 'model.width=8': only data.\* keys"),
       ("input missing", r"--input '.*nope': no such file or folder; expected image files"),
       ("no images", r"--input '.*docs': no image files in .*docs \(1 other entry\)"),
       ("unreadable image", r"mixed/b.jpg: unreadable or truncated image .*--skip-unreadable"),
       ("failures without truth", r"--failures-only needs ground truth: give --mask-dir")]


@pytest.mark.parametrize("case,pattern", BAD, ids=[c for c, _ in BAD])
def test_bad_input_one_line_exit_2(run, tmp_path, case, pattern):
    import re

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    res = run_command(*_break(run, case, tmp_path))
    assert res.code == 2, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.err, res.err
    assert lines[0].startswith("error: ") and re.search(pattern, lines[0]), lines[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]  # nothing overwritten or added
    assert not (run / "eval").exists() and not (run / "predictions").exists()
