"""Sliding-window perplexity and model agreement (pythia.evaluate) against a pure-Python twin
on a toy model, and against transformers running the Hugging Face guide's loop on the tiny
GPT-2 fixture (the committed expected.json when transformers is absent).

Tolerances: the twin sums in Python floats the same terms, so 1e-12 relative; against
transformers (float32 PyTorch vs float32 NumPy logits) 1e-4 relative on nll and ppl, like with like:
the exact token mean against the exact token mean, each guide weighting against itself.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pythia import evaluate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "eval" / "expected.json").read_text())
V = 11


def toy_logits_fn(seed: int):
    """A causal toy model: logits at position t depend on tokens 0..t of the window only."""
    table = np.random.default_rng(seed).standard_normal((V, V, V)).astype(np.float32) * 2

    def fn(idx):
        idx = np.asarray(idx)[0]
        prev = np.concatenate([[0], idx[:-1]])
        return table[prev, idx][None]                                # (1, T, V) from tokens t-1, t
    return fn


def twin_scored(fn, ids, context, stride):
    """The recipe written out with Python loops: (logits row that predicts it, token) for every
    scored token, once each: the last trg_len of each window, never a window's position 0."""
    out, prev_end, begin = [], 0, 0
    while begin < len(ids):
        end = min(begin + context, len(ids))
        window = list(ids[begin:end])
        logits = fn(np.array([window]))[0].astype(np.float64)
        for j in range(len(window)):
            if j >= len(window) - (end - prev_end) and j >= 1:
                out.append((logits[j - 1], window[j]))
        prev_end = end
        if end == len(ids):
            break
        begin += stride
    return out


def log_softmax(row):
    m = max(row)
    lse = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - lse for v in row]


def twin_perplexity(fn, ids, context, stride):
    nlls = [-log_softmax(row)[t] for row, t in twin_scored(fn, ids, context, stride)]
    return len(nlls), sum(nlls) / len(nlls)


@pytest.mark.parametrize("n,context,stride", [(50, 8, 3), (50, 8, 8), (9, 16, 4), (2, 2, 1), (31, 5, 1)])
def test_perplexity_equals_the_python_twin(n, context, stride):
    fn, ids = toy_logits_fn(1), np.random.default_rng(n).integers(0, V, n)
    got = evaluate.perplexity(fn, ids, context, stride)
    tokens, nll = twin_perplexity(fn, ids, context, stride)
    assert got["tokens"] == tokens
    assert got["nll"] == pytest.approx(nll, rel=1e-12)
    assert got["ppl"] == pytest.approx(math.exp(nll), rel=1e-12)


def test_with_overlapping_windows_every_token_but_the_first_is_scored_once():
    seen = []
    fn = toy_logits_fn(2)
    ids = np.arange(40) % V
    got = evaluate.perplexity(fn, ids, 10, 4, progress=lambda done, total: seen.append((done, total)))
    assert got["tokens"] == 39 and seen[-1] == (39, 39)
    spans = list(evaluate.windows(40, 10, 4))
    assert sum(t for _, _, t in spans) == 40 and spans[-1][1] == 40


def test_compare_kl_is_zero_for_the_same_model_and_matches_a_twin():
    a, b, ids = toy_logits_fn(3), toy_logits_fn(4), np.random.default_rng(5).integers(0, V, 30)
    same = evaluate.compare(a, a, ids, 8, 3)
    assert same["kl"] == pytest.approx(0, abs=1e-12) and same["top1"] == 1.0 and same["tokens"] == 29
    got = evaluate.compare(a, b, ids, 8, 3)
    kls, agree = [], 0                                   # twin: KL(P_a || P_b) per scored position
    for (ra, _), (rb, _) in zip(twin_scored(a, ids, 8, 3), twin_scored(b, ids, 8, 3)):
        la, lb = log_softmax(ra), log_softmax(rb)
        kls.append(sum(math.exp(x) * (x - y) for x, y in zip(la, lb)))
        agree += int(np.argmax(la) == np.argmax(lb))
    assert got["kl"] == pytest.approx(np.mean(kls), rel=1e-9) and got["kl"] > 0
    assert got["top1"] == agree / len(kls)


def gpt2_logits_fn():
    from pythia.formats.gpt2 import load_gpt2
    model, _ = load_gpt2(FIXTURES / "gpt2")
    return model.forward, model.config.block_size


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=lambda c: f"ctx{c['context']}-stride{c['stride']}")
def test_gpt2_perplexity_matches_transformers_guide_loop(case):
    fn, block = gpt2_logits_fn()
    ids = np.array(EXPECTED["ids"])
    for weighting in ("tokens", "trg_len", "loss_tokens"):
        got = evaluate.perplexity(fn, ids, case["context"], case["stride"], max_context=block,
                                  weighting=weighting)
        assert got["tokens"] == case["scored"]
        assert got["nll"] == pytest.approx(case[weighting]["nll"], rel=1e-4), weighting
        assert got["ppl"] == pytest.approx(case[weighting]["ppl"], rel=1e-4), weighting


def test_gpt2_perplexity_matches_transformers_live():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(FIXTURES / "gpt2").eval()
    fn, _ = gpt2_logits_fn()
    ids = np.array(EXPECTED["ids"][:90])
    with torch.no_grad():                                # the guide's loop, exact-token weighting
        total, count, prev_end = 0.0, 0, 0
        for begin in range(0, len(ids), 20):
            end = min(begin + 48, len(ids))
            inp = torch.tensor(ids[None, begin:end])
            labels = inp.clone()
            labels[:, :-(end - prev_end)] = -100
            n = int((labels[:, 1:] != -100).sum())
            total += hf(inp, labels=labels).loss.item() * n
            count, prev_end = count + n, end
            if end == len(ids):
                break
    got = evaluate.perplexity(fn, ids, 48, 20)
    assert got["tokens"] == count and got["nll"] == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("ids,context,stride,message", [
    ([], 8, 4, r"the text has 0 token\(s\); perplexity needs at least 2"),
    ([5], 8, 4, r"the text has 1 token\(s\)"),
    ([1, 2, 3], 8, 0, "stride must be between 1 and the context"),
    ([1, 2, 3], 8, 9, r"stride must be between 1 and the context \(8\), got 9"),
    ([1, 2, 3], 65, 8, "context 65 exceeds the model's 64 positions"),
    ([1, 2, 3], 1, 1, "context must be at least 2"),
    ([[1, 2, 3]], 8, 4, "ids must be a 1-d sequence"),
    ([1.5, 2.0], 8, 4, "ids must be a 1-d sequence of integer"),
])
def test_bad_arguments_raise_one_line(ids, context, stride, message):
    fn = toy_logits_fn(0)
    for call in (lambda: evaluate.perplexity(fn, np.array(ids), context, stride, max_context=64),
                 lambda: evaluate.compare(fn, fn, np.array(ids), context, stride, max_context=64)):
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
