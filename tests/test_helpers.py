"""The test helper that runs Pythia in this process puts the process back as it found it, and
reports what a real process would (status, output, a traceback for an uncaught exception); a run
that hangs or reads without end fails instead."""
import os
import signal
import sys

import helpers
import pythia.kernels as kernels
from helpers import TEXT, TINY, run_cli


def test_what_a_command_changes_is_put_back(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels, "BACKEND", "the backend before")   # --kernels numpy rebinds it
    before = (os.getcwd(), list(sys.argv), sys.stdout, kernels.softmax_forward)
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    r = run_cli(["train", "--data", "c.txt", "--out", "m.npz", "--kernels", "numpy", *TINY], tmp_path)
    assert r.returncode == 0 and "numpy" in r.stdout and (tmp_path / "m.npz").is_file(), r.stderr
    assert (os.getcwd(), sys.argv, sys.stdout, kernels.softmax_forward) == before
    assert kernels.BACKEND == "the backend before"


def test_the_saved_state_undoes_each_kind_of_change(tmp_path):
    import pythia.ui as ui
    mine = lambda signum, frame: None  # noqa: E731
    old = signal.signal(signal.SIGTERM, mine)
    try:
        state = helpers._ProcessState()
        os.chdir(tmp_path)
        os.environ["PYTHIA_TEST_HELPER"] = "set"
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        ui._OPEN_LINE[0] = not ui._OPEN_LINE[0]                       # a module's list changed in place
        state.restore()
        assert os.getcwd() == state.cwd and "PYTHIA_TEST_HELPER" not in os.environ
        assert signal.getsignal(signal.SIGTERM) is mine
        assert ui._OPEN_LINE == state.modules["pythia.ui"]["_OPEN_LINE"][1]
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_uncaught_exception_is_a_traceback_and_status_1(tmp_path, monkeypatch):
    def boom(argv):
        print("half a line", end="")
        raise RuntimeError("a bug")
    monkeypatch.setattr("pythia.cli.main", boom)
    r = run_cli(["train"], tmp_path)
    assert r.returncode == 1 and r.stdout == "half a line"
    assert "Traceback" in r.stderr and "RuntimeError: a bug" in r.stderr


def test_stdin_is_piped_text_and_help_exits_0(tmp_path):
    r = run_cli(["--help"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m pythia")   # named as `python -m pythia`
    r = run_cli(["chat", "--checkpoint", "missing.npz"], tmp_path, stdin="Hello\nquit\n")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "missing.npz" in r.stderr


def test_a_run_that_hangs_or_eats_memory_fails_instead(tmp_path, monkeypatch):
    import pythia.cli
    os.mkfifo(tmp_path / "pipe")
    monkeypatch.setattr(helpers, "DEADLINE", 0.5)
    monkeypatch.setattr(pythia.cli, "main", lambda argv: open(tmp_path / "pipe").read())   # no writer: blocks
    r = run_cli(["x"], tmp_path)
    assert r.returncode == 1 and "Hung: the command did not finish" in r.stderr, r.stderr
    monkeypatch.setattr(helpers, "MEMORY_CAP", 256 << 20)
    monkeypatch.setattr(pythia.cli, "main", lambda argv: len(bytearray(1 << 30)))
    r = run_cli(["x"], tmp_path)
    assert r.returncode == 1 and "MemoryError" in r.stderr, r.stderr
    monkeypatch.undo()
    assert run_cli(["--version"], tmp_path).returncode == 0       # the deadline and the cap are lifted after
    assert len(bytearray(1 << 30)) == 1 << 30
