"""Numbers as a person types and reads them: the one number parser and the one size formatter.

parse_number reads every number a user gives (command-line flags, chat commands such as /temp);
fmt_size writes every byte count a message shows, in decimal units as `ls -h --si` does
(1 kB = 1000 bytes), the units disks and downloads are sold in.
"""
from __future__ import annotations

import math


def parse_number(text: str, kind: type[int] | type[float]) -> int | float:
    """text as a finite int or float; ValueError for anything else ('x', '1.5' as an int, 'nan', 'inf')."""
    value = kind(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def fmt_size(n: int) -> str:
    """Bytes for a message: 512 bytes, 3.2 MB, 1.5 GB (decimal units, as `ls -h --si`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
