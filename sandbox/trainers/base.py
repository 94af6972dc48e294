"""The one training loop every trainer shares (Accelerate: CPU, one GPU or many).

A trainer subclass supplies:
  * ``configure_optimizers() -> list[(optimizer, scheduler | None)]`` (GAN/AAE return several),
  * ``train_step(batch) -> dict of scalar tensors`` (calls ``self.backward_and_step``),
  * ``evaluate(loader) -> dict of floats`` (per-image values gathered across processes),
  * ``save_images(epoch) -> list of PNG paths`` (panels for the run and for W&B).

The skeleton owns the rest: seeding, threads, the epoch/step loop with gradient
accumulation, data parallelism (DDP, or for ``ddp = False`` trainers gradients averaged in
``backward_and_step``; the multi-process parts are in ``processes.py``), the progress bar
(main process only), logging every ``log_every`` steps and at each epoch's end (values stay
on device in between: no per-step sync), evaluation every epoch, the
``best``/``last`` checkpoints (atomic, resumable) and the plots.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from sandbox.config import Config, save_config
from sandbox.errors import SandboxError
from sandbox.rundir import WEIGHTS_FILE, RunDir, checkpoint_candidates, commit_checkpoint, read_state
from sandbox.tracking import (MetricsLog, plot_curves, read_metrics, resolve_wandb_mode, start_wandb,
                              truncate_metrics)
from sandbox.trainers import processes
from sandbox.trainers.schedules import make_scheduler, per_epoch

log = logging.getLogger("sandbox")


class CorruptCheckpoint(SandboxError):
    """A checkpoint whose files exist but do not load (truncated, foreign)."""


class EpochShuffle(Sampler):
    """A permutation that is a pure function of ``(seed, epoch)``: resumable and identical on every process.

    With ``keys=True`` it yields ``(epoch, index)`` so that a dataset can derive its
    augmentation randomness from (seed, epoch, index) alone (exact resume, any worker count).
    """

    def __init__(self, n: int, seed: int, keys: bool = False):
        self.n, self.seed, self.epoch, self.keys = n, seed, 0, keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return iter([(self.epoch, i) for i in order] if self.keys else order)

    def __len__(self) -> int:
        return self.n


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return out


def resolve_mixed_precision(setting: str, cpu: bool) -> str:
    """``auto``: what ``accelerate launch --mixed_precision`` asked for, else bf16 where the device
    has fast bf16 (measured ~1.9x on 2-core CPUs, see DESIGN.md), else fp32 (``no``)."""
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched in ("fp16", "bf16"):
        return launched
    if cpu or not torch.cuda.is_available():
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
        except (AttributeError, RuntimeError):
            return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "no"


#: data keys a resumed run may change: they do not change which samples it sees (where the folder
#: is now, the splits build_trainer points a resumed folder run at, caching and loader workers)
RESUME_FREE_DATA_KEYS = ("root", "splits", "cache", "num_workers")


class _DroppedScheduler:
    """Takes a saved LR scheduler's state when a scheduled run is extended with train.scheduler=none."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Trainer:
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
        resume_ckpt = resume_ckpts[0] if resume_ckpts else None
        self.run = RunDir(resume_ckpt.parent.parent if resume_ckpt else Path(cfg.out_dir) / cfg.name)
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
        self.mixed_precision = resolve_mixed_precision(t.mixed_precision, cpu)
        self.wandb_mode = resolve_wandb_mode(cfg.track.wandb)
        self.accelerator = Accelerator(
            mixed_precision=self.mixed_precision, gradient_accumulation_steps=t.grad_accum,
            log_with=None if self.wandb_mode == "disabled" else "wandb", project_dir=str(self.run.path))
        acc = self.accelerator
        if acc.device.type == "cuda":  # fixed input sizes: let cuDNN time its algorithms once per shape
            torch.backends.cudnn.benchmark = True
        processes.create_run_dir(acc, self.run, resume=resume_ckpt is not None)
        self.threads = self._set_threads(t.threads)
        set_seed(cfg.seed)

        self.datasets = datasets
        self._write_splits()
        self.model = model
        if t.sync_bn and acc.num_processes > 1 and acc.device.type == "cuda":  # SyncBatchNorm is GPU-only
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Loaders are sharded first, so an epoch is counted in THIS process's batches.
        self.train_loader = acc.prepare(self._loader(datasets["train"], train=True))
        self.val_loader = acc.prepare(self._loader(datasets["val"], train=False)) \
            if len(datasets.get("val", [])) else None
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
            processes.check_data_parallel(acc, self.kind)
            prepared = [acc.prepare_model(self.model, evaluation_mode=True),  # placed and autocast, not wrapped
                        *[acc.prepare_optimizer(o) for o, _ in self.optimizers]]
            if acc.num_processes > 1:  # as DDP does when it wraps a model
                processes.all_processes(processes.replicated(self.model), "broadcast")
        self.model = prepared[0]
        self.optimizers = [(o, s) for o, (_, s) in zip(prepared[1:], self.optimizers)]
        for _, sched in self.optimizers:  # stepped by us once per optimizer step, saved with the state
            if sched is not None:
                acc.register_for_checkpointing(sched)

        # epoch = completed epochs; batch = batches done in the current epoch (mid-epoch checkpoints),
        # with the running sums needed to finish that epoch's means exactly as if never stopped.
        self.state = {"epoch": 0, "step": 0, "batch": 0, "best": None, "best_epoch": None, "best_loss": None,
                      "wandb_id": None, "elapsed": 0.0, "skipped": 0, "sums": {}, "count": 0,
                      "epoch_sums": {}, "epoch_count": 0, "steps_per_epoch": self.steps_per_epoch}
        if resume_ckpt is not None:
            self._load_newest(resume_ckpts)
            if acc.is_main_process:
                truncate_metrics(self.run.metrics, self.state["epoch"], self.state["step"])
        self.metrics = MetricsLog(self.run.metrics, acc, start_time=time.time() - self.state["elapsed"])
        self.size = self.size_at(self.state["epoch"])

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
        if t.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay)
        elif t.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
        return opt, self.make_scheduler(opt, lr)

    def make_scheduler(self, opt: torch.optim.Optimizer, lr: float):
        """Sized in optimizer steps of this process (see sandbox/trainers/schedules.py)."""
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
                processes.all_processes([p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None],
                                        "mean")
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
        if self.cfg.train.nonfinite == "stop":
            raise SandboxError(f"non-finite loss at {where} ({what}); checkpoints/last and best hold the last "
                               f"good model; lower train.lr, keep train.clip, or set train.nonfinite=skip")
        self.state["skipped"] += 1
        log.warning("skipped a batch with a non-finite loss at %s (%s); %d skipped so far",
                    where, what, self.state["skipped"])

    # ------------------------------------------------------------------ progressive resizing
    def size_at(self, epoch: int) -> int:
        """The training/evaluation side at ``epoch``: ``data.size_schedule`` (last key <= epoch) or data.size."""
        sched = self.cfg.data.size_schedule
        if not sched:
            return self.cfg.data.size
        keys = [k for k in sorted(sched) if k <= epoch]
        return sched[keys[-1]] if keys else self.cfg.data.size

    def fit_batch(self, batch: dict) -> dict:
        """Resize image-like tensors of ``batch`` to the current size (masks: nearest, the rest: bilinear)."""
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[-1] != self.size:
                if k == "mask":
                    v = torch.nn.functional.interpolate(v, size=(self.size, self.size), mode="nearest")
                else:
                    v = torch.nn.functional.interpolate(v, size=(self.size, self.size), mode="bilinear",
                                                        align_corners=False, antialias=True)
            out[k] = v
        return out

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
    def replicas(self) -> bool:
        """Several processes each holding the whole model without a DDP wrapper (``ddp = False``)."""
        return not self.ddp and self.accelerator.num_processes > 1

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ the loop
    def fit(self, until_epoch: int | None = None) -> dict[str, float]:
        """Train to ``train.epochs`` (or stop after epoch ``until_epoch``; the run stays resumable)."""
        cfg, t, acc = self.cfg, self.cfg.train, self.accelerator
        if acc.is_main_process:
            save_config(cfg, self.run.config)
        self.state["wandb_id"] = start_wandb(
            acc, self.wandb_mode, cfg.track.project, cfg.name, cfg.to_dict(), self.run.path,
            cfg.track.group or (Path(cfg.source).stem if cfg.source else None), cfg.model.name,
            list(cfg.track.tags), cfg.track.entity, self.state["wandb_id"])
        self._banner()
        last_val: dict[str, float] = {}
        if t.resume and self.state["epoch"] >= t.epochs:
            acc.print(f"{self.run.path} has finished its {self.state['epoch']} epochs: nothing to train. To go on, "
                      f"raise train.epochs (with train.scheduler=none if the run has an LR schedule)")
        for epoch in range(self.state["epoch"], min(t.epochs, until_epoch or t.epochs)):
            t0 = time.time()
            self.size = self.size_at(epoch)
            train_means = self._train_epoch(epoch)
            if self.replicas:
                processes.sync_statistics(self.unwrapped)
                processes.check_replicas(acc, self.unwrapped, self.kind, epoch)
            last_val = self.evaluate(self.val_loader) if self.val_loader is not None else {}
            for _, sched in self.optimizers:
                if sched is not None and per_epoch(sched):
                    value = {**train_means, **last_val}.get(t.monitor)
                    if value is not None and math.isfinite(value):
                        sched.step(value)
            self.state["epoch"] = epoch + 1
            self.state["elapsed"] = time.time() - self.metrics.start
            epoch_time = time.time() - t0
            n_images = len(self.train_loader) * self.cfg.data.batch_size * acc.num_processes
            self.metrics.log("val", epoch, self.state["step"], last_val, epoch_time=round(epoch_time, 3),
                             images_per_s=round(n_images / max(epoch_time, 1e-9), 2),
                             **({"skipped_batches": self.state["skipped"]} if self.state["skipped"] else {}))
            improved = self._update_best({**train_means, **last_val}, epoch)
            self._save("last")
            if improved:
                self._save("best")
            if t.keep_last_n:
                self._save(f"epoch_{epoch + 1:03d}")
                self._prune_epochs(t.keep_last_n)
            if acc.is_main_process:
                plot_curves(read_metrics(self.run.metrics), self.run.plots)
                for path in self.save_images(epoch):
                    self.metrics.log_image(f"images/{path.stem.rsplit('_', 1)[0]}", path, self.state["step"],
                                           caption=f"epoch {epoch + 1}")
            self._epoch_line(epoch, train_means, last_val, epoch_time)
        acc.end_training()
        return last_val

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        acc, t, st = self.accelerator, self.cfg.train, self.state
        self.train_loader.set_epoch(epoch)
        self.model.train()
        # resuming mid-epoch: skip the batches already done, restore the running sums
        skip = st["batch"] if st["epoch"] == epoch else 0
        dev = acc.device
        sums = {k: torch.tensor(v, device=dev) for k, v in st["sums"].items()} if skip else {}
        epoch_sums = {k: torch.tensor(v, device=dev) for k, v in st["epoch_sums"].items()} if skip else {}
        count, epoch_count = (st["count"], st["epoch_count"]) if skip else (0, 0)
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        st["batch"] = skip
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True,
                   disable=not acc.is_local_main_process, initial=skip, total=len(self.train_loader))
        for batch in bar:
            with acc.accumulate(self.model):
                scalars = self.train_step(self.fit_batch(batch))
            for k, v in scalars.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
                epoch_sums[k] = epoch_sums[k] + v if k in epoch_sums else v
            count += 1
            epoch_count += 1
            st["batch"] += 1
            if acc.sync_gradients:
                st["step"] += 1
                if st["step"] % t.log_every == 0:
                    self._log_train(epoch, sums, count, bar)
                    sums, count = {}, 0
                if t.checkpoint_every and st["step"] % t.checkpoint_every == 0 and st["batch"] < len(self.train_loader):
                    st.update(sums={k: float(v) for k, v in sums.items()}, count=count,
                              epoch_sums={k: float(v) for k, v in epoch_sums.items()}, epoch_count=epoch_count,
                              elapsed=time.time() - self.metrics.start)
                    self._save("last")
        if sums:  # the steps since the last log line (an epoch shorter than log_every, or its tail)
            self._log_train(epoch, sums, count, bar)
        st.update(batch=0, sums={}, count=0, epoch_sums={}, epoch_count=0)
        return self._reduce_means(epoch_sums, max(epoch_count, 1))

    def _log_train(self, epoch: int, sums: dict[str, torch.Tensor], count: int, bar) -> None:
        means = self._reduce_means(sums, count)
        lr = self.optimizers[0][0].param_groups[0]["lr"]
        self.metrics.log("train", epoch, self.state["step"], {**means, "train/lr": lr})
        bar.set_postfix(loss=f"{means.get('train/loss', float('nan')):.4f}")

    def _reduce_means(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        if not sums:
            return {}
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys]) / max(count, 1)
        vec = self.accelerator.reduce(vec, reduction="mean")
        return {f"train/{k}": float(v) for k, v in zip(keys, vec.tolist())}

    # ------------------------------------------------------------------ best / checkpoints
    def _update_best(self, values: dict[str, float], epoch: int) -> bool:
        t = self.cfg.train
        value = values.get(t.monitor)
        if value is None or not math.isfinite(value):
            if value is None and epoch == 0:
                log.warning("train.monitor=%s is not logged by this trainer (logged: %s); best = last",
                            t.monitor, ", ".join(sorted(values)))
            return value is None
        loss = values.get("val/loss", math.inf)
        if loss is not None and math.isnan(loss):  # a diverged model never becomes best
            return False
        best, best_loss = self.state["best"], self.state["best_loss"]
        sign = 1 if t.monitor_mode == "max" else -1
        better = best is None or sign * (value - best) > 0 or (value == best and loss < (best_loss or math.inf))
        if better:
            self.state.update(best=value, best_epoch=epoch + 1, best_loss=loss)
        return better

    def _prune_epochs(self, keep: int) -> None:
        if not self.accelerator.is_main_process:
            return
        import shutil

        olds = sorted(p for p in self.run.checkpoints.glob("epoch_*") if p.is_dir())
        for p in olds[:-keep]:
            shutil.rmtree(p, ignore_errors=True)

    def _save(self, which: str) -> None:
        acc = self.accelerator
        if self.replicas:
            processes.sync_statistics(self.unwrapped)
        final = self.run.checkpoints / which
        tmp = self.run.checkpoints / f".{which}.tmp"
        if acc.is_main_process and tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        if acc.is_main_process:
            torch.save(self.accelerator.unwrap_model(self.model, keep_torch_compile=False).state_dict(), tmp / WEIGHTS_FILE)
            save_config(self.cfg, tmp / "config.yaml")
            commit_checkpoint(tmp, final, self.state)
        acc.wait_for_everyone()

    def _load_newest(self, candidates: list[Path]) -> None:
        """Load the newest checkpoint that loads; a corrupt one is reported and skipped."""
        for i, ckpt in enumerate(candidates):
            try:
                self._load(ckpt)
                return
            except CorruptCheckpoint as exc:
                if i + 1 == len(candidates):
                    raise SandboxError(str(exc)) from None
                log.warning("%s; falling back to %s", exc, candidates[i + 1])

    def _load(self, ckpt: Path) -> None:
        from sandbox.config import read_yaml

        saved_cfg = read_yaml(ckpt / "config.yaml") if (ckpt / "config.yaml").exists() else {}
        # Another model or other data is another experiment: config.yaml, metrics and best would mix two.
        now_cfg = self.cfg.to_dict()
        kept = (("model", "with a different model", ()), ("data", "on other data", RESUME_FREE_DATA_KEYS))
        for section, what, free in kept:
            saved, now = saved_cfg.get(section, {}), now_cfg[section]
            diff = [f"{section}.{k}: {saved[k]!r} there, {now[k]!r} here"
                    for k in now if k in saved and k not in free and saved[k] != now[k]]
            if diff:
                raise SandboxError(f"checkpoint {str(ckpt)!r} was trained {what} ({', '.join(diff)}); resume with "
                                   f"the run's own config: python sandbox/train.py --resume {self.run.path}")
        # A step-shaped LR schedule is sized by the run length: a resumed run must keep it, or
        # the restored scheduler would silently follow the old plan (or stop short of the new one).
        saved_train = saved_cfg.get("train", {})
        shaping = ("epochs", "scheduler", "lr", "warmup_frac", "grad_accum")
        try:
            saved_state = read_state(ckpt)
        except (OSError, ValueError) as exc:
            raise CorruptCheckpoint(f"checkpoint {str(ckpt)!r} has no readable trainer state ({exc})") from None
        if self.cfg.train.scheduler != "none":
            changed = [f"train.{k}: {saved_train[k]!r} there, {getattr(self.cfg.train, k)!r} here"
                       for k in shaping if k in saved_train and saved_train[k] != getattr(self.cfg.train, k)]
            planned = saved_state.get("steps_per_epoch")
            if planned not in (None, self.steps_per_epoch):
                changed.append(f"{planned} optimizer steps per epoch and process there, {self.steps_per_epoch} here "
                               f"(another number of processes?)")
            if changed:
                raise SandboxError(
                    f"checkpoint {str(ckpt)!r} was planned with a different LR schedule ({'; '.join(changed)}); "
                    f"resume with the run's own settings, or use train.scheduler=none to extend it")
        else:  # extending a scheduled run: its saved scheduler states have nothing to go into now
            have = sum(s is not None for _, s in self.optimizers) + getattr(self, "_dropped", 0)
            for _ in range(len(list(ckpt.glob("custom_checkpoint_*.pkl"))) - have):
                self.accelerator.register_for_checkpointing(_DroppedScheduler())
                self._dropped = getattr(self, "_dropped", 0) + 1
        try:
            self.accelerator.load_state(str(ckpt))
        except Exception as exc:  # a torn or foreign file: say which checkpoint, not where in torch
            raise CorruptCheckpoint(f"checkpoint {str(ckpt)!r} could not be loaded ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]})") from None
        self.state.update(saved_state)
        self.state.pop("files", None)
        self.state["steps_per_epoch"] = self.steps_per_epoch
        log.info("resumed from %s at epoch %d, step %d", ckpt, self.state["epoch"], self.state["step"])

    # ------------------------------------------------------------------ plumbing
    def _write_splits(self) -> None:
        """Folder data: the file lists of each split go to runs/<name>/splits/ (reusable as data.splits)."""
        from sandbox.data import splits_of
        from sandbox.data.splits import write_splits

        lists = splits_of(self.datasets["train"])
        if lists is None or not self.accelerator.is_main_process:
            return
        if self.run.splits.exists() and self.cfg.train.resume:
            return  # build_trainer already pointed data.splits at them
        write_splits(lists, self.run.splits)

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        d = self.cfg.data
        workers = d.num_workers
        keys = bool(getattr(ds, "epoch_keys", False))
        return DataLoader(ds, batch_size=d.batch_size,
                          sampler=EpochShuffle(len(ds), self.cfg.seed, keys) if train else None,
                          # its own generator: each new iterator draws a base seed, which must not
                          # come from the global RNG (a resumed run creates one more iterator)
                          generator=torch.Generator().manual_seed(self.cfg.seed),
                          shuffle=False, num_workers=workers, collate_fn=collate, drop_last=train and len(ds) > d.batch_size,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)

    def _set_threads(self, threads: int) -> int:
        if self.accelerator.device.type != "cpu":
            return torch.get_num_threads()
        if threads == 0:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:
                cores = os.cpu_count() or 1
            # processes on THIS machine (torchrun sets LOCAL_WORLD_SIZE; with several machines
            # num_processes counts them all)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.accelerator.num_processes))
            threads = max(1, cores // max(1, local))
        torch.set_num_threads(threads)
        return threads

    def _banner(self) -> None:
        acc = self.accelerator
        n_params = sum(p.numel() for p in self.unwrapped.parameters())
        dev = acc.device.type + (f" x{acc.num_processes} processes" if acc.num_processes > 1 else "")
        threads = f", {self.threads} torch threads" if acc.device.type == "cpu" else ""
        n_train = len(self.datasets["train"])
        acc.print(f"sandbox: {self.cfg.model.name} ({n_params / 1e6:.2f} M params) on {dev}{threads}, "
                  f"precision {self.mixed_precision}, channels_last {self.cfg.train.channels_last} | "
                  f"{self.cfg.data.name} {n_train} train / {len(self.datasets.get('val', []))} val at "
                  f"{self.cfg.data.size} px, batch {self.cfg.data.batch_size} | {self.cfg.train.epochs} epochs x "
                  f"{self.steps_per_epoch} steps | run {self.run.path}")

    def _epoch_line(self, epoch: int, train: dict, val: dict, seconds: float) -> None:
        keys = ["train/loss"] + [k for k in val]
        vals = {**train, **val}
        parts = "  ".join(f"{k} {vals[k]:.4f}" for k in keys if k in vals and not k.startswith("val/loss/"))
        best = self.state["best"]
        best_s = f"  best {self.cfg.train.monitor} {best:.4f} (epoch {self.state['best_epoch']})" if best is not None else ""
        self.accelerator.print(f"epoch {epoch + 1}/{self.cfg.train.epochs}  {parts}{best_s}  {seconds:.1f} s")
