"""Where the benchmarks read Tiny Shakespeare: --data FILE, else $PYTHIA_SHAKESPEARE, else an error.

The corpus is not part of the repository and nothing downloads it; the scripts read it in place
from wherever the user keeps it (nanoGPT's data/shakespeare_char/input.txt is the same text).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "PYTHIA_SHAKESPEARE"
HOW = "pass --data FILE (Tiny Shakespeare: nanoGPT's data/shakespeare_char/input.txt) or set PYTHIA_SHAKESPEARE"


def shakespeare(data: Path | None) -> Path:
    """The corpus file: `data` (the script's --data) when given, else the file $PYTHIA_SHAKESPEARE
    names. When neither names one, or the one named is not a file, print one `error:` line and
    exit 2."""
    source = "--data"
    if data is None:
        named = os.environ.get(ENV, "")
        if not named:
            _fail(f"error: {HOW}")
        data, source = Path(named), ENV
    data = Path(data)
    if not data.is_file():
        _fail(f"error: {data} ({source}) is not a file; {HOW}")
    return data


def _fail(line: str) -> None:
    print(line, file=sys.stderr)
    raise SystemExit(2)
