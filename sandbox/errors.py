"""The exception types every layer raises for user errors; commands turn them into one clear line."""
from __future__ import annotations

import reprlib
from typing import Any

SHORT = 200  # the most characters of a value a message embeds


class SandboxError(Exception):
    """A user-facing error: the message names the culprit and what would be accepted."""


class ConfigError(SandboxError):
    """A config file, key or value is wrong."""


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 10
    r.maxstring = r.maxother = SHORT - 40
    r.maxlong = 40
    return r


_REPR = _short_repr()


def short(value: Any, limit: int = SHORT) -> str:
    """``repr(value)`` for a message: one line of at most ``limit`` characters. Built with
    :mod:`reprlib`, so a huge value (a 1 MiB string, a list of a million items, a structure that
    YAML aliases share many times over) costs only the first few elements it shows."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - an int too long to print (ValueError), a broken __repr__
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_key(key: Any, limit: int = 60) -> str:
    """A mapping key as part of a key path in a message (``loss.<key>.dice``), cut to ``limit``."""
    text = " ".join(str(key).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
