"""The study protocol: intervals and paired tests against hand-derived values, the seeded bootstrap, the
verdict in words, the study file's checks, and a tiny study end to end (evaluated on test, resumed)."""
import math
import sys

import numpy as np
import pytest
import yaml

from sandbox.analysis import significance as sig
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs/unet_dice.yaml")
TINY = ["data.size=16", "data.num_train=4", "data.num_val=2", "data.num_test=6", "data.batch_size=4",
        "model.depth=2", "model.width=4", "train.epochs=1", "train.log_every=1", "train.num_images=0",
        "track.wandb=disabled", "train.mixed_precision=no"]


@pytest.fixture(params=["scipy", "built-in"])
def t_source(request, monkeypatch):
    """Every statistics test runs on scipy's t and on the built-in closed form / table."""
    if request.param == "built-in":
        monkeypatch.setattr(sig, "_scipy_stats", None)
    return request.param


def test_mean_ci_is_the_student_t_interval(t_source):
    # values 0.80, 0.82, 0.84: mean 0.82, sample std sqrt((0.02² + 0 + 0.02²) / 2) = 0.02;
    # half-width t_{0.975,2} * 0.02 / sqrt(3) = 4.303 * 0.011547 = 0.049687
    ci = sig.mean_ci([0.80, 0.82, 0.84])
    assert (ci.n, ci.mean, ci.std) == (3, pytest.approx(0.82), pytest.approx(0.02))
    assert ci.lo == pytest.approx(0.82 - 0.049687, abs=2e-5) and ci.hi == pytest.approx(0.82 + 0.049687, abs=2e-5)
    two = sig.mean_ci([1.0, 3.0])  # n = 2: t_{0.975,1} = 12.706, std sqrt(2): half 12.706 * sqrt(2) / sqrt(2)
    assert two.hi - two.mean == pytest.approx(12.706, abs=1e-3)
    assert math.isnan(sig.mean_ci([0.5]).lo) and sig.mean_ci([]).n == 0


def test_paired_t_test_matches_the_hand_computation(t_source):
    # d = b - a = [0.5, 0.4, 0.8]: mean 0.56667, deviations -0.06667, -0.16667, 0.23333, sum of squares
    # 0.086667, std sqrt(0.086667 / 2) = 0.208167; t = 0.56667 / (0.208167 / sqrt(3)) = 4.7150.
    # With 2 dof P(|T| < t) = t / sqrt(2 + t²) exactly, so p = 1 - 4.7150 / sqrt(24.231) = 0.04216;
    # d_z = 0.56667 / 0.208167 = 2.7222; CI 0.56667 ± 4.303 * 0.120185 = [0.0495, 1.0838].
    r = sig.paired_test([1.0, 2.0, 3.0], [1.5, 2.4, 3.8])
    assert r.t == pytest.approx(4.7150, abs=1e-4) and r.p == pytest.approx(0.04216, abs=1e-5)
    assert r.dz == pytest.approx(2.7222, abs=1e-4)
    assert (r.diff.lo, r.diff.hi) == (pytest.approx(0.0495, abs=2e-4), pytest.approx(1.0838, abs=2e-4))
    assert sig.verdict(r.p) == "significant (p = 0.042)"


def test_built_in_t_distribution_agrees_with_its_table_and_closed_forms():
    assert sig.t_abs_cdf(1.0, 1) == pytest.approx(0.5)  # Cauchy: 2/pi * atan(1) = 1/2
    assert sig.t_abs_cdf(2.0, 2) == pytest.approx(2 / math.sqrt(6))  # t / sqrt(2 + t²)
    for dof, t in enumerate(sig.T975, 1):  # the table's 3 decimals are the 97.5 % quantiles of the closed form
        assert sig.t_abs_cdf(t, dof) == pytest.approx(0.95, abs=2e-4), dof


