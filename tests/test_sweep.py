"""sweep.py: grid x seeds as runs, a mean/std/CV summary checked by hand, resume, clear errors."""
import csv
import math
import os
import statistics
import sys
from pathlib import Path

import pytest

from sandbox import build_trainer, load_config
from sandbox.config.loading import parse_overrides
from sandbox.tracking.metrics_log import read_metrics
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs/unet_dice.yaml")
TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4", "model.depth=2",
        "train.epochs=1", "train.log_every=1", "train.num_images=0", "track.wandb=disabled",
        "train.mixed_precision=no"]
GRID = ["--grid", "model.name=unet,hourglass", "--grid", "model.width=4,8"]
CELLS = ["model-unet_width-4", "model-unet_width-8", "model-hourglass_width-4", "model-hourglass_width-8"]


def sweep_main(argv):
    from tests.conftest import command

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["sweep.py", *argv])
        command("sweep").main()


def counting(mp):
    """Count in-process trainings: [(run name, resumed?), ...]."""
    from sandbox.analysis import sweep

    calls, real = [], sweep._train_in_process
    mp.setattr(sweep, "_train_in_process", lambda spec, config, resume: calls.append((spec.name, resume))
               or real(spec, config, resume))
    return calls


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps")
    sweep_main(["--config", CONFIG, *GRID, "--seeds", "2", "--name", "s", "--out-dir", str(out), "--in-process", *TINY])
    return out / "s"


def test_grid_times_seeds_gives_one_normal_run_each(swept):
    runs = sorted(p.parent.name for p in swept.glob("*/config.yaml"))
    assert runs == sorted(f"{c}_s{s}" for c in CELLS for s in (0, 1))
    cfg = load_config(swept / "model-hourglass_width-8_s1" / "config.yaml")
    assert (cfg.model.name, cfg.model.width, cfg.seed, cfg.name) == ("hourglass", 8, 1, "s/model-hourglass_width-8_s1")
    assert cfg.track.group == "s" and cfg.track.tags == ["model=hourglass", "width=8", "seed=1"]
    assert cfg.train.epochs == 1 and cfg.data.size == 32  # the extra overrides reach every run


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_summary_csv_is_mean_std_cv_of_the_runs_metrics(swept):
    rows = {r["cell"]: r for r in csv.DictReader(open(swept / "summary.csv"))}
    assert sorted(rows) == sorted(CELLS)
    for cell in CELLS:
        per_run = []
        for seed in (0, 1):
            val = [r for r in read_metrics(swept / f"{cell}_s{seed}" / "metrics.jsonl") if r["split"] == "val"]
            per_run.append({"best val/dice": max(r["val/dice"] for r in val), "val/loss": val[-1]["val/loss"],
                            "val/pixel_acc": val[-1]["val/pixel_acc"],
                            "epoch_time": statistics.mean(r["epoch_time"] for r in val)})
        row = rows[cell]
        assert row["runs"] == "2" and row["model"] == cell.split("_")[0].split("-")[1]
        for key in per_run[0]:
            xs = [r[key] for r in per_run]
            mean, std = statistics.mean(xs), statistics.stdev(xs)
            cv = std / abs(mean) if mean else math.nan
            got = [float(row[f"{key}_{s}"]) for s in ("mean", "std", "cv")]
            assert _close(got[0], mean) and _close(got[1], std) and _close(got[2], cv), (cell, key, got)
    md = (swept / "summary.md").read_text()
    assert "| cell | runs | best val/dice |" in md and "± " in md
    assert (swept / "compare" / "report.md").is_file() and (swept / "compare" / "predictions.png").is_file()
    assert (swept / "plots" / "val_dice_vs_model.width.png").is_file()  # drawn for real: the test below


@pytest.mark.real_figures
def test_a_rerun_of_a_finished_sweep_trains_nothing_and_plots_the_metric_against_the_numeric_axis(swept):
    with pytest.MonkeyPatch.context() as mp:
        calls = counting(mp)
        sweep_main(["--config", CONFIG, *GRID, "--seeds", "2", "--name", "s", "--out-dir", str(swept.parent),
                    "--in-process", *TINY])
    assert calls == []
    assert (swept / "plots" / "val_dice_vs_model.width.png").stat().st_size > 5000  # a figure, not a blank


def test_rerun_skips_finished_and_retrains_a_deleted_run(swept):
    import shutil

    stamps = {p.parent.parent.parent.name: p.stat().st_mtime_ns for p in swept.glob("*/checkpoints/last/trainer_state.json")}
    shutil.rmtree(swept / "model-unet_width-8_s1")
    with pytest.MonkeyPatch.context() as mp:
        calls = counting(mp)
        sweep_main(["--config", CONFIG, *GRID, "--seeds", "2", "--name", "s", "--out-dir", str(swept.parent),
                    "--in-process", *TINY])
    assert calls == [("s/model-unet_width-8_s1", False)]
    after = {p.parent.parent.parent.name: p.stat().st_mtime_ns for p in swept.glob("*/checkpoints/last/trainer_state.json")}
    assert {k: v for k, v in after.items() if k != "model-unet_width-8_s1"} == \
           {k: v for k, v in stamps.items() if k != "model-unet_width-8_s1"}


