"""Where the bundled default corpus lives: pythia/data/ when installed, data/ in a source checkout."""
from __future__ import annotations

from pathlib import Path

CORPUS_FILES = ("input.txt", "model.txt")


def bundled_corpus_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "data", here.parent / "data"):
        if all((candidate / name).is_file() for name in CORPUS_FILES):
            return candidate
    raise FileNotFoundError("the bundled corpus (input.txt, model.txt) is missing from this installation; "
                            "reinstall with `pip install .` or pass --data FILE")


def bundled_corpus_files() -> list[Path]:
    d = bundled_corpus_dir()
    return [d / name for name in CORPUS_FILES]
