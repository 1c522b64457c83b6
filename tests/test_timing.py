"""DecodeTimer (pythia.timing) against a fake clock whose every reading is known, and the
--timing flag of generate and /stats of chat, whose token counts are known from the prompt and
the number of tokens asked for."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import helpers
from pythia import timing
from pythia.formats.source import open_model

GPT2 = Path(__file__).parent / "fixtures" / "gpt2"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_prompt_and_decode_times_count_only_time_inside_the_generator(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)

    def gen():
        clock.now += 0.5          # the prompt pass: 0.5 s for 10 tokens
        yield 1
        for t in range(4):
            clock.now += 0.1      # each decode pass: 0.1 s
            yield 2

    timer = timing.DecodeTimer(load_seconds=2.0)
    for _ in timer.wrap(gen(), prompt_tokens=10):
        clock.now += 7.0          # the caller's own work between tokens is not counted
    d = timer.as_dict()
    assert d["prompt_tokens"] == 10 and d["prompt_s"] == pytest.approx(0.5)
    assert d["prompt_tokens_per_s"] == pytest.approx(20.0)
    assert d["decode_tokens"] == 4 and d["decode_s"] == pytest.approx(0.4)
    assert d["decode_tokens_per_s"] == pytest.approx(10.0)
    lines = timer.lines()
    assert lines[0] == "load time    =    2000.00 ms"
    assert "  500.00 ms /    10 tokens" in lines[1] and "20.00 tokens per second" in lines[1]
    assert "  400.00 ms /     4 runs" in lines[2] and "10.00 tokens per second" in lines[2]
    assert lines[3].endswith("900.00 ms /    14 tokens")


def test_an_empty_generation_reports_no_tokens():
    timer = timing.DecodeTimer()
    assert list(timer.wrap(iter(()), prompt_tokens=5)) == []
    assert timer.prompt_tokens == 0 and "no tokens" in timer.lines()[0]


def test_generate_timing_prints_the_perf_lines_with_known_counts(tmp_path):
    n = 6
    r = helpers.run_cli(["generate", "--model", str(GPT2), "--prompt", "Hello there", "--temperature", "0",
                         "--max-new-tokens", str(n), "--timing", "--quantize", "int8"], tmp_path)
    helpers.assert_ok(r)
    prompt = len(open_model(GPT2).prompt_ids("Hello there"))
    assert re.search(r"timing: load time += +[\d.]+ ms", r.stderr)
    assert re.search(rf"timing: prompt eval += +[\d.]+ ms / +{prompt} tokens \(.*tokens per second\)", r.stderr)
    assert re.search(rf"timing: eval time += +[\d.]+ ms / +{n - 1} runs", r.stderr)
    assert "timing:" not in r.stdout


def test_chat_stats_shows_the_last_replys_speed(tmp_path):
    r = helpers.run_cli(["chat", "--model", str(GPT2), "--max-new-tokens", "4", "--temperature", "0"],
                        tmp_path, stdin="/stats\nHello\n/stats\nquit\n")
    helpers.assert_ok(r)
    assert "no reply yet" in r.stdout
    assert re.search(r"eval time += +[\d.]+ ms / +3 runs", r.stdout)
    assert re.search(r"load time += +[\d.]+ ms", r.stdout)
