"""User-facing errors.

A `PythiaError` is a problem with what the user gave us (a file, a flag, a checkpoint), not a
bug. The command line prints its message as one line, `error: <message>`, and exits non-zero
without a traceback, so every message must say what is wrong and what to do about it.
"""


class PythiaError(Exception):
    """Bad user input: the message is shown to the user as is."""


class DataError(PythiaError):
    """A corpus file is missing, empty, not UTF-8, or too short."""


class ConfigError(PythiaError):
    """A model or training setting is invalid."""


class CheckpointError(PythiaError):
    """A checkpoint is missing, corrupt, truncated, or does not fit."""


class GPT2Error(PythiaError):
    """A GPT-2 directory or file cannot be loaded."""
