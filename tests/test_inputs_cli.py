"""What comes in, through the real command line: input files and streams, checkpoint metadata, memory, messages.

Each case runs the command line in a fresh folder holding the user's files, and asserts the
standard of every bad input: a non-zero exit status, exactly one `error:` line on stderr that says
what is wrong (checked by a phrase), no traceback, and every file of the user's still there, byte
for byte, with nothing added. Cases run in-process (`pythia.cli.main`, under the helper's deadline
and memory cap, so a regression that reads /dev/zero or waits on a FIFO fails instead of eating
the machine) unless they need a process of their own: closed or endless standard streams, a
kernel variable read at import, and stdout on a full disk run in a child under an 8 GB
address-space limit and a timeout.

Commands are rows of tables (DATA_READERS, CHECKPOINT_READERS, GPT2_READERS, STREAM_NEEDS): a
new command that reads one of these inputs is covered by adding its row.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import GPT2 as FIXTURE, REPO, TEXT, TINY, run_cli as run, subprocess_env

STATUS = ("pythia: ", "warning: fell back")                 # generate's status lines on stderr


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def run_child(args, cwd, *, env=None, close=(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, timeout=120):
    """`python -m pythia *args` in cwd, memory-limited; close: standard descriptors (0, 1, 2) to start closed."""
    full = subprocess_env(env)

    def pre():
        _limits()
        for fd in close:
            os.close(fd)
    r = subprocess.run([sys.executable, "-m", "pythia", *args], cwd=cwd, stdin=stdin,
                       stdout=stdout, stderr=subprocess.PIPE, env=full, timeout=timeout, preexec_fn=pre)
    r.stdout = (r.stdout or b"").decode("utf-8", "replace")
    r.stderr = r.stderr.decode("utf-8", "replace")
    return r


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under folder: a file's bytes, where a symlink points, a FIFO or folder by kind."""
    out = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_fifo():
            out[key] = "fifo"
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = p.read_bytes()
    return out


def assert_refused(r, *needles, status=1):
    assert r.returncode == status, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), r.stderr
    assert all(line.startswith(STATUS) for line in lines[:-1]), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trained")
    (d / "c.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", "--data", "c.txt", "--out", "model.npz", *TINY], d)
    assert r.returncode == 0, r.stderr
    return d / "model.npz"


@pytest.fixture
def home(tmp_path, trained) -> Path:
    """The user's folder: a corpus, a good checkpoint, and a copy of the GPT-2 fixture."""
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    shutil.copy(trained, tmp_path / "model.npz")
    shutil.copytree(FIXTURE, tmp_path / "gpt2")
    return tmp_path


# ---- kind 6: inputs that are not regular files ---------------------------------------------------

DATA_READERS = {
    "train": lambda p: ["train", "--data", p, *TINY, "--out", "new.npz"],
    "train-chat": lambda p: ["train-chat", "--data", p, *TINY, "--out", "new.npz"],
    "train (second file)": lambda p: ["train", "--data", "c.txt", p, *TINY, "--out", "new.npz"],
    "prepare": lambda p: ["prepare", "--data", p, "--out", "new.tok"],
    "prepare (second file)": lambda p: ["prepare", "--data", "c.txt", p, "--out", "new.tok"],
}
CHECKPOINT_READERS = {
    "chat": lambda p: ["chat", "--checkpoint", p],
    "generate": lambda p: ["generate", "--checkpoint", p, "--prompt", "Hi"],
    "train --resume": lambda p: ["train", "--data", "c.txt", "--resume", p, "--steps", "9", "--out", "new.npz"],
}
GPT2_READERS = {
    "chat --gpt2": lambda d: ["chat", "--gpt2", d],
    "generate --gpt2": lambda d: ["generate", "--gpt2", d, "--prompt", "Hi"],
    "convert-gpt2": lambda d: ["convert-gpt2", d, "--out", "new.npz"],
}


def spread(commands: dict, cases: dict | list) -> list[tuple[str, str]]:
    """(command, case) pairs in which every case and every command appears, without the whole
    product (each run is a fresh interpreter): case i goes to command i mod n, and each command
    left over takes the first case. Reading goes through one shared loader per input kind, so
    this covers each path at a fraction of the cost."""
    names, cases = list(commands), list(cases)
    pairs = [(names[i % len(names)], c) for i, c in enumerate(cases)]
    pairs += [(name, cases[0]) for name in names[len(cases):]]
    return pairs


