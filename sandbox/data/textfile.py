"""Reading the text files of a run directory that a user can edit or replace (``trainer_state.json``,
``metrics.jsonl``, ``splits/*.csv``): a regular file only, bounded, UTF-8; every failure one
:class:`SandboxError` line naming the file and what was expected.

A FIFO, a device or a socket in a file's place would make a plain ``open``/``read`` block forever (or
read without end, as ``/dev/zero``): the file is opened without blocking and checked on the open
descriptor, so nothing swapped in between the check and the read gets through. A file over its limit
(a 2 GB ``trainer_state.json``) is refused after reading one byte past the limit, never loaded whole.
"""
from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from sandbox.errors import SandboxError, short

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


def kind_of(mode: int) -> str:
    """What a file of ``os.stat`` mode ``mode`` is, for a message (``a FIFO (named pipe)``)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | Path, expected: str) -> BinaryIO:
    """``path`` open for binary reading; anything but a regular file (a FIFO, a device, a directory) is
    refused in one line naming what it is. ``expected``: what the file should be, for the message."""
    try:  # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise SandboxError(f"{short(str(path))}: cannot be read ({exc.strerror or exc}); expected {expected}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SandboxError(f"{short(str(path))}: {kind_of(mode)}, not a regular file; expected {expected}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text(path: str | Path, limit: int, expected: str) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes (a BOM is dropped)."""
    with open_regular(path, expected) as f:
        try:
            raw = f.read(limit + 1)  # never more, even for a file that grows while it is read
        except OSError as exc:
            raise SandboxError(f"{short(str(path))}: cannot be read ({exc.strerror or exc}); "
                               f"expected {expected}") from None
    if len(raw) > limit:
        raise SandboxError(f"{short(str(path))}: over {_size(limit)}, too big for {expected}: is it the right file?")
    return decode(raw, path, expected)


def decode(raw: bytes, path: str | Path, expected: str, where: str = "") -> str:
    """``raw`` as UTF-8 text; otherwise one line naming the file, ``where`` (e.g. ``line 3``) and the byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SandboxError(f"{short(str(path))}:{' ' + where if where else ''} not UTF-8 text (byte "
                           f"0x{raw[exc.start]:02x} at offset {exc.start}); expected {expected}") from None


def read_csv(path: str | Path, limit: int, expected: str) -> list[list[str]]:
    """The rows of a CSV file read as :func:`read_text` reads; a line the csv module refuses (a field
    over its size limit) is one line naming it."""
    reader = csv.reader(io.StringIO(read_text(path, limit, expected), newline=""))
    try:
        return list(reader)
    except csv.Error as exc:
        raise SandboxError(f"{short(str(path))}: line {reader.line_num} is not CSV ({exc}); expected {expected}"
                           ) from None
