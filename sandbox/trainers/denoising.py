"""The denoising trainer (``ddpm``, ``flow``): the engine's step on the model's loss, the process's objective on
its time-conditioned net (:meth:`~sandbox.models.denoising.DenoisingModel.loss`).

Training step: images ``x`` in [0, 1] become ``x0 = 2x - 1``; ``eps ~ N(0, I)`` and ``t = process.sample_t``
are drawn for the global batch and sliced per process (``Trainer.shard_draw``: P processes x batch B
train as 1 x P*B; ``DenoisingModel.training_pair``); ``(x_t, target, weight) = process.training_pair(x0, eps, t)``; the loss is
``process.loss(net(x_t, t), target, weight)`` in float32 (``train/loss``); after each optimizer step the
EMA copy of the net is updated (with its warm-up, :mod:`sandbox.nn.ema`).

Validation each epoch: ``val/loss`` on the validation split with ``t`` and ``eps`` drawn from a fixed
seed (the same every epoch, so epochs compare), the loss per t-bucket ``val/loss_t0 .. val/loss_t4``
(t in [0, 0.2), ..., [0.8, 1]: where in the noise range the net is still wrong; in
``plots/generative.png``), then ``val/fid_own`` and ``val/diversity`` of samples from fixed noise with
the EMA net (:func:`sandbox.trainers.sampling.sample_metrics`); ``images/samples_epochNNN.png`` from fixed noise.
No ``loss`` section: the objective is the process's.

Conditional runs (``data.condition``): at the start of a run (not a resume: the checkpoint holds them) the
condition embedding's standardisation statistics are set from the training split's conditions, in the net and
its EMA copy; the training loss reads each batch's condition with condition dropout; ``val/loss`` reads the
validation batch's condition with none; the per-epoch samples (grid, ``val/fid_own``) are conditioned on the
validation split's first conditions (:func:`sandbox.trainers.sampling.sample_conditions`), so that they are
compared with the images those conditions describe.
"""
from __future__ import annotations

from pathlib import Path

import torch


from sandbox.data.conditions import conditions_of
from sandbox.metrics.generative import own_features
from sandbox.engine.trainer import Trainer
from sandbox.trainers.sampling import BETA1, generative_plot, sample_grid, sample_metrics

BUCKETS = 5  # t-buckets of the validation loss


class DenoisingTrainer(Trainer):
    """One optimizer on the net; the engine's step on the model's loss (the process's, with the EMA)."""

    kind = "denoising"
    beta1_default = BETA1

    def __init__(self, cfg, model, datasets, loss=None):
        super().__init__(cfg, model, datasets, loss)
        if getattr(self.unwrapped, "conditional", False) and not cfg.train.resume:
            self.unwrapped.set_condition_statistics(conditions_of(datasets["train"]))

    def configure_optimizers(self):
        return [self.make_optimizer(self.model.net.parameters())]

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        acc, m = self.accelerator, self.unwrapped
        self.model.eval()  # the live net: the loss measures what is being trained; samples use the EMA
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        losses, ts, real = [], [], []
        for batch in loader:
            x = self.fit_batch(batch)["image"]
            x_t, t, target, weight = m.training_pair(x, self.shard_draw, g)
            condition = m.batch_condition(batch)  # None for an unconditional model
            keep = None if condition is None else torch.zeros(len(x), dtype=torch.bool)  # no condition dropout
            with acc.autocast():
                pred = m.net(self.to_input(x_t), t, condition, keep)
            values = {"loss": m.per_image_loss(pred.float(), target, weight), "t": t.float(),
                      "features": own_features(x)}
            gathered = acc.gather_for_metrics({k: v.contiguous() for k, v in values.items()})
            losses.append(gathered["loss"])
            ts.append(gathered["t"])
            real.append(gathered["features"])
        self.model.train()
        if not losses:
            return {}
        loss, t = torch.cat(losses), torch.cat(ts)
        out = {"val/loss": float(loss.mean())}
        bucket = (t * BUCKETS).long().clamp(0, BUCKETS - 1)
        for b in range(BUCKETS):
            if (bucket == b).any():
                out[f"val/loss_t{b}"] = float(loss[bucket == b].mean())
        if self.cfg.train.fid_samples:
            out.update(sample_metrics(self, torch.cat(real)))
        return out

    def save_images(self, epoch: int) -> list[Path]:
        return [sample_grid(self, epoch)]

    def extra_plots(self, records: list[dict]) -> None:
        generative_plot(self, records)
