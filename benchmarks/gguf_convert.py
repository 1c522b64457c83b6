"""llama.cpp's own convert_hf_to_gguf.py, run with a named BPE pre-tokenizer (a benchmark helper).

    PEER_PYTHON benchmarks/gguf_convert.py LLAMA_CPP_DIR PRE -- HF_FOLDER --outtype q8_0 --outfile OUT.gguf

LLAMA_CPP_DIR is a llama.cpp source tree (the llama-cpp-python sdist's vendor/llama.cpp) and
PEER_PYTHON an interpreter with what its converter imports (torch, transformers, safetensors,
numpy, and the gguf-py the tree carries). Everything after `--` goes to the converter unchanged.

The converter names a BPE model's pre-tokenizer (the regex split before merges, written as
tokenizer.ggml.pre) by hashing the ids its tokenizer gives a test string, and refuses a hash it
does not know. The benchmark's random-weight folders carry small test tokenizers whose hash no
released model has, so this wrapper replaces that lookup with PRE (gpt-2 for GPT-2's split,
smollm for SmolLM2's). Only tokenization depends on it: the weights, the graph and so the decode
speed are the converter's own.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[3] != "--":
        raise SystemExit("usage: gguf_convert.py LLAMA_CPP_DIR PRE -- CONVERTER_ARGS...")
    tree, pre, rest = Path(sys.argv[1]), sys.argv[2], sys.argv[4:]
    if not (tree / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"error: {tree} has no convert_hf_to_gguf.py; give the llama.cpp source tree "
                         f"(vendor/llama.cpp in the llama-cpp-python sdist)")
    sys.path.insert(0, str(tree))
    import convert_hf_to_gguf                          # puts the tree's gguf-py on sys.path itself
    from conversion.base import TextModel
    TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
    sys.argv = [str(tree / "convert_hf_to_gguf.py"), *rest]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
