"""Atomic writes: a file or a folder the user keeps is replaced whole or not at all.

atomic_write(path, writer)
    writer(f) fills a temporary file `.NAME.<pid>.<random>.tmp` in the same directory; it is
    fsynced and renamed over the file only when complete, so the old file stays whole until
    the new one is. The file keeps its mode (0600 stays 0600) and, as root, its owner; a
    symlink is followed so the file it points to is updated; only a regular file is ever replaced.
    The stop signals arriving meanwhile are held until the rename is done and then delivered as
    usual (pythia.system.signals.held_signals): a save is never cut short and leaves no temporary file.
new_directory(out) and install_directory(tmp, out)
    The same for a folder of outputs (export DIR, prepare DIR): the files go into a temporary
    sibling folder `.NAME.<random>.tmp`, which is renamed to out only once complete. Anything
    already at out is moved aside first and removed only once the new folder is in place.
written_files()
    Every file atomic_write completed in this process, in order: what an interrupted run can say
    it saved.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import ConfigError
from .inputs import file_kind
from .signals import held_signals

_WRITTEN: list[Path] = []        # every file atomic_write completed in this process, in order


def written_files() -> list[Path]:
    """The files atomic_write has completed in this process (what an interrupted run can say it saved)."""
    return list(_WRITTEN)


def umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def real_path(path: str | os.PathLike) -> Path:
    """The file a write to path lands in: symlinks followed (also a dangling one), made absolute."""
    return Path(os.path.realpath(os.fspath(path)))


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
        raise ConfigError(f"{os.fspath(path)!r} is {file_kind(st.st_mode)}, not a regular file, and Pythia only "
                          f"replaces regular files; choose another path")
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~umask()
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with held_signals():
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
        fsync_directory(dest.parent)
    return dest


def remove_stale_temps(dest: Path) -> None:
    """Temporary files of dest left by a killed process (their name holds its pid)."""
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
            stale = dest.parent / name
            if stale.is_dir() and not stale.is_symlink():          # a folder output's (new_directory)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(stale)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_directory(directory: Path) -> None:
    """Make a rename in directory durable (where the system allows opening a directory)."""
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


def new_directory(out: Path) -> Path:
    """A new empty temporary folder `.NAME.<pid>.<random>.tmp` beside out, for install_directory(tmp,
    out) (the pid lets a later claim of out remove it if this process is killed); OSError if refused."""
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp"))


def install_directory(tmp: Path, out: Path) -> None:
    """Make the finished folder tmp (from new_directory(out)) the folder out.

    Its files are fsynced and it gets the usual permissions (mkdtemp makes 0700). A new out, or
    an empty folder there, is replaced by the rename itself; anything else at out (the caller has
    checked that it may go) is first moved aside, put back if the rename fails, and removed only
    once the new folder is in place. The stop signals wait until it is done (held_signals): the
    old folder is never left aside under its temporary name, and on any failure no `.old` remains."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.chmod(tmp, 0o777 & ~umask())
    with held_signals():
        if not os.path.lexists(out):
            os.rename(tmp, out)
        elif out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
            os.replace(tmp, out)                                  # rename(2) onto an empty directory
        else:
            holder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".old"))
            aside = holder / "old"
            try:
                os.rename(out, aside)
            except BaseException:
                os.rmdir(holder)                                  # refused (busy, a mount): nothing moved
                raise
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(aside, out)
                os.rmdir(holder)
                raise
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(holder, ignore_errors=True)
            else:
                aside.unlink()
                os.rmdir(holder)
        fsync_directory(out.parent)
