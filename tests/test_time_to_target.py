"""bench/time_to_target.py: the first crossing of a target in a metrics list, and runs of a tiny dancers config
(32 px, 16 images) that reach a target at epoch 1, never reach one, or run out of budget. No timing is judged:
only that the seconds are the run's own start-up plus the log time of the crossing record."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from sandbox.tracking.metrics_log import read_metrics

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("time_to_target", BENCH / "time_to_target.py")
ttt = importlib.util.module_from_spec(spec)
sys.modules["time_to_target"] = ttt  # bench/ is not a package: loaded from its file, as `python bench/...` does
spec.loader.exec_module(ttt)

TINY = ["data.size=32", "data.num_train=16", "data.num_val=8", "data.num_test=0", "data.batch_size=8",
        "model.width=4", "model.depth=2", "train.epochs=3", "train.num_images=0", "train.mixed_precision=no",
        "train.threads=1", "train.scheduler=none"]

# hand-written records: a train line (no val/dice), a NaN (written as text, never a crossing), then 0.91, 0.95
RECORDS = [{"split": "train", "epoch": 1, "step": 5, "time": 1.0, "train/loss": 0.9},
           {"split": "val", "epoch": 1, "step": 5, "time": 2.0, "val/dice": 0.5},
           {"split": "val", "epoch": 2, "step": 10, "time": 4.0, "val/dice": "nan"},
           {"split": "val", "epoch": 3, "step": 15, "time": 6.0, "val/dice": 0.91},
           {"split": "val", "epoch": 4, "step": 20, "time": 8.0, "val/dice": 0.95}]


def test_first_crossing_on_a_hand_written_history():
    hit = ttt.first_crossing(RECORDS, "val/dice", 0.9, "max")
    assert hit == {"reached": True, "epoch": 3, "time": 6.0, "value": 0.91, "best": 0.91, "best_epoch": 3,
                   "evaluations": 2}
    assert ttt.first_crossing(RECORDS, "val/dice", 0.91, "max")["epoch"] == 3  # reached at equality
    assert ttt.first_crossing(RECORDS, "val/dice", 0.3, "max")["epoch"] == 1
    miss = ttt.first_crossing(RECORDS, "val/dice", 0.96, "max")
    assert miss == {"reached": False, "epoch": None, "time": None, "value": None, "best": 0.95, "best_epoch": 4,
                    "evaluations": 3}
    assert ttt.first_crossing(RECORDS, "val/dice", 0.5, "min")["epoch"] == 1  # lower is better: 0.5 <= 0.5
    low = ttt.first_crossing(RECORDS, "val/dice", 0.4, "min")
    assert not low["reached"] and (low["best"], low["best_epoch"]) == (0.5, 1)
    assert ttt.first_crossing(RECORDS, "val/iou", 0.0, "max")["evaluations"] == 0


def test_the_median_counts_a_seed_that_did_not_reach_as_infinite():
    row = lambda s: {"reached": s is not None, "seconds": s}  # noqa: E731
    assert ttt.median_seconds([row(10.0), row(20.0), row(None)]) == 20.0
    assert ttt.median_seconds([row(30.0), row(None), row(None)]) is None  # 2 of 3 never reached: no median
    assert ttt.median_seconds([row(30.0), row(10.0)]) == 20.0
    assert ttt.median_seconds([]) is None


def test_read_records_leaves_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n" + '{"split": "va')
    assert ttt.read_records(path) == RECORDS[:2]
    assert ttt.read_records(tmp_path / "absent.jsonl") == []


def test_targets_parse_by_name_and_value():
    dancers, flow = ttt.parse_targets("dancers,flow@0.02")
    assert (dancers.config, dancers.metric, dancers.value, dancers.mode) == ("configs/unet_dice.yaml", "val/dice",
                                                                            0.9, "max")
    assert (flow.metric, flow.value, flow.mode) == ("val/kid_own", 0.02, "min")
    with pytest.raises(SystemExit, match="unknown target 'mnist'"):
        ttt.parse_targets("mnist")
    with pytest.raises(SystemExit, match="must be a number"):
        ttt.parse_targets("dancers@high")


def test_set_overrides_apply_to_every_target_or_to_the_one_named():
    dancers, flow = ttt.parse_targets("dancers,flow")
    sets = ["train.threads=2", "flow:train.fid_samples=128", "dancers:data.size=64", "data.root=/x:y"]
    assert ttt.overrides_for(dancers, sets) == ["train.threads=2", "data.size=64", "data.root=/x:y"]
    assert ttt.overrides_for(flow, sets) == ["train.threads=2", "train.fid_samples=128", "data.root=/x:y"]


def target(value: float) -> "ttt.Target":
    return ttt.Target("tiny", "configs/unet_dice.yaml", "val/dice", value, "max")


def val_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"]


def test_a_target_reached_at_epoch_one_is_timed_from_process_start_and_stops_the_run(tmp_path):
    # a Dice is >= 0: the target val/dice >= 0 is reached by the first validation, whatever the weights
    row = ttt.run_one(target(0.0), "ours", 0, tmp_path, max_seconds=600, extra=TINY)
    assert row["reached"] and row["ended"] == "target" and row["returncode"] == 0, row.get("log_tail")
    assert row["epoch"] == 1 and row["epochs_run"] == 1  # train.stop_at ended it there (3 epochs configured)
    val = val_records(tmp_path / "tiny_0_ours_s0")
    assert val[0]["stopped_early"].startswith("stopped after epoch 1: val/dice")
    # seconds = start-up (process start -> the metrics clock) + the crossing record's own time
    assert row["seconds"] == pytest.approx(row["startup_s"] + val[0]["time"], abs=0.02)
    assert 0 < row["startup_s"] < row["seconds"] <= row["process_s"]
    assert row["value"] == val[0]["val/dice"] and row["params"] == sum(
        p.numel() for p in _ours_model().parameters())


def _ours_model():
    from sandbox import build_model, load_config

    return build_model(load_config(str(ttt.common.ROOT / "configs/unet_dice.yaml"), TINY))


def test_an_unreachable_target_trains_every_epoch_and_reports_the_best_value(tmp_path):
    row = ttt.run_one(target(1.5), "ours", 1, tmp_path, max_seconds=600, extra=TINY)  # a Dice is <= 1
    assert not row["reached"] and row["seconds"] is None and row["ended"] == "epochs", row.get("log_tail")
    val = val_records(tmp_path / "tiny_1.5_ours_s1")
    assert row["epochs_run"] == 3 == len(val)
    dice = [r["val/dice"] for r in val]
    assert row["best"] == max(dice) and row["best_epoch"] == 1 + dice.index(max(dice))


def test_a_run_past_its_budget_is_stopped_and_not_reached(tmp_path):
    # 1000 epochs of 16 images cannot finish in 3 s from process start (imports alone take seconds)
    row = ttt.run_one(target(1.5), "ours", 0, tmp_path, max_seconds=3, extra=TINY + ["train.epochs=1000"])
    assert row["ended"] == "max-seconds" and not row["reached"] and row["seconds"] is None
    assert row["epochs_run"] < 1000 and row["process_s"] < 60


def test_a_peer_is_trained_by_the_same_trainer_with_its_output_as_the_mask(tmp_path, monkeypatch):
    # a stand-in peer (one 3x3 conv returning a tensor, as smp's Unet does), trained in process by child()
    monkeypatch.setitem(ttt.PEERS, "conv", lambda c: torch.nn.Conv2d(c, 1, 3, padding=1))
    overrides = [f"out_dir={tmp_path}", "name=peer", "seed=3", "track.wandb=disabled", "track.report_to=[]",
                 *TINY, "train.epochs=1"]
    ttt.child({"config": str(ttt.common.ROOT / "configs/unet_dice.yaml"), "overrides": overrides, "peer": "conv"})
    side = json.loads((tmp_path / "peer" / ttt.SIDECAR).read_text())
    assert side["params"] == 3 * 9 + 1 and side["epochs"] == 1
    val = val_records(tmp_path / "peer")
    assert len(val) == 1 and 0 <= val[0]["val/dice"] <= 1 and math.isfinite(val[0]["val/loss"])
    a, b = ttt.build_peer("conv", 3), ttt.build_peer("conv", 3)  # seeded like build_model: equal seeds, equal weights
    assert torch.equal(a.net.weight, b.net.weight) and not torch.equal(a.net.weight, ttt.build_peer("conv", 4).net.weight)
    assert set(a(torch.zeros(2, 3, 8, 8))) == {"mask"}


@pytest.mark.skipif(importlib.util.find_spec("segmentation_models_pytorch") is None,
                    reason="segmentation-models-pytorch not installed (the bench extra)")
def test_the_smp_peer_reaches_a_target_through_the_bench(tmp_path):
    row = ttt.run_one(target(0.0), "smp_unet_r18", 0, tmp_path, max_seconds=600, extra=TINY)
    assert row["reached"] and row["epoch"] == 1 and row["params"] > 1e7, row.get("log_tail")


def test_main_writes_results_with_the_machine_and_skips_a_missing_data_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(ttt.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(ttt, "data_folder", lambda name: None)
    argv = ["--targets", "dancers@0.0,human_seg", "--models", "ours", "--seeds", "0", "--no-wait",
            "--keep-runs", str(tmp_path / "runs"), "--out", "ttt"] + [f"--set={o}" for o in TINY]
    ttt.main(argv)
    res = json.loads((tmp_path / "results" / "ttt.json").read_text())
    (row,) = res["summary"]
    assert row["target"] == "dancers val/dice >= 0" and row["reached"] == "1/1" and row["median_s"] > 0
    assert row["median_s"] == pytest.approx(res["runs"][0]["seconds"], abs=0.05)
    assert "human_seg val/dice >= 0.85" in res["skipped"] and "not found" in res["skipped"]["human_seg val/dice >= 0.85"]
    for key in ("cpu", "cores", "torch", "load_avg"):
        assert key in res["machine"]
    assert "load_before" in res["load"] and res["runs"][0]["threads"] == 1
    md = (tmp_path / "results" / "ttt.md").read_text()
    assert "| dancers val/dice >= 0 | ours |" in md and "skipped human_seg" in md and "Machine:" in md
