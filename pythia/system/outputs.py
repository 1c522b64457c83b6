"""The user's files and the signals that arrive: claim an output, replace it safely, stop cleanly.

A command that writes a file the user keeps needs four things, each one call here:

    with guard_signals() as stop, claim_output(path, flag="--out", replace=args.force,
                                               inputs={"--data": files}) as out:
        ...                                    # work; a long loop runs inside `with stop.polled():`
        atomic_write(out.path, lambda f: f.write(data))   # and polls stop.requested() between steps
    keep_running_without_streams()             # once, for commands whose output is only a report

pythia.cli turns an Interrupted that escapes a command into one `error:` line
(interrupted_message) and exits with its status.

claim_output(path, flag=..., replace=..., inputs=...)
    At the start, before any work: refuses what must never be written over (a directory, a device
    node, a FIFO, a socket, a read-only file, an existing file without replace=True, any of the
    inputs, a path ending in '/'), follows a symlink to the file it points to, proves the directory
    writable, and takes an exclusive lock on `.NAME.lock` beside the file (fcntl.flock, so the
    kernel drops it when the process dies however it dies; the file holds the owner's pid so a
    refused run can name it). A second run on the same file is refused with one line naming the
    process. The lock file goes away when the claim ends, on every exit path; one left by a
    killed process is taken over, as are its `.NAME.<pid>.*.tmp` files. Raises OutputBusy (a
    ConfigError) when another live process holds it. directory=True claims a directory of
    outputs (export DIR, prepare DIR) the same way: new, empty or replace=True; made now, and
    removed on release if still empty; its files are written with atomic_write(claim.path / NAME).
check_appendable(path, flag=..., inputs=...)
    The same checks for a file that is only ever appended to (a log): directories and inputs are
    refused; /dev/stdout or a FIFO is fine, as nothing is ever replaced.
check_distinct(outputs, inputs)
    One output may not be another output or one of the inputs (the corpus, a source checkpoint).
atomic_write(path, writer)
    writer(f) fills a temporary file `.NAME.<pid>.<random>.tmp` in the same directory; it is
    fsynced and renamed over the file only when complete, so the old file stays whole until
    the new one is. The file keeps its mode (0600 stays 0600) and, as root, its owner; a
    symlink is followed so the file it points to is updated; only a regular file is ever replaced.
    SIGINT, SIGTERM and SIGHUP arriving meanwhile are held until the rename is done and then
    delivered as usual: a save is never cut short by a signal and leaves no temporary file.
guard_signals()
    SIGINT (Ctrl-C), SIGTERM (a scheduler) and SIGHUP (a closed terminal) all stop the program
    the same way. Inside `stop.polled()` the first one only sets a flag that the loop polls at a
    safe point (a training step boundary), so the work stops there and saves; anywhere else, or
    on a second signal, it raises Interrupted (a KeyboardInterrupt) at once. stop.exit_status is
    128 + the signal's number (130, 143, 129), the shell's convention.
keep_running_without_streams()
    When stdout or stderr goes away (`train ... | head -n 2`, a closed terminal), writes to it
    are dropped silently instead of raising, so a training run is never lost to its report.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

from ..errors import ConfigError

try:
    import fcntl
except ImportError:                             # not POSIX: outputs are checked but not locked
    fcntl = None  # type: ignore[assignment]

EXAMPLE_NAMES = {"--out": "pythia.npz", "--log-file": "log.jsonl", "--plot": "loss.svg"}   # for "give a file name"
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_WRITTEN: list[Path] = []        # every file atomic_write completed in this process, in order


class OutputBusy(ConfigError):
    """Another live process has claimed the same output."""


class Interrupted(KeyboardInterrupt):
    """A stop signal that could not wait for a safe point (outside polled(), or the second one)."""

    def __init__(self, signum: int, *, second: bool = False):
        super().__init__(signal_name(signum))
        self.signum, self.second = signum, second

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """How a person knows the signal: Ctrl-C for SIGINT, the usual name otherwise."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def written_files() -> list[Path]:
    """The files atomic_write has completed in this process (what an interrupted run can say it saved)."""
    return list(_WRITTEN)


