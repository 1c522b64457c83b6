"""Shared pytest setup: say which kernel backend this run exercises, and give the programs the
tests start the stop signals' usual dispositions."""
import signal

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