def test_bootstrap_ci_covers_the_true_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    diffs = [0.1 + rng.normal(0, 0.05, 50) for _ in range(3)]  # true mean difference 0.1, 3 seeds x 50 images
    est, lo, hi = sig.bootstrap_diff(diffs)
    assert lo < 0.1 < hi and lo < est < hi
    # standard error ~ 0.05 / sqrt(150) = 0.0041: the 95 % interval is ~ 2 * 1.96 * 0.0041 = 0.016 wide
    assert 0.010 < hi - lo < 0.024
    assert sig.bootstrap_diff(diffs) == (est, lo, hi)  # seeded: the same numbers again
    assert sig.bootstrap_diff(diffs, seed=1)[1:] != (lo, hi)


def test_verdict_in_words_for_noise_and_for_a_large_shift(t_source):
    rng = np.random.default_rng(0)
    a = 0.80 + rng.normal(0, 0.02, 5)
    same = sig.paired_test(a, 0.80 + rng.normal(0, 0.02, 5))  # two identical cells, different noise
    shifted = sig.paired_test(a, a + 0.2 + rng.normal(0, 0.01, 5))
    assert sig.verdict(same.p).startswith("not significant (p = ") and same.p > 0.05
    assert sig.verdict(shifted.p).startswith("significant (p") and shifted.p < 1e-4
    assert sig.paired_test(a, a + 0.1).p == 0.0 and sig.paired_test(a, a).p == 1.0  # std 0: no t distribution


def sweep_main(argv):
    from tests.conftest import command

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["sweep.py", *argv])
        command("sweep").main()


def write_study(path, **keys):
    study = {"title": "tiny", "config": CONFIG, "grid": {"model.name": ["hourglass", "unet"]}, "overrides": TINY,
             "primary": "test/dice", "select_on": "val", "report_on": "test", "seeds": [0, 1, 2],
             "compare": [["hourglass", "unet"]], "metrics": ["test/iou"], "reach": {"val/dice": 0.01},
             "expected_minutes": 1, **keys}
    path.write_text(yaml.safe_dump({k: v for k, v in study.items() if v is not None}))
    return str(path)


@pytest.mark.parametrize("keys, message", [
    ({"primry": "test/dice"}, "unknown key 'primry'"),
    ({"primary": None}, "primary: got None; a study declares its metric up front"),
    ({"primary": "test/depth_rmse"}, "test/depth_rmse: not produced by cell model-hourglass"),
    ({"primary": "test/dice", "metrics": ["val/dice"]}, "val/dice: not on the report split"),
    ({"seeds": []}, "seeds: got [], expected a list of distinct seeds"),
    ({"select_on": "test"}, "select_on: got 'test', expected val or val/<metric>"),
    ({"compare": [["unet", "segformer"]]}, "compare: 'segformer' names no cell"),
    ({"baseline": "unet"}, "give compare: [[a, b], ...] or baseline: <cell>, not both"),
])
def test_study_file_errors_are_one_line(keys, message, tmp_path, capsys):
    study = write_study(tmp_path / "bad.yaml", **keys)
    with pytest.raises(SystemExit) as exc:
        sweep_main(["--study", study, "--out-dir", str(tmp_path / "out"), "--in-process"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()  # stopped before training


def test_circular_metric_warning_names_the_cell_that_trains_on_it():
    from sandbox.analysis.study_report import circular
    from sandbox.config.loading import load_config

    depth = str(ROOT / "configs/unet_depth_mask.yaml")
    configs = {"ssim": load_config(depth, ["loss.depth={ssim: 1.0}"]), "l1": load_config(depth, ["loss.depth={l1: 1.0}"])}
    protocol = {"primary": "test/depth_ssim", "metrics": ["test/depth_ssim", "test/depth_delta1"]}
    warn = circular(protocol, configs)
    assert len(warn) == 1 and "test/depth_ssim is the primary metric" in warn[0] and "ssim (ssim)" in warn[0]
    assert "l1" not in warn[0].split("train on")[1]
    assert circular(protocol, {"a": configs["ssim"], "b": configs["ssim"]}) == []  # all train on it: no favourite


def test_time_to_threshold_is_the_first_epoch_reaching_it():
    from types import SimpleNamespace

    from sandbox.analysis.study_report import first_reach

    run = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(monitor="val/dice", monitor_mode="max")),
                          epochs=[{"epoch": 1, "time": 10.0, "val/dice": 0.5}, {"epoch": 2, "time": 21.0, "val/dice": 0.72},
                                  {"epoch": 3, "time": 30.0, "val/dice": 0.69}, {"epoch": 4, "time": 41.0, "val/dice": 0.8}])
    assert first_reach(run, "val/dice", 0.7) == (2, 21.0)
    assert first_reach(run, "val/dice", 0.9) == (None, None)
    run.epochs[0]["val/loss"] = 0.3
    assert first_reach(run, "val/loss", 0.4) == (1, 10.0)  # lower is better: at most the threshold


