"""Trackers (issue 17): TensorBoard event files through Accelerate, and what the W&B run holds, read back
from the offline run files (tests/wandb_files.py): epoch as the x-axis, the monitored metric summarised
by its best, best/<monitor> and best/epoch, mask overlays, the checkpoint artifact, and evaluate.py /
probe.py / interpolate.py results in the same run's summary without a new history segment."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox import build_trainer, load_config
from sandbox.errors import ConfigError
from sandbox.tracking.metrics_log import read_metrics
from tests import wandb_files as wb
from tests.conftest import ROOT, command

TINY = ["data.size=32", "data.num_train=8", "data.num_val=4", "data.num_test=4", "data.batch_size=4",
        "model.width=4", "model.depth=2", "train.log_every=1", "train.mixed_precision=no", "train.threads=1"]


def train(out: Path, name: str, *extra: str, config: str = "unet_dice.yaml"):
    trainer = build_trainer(load_config(ROOT / "configs" / config, [f"out_dir={out}", f"name={name}", *TINY, *extra]))
    trainer.fit()
    return trainer


def val_records(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "val"]


# ----------------------------------------------------------------------------- TensorBoard

@pytest.mark.real_figures  # plots/lr.png's file size
def test_tensorboard_event_file_holds_the_scalars_at_the_steps_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    train(tmp_path, "tb", "train.epochs=1", "train.num_images=2", "track.report_to=[tensorboard]",
          "track.wandb=offline")
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert not (run / "wandb").exists(), "report_to without wandb must not start W&B"
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    records = read_metrics(run / "metrics.jsonl")
    for key in ("train/loss", "val/loss", "val/dice", "train/lr", "epoch_time"):
        logged = [(r["step"], r[key]) for r in records if key in r]
        got = [(e.step, e.value) for e in ea.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in logged] and np.allclose([v for _, v in got],
                                                                             [v for _, v in logged], rtol=1e-6), key
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2]  # 8 images / batch 4: two steps
    assert [e.step for e in ea.Images("images/val")] == [2]  # the epoch's panel
    assert (run / "plots" / "lr.png").stat().st_size > 1000  # the lr is plotted, not only logged


def test_tensorboard_without_its_package_is_one_line_naming_pip_install(tmp_path, monkeypatch):
    import sandbox.tracking.trackers as trackers

    monkeypatch.setattr(trackers, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match=r"track.report_to: tensorboard .*pip install tensorboard"):
        train(tmp_path, "notb", "train.epochs=1", "track.report_to=[wandb, tensorboard]", "track.wandb=disabled")
    assert not (tmp_path / "notb").exists()  # refused before the run directory is made


def test_report_to_accepts_only_the_tracker_names():
    with pytest.raises(ConfigError, match=r"track.report_to\[0\]: got 'mlflow'.*'wandb', 'tensorboard'"):
        load_config(None, ["track.report_to=[mlflow]"])


# ----------------------------------------------------------------------------- W&B

@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A 2-epoch segmentation run with an offline W&B run and the checkpoint artifact."""
    out = tmp_path_factory.mktemp("wb")
    trainer = train(out, "seg", "train.epochs=2", "train.num_images=2", "track.wandb=offline",
                    "track.log_checkpoints=true")
    return out / "seg", trainer


@pytest.fixture
def seg_copy(seg_run, tmp_path):
    return Path(shutil.copytree(seg_run[0], tmp_path / "seg"))


def test_wandb_plots_val_against_epoch_and_summarises_the_monitor_by_its_best(seg_run):
    run, trainer = seg_run
    (segment,) = wb.segments(run)
    recs = wb.segment_records(segment)
    defs = wb.metric_definitions(recs)
    assert defs["val/*"].step_metric == "epoch" and defs["epoch_time"].step_metric == "epoch"
    assert defs["val/dice"].step_metric == "epoch" and defs["val/dice"].summary.max  # train.monitor_mode: max
    rows = wb.history(recs)
    val = val_records(run)
    val_rows = [r for r in rows if "val/dice" in r]
    # epoch and epoch_time come with every epoch's values, at the step metrics.jsonl has them
    assert [(r["_step"], r["epoch"], r["val/dice"], r["epoch_time"]) for r in val_rows] == \
        [(r["step"], r["epoch"], pytest.approx(r["val/dice"]), pytest.approx(r["epoch_time"])) for r in val]
    summary = wb.summary(recs)
    state = trainer.state.to_dict()
    # the summary ranks the best epoch: max over the epochs, not the last value
    assert summary["val/dice"] == {"max": pytest.approx(max(r["val/dice"] for r in val))}
    assert summary["best/val/dice"] == pytest.approx(state["best"]) and summary["best/epoch"] == state["best_epoch"]


