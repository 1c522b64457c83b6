"""Nothing the user owns is lost or clobbered, whatever file, signal or pipe arrives.

The real command line on a tiny model: in this process where a case needs no process of its own,
in a subprocess where it does (signals, a closed pipe, a lock another process holds). Each case
asserts the exit status, one clear `error:` line (or none), no traceback, that the file already
there is byte-identical or the new checkpoint complete and loadable, that its mode is kept, and
that no temporary or lock file is left. The tables WRITERS (commands that write a file the user
keeps) and RUNNERS (commands that run long enough to be signalled) are where a new command joins
every case; DIR_WRITERS (commands that write a folder: prepare, export) join the cases that
apply to a folder.
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import GPT2, TEXT, TINY_MODEL as TINY, run_cli as run, run_subprocess, subprocess_env
from pythia.formats.checkpoint import load_checkpoint

DEADLINE = 60.0
LONG = ["--steps", "1000000", "--eval-interval", "1000000"]   # runs until a signal stops it
class Proc:
    """`python -m pythia *args` in the background, its stdout and stderr collected as they come."""

    def __init__(self, args, cwd, stdin=subprocess.DEVNULL):
        self.p = subprocess.Popen([sys.executable, "-m", "pythia", *args], cwd=cwd, env=subprocess_env(), stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.p.pid
        self.chunks = {"out": [], "err": []}
        self.readers = [threading.Thread(target=self._read, args=(s, k), daemon=True)
                        for s, k in ((self.p.stdout, "out"), (self.p.stderr, "err"))]
        for t in self.readers:
            t.start()

    def _read(self, stream, key):
        for line in iter(stream.readline, b""):
            self.chunks[key].append(line.decode(errors="replace"))

    @property
    def out(self) -> str:
        return "".join(self.chunks["out"])

    @property
    def err(self) -> str:
        return "".join(self.chunks["err"])

    def wait_for(self, needle: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while needle not in self.out:
            assert self.p.poll() is None, f"exited {self.p.returncode} before {needle!r}:\n{self.out}\n{self.err}"
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.out}"
            time.sleep(0.01)

    def wait(self) -> int:
        try:
            code = self.p.wait(timeout=DEADLINE)
        finally:
            if self.p.poll() is None:
                self.p.kill()
        for t in self.readers:
            t.join(5)
        return code


@pytest.fixture
def d(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    shutil.copytree(GPT2, tmp_path / "gpt2")
    (tmp_path / "run.jsonl").write_text("".join(f'{{"step": {i}, "train_loss": {3.0 / i}}}\n' for i in range(1, 6)),
                                        encoding="utf-8")
    return tmp_path


def assert_svg(path: Path, step: int | None = None):
    """A complete SVG file: the whole document, opening and closing tags."""
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith(("<svg", "<?xml")) and text.rstrip().endswith("</svg>"), text[-200:]


# name -> (command line writing `out`, the stdin it needs, an input file it reads (relative to d),
#          the check that the file written is whole: a loadable checkpoint, a complete SVG)
WRITERS = {
    "train": (lambda out: ["train", "--data", "corpus.txt", *TINY, "--steps", "3", "--eval-interval", "3",
                           "--out", out], "", "corpus.txt", "checkpoint"),
    "train-chat": (lambda out: ["train-chat", "--data", "corpus.txt", *TINY, "--steps", "3",
                                "--eval-interval", "3", "--out", out], "quit\n", "corpus.txt", "checkpoint"),
    "convert-gpt2": (lambda out: ["convert-gpt2", "gpt2", "--out", out], "", "gpt2/config.json", "checkpoint"),
    "plot": (lambda out: ["plot", "run.jsonl", "--out", out], "", "run.jsonl", "svg"),
}


def assert_written(writer: str, path: Path) -> None:
    """The file writer wrote at path is whole, by what that writer writes."""
    (assert_svg if WRITERS[writer][3] == "svg" else assert_complete)(path)
# name -> command line that trains until stopped, writing out
RUNNERS = {
    "train": lambda out, *extra: ["train", "--data", "corpus.txt", *TINY, *LONG, *extra, "--out", out],
    "train-chat": lambda out, *extra: ["train-chat", "--data", "corpus.txt", *TINY, *LONG, *extra, "--out", out],
}


def leftovers(folder: Path) -> list[str]:
    """Temporary and lock files Pythia may have left in folder (there must be none)."""
    return sorted(p.name for p in folder.rglob(".*") if p.name.endswith((".tmp", ".lock", ".probe", ".old")))


def assert_clean_error(r, needle: str, status: int = 1):
    assert r.returncode == status, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stdout + r.stderr


def assert_complete(path: Path, step: int | None = None):
    ck = load_checkpoint(path)
    assert ck.optimizer_arrays is not None or ck.step == 0
    if step is not None:
        assert ck.step == step, (ck.step, step)
    return ck


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- 1. only regular files are replaced; symlinks are followed; modes are kept ------------------

def _special(d: Path, kind: str) -> Path:
    p = d / "special.npz"
    if kind == "device":
        try:
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))       # a second /dev/null
        except (PermissionError, AttributeError):
            pytest.skip("making a device node needs root")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "symlink to /dev/null":
        p.symlink_to("/dev/null")
    elif kind == "directory":
        p.mkdir()
    return p


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("kind", ["device", "fifo", "symlink to /dev/null", "directory"])
def test_force_never_replaces_what_is_not_a_regular_file(d, writer, kind):
    p = _special(d, kind)
    mode = os.lstat(p).st_mode
    args, stdin, _, _ = WRITERS[writer]
    r = run([*args(p.name), "--force"], d, stdin)
    assert_clean_error(r, "directory" if kind == "directory" else "not a regular file")
    assert os.lstat(p).st_mode == mode                  # still the same kind of file
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert "Training" not in r.stdout and leftovers(d) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_an_out_ending_in_a_slash_is_refused_as_a_directory_name(d, writer):
    args, stdin, _, _ = WRITERS[writer]
    r = run(args("newdir/"), d, stdin)
    assert_clean_error(r, "names a directory")
    assert not (d / "newdir").exists() and leftovers(d) == []


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_force_through_a_symlink_updates_its_file_and_keeps_its_mode(d, writer, mode):
    real = d / "real" / "model.npz"
    real.parent.mkdir()
    real.write_bytes(b"old")
    real.chmod(mode)
    (d / "link.npz").symlink_to(real)
    args, stdin, _, _ = WRITERS[writer]
    r = run([*args("link.npz"), "--force"], d, stdin)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert (d / "link.npz").is_symlink() and os.readlink(d / "link.npz") == str(real)
    assert_written(writer, real)
    assert stat.S_IMODE(real.stat().st_mode) == mode
    assert leftovers(d) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_read_only_file_is_refused_and_kept_byte_identical(d, writer):
    p = d / "kept.npz"
    p.write_bytes(b"precious")
    p.chmod(0o444)
    args, stdin, _, _ = WRITERS[writer]
    r = run([*args(p.name), "--force"], d, stdin)
    assert_clean_error(r, "read-only (mode 0444)")
    assert p.read_bytes() == b"precious" and stat.S_IMODE(p.stat().st_mode) == 0o444
    assert leftovers(d) == []


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_resume_in_place_through_a_symlink_keeps_the_link_and_the_mode(d, mode):
    real = d / "store" / "m.npz"
    real.parent.mkdir()
    assert run(WRITERS["train"][0](str(real)), d).returncode == 0
    real.chmod(mode)
    (d / "m.npz").symlink_to(real)
    r = run(["train", "--data", "corpus.txt", "--resume", "m.npz", "--steps", "6"], d)
    assert r.returncode == 0, r.stderr
    assert (d / "m.npz").is_symlink()
    assert_complete(real, step=6)
    assert stat.S_IMODE(real.stat().st_mode) == mode and leftovers(d) == []


def test_resume_of_a_read_only_checkpoint_is_refused_before_training(d):
    p = d / "m.npz"
    assert run(WRITERS["train"][0]("m.npz"), d).returncode == 0
    p.chmod(0o444)
    before = p.read_bytes()
    r = run(["train", "--data", "corpus.txt", "--resume", "m.npz", "--steps", "6"], d)
    assert_clean_error(r, "read-only")
    assert p.read_bytes() == before and stat.S_IMODE(p.stat().st_mode) == 0o444


@pytest.mark.parametrize("kind", ["device", "fifo", "symlink to /dev/null", "file", "the checkpoint itself",
                                  "folder holding the checkpoint"])
def test_export_force_replaces_only_a_folder_and_never_its_input(d, kind):
    assert run(WRITERS["train"][0]("m.npz"), d).returncode == 0
    if kind == "the checkpoint itself":
        target = d / "m.npz"
    elif kind == "folder holding the checkpoint":
        target = d / "ck"
        target.mkdir()
        (d / "m.npz").rename(target / "m.npz")
    elif kind == "file":
        target = d / "notes.txt"
        target.write_text("mine", encoding="utf-8")
    else:
        target = _special(d, kind)
    ckpt = d / "ck" / "m.npz" if kind == "folder holding the checkpoint" else d / "m.npz"
    before = {p: (os.lstat(p).st_mode, p.read_bytes() if p.is_file() else None)
              for p in [ckpt, *d.rglob("*")] if not p.is_dir() or p.is_symlink()}
    r = run(["export", str(ckpt.relative_to(d)), "--out", target.name, "--force"], d)
    assert_clean_error(r, "")
    assert {p: (os.lstat(p).st_mode, p.read_bytes() if p.is_file() else None) for p in before} == before
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and leftovers(d) == []
    assert not any(p.name.startswith(f".{target.name}.") for p in d.iterdir())   # no temporary folder left


# ---- 2. an output is claimed for the whole run ---------------------------------------------------

@pytest.mark.parametrize("writer", WRITERS)
def test_an_output_claimed_by_a_live_process_is_refused_naming_it(d, writer):
    from pythia.system.claims import claim_output
    args, stdin, _, _ = WRITERS[writer]
    with claim_output(d / "m.npz", replace=True):       # this test process holds it: the run needs its own
        r = run_subprocess(args("m.npz"), d, stdin)
    assert_clean_error(r, f"being written by another Pythia run (process {os.getpid()})")
    assert not (d / "m.npz").exists() and leftovers(d) == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_stale_lock_and_temporary_file_of_a_dead_process_are_taken_over(d, writer):
    pid = dead_pid()
    (d / ".m.npz.lock").write_text(f"{pid}\n")
    (d / f".m.npz.{pid}.abcd1234.tmp").write_bytes(b"half a checkpoint")
    args, stdin, _, _ = WRITERS[writer]
    r = run(args("m.npz"), d, stdin)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert_written(writer, d / "m.npz")
    assert leftovers(d) == []


def test_a_second_training_on_the_same_out_is_refused_and_the_first_saves(d):
    first = Proc(RUNNERS["train"]("m.npz"), d)
    first.wait_for("Training")
    r = run(WRITERS["train"][0]("m.npz") + ["--force"], d)
    assert_clean_error(r, f"(process {first.pid})")
    first.p.send_signal(signal.SIGTERM)
    assert first.wait() == 143
    assert_complete(d / "m.npz")
    assert leftovers(d) == []


def test_the_default_name_note_names_every_file_passed_over(d):
    # pythia.npz, pythia-2.npz, ... are kept; each run's note lists all that it skipped
    notes = []
    for _ in range(6):
        r = run(["train", "--data", "corpus.txt", *TINY, "--steps", "1"], d)
        assert r.returncode == 0, r.stderr
        notes.append(next(line for line in r.stdout.splitlines() if "saving to" in line).split("saving to", 1)[1].strip())
    assert notes[:4] == ["pythia.npz", "pythia-2.npz  (pythia.npz already exists, so it is kept)",
                         "pythia-3.npz  (pythia.npz and pythia-2.npz already exist, so they are kept)",
                         "pythia-4.npz  (pythia.npz, pythia-2.npz and pythia-3.npz already exist, so they are kept)"]
    assert notes[5] == "pythia-6.npz  (the 5 files pythia.npz ... pythia-5.npz already exist, so they are kept)"


def test_two_trainings_on_the_default_name_save_two_models(d):
    first = Proc(["train", "--data", "corpus.txt", *TINY, *LONG], d)
    first.wait_for("Training")
    r = run(["train", "--data", "corpus.txt", *TINY, "--steps", "3"], d)
    assert r.returncode == 0, r.stderr
    assert "pythia-2.npz" in r.stdout and "pythia.npz is being written by another run" in r.stdout
    first.p.send_signal(signal.SIGTERM)
    assert first.wait() == 143
    assert_complete(d / "pythia.npz").step > 0
    assert_complete(d / "pythia-2.npz", step=3)
    assert leftovers(d) == []


# ---- 9. every output is checked at the start; no output may be an input ---------------------------

@pytest.mark.parametrize("writer", WRITERS)
def test_an_output_that_is_an_input_is_refused(d, writer):
    args, stdin, source, _ = WRITERS[writer]
    before = (d / source).read_bytes()
    r = run([*args(source), "--force"], d, stdin)
    assert_clean_error(r, "would overwrite")
    assert (d / source).read_bytes() == before and leftovers(d) == []


@pytest.mark.parametrize("log, needle", [("corpus.txt", "would overwrite"), ("m.npz", "same file as --out"),
                                         ("logs", "is a directory"), ("logs/", "names a directory"),
                                         ("missing/log.jsonl", "does not exist")])
def test_a_bad_log_file_is_refused_before_training(d, log, needle):
    (d / "logs").mkdir()
    r = run(WRITERS["train"][0]("m.npz") + ["--log-file", log], d)
    assert_clean_error(r, needle)
    assert "Training" not in r.stdout and not (d / "m.npz").exists() and leftovers(d) == []


def test_a_log_file_equal_to_the_resumed_checkpoint_is_refused(d):
    assert run(WRITERS["train"][0]("m.npz"), d).returncode == 0
    before = (d / "m.npz").read_bytes()
    r = run(["train", "--data", "corpus.txt", "--resume", "m.npz", "--steps", "6", "--log-file", "m.npz"], d)
    assert_clean_error(r, "same file as --out")
    assert (d / "m.npz").read_bytes() == before


def _unwritable_dir(d: Path) -> Path:
    if os.geteuid() != 0:
        ro = d / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK) or _cannot_create("/sys"):
        return Path("/sys")                              # even root cannot create files there
    pytest.skip("no directory that root cannot write to")


def _cannot_create(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, ".pythia-probe"), os.O_CREAT | os.O_WRONLY | os.O_EXCL)
    except OSError:
        return True
    os.close(fd)
    os.unlink(os.path.join(folder, ".pythia-probe"))
    return False


@pytest.mark.parametrize("how", ["default name", "--out", "--log-file"])
def test_an_unwritable_directory_is_found_before_training(d, how):
    ro = _unwritable_dir(d)
    try:
        args = ["train", "--data", str(d / "corpus.txt"), *TINY, "--steps", "3"]
        if how == "--out":
            args += ["--out", str(ro / "m.npz")]
        elif how == "--log-file":
            args += ["--out", str(d / "m.npz"), "--log-file", str(ro / "log.jsonl")]
        r = run(args, ro if how == "default name" else d)
        assert_clean_error(r, "not writable")
        assert "Training" not in r.stdout and leftovers(d) == []
    finally:
        if ro != Path("/sys"):
            ro.chmod(0o755)


# ---- 3, 4. signals: stop at a step boundary, save, say which, exit 128 + signo ------------------------

SIGNALS = {"SIGINT": (signal.SIGINT, 130, "Ctrl-C"), "SIGTERM": (signal.SIGTERM, 143, "SIGTERM"),
           "SIGHUP": (signal.SIGHUP, 129, "SIGHUP")}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_during_training_stops_saves_and_exits_with_its_status(d, runner, sig):
    signum, status, name = SIGNALS[sig]
    chat = runner == "train-chat" and signum == signal.SIGINT     # Ctrl-C in train-chat goes on to chat
    p = Proc(RUNNERS[runner]("m.npz"), d, stdin=subprocess.PIPE)
    p.wait_for("Training")
    time.sleep(0.3)
    p.p.send_signal(signum)
    if chat:
        p.wait_for("Chat with the model")
        p.p.stdin.write(b"quit\n")
    p.p.stdin.close()
    code = p.wait()
    assert code == (0 if chat else status), (code, p.out, p.err)
    assert "Stopped early at step" in p.out and f"({name})" in p.out
    step = int(p.out.split("Stopped early at step ")[1].split("/")[0])
    assert step > 0
    assert_complete(d / "m.npz", step=step)
    assert "Traceback" not in p.err and "error" not in p.err
    if runner == "train":
        assert "--resume m.npz" in p.out
    assert leftovers(d) == []


def _freeze_during_save(p: Proc, folder: Path) -> Path:
    """SIGSTOP the process while its temporary checkpoint file exists; returns that file."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        tmps = list(folder.glob(".m.npz.*.tmp"))
        if tmps:
            os.kill(p.pid, signal.SIGSTOP)
            while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                time.sleep(0.001)
            if tmps[0].exists():
                return tmps[0]                          # frozen in the middle of writing it
            os.kill(p.pid, signal.SIGCONT)
        time.sleep(0.0005)
    raise AssertionError("never caught a save in progress")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see a stopped process")
