"""The peers of bench_decode_int8.py: llama.cpp (F32 and Q8_0 GGUF) and transformers (float32).

Each peer runs in its own interpreter as a child (benchmarks/decode_peer.py) that loads the model
once and times a greedy generation each time it is asked, so bench_decode_int8.py interleaves
them with Pythia's rows round by round. All of them read the same random weights: the Pythia
model is written as a Hugging Face folder (pythia.formats.export.save_hf, with the test fixture
tokenizer of its family), transformers loads that folder, and llama.cpp's own converter turns it
into F32 and Q8_0 GGUF files (benchmarks/gguf_convert.py).

Building the peers (benchmark-only; Pythia never depends on them). llama-cpp-python's sdist
carries llama.cpp's source and builds it with CMake (scikit-build-core), with llama.cpp's
default flags: GGML_NATIVE, i.e. -march=native for the CPU it is built on, OpenMP threads,
llamafile's sgemm and the CPU repack of Q8_0 where the CPU has it:

    python3.11 -m venv llamacpp-venv
    CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DLLAVA_BUILD=OFF" llamacpp-venv/bin/pip install llama-cpp-python
    llamacpp-venv/bin/pip install torch==2.13.0 transformers safetensors pyyaml tqdm sentencepiece
    llamacpp-venv/bin/pip download --no-binary :all: --no-deps llama-cpp-python -d src
    tar xzf src/llama_cpp_python-*.tar.gz -C src    # its vendor/llama.cpp has convert_hf_to_gguf.py

(-DLLAVA_BUILD=OFF skips the multimodal library, which decode does not use; torch and
transformers are what the converter imports.) transformers' column runs in any interpreter with
torch and transformers, e.g. the same venv. Then:

    python benchmarks/bench_decode_int8.py --llamacpp-python llamacpp-venv/bin/python \\
        --llamacpp-src src/llama_cpp_python-VERSION/vendor/llama.cpp --transformers-python PYTHON

--gguf-dir DIR keeps the folders and GGUF files between runs (converting takes a minute a shape).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# per Pythia family: the fixture whose tokenizer the folder gets, and llama.cpp's pre-tokenizer name for it
TOKENIZER = {"gpt2": REPO / "tests" / "fixtures" / "gpt2", "llama": REPO / "tests" / "fixtures" / "hf_models" / "smollm2"}
PRE = {"gpt2": "gpt-2", "llama": "smollm"}


def fixture_tokenizer(model):
    """The test fixture tokenizer of the model's family (speed does not depend on it)."""
    from pythia.formats.source import open_model
    return open_model(TOKENIZER[model.FAMILY]).tokenizer


class Peer:
    """A decode_peer.py child: load once, then measure(prompt) -> (prefill seconds, decode tokens/s)."""

    def __init__(self, python: str, engine: str, model: Path, threads: int, tokens: int, ctx: int, env: dict):
        cmd = [python, str(HERE / "decode_peer.py"), engine, str(model), "--threads", str(threads),
               "--tokens", str(tokens), "--ctx", str(ctx)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.nbytes = self._reply()["bytes"]                # weight bytes a decode step reads

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"error: the {' '.join(self.proc.args[2:4])} peer stopped (its message is above)")
        return json.loads(line)

    def measure(self, prompt: list[int]) -> tuple[float, float]:
        self.proc.stdin.write(json.dumps(prompt) + "\n")
        self.proc.stdin.flush()
        r = self._reply()
        return r["prefill"], r["decode"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run(cmd: list[str], what: str) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"error: {what} failed:\n{p.stderr[-3000:]}")


def hf_folder(model, work: Path, shape: str) -> Path:
    """The model as a Hugging Face folder under work (written once, kept when work is kept)."""
    from pythia.formats.export import save_hf
    folder = work / f"{shape}-hf"
    if not (folder / "model.safetensors").is_file():
        save_hf(folder, model, fixture_tokenizer(model), force=True)
    return folder


def gguf(folder: Path, outtype: str, pre: str, python: str, src: str) -> Path:
    """folder converted by llama.cpp's convert_hf_to_gguf.py to outtype (f32, q8_0), once."""
    out = folder.with_name(f"{folder.name}-{outtype}.gguf")
    if not out.is_file():
        tmp = out.with_suffix(".part")
        run([python, str(HERE / "gguf_convert.py"), src, pre, "--", str(folder), "--outtype", outtype,
             "--outfile", str(tmp)], f"converting {folder.name} to {outtype}")
        os.replace(tmp, out)
    return out


def start_peers(model, shape: str, args, work: Path, env: dict) -> dict[str, Peer]:
    """name -> running Peer for every peer args names (--transformers-python, --llamacpp-python)."""
    peers: dict[str, Peer] = {}
    if not (args.transformers_python or args.llamacpp_python):
        return peers
    folder = hf_folder(model, work, shape)
    ctx = args.prompt + args.tokens + 8
    common = dict(threads=args.threads, tokens=args.tokens, ctx=ctx, env=env)
    try:
        if args.transformers_python:
            peers["transformers float32"] = Peer(args.transformers_python, "transformers", folder, **common)
        if args.llamacpp_python:
            for outtype, name in (("f32", "llama.cpp F32"), ("q8_0", "llama.cpp Q8_0")):
                path = gguf(folder, outtype, PRE[model.FAMILY], args.llamacpp_python, args.llamacpp_src)
                peers[name] = Peer(args.llamacpp_python, "llama.cpp", path, **common)
                if args.threads > 1:                        # as Pythia's float32: busy cores can make 1 beat 2
                    peers[f"{name}, 1 thread"] = Peer(args.llamacpp_python, "llama.cpp", path, **{**common, "threads": 1})
    except BaseException:                                   # one failed: stop those already started
        for peer in peers.values():
            peer.close()
        raise
    return peers


def add_arguments(ap) -> None:
    ap.add_argument("--transformers-python", metavar="PY", help="an interpreter with torch and transformers: "
                    "adds transformers' float32 decode")
    ap.add_argument("--llamacpp-python", metavar="PY", help="an interpreter with llama-cpp-python and the "
                    "converter's imports: adds llama.cpp's F32 and Q8_0 decode (needs --llamacpp-src)")
    ap.add_argument("--llamacpp-src", metavar="DIR", help="llama.cpp's source tree, holding convert_hf_to_gguf.py")
    ap.add_argument("--gguf-dir", metavar="DIR", help="keep the HF folders and GGUF files here (reused next run)")


def check_arguments(ap, args) -> None:
    for flag in ("transformers_python", "llamacpp_python"):
        py = getattr(args, flag)
        if py and not (Path(py).is_file() and os.access(py, os.X_OK)):
            ap.error(f"--{flag.replace('_', '-')} {py}: not an executable file; give the peer's python")
    if args.llamacpp_python and not (args.llamacpp_src and (Path(args.llamacpp_src) / "convert_hf_to_gguf.py").is_file()):
        ap.error("--llamacpp-python needs --llamacpp-src DIR, a llama.cpp tree holding convert_hf_to_gguf.py")
    if args.gguf_dir and not Path(args.gguf_dir).is_dir():
        ap.error(f"--gguf-dir {args.gguf_dir}: no such folder; create it first")


if __name__ == "__main__":
    sys.exit("run benchmarks/bench_decode_int8.py with --llamacpp-python / --transformers-python")
