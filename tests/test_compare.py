"""compare.py: the table's numbers come back from metrics.jsonl, pictures exist, bad input is one line."""
import csv
import statistics
import sys

import pytest

from sandbox import build_trainer, load_config
from sandbox.analysis.compare import compare_runs
from sandbox.errors import SandboxError
from sandbox.models import MODELS
from sandbox.analysis.measure import segmentation_models
from sandbox.analysis.reports import open_run
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT, cli, command

TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.batch_size=4", "model.width=4",
        "model.depth=2", "train.epochs=2", "train.log_every=1", "train.num_images=0", "track.wandb=disabled",
        "train.mixed_precision=no"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny two-epoch run per segmentation model in the registry (new models are compared too)."""
    out = tmp_path_factory.mktemp("runs")
    paths = []
    for name in segmentation_models():
        cfg = load_config(ROOT / "configs/unet_dice.yaml", TINY + [f"out_dir={out}", f"name=tiny_{name}",
                                                                   f"model.name={name}"])
        build_trainer(cfg).fit()
        paths.append(out / f"tiny_{name}")
    return paths


@pytest.mark.real_figures  # its figures' file sizes or pixels
def test_compare_table_matches_metrics_jsonl(runs, tmp_path):
    report = compare_runs([open_run(p) for p in runs], tmp_path / "cmp", "val/dice")
    text = report.read_text()
    for p in runs:
        assert f"| {p.name} |" in text  # one table row per run, named
    assert "| run | model | params |" in text
    for png in ("curves_epoch.png", "curves_time.png", "predictions.png"):
        assert (tmp_path / "cmp" / png).stat().st_size > 5000
        assert f"]({png})" in text
    assert not (tmp_path / "cmp" / "depth.png").exists() and "depth.png" not in text  # mask-only runs
    rows = {r["run"]: r for r in csv.DictReader(open(tmp_path / "cmp" / "table.csv"))}
    for p in runs:
        val = [r for r in read_metrics(p / "metrics.jsonl") if r["split"] == "val"]
        best = max(val, key=lambda r: (r["val/dice"], -r["val/loss"], -r["epoch"]))  # ties: lower val/loss, then earlier
        row = rows[p.name]
        assert float(row["best val/dice"]) == pytest.approx(best["val/dice"])
        assert int(float(row["best epoch"])) == best["epoch"]
        assert float(row["val/iou"]) == pytest.approx(val[-1]["val/iou"])  # final epoch
        assert float(row["epoch_time"]) == pytest.approx(statistics.mean(r["epoch_time"] for r in val))
        assert float(row["total_time"]) == pytest.approx(val[-1]["time"])
        cfg = load_config(p / "config.yaml")
        from sandbox.build import build_model

        assert int(row["params"]) == sum(t.numel() for t in build_model(cfg).parameters())


def test_best_of_a_lower_is_better_metric_is_the_minimum(runs, tmp_path):
    run = open_run(runs[0])
    from sandbox.analysis.reports import run_stats

    stats = run_stats(run, "val/loss")
    losses = [e["val/loss"] for e in run.epochs]
    assert stats["best val/loss"] == min(losses)
    assert stats["best epoch"] == losses.index(min(losses)) + 1


def test_cli_not_a_run_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, lines = cli("compare", [tmp_path / "missing"])
    assert code == 2
    assert lines == [f"error: {str(tmp_path / 'missing')!r} is not a run: no such directory; expected a run "
                     "directory (runs/<name>) with config.yaml and metrics.jsonl, written by sandbox/train.py"]
    compare = command("compare")

    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(sys, "argv", ["compare.py", str(tmp_path / "empty")])
    with pytest.raises(SystemExit) as exc:
        compare.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "'" + str(tmp_path / "empty") + "' is not a run: no config.yaml" in err[0]


def test_cli_writes_report_and_rejects_unknown_metric(runs, tmp_path, monkeypatch, capsys):
    compare = command("compare")

    monkeypatch.setattr(sys, "argv", ["compare.py", *map(str, runs[:2]), "--out", str(tmp_path / "o")])
    compare.main()
    assert (tmp_path / "o" / "report.md").is_file()
    monkeypatch.setattr(sys, "argv", ["compare.py", str(runs[0]), "--metric", "val/dicee"])
    with pytest.raises(SystemExit) as exc:
        compare.main()
    assert exc.value.code == 2
    assert "--metric 'val/dicee' is not logged by these runs; accepted: " in capsys.readouterr().err


def test_runs_of_different_kinds_are_refused(runs, tmp_path, monkeypatch):
    # a model whose spec says generative counts as generative (as the VAE/AAE do)
    name = load_config(runs[-1] / "config.yaml").model.name
    import dataclasses

    opened = [open_run(runs[0]), open_run(runs[-1])]
    monkeypatch.setitem(MODELS._items, name, dataclasses.replace(MODELS[name], task="generative"))
    with pytest.raises(SandboxError, match=r"cannot compare runs of different kinds: .* is segmentation, .* is generative"):
        compare_runs(opened, tmp_path / "x", "val/dice")



@pytest.mark.real_figures  # its figures' file sizes or pixels
def test_runs_with_a_depth_head_get_a_depth_picture(tmp_path, monkeypatch):
    """transposed conv vs pixel shuffle: the depth maps side by side, each captioned with its own L1."""
    import numpy as np
    from PIL import Image

    from sandbox.build import build_data
    from sandbox.runs.inference import forward
    from sandbox.runs.load import load_run

    paths = []
    for up in ("transpose", "pixel_shuffle"):
        cfg = load_config(ROOT / "configs/unet_depth_mask.yaml", TINY + [
            f"out_dir={tmp_path}", f"name=d_{up}", f"model.upsample={up}", "loss.depth={l1: 1.0}"])
        build_trainer(cfg).fit()
        paths.append(tmp_path / f"d_{up}")
    report = compare_runs([open_run(p) for p in paths], tmp_path / "cmp", "val/dice", n_images=2)
    assert "](depth.png)" in report.read_text()
    pic = np.asarray(Image.open(tmp_path / "cmp" / "depth.png"))
    assert pic.shape[1] > pic.shape[0] and pic.std() > 10  # 4 columns x 2 rows, not blank
    cfg, model = load_run(paths[1], device="cpu")
    sample = build_data(cfg, ("val",))["val"][0]
    pred = forward(model, sample["image"][None], cfg.train.channels_last)["depth"].clamp(0, 1)
    l1 = (pred[0, 0] - sample["depth"][0]).abs().mean().item()
    from sandbox.analysis import compare

    drawn = []
    monkeypatch.setattr(compare, "draw_panels", lambda panels, cols, path: drawn.append((panels, cols)) or path)
    compare.depth_grid([open_run(p) for p in paths], [load_run(p, device="cpu")[1] for p in paths],
                       tmp_path / "x.png", compare.val_batch([open_run(paths[0])], 2))
    panels, cols = drawn[0]
    assert cols == ["input", "depth truth", "d_transpose", "d_pixel_shuffle"]
    assert panels[0][3][2] == f"depth L1 {l1:.4f}"
