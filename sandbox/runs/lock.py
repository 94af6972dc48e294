"""One writer per run: a lock file in the run directory, held for the life of a training process.

``<run>/.writer.lock`` holds the writer's host, pid and start time, created with O_CREAT|O_EXCL
(atomic on local filesystems and on NFS v3+ alike). A second writer is refused naming the
holder. A lock is stale, and taken over with a warning, when its host is this machine and its
process no longer exists (a SIGKILL leaves the file behind). A holder on another machine cannot
be checked from here: the message says so and which file to delete once that run is known to be
gone, except a holder that was an earlier start of this very Slurm job (the same SLURM_JOB_ID, a lower
SLURM_RESTART_COUNT: a requeued task, on whichever node; Slurm runs one start of a job at a time).
The same process may take its own lock again (a notebook or test that trains a run twice).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from sandbox.errors import SandboxError

log = logging.getLogger("sandbox")
LOCK_FILE = ".writer.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        if os.environ.get("SLURM_JOB_ID"):
            self.me.update(slurm_job=os.environ["SLURM_JOB_ID"],
                           slurm_restart=_int(os.environ.get("SLURM_RESTART_COUNT")))
        self.held = False

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:  # a torn write of a lock (killed between create and write): stale after a minute
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if (self.me.get("slurm_job") and holder.get("slurm_job") == self.me["slurm_job"]
                and _int(holder.get("slurm_restart")) < self.me["slurm_restart"]):
            return True  # an earlier start of this requeued job: Slurm ended it before this one began
        return holder.get("host") == self.me["host"] and not _alive(int(holder.get("pid", -1)))

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder and holder.get("host") == self.me["host"] and holder.get("pid") == self.me["pid"]:
                    self.held = True  # this very process: re-entrant
                    return
                if not self._stale(holder):
                    who = (f"{holder['host']} pid {holder['pid']}, since {holder['since']}" if holder
                           else "a writer that is starting")
                    raise SandboxError(f"run directory {str(self.path.parent)!r} is being written by another "
                                       f"process ({who}); one writer per run: wait for it to finish, or, if it is "
                                       f"gone, delete {self.path}")
                log.warning("taking over a stale lock of %s (%s: that process is gone)", self.path.parent, holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            atexit.register(self.release)
            return
        raise SandboxError(f"could not take the lock {self.path}: it keeps changing; is another run starting there?")

    def release(self) -> None:
        """Remove the lock if this process holds it (idempotent)."""
        if self.held and (self.holder() or {}).get("pid") == self.me["pid"]:
            self.path.unlink(missing_ok=True)
        self.held = False
