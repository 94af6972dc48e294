"""The one training engine every trainer shares (Accelerate: CPU, one GPU or many), top to bottom in this file.

    fit()                        epochs: train_epoch, then end_epoch (evaluate, best, checkpoints, plots, console)
      train_epoch(epoch)         for each batch: accumulate -> train_step -> running sums -> log, signals, saves
        train_step(batch)        forward + loss via the model (model.loss(batch, step)), then
          backward_and_step()    backward, (average gradients), clip, optimizer step, LR schedule, zero grads
          update_ema(model)      the model's EMA copy, when it keeps one (sandbox/nn/ema.py)

A trainer (sandbox/trainers/) declares only what differs:
  * ``configure_optimizers() -> [(optimizer, scheduler | None)]``: its optimizer layout (GAN/AAE: several),
  * ``train_step(batch)``: the order of its updates, where it is not the single update above,
  * ``evaluate(loader) -> {name: float}`` (per-image values gathered across processes),
  * ``save_images(epoch)`` and ``extra_plots(records)``: its pictures.

Setting up (loaders, wrappers: :mod:`.setup`), the state (:mod:`.state`), checkpoints (:mod:`.checkpoint`),
stops (:mod:`.stops`) and the console (:mod:`.console`) are plainly named calls from here. A SIGTERM/SIGINT
during ``fit`` stops after the optimizer step with ``checkpoints/last`` saved there; a logged training loss
far above its running minimum warns once, or stops the run (``train.diverge_factor``/``diverge_action``).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sandbox.config import Config
from sandbox.config.loading import save_config
from sandbox.data.loader import resize_batch, size_at
from sandbox.data.render import fill_cache
from sandbox.engine import distributed
from sandbox.engine.checkpoint import Checkpoints
from sandbox.engine.console import epoch_line, run_summary
from sandbox.engine.optim import make_optimizer, make_scheduler, per_epoch, regulariser_weight, set_beta1
from sandbox.engine.runtime import make_accelerator, on_cpu, resolve_mixed_precision, set_threads
from sandbox.engine.setup import make_loaders, place, say_banner, shape_model, write_splits
from sandbox.engine.state import TrainerState, update_best, watch_divergence
from sandbox.engine.stops import RunStopped, SignalStop, early_stop, stop_at_target, stop_message, stopped_at
from sandbox.engine.sums import RunningSums
from sandbox.errors import SandboxError
from sandbox.models import MODELS
from sandbox.models.objective import Step
from sandbox.nn.ema import update_ema
from sandbox.runs.checkpoints import checkpoint_candidates
from sandbox.runs.rundir import RunDir
from sandbox.runs.warm import warm_start
from sandbox.tracking.metrics_log import MetricsLog, read_metrics, truncate_metrics
from sandbox.tracking.trackers import finish_trackers, log_with, start_trackers
from sandbox.tracking.wandb_run import resolve_wandb_mode
from sandbox.viz.curves import plot_curves

log = logging.getLogger("sandbox")

# plots/ redraws the whole history with matplotlib (~0.5 s on 2 CPU cores at 100 epochs, growing with the
# epochs): every epoch, a run of many short epochs (500 one-step epochs in the train_fraction study) spends
# more time drawing than training. Drawn when this many seconds have passed, and always at the end.
PLOT_EVERY_S = 30.0


def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class Trainer:
    """The engine; see the module docstring for what a trainer declares."""

    kind = "base"
    #: False for trainers that step optimizers on sub-modules, calling them outside the model's
    #: forward (GAN, AAE): DDP would not see those calls. They get no DDP wrapper; with several
    #: processes the engine broadcasts process 0's weights at start, averages each stepped
    #: optimizer's gradients (one flat all-reduce) before clipping and stepping, averages the
    #: running statistics (BatchNorm) before evaluating and saving, and checks every epoch that the
    #: processes still hold the same weights.
    ddp = True
    #: generative trainers: Adam's beta1 unless ``train.beta1`` says otherwise (and only trainable
    #: parameters are optimized); None: the optimizer as configured
    beta1_default: float | None = None
    parts_prefix = ""  # what the logged names of the model's loss parts start with beyond the model's own

    def __init__(self, cfg: Config, model: torch.nn.Module, datasets: dict[str, Dataset], loss=None):
        self.cfg, self.loss_fn, self.datasets = cfg, loss, datasets
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
        write_splits(acc, datasets, self.run, resumed=bool(t.resume))
        self.train_loader, self.val_loader = make_loaders(acc, cfg, datasets)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / t.grad_accum)  # per process
        self.total_steps = self.steps_per_epoch * t.epochs
        self.model = shape_model(acc, cfg, model, self.ddp, self.kind)
        self.model, self.optimizers = place(acc, self.model, self.configure_optimizers(), self.ddp, self.kind)
        self.unwrapped = acc.unwrap_model(self.model)
        self.replicas = not self.ddp and acc.num_processes > 1  # whole models in several processes, no DDP
        self.to_input = _channels_last if t.channels_last else _as_is
        self.checkpoints = Checkpoints(acc, self.run, cfg)
        self.resave_last, self.state = False, TrainerState(steps_per_epoch=self.steps_per_epoch)
        if resume_ckpts:
            saved = self.state.to_dict()
            loaded = self.checkpoints.load_newest(resume_ckpts, saved, self.steps_per_epoch, schedulers_of(self))
            self.state = TrainerState.from_dict(saved)
            self.checkpoints.check_best(saved, loaded)
            # resumed from another checkpoint than last (a torn last, or best saved just before a kill):
            # last is written again first, so that it names where the run stands
            self.resave_last = loaded.name != "last"
            if acc.is_main_process:
                truncate_metrics(self.run.metrics, self.state.epoch, self.state.step)
        # the synthetic data is rendered here, in sight, not invisibly inside epoch 1 (after the checks above)
        seconds, rendered = fill_cache(datasets, show=acc.is_local_main_process)
        if rendered and acc.is_main_process:
            log.info("rendered %d synthetic images in %.1f s (cached for every epoch)", rendered, seconds)
        self.metrics = MetricsLog(self.run.metrics, acc, start_time=time.time() - self.state.elapsed)
        self.size = size_at(cfg.data.size, cfg.data.size_schedule, self.state.epoch)
        self.plotted_at = -math.inf  # time.monotonic() of the last plots/ redraw

    # ------------------------------------------------------------------ declared by each trainer
    def configure_optimizers(self) -> list[tuple[torch.optim.Optimizer, Any]]:
        raise NotImplementedError

    def evaluate(self, loader) -> dict[str, float]:
        raise NotImplementedError

    def save_images(self, epoch: int) -> list[Path]:
        return []

    def extra_plots(self, records: list[dict]) -> None:
        """More ``plots/`` drawn from the metrics ``records`` with the training curves, so under the same
        throttle (at most every ``PLOT_EVERY_S``, and after the last epoch or a stop); trainers override."""

    # ------------------------------------------------------------------ the run
    def fit(self, until_epoch: int | None = None) -> dict[str, float]:
        """Train to ``train.epochs`` (or stop after epoch ``until_epoch``; the run stays resumable); returns
        the last epoch's validation values.

        A first SIGTERM/SIGINT ends the run after the current optimizer step, with checkpoints/last
        saved at that step, by :class:`~sandbox.engine.stops.RunStopped` (the resume command in its
        message); a second one stops at once. The handlers are there only while ``fit`` runs. The
        run's writer lock is released when it returns or fails."""
        try:
            with SignalStop() as self.signals:
                end = open_run(self, until_epoch)
                last_val: dict[str, float] = {}
                for epoch in range(self.state.epoch, end):
                    started = time.time()
                    self.size = size_at(self.cfg.data.size, self.cfg.data.size_schedule, epoch)
                    train_means = self.train_epoch(epoch)
                    last_val, stopped = self.end_epoch(epoch, end, train_means, started)
                    if stopped:
                        break
                close_run(self)
                return last_val
        finally:
            if self.run_lock is not None:
                self.run_lock.release()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of steps; returns its training means (``train/<key>``). Resuming mid-epoch, it skips
        the batches already done and goes on from the running sums the checkpoint kept."""
        acc, t, st = self.accelerator, self.cfg.train, self.state
        self.train_loader.set_epoch(epoch)
        self.model.train()
        skip = st.batch if st.epoch == epoch else 0
        logged = RunningSums(st.sums, st.count, acc.device) if skip else RunningSums()  # since the last log line
        whole = RunningSums(st.epoch_sums, st.epoch_count, acc.device) if skip else RunningSums()  # the epoch's
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        st.batch = skip
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True,
                   disable=not acc.is_local_main_process, initial=skip, total=len(self.train_loader))
        for batch in bar:
            with acc.accumulate(self.model):  # gradients sync (and optimizers step) every train.grad_accum batches
                scalars = self.train_step(self.fit_batch(batch))
            logged.add(scalars)
            whole.add(scalars)
            st.batch += 1
            if not acc.sync_gradients:
                continue
            st.step += 1
            if self.governor is not None and (change := self.governor.tick()) and acc.is_local_main_process:
                log.info("%s", change)
            if st.step % t.log_every == 0:
                log_train(self, epoch, logged, bar)
                logged = RunningSums()
            # a signal: save here and stop (at the epoch's last step, fit stops after the epoch's saves)
            signum = self.signals.agreed(acc)
            if (signum or (t.checkpoint_every and st.step % t.checkpoint_every == 0)) \
                    and st.batch < len(self.train_loader):
                (st.sums, st.count), (st.epoch_sums, st.epoch_count) = logged.saved(), whole.saved()
                st.elapsed = time.time() - self.metrics.start
                save_checkpoint(self, "last")
                if signum:
                    stop_run(self, signum)
        if logged:  # the steps since the last log line (an epoch shorter than log_every, or its tail)
            log_train(self, epoch, logged, bar)
        st.batch, st.sums, st.count, st.epoch_sums, st.epoch_count = 0, {}, 0, {}, 0
        return whole.means(acc)

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """One update: forward + loss via the model (``model.loss(batch, step)``), then backward, clip,
        optimizer step and LR schedule (:meth:`backward_and_step`), then the model's EMA. Returns the
        scalars to log: ``loss`` and the model's loss parts."""
        t, m = self.cfg.train, self.unwrapped
        step = Step(index=self.state.step, forward=lambda x, *a, **k: self.model(self.to_input(x), *a, **k),
                    draw=self.shard_draw, criterion=self.loss_fn,
                    weight=regulariser_weight(t.beta, t.kl_warmup_frac, self.state.step, self.total_steps))
        total, parts = m.loss(batch, step)
        if self.backward_and_step(total, parts=parts) and self.accelerator.sync_gradients:
            update_ema(m)
        return {"loss": total.detach(), **{self.parts_prefix + k: v for k, v in parts.items()}}

    def backward_and_step(self, loss: torch.Tensor, index: int = 0, model: torch.nn.Module | None = None,
                          parts: dict[str, torch.Tensor] | None = None) -> bool:
        """Backward, then (when gradients sync) clip ``model``'s gradients (default: the whole model), step
        optimizer ``index`` and its scheduler, zero its gradients.

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
            nonfinite(self, loss, parts)
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

    def end_epoch(self, epoch: int, end: int, train_means: dict[str, float], started: float):
        """After the epoch's steps: evaluate, step per-epoch schedules, early stopping, the metrics line,
        the checkpoints (best before last), plots, images and the console line. Returns ``(validation
        values, why the run stopped early or None)``."""
        acc, t, st = self.accelerator, self.cfg.train, self.state
        train_time = time.time() - started  # the training steps alone (epoch_time adds evaluation and saving)
        if self.replicas:
            distributed.sync_statistics(self.unwrapped)
            distributed.check_replicas(acc, self.unwrapped, self.kind, epoch)
        val = self.evaluate(self.val_loader) if self.val_loader is not None else {}
        values = {**train_means, **val}
        for _, sched in self.optimizers:
            if sched is not None and per_epoch(sched) and (v := values.get(t.monitor)) is not None and math.isfinite(v):
                sched.step(v)
        st.epoch, st.elapsed = epoch + 1, time.time() - self.metrics.start
        stopped = early_stop(st, values.get(t.monitor), values.get("val/loss"), t.monitor, t.monitor_mode,
                             t.early_stop.patience, t.early_stop.min_delta) if t.early_stop else None
        stopped = stop_at_target(st, values, t, epoch == 0, acc.is_main_process) or stopped
        epoch_time = time.time() - started
        n_images = len(self.train_loader) * self.cfg.data.batch_size * acc.num_processes
        self.metrics.log("val", epoch + 1, st.step, val, epoch_time=round(epoch_time, 3),
                         train_time=round(train_time, 3), images_per_s=round(n_images / max(epoch_time, 1e-9), 2),
                         **({"skipped_batches": st.skipped} if st.skipped else {}),
                         **({"early_stop_wait": st.early_stop_wait or 0} if t.early_stop else {}),
                         **({"stopped_early": stopped} if stopped else {}))
        # best before last: a kill between the two leaves last at the previous epoch, so the resumed
        # run redoes this epoch and writes both again (last first could leave a best older than the
        # best epoch last's state names, with nothing left to train that would repair it)
        if update_best(st, values, epoch, t.monitor, t.monitor_mode):
            save_checkpoint(self, "best")
        save_checkpoint(self, "last")
        if t.keep_last_n:
            save_checkpoint(self, f"epoch_{epoch + 1:03d}")
            self.checkpoints.prune_epochs(t.keep_last_n)
        if acc.is_main_process:
            if stopped or epoch + 1 >= end or time.monotonic() - self.plotted_at >= PLOT_EVERY_S:
                draw_plots(self)
            for path in self.save_images(epoch):
                self.metrics.log_image(f"images/{path.stem.rsplit('_', 1)[0]}", path, st.step,
                                       caption=f"epoch {epoch + 1}")
        acc.print(epoch_line(epoch + 1, t.epochs, train_means, val, epoch_time, t.monitor, st.best, st.best_epoch))
        if stopped:
            acc.print(stopped)
        elif epoch + 1 < end and (signum := self.signals.agreed(acc)):  # came during evaluation or the last step
            stop_run(self, signum)
        return val, stopped

    # ------------------------------------------------------------------ helpers for trainers
    def make_optimizer(self, params, lr: float | None = None) -> tuple[torch.optim.Optimizer, Any]:
        """An optimizer for ``params`` at ``lr`` (default ``train.lr``) and its LR schedule, sized in optimizer
        steps of this process (sandbox/engine/optim.py). With ``beta1_default`` (generative trainers): the
        trainable parameters only, and Adam's beta1 ``train.beta1`` or that default."""
        t = self.cfg.train
        lr = lr or t.lr
        if self.beta1_default is not None:
            params = [p for p in params if p.requires_grad]
        opt = make_optimizer(params, t.optimizer, lr, t.weight_decay, t.momentum)
        sched = make_scheduler(opt, t.scheduler, lr, self.total_steps, self.steps_per_epoch, t.warmup_frac,
                               t.cycle_epochs, t.step_epochs, t.gamma, t.monitor_mode)
        if self.beta1_default is not None:  # after the scheduler: OneCycleLR writes its momentum into the betas
            set_beta1(opt, t.beta1 if t.beta1 is not None else self.beta1_default)
        return opt, sched

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

    def summary(self) -> str:
        """The end of a run for the console: place, wall time, best monitored value, next commands."""
        st = self.state
        return run_summary(str(self.run.path), st.elapsed, self.cfg.train.monitor, st.best, st.best_epoch,
                           MODELS[self.cfg.model.name].task)


