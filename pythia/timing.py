"""How long a generation took, reported as llama.cpp's perf lines (llama_perf_context_print):
the load, the prompt pass and the decode passes, each with tokens per second.

    timer = DecodeTimer(load_seconds=1.2)
    for tok in timer.wrap(model.generate(ids, 50), prompt_tokens=len(ids)): ...
    print("\\n".join(timer.lines()))

The first token comes out of the prompt pass (the prefill), so its time is the prompt's; every
later token is one decode pass (llama.cpp's "runs"). Only the time spent inside the generator is
counted, not the caller's printing between tokens.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator


class DecodeTimer:
    """Accumulates prompt and decode times over one or more wrapped generations."""

    def __init__(self, load_seconds: float | None = None):
        self.load_seconds = load_seconds
        self.prompt_tokens = 0      # tokens fed by prompt passes
        self.prompt_seconds = 0.0   # time of those passes, up to each first token
        self.decode_tokens = 0      # tokens from decode passes (every token but each first)
        self.decode_seconds = 0.0

    def wrap(self, tokens: Iterable[int], prompt_tokens: int) -> Iterator[int]:
        """The same tokens, timed: the first as the prompt pass of prompt_tokens tokens."""
        it = iter(tokens)
        first = True
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    tok = next(it)
                except StopIteration:
                    return
                dt = time.perf_counter() - t0
                if first:
                    self.prompt_tokens += prompt_tokens
                    self.prompt_seconds += dt
                    first = False
                else:
                    self.decode_tokens += 1
                    self.decode_seconds += dt
                yield tok
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def lines(self) -> list[str]:
        """llama.cpp's perf lines: load, prompt eval, eval (decode) and total."""
        def rate(label: str, seconds: float, n: int, unit: str) -> str:
            ms = seconds * 1e3
            per = f"{ms / n:8.2f} ms per token, {n / seconds:8.2f} tokens per second" if n and seconds > 0 else \
                "no tokens"
            return f"{label:<12} = {ms:10.2f} ms / {n:5d} {unit:<6} ({per})"
        out = []
        if self.load_seconds is not None:
            out.append(f"{'load time':<12} = {self.load_seconds * 1e3:10.2f} ms")
        out.append(rate("prompt eval", self.prompt_seconds, self.prompt_tokens, "tokens"))
        out.append(rate("eval time", self.decode_seconds, self.decode_tokens, "runs"))
        total = self.prompt_seconds + self.decode_seconds
        out.append(f"{'total time':<12} = {total * 1e3:10.2f} ms / {self.prompt_tokens + self.decode_tokens:5d} tokens")
        return out

    def as_dict(self) -> dict:
        """The same figures for a machine: seconds, token counts and tokens per second."""
        def tps(n, s):
            return n / s if n and s > 0 else None
        return {"load_s": self.load_seconds, "prompt_tokens": self.prompt_tokens, "prompt_s": self.prompt_seconds,
                "prompt_tokens_per_s": tps(self.prompt_tokens, self.prompt_seconds),
                "decode_tokens": self.decode_tokens, "decode_s": self.decode_seconds,
                "decode_tokens_per_s": tps(self.decode_tokens, self.decode_seconds)}
