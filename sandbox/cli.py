"""What every command shares: one clear line and exit 2 for a user error, quiet logging, an argument parser.

Commands (``sandbox/<command>.py``) parse arguments, call the library and print; nothing imports them.
"""
from __future__ import annotations

import errno
import functools
import sys
from typing import Callable

from sandbox.errors import SandboxError


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
            sys.exit(2)
        except OSError as exc:  # the machine said no (disk full, read-only, file-size limit): no traceback
            print(f"error: {os_error(exc)}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt as exc:
            code = getattr(exc, "exit_code", None)  # duck-typed: cli.py does not import the engine (torch)
            if code is None:
                print("interrupted", file=sys.stderr)
            sys.exit(130 if code is None else code)

    return wrapper


def one_line(exc: BaseException) -> str:
    """The message of a user error as one line, also when a DataLoader worker raised it: torch re-raises
    it in the main process as ``Caught SandboxError in DataLoader worker process 0. Original Traceback
    ... sandbox.errors.SandboxError: <message>``, and the message is the last line."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


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


def setup_cli(description: str):
    """Logging for CLIs: ``INFO`` lines from the ``sandbox`` logger, quiet third-party libraries."""
    import argparse
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("sandbox").setLevel(logging.INFO)
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
