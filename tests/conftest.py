"""Shared pytest setup: say which kernel backend this run exercises, give the programs the
tests start the stop signals' usual dispositions, and a full disk to write to."""
import shutil
import signal
import subprocess

import pytest

import pythia.kernels as kernels

# A signal ignored by whoever started pytest stays ignored in every program pytest starts (exec
# keeps SIG_IGN): a shell's background job ignores SIGINT, nohup ignores SIGHUP. Pythia leaves an
# ignored signal ignored on purpose (pythia.system.signals.guard_signals), so the tests that stop a
# program with Ctrl-C, SIGHUP or SIGTERM need them un-ignored here, whatever launched the suite.
for _signum, _handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL),
                          (signal.SIGTERM, signal.SIG_DFL)):
    if signal.getsignal(_signum) == signal.SIG_IGN:
        signal.signal(_signum, _handler)


def pytest_report_header(config):
    line = f"pythia kernels: {kernels.BACKEND}"
    if kernels.FALLBACK_REASON:
        line += f" (fallback: {kernels.FALLBACK_REASON})"
    return line


@pytest.fixture
def full_disk(tmp_path):
    """A 64 kB tmpfs filled to the last byte (needs root and mount; skipped otherwise)."""
    d = tmp_path / "small"
    d.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with open(d / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 1024)
            except OSError:
                pass
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
