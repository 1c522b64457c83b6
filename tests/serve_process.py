"""A `python -m pythia serve` child on a free port, for the tests that speak HTTP to a real server."""
from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers import subprocess_env

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "hf_models"


class Server:
    def __init__(self, args: list[str], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "pythia", "serve", "--port", "0", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(env))
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            found = re.search(r"listening on (http://\S+?)/ ", line)
            if found:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> str:
        if not self._ready.wait(timeout) or self.url is None:
            self.proc.kill()
            raise AssertionError("the server did not start:\n" + "\n".join(self.lines))
        return self.url

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("the server did not stop within the timeout") from None

    @property
    def stderr(self) -> str:
        time.sleep(0.1)
        return "\n".join(self.lines)


@contextlib.contextmanager
def serving(*args: str, env: dict | None = None):
    s = Server(list(args), env)
    try:
        s.wait_ready()
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)
