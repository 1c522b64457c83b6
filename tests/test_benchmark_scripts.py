"""The benchmark scripts still run: each one, on its smallest setting, in a child process.

They are not part of the test run's timing claims (speed is measured by running them, see
benchmarks/README.md); these tests only catch a script that no longer starts or finishes, or
whose output no longer reads as the script means it. Nothing here depends on how fast the
machine is.
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pythia.kernels import _loader

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, codes=(0,), timeout: float = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHIA_KERNELS"}
    p = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=BENCH)
    assert p.returncode in codes, p.stderr[-2000:]
    return p.stdout


def table_rows(out: str) -> list[list[str]]:
    """The data rows of the markdown table in out, as lists of cells."""
    rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:]]          # without the header row


def number(cell: str) -> float:
    """A cell as the scripts print it for people: '2,177.1' is 2177.1 (a slow machine passes 1,000)."""
    assert re.fullmatch(r"-?\d{1,3}(,\d{3})*(\.\d+)?|-?\d+(\.\d+)?", cell), f"not a number: {cell!r}"
    return float(cell.replace(",", ""))


@pytest.mark.skipif(_loader.load_compiled()[0] is None, reason="the script compares the compiled kernels")
def test_kernels_cpu_time_prints_a_row_per_kernel():
    out = run_script("kernels_cpu_time.py", "S", "--budget", "0.001")
    rows = table_rows(out)
    assert [r[0] for r in rows] == [f"{k}-S" for k in (
        "softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward",
        "gelu_forward", "gelu_backward", "attention_softmax_forward", "attention_softmax_backward",
        "crossentropy_forward", "crossentropy_backward")]
    for r in rows:
        assert number(r[1]) > 0 and number(r[2]) > 0 and number(r[5]) > 0, r   # cython, numpy, ratio


def test_kernels_cpu_time_refuses_an_unknown_config():
    p = subprocess.run([sys.executable, str(BENCH / "kernels_cpu_time.py"), "XL"], capture_output=True,
                       text=True, timeout=120, cwd=BENCH)
    assert p.returncode == 2 and "unknown config 'XL'" in p.stderr


def test_profile_step_accounts_for_a_step():
    out = run_script("profile_step.py", "S", "--steps", "3")
    assert "config S" in out, out[-2000:]
    for part in ("linear_backward", "layernorm_forward", "adamw_update", "glue"):
        assert part in out, part


def test_quality_run_trains_and_reports_a_val_loss(tmp_path):
    text = "".join(f"{w} gave the {a} to the {b}.\n" for w, a, b in
                   zip(["Ann", "Bob", "Cy", "Dee"] * 60, ["cup", "hat", "key", "map"] * 60,
                       ["cat", "dog", "owl", "fox", "elk"] * 48))
    data = tmp_path / "corpus.txt"
    data.write_text(text, encoding="utf-8")
    # four steps cannot reach the recipe's 1.88: the script says so and exits 1
    out = run_script("quality_shakespeare.py", "--data", str(data), "--steps", "4", "--eval-interval", "2",
                     "--eval-iters", "1", "--final-eval-iters", "2", codes=(1,))
    assert "pythia: val loss" in out and "target <= 1.88: NOT met" in out, out[-2000:]


NO_CORPUS = ("error: pass --data FILE (Tiny Shakespeare: nanoGPT's data/shakespeare_char/input.txt) "
             "or set PYTHIA_SHAKESPEARE")


@pytest.mark.parametrize("script", [["quality_shakespeare.py"], ["bench_tokenize.py"],
                                    ["bench_distributed.py"], ["ab_train.py", "--a", "."]])
def test_a_script_without_the_corpus_says_how_to_name_it(script):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHIA_SHAKESPEARE", "PYTHIA_KERNELS")}
    p = subprocess.run([sys.executable, str(BENCH / script[0]), *script[1:]], capture_output=True,
                       text=True, timeout=120, cwd=BENCH, env=env)
    assert p.returncode == 2 and p.stderr.strip() == NO_CORPUS, p.stderr[-2000:]


def test_the_corpus_comes_from_pythia_shakespeare_when_there_is_no_data_flag(tmp_path):
    missing = tmp_path / "nowhere.txt"
    env = {**os.environ, "PYTHIA_SHAKESPEARE": str(missing)}
    p = subprocess.run([sys.executable, str(BENCH / "bench_distributed.py")], capture_output=True,
                       text=True, timeout=120, cwd=BENCH, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith(f"error: {missing} (PYTHIA_SHAKESPEARE) is not a file; pass --data FILE"), p.stderr


def test_number_reads_the_scripts_thousands_separators():
    assert number("2,177.1") == 2177.1 and number("12.50") == 12.5 and number("1,000,000") == 1e6
    with pytest.raises(AssertionError):
        number("2,17.1")


def test_bench_finetune_measures_steps_memory_and_chat_on_a_tiny_shape():
    out = run_script("bench_finetune.py", "--shape", "tiny", "--rounds", "1", "--steps", "2")
    rows = table_rows(out)
    assert [r[0].split(",")[0] for r in rows] == ["step time", "peak RSS of 2 steps", "chat --gpt2 peak RSS"], out
    assert number(rows[0][1].split(" ")[0]) > 0 and number(rows[1][1].split(" ")[0]) > 0
    assert re.fullmatch(r"[\d,]+ / [\d,]+ = [\d.]+x", rows[2][1]), rows[2]


def test_bench_lora_prints_lora_and_full_rows_on_a_tiny_shape():
    out = run_script("bench_lora.py", "--shape", "tiny", "--rounds", "1", "--steps", "2", "--no-torch")
    rows = {r[0]: r for r in table_rows(out)}
    assert set(rows) == {"pythia-lora", "pythia-full"}
    assert number(rows["pythia-lora"][1]) < number(rows["pythia-full"][1])    # trained parameters
    assert number(rows["pythia-lora"][2]) > 0 and number(rows["pythia-lora"][3]) > 0


def test_bench_corpus_prepares_and_trains_on_a_tiny_corpus():
    out = run_script("bench_corpus.py", "--mb", "2", "--steps", "3", "--vocab", "300")
    rows = table_rows(out)
    assert [r[0].split(",")[0] for r in rows] == ["prepare", "prepare", "train S", "train S", "train S"], out
    for r in rows:
        assert number(r[2]) > 0 and number(r[4]) > 0 and number(r[5]) > 0, r   # wall s, RSS, PSS
    assert "against the 1 MB folder" in out


@pytest.mark.skipif(importlib.import_module("pythia.text.bpe_fast")._bpe is None, reason="needs the compiled BPE")
def test_bench_tokenize_reports_encoders_with_the_same_ids(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("".join(f"It's line {i}: the sea, the wind and 日本 🙂.\n" for i in range(2000)), encoding="utf-8")
    out = run_script("bench_tokenize.py", "--data", str(data), "--encode-mb", "0.1", "--train-mb", "0.2",
                     "--train-vocab", "300", "--repeats", "1", "--vocab", "400")
    rows = table_rows(out.split("BPE training")[0])
    names = [r[0] for r in rows]
    assert "pythia, one call (1 core)" in names and any(n.startswith("pythia prepare --gpt2") for n in names), out
    for r in rows:
        assert number(r[1]) > 0 and r[3] == "yes", r


def test_chat_quality_trains_replies_and_reports_its_shares():
    out = run_script("chat_quality.py", "--preset", "seed", "--steps", "3", "--prompts", "4",
                     "--set", "eval_iters=1", "--seed", "7", "8")
    rows = table_rows(out)
    assert len(rows) == 1 and rows[0][:3] == ["seed", "0.8", "3"], out[-2000:]
    for cell in rows[0][7:10]:                                  # ended, corpus words, distinct: shares
        assert cell.endswith("%") and 0 <= number(cell[:-1]) <= 100, cell
    assert "4 prompts x chat seeds 7, 8" in out
    # each seed's own shares: 4 replies each, so the pooled "ended" is the mean of the two seeds'
    per_seed = re.search(r"per chat seed .*: 7: (\d+)% / [\d.]+% / \d+%; 8: (\d+)% / [\d.]+% / \d+%", out)
    assert per_seed, out[-2000:]
    assert abs((int(per_seed[1]) + int(per_seed[2])) / 2 - number(rows[0][7][:-1])) <= 1, (per_seed[0], rows)


def test_bench_train_step_prints_every_column_the_ratio_and_the_peak_fraction():
    # torch.compile is left out (it builds C++ for minutes); without torch the PyTorch cells say skipped
    out = run_script("bench_train_step.py", "S", "--runs", "2", "--steps", "2", "--warmup", "1",
                     "--variants", "eager", "sdpa", "--peak-n", "256", "--peak-reps", "1")
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["S"], out[-2000:]
    pythia, eager, sdpa, ratio = rows[0][1:5]
    assert number(pythia.split(" (")[0]) > 0, rows
    if "skipped" in (eager, sdpa):
        assert eager == sdpa == "skipped" and "torch is not installed" in out, out[-2000:]
    else:
        lo, hi = ratio.split(" (")[1].rstrip(")").split("-")
        assert number(lo) <= number(ratio.split(" (")[0]) <= number(hi), ratio
    assert re.search(r"sgemm peak [\d.,]+ GFLOP/s", out), out[-2000:]
    assert re.search(r"S: [\d.]+ GFLOP/step counted .* Pythia at [\d.]+ ", out), out[-2000:]


def test_bench_train_step_refuses_zero_runs():
    p = subprocess.run([sys.executable, str(BENCH / "bench_train_step.py"), "S", "--runs", "0"],
                       capture_output=True, text=True, timeout=120, cwd=BENCH)
    assert p.returncode == 2 and p.stderr.startswith("error: --runs") and "Traceback" not in p.stderr


def decode_rows_hold_their_ranges(rows: list[list[str]]) -> None:
    for r in rows:                                                       # median within min-max
        lo, hi = r[5].split("-")
        assert number(lo) <= number(r[4]) <= number(hi), r


def test_bench_decode_int8_prints_float32_and_int8_rows_with_the_bandwidth_fraction():
    out = run_script("bench_decode_int8.py", "--shapes", "tiny", "--rounds", "1", "--tokens", "3", "--prompt", "4",
                     "--copy-mb", "4", "--rss")
    assert "copy bandwidth" in out and "load average" in out
    rows = table_rows(out)
    rss = rows[4:]                                                       # after the second header
    assert [r[0].strip() for r in rss] == ["float32 checkpoint", "int8 checkpoint", "float32 checkpoint --quantize int8"]
    rows = rows[:3]
    assert [r[1] for r in rows] == ["Pythia float32", "Pythia int8 Q8_0", "Pythia int8 Q8_0, 1 thread"]
    fp32_mb, int8_mb, int8_1_mb = (number(r[2]) for r in rows)
    assert int8_mb == int8_1_mb == pytest.approx(fp32_mb * (1 + 4 / 32) / 4, rel=0.02)   # 36 bytes per 32 weights
    assert rows[0][6] == "1.00x" and rows[2][9].endswith("%")
    assert all(r[7] == "" for r in rows)                                 # no llama.cpp asked for: no ratio
    decode_rows_hold_their_ranges(rows)



def test_bench_serve_soak_counts_the_intended_503s_and_finds_every_slot_free():
    """A short soak against a server with one slot and one queue place: the 16 clients must meet
    503s (each with Retry-After), every other answer must be whole, and no slot may stay taken."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    out = run_script("bench_serve.py", "--soak", "4", "--clients", "16", "--max-batch", "1", "--max-queue", "1")
    counts = {}
    for line in out.splitlines():
        m = re.match(r"soak: (stream|cut|whole)\s+(.*)$", line)
        if m:
            counts[m.group(1)] = dict((s.rsplit(": ", 1)[0], int(s.rsplit(": ", 1)[1])) for s in m.group(2).split(", "))
    assert set(counts) == {"stream", "cut", "whole"}, out
    assert sum(c.get("503", 0) for c in counts.values()) > 0 and sum(c.get("200", 0) for c in counts.values()) > 0
    assert all(set(c) <= {"200", "503", "200 closed mid-reply"} for c in counts.values()), counts
    assert "0 decoding, 0 waiting" in out and "soak: PASS: 0 error(s)" in out, out


