"""metrics.jsonl counts epochs from 1; files of earlier versions (from 0) read and resume alike."""
import json

from sandbox.tracking.metrics_log import read_metrics, truncate_metrics


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_old_files_counting_from_zero_read_from_one(tmp_path):
    old = [{"split": "train", "epoch": 0, "step": 1}, {"split": "val", "epoch": 0, "step": 1},
           {"split": "train", "epoch": 1, "step": 2}, {"split": "val", "epoch": 1, "step": 2}]
    write(tmp_path / "m.jsonl", old)
    assert [r["epoch"] for r in read_metrics(tmp_path / "m.jsonl")] == [1, 1, 2, 2]
    new = [{**r, "epoch": r["epoch"] + 1} for r in old]
    write(tmp_path / "n.jsonl", new)
    assert read_metrics(tmp_path / "n.jsonl") == new  # already from 1: untouched


def test_truncate_keeps_the_completed_epochs_and_renumbers_an_old_file(tmp_path):
    old = [{"split": "train", "epoch": 0, "step": 1}, {"split": "val", "epoch": 0, "step": 1},
           {"split": "train", "epoch": 1, "step": 2}, {"split": "val", "epoch": 1, "step": 2}]
    write(tmp_path / "m.jsonl", old)
    dropped = truncate_metrics(tmp_path / "m.jsonl", epoch=1, step=1)  # resuming after epoch 1, step 1
    assert dropped == 2
    raw = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in raw] == [("train", 1), ("val", 1)]  # on disk from 1 now
    write(tmp_path / "n.jsonl", [{**r, "epoch": r["epoch"] + 1} for r in old])
    assert truncate_metrics(tmp_path / "n.jsonl", epoch=2, step=2) == 0
