"""argparse value types: each says what is wrong in words a user can act on (a usage error, exit 2)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from ..units import parse_number


class Store(argparse.Action):
    """Store a value and remember that the user gave it (resume keeps the checkpoint's settings
    for every flag the user did not give)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        explicit = getattr(namespace, "explicit", None) or set()
        explicit.add(self.dest)
        namespace.explicit = explicit


def explicit(args: argparse.Namespace) -> set[str]:
    """The dests of the flags given on the command line (those stored with Store)."""
    return getattr(args, "explicit", None) or set()


def number(kind: Callable[[str], Any], test: Callable[[Any], bool], need: str) -> Callable[[str], Any]:
    """A type for a finite number of kind that passes test; need says what is wanted."""
    def parse(text: str):
        try:
            v = parse_number(text, kind)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}") from None
        if not test(v):
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}")
        return v
    parse.__name__ = need
    return parse


positive_int = number(int, lambda v: v > 0, "a whole number of at least 1")
nonneg_int = number(int, lambda v: v >= 0, "a whole number of at least 0")
positive_float = number(float, lambda v: v > 0, "a number above 0")
nonneg_float = number(float, lambda v: v >= 0, "a number of at least 0")
beta_float = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
prob_float = number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
whole_number = number(int, lambda v: True, "a whole number")
fraction = number(float, lambda v: 0 < v < 1, "a number between 0 and 1")


def preset_name(text: str) -> str:
    """--preset: a preset's name (pythia.training.presets), or a usage error that lists the names."""
    from ..training.presets import PRESETS
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; choose one of: {', '.join(PRESETS)}")
    return text
