"""Running Pythia from the tests, and the settings of the tiny models they train.

run_cli(args, cwd) runs the command line in this process, through `pythia.cli.main(args)`, and
returns what subprocess.run would (returncode, stdout, stderr as text). It is for the many cases
whose whole check is an exit status, a line of output and the files left behind: starting a
fresh interpreter for each costs far more than the case itself. It puts back everything main()
and the commands may change in the process: the working directory, sys.argv, the standard
streams, the handlers of the stop signals, the environment, the BLAS thread count and every
module-level variable of the pythia package (the kernel backend, the files saved, the state of
an in-place progress bar). Like the child process it replaces, a run has a deadline and a cap
on the memory it may add, so a regression that waits on a FIFO or reads /dev/zero without end
fails the case instead of hanging the suite or eating the machine.

run_subprocess(args, cwd) runs `python -m pythia` in a fresh interpreter, for what needs a
process of its own: signals sent to it, standard descriptors closed at start, a terminal,
a lock held by another process, MPI, a kernel backend chosen at import.
"""
from __future__ import annotations

import io
import os
import resource
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pythia

REPO = Path(pythia.__file__).resolve().parent.parent
GPT2 = REPO / "tests" / "fixtures" / "gpt2"

# The tiny model every command-line test trains: 16 wide, one layer, context 8, two sequences
# a batch, one batch per evaluation. TINY adds a five-step run with one evaluation at its end.
TINY_MODEL = ["--d-model", "16", "--n-layer", "1", "--n-head", "2", "--block-size", "8", "--batch-size", "2",
              "--eval-iters", "1"]
TINY = ["--steps", "5", *TINY_MODEL, "--eval-interval", "5"]
TEXT = ("User: Hello! Who are you?\nPythia: I am Pythia, a small model.\n\n"
        "The sea is large and old, and the wind moves over it all day long.\n") * 12

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
STATUS = ("pythia: ", "warning: fell back", "dropped ")  # generate's status lines on stderr
DEADLINE = 180.0                 # seconds an in-process run may take, as a child's timeout
MEMORY_CAP = 4 << 30             # bytes of address space an in-process run may add


class Hung(BaseException):
    """An in-process run passed its deadline (a BaseException: no handler of Pythia's takes it)."""


def _deadline(signum, frame):
    raise Hung(f"the command did not finish within {DEADLINE:.0f} s")


@dataclass
class Result:
    """What a run of Pythia left: its exit status and its output, decoded as UTF-8."""
    returncode: int
    stdout: str
    stderr: str


def subprocess_env(env: dict | None = None) -> dict:
    """The environment for a `python -m pythia` child: the code under test first on the path,
    colour left to the terminal (NO_COLOR of the shell that started pytest removed)."""
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    full.pop("NO_COLOR", None)
    full.update(env or {})
    return full


def run_subprocess(args, cwd, stdin: str | bytes = "", timeout: float = 180, env: dict | None = None,
                   **kw) -> subprocess.CompletedProcess:
    """`python -m pythia *args` in cwd in a fresh interpreter; stdin is text, or bytes sent as
    they are; stdout and stderr come back decoded as UTF-8."""
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8")
    r = subprocess.run([sys.executable, "-m", "pythia", *args], cwd=cwd, input=stdin, capture_output=True,
                       timeout=timeout, env=subprocess_env(env), **kw)
    r.stdout = r.stdout.decode("utf-8", errors="replace")
    r.stderr = r.stderr.decode("utf-8", errors="replace")
    return r


