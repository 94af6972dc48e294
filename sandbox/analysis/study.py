"""The study protocol: declared up front in the study file, applied to every run, reported with intervals.

    primary: test/dice            # the one metric the study answers with (<report split>/<metric>)
    select_on: val                # checkpoints/best by train.monitor on val (or val/<metric>: that monitor)
    report_on: test               # every finished run is scored there from checkpoints/best (evaluate.py's code;
                                  # generative runs: probe.py's score_run, samples from fresh noise)
    seeds: [0, 1, 2]              # >= 3 for a 95 % confidence interval
    compare: [[model-hourglass, model-unet]]   # pairs (b - a) with a paired test ... or: baseline: model-unet
    metrics: [test/iou, test/boundary_f1]      # reported beside the primary
    reach: {val/dice: 0.7}        # per run: the first epoch (and seconds) at which val/dice reaches 0.7
    sample_eval: {samples: 500, fit: 1000}   # generative runs: samples scored, training images the probe fits on
    resampled: {n_train: 135, n_test: 29}    # seeds re-split one finite data set (a folder): the report uses the
                                  # Nadeau-Bengio corrected t-test with n_test / n_train (required for folder data)

:func:`parse_protocol` checks the keys (one line per error); :func:`check_metrics` checks the metrics
against what each cell's task produces; :func:`evaluate_finished_run` scores one run on the report split
once (a rerun keeps its file); :func:`protocol_report` writes the tables (``report.csv``,
``comparisons.csv``, ``report_runs.csv``) and returns report.md's protocol section.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from sandbox.analysis.evaluation import evaluate_run
from sandbox.analysis.probe import EVAL_KEYS, score_run
from sandbox.analysis.reports import lower_is_better
from sandbox.build import target_classes
from sandbox.config.loading import load_config
from sandbox.data.splits import check_root, resolve_splits
from sandbox.errors import ConfigError
from sandbox.metrics import depth_metrics, segmentation_metrics
from sandbox.models import MODELS
from sandbox.runs.checkpoints import read_state
from sandbox.runs.inference import class_records

PROTOCOL_KEYS = ("primary", "select_on", "report_on", "compare", "baseline", "metrics", "reach", "sample_eval",
                 "resampled")
SPLITS = ("val", "test")
MIN_SEEDS = 3  # for a confidence interval
# metric (as evaluate.py names it) -> the losses that optimise it directly: ranking by it is circular
OPTIMISED_BY = {"dice": ("dice",), "iou": ("jaccard",), "depth_l1": ("l1",), "depth_rmse": ("mse",),
                "depth_ssim": ("ssim", "ms_ssim")}


def parse_protocol(study: dict, path: str, cells: list) -> dict:
    """The study's protocol keys, checked: ``{primary, select_on, report_on, metrics, pairs, reach}``
    (``pairs``: (a, b) cell names). ``cells``: the study's :class:`sandbox.analysis.sweep.Cell` list."""
    primary = study.get("primary")
    if not isinstance(primary, str) or "/" not in primary:
        raise ConfigError(f"{path}: primary: got {primary!r}; a study declares its metric up front, "
                          "e.g. primary: test/dice (<report split>/<metric>)")
    report_on = study.get("report_on", primary.split("/")[0])
    select_on = str(study.get("select_on", "val"))
    if report_on not in SPLITS:
        raise ConfigError(f"{path}: report_on: got {report_on!r}, expected one of {', '.join(SPLITS)}")
    if select_on.split("/")[0] != "val" or select_on.count("/") > 1:
        raise ConfigError(f"{path}: select_on: got {select_on!r}, expected val or val/<metric> (the checkpoint "
                          "is picked on the validation split, never on the split the study reports)")
    metrics = study.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"{path}: metrics: expected a list such as [{report_on}/iou, {report_on}/boundary_f1]")
    for m in [primary, *metrics]:
        if m.split("/")[0] != report_on:
            raise ConfigError(f"{path}: {m}: not on the report split; expected {report_on}/<metric> "
                              f"(report_on: {report_on})")
    reach = study.get("reach", {})
    if not isinstance(reach, dict) or not all(str(k).startswith("val/") and isinstance(v, (int, float))
                                              and not isinstance(v, bool) for k, v in reach.items()):
        raise ConfigError(f"{path}: reach: got {reach!r}, expected {{val/<metric>: threshold}}, e.g. {{val/dice: 0.7}}")
    return {"primary": primary, "select_on": select_on, "report_on": report_on,
            "metrics": list(dict.fromkeys([primary, *metrics])), "pairs": _pairs(study, path, cells), "reach": reach,
            "sample_eval": _sample_eval(study, path), "resampled": _resampled(study, path)}


