"""Loading torch files without running code from them: the one reader of every weights, optimizer,
RNG and schedule file the sandbox opens (run directories, ResNet weights a user points at)."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from sandbox.errors import SandboxError


class UnsafeFile(SandboxError):
    """A file that could only be loaded by running code from it: refused, never loaded."""


class UnreadableFile(SandboxError):
    """A file that is torn, truncated or not a torch file."""


def _numpy_globals() -> list:
    """What Accelerate's RNG-state files hold besides tensors: numpy arrays of the numpy RNG state
    (its own list of safe globals when available)."""
    try:
        from accelerate.utils.other import TORCH_SAFE_GLOBALS

        return list(TORCH_SAFE_GLOBALS)
    except ImportError:  # an Accelerate without the list: numpy's reconstruction helpers only
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        return [core.multiarray._reconstruct, np.ndarray, np.dtype]


def load_safely(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (tensors, numbers, strings, lists, dicts, numpy arrays):
    a file that needs code to load raises :class:`UnsafeFile`, a torn one :class:`UnreadableFile`,
    each one line naming the file (never torch's advice to turn ``weights_only`` off)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on unusual pickle protocols: the answer is below
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = " ".join(str(exc).split())
        if "weights only load failed" in text.lower():
            glob = re.search(r"GLOBAL ([\w.]+)", text)
            if glob:  # a torch file that names code to run: what a planted payload looks like
                raise UnsafeFile(f"{str(path)!r} was refused as unsafe (it names {glob.group(1)}, which only code "
                                 "can build); nothing from it was loaded. Files written by sandbox/train.py never "
                                 "need code to load: treat the run directory as untrusted, or delete that file") \
                    from None
            # anything else the weights-only reader cannot take (junk bytes, a raw pickle): not loaded either
            operand = re.search(r"Unsupported operand (\d+)", text)
            text = (f"not a plain torch file: pickle operand {operand.group(1)}" if operand
                    else "the weights-only reader refused it")
        raise UnreadableFile(f"{str(path)!r} is not a readable torch file ({text[:120]})") from None
    except Exception as exc:  # torn zip, EOF, foreign bytes: all the same to a user
        raise UnreadableFile(f"{str(path)!r} could not be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:120]})") from None