def run_cli(args, cwd, stdin: str | bytes = "", env: dict | None = None) -> Result:
    """`pythia.cli.main(args)` in this process, as `python -m pythia *args` would run in cwd with
    stdin piped in; every change it makes to the process is undone before returning.

    An exception main() lets through becomes a traceback on stderr and status 1, as the
    interpreter would make it, so a test's "no traceback" check still sees it."""
    from pythia import cli
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    out, err = _stream(), _stream()
    saved = _ProcessState()
    try:
        from pythia.system import atomic
        atomic._WRITTEN.clear()                  # a new process has saved nothing yet (put back after)
        cap, hard = _address_space() + MEMORY_CAP, saved.rlimit_as[1]
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        signal.signal(signal.SIGALRM, _deadline)
        signal.setitimer(signal.ITIMER_REAL, DEADLINE)
        os.chdir(cwd)
        os.environ.pop("NO_COLOR", None)
        os.environ.update(env or {})
        sys.argv = [str(REPO / "pythia" / "__main__.py"), *args]   # the program is `python -m pythia`
        sys.stdin, sys.stdout, sys.stderr = _stream(data), out, err
        try:
            status = cli.main(list(args))
        except SystemExit as e:                  # --help and --version exit from argparse
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:                    # noqa: B036 - a real process would print it and die
            signal.setitimer(signal.ITIMER_REAL, 0)
            traceback.print_exc(file=err)
            status = 1
        text = [_text(s) for s in (out, err)]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        saved.restore()
    return Result(status, *text)


def _stream(data: bytes | None = None) -> io.TextIOWrapper:
    """A text stream over bytes in memory, as a pipe looks to Pythia (UTF-8, not a terminal)."""
    return io.TextIOWrapper(io.BytesIO(data or b""), encoding="utf-8", newline="\n" if data else None,
                            write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    try:
        stream.flush()
    except ValueError:                           # closed by the code under test
        pass
    return stream.buffer.getvalue().decode("utf-8", errors="replace")


class _ProcessState:
    """What a command may change in the process, taken before it runs and put back after."""

    def __init__(self):
        self.cwd = os.getcwd()
        self.environ = dict(os.environ)
        self.argv = list(sys.argv)
        self.streams = (sys.stdin, sys.stdout, sys.stderr)
        self.handlers = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, signal.SIGALRM)}
        self.rlimit_as = resource.getrlimit(resource.RLIMIT_AS)
        self.blas = _blas_threads()
        from pythia import kernels
        self.kernel_threads = kernels.set_thread_limit(1)        # read by setting, then put back
        kernels.set_thread_limit(self.kernel_threads)
        self.affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.modules = {name: _snapshot(m) for name, m in list(sys.modules.items())
                        if name == "pythia" or name.startswith("pythia.")}

    def restore(self) -> None:
        sys.stdin, sys.stdout, sys.stderr = self.streams
        sys.argv = self.argv
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.environ)
        for s, handler in self.handlers.items():
            signal.signal(s, handler)
        resource.setrlimit(resource.RLIMIT_AS, self.rlimit_as)
        for name, saved in self.modules.items():
            _put_back(sys.modules[name], saved)
        if self.blas is not None and _blas_threads() != self.blas:
            from pythia.system import threads
            threads.blas_set(self.blas)
        from pythia import kernels
        kernels.set_thread_limit(self.kernel_threads)          # MPI core pinning sets both in-process
        if self.affinity is not None and os.sched_getaffinity(0) != self.affinity:
            os.sched_setaffinity(0, self.affinity)


def _snapshot(module) -> dict:
    """A module's variables, with a copy of each list's items (a list is how a module keeps a
    record or a flag it changes in place; its dicts are tables and caches, left as they are)."""
    return {k: (v, list(v) if type(v) is list else None) for k, v in vars(module).items()}


def _put_back(module, saved: dict) -> None:
    names = vars(module)
    for k, (value, items) in saved.items():
        if names.get(k) is not value:
            names[k] = value
        if items is not None:
            value[:] = items


def _address_space() -> int:
    """Bytes of address space this process has mapped now (VmSize)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def _blas_threads() -> int | None:
    """NumPy's BLAS thread count, when Pythia can read it (None otherwise)."""
    try:
        from pythia.system import threads
        return threads.blas_get()
    except (ImportError, AttributeError):
        return None


# ---- what every command-line test checks ----------------------------------------------------------

def assert_ok(r) -> None:
    """Exit status 0 and no traceback."""
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr


def assert_one_line_error(r, needle: str) -> None:
    """Non-zero exit and exactly one `error:` line, last on stderr; nothing else but status lines."""
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert all(line.startswith(STATUS) for line in lines[:-1]), r.stderr
    assert needle in lines[-1], lines[-1]
    assert "Traceback" not in r.stdout + r.stderr
