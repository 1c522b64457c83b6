"""Looking inside: per-token probabilities and attention maps, checked against independent NumPy.

The attention probabilities come from the model's own forward (forward(idx, attention=True));
here they are recomputed from the weights by a plain float64 NumPy GPT-2 written out below, and
the text views are compared with committed snapshots (PYTHIA_UPDATE_SNAPSHOTS=1 rewrites them).
"""
import math
import os
from pathlib import Path

import numpy as np
import pytest

from pythia.errors import ConfigError
from pythia.inspection.explain import (ASCII_SHADES, SHADES, explain_text, heat_map, reply_probs_view, shade, token_probs,
                            token_stats)
from pythia.formats.gpt2 import load_gpt2
from pythia.model import Pythia, PythiaConfig
from pythia.tokenizer import SimpleTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = "\n !.:?HPUaehilnorstuy"


def tiny(block_size=24, seed=5):
    tok = SimpleTokenizer(VOCAB)
    cfg = PythiaConfig(vocab_size=tok.vocab_size, block_size=block_size, d_model=16, n_layer=2, n_head=2)
    model = Pythia(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for p in model.params.values():       # larger than GPT-2's init, so attention is not uniform
        p += rng.standard_normal(p.shape).astype(np.float32) * np.float32(0.3)
    return model, tok


# ---- an independent float64 GPT-2 forward, from the weights -------------------------------------

def ref_forward(model, ids):
    """(logits (T, V), [attention (H, T, T) per layer]) in float64, written from the GPT-2 definition."""
    P = {k: v.astype(np.float64) for k, v in model.params.items()}
    cfg = model.config
    T, H = len(ids), cfg.n_head
    hs = cfg.d_model // H

    def ln(x, w, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w + b

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    x = P["wte"][ids] + P["wpe"][:T]
    maps = []
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        qkv = ln(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"]) @ P[p + "attn.c_attn.weight"] + P[p + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=1)
        heads, probs = [], []
        for h in range(H):
            s = q[:, h * hs:(h + 1) * hs] @ k[:, h * hs:(h + 1) * hs].T / math.sqrt(hs)
            s[np.triu(np.ones((T, T), bool), 1)] = -np.inf
            a = np.exp(s - s.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            probs.append(a)
            heads.append(a @ v[:, h * hs:(h + 1) * hs])
        maps.append(np.stack(probs))
        x = x + np.concatenate(heads, 1) @ P[p + "attn.c_proj.weight"] + P[p + "attn.c_proj.bias"]
        hmid = ln(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
        x = x + gelu(hmid @ P[p + "mlp.c_fc.weight"] + P[p + "mlp.c_fc.bias"]) @ P[p + "mlp.c_proj.weight"] \
            + P[p + "mlp.c_proj.bias"]
    logits = ln(x, P["ln_f.weight"], P["ln_f.bias"]) @ P["wte"].T
    return logits, maps


# ---- numbers ------------------------------------------------------------------------------------

def test_probabilities_ranks_and_entropies_equal_a_softmax_of_forwards_logits():
    model, tok = tiny()
    ids = tok.encode("User: Hi there!\nPythia: Hello.")[:24]
    st = token_stats(model, ids)
    logits = model.forward(np.array([ids]))[0].astype(np.float64)          # (T, V)
    assert math.isnan(st.prob[0]) and st.rank[0] == 0 and math.isnan(st.entropy[0])
    for t in range(1, len(ids)):
        z = logits[t - 1]
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert st.prob[t] == pytest.approx(p[ids[t]], rel=1e-9)
        assert st.rank[t] == 1 + sorted(p, reverse=True).index(p[ids[t]])
        assert st.entropy[t] == pytest.approx(-sum(q * math.log2(q) for q in p if q > 0), rel=1e-9)


def test_forward_with_attention_gives_the_same_logits():
    model, tok = tiny()
    idx = np.array([tok.encode("Hello there")])
    logits, attn = model.forward(idx, attention=True)
    assert np.array_equal(logits, model.forward(idx))
    assert len(attn) == model.config.n_layer and attn[0].shape == (1, 2, idx.shape[1], idx.shape[1])


@pytest.mark.parametrize("T", [1, 17, 130])                 # 130 >= SPLIT_MIN_T: two query blocks
def test_attention_rows_sum_to_one_are_causal_and_equal_a_numpy_recomputation(T):
    model, tok = tiny(block_size=max(T, 24))
    ids = np.random.default_rng(T).integers(0, tok.vocab_size, T)
    _, attn = model.forward(ids[None], attention=True)
    ref_logits, ref_maps = ref_forward(model, ids)
    for a, ref in zip(attn, ref_maps):
        a = a[0]                                                           # (H, T, T)
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)              # float32 rows
        assert not np.any(np.triu(a, 1)), "a query attends to a later key"
        np.testing.assert_allclose(a, ref, atol=2e-5)                      # float32 vs float64
    np.testing.assert_allclose(model.forward(ids[None])[0], ref_logits, atol=1e-3, rtol=1e-4)


def test_shading_is_monotone_in_the_value_and_spans_blank_to_full():
    for shades in (SHADES, ASCII_SHADES):
        levels = [shades.index(shade(v, shades)) for v in np.linspace(0, 1, 2001)]
        assert levels == sorted(levels)
        assert shade(0.0, shades) == " " and shade(1.0, shades) == shades[-1]
        assert len(set(levels)) == len(shades)


def test_token_probs_is_the_softmax_and_its_top_five():
    z = np.array([0.0, 2.0, 1.0, -1.0, 3.0, 0.5, 0.1])
    tok, p, top = token_probs(z, 2)
    e = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert tok == 2 and p == pytest.approx(e[2])
    assert [i for i, _ in top] == [4, 1, 2, 5, 6]
    assert [q for _, q in top] == pytest.approx(list(e[[4, 1, 2, 5, 6]]))


# ---- text views: snapshots ----------------------------------------------------------------------

def check_snapshot(name: str, text: str) -> None:
    path = FIXTURES / name
    if os.environ.get("PYTHIA_UPDATE_SNAPSHOTS"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; view:\n{text}"


def test_explain_view_of_one_head_matches_its_snapshot():
    model, tok = tiny()
    lines, notes = explain_text(model, tok, "User: Hi!\nPythia: Hello.", layer=1, head=1)
    assert notes == []
    check_snapshot("explain_layer1_head1.txt", "\n".join(lines) + "\n")


def test_explain_view_of_all_layers_matches_its_snapshot_in_ascii():
    model, tok = tiny()
    lines, _ = explain_text(model, tok, "Hi! Hello.", layer="all", unicode=False)
    text = "\n".join(lines) + "\n"
    assert text.isascii()
    check_snapshot("explain_all_layers_ascii.txt", text)


def test_heat_map_puts_tokens_on_both_edges_and_blanks_above_the_diagonal():
    a = np.array([[1.0, 0, 0], [0.3, 0.7, 0], [0.1, 0.2, 0.7]])
    rows = heat_map(a, ["ab", "c", "d"], cell=2)
    assert rows == ["        a c d",              # column labels run downwards
                    "        b",
                    "   0 ab ██",
                    "   1  c ▒▒▓▓",
                    "   2  d ░░░░▓▓"]


def test_probs_view_on_plain_output_is_a_compact_table_with_the_least_sure_candidates():
    tok = SimpleTokenizer(VOCAB)
    ids = tok.encode(" Hi.\n")
    ps = [0.9, 0.1, 0.6, 0.7, 0.95]
    seen = [(i, p, [(i, p), (tok.encode("a")[0], 0.05)]) for i, p in zip(ids, ps)]
    rows = reply_probs_view(tok, seen, " Hi.", ended=True, color=False)
    assert rows == ["  ␣ 90%  H 10%  i 60%  . 70%  ↵ 95%",
                    "  least sure (top 5 candidates):",
                    "    H 10% at token 2: H 10%, a 5%",
                    "    i 60% at token 3: i 60%, a 5%",
                    "    . 70% at token 4: . 70%, a 5%"]
    shaded = reply_probs_view(tok, seen, " Hi.", ended=True, color=True)
    assert "\033[30;48;5;196mH\033[0m" in shaded[0]              # 10%: the least sure colour


# ---- bad input: one clear error -----------------------------------------------------------------

@pytest.mark.parametrize("kw, needle", [
    (dict(layer=2), "--layer 2 is out of range: this model has 2 layer(s), numbered 0 to 1"),
    (dict(layer="-1"), "--layer -1 is out of range"),
    (dict(layer="top"), "--layer must be a layer number or 'all'"),
    (dict(head=2), "--head 2 is out of range: this model has 2 head(s)"),
    (dict(text=""), "--text is empty"),
    (dict(text="Zë"), "--text is empty (after dropping characters the vocabulary lacks)"),
])
def test_bad_explain_requests_are_one_config_error(kw, needle):
    model, tok = tiny()
    text = kw.pop("text", "Hi")
    with pytest.raises(ConfigError) as e:
        explain_text(model, tok, text, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_characters_the_vocabulary_lacks_are_dropped_with_a_notice_as_tokenize_does():
    # the one rule for unknown characters: "Hi Zoë" is explained exactly as "Hi o" is
    model, tok = tiny()
    lines, notes = explain_text(model, tok, "Hi Zoë", layer=0)
    assert notes == ["note: dropped 2 character(s) the vocabulary lacks: 'Zë'"]
    assert (lines, []) == explain_text(model, tok, "Hi o", layer=0)


def test_text_longer_than_the_context_explains_the_last_block_and_says_so():
    model, tok = tiny(block_size=8)
    lines, notes = explain_text(model, tok, "Hello there!", layer=0)
    assert notes == ["note: the text is 12 tokens and the model's context holds 8, so the last 8 tokens "
                     "are explained"]
    assert lines[0].startswith("8 token(s)")
    assert any(line.startswith("   0  o ") for line in lines)               # "o there!": the last 8


def test_explain_works_for_gpt2_bpe():
    model, tok = load_gpt2(FIXTURES / "gpt2")
    lines, _ = explain_text(model, tok, "Hello world, hello sea", layer="all")
    ids = tok.encode("Hello world, hello sea")
    assert lines[0].startswith(f"{len(ids)} token(s)") and "gpt2-bpe" in lines[0]
    assert sum(line.startswith("layer ") for line in lines) == model.config.n_layer
    assert any(line.startswith("   9  ␣sea ") for line in lines)            # a BPE token with its space
    assert "<0.1%" in "\n".join(lines)                                     # an untrained model's tiny odds


def test_probs_seen_during_generation_are_forwards_softmax_of_each_prefix():
    model, tok = tiny(block_size=12)
    seen = []
    prompt = tok.encode("User: Hi")
    out = list(model.generate(prompt, 10, temperature=0.8, top_k=5, rng=np.random.default_rng(2),
                              observe=lambda z, t: seen.append(token_probs(z, t))))
    seq = prompt + out
    for k, (t, p, top) in enumerate(seen):                 # past block_size the context slides
        ctx = seq[:len(prompt) + k][-12:]
        z = model.forward(np.array([ctx]))[0, -1].astype(np.float64)
        ref = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert t == out[k] and p == pytest.approx(ref[t], rel=1e-4, abs=1e-7)
        assert top[0][0] == int(np.argmax(ref))