def interrupted_message(e: Interrupted) -> str:
    """The one line for a stop that could not wait: which signal, and what is on disk (never more)."""
    how = f"stopped by {'a second ' if e.second else ''}{signal_name(e.signum)}"
    if _WRITTEN:
        return f"{how}; the last file saved, {_shown(_WRITTEN[-1])}, is complete"
    return f"{how} before anything was saved; existing files are unchanged"


# ---- what may be written ------------------------------------------------------------------------

def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _shown(path: str | os.PathLike) -> str:
    return repr(os.fspath(path))


def _read_only(st: os.stat_result, path: Path) -> bool:
    """No one may write it: as root any write bit counts (root may write anything), else access()."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return not st.st_mode & 0o222
    return not os.access(path, os.W_OK)


def real_path(path: str | os.PathLike) -> Path:
    """The file a write to path lands in: symlinks followed (also a dangling one), made absolute."""
    return Path(os.path.realpath(os.fspath(path)))


def _check_file(path: str | os.PathLike, flag: str, *, replace: bool, append: bool = False) -> Path:
    """The real file path writes to, after every check that needs no lock; ConfigError naming flag."""
    text = os.fspath(path)
    what = f"{flag} {_shown(text)}"
    if not text:
        raise ConfigError(f"{flag} is empty; give a file name")
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
        name = "pythia.npz" if flag == "--out" else "file"
        raise ConfigError(f"{what} ends with '{os.sep}', so it names a directory; give a file name such as "
                          f"{_shown(os.path.join(text, name))}")
    dest = real_path(text)
    via = "" if dest == Path(os.path.abspath(text)) else f" (a symlink to {_shown(dest)})"
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ConfigError(f"{what}{via} cannot be checked: {e.strerror}; choose another path") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{what}{via} is a directory; give a file name such as "
                              f"{_shown(os.path.join(text, EXAMPLE_NAMES.get(flag, 'out')))}")
        if not stat.S_ISREG(st.st_mode) and not append:
            raise ConfigError(f"{what}{via} is a {_kind(st.st_mode)}, not a regular file, and Pythia only "
                              f"replaces regular files; choose another path")
        if not append and not replace:
            raise ConfigError(f"{what}{via} already exists and would be replaced; choose another {flag}, "
                              f"or add --force to replace it")
        if stat.S_ISREG(st.st_mode) and _read_only(st, dest):
            raise ConfigError(f"{what}{via} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); make it "
                              f"writable (chmod u+w) or choose another {flag}")
        return dest
    parent = dest.parent
    if not parent.is_dir():
        raise ConfigError(f"{what}{via}: directory {_shown(parent)} does not exist; create it first or "
                          f"choose another path")
    return dest


def _same(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return real_path(a) == real_path(b)


def check_distinct(outputs: Mapping[str, str | os.PathLike | None],
                   inputs: Mapping[str, Iterable[str | os.PathLike]] | None = None) -> None:
    """ConfigError when an output is another output or any input (compared as real files)."""
    outs = [(flag, p) for flag, p in outputs.items() if p is not None]
    for i, (flag, p) in enumerate(outs):
        for other_flag, q in outs[:i]:
            if _same(Path(p), q):
                raise ConfigError(f"{flag} {_shown(p)} is the same file as {other_flag} {_shown(q)}; "
                                  f"give them different paths")
        for in_flag, files in (inputs or {}).items():
            for q in files:
                if _same(Path(p), q):
                    raise ConfigError(f"{flag} {_shown(p)} is also the input {in_flag} {_shown(q)}, which it "
                                      f"would overwrite; choose another {flag}")


def check_appendable(path: str | os.PathLike, *, flag: str,
                        inputs: Mapping[str, Iterable[str | os.PathLike]] | None = None) -> Path:
    """Check now that path can be appended to (a log); returns its real dest."""
    dest = _check_file(path, flag, replace=True, append=True)
    check_distinct({flag: path}, inputs)
    if not dest.exists():
        _probe_directory(dest.parent, flag, path)
    return dest


def _probe_directory(directory: Path, flag: str, path) -> None:
    """Create and remove a file in directory: the one sure test that it is writable (root, read-only mounts)."""
    try:
        fd = os.open(directory / f".{Path(path).name}.{os.getpid()}.probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ConfigError(f"{flag} {_shown(path)}: directory {_shown(directory)} is not writable "
                          f"({e.strerror}); choose a path in a directory you can write to") from None
    os.close(fd)
    os.unlink(directory / f".{Path(path).name}.{os.getpid()}.probe")


# ---- claiming an output -------------------------------------------------------------------------

@dataclass
class Claim:
    """An output this process holds: path as the user gave it, dest the real file written."""
    path: Path
    dest: Path
    flag: str
    _fd: int | None = None
    created: bool = False                       # a directory output this claim made (removed if left empty)

    @property
    def lock_path(self) -> Path:
        return _lock_path(self.dest)

    @property
    def note(self) -> str | None:
        """For a banner: where a symlinked path really writes."""
        return None if self.dest == Path(os.path.abspath(self.path)) else f"-> {self.dest}"

    def release(self) -> None:
        if self._fd is None:
            return
        if self._fd < 0:                        # checked but not locked (no fcntl)
            self._fd = None
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.lock_path).st_ino:
                os.unlink(self.lock_path)       # still ours: remove it while we hold the lock
        except OSError:
            pass
        if self.created:
            with contextlib.suppress(OSError):  # only if empty: a failed run leaves no trace
                self.dest.rmdir()
        os.close(self._fd)                      # closing drops the flock
        self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock: Path) -> str:
    try:
        pid = int(lock.read_text().strip())
        return f"process {pid}"
    except (OSError, ValueError):
        return "another process"


def _take_lock(dest: Path, flag: str, shown) -> int:
    """flock(LOCK_EX | LOCK_NB) on the sidecar, retried if the file was swapped under us."""
    lock = _lock_path(dest)
    if fcntl is None:                           # no flock on this system: check writability only
        _probe_directory(dest.parent, flag, shown)
        return -1
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise ConfigError(f"{flag} {_shown(shown)}: directory {_shown(dest.parent)} is not writable "
                              f"({e.strerror}); choose a path in a directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{flag} {_shown(shown)}: cannot lock {_shown(lock)} ({e.strerror}); "
                                  f"choose a path on a local disk") from None
            raise OutputBusy(f"{flag} {_shown(shown)} is being written by another Pythia run "
                             f"({_holder(lock)}); wait for it to finish, or choose another {flag}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)                            # the holder released and removed it meanwhile: retry
    raise OutputBusy(f"{flag} {_shown(shown)} is being claimed and released repeatedly by other runs; "
                     f"choose another {flag}")


def _remove_stale_temps(dest: Path) -> None:
    """Temporary files of dest left by a killed process (the name holds its pid)."""
    prefix = f".{dest.name}."
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(dest.parent / name)


def _check_dir(path: str | os.PathLike, flag: str, *, replace: bool) -> Path:
    """The real directory path names, after the checks for a directory output; ConfigError naming flag."""
    text = os.fspath(path)
    if not text:
        raise ConfigError(f"{flag} is empty; give a directory name")
    dest = real_path(text)
    what = f"{flag} {_shown(text)}" + ("" if dest == Path(os.path.abspath(text)) else f" (a symlink to {_shown(dest)})")
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise ConfigError(f"{what}: directory {_shown(dest.parent)} does not exist; create it first or "
                              f"choose another path") from None
        return dest
    except OSError as e:
        raise ConfigError(f"{what} cannot be checked: {e.strerror}; choose another path") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} is a {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'file'}, "
                          f"not a directory; give a directory name")
    if not replace and any(not n.startswith(".") for n in os.listdir(dest)):
        raise ConfigError(f"{what} already holds files that could be replaced; choose a new or empty "
                          f"directory, or add --force")
    return dest


def claim_output(path: str | os.PathLike, *, flag: str = "--out", replace: bool = False,
                 inputs: Mapping[str, Iterable[str | os.PathLike]] | None = None,
                 directory: bool = False) -> Claim:
    """Claim path for this process (see the module docstring); use as a context manager.

    directory=True claims a directory of outputs instead (export DIR, prepare DIR): it must be
    new, empty, or replace=True; it is created now (so its files can be written with
    atomic_write(claim.path / NAME, ...)) and removed again on release if it is still empty."""
    check = _check_dir if directory else _check_file
    check(path, flag, replace=replace)                  # cheap refusals first
    check_distinct({flag: path}, inputs)
    dest = real_path(path)
    fd = _take_lock(dest, flag, path)
    claim = Claim(Path(path), dest, flag, fd)
    try:
        check(path, flag, replace=replace)              # again: another run may just have finished it
        if directory:
            if not dest.exists():
                dest.mkdir()
                claim.created = True
            _probe_directory(dest, flag, path)
        else:
            _remove_stale_temps(dest)
    except BaseException:
        claim.release()
        raise
    return claim


def is_claimed(path: str | os.PathLike) -> bool:
    """Whether a live process holds path's lock (for picking a free default name)."""
    if fcntl is None:
        return False
    lock = _lock_path(real_path(path))
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


