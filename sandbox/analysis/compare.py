"""Comparing trained runs: the table, curves and every run's predictions on the same inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sandbox.analysis.measure import count_params, flops_per_image
from sandbox.analysis.reports import Run, check_same_kind, metric_mode, run_stats, write_csv
from sandbox.analysis.tables import format_table
from sandbox.analysis.class_prediction import class_scores
from sandbox.build import build_data, target_classes
from sandbox.data.classes import colors
from sandbox.data.loader import collate
from sandbox.errors import SandboxError
from sandbox.metrics import hard_dice
from sandbox.runs.inference import forward
from sandbox.runs.load import load_run
from sandbox.viz.curves import plot_groups
from sandbox.viz.grids import draw_panels
from sandbox.viz.panels import class_map_rgb, error_overlay, to_hwc


def load_models(runs: list[Run], kind: str) -> list:
    """Each run's ``checkpoints/best`` model in eval mode (via :func:`sandbox.runs.load.load_run`); segmentation
    runs need a mask head unless they segment a class map (dancers' parts: :func:`class_target`)."""
    need = ("mask",) if kind == "segmentation" and class_target(runs[0]) is None else ()
    return [load_run(r.path, "best", need=need)[1] for r in runs]


def class_target(run: Run) -> tuple[str, tuple] | None:
    """``(target, its classes)`` for a segmentation run without a mask head that predicts a class map (the
    first such target in loss order, e.g. dancers' ``parts``); None for a run with a mask (its grid is the
    binary one)."""
    if "mask" in run.cfg.loss:
        return None
    classes = target_classes(run.cfg)
    target = next((t for t in run.cfg.loss if t in classes), None)
    return (target, classes[target]) if target is not None else None


def measure_row(run: Run, model) -> dict[str, Any]:
    size, m = run.cfg.data.size, run.cfg.model
    try:
        gflops = flops_per_image(model, size, m.in_channels) / 1e9
    except (RuntimeError, SandboxError):  # a model that does not take images (a GAN generator takes codes)
        gflops = None
    return {"params": count_params(model)[0], "gflops": gflops}


def prediction_grid(runs: list[Run], models: list, kind: str, path: Path, batch: dict) -> Path:
    """The same validation inputs (``batch``, see :func:`val_batch`) through every model:
    segmentation: input | truth | per run the errors (TP green, FP red, FN blue) with its Dice;
    generative: input | per run the reconstruction ``decode(encode(x))``. Each model sees the
    inputs at its own ``data.size``; outputs are resized back for display."""
    x, side = batch["image"], batch["image"].shape[-1]
    cols = ["input"] + (["truth"] if kind == "segmentation" else []) + [r.label for r in runs]
    panels = [[(to_hwc(img), None, "")] for img in x]  # (picture, colour map, caption)
    target = class_target(runs[0]) if kind == "segmentation" else None
    if target is not None:  # class maps: truth and each run's argmax in the fixed class colours, with mIoU
        return _class_grid(runs, models, target, panels, cols, batch, path)
    if kind == "segmentation":
        for i, row in enumerate(panels):
            row.append((batch["mask"][i, 0].numpy(), "gray", ""))
    for run, model in zip(runs, models):
        xin = _resized(x, run.cfg.data.size)
        if kind == "segmentation":
            prob = _resized(torch.sigmoid(forward(model, xin, run.cfg.train.channels_last)["mask"].cpu()), side)
            for i, row in enumerate(panels):
                pred, truth = prob[i, 0].numpy() > 0.5, batch["mask"][i, 0].numpy() > 0.5
                dice = hard_dice(pred, truth)
                row.append((error_overlay(row[0][0], pred, truth), None, f"Dice {dice:.3f}"))
        else:
            recon, what = _reconstruct(model, xin)
            recon = _resized(recon, side)
            for i, row in enumerate(panels):
                row.append((to_hwc(recon[i]), None, what))
    return draw_panels(panels, cols, path)


def _class_grid(runs: list[Run], models: list, target: tuple[str, tuple], panels: list, cols: list[str],
                batch: dict, path: Path) -> Path:
    """:func:`prediction_grid` for class maps: input | truth | per run its predicted classes (logits resized to
    the display size, then argmax) with the image's mIoU (classes present in its truth), in the panels' colours."""
    name, specs = target
    names, palette = [c.name for c in specs], colors(specs)
    truth = batch[name][:, 0].round().long().numpy()
    for i, row in enumerate(panels):
        row.append((class_map_rgb(truth[i], palette), None, ""))
    for run, model in zip(runs, models):
        xin = _resized(batch["image"], run.cfg.data.size)
        logits = _resized(forward(model, xin, run.cfg.train.channels_last)[name].float().cpu(), truth.shape[-1])
        ids = logits.argmax(1).numpy()
        for i, row in enumerate(panels):
            miou = class_scores(ids[i], truth[i], names)["miou"]
            row.append((class_map_rgb(ids[i], palette), None, f"mIoU {miou:.3f}"))
    return draw_panels(panels, cols, path)


def depth_grid(runs: list[Run], models: list, path: Path, batch: dict) -> Path | None:
    """input | depth truth | per run its depth prediction (viridis_r: near = yellow, as in the
    training panels; nearest-neighbour display, so checkerboard artefacts of an upsampling
    show) with its L1 on that image. ``None`` unless every run has a depth head and the data depth."""
    if "depth" not in batch or not all("depth" in r.cfg.loss for r in runs):
        return None
    x, side = batch["image"], batch["image"].shape[-1]
    panels = [[(to_hwc(img), None, ""), (batch["depth"][i, 0].numpy(), "viridis_r", "")] for i, img in enumerate(x)]
    for run, model in zip(runs, models):
        xin = _resized(x, run.cfg.data.size)
        depth = _resized(forward(model, xin, run.cfg.train.channels_last)["depth"].cpu().clamp(0, 1), side)
        for i, row in enumerate(panels):
            l1 = (depth[i, 0] - batch["depth"][i, 0]).abs().mean().item()
            row.append((depth[i, 0].numpy(), "viridis_r", f"depth L1 {l1:.4f}"))
    return draw_panels(panels, ["input", "depth truth"] + [r.label for r in runs], path)


def _resized(x, side: int):
    """``x (B, C, H, W)`` at ``side x side`` (bilinear), or ``x`` itself when it is that size already:
    each model sees the inputs at its own ``data.size``; outputs come back at the display size."""
    return x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def val_batch(runs: list[Run], n: int) -> dict:
    """The first ``n`` validation samples of the first run's data config, collated: the inputs every
    picture of a comparison shares."""
    ds = build_data(runs[0].cfg, ("val",))["val"]
    return collate([ds[i] for i in range(min(n, len(ds)))])


def _reconstruct(model, x) -> tuple:
    """``(decode(encode(x)) in [0, 1], "reconstruction")``; a model without an encoder (GAN) gives
    ``(sample(len(x)) from a fixed seed, "sample")``."""
    with torch.no_grad():
        x = x.to(next(model.parameters()).device)
        try:
            y, what = model.decode(model.encode(x)), "reconstruction"
        except SandboxError:  # e.g. DCGAN: "has no encoder"
            y, what = model.sample(len(x), generator=torch.Generator().manual_seed(0)), "sample"
        y = y.get("image", next(iter(y.values()))) if isinstance(y, dict) else y
    return y.float().clamp(0, 1).cpu(), what

def compare_runs(runs: list[Run], out: Path, metric: str, n_images: int = 4,
                 groups: dict[str, list[Run]] | None = None) -> Path:
    """``out/``: report.md, table.csv, curves_epoch.png, curves_time.png, predictions.png[, depth.png]. ``groups``:
    curves of several runs per line (mean ± std), e.g. a sweep's seeds; default one line per run."""
    kind = check_same_kind(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(runs, kind)
    rows = [{"run": r.label, "model": r.cfg.model.name, **measure_row(r, m), **run_stats(r, metric)}
            for r, m in zip(runs, models)]
    write_csv(rows, out / "table.csv")
    groups = groups or {r.label: [r] for r in runs}
    pics = [plot_groups(groups, out / "curves_epoch.png", "epoch"), plot_groups(groups, out / "curves_time.png", "time")]
    batch = val_batch(runs, n_images)
    pics.append(prediction_grid(runs, models, kind, out / "predictions.png", batch))
    if kind == "segmentation" and (depth := depth_grid(runs, models, out / "depth.png", batch)):
        pics.append(depth)
    else:  # a rerun into the same folder must not keep (and link) another comparison's depth maps
        (out / "depth.png").unlink(missing_ok=True)
    labels = {"epoch_time": "epoch time (s, mean)", "total_time": "total time (s)", "train_time": "train time (s)"}
    lines = [f"# Comparison of {len(runs)} {kind} runs", "",
             "Runs: " + ", ".join(f"`{r.label}` ({r.path})" for r in runs), "",
             f"Best = the epoch with the {'lowest' if metric_mode(runs[0], metric) == 'min' else 'highest'} {metric} "
             "(ties: the lower val/loss, the rule of checkpoints/best); val/* columns are the final epoch's. "
             "Params and GFLOPs (forward, per image) measured on the best checkpoint's model at the run's data.size.", "",
             format_table(rows, labels), ""]
    lines += [f"![{p.stem}]({p.name})" for p in pics]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def default_out(runs: list[Path]) -> Path:
    joined = "_vs_".join(p.name for p in runs)
    if len(joined) > 80:
        import time

        joined = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / "compare" / joined