def test_wandb_validation_masks_are_the_truth_and_the_prediction(seg_run):
    run, trainer = seg_run
    (segment,) = wb.segments(run)
    rows = [r for r in wb.history(wb.segment_records(segment)) if "images/val_masks" in r]
    assert [r["epoch"] for r in rows] == [1, 2]
    panel = rows[-1]["images/val_masks"]
    assert panel["count"] == 2 and panel["captions"][0].startswith("epoch 2, Dice ")
    ds = trainer.datasets["val"]
    for i, masks in enumerate(panel["all_masks"]):
        assert set(masks) == {"ground_truth", "prediction"}
        truth = np.asarray(Image.open(segment / "files" / masks["ground_truth"]["path"]))
        assert np.array_equal(truth, (ds[i]["mask"][0].numpy() > 0.5).astype(np.uint8))  # class ids 0/1
        pred = np.asarray(Image.open(segment / "files" / masks["prediction"]["path"]))
        assert set(np.unique(pred)) <= {0, 1}
    assert (run / "images" / "val_epoch002.png").exists()  # the PNG panel stays on disk


def test_log_checkpoints_puts_checkpoints_best_in_a_model_artifact(seg_run):
    run, trainer = seg_run
    (segment,) = wb.segments(run)
    (art,) = wb.kinds(wb.segment_records(segment), "artifact")
    assert art.type == "model" and art.name == f"model-{trainer.state.wandb_id}"
    paths = {e.path for e in art.manifest.contents}
    assert {p.name for p in (run / "checkpoints" / "best").iterdir() if p.is_file()} <= paths
    assert "best" in art.aliases


def test_a_signal_stop_still_writes_the_best_summary(tmp_path, monkeypatch):
    """A SIGTERM/Ctrl-C stop ends the W&B run with best/<monitor> and best/epoch, as a normal end does.
    2 epochs x 2 steps; the signal arrives at step 3 (mid epoch 2), so the best is epoch 1's."""
    import signal

    from sandbox.engine.stops import RunStopped, SignalStop

    monkeypatch.setattr(SignalStop, "agreed", lambda self, acc: signal.SIGTERM if trainer.state.step >= 3 else 0)
    trainer = build_trainer(load_config(ROOT / "configs" / "unet_dice.yaml", [
        f"out_dir={tmp_path}", "name=stop", *TINY, "train.epochs=2", "train.num_images=0", "track.wandb=offline"]))
    with pytest.raises(RunStopped):
        trainer.fit()
    assert trainer.state.step == 3 and trainer.state.best_epoch == 1  # the case under test
    (segment,) = wb.segments(tmp_path / "stop")
    summary = wb.summary(wb.segment_records(segment))
    assert summary["best/val/dice"] == pytest.approx(trainer.state.best) and summary["best/epoch"] == 1


def test_resuming_a_finished_run_opens_no_wandb_segment(seg_copy):
    train(seg_copy.parent, "ignored", "train.epochs=2", "track.wandb=offline", f"train.resume={seg_copy}")
    assert len(wb.segments(seg_copy)) == 1