def test_bench_decode_int8_adds_a_transformers_row_from_the_same_weights():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = run_script("bench_decode_int8.py", "--shapes", "tiny", "--rounds", "1", "--tokens", "3", "--prompt", "4",
                     "--copy-mb", "4", "--transformers-python", sys.executable)
    rows = table_rows(out)
    assert [r[1] for r in rows][-1] == "transformers float32"
    assert number(rows[-1][2]) == pytest.approx(number(rows[0][2]), rel=0.01)   # the same float32 matrices
    decode_rows_hold_their_ranges(rows)


@pytest.mark.parametrize("args, message", [
    (["--llamacpp-python", sys.executable], "--llamacpp-python needs --llamacpp-src DIR"),
    (["--transformers-python", "no-such-python"], "--transformers-python no-such-python: not an executable"),
    (["--gguf-dir", "no-such-dir"], "--gguf-dir no-such-dir: no such folder"),
])
def test_bench_decode_int8_refuses_a_peer_it_cannot_run(args, message):
    p = subprocess.run([sys.executable, str(BENCH / "bench_decode_int8.py"), "--shapes", "tiny", *args],
                       capture_output=True, text=True, timeout=120, cwd=BENCH)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_gguf_convert_refuses_a_tree_without_llama_cpps_converter(tmp_path):
    p = subprocess.run([sys.executable, str(BENCH / "gguf_convert.py"), str(tmp_path), "gpt-2", "--", "x"],
                       capture_output=True, text=True, timeout=120, cwd=BENCH)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "convert_hf_to_gguf.py" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
