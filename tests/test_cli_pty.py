"""The interactive program in a pseudo-terminal, as a person at a keyboard meets it.

`pty.fork()` makes the terminal the child's controlling terminal, so writing \\x03 (Ctrl-C) or
\\x04 (Ctrl-D) to it is exactly a keypress: the terminal driver turns them into SIGINT and end of
input. Models are tiny; the long-running cases (a reply or a training run that would go on for
minutes) are always cut short by the Ctrl-C under test, and every wait has a generous deadline
so a hang fails instead of blocking the suite.
"""
import os
import re
import select
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

from helpers import TINY_MODEL as TINY, assert_ok, run_cli, subprocess_env

pty = pytest.importorskip("pty")
if sys.platform == "win32":  # pragma: no cover
    pytest.skip("pseudo-terminals are POSIX only", allow_module_level=True)

DEADLINE = 120.0  # seconds: only reached when something hangs


def _env(**extra):
    return subprocess_env({"TERM": "xterm", **extra})


SGR = re.compile(rb"\x1b\[[0-9;]*m")  # an ANSI colour/style code


class Terminal:
    """A child `python -m pythia ...` on a pseudo-terminal 100 columns wide."""

    def __init__(self, args, cwd, **env):
        pid, fd = pty.fork()
        if pid == 0:  # child: becomes the program
            try:
                os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, "-m", "pythia", *args], _env(**env))
            finally:
                os._exit(127)
        import fcntl
        import termios
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.pid, self.fd, self.out, self.status = pid, fd, b"", None

    def _read_some(self, timeout):
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            raise EOFError
        self.out += chunk
        return True

    def expect(self, pattern: bytes, start: int = 0) -> int:
        """Read until pattern appears in the output after offset start; returns the end offset."""
        deadline = time.monotonic() + DEADLINE
        while True:
            i = self.out.find(pattern, start)
            if i >= 0:
                return i + len(pattern)
            try:
                self._read_some(max(0.0, deadline - time.monotonic()))
            except EOFError:
                raise AssertionError(f"program ended before {pattern!r}; output:\n{self.text()}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {DEADLINE}s; output:\n{self.text()}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self) -> int:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                try:
                    while self._read_some(0.05):
                        pass
                except EOFError:
                    pass
                return self.status
            try:
                self._read_some(0.05)
            except EOFError:
                pass
        raise AssertionError(f"program did not exit; output:\n{self.text()}")

    def text(self) -> str:
        return self.out.decode("utf-8", errors="replace")

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def term():
    made = []

    def start(args, cwd, **env):
        t = Terminal(args, cwd, **env)
        made.append(t)
        return t
    yield start
    for t in made:
        t.close()


def test_progress_is_redrawn_in_place_then_chat_and_quit(tmp_path, term):
    t = term(["train-chat", *TINY, "--steps", "300", "--eval-interval", "100"], tmp_path)
    end = t.expect(b"you> ")
    region = t.out[t.out.find(b"Training"):t.out.find(b"Trained")]
    redraws = re.findall(rb"\r(?!\n)", region)          # a carriage return not ending a line
    assert len(redraws) >= 3, t.text()                  # first step, evaluations, last step at least
    assert b"300/300" in region and b"ETA" in region
    assert region.count(b"\n") <= 3                     # the bar stays on one line (plus its end)
    assert SGR.search(t.out)                            # a terminal gets colour
    t.send(b"quit\n")
    t.expect(b"Goodbye", end)
    assert t.wait() == 0


def test_ctrl_c_during_a_reply_returns_to_the_prompt(tmp_path, term):
    # A corpus without newlines or colons: the model can never end a turn, so only Ctrl-C can.
    (tmp_path / "c.txt").write_text("abc abd bca cab dab " * 300, encoding="utf-8")
    assert_ok(run_cli(["train", "--data", "c.txt", "--out", "m.npz", "--steps", "5", "--eval-interval", "5", *TINY],
                      tmp_path))
    t = term(["chat", "--checkpoint", "m.npz", "--max-new-tokens", "10000000", "--seed", "1"], tmp_path)
    at = t.expect(b"you> ")
    t.send(b"ab\n")
    at = t.expect(b"pythia> ", at)
    t.expect(b"a", at)                                   # the reply is streaming
    t.send(b"\x03")
    at = t.expect(b"(reply interrupted)", at)
    at = t.expect(b"you> ", at)
    t.send(b"/len 3\n")
    at = t.expect(b"you> ", at)
    t.send(b"ba\n")                                      # the chat still works after the interrupt
    at = t.expect(b"pythia> ", at)
    at = t.expect(b"you> ", at)
    t.send(b"exit\n")
    assert t.wait() == 0
    assert b"Traceback" not in t.out


def test_ctrl_c_during_training_saves_and_goes_on_to_chat(tmp_path, term):
    t = term(["train-chat", *TINY, "--steps", "10000000", "--eval-interval", "1000000"], tmp_path)
    at = t.expect(b"Training")
    at = t.expect(b"/10000000", at)                      # the bar is up: training is under way
    t.send(b"\x03")
    at = t.expect(b"Stopped early at step", at)
    at = t.expect(b"you> ", at)
    assert (tmp_path / "pythia-chat.npz").is_file()
    t.send(b"\x04")                                      # Ctrl-D leaves
    t.expect(b"Goodbye", at)
    assert t.wait() == 0
    assert b"Traceback" not in t.out


def _ctrl_c_at_prompt(t, at: int) -> int:
    """Ctrl-C while input() waits for a line.

    Python's readline notices SIGINT only while it sleeps in select(); a signal landing just
    before that is only acted on after the next Enter (for a person as for this test). So wait
    until the process is asleep (state S in /proc) several polls in a row, then press Ctrl-C.
    """
    stat = Path(f"/proc/{t.pid}/stat")
    if stat.exists():
        asleep, deadline = 0, time.monotonic() + DEADLINE
        while asleep < 5 and time.monotonic() < deadline:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            asleep = asleep + 1 if state == "S" else 0
            time.sleep(0.02)
    else:  # pragma: no cover  (no /proc: give it a moment)
        time.sleep(0.5)
    t.send(b"\x03")
    return at


def test_ctrl_c_twice_at_the_prompt_leaves(tmp_path, term):
    t = term(["train-chat", *TINY, "--steps", "3", "--eval-interval", "3"], tmp_path)
    at = t.expect(b"you> ")
    at = _ctrl_c_at_prompt(t, at)
    at = t.expect(b"press Ctrl-C again", at)
    at = t.expect(b"you> ", at)
    at = _ctrl_c_at_prompt(t, at)
    t.expect(b"Goodbye", at)
    assert t.wait() == 0


def test_no_color_turns_colour_off_on_a_terminal(tmp_path, term):
    t = term(["train-chat", *TINY, "--steps", "20", "--eval-interval", "10"], tmp_path, NO_COLOR="1")
    at = t.expect(b"you> ")
    t.send(b"quit\n")
    t.expect(b"Goodbye", at)
    assert t.wait() == 0
    assert b"\r  " in t.out and not SGR.search(t.out)   # still drawn in place, but plain


def test_ctrl_c_during_train_saves_a_resumable_checkpoint_and_exits_130(tmp_path, term):
    from pythia.formats.checkpoint import load_checkpoint
    t = term(["train", *TINY, "--steps", "10000000", "--eval-interval", "1000000", "--out", "m.npz"], tmp_path)
    at = t.expect(b"/10000000")
    t.send(b"\x03")
    at = t.expect(b"Stopped early at step", at)
    t.expect(b"--resume m.npz", at)
    assert t.wait() == 130
    ck = load_checkpoint(tmp_path / "m.npz")
    assert ck.step > 0 and ck.optimizer_arrays is not None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]   # no half-written file


def test_clear_erases_the_screen(tmp_path, term):
    t = term(["train-chat", *TINY, "--steps", "3", "--eval-interval", "3"], tmp_path)
    at = t.expect(b"you> ")
    t.send(b"/clear\n")
    at = t.expect(b"\x1b[2J", at)
    at = t.expect(b"you> ", at)
    t.send(b"exit\n")
    assert t.wait() == 0