def _special(home: Path, kind: str) -> str:
    """A path in home to an input of this kind that is not a regular file."""
    if kind == "device":
        return "/dev/zero"
    if kind == "fifo":
        os.mkfifo(home / "pipe")
        return "pipe"
    if kind == "folder":
        (home / "folder").mkdir()
        return "folder"
    if kind == "symlink to a device":
        os.symlink("/dev/zero", home / "link")
        return "link"
    raise ValueError(kind)


SPECIAL = {"device": "a character device", "fifo": "a FIFO", "folder": "a directory",
           "symlink to a device": "a character device"}


@pytest.mark.parametrize("command, kind", spread(DATA_READERS, SPECIAL))
def test_data_that_is_not_a_regular_file_is_refused_unread(home, command, kind):
    path = _special(home, kind)
    before = snapshot(home)
    r = run(DATA_READERS[command](path), home)
    assert_refused(r, f"data file {path!r} is {SPECIAL[kind]}", "not a regular file")
    assert snapshot(home) == before


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_prepare_refuses_a_device_or_fifo_before_claiming_its_out(home, kind):
    path = _special(home, kind)
    before = snapshot(home)
    r = run(["prepare", "--data", path, "--out", "new.tok"], home)
    assert_refused(r, f"data file {path!r} is {SPECIAL[kind]}", "not a regular file")
    assert snapshot(home) == before                     # no folder, no lock, no temporary folder


def test_prepare_refuses_stdin_on_a_pipe_at_once(home):
    before = snapshot(home)
    r = run_child(["prepare", "--data", "/dev/stdin", "--out", "new.tok"], home, stdin=subprocess.PIPE, timeout=60)
    assert_refused(r, "'/dev/stdin' is a FIFO", "not a regular file")
    assert snapshot(home) == before


GROW = {"between the two reads": "_build_tokenizer", "during the first read": "on_bytes",
        "truncated during a read": "truncate"}


