"""sandbox-export (issue 30, part 5): ONNX / TorchScript files that agree with PyTorch at two input sizes,
predict.py --model on them, nothing in an export folder executed, preprocessing.json checked, the model card."""
import json
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, run_command
from sandbox.analysis.export import RTOL, export_run, plan
from sandbox.errors import SandboxError
from sandbox.runs.exported import ExportedModel, load_exported
from sandbox.runs.load import load_run

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
        "model.width=4", "model.depth=2", "train.epochs=1", "track.wandb=disabled", "train.mixed_precision=no"]
SEGMENTATION = ("unet", "hourglass", "simpleconv")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per segmentation model: ``{name: run directory}``."""
    root = tmp_path_factory.mktemp("runs")
    for m in SEGMENTATION:
        code, _, err = run_command("train", "--config", ROOT / "configs" / f"{m}_dice.yaml", f"out_dir={root}",
                                   f"name={m}", *TINY)
        assert code == 0, err
    return {m: root / m for m in SEGMENTATION}


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """The unet run exported once per format into a folder outside the run: ``{format: model file}``."""
    root = tmp_path_factory.mktemp("exports")
    return {fmt: export_run(str(runs["unet"]), fmt=fmt, out_arg=str(root / fmt)) / f"model.{ext}"
            for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"))}


def images(folder, sizes=((50, 61), (40, 32), (33, 77))):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def agree(model, exported, x) -> None:
    """The exported model's outputs match the torch model's within the export's tolerance, at x's size."""
    with torch.no_grad():
        ref, got = model(x), exported(x)
    for k, v in ref.items():
        assert got[k].shape == v.shape == (x.shape[0], 1, *x.shape[-2:])
        diff = float((got[k] - v).abs().max())
        assert diff <= RTOL * max(1.0, float(v.abs().max())), (k, tuple(x.shape), diff)


@pytest.mark.parametrize("name", SEGMENTATION)
def test_onnx_export_agrees_with_pytorch_at_two_input_sizes(runs, tmp_path, name):
    out = export_run(str(runs[name]), out_arg=str(tmp_path / "export"))
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "model.onnx", "preprocessing.json"]
    _, model = load_run(runs[name], device="cpu")
    _, exported = load_exported(out / "model.onnx")
    gen = torch.Generator().manual_seed(1)
    for shape in ((2, 3, 32, 32), (1, 3, 48, 40)):  # sizes the export's own check did not use: dynamic axes
        agree(model, exported, torch.rand(*shape, generator=gen))
    spec = json.loads((out / "preprocessing.json").read_text())
    assert spec["input"]["multiple_of"] == (1 if name == "simpleconv" else 4)
    assert spec["outputs"][0]["name"] == "mask" and spec["classes"] == [{"name": "mask", "color": [26, 217, 51]}]


def test_torchscript_export_agrees_with_pytorch_at_two_input_sizes(runs, exports):
    _, model = load_run(runs["unet"], device="cpu")
    _, exported = load_exported(exports["torchscript"])
    for shape in ((2, 3, 32, 32), (3, 3, 36, 44)):
        agree(model, exported, torch.rand(*shape))


def test_an_exported_model_refuses_sides_it_cannot_halve(exports):
    _, exported = load_exported(exports["onnx"])
    with pytest.raises(SandboxError, match="divisible by 4"):
        exported(torch.rand(1, 3, 30, 32))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predict_with_the_exported_model_gives_the_masks_of_predict_with_the_run(runs, exports, tmp_path, fmt):
    photos = images(tmp_path / "photos")
    code, _, err = run_command("predict", "--run", runs["unet"], "--input", photos, "--out", tmp_path / "run")
    assert code == 0, err
    code, said, err = run_command("predict", "--model", exports[fmt], "--input", photos, "--out", tmp_path / "model")
    assert code == 0, err
    assert "predicted 3 image(s)" in said
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / "run" / f"img{i}_mask.png"))
        b = np.asarray(Image.open(tmp_path / "model" / f"img{i}_mask.png"))
        assert a.shape == b.shape and (a == b).all(), i


class Planted:
    """Unpickled, it creates ``path``: what a malicious model.pt would do with any code instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_planted_pickle_in_an_export_folder_is_refused_and_never_executed(exports, tmp_path, how):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Planted(proof)))
    assert proof.exists()  # the plant is real: unpickling it runs code
    folder, sentinel = tmp_path / "export", tmp_path / "executed"
    folder.mkdir()
    shutil.copy(exports["torchscript"].parent / "preprocessing.json", folder)
    if how == "pickle":
        (folder / "model.pt").write_bytes(pickle.dumps(Planted(sentinel)))
    else:
        torch.save({"model": Planted(sentinel)}, folder / "model.pt")
    code, _, err = run_command("predict", "--model", folder / "model.pt", "--input", images(tmp_path / "photos"),
                               "--out", tmp_path / "pred")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "the sandbox never unpickles a file" in err, err
    assert not sentinel.exists()
    assert not (tmp_path / "pred").exists()


