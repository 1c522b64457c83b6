"""Serving speed: tokens/s through `pythia serve`'s HTTP API, one client and several at once.

    python benchmarks/bench_serve.py                 # add --quick for a smoke run, --case M

Each case builds a random-weight model (speed does not depend on the weights), serves it with
uvicorn on a free local port in this process (the decoder on its own thread, as `pythia serve`
runs it) and measures, all greedy, streaming /v1/completions from a prompt of token ids:

    single       one client: new tokens / wall time, against model.generate in-process on the
                 same prompt (the goal: >= 0.9x; the difference is HTTP, JSON and the event loop)
    N clients    N = 1, 2, 4, 8 clients at once, each asking for the same number of tokens:
                 aggregate tokens/s = all new tokens / wall time, and the time to first token
                 (p50, p95) seen by the clients (the goal: 8 clients >= 4x one client's aggregate)

Cases: gpt2-small (12 layers, d_model 768, 12 heads, vocabulary 50257, context 1024; prompt 16
tokens, 32 new per client) and M (config M: block 64, d_model 128, 4 layers; prompt 8, 48 new).
Needs the serve extra and httpx.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from pythia import Pythia, PythiaConfig  # noqa: E402
from pythia.formats.source import LoadedModel  # noqa: E402

CASES = {"gpt2-small": (dict(vocab_size=50257, block_size=1024, d_model=768, n_layer=12, n_head=12), 16, 32),
         "M": (dict(vocab_size=65, block_size=64, d_model=128, n_layer=4, n_head=4), 8, 48)}
CLIENTS = (1, 2, 4, 8)


class IdTokenizer:
    """Token i is the character U+10000 + i (a valid code point for every id of GPT-2's vocabulary)."""
    kind = "bench"

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 0x10000 for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(0x10000 + int(i)) for i in ids)


def serve(loaded: LoadedModel, max_batch: int):
    """(base url, stop()) of a uvicorn server in a thread."""
    import uvicorn

    from pythia.serve.app import Settings, create_app
    from pythia.serve.batch import BatchDecoder
    app = create_app(loaded, Settings("bench", quiet=True), BatchDecoder(loaded.model, max_batch=max_batch))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def stream(url: str, prompt: list[int], n: int) -> tuple[int, float, float]:
    """(new tokens, seconds to the first, seconds in all) of one streaming greedy completion."""
    import httpx
    t0 = time.perf_counter()
    first, tokens = None, 0
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(timeout=600) as c, c.stream("POST", url + "/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and first is None:
                first = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first or 0.0, time.perf_counter() - t0


def run_case(name: str, quick: bool) -> None:
    cfg, n_prompt, n_new = CASES[name]
    if quick:
        n_new = 8
    model = Pythia(PythiaConfig(**cfg), seed=0)
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, cfg["vocab_size"], n_prompt)]
    list(model.generate(prompt, 2, temperature=0))                      # warm up
    t0 = time.perf_counter()
    list(model.generate(prompt, n_new, temperature=0))
    local = n_new / (time.perf_counter() - t0)
    url, stop = serve(LoadedModel(model, IdTokenizer(), name), max_batch=max(CLIENTS))
    try:
        stream(url, prompt, 2)                                           # warm up
        tokens, _, wall = stream(url, prompt, n_new)
        print(f"{name}: single stream {tokens / wall:.1f} tokens/s through the API, "
              f"{local:.1f} in-process ({tokens / wall / local:.2f}x)")
        base = None
        for n in CLIENTS:
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                t0 = time.perf_counter()
                runs = list(pool.map(lambda _: stream(url, prompt, n_new), range(n)))
                wall = time.perf_counter() - t0
            agg = sum(r[0] for r in runs) / wall
            base = base or agg
            ttft = np.array([r[1] for r in runs]) * 1000
            print(f"{name}: {n} clients {agg:7.1f} tokens/s aggregate ({agg / base:.2f}x one client), "
                  f"time to first token p50 {np.percentile(ttft, 50):.0f} ms, p95 {np.percentile(ttft, 95):.0f} ms")
    finally:
        stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), action="append")
    p.add_argument("--quick", action="store_true", help="8 new tokens per client: a smoke run")
    args = p.parse_args()
    for name in args.case or ["M", "gpt2-small"]:
        run_case(name, args.quick)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