@pytest.mark.parametrize("when", GROW)
def test_a_file_that_changes_during_prepare_is_refused(home, monkeypatch, when):
    from pythia.corpora import prepare, textstream
    grow = home / "grow.txt"
    grow.write_text(TEXT * 40, encoding="utf-8")
    chunks = []

    def change():
        if GROW[when] == "truncate":
            with open(grow, "r+b") as f:
                f.truncate(100)
        else:
            with open(grow, "a", encoding="utf-8") as f:
                f.write("appended: Ω")
    if GROW[when] == "_build_tokenizer":
        real = prepare._build_tokenizer

        def build(*a, **kw):
            change()
            return real(*a, **kw)
        monkeypatch.setattr(prepare, "_build_tokenizer", build)
    else:
        real = textstream.read_chunks

        def chunked(path, chunk_bytes, **kw):
            outer = kw.pop("on_bytes", None)

            def on_bytes(raw):
                chunks.append(len(raw))
                if len(chunks) == 1:
                    change()
                if outer:
                    outer(raw)
            return real(path, 4096, on_bytes=on_bytes, **kw)
        monkeypatch.setattr(prepare, "read_chunks", chunked)
    r = run(["prepare", "--data", "grow.txt", "--out", "new.tok"], home)
    assert_refused(r, "data file 'grow.txt' changed", "run prepare again")
    assert not (home / "new.tok").exists()
    assert not [p for p in home.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("command, kind", spread(CHECKPOINT_READERS, SPECIAL))
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_unread(home, command, kind):
    path = _special(home, kind)
    before = snapshot(home)
    r = run(CHECKPOINT_READERS[command](path), home)
    assert_refused(r, f"checkpoint {path!r} is {SPECIAL[kind]}", "not a regular file")
    assert snapshot(home) == before


GPT2_CASES = [f"{name}: {kind}" for name in ("config.json", "vocab.json", "merges.txt", "model.safetensors")
              for kind in ("symlink to a device", "fifo")]


@pytest.mark.parametrize("command, case", spread(GPT2_READERS, GPT2_CASES))
def test_a_gpt2_folder_file_that_is_a_device_or_fifo_is_refused(home, command, case):
    name, kind = case.split(": ")
    victim = home / "gpt2" / name
    victim.unlink()
    if kind == "fifo":
        os.mkfifo(victim)
    else:
        os.symlink("/dev/zero", victim)
    before = snapshot(home)
    r = run(GPT2_READERS[command]("gpt2"), home)
    assert_refused(r, name, SPECIAL[kind], "not a regular file")
    assert snapshot(home) == before


@pytest.mark.parametrize("command, kind", spread(GPT2_READERS, ["device", "fifo"]))
def test_a_gpt2_folder_that_is_not_a_folder_says_what_it_is(home, command, kind):
    path = _special(home, kind)
    before = snapshot(home)
    r = run(GPT2_READERS[command](path), home)
    assert_refused(r, f"GPT-2 directory {path!r} is {SPECIAL[kind]}", "not a folder")
    assert snapshot(home) == before


# ---- kind 10: checkpoints that cannot be read say precisely why -----------------------------------

def _zip_not_npz(home: Path) -> str:
    import zipfile
    with zipfile.ZipFile(home / "notes.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    return "notes.zip"


def _truncated(home: Path) -> str:
    data = (home / "model.npz").read_bytes()
    (home / "cut.npz").write_bytes(data[: len(data) // 2])
    return "cut.npz"


def _empty(home: Path) -> str:
    (home / "empty.npz").write_bytes(b"")
    return "empty.npz"


def _text(home: Path) -> str:
    return "c.txt"


UNREADABLE = {
    "a zip that is not an npz": (_zip_not_npz, "not an .npz checkpoint: its entry 'notes.txt' is not a NumPy array"),
    "a truncated checkpoint": (_truncated, "is truncated or corrupt: its zip directory"),
    "an empty file": (_empty, "is empty (0 bytes)"),
    "a text file": (_text, "starts with b'User'"),
}


@pytest.mark.parametrize("command, case", spread(CHECKPOINT_READERS, UNREADABLE))
def test_an_unreadable_checkpoint_says_what_is_wrong(home, command, case):
    make, needle = UNREADABLE[case]
    path = make(home)
    before = snapshot(home)
    r = run(CHECKPOINT_READERS[command](path), home)
    assert_refused(r, f"checkpoint {path!r}", needle)
    assert "not an .npz archive" not in r.stderr
    assert snapshot(home) == before


# ---- kind 5: checkpoint metadata of the wrong types ----------------------------------------------

def _with_meta(home: Path, change) -> str:
    with np.load(home / "model.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(home / "bad.npz", "wb") as fh:
        np.savez(fh, **arrays)
    return "bad.npz"


BAD_META = {
    "a list where an object belongs": (lambda m: m.update(model_config=[1, 2]), "field model_config must be an object"),
    "a string where a number belongs": (lambda m: m["model_config"].update(n_head="2"),
                                        'field model_config.n_head must be a positive integer, got "2"'),
    "a boolean where a count belongs": (lambda m: m.update(step=True), "field step must be a non-negative integer"),
    "an RNG state of the wrong shape": (lambda m: m["rng_state"]["train"].update(state=[1, 2]),
                                        "field rng_state.train.state must be an object"),
    "a train setting out of range": (lambda m: m["train_config"].update(beta2=1.5), "field train_config.beta2"),
}


@pytest.mark.parametrize("command, case", spread(CHECKPOINT_READERS, BAD_META))
def test_checkpoint_metadata_of_the_wrong_type_is_one_line_naming_the_field(home, command, case):
    change, needle = BAD_META[case]
    path = _with_meta(home, change)
    before = snapshot(home)
    r = run(CHECKPOINT_READERS[command](path), home)
    assert_refused(r, f"checkpoint {path!r}: {needle}")
    assert snapshot(home) == before


@pytest.mark.parametrize("command", CHECKPOINT_READERS)
def test_a_tokenizer_smaller_than_the_vocabulary_is_refused_at_load(home, command):
    with np.load(home / "model.npz", allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    chars = arrays["tok/chars"].tobytes().decode()
    arrays["tok/chars"] = np.frombuffer(chars[:-1].encode(), dtype=np.uint8)
    with open(home / "short.npz", "wb") as fh:
        np.savez(fh, **arrays)
    before = snapshot(home)
    r = run(CHECKPOINT_READERS[command]("short.npz"), home)
    assert_refused(r, f"tokenizer has {len(chars) - 1} tokens", "model_config.vocab_size")
    assert snapshot(home) == before


# ---- kind 5: standard streams closed at start-up --------------------------------------------------

STREAM_NEEDS = {  # command -> (its arguments, the streams it needs)
    "chat": (["chat", "--checkpoint", "model.npz"], {0, 1}),
    "train-chat": (["train-chat", "--data", "c.txt", *TINY, "--out", "new.npz"], {0, 1}),
    "generate": (["generate", "--checkpoint", "model.npz", "--prompt", "Hi"], {1}),
    "train": (["train", "--data", "c.txt", *TINY, "--out", "new.npz"], {1}),
    "convert-gpt2": (["convert-gpt2", "gpt2", "--out", "new.npz"], {1}),
}
STREAM_NAMES = {0: "stdin", 1: "stdout"}


@pytest.mark.parametrize("fd", [0, 1], ids=["stdin closed", "stdout closed"])
@pytest.mark.parametrize("command", STREAM_NEEDS)
def test_a_closed_stream_the_command_needs_is_one_line_and_one_it_does_not_need_is_no_matter(home, command, fd):
    args, needs = STREAM_NEEDS[command]
    before = snapshot(home)
    r = run_child(args, home, close=(fd,), stdout=None if fd == 1 else subprocess.PIPE)
    if fd in needs:
        assert_refused(r, f"{STREAM_NAMES[fd]} is closed", command)
        assert snapshot(home) == before
    else:                                       # a command that does not read stdin runs as usual
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [c for c, (_, needs) in STREAM_NEEDS.items() if 0 in needs])
def test_an_endless_stdin_is_read_a_bounded_line_at_a_time(home, command):
    args, _ = STREAM_NEEDS[command]
    before = snapshot(home)
    with open("/dev/zero", "rb") as zero:
        r = run_child(args, home, stdin=zero)
    assert_refused(r, "a line of input is longer than")
    if command == "chat":
        assert snapshot(home) == before


@pytest.mark.parametrize("command", STREAM_NEEDS)
def test_with_every_standard_stream_closed_the_exit_status_still_says_no(home, command):
    args, _ = STREAM_NEEDS[command]
    before = snapshot(home)
    r = run_child(args, home, close=(0, 1, 2), stdout=None)
    assert r.returncode == 1 and r.stderr == ""
    assert snapshot(home) == before


# ---- kind 10: messages that point the right way ---------------------------------------------------

@pytest.mark.parametrize("command", STREAM_NEEDS)
def test_an_unknown_flag_points_to_the_commands_own_help(home, command):
    args, _ = STREAM_NEEDS[command]
    r = run([*args, "--frobnicate"], home)
    assert_refused(r, "--frobnicate", f"see `python -m pythia {command} --help`", status=2)


@pytest.mark.parametrize("variable, value", [("PYTHIA_KERNELS", "bogus"), ("PYTHIA_KERNELS_ISA", "bogus"),
                                             ("PYTHIA_KERNELS_ISA", "avx512")])
def test_a_kernel_environment_variable_with_no_meaning_is_an_error(home, variable, value):
    r = run(["generate", "--checkpoint", "model.npz", "--prompt", "Hi"], home, env={variable: value})
    assert_refused(r, f"{variable}={value!r}")


@pytest.mark.parametrize("backend", ["", "numpy"], ids=["default backend", "PYTHIA_KERNELS=numpy"])
@pytest.mark.parametrize("variable", ["PYTHIA_KERNELS", "PYTHIA_KERNELS_ISA"])
def test_the_library_refuses_a_kernel_variable_with_no_meaning_alike(variable, backend):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHIA_KERNELS=backend)
    env[variable] = "bogus"
    r = subprocess.run([sys.executable, "-c", "import pythia.kernels"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode != 0 and f"ValueError: {variable}='bogus'" in r.stderr, r.stderr


def test_baseline_isa_is_accepted(home):
    r = run_child(["generate", "--checkpoint", "model.npz", "--prompt", "Hi", "--max-new-tokens", "3"], home,
                  env={"PYTHIA_KERNELS_ISA": "baseline"})           # read when the kernels load: a fresh process
    assert r.returncode == 0, r.stderr


def test_a_full_disk_under_the_log_file_names_it(home, full_disk):
    r = run(["train", "--data", "c.txt", *TINY, "--out", "new.npz", "--log-file", str(full_disk / "log.jsonl")], home)
    assert_refused(r, f"--log-file {str(full_disk / 'log.jsonl')!r}", "No space left on device")


def test_a_full_disk_under_stdout_names_the_file(home, full_disk):
    with open(full_disk / "out.txt", "wb") as out:
        r = run_child(["generate", "--checkpoint", "model.npz", "--prompt", "Hi", "--max-new-tokens", "2000"],
                      home, stdout=out)
    assert_refused(r, f"stdout ({full_disk / 'out.txt'})", "No space left on device")


def test_plot_onto_a_full_disk_is_one_line_and_leaves_no_lock(home, full_disk):
    (home / "run.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n', encoding="utf-8")
    before = sorted(p.name for p in full_disk.iterdir())
    r = run(["plot", "run.jsonl", "--out", str(full_disk / "loss.svg")], home)
    assert_refused(r, "No space left on device")
    assert sorted(p.name for p in full_disk.iterdir()) == before      # no lock, no temporary file


def test_stdout_on_dev_full_names_it(home):
    with open("/dev/full", "wb") as out:
        r = run_child(["generate", "--checkpoint", "model.npz", "--prompt", "Hi", "--max-new-tokens", "20"],
                      home, stdout=out)
    assert_refused(r, "cannot write stdout (/dev/full): No space left on device")


# ---- a prepared corpus whose header or ids do not fit its tokenizer -------------------------------

def _prepared(home: Path) -> Path:
    assert run(["prepare", "--data", "c.txt", "--out", "c.tok"], home).returncode == 0
    return home / "c.tok"


def _bad_id(folder: Path, name: str, at: int, value: int) -> None:
    ids = np.fromfile(folder / name, dtype="<u2")
    ids[at] = value
    ids.astype("<u2").tofile(folder / name)


@pytest.mark.parametrize("name, at", [("train.bin", 0), ("train.bin", 700), ("val.bin", 5)])
def test_an_id_outside_the_vocabulary_names_the_file_and_the_first_bad_token(home, name, at, monkeypatch):
    from pythia.corpora import prepared
    monkeypatch.setattr(prepared, "CHECK_CHUNK", 256)  # several chunks, so the offset is found across them
    folder = _prepared(home)
    vocab = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["vocab_size"]
    _bad_id(folder, name, at, vocab)
    _bad_id(folder, name, at + 3, 65535)                # a later one: the first is named
    r = run(["train", "--data", "c.tok", *TINY, "--out", "new.npz"], home)
    assert_refused(r, f"c.tok/{name}' holds token id {vocab} at token {at:,} (byte offset {2 * at:,})",
                   f"outside the tokenizer's {vocab} tokens")
    assert not (home / "new.npz").exists()


@pytest.mark.parametrize("key, value, needle", [("byte_order", "big", "byte_order 'big'"),
                                                ("vocab_size", 3, "vocab_size 3 but its tokenizer has")])
def test_a_meta_json_disagreeing_with_its_tokenizer_is_refused(home, key, value, needle):
    folder = _prepared(home)
    text = (folder / "meta.json").read_text(encoding="utf-8")
    meta = json.loads(text)
    old = f'"{key}": {json.dumps(meta[key])}'
    assert old in text
    (folder / "meta.json").write_text(text.replace(old, f'"{key}": {json.dumps(value)}'), encoding="utf-8")
    r = run(["train", "--data", "c.tok", *TINY, "--out", "new.npz"], home)
    assert_refused(r, needle)


# ---- control characters are shown, never obeyed ---------------------------------------------------

def test_chat_echoes_the_users_control_characters_escaped(home):
    r = run(["chat", "--checkpoint", "model.npz", "--max-new-tokens", "2"], home,
            stdin="hi \x1b[2J\x1b]0;title\x07 \u009b31m \u202eevil\nquit\n")
    assert r.returncode == 0, r.stderr
    assert "hi \\x1b[2J\\x1b]0;title\\x07 \\x9b31m \\u202eevil" in r.stdout
    echoed = next(line for line in r.stdout.splitlines() if "title" in line)
    assert not any(c in echoed for c in "\x1b\x07\u009b\u202e"), echoed


def test_explains_token_labels_hold_no_control_character():
    from pythia.inspection.explain import show_token
    from pythia.text.tokenview import is_control
    for text in ["\x1b[2J", "\x9b", "\u202e", "\u2066x", "\x07\x7f", "a\x00"]:
        label = show_token(text)
        assert not any(is_control(c) for c in label) and len(label) == len(text), (text, label)
    assert show_token(" \n\t") == "␣↵⇥" and show_token("é") == "é"