BREAKAGES = {
    "not json": (lambda spec: "{input: NCHW", "not valid JSON"),
    "field missing": (lambda spec: {**spec, "input": {k: v for k, v in spec["input"].items() if k != "size"}},
                      "field input.size is missing"),
    "wrong layout": (lambda spec: {**spec, "input": {**spec["input"], "layout": "NHWC"}},
                     "field input.layout: got 'NHWC', expected 'NCHW'"),
    "bad threshold": (lambda spec: {**spec, "outputs": [{**spec["outputs"][0], "threshold": "high"}]},
                      "field outputs.0.threshold: got 'high'"),
    "size not a multiple": (lambda spec: {**spec, "input": {**spec["input"], "multiple_of": 5}},
                            "field input.multiple_of: got 5"),
    "other runtime": (lambda spec: {**spec, "runtime": "torchscript"}, "field runtime: got 'torchscript'"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_a_broken_preprocessing_json_is_one_line_naming_the_field(exports, tmp_path, case):
    folder = tmp_path / "export"
    shutil.copytree(exports["onnx"].parent, folder)
    breaks, expected = BREAKAGES[case]
    broken = breaks(json.loads((folder / "preprocessing.json").read_text()))
    (folder / "preprocessing.json").write_text(broken if isinstance(broken, str) else json.dumps(broken))
    code, _, err = run_command("predict", "--model", folder / "model.onnx", "--input", images(tmp_path / "photos"),
                               "--out", tmp_path / "pred")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "preprocessing.json" in err and expected in err, err


def test_the_model_card_holds_the_test_metrics_when_the_run_was_evaluated(runs, tmp_path):
    run = shutil.copytree(runs["hourglass"], tmp_path / "hourglass")
    card = (export_run(str(run)) / "MODEL_CARD.md").read_text()
    assert "Not evaluated on the test split yet" in card and "| dice |" not in card
    code, _, err = run_command("evaluate", "--run", run)
    assert code == 0, err
    means = json.loads((run / "eval" / "test.json").read_text())["means"]
    out = export_run(str(run))
    assert out == run / "export_2"  # the first export is never overwritten
    card = (out / "MODEL_CARD.md").read_text()
    assert f"| dice | {means['dice']:.4f} |" in card and f"| iou | {means['iou']:.4f} |" in card
    assert "train 8, val 4, test 4 images" in card and "hourglass (" in card and "Intended use and limits" in card


def test_an_export_that_fails_its_parity_check_leaves_no_export_folder(runs, monkeypatch):
    forward = ExportedModel.forward
    monkeypatch.setattr(ExportedModel, "forward", lambda self, x: {k: v + 0.01 for k, v in forward(self, x).items()})
    before = sorted(p.name for p in runs["simpleconv"].iterdir())
    with pytest.raises(SandboxError, match=r"differs from PyTorch by 0\.01 \(tolerance 0\.0001") as err:
        export_run(str(runs["simpleconv"]))
    assert "\n" not in str(err.value) and "nothing was exported" in str(err.value)
    assert sorted(p.name for p in runs["simpleconv"].iterdir()) == before  # no export/, no hidden partial folder


def test_without_onnxruntime_the_export_is_one_line_naming_the_extra(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(SandboxError, match=r"pip install 'sandbox\[export\]'"):
        export_run(str(runs["unet"]))
    assert not (runs["unet"] / "export").exists()


def test_a_vae_run_exports_its_decoder_and_a_ddpm_run_is_refused(tmp_path):
    from sandbox import build_model, load_config

    code, _, err = run_command("train", "--config", ROOT / "configs" / "vae_attractors.yaml", f"out_dir={tmp_path}",
                               "name=vae", *TINY, "model.latent_dim=8", "train.fid_samples=0", "train.probe_samples=0")
    assert code == 0, err
    out = export_run(str(tmp_path / "vae"), fmt="torchscript")
    spec = json.loads((out / "preprocessing.json").read_text())
    assert spec["kind"] == "decoder" and spec["input"]["latent_dim"] == 8
    _, model = load_run(tmp_path / "vae", device="cpu")
    _, decoder = load_exported(out / "model.pt")
    z = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(decoder(z)["image"], model.decode(z), atol=RTOL)
    code, _, err = run_command("predict", "--model", out / "model.pt", "--input", images(tmp_path / "photos"))
    assert code == 2 and "is a decoder export" in err and len(err.strip().splitlines()) == 1, err

    cfg = load_config(str(ROOT / "configs" / "ddpm_attractors.yaml"), TINY[:5] + ["model.width=4"])
    with pytest.raises(SandboxError, match="ddpm run samples by running its denoising net") as refused:
        plan(cfg, build_model(cfg), tmp_path / "ddpm")
    assert "one-pass decoders (ae, vae, aae, dcgan)" in str(refused.value)