@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGHUP"], ["SIGTERM", "SIGINT"]])
def test_signals_during_a_save_finish_the_save(d, signals):
    # A wider model (a ~10 MB checkpoint) saved every step, so a save is easy to catch in progress.
    wide = ["--d-model", "128", "--n-layer", "4", "--n-head", "4", "--block-size", "16", "--batch-size", "2",
            "--eval-iters", "1", "--steps", "1000000", "--eval-interval", "1"]
    p = Proc(["train", "--data", "corpus.txt", *wide, "--out", "m.npz"], d)
    p.wait_for("Training")
    tmp = _freeze_during_save(p, d)
    for s in signals:
        os.kill(p.pid, SIGNALS[s][0])
    os.kill(p.pid, signal.SIGCONT)
    code = p.wait()
    assert not tmp.exists() and leftovers(d) == []
    ck = assert_complete(d / "m.npz")
    assert ck.step > 0 and "Traceback" not in p.err
    if len(signals) == 1:                               # stopped at the boundary after the save
        assert code == SIGNALS[signals[0]][1] and p.err == ""
        assert f"Stopped early at step {ck.step}/" in p.out
    else:                                               # the second signal ends it once the save is done
        assert code in (130, 143)
        lines = p.err.strip().splitlines()
        assert len(lines) == 1 and "stopped by a second" in lines[0] and "'m.npz', is complete" in lines[0]


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_signal_during_the_final_evaluation_saves_and_names_only_files_that_exist(d, runner):
    # Three quick steps, then one long final evaluation (20000 batches per split) to land in.
    p = Proc(["train" if runner == "train" else "train-chat", "--data", "corpus.txt", *TINY[:-2],
              "--eval-iters", "20000", "--steps", "3", "--eval-interval", "1000", "--out", "m.npz"], d)
    p.wait_for("step 2/3")                              # printed just before step 3 and its evaluation
    time.sleep(0.2)
    p.p.send_signal(signal.SIGTERM)
    assert p.wait() == 143, p.out + p.err
    assert "Trained 3 steps, then stopped by SIGTERM" in p.out
    assert_complete(d / "m.npz", step=3)                # the trained state is saved, not lost
    for line in p.out.splitlines():
        if "--checkpoint" in line:
            assert (d / line.split("--checkpoint ")[1].split()[0]).is_file()
    assert p.err == "" and leftovers(d) == []


