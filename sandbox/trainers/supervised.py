"""Supervised trainer: image -> named targets (mask, depth) with a per-target composite loss (the model's
``loss``); its evaluation (per-image metrics, class scores) and validation panels."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sandbox.data.classes import colors
from sandbox.data.loader import collate
from sandbox.engine.trainer import Trainer
from sandbox.losses import CompositeLoss
from sandbox.build import target_classes
from sandbox.metrics import class_metrics, class_scores, hard_dice, regression_metrics, segmentation_metrics
from sandbox.viz.panels import class_ids, class_panel, segmentation_panel, to_hwc

BINARY_TARGETS = ("mask",)


def class_prefix(target: str) -> str:
    """Metric names of a target: ``mask``'s bare (``val/miou``), the others' prefixed (``val/parts_miou``)."""
    return "" if target == "mask" else f"{target}_"


def split_class_scores(cat: dict[str, torch.Tensor], prefix: str, names: list[str]) -> dict[str, float]:
    """``val/<prefix>miou``, ``mdice`` and ``iou_<class>`` from the per-image counts summed over the split:
    mIoU over the classes present in the split's truth (:func:`sandbox.metrics.class_scores`)."""
    sc = class_scores(*(cat[f"{prefix}{k}"].sum(0) for k in ("tp", "fp", "fn")))
    out = {f"val/{prefix}miou": float(sc["miou"]), f"val/{prefix}mdice": float(sc["mdice"])}
    # a class never in this split's truth has no IoU to report (NaN, not a silent 0); said by the data layer
    out.update({f"val/{prefix}iou_{n}": float(sc["iou"][i]) if sc["present"][i] else float("nan")
                for i, n in enumerate(names)})
    return out


class SupervisedTrainer(Trainer):
    """One optimizer on the whole model; the step is the engine's (``model.loss``: the config's composite
    loss on the model's outputs), its parts logged as ``train/loss/<target>/<name>``."""

    kind = "segmentation"
    parts_prefix = "loss/"

    def __init__(self, cfg, model, datasets, loss: CompositeLoss):
        self.classes = target_classes(cfg)  # {target: ClassSpecs} of the class-map targets (K > 1 logits)
        super().__init__(cfg, model, datasets, loss)

    def configure_optimizers(self):
        return [self.make_optimizer(self.model.parameters())]

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Mean over images of per-image metrics, gathered across processes (padding dropped)."""
        acc = self.accelerator
        self.model.eval()
        per_image: dict[str, list[torch.Tensor]] = defaultdict(list)
        for batch in loader:
            batch = self.fit_batch(batch)
            out = self.model(self.to_input(batch["image"]))
            total, parts = self.loss_fn(out, batch)
            n = batch["image"].shape[0]
            values = {"loss": total.detach().float().expand(n), **{f"loss/{k}": v.float().expand(n) for k, v in parts.items()}}
            for target in self.loss_fn.targets:
                if target in self.classes:  # a class map: per-image counts, reduced over the split below
                    m = class_metrics(out[target], batch[target])
                    values.update({f"{class_prefix(target)}{k}": m[k] for k in ("tp", "fp", "fn", "pixel_acc")})
                elif target in BINARY_TARGETS:
                    values.update({f"{target}_{k}" if target != "mask" else k: v
                                   for k, v in segmentation_metrics(out[target], batch[target]).items()})
                else:  # regression target (depth): per-image L1, RMSE and SSIM
                    values.update({f"{target}_{k}": v
                                   for k, v in regression_metrics(out[target], batch[target]).items()})
            gathered = acc.gather_for_metrics({k: v.contiguous() for k, v in values.items()})
            for k, v in gathered.items():
                per_image[k].append(v)
        self.model.train()
        cat = {k: torch.cat(v) for k, v in per_image.items()}
        result = {f"val/{k}": float(v.mean()) for k, v in cat.items() if v.ndim == 1}
        for target, specs in self.classes.items():
            if target in self.loss_fn.targets:
                result.update(split_class_scores(cat, class_prefix(target), [s.name for s in specs]))
        return result

    @torch.no_grad()
    def predict_panel(self, n: int) -> tuple[dict, dict]:
        ds = self.datasets["val"]
        batch = self.fit_batch(collate([ds[i] for i in range(min(n, len(ds)))]))
        model = self.unwrapped
        was_training = model.training
        model.eval()
        with self.accelerator.autocast():
            out = model(self.to_input(batch["image"].to(self.accelerator.device)))
        model.train(was_training)
        return batch, {k: v.float().cpu() for k, v in out.items()}

    def save_images(self, epoch: int) -> list[Path]:
        if not self.cfg.train.num_images or "val" not in self.datasets:
            return []
        batch, out = self.predict_panel(self.cfg.train.num_images)
        path = self.run.images / f"val_epoch{epoch + 1:03d}.png"
        title = f"{self.cfg.name}: validation, epoch {epoch + 1}"
        shown = [t for t in self.classes if t in out]
        if shown:  # class maps: one panel per class target, with the fixed colour legend
            paths = []
            for t in shown:
                specs = self.classes[t]
                p = path.with_name(f"val_{t}_epoch{epoch + 1:03d}.png") if t != "mask" else path
                paths.append(class_panel(batch, out, t, [s.name for s in specs], colors(specs), p, title))
                preds = [class_ids(o) for o in out[t]]
                truths = [np.clip(class_ids(b), 0, None) for b in batch[t]]
                self.metrics.log_masks(f"images/val_{t}", [to_hwc(x) for x in batch["image"]], truths, preds,
                                       [f"epoch {epoch + 1}" for _ in preds],
                                       {i: s.name for i, s in enumerate(specs) if i}, self.state.step)
            return paths
        segmentation_panel(batch, out, path, title=title)
        if "mask" in out:  # W&B: the images with truth and prediction as toggleable mask overlays
            truths = batch["mask"][:, 0].numpy() > 0.5
            preds = torch.sigmoid(out["mask"][:, 0]).numpy() > 0.5
            self.metrics.log_masks("images/val_masks", [to_hwc(x) for x in batch["image"]], truths, preds,
                                   [f"epoch {epoch + 1}, Dice {hard_dice(p, t):.3f}" for p, t in zip(preds, truths)],
                                   {1: "person" if self.cfg.data.name == "dancers" else "fg"}, self.state.step)
        return [path]