# ---------------------------------------------------------------------- what fit calls beside the steps
def schedulers_of(tr: Trainer) -> list:
    """The LR schedulers in use, in optimizer order (what checkpoints save)."""
    return [s for _, s in tr.optimizers if s is not None]


def open_run(tr: Trainer, until_epoch: int | None) -> int:
    """The start of ``fit``: config.yaml, the trackers (not for a run with nothing left to train), last
    written again where the run resumed from another checkpoint, the banner. Returns the epoch to end at."""
    cfg, t, acc, st = tr.cfg, tr.cfg.train, tr.accelerator, tr.state
    if acc.is_main_process:
        save_config(cfg, tr.run.config)
    end = min(t.epochs, until_epoch or t.epochs) if not st.stopped_early else 0
    if st.epoch < end:  # a finished run resumed (nothing to train) opens no empty W&B segment
        st.wandb_id = start_trackers(
            acc, tr.wandb_mode, cfg.track.project, cfg.name, cfg.to_dict(), tr.run.path,
            cfg.track.group or (Path(cfg.source).stem if cfg.source else None), cfg.model.name,
            list(cfg.track.tags), cfg.track.entity, st.wandb_id, t.monitor, t.monitor_mode, st.step)
    if tr.resave_last:
        save_checkpoint(tr, "last")
        tr.resave_last = False
    if tr.governor is not None:  # threads 0 on a CPU: start from the cores other processes leave free
        tr.threads = tr.governor.settle()
    say_banner(tr)
    if t.resume and st.stopped_early:
        acc.print(f"{tr.run.path} has {st.stopped_early}: nothing to train. To go on from its "
                  f"weights, start a new run with train.init_from={tr.run.path}")
    elif t.resume and st.epoch >= t.epochs:
        acc.print(f"{tr.run.path} has finished its {st.epoch} epochs: nothing to train. To go on, "
                  f"raise train.epochs (with train.scheduler=none if the run has an LR schedule)")
    return end


