"""The epoch/step loop of the training skeleton (mixed into :class:`sandbox.engine.trainer.Trainer`).

Logging every ``log_every`` steps and at each epoch's end (values stay on device in between: no
per-step sync), evaluation every epoch, the ``best``/``last`` checkpoints (atomic, resumable), the
plots (redrawn at most every ``PLOT_EVERY_S`` seconds, and after the last epoch or a stop) and the console
lines (main process only). A SIGTERM/SIGINT during ``fit`` stops after the
optimizer step with ``checkpoints/last`` saved there (:mod:`.stops`); a logged training loss far
above its running minimum warns once, or stops the run (``train.diverge_factor``/``diverge_action``).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sandbox.config.loading import save_config
from sandbox.engine import distributed
from sandbox.engine.console import banner, epoch_line, run_summary
from sandbox.engine.optim import per_epoch
from sandbox.models import MODELS
from sandbox.engine.stops import RunStopped, SignalStop, early_stop, stop_at, stop_message, stopped_at
from sandbox.errors import SandboxError
from sandbox.tracking.metrics_log import read_metrics
from sandbox.tracking.trackers import finish_trackers, start_trackers
from sandbox.viz.curves import plot_curves

log = logging.getLogger("sandbox")

# plots/ redraws the whole history with matplotlib (~0.5 s on 2 CPU cores at 100 epochs, growing with the
# epochs): every epoch, a run of many short epochs (500 one-step epochs in the train_fraction study) spends
# more time drawing than training. Drawn when this many seconds have passed, and always at the end.
PLOT_EVERY_S = 30.0


class Loop:
    """``fit`` and what it calls; the attributes it uses are set up by ``Trainer.__init__``."""

    def fit(self, until_epoch: int | None = None) -> dict[str, float]:
        """Train to ``train.epochs`` (or stop after epoch ``until_epoch``; the run stays resumable).

        A first SIGTERM/SIGINT ends the run after the current optimizer step, with checkpoints/last
        saved at that step, by :class:`~sandbox.engine.stops.RunStopped` (the resume command in its
        message); a second one stops at once. The handlers are there only while ``fit`` runs. The
        run's writer lock is released when it returns or fails."""
        try:
            with SignalStop() as self._signals:
                return self._fit(until_epoch)
        finally:
            if self.run_lock is not None:
                self.run_lock.release()

    def _fit(self, until_epoch: int | None) -> dict[str, float]:
        cfg, t, acc = self.cfg, self.cfg.train, self.accelerator
        if acc.is_main_process:
            save_config(cfg, self.run.config)
        end = min(t.epochs, until_epoch or t.epochs) if not self.state.get("stopped_early") else 0
        if self.state["epoch"] < end:  # a finished run resumed (nothing to train) opens no empty W&B segment
            self.state["wandb_id"] = start_trackers(
                acc, self.wandb_mode, cfg.track.project, cfg.name, cfg.to_dict(), self.run.path,
                cfg.track.group or (Path(cfg.source).stem if cfg.source else None), cfg.model.name,
                list(cfg.track.tags), cfg.track.entity, self.state["wandb_id"], t.monitor, t.monitor_mode,
                self.state["step"])
        if self.resave_last:
            self._save("last")
            self.resave_last = False
        if self.governor is not None:  # threads 0 on a CPU: start from the cores other processes leave free
            self.threads = self.governor.settle()
        self._banner()
        last_val: dict[str, float] = {}
        if t.resume and self.state.get("stopped_early"):
            acc.print(f"{self.run.path} has {self.state['stopped_early']}: nothing to train. To go on from its "
                      f"weights, start a new run with train.init_from={self.run.path}")
        elif t.resume and self.state["epoch"] >= t.epochs:
            acc.print(f"{self.run.path} has finished its {self.state['epoch']} epochs: nothing to train. To go on, "
                      f"raise train.epochs (with train.scheduler=none if the run has an LR schedule)")
        for epoch in range(self.state["epoch"], end):
            t0 = time.time()
            self.size = self.size_at(epoch)
            train_means = self._train_epoch(epoch)
            train_time = time.time() - t0  # the training steps alone (epoch_time adds evaluation and saving)
            if self.replicas:
                distributed.sync_statistics(self.unwrapped)
                distributed.check_replicas(acc, self.unwrapped, self.kind, epoch)
            last_val = self.evaluate(self.val_loader) if self.val_loader is not None else {}
            for _, sched in self.optimizers:
                if sched is not None and per_epoch(sched):
                    value = {**train_means, **last_val}.get(t.monitor)
                    if value is not None and math.isfinite(value):
                        sched.step(value)
            self.state["epoch"] = epoch + 1
            self.state["elapsed"] = time.time() - self.metrics.start
            stopped = self._early_stop({**train_means, **last_val})  # before best takes this epoch in
            stopped = self._stop_at({**train_means, **last_val}, epoch) or stopped
            epoch_time = time.time() - t0
            n_images = len(self.train_loader) * self.cfg.data.batch_size * acc.num_processes
            self.metrics.log("val", epoch + 1, self.state["step"], last_val, epoch_time=round(epoch_time, 3),
                             train_time=round(train_time, 3),
                             images_per_s=round(n_images / max(epoch_time, 1e-9), 2),
                             **({"skipped_batches": self.state["skipped"]} if self.state["skipped"] else {}),
                             **({"early_stop_wait": self.state.get("early_stop_wait", 0)} if t.early_stop else {}),
                             **({"stopped_early": stopped} if stopped else {}))
            # best before last: a kill between the two leaves last at the previous epoch, so the resumed
            # run redoes this epoch and writes both again (last first could leave a best older than the
            # best epoch last's state names, with nothing left to train that would repair it)
            if self._update_best({**train_means, **last_val}, epoch):
                self._save("best")
            self._save("last")
            if t.keep_last_n:
                self._save(f"epoch_{epoch + 1:03d}")
                self.checkpoints.prune_epochs(t.keep_last_n)
            if acc.is_main_process:
                if stopped or epoch + 1 >= end or time.monotonic() - self._plotted_at >= PLOT_EVERY_S:
                    self._plot()
                for path in self.save_images(epoch):
                    self.metrics.log_image(f"images/{path.stem.rsplit('_', 1)[0]}", path, self.state["step"],
                                           caption=f"epoch {epoch + 1}")
            self._epoch_line(epoch, train_means, last_val, epoch_time)
            if stopped:
                acc.print(stopped)
                break
            if epoch + 1 < end and (signum := self._signals.agreed(acc)):  # came during evaluation or the last step
                self._stop(signum)
        finish_trackers(acc, t.monitor, self.state["best"], self.state["best_epoch"],
                        self.run.checkpoints / "best" if cfg.track.log_checkpoints else None)
        if self.next_trainer:  # another trainer of this process follows (a staged run): keep the process group
            for tracker in acc.trackers:
                tracker.finish()
        else:
            acc.end_training()  # the trackers, and the process group with several processes
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
                if self.governor is not None and (change := self.governor.tick()) and acc.is_local_main_process:
                    log.info("%s", change)
                if st["step"] % t.log_every == 0:
                    self._log_train(epoch, sums, count, bar)
                    sums, count = {}, 0
                # a signal: save here and stop (at the epoch's last step, fit stops after the epoch's saves)
                signum = self._signals.agreed(acc)
                if (signum or (t.checkpoint_every and st["step"] % t.checkpoint_every == 0)) \
                        and st["batch"] < len(self.train_loader):
                    st.update(sums={k: float(v) for k, v in sums.items()}, count=count,
                              epoch_sums={k: float(v) for k, v in epoch_sums.items()}, epoch_count=epoch_count,
                              elapsed=time.time() - self.metrics.start)
                    self._save("last")
                    if signum:
                        self._stop(signum)
        if sums:  # the steps since the last log line (an epoch shorter than log_every, or its tail)
            self._log_train(epoch, sums, count, bar)
        st.update(batch=0, sums={}, count=0, epoch_sums={}, epoch_count=0)
        return self._reduce_means(epoch_sums, max(epoch_count, 1))

    def _log_train(self, epoch: int, sums: dict[str, torch.Tensor], count: int, bar) -> None:
        means = self._reduce_means(sums, count)
        lr = self.optimizers[0][0].param_groups[0]["lr"]
        self.metrics.log("train", epoch + 1, self.state["step"], {**means, "train/lr": lr})
        bar.set_postfix(loss=f"{means.get('train/loss', float('nan')):.4f}")
        self._check_divergence(means.get("train/loss"))

    def _check_divergence(self, loss: float | None) -> None:
        """A logged training loss above ``train.diverge_factor`` x its running minimum: one warning per
        run, or a stop (``train.diverge_action: stop``). On the logged means (already on the host, the
        same on every process), so it costs no sync; the minimum travels with the checkpoints."""
        t, st = self.cfg.train, self.state
        if loss is None or not math.isfinite(loss) or t.diverge_factor is None:
            return
        low = st.get("loss_min")
        if low is not None and low > 0 and loss > t.diverge_factor * low and not st.get("diverged_at"):
            what = (f"training loss {loss:.4g} at step {st['step']} is more than {t.diverge_factor:g}x its minimum "
                    f"{low:.4g} (step {st['loss_min_step']}): the run is diverging")
            if t.diverge_action == "stop":
                raise SandboxError(stopped_at(self.run, self.accelerator.num_processes, what,
                                              "lower train.lr (keep train.clip)"))
            st["diverged_at"] = st["step"]
            if self.accelerator.is_main_process:
                log.warning("%s; lower train.lr (keep train.clip), or stop such runs with train.diverge_action=stop",
                            what)
        if low is None or loss < low:
            st.update(loss_min=loss, loss_min_step=st["step"])

    def _reduce_means(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        if not sums:
            return {}
        keys = sorted(sums)
        vec = torch.stack([sums[k] for k in keys]) / max(count, 1)
        vec = self.accelerator.reduce(vec, reduction="mean")
        return {f"train/{k}": float(v) for k, v in zip(keys, vec.tolist())}

    # ------------------------------------------------------------------ best / checkpoints
    def _update_best(self, values: dict[str, float], epoch: int) -> bool:
        from sandbox.metrics.selection import takes_best  # the one rule, shared with the reports (run_stats)

        t = self.cfg.train
        value = values.get(t.monitor)
        if value is None and epoch == 0:
            log.warning("train.monitor=%s is not logged by this trainer (logged: %s); best = last",
                        t.monitor, ", ".join(sorted(values)))
        loss = values.get("val/loss", math.inf)
        # higher (max) / lower (min) value wins; a tie goes to the lower val/loss; a NaN loss never wins;
        # an epoch without the value is taken while no epoch has had one (never logged: best = last)
        if not takes_best(value, loss, self.state["best"], self.state["best_loss"], t.monitor_mode):
            return False
        if value is None:
            return True
        self.state.update(best=value, best_epoch=epoch + 1, best_loss=loss)
        return True

    def _early_stop(self, values: dict[str, float]) -> str | None:
        """``train.early_stop`` on this epoch's monitored value (:func:`~sandbox.engine.stops.early_stop`)."""
        t = self.cfg.train
        if t.early_stop is None:
            return None
        return early_stop(self.state, values.get(t.monitor), values.get("val/loss"), t.monitor, t.monitor_mode,
                          t.early_stop.patience, t.early_stop.min_delta)

    def _stop_at(self, values: dict[str, float], epoch: int) -> str | None:
        """``train.stop_at``: why the run stops after this epoch, once its metric has reached the target
        (:func:`~sandbox.engine.stops.stop_at`); a metric the trainer does not log warns after the first epoch."""
        target = self.cfg.train.stop_at
        if target is None:
            return None
        if target.metric not in values and epoch == 0 and self.accelerator.is_main_process:
            log.warning("train.stop_at.metric=%s is not logged by this trainer (logged: %s): the run trains "
                        "all its epochs", target.metric, ", ".join(sorted(values)))
        return stop_at(self.state, values.get(target.metric), target.metric, target.value,
                       target.mode or self.cfg.train.monitor_mode)

    def _stop(self, signum: int) -> None:
        """checkpoints/last holds this step: say how to go on (main process; at once, as a launcher may
        end the processes as soon as one has exited), end the trackers (W&B gets best/<monitor> and
        best/epoch as at a normal end; no checkpoint artifact), raise RunStopped."""
        acc, st = self.accelerator, self.state
        line = stop_message(signum, st, self.resume_path, acc.num_processes)
        if acc.is_main_process:
            tqdm.write(line, file=sys.stderr)  # on a line of its own, not after the progress bar
            self._plot()  # up to date at the stop (redrawn at most every PLOT_EVERY_S while training)
        finish_trackers(acc, self.cfg.train.monitor, st["best"], st["best_epoch"], None)  # best/* as a normal end
        acc.end_training()
        raise RunStopped(line, 128 + signum)

    _plotted_at = -math.inf  # time.monotonic() of the last plots/ redraw

    def _plot(self) -> None:
        records = read_metrics(self.run.metrics)
        plot_curves(records, self.run.plots)
        self.extra_plots(records)
        self._plotted_at = time.monotonic()

    def extra_plots(self, records: list[dict]) -> None:
        """More ``plots/`` drawn from the metrics ``records`` with the training curves, so under the same
        throttle (at most every ``PLOT_EVERY_S``, and after the last epoch or a stop); trainers override."""

    def _save(self, which: str) -> None:
        if self.replicas:
            distributed.sync_statistics(self.unwrapped)
        self.checkpoints.save(which, self.model, self.state, self.schedulers)

    def summary(self) -> str:
        """The end of a run for the console: place, wall time, best monitored value, next commands."""
        st = self.state
        return run_summary(str(self.run.path), st["elapsed"], self.cfg.train.monitor, st["best"], st["best_epoch"],
                           MODELS[self.cfg.model.name].task)

    def _banner(self) -> None:
        acc, cfg = self.accelerator, self.cfg
        acc.print(banner(cfg.model.name, sum(p.numel() for p in self.unwrapped.parameters()), acc.device.type,
                         acc.num_processes, self._threads_said() if acc.device.type == "cpu" else None,
                         self.mixed_precision, cfg.train.channels_last, cfg.data.name, len(self.datasets["train"]),
                         len(self.datasets.get("val", [])), cfg.data.size, cfg.data.batch_size, cfg.train.epochs,
                         self.steps_per_epoch, str(self.run.path)))

    def _threads_said(self) -> str:
        """The banner's thread count, and where it follows the free cores, how many it may grow to."""
        gov = self.governor
        if gov is None:
            return str(self.threads)
        busy = (f"; other processes keep {len(gov.load.cpus) - gov.threads} of the {len(gov.load.cpus)} cores busy"
                if gov.threads < gov.most else "")
        return f"{gov.threads} torch threads (at most {gov.most}{busy}; they follow the free cores)"

    def _epoch_line(self, epoch: int, train: dict, val: dict, seconds: float) -> None:
        self.accelerator.print(epoch_line(epoch + 1, self.cfg.train.epochs, train, val, seconds,
                                          self.cfg.train.monitor, self.state["best"], self.state["best_epoch"]))
