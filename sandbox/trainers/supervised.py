"""Supervised trainer: image -> named targets (mask, depth) with a per-target composite loss."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from sandbox.data.loader import collate
from sandbox.engine.trainer import Trainer
from sandbox.losses import CompositeLoss
from sandbox.metrics import hard_dice, regression_metrics, segmentation_metrics
from sandbox.viz.panels import segmentation_panel, to_hwc

BINARY_TARGETS = ("mask",)


class SupervisedTrainer(Trainer):
    kind = "segmentation"

    def __init__(self, cfg, model, datasets, loss: CompositeLoss):
        self.loss_fn = loss
        super().__init__(cfg, model, datasets)

    def configure_optimizers(self):
        return [self.make_optimizer(self.model.parameters())]

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        out = self.model(self.to_input(batch["image"]))
        total, parts = self.loss_fn(out, batch)
        self.backward_and_step(total, parts=parts)
        return {"loss": total.detach(), **{f"loss/{k}": v for k, v in parts.items()}}

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
                if target in BINARY_TARGETS:
                    values.update({f"{target}_{k}" if target != "mask" else k: v
                                   for k, v in segmentation_metrics(out[target], batch[target]).items()})
                else:  # regression target (depth): per-image L1, RMSE and SSIM
                    values.update({f"{target}_{k}": v
                                   for k, v in regression_metrics(out[target], batch[target]).items()})
            gathered = acc.gather_for_metrics({k: v.contiguous() for k, v in values.items()})
            for k, v in gathered.items():
                per_image[k].append(v)
        self.model.train()
        return {f"val/{k}": float(torch.cat(v).mean()) for k, v in per_image.items()}

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
        segmentation_panel(batch, out, path, title=f"{self.cfg.name}: validation, epoch {epoch + 1}")
        if "mask" in out:  # W&B: the images with truth and prediction as toggleable mask overlays
            truths = batch["mask"][:, 0].numpy() > 0.5
            preds = torch.sigmoid(out["mask"][:, 0]).numpy() > 0.5
            self.metrics.log_masks("images/val_masks", [to_hwc(x) for x in batch["image"]], truths, preds,
                                   [f"epoch {epoch + 1}, Dice {hard_dice(p, t):.3f}" for p, t in zip(preds, truths)],
                                   {1: "person" if self.cfg.data.name == "dancers" else "fg"}, self.state["step"])
        return [path]

