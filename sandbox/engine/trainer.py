"""The one training skeleton every trainer shares (Accelerate: CPU, one GPU or many).

A trainer subclass supplies:
  * ``configure_optimizers() -> list[(optimizer, scheduler | None)]`` (GAN/AAE return several),
  * ``train_step(batch) -> dict of scalar tensors`` (calls ``self.backward_and_step``),
  * ``evaluate(loader) -> dict of floats`` (per-image values gathered across processes),
  * ``save_images(epoch) -> list of PNG paths`` (panels for the run and for W&B).

The skeleton sets up the process (:mod:`.runtime`), the run directory, the loaders, data
parallelism (DDP, or for ``ddp = False`` trainers gradients averaged in ``backward_and_step``;
:mod:`.distributed`), the optimizers' steps with the non-finite policy, and resume
(:mod:`.checkpoint`); the epoch/step loop itself is :mod:`.loop`.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import Dataset

from sandbox.config import Config
from sandbox.data.loader import make_loader, resize_batch, size_at
from sandbox.data.render import fill_cache
from sandbox.engine import distributed
from sandbox.engine.checkpoint import Checkpoints
from sandbox.engine.loop import Loop
from sandbox.engine.optim import make_optimizer, make_scheduler, per_epoch
from sandbox.engine.runtime import make_accelerator, on_cpu, resolve_mixed_precision, set_threads
from sandbox.errors import SandboxError
from sandbox.runs.checkpoints import checkpoint_candidates
from sandbox.runs.rundir import RunDir
from sandbox.runs.warm import warm_start
from sandbox.tracking.metrics_log import MetricsLog, truncate_metrics
from sandbox.tracking.trackers import log_with
from sandbox.tracking.wandb_run import resolve_wandb_mode

log = logging.getLogger("sandbox")


class Trainer(Loop):
    """Shared skeleton; see the module docstring for what subclasses provide."""

    kind = "base"
    #: False for trainers that step optimizers on sub-modules, calling them outside the model's
    #: forward (GAN, AAE): DDP would not see those calls. They get no DDP wrapper; with several
    #: processes the skeleton broadcasts process 0's weights at start, averages each stepped
    #: optimizer's gradients (one flat all-reduce) before clipping and stepping, averages the
    #: running statistics (BatchNorm) before evaluating and saving, and checks every epoch that the
    #: processes still hold the same weights.
    ddp = True

    def __init__(self, cfg: Config, model: torch.nn.Module, datasets: dict[str, Dataset]):
        self.cfg = cfg
        t = cfg.train
        resume_ckpts = checkpoint_candidates(t.resume) if t.resume else []
        self.run = RunDir(resume_ckpts[0].parent.parent if resume_ckpts else Path(cfg.out_dir) / cfg.name)
        self.resume_path = self.run.path  # what a stop message's resume command names (a stage: its staged run)
        self.next_trainer = False  # True: another trainer follows in this process (fit keeps the process group)
        self.mixed_precision = resolve_mixed_precision(t.mixed_precision, on_cpu())
        self.wandb_mode = resolve_wandb_mode(cfg.track.wandb)
        self.accelerator = acc = make_accelerator(self.mixed_precision, t.grad_accum,
                                                  log_with(cfg.track.report_to, self.wandb_mode, self.run.path),
                                                  str(self.run.path))
        if t.init_from and not resume_ckpts:  # weights only, before anything is written for the run
            for line in warm_start(model, t.init_from, t.init_from_strict):
                if acc.is_main_process:
                    log.info("%s", line)
        self.run_lock = distributed.create_run_dir(acc, self.run, resume=bool(resume_ckpts))  # one writer per run
        self.threads, self.governor = set_threads(acc, t.threads)  # threads=0: the governor follows the free cores
        set_seed(cfg.seed)
        self.datasets = datasets
        self._write_splits()
        self._prepare(model, datasets)
        self.checkpoints = Checkpoints(acc, self.run, cfg)
        # epoch = completed epochs; batch = batches done in the current epoch (mid-epoch checkpoints),
        # with the running sums needed to finish that epoch's means exactly as if never stopped.
        self.resave_last = False
        self.state = {"epoch": 0, "step": 0, "batch": 0, "best": None, "best_epoch": None, "best_loss": None,
                      "wandb_id": None, "elapsed": 0.0, "skipped": 0, "sums": {}, "count": 0,
                      "epoch_sums": {}, "epoch_count": 0, "steps_per_epoch": self.steps_per_epoch}
        if resume_ckpts:
            loaded = self.checkpoints.load_newest(resume_ckpts, self.state, self.steps_per_epoch, self.schedulers)
            self.checkpoints.check_best(self.state, loaded)
            # resumed from another checkpoint than last (a torn last, or best saved just before a kill):
            # last is written again first, so that it names where the run stands
            self.resave_last = loaded.name != "last"
            if acc.is_main_process:
                truncate_metrics(self.run.metrics, self.state["epoch"], self.state["step"])
        # the synthetic data is rendered here, in sight, not invisibly inside epoch 1 (after the checks above)
        seconds, rendered = fill_cache(datasets, show=acc.is_local_main_process)
        if rendered and acc.is_main_process:
            log.info("rendered %d synthetic images in %.1f s (cached for every epoch)", rendered, seconds)
        self.metrics = MetricsLog(self.run.metrics, acc, start_time=time.time() - self.state["elapsed"])
        self.size = self.size_at(self.state["epoch"])

    def _prepare(self, model: torch.nn.Module, datasets: dict[str, Dataset]) -> None:
        """Model placement and wrappers, sharded loaders, optimizers and schedulers."""
        acc, t, d = self.accelerator, self.cfg.train, self.cfg.data
        self.model = model
        if t.sync_bn and acc.num_processes > 1 and acc.device.type == "cuda":  # SyncBatchNorm is GPU-only
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Loaders are sharded first, so an epoch is counted in THIS process's batches.
        self.train_loader = acc.prepare(make_loader(datasets["train"], d.batch_size, self.cfg.seed, True,
                                                    d.num_workers))
        self.val_loader = acc.prepare(make_loader(datasets["val"], d.batch_size, self.cfg.seed, False,
                                                  d.num_workers)) if len(datasets.get("val", [])) else None
        self.steps_per_epoch = math.ceil(len(self.train_loader) / t.grad_accum)  # per process
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.compile:
            self.model = torch.compile(self.model)
            if not self.ddp:
                log.warning("train.compile: the %s trainer calls its sub-modules directly, mostly outside the "
                            "compiled forward, so compiling does little or nothing for it", self.kind)
        self.optimizers: list[tuple[torch.optim.Optimizer, Any]] = self.configure_optimizers()
        if self.ddp:
            prepared = acc.prepare(self.model, *[o for o, _ in self.optimizers])
        else:
            distributed.check_data_parallel(acc, self.kind)
            prepared = [acc.prepare_model(self.model, evaluation_mode=True),  # placed and autocast, not wrapped
                        *[acc.prepare_optimizer(o) for o, _ in self.optimizers]]
            if acc.num_processes > 1:  # as DDP does when it wraps a model
                distributed.all_processes(distributed.replicated(self.model), "broadcast")
        self.model = prepared[0]
        # schedulers are stepped by us once per optimizer step and saved by engine/checkpoint.py as plain
        # state dicts (Accelerate's register_for_checkpointing would pickle them, loaded with code)
        self.optimizers = [(o, s) for o, (_, s) in zip(prepared[1:], self.optimizers)]

    # ------------------------------------------------------------------ to override
    def configure_optimizers(self) -> list[tuple[torch.optim.Optimizer, Any]]:
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, loader) -> dict[str, float]:
        raise NotImplementedError

    def save_images(self, epoch: int) -> list[Path]:
        return []

    # ------------------------------------------------------------------ helpers for subclasses
    def make_optimizer(self, params, lr: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
        t = self.cfg.train
        lr = lr or t.lr
        opt = make_optimizer(params, t.optimizer, lr, t.weight_decay, t.momentum)
        return opt, self.make_scheduler(opt, lr)

    def make_scheduler(self, opt: torch.optim.Optimizer, lr: float):
        """Sized in optimizer steps of this process (see sandbox/engine/optim.py)."""
        t = self.cfg.train
        return make_scheduler(opt, t.scheduler, lr, self.total_steps, self.steps_per_epoch, t.warmup_frac,
                              t.cycle_epochs, t.step_epochs, t.gamma, t.monitor_mode)

    def backward_and_step(self, loss: torch.Tensor, index: int = 0, model: torch.nn.Module | None = None,
                          parts: dict[str, torch.Tensor] | None = None) -> bool:
        """Backward, then (when gradients sync) clip, step the optimizer and its scheduler, zero grads.

        A non-finite ``loss`` stops the run naming the step and the culprit loss part
        (``train.nonfinite: stop``) or skips this batch's backward, counted in ``train/skipped``
        (``skip``). Returns False when skipped. The check costs one host sync per step (free on
        CPU); with several processes they agree first, so none is left waiting in all-reduce.
        """
        opt, sched = self.optimizers[index]
        acc = self.accelerator
        finite = torch.isfinite(loss.detach()).float()
        if acc.num_processes > 1:
            finite = acc.reduce(finite, reduction="sum") / acc.num_processes
        if finite.item() < 1:
            self._nonfinite(loss, parts)
            opt.zero_grad(set_to_none=True)
            return False
        acc.backward(loss)
        if acc.sync_gradients:
            if self.replicas:
                distributed.all_processes([p.grad for g in opt.param_groups for p in g["params"]
                                           if p.grad is not None], "mean")
            if self.cfg.train.clip and self.ddp:
                acc.clip_grad_norm_((model or self.model).parameters(), self.cfg.train.clip)
            elif self.cfg.train.clip:  # acc.clip_grad_norm_ unscales EVERY optimizer's gradients (fp16): the
                # AAE's optimizers 0 and 2 share the encoder, whose gradients would be unscaled twice
                acc.unscale_gradients(optimizer=opt)
                torch.nn.utils.clip_grad_norm_((model or self.model).parameters(), self.cfg.train.clip)
            opt.step()
            if sched is not None and not per_epoch(sched) and not opt.step_was_skipped:
                sched.step()
            opt.zero_grad(set_to_none=True)
        return True

    def _nonfinite(self, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None) -> None:
        bad = [f"{k}={float(v):.4g}" for k, v in (parts or {}).items() if not math.isfinite(float(v))]
        what = ", ".join(bad) or f"loss={float(loss):.4g}"
        where = f"epoch {self.state['epoch'] + 1}, step {self.state['step'] + 1}"
        if self.cfg.train.nonfinite == "stop":  # what the checkpoint files hold now, read back, not assumed
            from sandbox.engine.stops import stopped_at

            raise SandboxError(stopped_at(self.run, self.accelerator.num_processes, f"non-finite loss at {where} "
                                          f"({what})", "lower train.lr (keep train.clip)", "train.nonfinite=skip"))
        self.state["skipped"] += 1
        log.warning("skipped a batch with a non-finite loss at %s (%s); %d skipped so far",
                    where, what, self.state["skipped"])

    def size_at(self, epoch: int) -> int:
        """The training/evaluation side at ``epoch``: ``data.size_schedule`` (last key <= epoch) or data.size."""
        return size_at(self.cfg.data.size, self.cfg.data.size_schedule, epoch)

    def fit_batch(self, batch: dict) -> dict:
        """``batch`` at the current size (masks: nearest, the rest: bilinear)."""
        return resize_batch(batch, self.size)

    def shard_draw(self, draw, n: int) -> torch.Tensor:
        """This process's ``n`` rows of ``draw(n * processes)``: noise for a batch that differs between
        processes and, as every process draws the same global batch (same seed), is the noise one
        process would draw for the whole batch, so P processes x batch n train as 1 x P*n."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return draw(n)
        return draw(n * acc.num_processes)[acc.process_index * n:(acc.process_index + 1) * n]

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else x

    @property
    def schedulers(self) -> list:
        """The LR schedulers in use, in optimizer order."""
        return [s for _, s in self.optimizers if s is not None]

    @property
    def replicas(self) -> bool:
        """Several processes each holding the whole model without a DDP wrapper (``ddp = False``)."""
        return not self.ddp and self.accelerator.num_processes > 1

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _write_splits(self) -> None:
        """Folder data: the file lists of each split go to runs/<name>/splits/ (reusable as data.splits)."""
        from sandbox.data import splits_of
        from sandbox.data.splits import write_splits

        lists = splits_of(self.datasets["train"])
        if lists is None or not self.accelerator.is_main_process:
            return
        if self.run.splits.exists() and self.cfg.train.resume:
            return  # the resumed config already points data.splits at them
        write_splits(lists, self.run.splits)
