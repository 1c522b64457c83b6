"""The documents say what is true now, and teach.

- No tracked text file speaks of how the project was made (work sessions, issue numbers,
  numbered targets, the time of day of a run) or names a path on one machine: history lives in
  git log, and a path of the machine that wrote a file means nothing to its reader.
- Every command's --help ends with examples (the list of commands comes from the parser, so a
  new command is checked without touching this file).
- README's commands are the ones CI runs: its set-up, run and test lines are checked here
  against what `.ci/run` executes.
- README stays under 300 lines and links every page of docs/; every relative link of README and
  docs/ reaches a file, and a #heading in it; "Reading the code" names files that exist.
"""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from pythia import cli

REPO = Path(__file__).resolve().parent.parent
BINARY = {".npz", ".bin", ".safetensors", ".png", ".so", ".pyd", ".o"}

# Each pattern is a way the making of the project leaks into its text. Kept narrow so that
# words with an ordinary meaning here (a chat "session", a cross-entropy "target") stay usable.
PROCESS_WORDS = {
    "a work session": r"\b(this|last|previous|next|earlier|that|each|every) session\b|\bsession's\b",
    "an issue number": r"\bissues?\s*#?\d+",
    "a numbered target": r"\btargets? \d+\b(?!\s*(?:[<>=]|-d\b))",
    "a time of day of a run": r"\b\d{1,2}:\d{2}(:\d{2})?\s*UTC\b|\bthe \d{1,2}:\d{2} run\b",
    "a machine path": r"(?<![\w.])/(work|tmp|root|home|opt)/[\w.-]",
}


def tracked_text_files() -> list[Path]:
    """Files under version control (or, outside a git checkout, every file of the source tree)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and ".git" not in p.parts and "build" not in p.parts]
    files = [REPO / n for n in names if Path(n).suffix not in BINARY and (REPO / n).is_file()]
    return [f for f in files if f.resolve() != Path(__file__).resolve()]


def process_words(text: str) -> list[str]:
    """'<kind>: <matched text>' for each leak of the process in text."""
    found = []
    for kind, pattern in PROCESS_WORDS.items():
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            found.append(f"{kind}: {m.group(0)!r}")
    return found


# The examples are split into pieces so that this file does not itself hold the words it bans.
@pytest.mark.parametrize("text, kind", [
    ("Until this " + "session the threads slept", "a work session"),
    ("as the previous " + "session measured", "a work session"),
    ("against the targets of iss" + "ue 6", "an issue number"),
    ("meets target 2 by 3x", "a numbered target"),
    ("the 06:17 run below", "a time of day of a run"),
    ("Run at 06:42:32 UTC", "a time of day of a run"),
    ("    /" + "work/venv/bin/python make.py", "a machine path"),
    ("written to /" + "tmp/x.npz", "a machine path"),
])
def test_the_check_catches_each_kind(text, kind):
    assert any(f.startswith(kind) for f in process_words(text)), process_words(text)


@pytest.mark.parametrize("text", [
    "a fresh random seed per chat session",
    "def session(lines, replies):",
    "raise ValueError('target 4 >= V') if t >= V",  # a class id, no numbered target of a plan
    "keeps 0-d targets 0-d",
    "see benchmarks/README.md and ./" + "tmp/out.npz",
    "python -m pythia train --out runs/m.npz",
])
def test_the_check_leaves_ordinary_words_alone(text):
    assert process_words(text) == []


def test_no_tracked_file_speaks_of_the_making_of_the_project():
    files = tracked_text_files()
    assert len(files) > 20, "found too few tracked files to have checked anything"
    leaks = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        leaks += [f"{f.relative_to(REPO)}: {w}" for w in process_words(text)]
    assert not leaks, "history belongs in git log, not in the files:\n" + "\n".join(leaks)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_checked():
    assert {"train-chat", "train", "chat", "generate", "convert-gpt2"} <= set(subcommands())


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_help_ends_with_examples(name):
    text = subcommands()[name].format_help().rstrip()
    head, sep, tail = text.rpartition("examples:")
    assert sep, f"`{name} --help` has no examples section"
    lines = [x.strip() for x in tail.strip().splitlines()]
    assert lines and all(x.startswith("python -m pythia") or x.startswith("printf") or x.startswith("mpiexec")
                         for x in lines), lines
    assert any(f"python -m pythia {name}" in x for x in lines), f"no example runs {name}: {lines}"


def readme_block_after(heading: str) -> list[str]:
    """The command lines of the first code block under README's heading."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split("#")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_first_screen_starts_a_newcomer():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    first_screen = "\n".join(text.splitlines()[:45])
    for command in ("pip install .", "python -m pythia train-chat", "pip install '.[test]'", "python -m pytest"):
        assert command in first_screen, command


def test_ci_runs_the_readme_commands_as_written():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert readme_block_after("Set up and run")[:2] == ["pip install .", "python -m pythia train-chat"]
    assert readme_block_after("Test")[:2] == ["pip install '.[test]'", "python -m pytest"]
    assert "pip install ." in ci and "pip install '.[test]'" in ci
    assert re.search(r"\|\s*python -m pythia train-chat", ci), "CI must run README's run command"
    assert "python -m pytest" in ci


# ---- README speaks first to a user; the deep pages under docs/ are linked and their links hold -------

DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return {slug(h) for h in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)   # code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", [REPO / "README.md", *DOC_PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_of_the_documents_resolves(page):
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name} links {target!r}: no such file"
        if anchor:
            assert anchor in anchors(dest), f"{page.name} links {target!r}: no such heading in {dest.name}"


def test_the_check_of_links_catches_a_broken_one(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\nsee [a](missing.md), [b](#top), [c](#nowhere), [d](https://example.org)\n"
                    "```\n[not a link](inside-code.md)\n```\n", encoding="utf-8")
    assert relative_links(page) == ["missing.md", "#top", "#nowhere"]
    assert anchors(page) == {"top"} and slug("Big corpora, and `tokenizers`!") == "big-corpora-and-tokenizers"


def test_readme_is_short_and_links_every_docs_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 300, "README speaks to a user first; move deep sections to docs/"
    assert len(DOC_PAGES) >= 5
    for page in DOC_PAGES:
        assert f"](docs/{page.name})" in text, f"README does not link docs/{page.name}"


def reading_order() -> list[str]:
    """The files README's "Reading the code" names, in its order."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Reading the code\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `([^`]+)`", section, re.M)


def test_reading_the_code_names_six_or_so_files_one_line_each():
    files = reading_order()
    assert 5 <= len(files) <= 8, files
    for name in ("pythia/train.py", "pythia/engine.py", "pythia/sampling.py", "pythia/kernels/reference.py"):
        assert name in files, name


@pytest.mark.skipif(not (REPO / "pythia" / "layers.py").exists(), reason="the shared layers module is not here")
def test_reading_the_code_names_files_that_exist():
    missing = [name for name in reading_order() if not (REPO / name).is_file()]
    assert not missing, f'README\'s "Reading the code" names files that do not exist: {missing}'
