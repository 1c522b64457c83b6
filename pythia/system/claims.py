"""Claiming an output: before any work, check that a file (or a folder) may be written and lock it.

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
    A directory output is never a symlink, '.', a folder holding the working directory or a
    mount point (it is replaced by renaming a finished folder into its place, which these cannot
    take), and with owned=NAMES, replace=True replaces only a folder holding nothing but NAMES
    (the files that command writes): a file it did not write is never deleted.
check_replaceable_directory(path, flag, owned=..., replace=...)
    Those directory rules alone, for a writer that checks before it claims.
check_appendable(path, flag=..., inputs=...)
    The same checks for a file that is only ever appended to (a log): directories and inputs are
    refused; /dev/stdout or a FIFO is fine, as nothing is ever replaced.
check_distinct(outputs, inputs)
    One output may not be another output or one of the inputs (the corpus, a source checkpoint).

The files themselves are written with pythia.system.atomic.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..errors import ConfigError
from .atomic import real_path, remove_stale_temps
from .inputs import file_kind

try:
    import fcntl
except ImportError:                             # not POSIX: outputs are checked but not locked
    fcntl = None  # type: ignore[assignment]

EXAMPLE_NAMES = {"--out": "pythia.npz", "--log-file": "log.jsonl", "--plot": "loss.svg"}   # for "give a file name"


class OutputBusy(ConfigError):
    """Another live process has claimed the same output."""


def _shown(path: str | os.PathLike) -> str:
    return repr(os.fspath(path))


def _read_only(st: os.stat_result, path: Path) -> bool:
    """No one may write it: as root any write bit counts (root may write anything), else access()."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return not st.st_mode & 0o222
    return not os.access(path, os.W_OK)


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
            raise ConfigError(f"{what}{via} is {file_kind(st.st_mode)}, not a regular file, and Pythia only "
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
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as e:                # a full disk: no lock file may stay behind
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                os.close(fd)
                raise ConfigError(f"{flag} {_shown(shown)}: cannot write the lock {_shown(lock)} "
                                  f"({e.strerror}); free space on that disk or choose another {flag}") from None
            return fd
        os.close(fd)                            # the holder released and removed it meanwhile: retry
    raise OutputBusy(f"{flag} {_shown(shown)} is being claimed and released repeatedly by other runs; "
                     f"choose another {flag}")


def check_replaceable_directory(path: str | os.PathLike, flag: str, *, replace: bool = False,
                                owned: Iterable[str] | None = None) -> None:
    """ConfigError unless a finished folder can be renamed into path's place (module docstring):
    no symlink, no '.', no folder holding the working directory, no mount point, and with
    owned (the names the writer writes), no file in an existing folder that replace would delete
    but the writer did not write."""
    text = os.fspath(path)
    bare = text.rstrip(os.sep) or text
    if os.path.islink(bare):
        raise ConfigError(f"{flag} {_shown(text)} is a symbolic link; Pythia writes a real folder and does not "
                          f"replace a link, so give the folder it points to ({_shown(os.path.realpath(bare))}) "
                          f"or a new name")
    dest = real_path(bare)
    place = None
    if os.path.basename(bare) in (".", "..") or dest == Path(dest.anchor):
        place = "the current folder, its parent or the root"
    elif _holds_cwd(dest):
        place = "the current working directory or a folder holding it"
    elif dest.is_dir() and os.path.ismount(dest):
        place = "a mount point"
    if place is not None:
        raise ConfigError(f"{flag} {_shown(text)} is {place}, which Pythia cannot replace (it renames a "
                          f"finished folder into place); give a new folder name such as "
                          f"{_shown(os.path.join(bare, 'out'))}")
    if owned is None or not replace or not dest.is_dir():
        return
    keep = set(owned)
    try:
        foreign = sorted(n for n in os.listdir(dest) if n not in keep)
    except OSError as e:
        raise ConfigError(f"{flag} {_shown(text)} cannot be listed: {e.strerror}; choose another {flag}") from None
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(f"{flag} {_shown(text)} holds {foreign[0]!r}{more}, which this command did not write "
                          f"(it writes {', '.join(sorted(keep))}); even --force replaces only a folder of its own "
                          f"files, so move that away or choose another {flag}")


def _holds_cwd(dest: Path) -> bool:
    try:
        cwd = Path(os.getcwd()).resolve()
    except OSError:
        return False
    return cwd == dest or dest in cwd.parents


def _check_dir(path: str | os.PathLike, flag: str, *, replace: bool, owned: Iterable[str] | None = None) -> Path:
    """The real directory path names, after the checks for a directory output; ConfigError naming flag."""
    text = os.fspath(path)
    if not text:
        raise ConfigError(f"{flag} is empty; give a directory name")
    check_replaceable_directory(text, flag, replace=replace, owned=owned)
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
        raise ConfigError(f"{what} is {file_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}, "
                          f"not a directory; give a directory name")
    if not replace and any(not n.startswith(".") for n in os.listdir(dest)):
        raise ConfigError(f"{what} already holds files that could be replaced; choose a new or empty "
                          f"directory, or add --force")
    return dest


def claim_output(path: str | os.PathLike, *, flag: str = "--out", replace: bool = False,
                 inputs: Mapping[str, Iterable[str | os.PathLike]] | None = None,
                 directory: bool = False, owned: Iterable[str] | None = None) -> Claim:
    """Claim path for this process (see the module docstring); use as a context manager.

    directory=True claims a directory of outputs instead (export DIR, prepare DIR): it must be
    new, empty, or replace=True; it is created now (so its files can be written with
    atomic_write(claim.path / NAME, ...)) and removed again on release if it is still empty."""
    if directory:
        def check(path, flag, *, replace):
            return _check_dir(path, flag, replace=replace, owned=owned)
    else:
        check = _check_file
    check(path, flag, replace=replace)                  # cheap refusals first
    check_distinct({flag: path}, inputs)
    dest = real_path(path)
    fd = _take_lock(dest, flag, path)
    claim = Claim(Path(path), dest, flag, fd)
    try:
        check(path, flag, replace=replace)              # again: another run may just have finished it
        remove_stale_temps(dest)                        # of a killed process: its file or folder
        if directory:
            if not dest.exists():
                dest.mkdir()
                claim.created = True
            _probe_directory(dest, flag, path)
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
