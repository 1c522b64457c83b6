"""Greedy decode timed in a peer engine (llama.cpp or transformers), a child of bench_decode_int8.py.

    PEER_PYTHON benchmarks/decode_peer.py llama.cpp MODEL.gguf --threads 2 --tokens 32
    PEER_PYTHON benchmarks/decode_peer.py transformers HF_FOLDER --threads 2 --tokens 32

It runs under the peer's own interpreter (a virtualenv with llama-cpp-python, or one with torch
and transformers), so it imports neither Pythia nor anything the peer lacks. It loads the model
once and prints one JSON line {"bytes": B}: the bytes of the weights (llama.cpp: every tensor of
the GGUF, llama_model_size; transformers: its parameters). Then for each line on stdin, a JSON
list of prompt ids, it measures one greedy generation as Pythia's side of the benchmark does:

    prefill   the prompt in one call, into an empty KV cache (seconds)
    decode    --tokens single-token steps, each feeding the argmax of the previous logits
              (tokens per second); argmax over the raw logits, so an end-of-text id never stops it

and prints {"prefill": seconds, "decode": tokens_per_second}. The parent runs every engine once
per round, interleaved, and drops the first round as a warm-up.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def llama_cpp_engine(path: str, threads: int, n_ctx: int):
    """(weight bytes, measure(prompt, tokens)) for a GGUF file through llama-cpp-python."""
    import ctypes

    import llama_cpp
    import numpy as np
    llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                          n_batch=n_ctx, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax() -> int:
        row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)          # the last evaluated token's (V,)
        return int(np.argmax(np.ctypeslib.as_array(ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), (n_vocab,))))

    def measure(prompt: list[int], tokens: int) -> tuple[float, float]:
        llm.reset()                                                      # eval drops cache cells past n_tokens
        t = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(tokens):
            llm.eval([argmax()])
        return prefill, tokens / (time.perf_counter() - t)
    return llama_cpp.llama_model_size(llm._model.model), measure


def transformers_engine(path: str, threads: int, n_ctx: int):
    """(weight bytes, measure(prompt, tokens)) for a Hugging Face folder through transformers, float32."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()   # its default attention (sdpa)

    @torch.inference_mode()
    def measure(prompt: list[int], tokens: int) -> tuple[float, float]:
        t = time.perf_counter()
        out = model(torch.tensor([prompt]), use_cache=True)              # logits (1, T, V)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(tokens):
            nxt = out.logits[:, -1:].argmax(-1)                          # (1, 1)
            out = model(nxt, cache=out.cache, use_cache=True)
        return prefill, tokens / (time.perf_counter() - t)
    return sum(p.numel() * p.element_size() for p in model.parameters()), measure


ENGINES = {"llama.cpp": llama_cpp_engine, "transformers": transformers_engine}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=sorted(ENGINES))
    ap.add_argument("model", help="a GGUF file (llama.cpp) or a Hugging Face folder (transformers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=256, help="KV cache length: at least prompt + tokens")
    args = ap.parse_args()
    nbytes, measure = ENGINES[args.engine](args.model, args.threads, args.ctx)
    print(json.dumps({"bytes": nbytes}), flush=True)
    for line in sys.stdin:
        prompt = json.loads(line)
        if len(prompt) + args.tokens > args.ctx:
            raise SystemExit(f"error: prompt {len(prompt)} + {args.tokens} tokens exceed --ctx {args.ctx}")
        prefill, decode = measure(prompt, args.tokens)
        print(json.dumps({"prefill": prefill, "decode": decode}), flush=True)


if __name__ == "__main__":
    main()
