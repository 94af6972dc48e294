"""What every command shares: one clear line and exit 2 for a user error, quiet logging, an argument parser.

Commands (``sandbox/<command>.py``) parse arguments, call the library and print; nothing imports them.
"""
from __future__ import annotations

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
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            code = getattr(exc, "exit_code", None)  # duck-typed: cli.py does not import the engine (torch)
            if code is None:
                print("interrupted", file=sys.stderr)
            sys.exit(130 if code is None else code)

    return wrapper


def setup_cli(description: str):
    """Logging for CLIs: ``INFO`` lines from the ``sandbox`` logger, quiet third-party libraries."""
    import argparse
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("sandbox").setLevel(logging.INFO)
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