def test_a_run_from_before_a_new_config_key_continues_but_other_settings_are_refused(swept, tmp_path):
    """A sweep resumed after the schema grew a key (its run's config.yaml lacks it) trained at that key's
    default: the run counts as done. A run whose config differs in a real setting is still refused."""
    import shutil

    import yaml

    from sandbox.analysis.sweep import make_cells, plan, run_state
    from sandbox.errors import SandboxError

    spec = plan(CONFIG, make_cells({"model.name": ["unet"], "model.width": [4]}), 1, TINY, "s", tmp_path)[0]
    shutil.copytree(swept / "model-unet_width-4_s0", spec.path)
    cfg_file = spec.path / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["out_dir"] = str(tmp_path)  # moved with the copy
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert run_state(spec, CONFIG) == "done"
    del cfg["train"]["clip"]  # as if train.clip (default 1.0) did not exist when the run trained
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert run_state(spec, CONFIG) == "done"
    cfg["train"]["lr"] = 0.5
    cfg_file.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SandboxError, match=r"was trained with train.lr=0.5, this sweep plans"):
        run_state(spec, CONFIG)


def test_a_partial_run_is_resumed_not_restarted(tmp_path):
    from sandbox.analysis.sweep import make_cells, plan

    tiny2 = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=2", "model.width=4"]
    spec = plan(CONFIG, make_cells({"model.name": ["unet"]}), 2, tiny2, "p", tmp_path)[1]
    build_trainer(load_config(CONFIG, spec.overrides)).fit(until_epoch=1)  # as if killed after epoch 1
    first = read_metrics(spec.path / "metrics.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        calls = counting(mp)
        sweep_main(["--config", CONFIG, "--grid", "model.name=unet", "--seeds", "2", "--name", "p",
                    "--out-dir", str(tmp_path), "--in-process", *tiny2])
    assert calls == [("p/model-unet_s0", False), ("p/model-unet_s1", True)]
    val = [r for r in read_metrics(spec.path / "metrics.jsonl") if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]
    assert read_metrics(spec.path / "metrics.jsonl")[:len(first)] == first  # epoch 1 kept, not retrained
    # the resumed run keeps its sweep name (not its directory's basename), so a rerun finds it done
    assert load_config(spec.path / "config.yaml").name == "p/model-unet_s1"
    with pytest.MonkeyPatch.context() as mp:
        calls = counting(mp)
        sweep_main(["--config", CONFIG, "--grid", "model.name=unet", "--seeds", "2", "--name", "p",
                    "--out-dir", str(tmp_path), "--in-process", *tiny2])
    assert calls == []


@pytest.mark.parametrize("argv, message", [
    (["--grid", "model.name"], "error: --grid 'model.name': expected key.path=v1,v2"),
    (["--grid", "model.nme=1,2"], "unknown key 'model.nme'; accepted keys under model:"),
    (["--grid", "model.name=unet,unet"], "error: grid model.name: values ['unet', 'unet'] repeat"),
    (["--grid", "seed=1,2"], "error: grid seed: set by the sweep itself; use --seeds N"),
    (["--grid", "model.name=unet", "--grid", "model.name=hourglass"], "error: --grid model.name: given twice"),
    (["--grid", "model.depth=[1,2"], "error: --grid model.depth: '[1,2' is not a comma-separated list"),
    (["--grid", "model.name=unet", "--seeds", "0"], "error: --seeds: got 0, expected an integer in [1, 1000]"),
])
def test_grid_errors_are_one_line_naming_the_key(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sweep_main(["--config", CONFIG, "--out-dir", str(tmp_path), "--in-process", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())  # nothing was trained


@pytest.mark.parametrize("value", ["unet", "pixel_shuffle", "1e-3", "true", "", 3, 1e-3, 0.5, True, None, [8, 16],
                                   {"l1": 1.0}, {"l1": 0.16, "ms_ssim": {"weight": 0.84, "win_size": 3}}])
def test_override_reads_back_as_the_same_value(value):
    from sandbox.analysis.sweep import override

    assert parse_overrides([override("a.b", value)]) == [("a.b", value)]


def test_cells_are_the_product_and_named_axes_set_several_keys():
    from sandbox.analysis.sweep import make_cells

    cells = make_cells({"model.name": ["unet", "hourglass"], "size": {"small": {"data.num_train": 6, "train.epochs": 9},
                                                                       "all": {"data.num_train": 600}}})
    assert [c.name for c in cells] == ["model-unet_size-small", "model-unet_size-all", "model-hourglass_size-small",
                                       "model-hourglass_size-all"]
    assert cells[0].overrides == {"model.name": "unet", "data.num_train": 6, "train.epochs": 9}
    assert cells[0].axis_of == {"model.name": "model", "data.num_train": "size", "train.epochs": "size"}
    loss = make_cells({"loss.depth": [{"l1": 0.16, "ms_ssim": 0.84}]})[0]
    assert loss.name == "depth-l1-0.16+ms_ssim-0.84"
    # a named value {} is the base config unchanged: the control cell beside a treatment
    control, treated = make_cells({"init": {"scratch": {}, "warm": {"train.init_from": "runs/ae"}}})
    assert (control.name, control.overrides, treated.overrides) == ("init-scratch", {}, {"train.init_from": "runs/ae"})


@pytest.mark.parametrize("study", sorted((ROOT / "configs" / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_file_plans_valid_runs(study, tmp_path):
    from sandbox.analysis.sweep import check_study, load_study, make_cells, plan, study_overrides

    s = load_study(str(study))
    if not (ROOT / s["config"]).is_file():
        pytest.skip(f"{s['config']} does not exist yet")
    specs = plan(str(ROOT / s["config"]), make_cells(s["grid"]), s.get("seeds", 1), study_overrides(s),
                 study.stem, tmp_path)
    assert len({sp.name for sp in specs}) == len(specs) >= 2
    assert s.get("title") and s.get("expected_minutes")
    # the protocol: 3 seeds or more, selected on val, the primary metric produced by every cell
    assert len({sp.seed for sp in specs}) >= 3 and s["protocol"]["select_on"].startswith("val")
    check_study(s, str(study), str(ROOT / s["config"]), specs)


def test_cli_subprocess_sweep_in_parallel_jobs(tmp_path):
    """The default path: each run a `python sandbox/train.py` subprocess (two at once here; the sweep
    itself runs in this process)."""
    sweep_main(["--config", CONFIG, "--grid", "model.name=unet", "--seeds", "2", "--jobs", "2", "--name", "j",
                "--out-dir", str(tmp_path), *TINY, "model.width=4"])
    for seed in (0, 1):
        cfg = load_config(tmp_path / "j" / f"model-unet_s{seed}" / "config.yaml")
        assert cfg.train.threads == max(1, len(os.sched_getaffinity(0)) // 2) and cfg.seed == seed
        assert (tmp_path / "j" / "logs" / f"model-unet_s{seed}.log").is_file()
    assert "| model-unet | 2 |" in Path(tmp_path / "j" / "summary.md").read_text()


def test_a_grid_sweep_reports_on_test_with_intervals_and_adjusted_paired_tests(tmp_path):
    """Issue 29: a 2-cell x 3-seed grid reports like a study by default: val-selected, scored on test, per cell
    mean with a 95 % t interval over seeds, the second cell against the first in a paired, Holm-adjusted test;
    --quick keeps the val-only summary. The same 6 runs serve both: --quick first, then the default over the
    finished runs (which trains nothing and scores them)."""
    argv = ["--config", CONFIG, "--grid", "model.width=4,8", "--seeds", "3", "--name", "g", "--out-dir",
            str(tmp_path), "--in-process", *TINY]
    sweep_main([*argv, "--quick"])
    g = tmp_path / "g"
    assert (g / "summary.md").is_file() and not (g / "report.md").exists()
    assert len(list(g.glob("*/checkpoints/best"))) == 6 and not list(g.glob("*/eval/test.json"))
    with pytest.MonkeyPatch.context() as mp:
        calls = counting(mp)
        sweep_main(argv)
    assert calls == []  # nothing retrained: the report scores the finished runs
    runs = {r["run"]: r for r in csv.DictReader(open(g / "report_runs.csv"))}
    assert len(runs) == 6
    dice = {}
    for name in runs:
        import json

        test = json.loads((tmp_path / name / "eval" / "test.json").read_text())  # scored on test, from best
        assert test["split"] == "test" and Path(test["checkpoint"]).name == "best" and test["n"] == 4
        dice[name] = test["means"]["dice"]
    cells = {r["cell"]: r for r in csv.DictReader(open(g / "report.csv"))}
    assert sorted(cells) == ["width-4", "width-8"]
    for cell, row in cells.items():
        xs = [dice[f"g/{cell}_s{s}"] for s in (0, 1, 2)]
        mean, sd = statistics.mean(xs), statistics.stdev(xs)
        half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 dof) * s / sqrt(n)
        assert float(row["test/dice_mean"]) == pytest.approx(mean)
        assert float(row["test/dice_ci_lo"]) == pytest.approx(mean - half)
        assert float(row["test/dice_ci_hi"]) == pytest.approx(mean + half)
    (cmp,) = [r for r in csv.DictReader(open(g / "comparisons.csv")) if r["metric"] == "test/dice"]
    assert (cmp["a"], cmp["b"]) == ("width-4", "width-8")
    d = [dice[f"g/width-8_s{s}"] - dice[f"g/width-4_s{s}"] for s in (0, 1, 2)]
    assert float(cmp["diff_mean"]) == pytest.approx(statistics.mean(d))
    assert float(cmp["p_holm"]) == pytest.approx(float(cmp["p"]))  # one planned pair: Holm leaves it as it is
    report = (g / "report.md").read_text()
    assert "Primary metric **test/dice**" in report and "Holm p" in report
