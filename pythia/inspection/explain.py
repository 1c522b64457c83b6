"""Looking inside a model: how sure it was of each token of a text, and where it attended.

Everything comes from one pass of the model's own forward (`model.forward(idx, attention=True)`),
so the numbers are the ones the model computes, not a recomputation:

    p[t]        = softmax(logits[t - 1])[token t]       the probability the model gave token t
    rank[t]     = 1 + #{v : p_v > p[token t]}            1 = it was the model's first choice
    entropy[t]  = -sum_v p_v log2 p_v                    bits; 0 = certain, log2 V = uniform
    attn[l][h]  = softmax(q k^T / sqrt(hs) + causal mask)  rows = queries, columns = keys

The first token has no prediction (nothing comes before it). Text views are plain text so they
work in a pipe; heat maps use Unicode shades, or ASCII when the output cannot encode them.

Sizes: T tokens, V vocabulary, L layers, H heads.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ..errors import ConfigError

SHADES = " ░▒▓█"                   # darker = more attention
ASCII_SHADES = " .:+#"
THRESHOLDS = (0.05, 0.25, 0.5, 0.75)  # a value v gets shade #{t in THRESHOLDS : v >= t}
MAX_MAP = 64                        # a heat map shows at most the last this many positions
LABEL_W = 8                         # longest token label beside a map row


@dataclass
class TokenStats:
    ids: np.ndarray        # (T,) token ids
    prob: np.ndarray       # (T,) probability the model gave each token; NaN at position 0
    rank: np.ndarray       # (T,) 1-based rank of each token in its prediction; 0 at position 0
    entropy: np.ndarray    # (T,) bits; NaN at position 0
    attn: list             # L arrays (H, T, T): the attention probabilities of each layer


def softmax64(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)                                  # (T, V)
    e = np.exp(z - z.max(axis=-1, keepdims=True))                  # (T, V)
    return e / e.sum(axis=-1, keepdims=True)


def token_stats(model: Any, ids: list[int] | np.ndarray) -> TokenStats:
    """Per-token probability, rank and entropy, and every layer's attention, for ids (T,)."""
    ids = np.asarray(ids, dtype=np.int64)                          # (T,)
    logits, attn = model.forward(ids[None], attention=True)        # (1, T, V), L x (1, H, T, T)
    P = softmax64(logits[0])                                       # (T, V): prediction of the token after t
    T = ids.size
    prob = np.full(T, np.nan)
    rank = np.zeros(T, dtype=np.int64)
    entropy = np.full(T, np.nan)
    if T > 1:
        pred, nxt = P[:-1], ids[1:]                                # (T-1, V), (T-1,)
        prob[1:] = pred[np.arange(T - 1), nxt]
        rank[1:] = 1 + (pred > prob[1:, None]).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy[1:] = -np.sum(np.where(pred > 0, pred * np.log2(pred), 0.0), axis=1)
    return TokenStats(ids=ids, prob=prob, rank=rank, entropy=entropy, attn=[a[0] for a in attn])


# ---- text views ----------------------------------------------------------------------------------

def shade(v: float, shades: str = SHADES) -> str:
    """The character for an attention value v in [0, 1]: monotone, blank below THRESHOLDS[0]."""
    return shades[sum(v >= t for t in THRESHOLDS)]


def show_token(text: str, unicode: bool = True) -> str:
    """A token's text made visible: spaces, newlines and tabs as signs, other controls as '?'."""
    signs = {" ": "␣", "\n": "↵", "\t": "⇥"} if unicode else {" ": "_", "\n": "/", "\t": ">"}
    from ..text.tokenview import is_control
    out = "".join(signs.get(c, "?" if is_control(c) else c) for c in text)
    return out or "?"


def _fit(label: str, width: int) -> str:
    return label if len(label) <= width else label[:width - 1] + "~"


def stats_table(stats: TokenStats, labels: list[str]) -> list[str]:
    """One row per position: the token, its probability, rank and the entropy of its prediction."""
    w = max([5] + [len(_fit(s, 16)) for s in labels])
    rows = [f"{'pos':>4}  {'token':<{w}}  {'prob':>7}  {'rank':>5}  {'entropy':>7}"]
    for t, label in enumerate(labels):
        if t == 0:
            rows.append(f"{t:>4}  {_fit(label, 16):<{w}}  {'-':>7}  {'-':>5}  {'-':>7}")
            continue
        prob = f"{100 * stats.prob[t]:.1f}%" if stats.prob[t] >= 0.001 else "<0.1%"
        rows.append(f"{t:>4}  {_fit(label, 16):<{w}}  {prob:>7}  {stats.rank[t]:>5}  "
                    f"{stats.entropy[t]:>7.2f}")
    if len(labels) > 1:
        surprise = -np.log2(stats.prob[1:]).mean()
        rows.append(f"mean surprise {surprise:.2f} bits per token (perplexity {2 ** surprise:.1f}); "
                    f"rank 1 at {100 * np.mean(stats.rank[1:] == 1):.0f}% of positions")
    return rows


