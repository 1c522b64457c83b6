"""ConsoleUI: what the banner, progress and summary print, on terminals and on pipes.

Streams are StringIO objects (optionally pretending to be terminals), so every assertion is on
the exact text a user would see.
"""
import io
import re
from types import SimpleNamespace

import pytest

from pythia import ui as ui_mod
from pythia.ui import ConsoleUI, CorpusInfo, colour_allowed, fmt_duration, loss_curve

ANSI = re.compile(r"\033\[[0-9;]*[A-Za-z]")


class FakeTTY(io.StringIO):
    encoding = "utf-8"

    def isatty(self):
        return True


class Pipe(io.StringIO):
    encoding = "utf-8"


def progress(step, steps=100, loss=2.0, val=None, evaluated=False):
    return SimpleNamespace(step=step, steps=steps, train_loss=loss, val_loss=val, lr=1e-3,
                           tokens_per_s=12345.0, elapsed_s=step * 0.01, eta_s=(steps - step) * 0.01,
                           evaluated=evaluated)


@pytest.fixture(autouse=True)
def no_open_line():
    ui_mod._OPEN_LINE[0] = False
    yield
    ui_mod._OPEN_LINE[0] = False


def test_plain_progress_prints_whole_lines_every_tenth_and_at_evaluations():
    out = Pipe()
    ui = ConsoleUI(out)
    assert not ui.live and not ui.color
    for s in range(1, 101):
        ev = s % 25 == 0
        ui.progress(progress(s, val=3.0 if s >= 25 else None, evaluated=ev))
    text = out.getvalue()
    assert "\r" not in text and not ANSI.search(text)
    steps = [int(m) for m in re.findall(r"^step +(\d+)/100", text, re.M)]
    # first step, every 10th step, and the evaluations at 25 and 75 (50 and 100 are also tenths)
    assert steps == [1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100]
    assert "val 3.0000" in text and "12,345 tok/s" in text


def test_live_progress_redraws_one_line_in_place():
    out = FakeTTY()
    ui = ConsoleUI(out, color=False, width=100)
    assert ui.live
    for s in range(1, 21):
        ui.progress(progress(s, steps=20))
    text = out.getvalue()
    assert text.startswith("\r")
    assert text.count("\n") == 1 and text.endswith("\n")   # only the finished bar ends its line
    last = text.rstrip("\n").split("\r")[-1]
    assert "20/20" in last and "100%" in last and "ETA" in last and "tok/s" in last
    assert len(last) <= 100


def test_message_after_an_open_bar_starts_on_a_new_line():
    out = FakeTTY()
    ui = ConsoleUI(out, color=False)
    ui.progress(progress(1, steps=50))
    assert ui_mod.line_open()
    ui.line("hello")
    assert out.getvalue().endswith("\nhello\n")
    assert not ui_mod.line_open()


def test_colour_only_on_terminals_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_allowed(FakeTTY())
    assert not colour_allowed(Pipe())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_allowed(FakeTTY())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_allowed(FakeTTY())
    assert ANSI.search(ConsoleUI(FakeTTY(), color=True).style("x", "bold"))
    assert ConsoleUI(FakeTTY(), color=False).style("x", "bold") == "x"


def test_banner_names_version_backend_model_and_corpus():
    out = Pipe()
    cfg = SimpleNamespace(n_layer=3, n_head=4, d_model=48, block_size=32)
    ConsoleUI(out).banner(version="9.9.9", backend="numpy", fallback_reason="not built; run X",
                          config=cfg, n_params=89808, vocab_size=70, tokenizer="char",
                          corpus=CorpusInfo(files=[("input.txt", 2048), ("model.txt", 100)], n_tokens=2148),
                          rows=[("saving to", "a.npz")])
    text = out.getvalue()
    for needle in ("Pythia 9.9.9", "numpy", "fell back to the NumPy kernels", "not built; run X",
                   "3 layers", "4 heads", "d_model 48", "context 32", "89,808 parameters",
                   "input.txt (2.0 kB)", "model.txt (100 bytes)", "a.npz"):
        assert needle in text, needle
    assert "kv" not in text                                     # as many kv heads as heads: nothing to say
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert lines["corpus"].endswith(" · 2,148 tokens")          # the corpus's size on the corpus's line
    assert lines["vocab"].split(None, 1)[1] == "70 tokens (char tokenizer)"   # the vocabulary's alone