# ---- replacing a file ---------------------------------------------------------------------------

@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, then deliver them to the handlers they had.

    Handlers only work in the main thread; elsewhere the block runs unprotected (the temporary
    file is still removed on an exception)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for s in STOP_SIGNALS:
        old = signal.getsignal(s)
        if old is not None:                     # a handler not set from Python cannot be put back
            previous[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        for s in dict.fromkeys(pending):        # each signal once, in arrival order
            signal.raise_signal(s)


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], None]) -> Path:
    """Replace (or create) the regular file at path with what writer writes; returns the real dest.

    Raises ConfigError when the file exists and is not a regular file, OSError when the
    system refuses the write (the old file is then untouched and no temporary file is left).
    """
    dest = real_path(path)
    try:
        st = os.stat(dest)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{_shown(path)} is a {_kind(st.st_mode)}, not a regular file, and Pythia only "
                          f"replaces regular files; choose another path")
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with _signals_held():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fchmod(f.fileno(), mode)     # the replaced file's mode, or the usual one for a new file
                if st is not None and hasattr(os, "fchown") and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(OSError):   # only root may give a file away; others keep theirs
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _WRITTEN.append(Path(path))             # before the held signals are delivered: it is on disk
        _fsync_directory(dest.parent)
    return dest


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where the system allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- signals ------------------------------------------------------------------------------------

class SignalGuard:
    """What guard_signals() yields: which stop signal came (if any) and how to poll for it."""

    def __init__(self) -> None:
        self.signum: int | None = None   # the first stop signal received
        self.count = 0                   # stop signals received
        self._polled = 0

    def requested(self) -> bool:
        """True once a stop signal arrived: stop at the next safe point."""
        return self.signum is not None

    @contextlib.contextmanager
    def polled(self) -> Iterator["SignalGuard"]:
        """Within this block the caller polls requested(); the first signal waits for it."""
        self._polled += 1
        try:
            yield self
        finally:
            self._polled -= 1

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        return 128 + self.signum if self.signum is not None else 0

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self.count == 1 and self._polled:
            return
        raise Interrupted(signum, second=self.count > 1)


@contextlib.contextmanager
def guard_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[SignalGuard]:
    """Route the stop signals to a SignalGuard for the block; the previous handlers come back after."""
    guard = SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {}
    for s in signals:
        if signal.getsignal(s) in (signal.SIG_IGN, None):
            continue                            # ignored on purpose (nohup, a parent's choice): keep it so
        previous[s] = signal.signal(s, guard._handle)
    try:
        yield guard
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


# ---- streams that go away -----------------------------------------------------------------------

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