def test_evaluate_writes_into_the_same_runs_summary_with_a_per_image_table(seg_copy, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--run", str(seg_copy)])
    command("evaluate").main()
    first, second = wb.segments(seg_copy)
    state = json.loads((seg_copy / "checkpoints" / "last" / "trainer_state.json").read_text())
    recs = wb.segment_records(second)
    assert wb.kinds(recs, "run")[0].run_id == state["wandb_id"]  # the same W&B run
    assert wb.history(recs) == []  # summary only: no history row, no new segment at step 0
    summary = wb.summary(recs)
    result = json.loads((seg_copy / "eval" / "test.json").read_text())
    for k, v in result["means"].items():
        assert summary[f"eval/test/{k}"] == pytest.approx(v)
    table = summary["eval/test/images"]
    assert table["_type"] == "table-file" and table["nrows"] == result["n"] == 4
    rows = json.loads((second / "files" / table["path"]).read_text())
    dice = rows["columns"].index("dice")
    assert np.mean([r[dice] for r in rows["data"]]) == pytest.approx(result["means"]["dice"])


def test_define_metrics_takes_the_monitor_direction():
    from sandbox.tracking.wandb_run import define_metrics

    calls = []

    class Run:
        def define_metric(self, name, **kw):
            calls.append((name, kw))

    define_metrics(Run(), "val/loss", "min")
    assert ("val/loss", {"step_metric": "epoch", "summary": "min"}) in calls
    define_metrics(Run(), "train/loss", "min")  # a train metric keeps the step as its x-axis
    assert calls[-1] == ("train/loss", {"step_metric": None, "summary": "min"})


# ----------------------------------------------------------------------------- generative commands

def test_probe_and_interpolate_write_the_summary_without_a_history_segment(tmp_path, monkeypatch, capsys):
    run = tmp_path / "vae"
    build_trainer(load_config(None, [
        f"out_dir={tmp_path}", "name=vae", "model.name=vae", "data.name=attractors", *TINY, "model.latent_dim=4",
        "train.epochs=1", "train.num_images=0", "track.wandb=offline", "loss={image: {mse: 1.0}}",
        "train.monitor=val/loss", "train.monitor_mode=min", "train.fid_samples=0", "train.probe_samples=0"])).fit()
    (trained,) = wb.segments(run)
    defs = wb.metric_definitions(wb.segment_records(trained))
    assert defs["val/loss"].summary.min  # monitor_mode min: the smallest val/loss ranks the run
    monkeypatch.setattr(sys, "argv", ["probe.py", "--run", str(run), "--split", "val", "--samples", "8",
                                      "--fit", "8"])
    command("probe").main()
    monkeypatch.setattr(sys, "argv", ["interpolate.py", "--run", str(run), "--random", "2", "--steps", "2"])
    command("interpolate").main()
    _, probe, interp = wb.segments(run)
    res = json.loads((run / "eval" / "probe_val.json").read_text())
    recs = wb.segment_records(probe)
    assert wb.history(recs) == []
    summary = wb.summary(recs)
    assert summary["probe/val/fid_own_samples"] == pytest.approx(res["fid_own_samples"])
    assert summary["probe/val/probe_trained/linear"] == pytest.approx(res["probe_trained"]["linear"])
    recs = wb.segment_records(interp)
    assert wb.history(recs) == []  # interpolate.py used to log a history row at step 0
    summary = wb.summary(recs)
    assert summary["interpolation/png"]["_type"] == "image-file" and summary["interpolation/gif"]["_type"] == "video-file"


@pytest.mark.slow  # two runs: ~20 s on 2 shared cores
def test_tensorboard_hides_what_a_resumed_run_redoes(tmp_path):
    """Resumed from epoch 1's checkpoint after 2 epochs (as a kill after epoch 2's events but before its
    save would leave it), epoch 2 is logged again: TensorBoard must show each step once, as
    metrics.jsonl does (purge_step), not steps 3 and 4 twice."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    common = ["train.epochs=2", "train.num_images=0", "track.report_to=[tensorboard]", "train.scheduler=none"]
    train(tmp_path, "tb", *common, "train.keep_last_n=2")
    train(tmp_path, "ignored", *common, f"train.resume={run / 'checkpoints' / 'epoch_001'}")
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in ea.Scalars("val/loss")] == [2, 4]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"] == [1, 2, 3, 4]


def test_a_wandb_failure_at_start_leaves_tensorboard_and_the_run_going(tmp_path, monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    import wandb

    def refuse(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", refuse)
    trainer = train(tmp_path, "tbw", "train.epochs=1", "train.num_images=0", "track.report_to=[wandb,tensorboard]",
                    "track.wandb=offline")
    assert "W&B could not start (RuntimeError: no W&B today)" in caplog.text
    assert [t.name for t in trainer.accelerator.trackers] == ["tensorboard"] and trainer.state.wandb_id is None
    assert list((tmp_path / "tbw" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "tbw" / "checkpoints" / "last").is_dir()
