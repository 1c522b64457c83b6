"""The default corpus: the seed's two files, input.txt and model.txt, taken from the current directory
when both are there, else the copy bundled with Pythia (pythia/data/ when installed, data/ in a
source checkout)."""
from __future__ import annotations

from pathlib import Path

DEFAULT_FILES = ("input.txt", "model.txt")


def bundled_corpus_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "data", here.parent / "data"):
        if all((candidate / name).is_file() for name in DEFAULT_FILES):
            return candidate
    raise FileNotFoundError("the bundled corpus (input.txt, model.txt) is missing from this installation; "
                            "reinstall with `pip install .` or pass --data FILE")


def bundled_corpus_files() -> list[Path]:
    d = bundled_corpus_dir()
    return [d / name for name in DEFAULT_FILES]
