"""Shared pytest setup: say which kernel backend this run exercises."""
import pythia.kernels as kernels


def pytest_report_header(config):
    line = f"pythia kernels: {kernels.BACKEND}"
    if kernels.FALLBACK_REASON:
        line += f" (fallback: {kernels.FALLBACK_REASON})"
    return line