def _resampled(study: dict, path: str) -> dict | None:
    """``resampled: {n_train: N, n_test: M}``: every seed draws a new split of the same finite data set, so
    two seeds' test sets share images and the plain paired t-test over seeds is optimistic; the report uses
    the Nadeau-Bengio correction with ``n_test / n_train`` (the sizes of one seed's training and test splits,
    as the runs' splits/ hold them). None: the seeds draw independent data (synthetic data sets)."""
    got = study.get("resampled")
    if got is None:
        return None
    if not (isinstance(got, dict) and set(got) == {"n_train", "n_test"} and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in got.values())):
        raise ConfigError(f"{path}: resampled: got {got!r}, expected {{n_train: N, n_test: M}} (one seed's "
                          "training and test split sizes, integers >= 1)")
    return dict(got)


def _sample_eval(study: dict, path: str) -> dict:
    """``sample_eval: {samples: N, fit: M}``: what the evaluation of a generative run scores (N samples
    against the split's images, the latent probe fitted on M training images); a key left out is the run's
    own ``train.fid_samples`` / ``train.probe_samples`` (None here)."""
    got = study.get("sample_eval", {})
    ok = isinstance(got, dict) and set(got) <= {"samples", "fit"} and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in got.values())
    if not ok:
        raise ConfigError(f"{path}: sample_eval: got {got!r}, expected {{samples: N, fit: M}} (integers >= 2: "
                          "samples scored per run, training images the latent probe fits on)")
    return {"samples": got.get("samples"), "fit": got.get("fit")}


def _pairs(study: dict, path: str, cells: list) -> list[tuple[str, str]]:
    """``compare: [[a, b], ...]`` or ``baseline: a`` (every other cell against it), as cell names; a name
    is a cell's full name or, when unique, one of its labels (``unet`` for ``model-unet``)."""
    def find(name: Any) -> str:
        hits = [c.name for c in cells if name == c.name] or [c.name for c in cells if str(name) in c.labels.values()]
        if len(hits) != 1:
            raise ConfigError(f"{path}: compare: {name!r} {'names no cell' if not hits else 'is ambiguous'}; "
                              f"cells: {', '.join(c.name for c in cells)}")
        return hits[0]

    if "compare" in study and "baseline" in study:
        raise ConfigError(f"{path}: give compare: [[a, b], ...] or baseline: <cell>, not both")
    if "baseline" in study:
        base = find(study["baseline"])
        return [(base, c.name) for c in cells if c.name != base]
    pairs = study.get("compare", [])
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ConfigError(f"{path}: compare: got {pairs!r}, expected a list of pairs [[a, b], ...] (b - a is tested)")
    out = [(find(a), find(b)) for a, b in pairs]
    if any(a == b for a, b in out):
        raise ConfigError(f"{path}: compare: a cell paired with itself ({next(a for a, b in out if a == b)})")
    return out


def grid_study(cells: list, cfg) -> dict:
    """The protocol a plain grid sweep reports under (``sweep.py --grid``; ``--quick`` keeps the val-only
    summary): checkpoints picked on val by the config's monitor, every finished run scored on test, per cell
    mean with a 95 % interval over seeds, and each cell against the first in a paired, Holm-adjusted test.
    The primary is the monitor's metric on test where evaluation writes it (a segmentation run's val/dice ->
    test/dice), else the first metric it writes (a generative run: its sample KID)."""
    name = cfg.train.monitor.split("/", 1)[-1]
    have = EVAL_KEYS if MODELS[cfg.model.name].task == "generative" else produced(cfg)
    study = {"title": "grid sweep under the study protocol",
             "primary": f"test/{name if name in have else have[0]}", "select_on": "val", "report_on": "test"}
    if len(cells) > 1:
        study["baseline"] = cells[0].name
    if cfg.data.name == "folder" and cfg.data.splits is None:  # each seed re-splits the folder: corrected test
        d = cfg.data
        split = resolve_splits(check_root(d.root, "data.root"), d.image_dir, d.mask_dir, d.depth_dir, cfg.seed,
                               d.val_fraction, d.test_fraction, d.train_fraction, group_by=d.group_by)
        study["resampled"] = {"n_train": len(split["train"]), "n_test": len(split["test"])}
    study["protocol"] = parse_protocol(study, "--grid", cells)
    return study


