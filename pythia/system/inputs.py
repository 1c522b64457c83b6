"""Reading the user's input files safely: regular files only, and never more than a stated size.

Every file Pythia reads (corpus text, checkpoints, a GPT-2 folder's config.json, vocab.json,
merges.txt and model.safetensors) goes through `open_regular` or `read_regular`. They refuse
what is not a regular file, with one line that says what it is instead: a directory, a FIFO
(`mkfifo`, or a shell's `<(...)`), a character or block device (`/dev/zero`, `/dev/sda`), a
socket. Such a file either never ends (`/dev/zero` would be read until memory runs out) or
blocks until a writer comes (a FIFO), so it is refused before the first byte is read.

The check is made on the opened descriptor (fstat), not on the name beforehand, so a file
swapped for a FIFO between a check and the open cannot block us: the open itself is
non-blocking. A regular file is then read up to its size when opened, plus a stated limit for
files that have no business being large (JSON, text metadata).
"""
from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from ..errors import PythiaError
from ..units import fmt_size

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def file_kind(mode: int) -> str:
    """'a regular file', 'a directory', 'a FIFO (named pipe)', ... for an st_mode."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def open_regular(path: str | os.PathLike, what: str, error: type[PythiaError] = PythiaError,
                 hint: str = "give a regular file") -> tuple[BinaryIO, int]:
    """(binary file object, its size in bytes) for a regular file; `error` naming `what` and path
    for anything else (missing, unreadable, a directory, a device, a FIFO, a socket)."""
    name = f"{what} {str(path)!r}"
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(_open_failure(name, e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name} is {file_kind(st.st_mode)}, not a regular file; {hint}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)                    # ordinary reads from here on
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, what: str, error: type[PythiaError] = PythiaError, *,
                 limit: int | None = None, hint: str = "give a regular file") -> bytes:
    """The whole content of a regular file, read up to its size at open time.

    With `limit`, a larger file is refused before it is read (`error` stating the limit). A file
    that grows while it is read is cut at the size it had when opened, so the read is bounded.
    """
    f, size = open_regular(path, what, error, hint)
    with f:
        if limit is not None and size > limit:
            raise error(f"{what} {str(path)!r} is {fmt_size(size)}, more than the {fmt_size(limit)} such a "
                        f"file can sensibly hold; check that it is the right file")
        try:
            return f.read(size)
        except OSError as e:
            raise error(_open_failure(f"{what} {str(path)!r}", e, reading=True)) from None


def require_regular(path: str | os.PathLike, what: str, error: type[PythiaError] = PythiaError,
                    hint: str = "give a regular file") -> int:
    """The size of a regular file (opened and closed again to check it); `error` otherwise."""
    f, size = open_regular(path, what, error, hint)
    f.close()
    return size


def _open_failure(name: str, e: OSError, reading: bool = False) -> str:
    """One line for an OSError from opening or reading an input file."""
    if e.errno == errno.ENOENT:
        return f"{name} does not exist; check the path"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{name} cannot be read: permission denied; check its permissions (ls -l) or run as its owner"
    if e.errno == errno.EISDIR:
        return f"{name} is a directory, not a regular file; give a file inside it"
    if e.errno == errno.ENOTDIR:
        return f"{name} does not exist (a part of its path is not a directory); check the path"
    if e.errno == errno.ELOOP:
        return f"{name} is a symbolic link that loops; check the path"
    verb = "reading" if reading else "opening"
    return f"{name} failed while {verb}: {e.strerror or e}; check the file and the disk it is on"