def heat_map(a: np.ndarray, labels: list[str], *, unicode: bool = True, cell: int = 2) -> list[str]:
    """Rows of text drawing a (T, T) attention matrix: rows = queries, columns = keys, each
    labelled with its token (column labels run downwards, one character per line)."""
    shades = SHADES if unicode else ASCII_SHADES
    T = a.shape[0]
    names = [_fit(s, LABEL_W) for s in labels]
    lw = max(len(s) for s in names)
    pad = " " * (5 + lw + 1)
    rows = []
    depth = max(len(s) for s in names)                           # column labels, top to bottom
    for d in range(depth):
        rows.append(pad + "".join((s[d] if d < len(s) else " ").ljust(cell) for s in names).rstrip())
    for i in range(T):
        cells = "".join(shade(float(a[i, j]), shades) * cell if j <= i else " " * cell for j in range(T))
        rows.append(f"{i:>4} {names[i]:>{lw}} {cells}".rstrip())
    return rows


def _parse_layer(layer: str | int, n_layer: int) -> int | None:
    """--layer as an index, or None for 'all'; ConfigError when out of range."""
    if isinstance(layer, str) and layer.strip().lower() == "all":
        return None
    try:
        i = int(layer)
    except (TypeError, ValueError):
        raise ConfigError(f"--layer must be a layer number or 'all', got {layer!r}") from None
    if not 0 <= i < n_layer:
        raise ConfigError(f"--layer {i} is out of range: this model has {n_layer} layer(s), numbered 0 to "
                          f"{n_layer - 1}; or use --layer all")
    return i


def explain_text(model: Any, tokenizer: Any, text: str, *, layer: str | int = 0, head: int = 0,
                 unicode: bool = True) -> tuple[list[str], list[str]]:
    """(lines of the explanation, notices for stderr). ConfigError for text or options it cannot explain."""
    cfg = model.config
    li = _parse_layer(layer, cfg.n_layer)
    if li is not None and not 0 <= head < cfg.n_head:
        raise ConfigError(f"--head {head} is out of range: this model has {cfg.n_head} head(s) per layer, "
                          f"numbered 0 to {cfg.n_head - 1}")
    if not text:
        raise ConfigError("--text is empty; give some text to explain, e.g. --text 'Hello'")
    notices = []
    filt = getattr(tokenizer, "filter", None)           # characters the vocabulary lacks are dropped,
    if filt is not None:                                # as tokenize, generate and chat drop them
        text, dropped = filt(text)
        if dropped:
            notices.append(f"note: dropped {len(dropped)} character(s) the vocabulary lacks: {''.join(dropped)!r}")
        if not text:
            raise ConfigError("--text is empty (after dropping characters the vocabulary lacks); give some text "
                              "the model's vocabulary has")
    ids = tokenizer.encode(text)
    if len(ids) > cfg.block_size:
        notices.append(f"note: the text is {len(ids)} tokens and the model's context holds {cfg.block_size}, "
                       f"so the last {cfg.block_size} tokens are explained")
        ids = ids[-cfg.block_size:]
    stats = token_stats(model, ids)
    labels = [show_token(tokenizer.decode([i]), unicode) for i in ids]
    T, V = len(ids), cfg.vocab_size
    dot = " · " if unicode else " | "
    lines = [f"{T} token(s){dot}{tokenizer.kind} tokenizer{dot}vocabulary {V:,}{dot}context {cfg.block_size}",
             "prob: the probability the model gave the token after seeing the ones before it; rank 1 = "
             "its first choice;",
             f"entropy: how spread its prediction was, in bits (0 = certain, {np.log2(V):.1f} = uniform)", ""]
    lines += stats_table(stats, labels)
    first = max(0, T - MAX_MAP)
    shades = SHADES if unicode else ASCII_SHADES
    scale = "  ".join(f"{shades[k]}{shades[k]} >= {t:g}" for k, t in enumerate(THRESHOLDS, 1))
    crop = f"; the last {T - first} positions" if first else ""
    if li is not None:
        lines += ["", f"attention{dot}layer {li}{dot}head {head}  (rows: queries, columns: keys{crop})",
                  f"shades: {scale}"]
        lines += heat_map(stats.attn[li][head][first:, first:], labels[first:], unicode=unicode)
    else:
        lines += ["", f"attention of every layer, averaged over its {cfg.n_head} heads  (rows: queries, "
                      f"columns: keys{crop})", f"shades: {scale}"]
        for i, a in enumerate(stats.attn):
            lines += ["", f"layer {i}"]
            lines += heat_map(a.mean(axis=0)[first:, first:], labels[first:], unicode=unicode, cell=1)
    return lines, notices