def protocol_overrides(protocol: dict) -> list[str]:
    """``select_on: val/<metric>``: that metric picks checkpoints/best (``train.monitor`` and its mode)."""
    sel = protocol.get("select_on", "val")
    if "/" not in sel:
        return []
    return [f"train.monitor={sel}", f"train.monitor_mode={'min' if lower_is_better(sel) else 'max'}"]


def produced(cfg) -> list[str]:
    """What evaluate.py writes for a run of ``cfg`` (asked of the metric functions themselves)."""
    x = torch.zeros(1, 1, 16, 16)
    classes = {t: [c.name for c in specs] for t, specs in target_classes(cfg).items() if t in (cfg.loss or {})}
    binary = not classes or ("mask" in (cfg.loss or {}) and "mask" not in classes)
    names = list(segmentation_metrics(x, x)) if binary else []
    for target, cls in classes.items():  # class maps: the per-image columns (the worst class is a name)
        rec = class_records(torch.zeros(1, len(cls), 16, 16), x, "" if target == "mask" else f"{target}_", cls)[0]
        names += [k for k, v in rec.items() if isinstance(v, float)]
    if "depth" in (cfg.loss or {}) and (cfg.data.name != "folder" or cfg.data.depth_dir):
        names += [f"depth_{k}" for k in depth_metrics(x + 0.5, x + 0.5)]
    return names


def check_metrics(protocol: dict, cell_configs: dict, path: str) -> None:
    """Every metric of the report split is produced by every cell (``{cell name: Config}``); val metrics
    are read from metrics.jsonl and checked when the report is written."""
    folder = [c for c, cfg in cell_configs.items() if cfg.data.name == "folder" and cfg.data.splits is None]
    if folder and not protocol.get("resampled"):  # each seed re-splits one folder: the seeds share images
        raise ConfigError(f"{path}: cell {folder[0]} splits a folder by seed, so the seeds share images; declare "
                          "resampled: {n_train: N, n_test: M} (one seed's split sizes) for the corrected t-test")
    if protocol["report_on"] != "test":
        return
    for cell, cfg in cell_configs.items():
        # generative runs are scored by probe.py's score_run (a model without an encoder reads n/a for the probe)
        have = EVAL_KEYS if MODELS[cfg.model.name].task == "generative" else produced(cfg)
        for m in protocol["metrics"]:
            if m.split("/", 1)[1] not in have:
                raise ConfigError(f"{path}: {m}: not produced by cell {cell} ({cfg.model.name}); its test metrics: "
                                  + ", ".join(f"test/{h}" for h in have))


def eval_file(run: Path, split: str) -> Path | None:
    """The run's ``eval/<split>[_N].json`` from its current checkpoints/best (latest such), or None."""
    best = run / "checkpoints" / "best"
    if not (best / "trainer_state.json").is_file():
        return None
    epoch = read_state(best).get("epoch")
    found = None
    for p in sorted((run / "eval").glob(f"{split}*.json"), key=lambda p: p.stat().st_mtime):
        stem = p.stem[len(split):]
        if stem and not (stem.startswith("_") and stem[1:].isdigit()):
            continue  # a tagged evaluation (eval/test_<tag>.json) is someone else's
        meta = json.loads(p.read_text())
        if Path(str(meta.get("checkpoint", ""))).name == "best" and meta.get("epoch") == epoch:
            found = p
    return found


def generative(run: Path) -> bool:
    """Is the run at ``run`` of a generative model (its config.yaml's ``model.name``)?"""
    return MODELS[load_config(run / "config.yaml").model.name].task == "generative"


def evaluate_finished_run(run: Path, split: str, say=print, sample_eval: dict | None = None) -> bool:
    """Score a finished run on ``split`` from checkpoints/best unless it already was; True if it ran now.
    Segmentation runs: evaluate.py's code; generative runs: their samples and latent probe
    (:func:`sandbox.analysis.probe.score_run`, ``sample_eval``: ``{samples, fit}``, None: the run's own)."""
    if eval_file(run, split) is not None:
        return False
    if generative(run):
        se = sample_eval or {}
        score_run(run, split, se.get("samples"), se.get("fit"))
    else:
        evaluate_run(str(run), "best", split, say=lambda line: None)
    say(f"{run}: evaluated on {split} from checkpoints/best")
    return True


def machine() -> dict[str, Any]:
    """CPU model, cores, torch and Python versions, GPU (if any): where the times were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"cpu": cpu, "cores": cores, "torch": torch.__version__, "python": platform.python_version(), "gpu": gpu}