def close_run(tr: Trainer) -> None:
    """The end of ``fit``: W&B's best/* summaries (and the best checkpoint as an artifact), the trackers
    ended (and the process group, unless another trainer of this process follows: a staged run)."""
    acc, cfg, st = tr.accelerator, tr.cfg, tr.state
    finish_trackers(acc, cfg.train.monitor, st.best, st.best_epoch,
                    tr.run.checkpoints / "best" if cfg.track.log_checkpoints else None)
    if tr.next_trainer:
        for tracker in acc.trackers:
            tracker.finish()
    else:
        acc.end_training()


def log_train(tr: Trainer, epoch: int, sums: RunningSums, bar) -> None:
    """A ``train`` line of metrics.jsonl: the means since the last one and the LR; then the divergence watch."""
    means = sums.means(tr.accelerator)
    lr = tr.optimizers[0][0].param_groups[0]["lr"]
    tr.metrics.log("train", epoch + 1, tr.state.step, {**means, "train/lr": lr})
    bar.set_postfix(loss=f"{means.get('train/loss', float('nan')):.4f}")
    t = tr.cfg.train
    said = watch_divergence(tr.state, means.get("train/loss"), t.diverge_factor)
    if said is None:
        return
    if t.diverge_action == "stop":
        raise SandboxError(stopped_at(tr.run, tr.accelerator.num_processes, said, "lower train.lr (keep train.clip)"))
    tr.state.diverged_at = tr.state.step
    if tr.accelerator.is_main_process:
        log.warning("%s; lower train.lr (keep train.clip), or stop such runs with train.diverge_action=stop", said)