@pytest.mark.slow  # 6 runs of 1 epoch + 2 reports with plots: 49-97 s measured with 9-12 jobs on the 2 cores
def test_tiny_study_end_to_end_evaluates_on_test_reports_cis_resumes_and_warns_below_3_seeds(tmp_path, capsys):
    import csv
    import json
    import shutil

    from sandbox.analysis import sweep

    study = write_study(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    sweep_main(["--study", study, "--out-dir", str(out), "--in-process"])
    runs = sorted((out / "tiny").glob("model-*_s*"))
    assert [r.name for r in runs] == [f"model-{m}_s{s}" for m in ("hourglass", "unet") for s in (0, 1, 2)]
    for r in runs:  # every run scored on test from its val-selected checkpoint
        meta = json.loads((r / "eval" / "test.json").read_text())
        assert meta["split"] == "test" and meta["n"] == 6 and meta["checkpoint"].endswith("best")
        assert len(list(csv.DictReader(open(r / "eval" / "test.csv")))) == 6
    report = (out / "tiny" / "report.md").read_text()
    assert "Primary metric **test/dice**" in report and "95 % CI" in report and "Machine:" in report
    assert "| model-hourglass | model-unet | 3 |" in report
    assert "significant (p" in report  # the verdict in words ("significant" or "not significant")
    rows = {r["cell"]: r for r in csv.DictReader(open(out / "tiny" / "report.csv"))}
    dice = [json.loads((out / "tiny" / f"model-unet_s{s}" / "eval" / "test.json").read_text())["means"]["dice"]
            for s in (0, 1, 2)]
    ci = sig.mean_ci(dice)  # report.csv holds the interval of the three runs' own test files
    assert float(rows["model-unet"]["test/dice_mean"]) == pytest.approx(ci.mean)
    assert float(rows["model-unet"]["test/dice_ci_lo"]) == pytest.approx(ci.lo)
    comp = list(csv.DictReader(open(out / "tiny" / "comparisons.csv")))
    assert {c["metric"] for c in comp} == {"test/dice", "test/iou"} and all(c["images"] == "18" for c in comp)
    # a second invocation trains nothing and evaluates only the run without evaluation (as if the study
    # had been stopped between its training and its evaluation)
    shutil.rmtree(runs[0] / "eval")
    stamps = {r.name: (r / "eval" / "test.json").stat().st_mtime_ns for r in runs[1:]}
    trained = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "_train_in_process", lambda spec, config, resume: trained.append(spec.name))
        sweep_main(["--study", study, "--out-dir", str(out), "--in-process"])
    assert trained == [] and (runs[0] / "eval" / "test.json").is_file()
    assert {r.name: (r / "eval" / "test.json").stat().st_mtime_ns for r in runs[1:]} == stamps
    assert not list(runs[1].glob("eval/test_*.json"))  # kept, not evaluated a second time
    # the same study with 2 seeds (0 and 1, both finished): a console warning, and no interval in the report
    from sandbox.analysis.reports import open_run
    from sandbox.analysis.study_report import protocol_report

    loaded = sweep.load_study(study)
    specs = sweep.plan(CONFIG, sweep.make_cells(loaded["grid"]), [0, 1], TINY, "tiny", out)
    capsys.readouterr()
    sweep.check_study(loaded, study, CONFIG, specs)
    assert capsys.readouterr().out == "warning: 2 seed(s) per cell: fewer than 3, so report.md gives no confidence interval\n"
    lines = protocol_report([(sp, open_run(sp.path)) for sp in specs], loaded["protocol"], tmp_path,
                            {sp.cell.name: sp.cell for sp in specs}, [0, 1], 0.0)
    text = "\n".join(lines)
    assert "fewer than 3, so no confidence interval is given" in text
    assert " [" not in text.split("| model-unet | 2 |")[1].split("\n")[0]  # mean ± std, no [lo, hi]


