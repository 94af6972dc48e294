"""What every command shares: one clear line and exit 2 for a user error, quiet logging, an argument parser.

Commands (``sandbox/<command>.py``) parse arguments, call the library and print; nothing imports them.
"""
from __future__ import annotations

import errno
import functools
import json
import math
import os
import sys
import time
from typing import Callable

from sandbox.config.schema import RANGES
from sandbox.config.schema import within as within_range
from sandbox.errors import SandboxError, short

MAX_LINE = 1000  # the most characters of the one error line (a message that embedded a whole file was 48 MB)


def cli_entry(main: Callable[[], None]) -> Callable[[], None]:
    """Wrap a CLI ``main``: a :class:`SandboxError` prints ``error: ...`` and exits 2.

    A run stopped by a signal after saving (``RunStopped``, which has printed how to resume) exits with
    its ``exit_code`` (128 + the signal); any other KeyboardInterrupt prints ``interrupted`` and exits
    130. Anything else is a bug in the sandbox and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper() -> None:
        try:
            main()
        except SandboxError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            tell_launcher(one_line(exc))
            sys.exit(2)
        except OSError as exc:  # the machine said no (disk full, read-only, file-size limit): no traceback
            if lost_peer(exc):
                _quiet_peer_exit()
            print(f"error: {os_error(exc)}", file=sys.stderr)
            tell_launcher(os_error(exc))
            sys.exit(1)
        except KeyboardInterrupt as exc:
            code = getattr(exc, "exit_code", None)  # duck-typed: cli.py does not import the engine (torch)
            if code is None:
                print("interrupted", file=sys.stderr)
            sys.exit(130 if code is None else code)
        except Exception as exc:
            if lost_peer(exc):
                _quiet_peer_exit()
            raise

    return wrapper


#: what torch.distributed says in a process whose peer has exited (gloo, NCCL, the TCP store)
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker crash",
              "failed to recv", "Socket Timeout")


def lost_peer(exc: BaseException) -> bool:
    """True where ``exc`` is a collective failing because another process of the run has exited: the
    consequence of that process's error (which it printed), not an error of this one."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    names = {c.__name__ for c in type(exc).__mro__}  # duck-typed: this module does not import torch
    return bool(names & {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}) or any(
        s in str(exc) for s in _PEER_GONE)


def _quiet_peer_exit() -> None:
    """A process that lost its peers exits 1 without a traceback: the process that stopped first printed
    the one line that matters; the launcher's report lists this one after it."""
    tell_launcher("stopped because another process of the run stopped first (its error is the root cause)",
                  delay=1)
    sys.exit(1)


def tell_launcher(message: str, delay: int = 0) -> None:
    """Under torchrun (``accelerate launch``), write ``message`` to the error file the launcher reads, so
    its failure report names the cause instead of "error_file: <N/A>" (the launcher prints that report
    itself, after the processes exit; it takes the earliest timestamp as the root cause: ``delay``
    seconds later for a consequence)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w") as fp:
            json.dump({"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()) + delay)}}}, fp)
    except OSError:
        pass


def one_line(exc: BaseException) -> str:
    """The message of a user error as one line, also when a DataLoader worker raised it: torch re-raises
    it in the main process as ``Caught SandboxError in DataLoader worker process 0. Original Traceback
    ... sandbox.errors.SandboxError: <message>``, and the message is the last line. At most
    :data:`MAX_LINE` characters: a longer one ends in ``... (N characters cut)``."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    flat = " ".join(text[:2 * MAX_LINE].split())  # only the head: a message may be megabytes long
    if len(text) <= 2 * MAX_LINE and len(flat) <= MAX_LINE:
        return flat
    keep = MAX_LINE - 40  # room for the note of what was cut
    return f"{flat[:keep]}... ({len(text) - keep:,} characters cut)"


#: what to suggest for the OS errors a run meets on a full, read-only or limited disk
_DISK_HINTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the filesystem is read-only", errno.EFBIG: "the file-size limit (ulimit -f) was hit",
               errno.EACCES: "no permission", errno.EPERM: "no permission"}


def os_error(exc: OSError) -> str:
    """``OSError`` -> one line naming the file and the cause; checkpoints are written to a temporary
    directory and swapped in, so the ones already there are intact."""
    where = f" writing {exc.filename!r}" if exc.filename else ""
    hint = _DISK_HINTS.get(exc.errno)
    return (f"{exc.strerror or type(exc).__name__}{where}" + (f" ({hint})" if hint else "")
            + "; checkpoints already written are intact (each is written aside and swapped in)")


def add_number(parser, *flags: str, within: str, kind: type = int, low: float | None = None, **kwargs) -> None:
    """``parser.add_argument(*flags, **kwargs)`` for a numeric flag, bounded like its config twin: ``within``
    is a key of :data:`sandbox.config.schema.RANGES` (``model.sample_steps`` for ``--steps``) or an interval
    written as they are (``"[2, 32]"``, for a flag without a twin); ``low`` raises the twin's lower end
    where the flag needs more (``--samples``: KID compares at least 2 images). The help says the range. A
    value outside it, not a ``kind`` or not finite is a SandboxError raised through ``parse_args``
    (argparse catches only its own errors), so ``cli_entry`` prints one line naming the flag, the value
    and the range, and exits 2 (argparse's own error would print the usage and "invalid int value")."""
    interval = RANGES.get(within, within)
    if low is not None:
        interval = f"[{low:g}{interval[interval.index(','):]}"
    twin = f" (as {within})" if within in RANGES else ""
    flag = flags[0]

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):  # not a number, or an int of over 4300 digits
            value = None
        if value is None or not math.isfinite(value) or not within_range(value, interval):
            shown = short(text) if value is None else short(value)  # 1e400 as inf, -0x10 as -16
            raise SandboxError(f"{flag}: got {shown}, expected {'an integer' if kind is int else 'a number'} "
                               f"in {interval}{twin}")
        return value

    kwargs["help"] = f"{kwargs['help']}; in {interval}" if kwargs.get("help") else f"in {interval}"
    parser.add_argument(*flags, type=parse, **kwargs)


def setup_cli(description: str):
    """Logging for CLIs: ``INFO`` lines from the ``sandbox`` logger, quiet third-party libraries."""
    import argparse
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("sandbox").setLevel(logging.INFO)
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
