"""A sweep's training subprocesses: started so that they cannot outlive it, stopped the way a run stops.

* :func:`run_children`: the runs, ``jobs`` at a time, each ``python sandbox/train.py ...`` a child
  (:func:`start`) that gets SIGTERM when the sweep dies, however it dies (SIGKILL included): it then
  saves its checkpoint and stops (engine/stops.py) instead of training on, orphaned, beside the
  rerun that resumes it.
* :class:`SweepSignals`: while children train, the sweep's own SIGTERM/SIGINT are recorded, never
  acted on in the middle of a statement; :func:`stop_children` passes them on to every child, waits
  for the children to save (bounded) and kills what is left.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sandbox.engine.stops import ECHO_S, RunStopped, SignalStop, checkpoints_held
from sandbox.runs.rundir import RunDir

#: a run saves at its next optimizer step, or after the evaluation under way: minutes on a big val set
STOP_WAIT_S = 300.0
#: after a second signal (no echo) the children stop at once; what has not ended by then is killed
HURRY_S = 15.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux for SIGTERM to the child when this process ends (PR_SET_PDEATHSIG).
    It runs in the child between fork and exec, so everything it calls is looked up here, before the
    fork; it calls only prctl and getppid (no import, no lock but the GIL the forking thread holds).
    The parent may die before prctl runs: then the child's parent is no longer this process, no signal
    will come, and the child ends before it starts. The signal is sent when the *thread* that forked
    ends: children are started from the sweep's main thread, which lives as long as the sweep.
    Elsewhere (macOS, Windows) there is no such signal: a sweep killed with SIGKILL leaves its running
    children training; SIGTERM and Ctrl-C still stop them (:func:`stop_children`), and the run's writer
    lock keeps a rerun from writing beside one (:func:`sandbox.analysis.sweep.execute`)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, getppid, exit_now, sigterm = os.getpid(), os.getppid, os._exit, int(signal.SIGTERM)

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if getppid() != parent:  # the sweep is already gone
            exit_now(128 + sigterm)

    return arm


@dataclass
class Child:
    """One run of a sweep as a subprocess: its name, run directory, command and log file."""
    name: str
    path: Path
    cmd: list[str]
    log: Path


def start(cmd: list[str], log: Path) -> tuple[subprocess.Popen, object]:
    """Start ``cmd`` with its output appended to ``log``; returns the process and the open log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "a")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_dies_with_parent()), f


def run_children(runs: list[Child], jobs: int, clock, command: str) -> list[str]:
    """Run ``runs``, ``jobs`` at a time, reporting to ``clock`` (a SweepProgress); returns those that
    failed. On SIGTERM/SIGINT: :func:`stop_children`, then :func:`sweep_stopped` (RunStopped)."""
    todo, running, failed, signals = list(runs), {}, [], SweepSignals()
    try:
        with signals:
            while (todo or running) and not signals.signum:
                while todo and len(running) < jobs:
                    run = todo.pop(0)
                    running[run.name] = (*start(run.cmd, run.log), run, time.time())
                    print(f"{clock.start(run.name)}: training (log {run.log})", flush=True)
                for name, (proc, f, run, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    f.close()
                    del running[name]
                    if proc.returncode == 0:
                        print(f"{name}: finished in {time.time() - t0:.0f} s ({clock.finish(time.time() - t0)})",
                              flush=True)
                    else:
                        tail = [ln for ln in run.log.read_text().splitlines() if ln.strip()][-1:] or ["(no output)"]
                        print(f"{name}: FAILED (exit {proc.returncode}): {tail[0]} ({clock.finish(None)})", flush=True)
                        failed.append(name)
                time.sleep(0.2)
            if signals.signum:
                said = stop_children({n: (r[0], r[2].path) for n, r in running.items()}, signals)
                sweep_stopped(signals.signum, said, len(todo), command)
    finally:
        alive = {n: (r[0], r[2].path) for n, r in running.items() if r[0].poll() is None}
        if alive:  # an error of the sweep itself: no child trains on without it
            signals.signum = signals.signum or signal.SIGTERM
            stop_children(alive, signals)
        for r in running.values():
            r[1].close()
    return failed


def sweep_stopped(signum: int, said: list[str], left: int, command: str) -> None:
    """The sweep's one line on a stop (what became of each run under way, the command to continue),
    then :class:`RunStopped` (exit 128 + signal)."""
    line = (f"sweep stopped by {signal.Signals(signum).name}: " + "; ".join(said or ["no run was training"])
            + (f"; {left} run{'s' if left > 1 else ''} not started" if left else "")
            + f"; continue with: {command} (finished runs are skipped, partial ones resumed)")
    print(line, file=sys.stderr, flush=True)
    raise RunStopped(line, 128 + signum)


class SweepSignals(SignalStop):
    """:class:`SignalStop` for the sweep itself: ``signum`` is the first SIGTERM/SIGINT, ``again`` a
    later one that is no echo (see :data:`ECHO_S`); neither ends the sweep by itself: the sweep passes
    them on to its children (a first one: save and stop; a second: stop at once) and waits for them.
    With Ctrl-C in a terminal the children get SIGINT from the terminal as well (one process group):
    the copy the sweep passes on comes within ECHO_S of it, and a run takes the two as one request."""

    def __init__(self):
        super().__init__()
        self.again = 0

    def _handle(self, signum: int, frame) -> None:
        if not self.signum:
            self.signum, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first >= ECHO_S:
            self.again = signum


def stop_children(children: dict[str, tuple[subprocess.Popen, Path]], signals: SweepSignals,
                  wait_s: float = STOP_WAIT_S, hurry_s: float = HURRY_S) -> list[str]:
    """Pass ``signals.signum`` on to each child (``name -> (process, run directory)``), wait up to ``wait_s``
    for them to save and exit; a second signal is passed on too and the wait cut to ``hurry_s``; kill
    whatever still runs then. Returns, per child, what became of it and what its checkpoints hold."""
    for proc, _ in children.values():
        proc.send_signal(signals.signum)  # a no-op for one that has exited already
    if children:
        print(f"{signal.Signals(signals.signum).name}: passed on to {', '.join(children)}; waiting for "
              f"{'it' if len(children) == 1 else 'them'} to save (up to {wait_s:.0f} s; a second signal stops "
              "at once)", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    deadline, hurried = t0 + wait_s, False
    while any(proc.poll() is None for proc, _ in children.values()) and time.monotonic() < deadline:
        if signals.again and not hurried:
            hurried = True
            for proc, _ in children.values():
                proc.send_signal(signals.again)
            deadline = min(deadline, time.monotonic() + hurry_s)
        time.sleep(0.05)
    said = []
    for name, (proc, path) in children.items():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            how = f"killed after {time.monotonic() - t0:.0f} s without stopping"
        else:
            how = "finished" if proc.returncode == 0 else f"stopped (exit {_status(proc.returncode)})"
        held = checkpoints_held(RunDir(path))[0] if proc.returncode != 0 else None
        said.append(f"{name} {how}" + ("" if proc.returncode == 0 else
                                       f", {held}" if held else ", no checkpoint yet (it starts afresh)"))
    return said


def _status(code: int) -> str:
    return f"{code}" if code >= 0 else f"{128 - code}, {signal.Signals(-code).name}"
