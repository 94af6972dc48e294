"""The denoising trainer (``ddpm``, ``flow``): the process's objective on the model's time-conditioned net.

Training step: images ``x`` in [0, 1] become ``x0 = 2x - 1``; ``eps ~ N(0, I)`` and ``t = process.sample_t``
are drawn for the global batch and sliced per process (``Trainer.shard_draw``: P processes x batch B
train as 1 x P*B); ``(x_t, target, weight) = process.training_pair(x0, eps, t)``; the loss is
``process.loss(net(x_t, t), target, weight)`` in float32 (``train/loss``); after each optimizer step the
EMA copy of the net is updated (with its warm-up, :meth:`LatentModel.update_ema`).

Validation each epoch: ``val/loss`` on the validation split with ``t`` and ``eps`` drawn from a fixed
seed (the same every epoch, so epochs compare), the loss per t-bucket ``val/loss_t0 .. val/loss_t4``
(t in [0, 0.2), ..., [0.8, 1]: where in the noise range the net is still wrong; in
``plots/generative.png``), then ``val/fid_own`` and ``val/diversity`` of samples from fixed noise with
the EMA net (:meth:`SamplingTrainer.sample_metrics`); ``images/samples_epochNNN.png`` from fixed noise.
No ``loss`` section: the objective is the process's.
"""
from __future__ import annotations

import torch

from sandbox.nn.ema import update_ema

from sandbox.metrics.generative import own_features
from sandbox.trainers.sampling import SamplingTrainer

BUCKETS = 5  # t-buckets of the validation loss


class DenoisingTrainer(SamplingTrainer):
    kind = "denoising"

    def __init__(self, cfg, model, datasets, loss=None):
        super().__init__(cfg, model, datasets)

    def configure_optimizers(self):
        return [self.optimizer_for(self.model.net.parameters())]

    def pair(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """``(x_t, t, target, weight)`` for images ``x`` in [0, 1]: this process's slice of the global
        batch's draw of ``eps`` and ``t`` (from ``generator``, else the global RNG)."""
        proc, n = self.unwrapped.process, x.shape[0]
        x0 = 2 * x.float() - 1
        eps = self.shard_draw(lambda k: torch.randn((k, *x0.shape[1:]), generator=generator), n).to(x0.device)
        t = self.shard_draw(lambda k: proc.sample_t(k, generator=generator), n).to(x0.device)
        x_t, target, weight = proc.training_pair(x0, eps, t)
        return x_t, t, target, weight

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.unwrapped
        x_t, t, target, weight = self.pair(batch["image"])
        pred = self.model(self.to_input(x_t), t)
        loss = m.process.loss(pred.float(), target, weight)
        if self.backward_and_step(loss, parts={"loss": loss}) and self.accelerator.sync_gradients:
            update_ema(m)
        return {"loss": loss.detach()}

    def per_image_loss(self, pred: torch.Tensor, target: torch.Tensor, weight) -> torch.Tensor:
        """``(B,)``: the process's loss of each image alone (its mean over the batch is the batch loss)."""
        loss = self.unwrapped.process.loss
        one = (lambda i: weight[i:i + 1]) if torch.is_tensor(weight) and weight.ndim else (lambda i: weight)
        return torch.stack([loss(pred[i:i + 1], target[i:i + 1], one(i)) for i in range(len(pred))]).float()

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        acc = self.accelerator
        self.model.eval()  # the live net: the loss measures what is being trained; samples use the EMA
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        losses, ts, real = [], [], []
        for batch in loader:
            x = self.fit_batch(batch)["image"]
            x_t, t, target, weight = self.pair(x, g)
            with acc.autocast():
                pred = self.unwrapped.net(self.to_input(x_t), t)
            values = {"loss": self.per_image_loss(pred.float(), target, weight), "t": t.float(),
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
            out.update(self.sample_metrics(torch.cat(real)))
        return out