def test_banner_of_a_grouped_query_model_names_its_key_value_heads():
    out = Pipe()
    cfg = SimpleNamespace(n_layer=30, n_head=9, n_kv_head=3, d_model=576, block_size=8192)
    ConsoleUI(out).banner(version="9.9.9", backend="cython", fallback_reason=None, config=cfg,
                          n_params=134_515_008, vocab_size=49152, tokenizer="hf-bpe")
    assert "30 layers · 9 heads / 3 kv · d_model 576" in out.getvalue()


def test_summary_reports_losses_time_checkpoint_and_draws_the_curve():
    out = Pipe()
    ui = ConsoleUI(out)
    for s in range(1, 41):
        ui.progress(progress(s, steps=40, loss=4.0 - s * 0.05))
    out.seek(0)
    out.truncate()
    ui.summary(steps_done=40, steps=40, train_loss=2.0123, val_loss=2.3456, wall_s=3.25,
               tokens_per_s=9876.0, checkpoint="run.npz")
    text = out.getvalue()
    for needle in ("Trained 40 steps", "3.2s", "9,876 tok/s", "train loss 2.0123", "val loss 2.3456",
                   "run.npz", "step 40", "3.95", "2.00"):
        assert needle in text, needle


def test_summary_says_when_training_was_interrupted():
    out = Pipe()
    ConsoleUI(out).summary(steps_done=7, steps=500, train_loss=3.0, val_loss=None, wall_s=1.0,
                           tokens_per_s=100.0, checkpoint="x.npz", interrupted=True)
    assert "Stopped early at step 7/500" in out.getvalue()


def _eighths(rows, unicode=True):
    """Filled eighths per column of a loss_curve chart (the rows between title and axis)."""
    body = [r.split("┤" if unicode else "|", 1)[1] for r in rows[1:-1]]
    width = max(len(r) for r in body)
    body = [r.ljust(width) for r in body]
    blocks = " ▁▂▃▄▅▆▇█"
    return [sum(blocks.index(r[j]) for r in body) for j in range(width)]


def test_loss_curve_column_heights_follow_the_losses():
    losses = [4.0, 3.0, 2.5, 2.0, 1.0]
    rows = loss_curve(losses, width=60, height=4)
    assert len(rows) == 4 + 2 and "step" not in rows[-1]
    # level = 1 + round((v - lo) / (hi - lo) * (8 * height - 1)), computed here independently
    want = [1 + round((v - 1.0) / 3.0 * 31) for v in losses]
    assert _eighths(rows) == want
    assert "4.00" in rows[1] and "1.00" in rows[-2]


def test_loss_curve_averages_many_steps_into_the_width():
    losses = [float(i % 2) for i in range(100)]   # alternating 0, 1: every pair averages 0.5
    rows = loss_curve(losses, width=50, height=3, last_step=100)
    assert len(_eighths(rows)) == 50 and len(set(_eighths(rows))) == 1
    assert rows[-1].endswith("step 100")


def test_loss_curve_ascii_fallback_and_nothing_to_draw():
    rows = loss_curve([3.0, 2.0, 1.0], width=20, height=2, unicode=False)
    assert all(ord(c) < 128 for r in rows for c in r)
    assert "#" in "".join(rows)
    assert loss_curve([2.0], width=20) == []
    assert loss_curve([], width=20) == []


@pytest.mark.parametrize("seconds, text", [(None, "--"), (4.24, "4.2s"), (75, "1:15"), (3725, "1:02:05"),
                                           (float("inf"), "--")])
def test_fmt_duration(seconds, text):
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_live_bar_never_wraps_even_on_narrow_terminals(width):
    out = FakeTTY()
    ui = ConsoleUI(out, color=True, width=width)
    for s in (1, 50, 100):
        ui.progress(progress(s, steps=100, val=2.5, evaluated=s == 50))
    for drawn in out.getvalue().strip("\n").split("\r")[1:]:
        assert len(ANSI.sub("", drawn).rstrip()) <= width - 1
