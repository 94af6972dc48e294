"""The exception types every layer raises for user errors; commands turn them into one clear line."""
from __future__ import annotations


class SandboxError(Exception):
    """A user-facing error: the message names the culprit and what would be accepted."""


class ConfigError(SandboxError):
    """A config file, key or value is wrong."""
