"""Standard streams that are closed when Pythia starts (`<&-`, `>&-`, `2>&-`), or that go away
while it runs (`train ... | head -n 2`, a closed terminal).

A process started with a standard descriptor closed has no sys.stdin / sys.stdout / sys.stderr
(Python sets them to None), and worse, the next file it opens takes that descriptor's number:
a checkpoint opened as descriptor 1 would receive whatever is printed. So at start-up
`reopen_closed()` puts /dev/null on every closed standard descriptor (no file of ours can land
there) and gives Python a stream for it, and `require()` then refuses, in one line on stderr
(when stderr is open), a command that needs a stream that was closed:

    every command writes its results to stdout;
    chat and train-chat also read the conversation from stdin.

A command added later needs stdout unless NEEDS says otherwise.

`keep_running_without_streams()`, called once by commands whose output is only a report (train),
makes writes to a stdout or stderr whose reader has gone away be dropped silently instead of
raising, so a training run is never lost to its report.
"""
from __future__ import annotations

import errno
import os
import stat
import sys

from ..errors import ConfigError

STREAMS = (("stdin", 0, os.O_RDONLY, "r"), ("stdout", 1, os.O_WRONLY, "w"), ("stderr", 2, os.O_WRONLY, "w"))
NEEDS: dict[str, tuple[str, ...]] = {"chat": ("stdin", "stdout"), "train-chat": ("stdin", "stdout")}
DEFAULT_NEEDS = ("stdout",)
WHY = {
    "stdin": "it reads your messages from stdin: run it from a terminal, or pipe them in "
             "(printf 'Hello\\nquit\\n' | python -m pythia {command} ...)",
    "stdout": "it writes its results to stdout: run it with stdout open, or redirect it to a file "
              "(> out.txt) or to /dev/null",
}


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as e:
        return e.errno == errno.EBADF
    return False


def reopen_closed() -> set[str]:
    """Put /dev/null on each closed standard descriptor; the names of those that were closed."""
    closed = set()
    for name, fd, flags, mode in STREAMS:
        if not _is_closed(fd):
            continue
        closed.add(name)
        try:
            null = os.open(os.devnull, flags)
            if null != fd:                               # lowest free number: usually fd itself
                os.dup2(null, fd)
                os.close(null)
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="replace", closefd=False))
        except OSError:
            pass                                         # no /dev/null: nothing better to do
    return closed


def require(command: str | None, closed: set[str]) -> None:
    """ConfigError when `command` needs a standard stream that was closed at start-up.

    (stdin as a directory, `< folder`, never gets here: the interpreter refuses it at start-up.)
    """
    if not command or not closed:
        return
    needs = NEEDS.get(command, DEFAULT_NEEDS)
    for name in needs:
        if name in closed:
            redirect = "<&-" if name == "stdin" else ">&-"
            raise ConfigError(f"{name} is closed (as by {redirect}) and {command} cannot run without it: "
                              + WHY[name].format(command=command))


def full_disk_file(e: OSError) -> str | None:
    """For a 'no space left' error that carries no file name (a write or flush raises it so),
    the path of a file this process has open for writing on a full file system: usually
    stdout redirected to a file (or to a device that reports no space, /dev/full). None when there is no such file or the system cannot tell."""
    if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return None
    try:
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return None
    for fd in fds:
        try:
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
            if flags & os.O_ACCMODE == os.O_RDONLY:
                continue
            device = stat.S_ISCHR(os.fstat(fd).st_mode)       # /dev/full: a device that is always full
            if not (device and fd in (1, 2)) and (device or os.fstatvfs(fd).f_bavail > 0):
                continue
            where = os.readlink(f"/proc/self/fd/{fd}")
        except (OSError, StopIteration, ValueError):
            continue
        if where.startswith("/"):
            return {1: f"stdout ({where})", 2: f"stderr ({where})"}.get(fd, repr(where))
    return None


class _Optional:
    """A text stream whose writes are dropped once the other end has gone (EPIPE, EIO, closed)."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.gone = False

    def _lost(self) -> None:
        self.gone = True
        try:                                    # so that the interpreter's last flush finds a sink too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except (OSError, ValueError):
                self._lost()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._lost()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def keep_running_without_streams() -> None:
    """From now on, a stdout or stderr whose reader has gone swallows writes instead of raising."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Optional):
            setattr(sys, name, _Optional(stream))
