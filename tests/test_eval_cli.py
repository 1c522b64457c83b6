"""`python -m pythia eval` end to end: its numbers against the sliding-window recipe written out
here with loops over the model's own float64 log-softmax (pythia.evaluate itself is held to
transformers' guide loop in test_evaluate.py), --compare-to against a direct KL computation, an
int8 model of a small model Pythia trained against its float32 self, and every bad input as one
line.

Tolerances: 1e-9 relative for the same sums in another order; the quality bounds are the ones
the int8 work promises (perplexity within 1.5%, top-1 agreement >= 95%).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import helpers
from helpers import assert_one_line_error
from pythia.formats.source import open_model

FIXTURES = Path(__file__).parent / "fixtures"
GPT2 = FIXTURES / "gpt2"
TEXT = ("The sea is calm tonight. The tide is full, the moon lies fair upon the straits; on the French "
        "coast the light gleams and is gone. ") * 6


def log_softmax64(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def recipe(model, ids, context, stride):
    """{position t: log-probabilities (V,) predicting ids[t]} over the guide's windows: each
    window scores its last trg_len = end - prev_end tokens, never its first position."""
    out, prev_end = {}, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        lp = log_softmax64(model.forward(np.array([ids[begin:end]]))[0])   # (T, V)
        for t in range(max(end - (end - prev_end), begin + 1), end):
            out[t] = lp[t - begin - 1]
        prev_end = end
        if end == len(ids):
            break
    return out


def cli_json(args, tmp_path):
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    r = helpers.run_cli(["eval", "--data", "text.txt", "--json", *args], tmp_path)
    helpers.assert_ok(r)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("context,stride", [(None, None), (48, 16), (20, 20)])
def test_eval_equals_the_recipe_computed_directly(tmp_path, context, stride):
    m = open_model(GPT2)
    ids = m.prompt_ids(TEXT)
    extra = [] if context is None else ["--context", str(context), "--stride", str(stride)]
    got = cli_json(["--model", str(GPT2), *extra], tmp_path)
    c = context or m.model.config.block_size
    lp = recipe(m.model, ids, c, stride or c // 2)
    nll = -np.mean([lp[t][ids[t]] for t in sorted(lp)])
    assert got["tokens"] == len(lp) == len(ids) - 1 - (len(ids) - 2) // c * (stride == c)
    assert got["context"] == c and got["stride"] == (stride or c // 2)
    assert got["nll"] == pytest.approx(nll, rel=1e-9)
    assert got["ppl"] == pytest.approx(math.exp(nll), rel=1e-9)


def test_compare_to_gives_the_kl_and_top1_of_a_direct_computation(tmp_path):
    f = open_model(GPT2)
    q = open_model(GPT2, quantize="int8")
    ids = f.prompt_ids(TEXT)
    got = cli_json(["--model", str(GPT2), "--quantize", "int8", "--compare-to", str(GPT2),
                    "--context", "40", "--stride", "15"], tmp_path)
    a, b = recipe(f.model, ids, 40, 15), recipe(q.model, ids, 40, 15)
    kl = np.mean([(np.exp(a[t]) * (a[t] - b[t])).sum() for t in a])
    top1 = np.mean([a[t].argmax() == b[t].argmax() for t in a])
    nll = -np.mean([b[t][ids[t]] for t in b])
    assert got["kl"] == pytest.approx(kl, rel=1e-9) and got["kl"] > 0
    assert got["top1"] == pytest.approx(top1, rel=1e-12)
    assert got["nll"] == pytest.approx(nll, rel=1e-9)                # the int8 model's own perplexity


def test_int8_of_a_trained_model_keeps_its_perplexity_and_top1(tmp_path):
    """A small model trained on the bundled corpus (sizes multiples of 32), int8 against float32."""
    r = helpers.run_cli(["train", "--steps", "150", "--d-model", "64", "--n-layer", "2", "--n-head", "4",
                         "--block-size", "64", "--batch-size", "8", "--lr", "3e-3", "--eval-interval", "1000",
                         "--seed", "1", "--out", "m.npz"], tmp_path)
    helpers.assert_ok(r)
    text = (Path(__file__).resolve().parents[1] / "data" / "input.txt").read_text(encoding="utf-8")[:6000]
    (tmp_path / "val.txt").write_text(text, encoding="utf-8")
    f = json.loads(helpers.run_cli(["eval", "--model", "m.npz", "--data", "val.txt", "--json"], tmp_path).stdout)
    q = json.loads(helpers.run_cli(["eval", "--model", "m.npz", "--data", "val.txt", "--json", "--quantize", "int8",
                                    "--compare-to", "m.npz"], tmp_path).stdout)
    assert f["ppl"] < 20                                                # it learned something (65 characters)
    assert abs(q["ppl"] / f["ppl"] - 1) <= 0.015
    assert q["top1"] >= 0.95


@pytest.mark.parametrize("args,text,needle", [
    (["--quantize", "int4"], TEXT, "--quantize"),
    ([], "", "is empty"),
    ([], "   \n", "is empty"),
    ([], "a", "at least 2"),
    (["--context", "65"], TEXT, "exceeds the model's 64 positions"),
    (["--context", "1"], TEXT, "at least 2"),
    (["--stride", "0"], TEXT, "--stride"),
    (["--context", "16", "--stride", "17"], TEXT, "above --context 16"),
    (["--compare-to", str(FIXTURES / "hf_models" / "smollm2")], TEXT, "does not share the model's tokenizer"),
    (["--compare-to", "missing-model"], TEXT, "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, args, text, needle):
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    r = helpers.run_cli(["eval", "--model", str(GPT2), "--data", "t.txt", *args], tmp_path)
    assert_one_line_error(r, needle)


def test_missing_data_file_and_a_directory_are_one_line(tmp_path):
    assert_one_line_error(helpers.run_cli(["eval", "--model", str(GPT2), "--data", "nope.txt"], tmp_path), "nope.txt")
    assert_one_line_error(helpers.run_cli(["eval", "--model", str(GPT2), "--data", "."], tmp_path), "directory")