def test_train_fraction_of_synthetic_data_is_a_seeded_random_subset_not_the_first_frames():
    from sandbox import build_data, load_config

    def indices(fraction, seed=0):
        cfg = load_config(CONFIG, ["data.num_train=160", f"data.train_fraction={fraction}", f"seed={seed}"])
        train = build_data(cfg, ("train",))["train"]
        return train.indices, len(train)

    tenth, n = indices(0.1)
    assert n == 16 and tenth != list(range(16))
    # the first 16 frames are 2 dance sequences of 8 (data.seq_len); a random 16 of 160 touch many more
    assert len({i // 8 for i in tenth}) >= 6
    assert indices(0.1) == (tenth, 16) and indices(0.1, seed=1)[0] != tenth  # seeded
    assert set(indices(0.05)[0]) <= set(tenth)  # a smaller fraction keeps a subset of a larger one
    assert len(build_data(load_config(CONFIG, ["data.num_train=160"]), ("train",))["train"]) == 160


def test_select_on_a_val_metric_sets_the_monitor_and_its_direction():
    from sandbox.analysis.study import protocol_overrides

    assert protocol_overrides({"select_on": "val"}) == []  # the config's train.monitor
    assert protocol_overrides({"select_on": "val/iou"}) == ["train.monitor=val/iou", "train.monitor_mode=max"]
    assert protocol_overrides({"select_on": "val/depth_l1"}) == ["train.monitor=val/depth_l1",
                                                                 "train.monitor_mode=min"]


@pytest.mark.slow  # 2 runs of 2 one-step epochs at 16 px + their sample evaluation: ~20-40 s on the shared 2 cores
def test_tiny_generative_families_study_reports_sample_metrics_and_na_for_dcgans_probe(tmp_path, monkeypatch):
    """Two families of configs/studies/generative_families.yaml (DCGAN, flow) at 16 px, 1 seed: each run
    scored once from checkpoints/best on TEST (eval/test.json) from noise that is not the per-epoch samples'
    (which a GAN's epoch may be picked by), report.md with kid_own, precision, recall, the probe R² (flow:
    its inverted noise; DCGAN: n/a, not 0) and the seconds per 100 samples."""
    import csv
    import json

    import sandbox.analysis.probe as probe

    seeds_used = []
    real_probe_run = probe.probe_run

    def recording(cfg, *a, **kw):
        seeds_used.append((cfg.seed, kw.get("noise_seed")))
        return real_probe_run(cfg, *a, **kw)

    monkeypatch.setattr(probe, "probe_run", recording)

    flat = ["model.t_sampling=null", "model.sampler=null", "model.sample_steps=null"]
    study = write_study(
        tmp_path / "fam.yaml", config=str(ROOT / "configs/flow_attractors.yaml"),
        grid={"family": {"dcgan": {"model.name": "dcgan", "model.latent_dim": 8, "model.norm": "batch",
                                   "model.d_norm": "none", "model.ema": 0.99, "train.optimizer": "adam",
                                   "model.attention": None, "model.block": "plain",  # the flow recipe's net
                                   **{k.split("=")[0]: None for k in flat}},
                         "flow": {"model.name": "flow"}}},
        overrides=["data.size=16", "data.num_train=8", "data.num_val=8", "data.num_test=8", "data.batch_size=8",
                   "model.widths=null", "model.width=4", "model.depth=2", "model.sample_steps=2", "train.epochs=2",
                   "train.scheduler=none",
                   "train.fid_samples=0", "train.probe_samples=0", "train.num_images=0", "track.wandb=disabled",
                   "train.mixed_precision=no", "train.threads=1"],
        primary="test/kid_own", report_on="test", seeds=[0], reach=None, compare=[["dcgan", "flow"]],
        metrics=["test/precision", "test/recall", "test/hf_log_ratio", "test/probe_r2_kernel", "test/sample_time_per_100"],
        sample_eval={"samples": 8, "fit": 8})
    out = tmp_path / "out"
    sweep_main(["--study", study, "--out-dir", str(out), "--in-process"])
    runs = out / "fam"
    for cell in ("family-dcgan", "family-flow"):
        ev = json.loads((runs / f"{cell}_s0" / "eval" / "test.json").read_text())
        assert ev["samples"] == 8 and ev["n"] == 8 and ev["checkpoint"].endswith("best") and ev["epoch"] == 2
        assert ev["means"]["sample_time_per_100"] > 0 and -1 < ev["means"]["kid_own"] < 10
        assert 0 <= ev["means"]["precision"] <= 1 and 0 <= ev["means"]["recall"] <= 1
        assert ev["means"]["spectral_l1"] > 0 and math.isfinite(ev["means"]["hf_log_ratio"])
    assert "probe_r2_kernel" not in json.loads((runs / "family-dcgan_s0/eval/test.json").read_text())["means"]
    # both scorings drew their samples from other noise than the trainer's fixed per-epoch noise (seed 0)
    assert len(seeds_used) == 2 and all(n is not None and n != s for s, n in seeds_used)
    recs = {r["cell"]: r for r in csv.DictReader(open(runs / "report_runs.csv"))}
    # the DCGAN logs no val/loss (the monitor): checkpoints/best and the report both take its last epoch
    assert recs["family-dcgan"]["selected epoch"] == "2" and recs["family-dcgan"]["test/probe_r2_kernel"] == ""
    assert float(recs["family-flow"]["test/probe_r2_kernel"]) <= 1 and float(recs["family-flow"]["train_s"]) > 0
    report = (runs / "report.md").read_text()
    assert "Primary metric **test/kid_own**" in report and "fresh noise" in report and "sample_time_per_100" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| family-dcgan | 1 |"))
    header = next(ln for ln in report.splitlines() if ln.startswith("| cell | seeds |"))
    cols = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cols["test/probe_r2_kernel"] == "n/a" and cols["test/kid_own"] not in ("n/a", "")
    assert "torch thread" in report and "train s / run" in report
    # hf_log_ratio is signed (below 0 blur, above 0 noise): the best cell is the one closest to 0, not the largest
    hf = {r["cell"]: float(r["test/hf_log_ratio_mean"]) for r in csv.DictReader(open(runs / "report.csv"))}
    closest = min(hf, key=lambda c: abs(hf[c]))
    assert f"test/hf_log_ratio (closest to 0 is best): {closest} " in report
    comp = {c["metric"]: c for c in csv.DictReader(open(runs / "comparisons.csv"))}
    assert comp["test/probe_r2_kernel"]["verdict"] == "n/a (family-dcgan: no test/probe_r2_kernel)"


@pytest.mark.parametrize("path", sorted((ROOT / "configs/studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_committed_study_passes_its_checks_and_reports_on_test(path, tmp_path):
    """What sweep.py checks before training (keys, protocol, every cell's config, the metrics each cell
    produces on the report split) holds for every study file, and each selects on val and reports on test."""
    from sandbox.analysis.sweep import check_study, load_study, make_cells, plan, study_overrides

    study = load_study(str(path))
    cells = make_cells(study["grid"])
    specs = plan(str(ROOT / study["config"]), cells, study.get("seeds", 1), study_overrides(study), path.stem,
                 tmp_path)
    check_study(study, str(path), str(ROOT / study["config"]), specs)
    protocol = study["protocol"]
    assert protocol["report_on"] == "test" and protocol["select_on"].startswith("val")
    assert len(study["seeds"]) >= 3
