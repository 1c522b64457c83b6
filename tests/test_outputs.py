"""pythia.system.claims, atomic, signals and streams in-process: atomic replacement, modes, symlinks, claims, held signals, lost streams.

The command-line behaviour built on these is proven in test_outputs_cli.py; here each piece is
checked on its own against what the operating system reports (stat, readlink, flock).
"""
import io
import os
import signal
import stat
import subprocess
import sys

import pytest

from pythia.errors import ConfigError
from pythia.system.atomic import atomic_write, written_files
from pythia.system.claims import OutputBusy, check_appendable, check_distinct, claim_output, is_claimed
from pythia.system.signals import Interrupted, guard_signals, interrupted_message
from pythia.system.streams import _Optional


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_atomic_write_replaces_the_content_and_keeps_the_mode(tmp_path, mode):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    p.chmod(mode)
    atomic_write(p, lambda f: f.write(b"new"))
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == mode
    assert names(tmp_path) == ["f.bin"]


def test_atomic_write_gives_a_new_file_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o640


def test_atomic_write_updates_a_symlinks_file_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to(real)
    assert atomic_write(tmp_path / "link.bin", lambda f: f.write(b"new")) == real
    assert (tmp_path / "link.bin").is_symlink() and real.read_bytes() == b"new"


def test_atomic_write_refuses_a_fifo_and_leaves_nothing(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ConfigError, match="FIFO"):
        atomic_write(tmp_path / "pipe", lambda f: f.write(b"x"))
    assert names(tmp_path) == ["pipe"] and stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failing_writer_leaves_the_old_file_whole_and_no_temporary(tmp_path, exc):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")

    def writer(f):
        f.write(b"half")
        raise exc
    with pytest.raises(type(exc)):
        atomic_write(p, writer)
    assert p.read_bytes() == b"old" and names(tmp_path) == ["f.bin"]


def test_a_signal_during_a_write_waits_for_the_rename(tmp_path):
    p = tmp_path / "f.bin"
    seen = []

    def writer(f):
        os.kill(os.getpid(), signal.SIGTERM)            # arrives mid-write
        f.write(b"complete")
        seen.append("written")
    with guard_signals() as stop:
        with pytest.raises(Interrupted) as e:           # not polled: delivered once the file is in place
            atomic_write(p, writer)
            seen.append("returned")
    assert e.value.signum == signal.SIGTERM and e.value.exit_status == 143
    assert seen == ["written"] and p.read_bytes() == b"complete" and names(tmp_path) == ["f.bin"]
    assert stop.requested() and "'" + str(p) + "', is complete" in interrupted_message(e.value, written_files())


def test_polled_guard_only_flags_the_first_signal_and_raises_on_the_second():
    with guard_signals() as stop, stop.polled():
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.requested() and stop.exit_status == 129 and stop.name == "SIGHUP"
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGINT)
    assert e.value.second and isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL   # the previous handler is back


def test_a_claim_is_exclusive_across_processes_and_released(tmp_path):
    p = tmp_path / "m.npz"
    code = "import sys; from pythia.system.claims import claim_output; claim_output(sys.argv[1])"
    with claim_output(p) as claim:
        assert claim.lock_path.exists() and is_claimed(p)
        r = subprocess.run([sys.executable, "-c", code + "\n", str(p)], capture_output=True, text=True)
        assert r.returncode == 1 and f"OutputBusy: --out {str(p)!r} is being written by another Pythia run " \
                                      f"(process {os.getpid()})" in r.stderr
        with pytest.raises(OutputBusy):                 # flock is per open file: also within one process
            claim_output(p)
    assert not is_claimed(p) and names(tmp_path) == []


@pytest.mark.parametrize("path, needle", [("x/", "names a directory"), (".", "is a directory"),
                                          ("missing/m.npz", "does not exist")])
def test_claim_refuses_paths_that_are_not_files(tmp_path, monkeypatch, path, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=needle):
        claim_output(path)
    assert names(tmp_path) == []


def test_claim_refuses_an_existing_file_unless_replacing_and_an_input_always(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("corpus")
    with pytest.raises(ConfigError, match="already exists"):
        claim_output(p)
    with pytest.raises(ConfigError, match="also the input --data"):
        claim_output(p, replace=True, inputs={"--data": [p]})
    with pytest.raises(ConfigError, match="same file as --out"):
        check_distinct({"--out": p, "--log-file": tmp_path / "." / "c.txt"})
    assert names(tmp_path) == ["c.txt"]


def test_an_appended_file_may_be_a_device_but_not_a_directory(tmp_path):
    check_appendable("/dev/null", flag="--log-file")
    with pytest.raises(ConfigError, match="is a directory"):
        check_appendable(tmp_path, flag="--log-file")


class Gone(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation


def test_a_stream_whose_reader_left_swallows_writes():
    s = _Optional(Gone())
    assert s.write("hello") == 5 and s.gone
    s.write("more")
    s.flush()


def test_a_directory_claim_makes_the_directory_and_removes_it_if_nothing_was_written(tmp_path):
    out = tmp_path / "export"
    with claim_output(out, directory=True) as claim:
        assert out.is_dir() and is_claimed(out)
        with pytest.raises(OutputBusy):
            claim_output(out, directory=True)
    assert names(tmp_path) == []                         # a failed export leaves no empty directory
    with claim_output(out, directory=True) as claim:
        atomic_write(claim.path / "config.json", lambda f: f.write(b"{}"))
    assert names(tmp_path) == ["export"] and names(out) == ["config.json"]


def test_a_directory_claim_refuses_a_file_and_a_directory_with_files_unless_replacing(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_output(tmp_path / "f", directory=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.bin").write_text("x")
    with pytest.raises(ConfigError, match="already holds files"):
        claim_output(tmp_path / "d", directory=True)
    with claim_output(tmp_path / "d", directory=True, replace=True):
        pass
    assert names(tmp_path / "d") == ["old.bin"] and names(tmp_path) == ["d", "f"]