def test_two_ctrl_c_10_ms_apart_never_lose_the_save_silently(d):
    p = Proc(RUNNERS["train"]("m.npz"), d)
    p.wait_for("Training")
    time.sleep(0.3)
    p.p.send_signal(signal.SIGINT)
    time.sleep(0.01)
    p.p.send_signal(signal.SIGINT)
    assert p.wait() == 130
    ck = assert_complete(d / "m.npz")
    assert ck.step > 0 and "Traceback" not in p.err and leftovers(d) == []
    if p.err:                                           # the second one cut the run short: said so, truthfully
        lines = p.err.strip().splitlines()
        assert len(lines) == 1 and "Ctrl-C" in lines[0] and "is complete" in lines[0], p.err
    else:
        assert f"Stopped early at step {ck.step}/" in p.out


# ---- 8. a closed pipe never loses the run ---------------------------------------------------------

@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("stream", ["stdout", "stderr", "both"])
def test_a_closed_pipe_does_not_stop_training_or_lose_the_checkpoint(d, runner, stream):
    args = [runner, "--data", "corpus.txt", *TINY, "--steps", "300", "--eval-interval", "100", "--out", "m.npz"]
    p = subprocess.Popen([sys.executable, "-m", "pythia", *args], cwd=d, env=subprocess_env(),
                         stdin=subprocess.PIPE if runner == "train-chat" else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if stream in ("stdout", "both"):
        p.stdout.readline(), p.stdout.readline()        # `| head -n 2`
        p.stdout.close()
    if stream in ("stderr", "both"):
        p.stderr.close()
    if runner == "train-chat":
        p.stdin.write(b"Hello\nquit\n")
        p.stdin.close()
    try:
        code = p.wait(timeout=DEADLINE)
    finally:
        if p.poll() is None:
            p.kill()
    rest = b"" if p.stdout.closed else p.stdout.read()
    err = b"" if p.stderr.closed else p.stderr.read()
    assert code == 0, (code, rest, err)
    assert b"Traceback" not in rest + err and err == b""
    assert_complete(d / "m.npz", step=300)
    assert leftovers(d) == []


# ---- folder writers: prepare and export ---------------------------------------------------------

# name -> (command line writing the folder `out`, the files such a folder holds, the input it reads)
DIR_WRITERS = {
    "prepare": (lambda out: ["prepare", "--data", "corpus.txt", "--out", out], ["meta.json", "train.bin", "val.bin"],
                "corpus.txt"),
    "export": (lambda out: ["export", "m.npz", "--out", out], ["config.json", "model.safetensors", "tokenizer.json",
                                                               "tokenizer_config.json"], "m.npz"),
}
BIG = ["prepare", "--data", "big.txt", "--out", "big.tok", "--tokenizer", "bpe", "--vocab-size", "300"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ckpt")
    (home / "corpus.txt").write_text(TEXT, encoding="utf-8")
    assert run(WRITERS["train"][0]("m.npz"), home).returncode == 0
    return home / "m.npz"


@pytest.fixture
def dd(d, checkpoint):
    """d with a checkpoint to export."""
    shutil.copy(checkpoint, d / "m.npz")
    return d


def big_corpus(d: Path) -> None:
    (d / "big.txt").write_text(TEXT * 4000, encoding="utf-8")            # ~7 MB: seconds of BPE work


def snapshot(folder: Path) -> dict:
    """Every entry under folder: a file's bytes, where a symlink points, a folder or a FIFO by kind."""
    return {str(p.relative_to(folder)): ("-> " + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else
                                         p.read_bytes() if p.is_file() else "special")   # a FIFO's read would wait
            for p in sorted(folder.rglob("*"))}


def assert_folder(writer: str, folder: Path) -> None:
    names = sorted(p.name for p in folder.iterdir())
    assert set(DIR_WRITERS[writer][1]) <= set(names), names


@pytest.mark.parametrize("writer", [*WRITERS, *DIR_WRITERS])
def test_every_writer_onto_a_full_disk_says_so_in_one_line_and_leaves_nothing(dd, full_disk, writer):
    # conftest's full_disk: a tmpfs filled to its last byte, so the first byte written fails (ENOSPC)
    args, stdin = (WRITERS[writer][:2] if writer in WRITERS else (DIR_WRITERS[writer][0], ""))
    before = snapshot(full_disk)
    r = run(args(str(full_disk / "out")), dd, stdin=stdin)
    assert_clean_error(r, "space")                      # "No space left on device", "free some space"
    assert snapshot(full_disk) == before                # no output, temporary, lock or stray folder


@pytest.mark.parametrize("writer", DIR_WRITERS)
def test_a_folder_claimed_by_a_live_process_is_refused_naming_it(dd, writer):
    from pythia.system.claims import claim_output
    with claim_output(dd / "out", directory=True):     # flock: a second descriptor conflicts, even in one process
        r = run(DIR_WRITERS[writer][0]("out"), dd)
        assert_clean_error(r, f"being written by another Pythia run (process {os.getpid()})")
    assert not (dd / "out").exists() and leftovers(dd) == []


def test_two_prepares_racing_for_one_out_refuse_the_second(d):
    big_corpus(d)
    first = Proc(BIG, d)
    first.wait_for("scanning")
    r = run([*BIG, "--force"], d)
    assert_clean_error(r, f"(process {first.pid})")
    assert first.wait() == 0, first.err
    assert sorted(p.name for p in (d / "big.tok").iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert leftovers(d) == []


@pytest.mark.parametrize("writer", DIR_WRITERS)
def test_a_stale_temporary_folder_of_a_dead_process_is_removed(dd, writer):
    pid = dead_pid()
    stale = dd / f".out.{pid}.abcd1234.tmp"
    stale.mkdir()
    (stale / "tokens.bin").write_bytes(b"half")
    r = run(DIR_WRITERS[writer][0]("out"), dd)
    assert r.returncode == 0, r.stderr
    assert_folder(writer, dd / "out")
    assert not stale.exists() and leftovers(dd) == []


def _target(d: Path, kind: str, writer: str, monkeypatch) -> str:
    """An --out that --force must refuse to replace, untouched."""
    if kind == ".":
        monkeypatch.chdir(d)
        return "."
    if kind == "the working directory's parent":
        (d / "sub").mkdir()
        monkeypatch.chdir(d / "sub")
        return ".."
    if kind == "a mount point":
        (d / "mnt").mkdir()
        real = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(d / "mnt") or real(p))
        return "mnt"
    if kind == "a symlink to its own earlier folder":
        assert run(DIR_WRITERS[writer][0]("real"), d).returncode == 0
        (d / "link").symlink_to(d / "real")
        return "link"
    if kind == "a device":
        return os.devnull
    if kind == "a FIFO":
        os.mkfifo(d / "pipe")
        return "pipe"
    if kind == "its own input file":
        return DIR_WRITERS[writer][2]
    if kind == "a folder holding a file it did not write":
        assert run(DIR_WRITERS[writer][0]("mine"), d).returncode == 0
        (d / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
        return "mine"
    raise ValueError(kind)


NOT_A_FOLDER = {"prepare": "exists and is not a prepared corpus", "export": "and export writes a folder"}
PLACES = {".": "the current folder", "the working directory's parent": "the current folder",
          "a mount point": "a mount point", "a symlink to its own earlier folder": "is a symbolic link",
          "a folder holding a file it did not write": "'notes.txt', which this command did not write",
          "a device": NOT_A_FOLDER, "a FIFO": NOT_A_FOLDER, "its own input file": NOT_A_FOLDER}


@pytest.mark.parametrize("writer", DIR_WRITERS)
@pytest.mark.parametrize("kind", PLACES)
def test_force_refuses_a_folder_it_cannot_or_must_not_replace_and_touches_nothing(dd, writer, kind, monkeypatch):
    monkeypatch.chdir(dd)
    out = _target(dd, kind, writer, monkeypatch)
    before = snapshot(dd)
    args = DIR_WRITERS[writer][0](out)
    if os.getcwd() != str(dd):                          # the inputs, as seen from the working directory
        args = [os.path.relpath(dd / a, os.getcwd()) if (dd / a).exists() and a != out else a for a in args]
    r = run([*args, "--force"], os.getcwd())
    needle = PLACES[kind]
    assert_clean_error(r, needle[writer] if isinstance(needle, dict) else needle)
    assert snapshot(dd) == before and leftovers(dd) == []


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_during_prepare_stops_it_says_which_and_leaves_nothing(d, sig):
    signum, status, name = SIGNALS[sig]
    big_corpus(d)
    p = Proc(BIG, d)
    p.wait_for("scanning")
    p.p.send_signal(signum)
    code = p.wait()
    if code == 0:
        pytest.skip("prepare finished before the signal arrived")
    assert code == status, (code, p.err)
    assert p.err.strip().splitlines() == [f"error: stopped by {name} before anything was saved; existing files "
                                          f"are unchanged"], p.err
    assert sorted(x.name for x in d.iterdir()) == ["big.txt", "corpus.txt", "gpt2", "run.jsonl"]


def test_a_closed_stdout_does_not_stop_prepare(d):
    big_corpus(d)
    p = subprocess.Popen([sys.executable, "-m", "pythia", *BIG], cwd=d, env=subprocess_env(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()                                 # `| head -n 1`
    p.stdout.close()
    try:
        code = p.wait(timeout=DEADLINE * 2)
    finally:
        if p.poll() is None:
            p.kill()
    err = p.stderr.read()
    assert code == 0 and err == b"", (code, err)
    assert sorted(x.name for x in (d / "big.tok").iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert leftovers(d) == []


# ---- a stop signal while a writer works, or while it writes -------------------------------------

# name -> (command line, where the signal comes: a function the writer calls in the middle of its
#          work, and the signal is sent to this process as it returns)
AT_WORK = {
    "plot": (["plot", "run.jsonl", "--out", "out.svg"], "pythia.inspection.plot", "read_log"),
    "export": (["export", "m.npz", "--out", "out"], "pythia.formats.safetensors", "save_safetensors"),  # 1st of 4 files
    "convert-gpt2": (["convert-gpt2", "gpt2", "--out", "out.npz"], "pythia.formats.gpt2", "load_gpt2"),
}


class Unguarded(Exception):
    """A writer let a stop signal reach the test's own handler (its default would end pytest)."""


@pytest.fixture
def unguarded():
    """Handlers that raise Unguarded for SIGTERM and SIGHUP while the test runs: a writer that does
    not route them fails its test (status 1, a traceback) instead of killing the test process."""
    def handler(signum, frame):
        raise Unguarded(signum)
    saved = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _signal_after(monkeypatch, module: str, name: str, signum: int) -> None:
    import importlib
    mod = importlib.import_module(module)
    real = getattr(mod, name)

    def signalled(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signum)                    # handled at the next bytecode, in this thread
        return result
    monkeypatch.setattr(mod, name, signalled)


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("writer", AT_WORK)
def test_a_signal_while_a_writer_works_stops_it_says_which_and_leaves_nothing(dd, monkeypatch, unguarded, writer, sig):
    signum, status, name = SIGNALS[sig]
    args, module, function = AT_WORK[writer]
    before = snapshot(dd)
    _signal_after(monkeypatch, module, function, signum)
    r = run(args, dd)
    assert r.returncode == status, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"error: stopped by {name} before anything was saved; existing files "
                                             f"are unchanged"], r.stderr
    assert snapshot(dd) == before                       # no output, no lock, no temporary file or folder


@pytest.mark.parametrize("sig", SIGNALS)
@pytest.mark.parametrize("writer", ["plot", "convert-gpt2"])
def test_a_signal_while_a_writer_writes_lets_the_file_finish_then_stops(d, monkeypatch, unguarded, writer, sig):
    # the signal arrives with the first bytes of the file: the write is held until it is whole
    signum, status, name = SIGNALS[sig]
    from pythia.system import atomic
    real = atomic.atomic_write

    def signalled(path, writer_fn):
        def write(f):
            os.kill(os.getpid(), signum)
            writer_fn(f)
        return real(path, write)
    monkeypatch.setattr(atomic, "atomic_write", signalled)
    out = "out.svg" if writer == "plot" else "out.npz"
    r = run(WRITERS[writer][0](out), d, stdin=WRITERS[writer][1])
    assert r.returncode == status, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [f"error: stopped by {name}; the last file saved, {out!r}, is complete"]
    assert_written(writer, d / out)
    assert leftovers(d) == []


# ---- a closed stdout never fails a writer whose product is a file ----------------------------------

PIPED = {"export": (["export", "m.npz", "--out", "hf"], "hf/config.json"),
         "plot": (["plot", "run.jsonl", "--out", "loss.svg"], "loss.svg"),
         "convert-gpt2": (["convert-gpt2", "gpt2", "--out", "c.npz"], "c.npz")}


@pytest.mark.parametrize("writer", PIPED)
def test_a_stdout_closed_by_head_0_does_not_fail_the_writer(dd, writer):
    args, product = PIPED[writer]
    p = subprocess.Popen([sys.executable, "-m", "pythia", *args], cwd=dd, env=subprocess_env(),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                                    # `| head -c 0`: the reader is gone at once
    code = p.wait(timeout=DEADLINE)
    err = p.stderr.read()
    assert code == 0 and err == b"", (code, err)
    assert (dd / product).is_file() and leftovers(dd) == []


# ---- messages that point the right way ----------------------------------------------------------

def test_plot_of_a_folder_says_it_is_a_folder(d):
    (d / "logs").mkdir()
    r = run(["plot", "logs", "--out", "loss.svg"], d)
    assert_clean_error(r, "log file 'logs' is a directory")
    assert not (d / "loss.svg").exists() and leftovers(d) == []


def test_plot_and_out_the_same_file_is_refused_as_such(d):
    r = run(["train", "--data", "corpus.txt", *TINY, "--steps", "2", "--plot", "x.npz", "--out", "x.npz"], d)
    assert_clean_error(r, "is the same file as")
    assert not (d / "x.npz").exists() and leftovers(d) == []


@pytest.mark.parametrize("name", ["loss.png", "loss.PDF"])
def test_plot_refuses_an_out_whose_suffix_is_not_svg(d, name):
    r = run(["plot", "run.jsonl", "--out", name], d)
    assert_clean_error(r, "plot writes an SVG picture")
    assert not (d / name).exists() and leftovers(d) == []


def test_plot_skips_a_torn_last_line_with_a_note_and_accepts_a_bom(d):
    (d / "run.jsonl").write_bytes(b"\xef\xbb\xbf" + (d / "run.jsonl").read_bytes() + b'{"step": 6, "train_lo')
    r = run(["plot", "run.jsonl", "--out", "loss.svg"], d)
    assert r.returncode == 0, r.stderr
    assert "skipped line 6 of 'run.jsonl': it is incomplete" in r.stdout and "(5 train" in r.stdout
    assert_svg(d / "loss.svg")
    (d / "run.jsonl").write_text('{"step": 1, "train_loss": 2}\nnot json\n{"step": 3, "train_loss": 1}\n')
    r = run(["plot", "run.jsonl", "--out", "loss2.svg"], d)          # a bad line that is not the last: refused
    assert_clean_error(r, "line 2 of 'run.jsonl' is not a training log record")


def test_a_long_log_is_drawn_with_a_bounded_number_of_points_keeping_every_extreme(d):
    import math
    import re
    from pythia.inspection.plot import MAX_POINTS
    n = 50_000
    loss = [3.0 + math.sin(i / 700.0) for i in range(1, n + 1)]
    loss[12_345], loss[40_001] = 9.0, 0.5                             # one spike, one dip
    (d / "long.jsonl").write_text("".join(f'{{"step": {i + 1}, "train_loss": {v}}}\n' for i, v in enumerate(loss)))
    r = run(["plot", "long.jsonl", "--out", "long.svg"], d)
    assert r.returncode == 0, r.stderr
    svg = (d / "long.svg").read_text(encoding="utf-8")
    pts = re.search(r'class="train" points="([^"]*)"', svg).group(1).split()
    assert len(pts) <= MAX_POINTS and len(svg) < 200_000
    ys = [float(p.split(",")[1]) for p in pts]
    xs = [float(p.split(",")[0]) for p in pts]
    assert xs == sorted(xs) and xs[0] == 70.0 and xs[-1] == pytest.approx(740.0)   # the whole step range
    # the spike (loss 9.0) is the topmost pixel, the dip (0.5) the lowest: extremes survive the thinning
    assert min(ys) == pytest.approx(40.0, abs=1.0) and max(ys) > 350
    from pythia.inspection.plot import downsample
    kept = downsample([(i + 1, v) for i, v in enumerate(loss)])
    assert (12_346, 9.0) in kept and (40_002, 0.5) in kept and len(kept) <= MAX_POINTS