def run_explain(model: Any, tokenizer: Any, text: str, *, layer: str | int = 0, head: int = 0,
                out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Print the explanation of text to out (notices to err)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        (SHADES + "␣↵·").encode(getattr(out, "encoding", None) or "ascii")
        unicode = True
    except (UnicodeEncodeError, LookupError):
        unicode = False
    lines, notices = explain_text(model, tokenizer, text, layer=layer, head=head, unicode=unicode)
    for n in notices:
        err.write(n + "\n")
        err.flush()
    out.write("\n".join(lines) + "\n")
    out.flush()


# ---- chat's /probs -------------------------------------------------------------------------------

TOP = 5                             # candidates shown at an uncertain position
UNSURE = 3                          # how many of the least certain positions are shown
# 256-colour backgrounds from red (unsure) to green (sure), for p in [0, .2), [.2, .4), ... [.8, 1]
PROB_BG = (196, 208, 220, 148, 40)


def token_probs(logits: np.ndarray, token: int) -> tuple[int, float, list[tuple[int, float]]]:
    """(token, the probability the model gave it, its TOP likeliest tokens with probabilities):
    the model's own softmax of logits (V,), before temperature, top-k or top-p."""
    p = softmax64(logits[None])[0]                                 # (V,)
    top = np.argsort(-p, kind="stable")[:TOP]
    return int(token), float(p[token]), [(int(i), float(p[i])) for i in top]


def _reply_tokens(tokenizer: Any, seen: list, raw: str, ended: bool) -> list:
    """The generated tokens that make up the reply text raw, plus the one that ended the turn."""
    kept, text = [], ""
    for item in seen:
        if len(text) >= len(raw):
            if ended:
                kept.append(item)                                  # the end of the turn, e.g. a newline
            break
        text += tokenizer.decode([item[0]])
        kept.append(item)
    return kept


def reply_probs_view(tokenizer: Any, seen: list, raw: str, *, ended: bool, color: bool,
                     unicode: bool = True, width: int = 80) -> list[str]:
    """Rows shown after a reply: on a colour terminal the reply's tokens on backgrounds shaded by
    their probability; otherwise a compact table of token and probability. Then the TOP candidates
    at the UNSURE least certain positions."""
    items = _reply_tokens(tokenizer, seen, raw, ended)
    if not items:
        return []
    label = lambda i: show_token(tokenizer.decode([i]), unicode)  # noqa: E731
    rows = []
    if color:
        cells = []
        for tok, p, _ in items:
            bg = PROB_BG[min(len(PROB_BG) - 1, int(p * len(PROB_BG)))]
            cells.append(f"\033[30;48;5;{bg}m{label(tok)}\033[0m")
        rows.append("  " + "".join(cells))
        key = "".join(f"\033[30;48;5;{bg}m {lo}-{lo + 20}% \033[0m" for lo, bg in zip(range(0, 100, 20), PROB_BG))
        rows.append("  probability: " + key)
    else:
        line = " "
        for tok, p, _ in items:
            cell = f" {label(tok)} {100 * p:.0f}%"
            if len(line) + len(cell) + 2 > width and line.strip():
                rows.append(line)
                line = " "
            line += cell + " "
        rows.append(line.rstrip())
    unsure = sorted(range(len(items)), key=lambda k: items[k][1])[:UNSURE]
    rows.append(f"  least sure (top {TOP} candidates):")
    for k in sorted(unsure):
        tok, p, top = items[k]
        cands = ", ".join(f"{label(i)} {100 * q:.0f}%" for i, q in top)
        rows.append(f"    {label(tok)} {100 * p:.0f}% at token {k + 1}: {cands}")
    return rows