def nonfinite(tr: Trainer, loss: torch.Tensor, parts: dict[str, torch.Tensor] | None) -> None:
    """A non-finite loss: stop, naming the step and the culprit parts (``train.nonfinite: stop``), or count
    the skipped batch and warn (``skip``)."""
    bad = [f"{k}={float(v):.4g}" for k, v in (parts or {}).items() if not math.isfinite(float(v))]
    what = ", ".join(bad) or f"loss={float(loss):.4g}"
    where = f"epoch {tr.state.epoch + 1}, step {tr.state.step + 1}"
    if tr.cfg.train.nonfinite == "stop":  # what the checkpoint files hold now, read back, not assumed
        raise SandboxError(stopped_at(tr.run, tr.accelerator.num_processes, f"non-finite loss at {where} ({what})",
                                      "lower train.lr (keep train.clip)", "train.nonfinite=skip"))
    tr.state.skipped += 1
    log.warning("skipped a batch with a non-finite loss at %s (%s); %d skipped so far", where, what, tr.state.skipped)


def save_checkpoint(tr: Trainer, which: str) -> None:
    """checkpoints/<which> (engine/checkpoint.py); replicas average their running statistics first."""
    if tr.replicas:
        distributed.sync_statistics(tr.unwrapped)
    tr.checkpoints.save(which, tr.model, tr.state.to_dict(), schedulers_of(tr))


def draw_plots(tr: Trainer) -> None:
    """plots/: the training curves and the trainer's own (``extra_plots``), from metrics.jsonl."""
    records = read_metrics(tr.run.metrics)
    plot_curves(records, tr.run.plots)
    tr.extra_plots(records)
    tr.plotted_at = time.monotonic()


def stop_run(tr: Trainer, signum: int) -> None:
    """checkpoints/last holds this step: say how to go on (main process; at once, as a launcher may
    end the processes as soon as one has exited), end the trackers (W&B gets best/<monitor> and
    best/epoch as at a normal end; no checkpoint artifact), raise RunStopped."""
    acc, st = tr.accelerator, tr.state
    line = stop_message(signum, st.to_dict(), tr.resume_path, acc.num_processes)
    if acc.is_main_process:
        tqdm.write(line, file=sys.stderr)  # on a line of its own, not after the progress bar
        draw_plots(tr)  # up to date at the stop (redrawn at most every PLOT_EVERY_S while training)
    finish_trackers(acc, tr.cfg.train.monitor, st.best, st.best_epoch, None)  # best/* as a normal end
    acc.end_training()
    raise RunStopped(line, 128 + signum)
