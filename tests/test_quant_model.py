"""Whole models with int8 weights (pythia.quant.model) for both families, their checkpoints and
the --quantize flag.

References: the same model in float32 with every matrix replaced by its dequantized Q8_0 copy
(the int8 model differs from it only by quantizing activations per block of 32, so logits agree
within 3% of their largest magnitude on these tiny random-weight models); the NumPy twin backend
(pythia.quant.reference), which the compiled kernels must match bit for bit; and float matrices
overwritten with NaN, which an int8 model must never read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import helpers
from helpers import assert_one_line_error
from pythia import quant
from pythia.errors import CheckpointError, ConfigError
from pythia.formats.checkpoint import load_checkpoint, save_checkpoint
from pythia.formats.source import open_model
from pythia.quant.model import kept_params, quantize_model

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = {"gpt2": FIXTURES / "gpt2", "smollm2": FIXTURES / "hf_models" / "smollm2",
           "qwen25": FIXTURES / "hf_models" / "qwen25"}
IDS = np.array([[1, 5, 9, 3, 7, 2, 8, 4, 30, 11]])


def dequantized_float_model(q, float_model):
    """float_model's family and config with the kept params copied and each matrix set to its
    dequantized Q8_0 copy, computed by pythia.quant.reference."""
    ref = type(float_model)(float_model.config, init=False)
    ref.load_params(float_model.params)
    for name, (w, _) in ref.inference_matrices().items():
        layer = q.quantized[name]
        w[...] = quant.reference.dequantize_q8_0(layer.q, layer.scales)
    return ref


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_int8_logits_match_the_dequantized_float_model(name):
    f = open_model(SOURCES[name]).model
    q = quantize_model(f)
    assert set(q.quantized) == set(f.inference_matrices())            # every matrix, embedding, head
    ref = dequantized_float_model(q, f)
    want = ref.forward(IDS)                                             # (1, T, V)
    got = q.forward(IDS)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=0.03 * scale, rtol=0)
    assert np.abs(got - want).max() > 0                                 # activations are quantized too
    cached = q.forward_cached(IDS[0], q.new_kv_cache())                 # prefill
    np.testing.assert_array_equal(cached, got[0, -1])                   # rows quantize independently
    cache = q.new_kv_cache()                                            # then decode token by token
    for t in range(IDS.shape[1]):
        step = q.forward_cached(IDS[0, t:t + 1], cache)
    np.testing.assert_allclose(step, got[0, -1], atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "qwen25"])
def test_int8_model_reads_no_float_matrix(name):
    f = open_model(SOURCES[name]).model
    q = quantize_model(f)
    before = q.forward(IDS)
    kept = set(kept_params(q))
    for k, p in q.params.items():
        if k not in kept:
            p[...] = np.nan                                             # a float matrix read would spread NaN
    np.testing.assert_array_equal(q.forward(IDS), before)
    assert all(np.array_equal(q.params[k], f.params[k]) for k in kept)  # norms, biases, positions as they were


@pytest.mark.parametrize("name", ["gpt2", "smollm2"])
def test_compiled_int8_model_equals_the_numpy_twin_bit_for_bit(name):
    if quant.BACKEND != "cython":
        pytest.skip("the compiled int8 kernels are not built")
    q = quantize_model(open_model(SOURCES[name]).model)
    compiled = q.forward(IDS)
    try:
        quant.use("numpy")
        twin = q.forward(IDS)
    finally:
        quant.use("cython")
    np.testing.assert_array_equal(compiled, twin)


def test_quantized_model_refuses_training():
    q = quantize_model(open_model(SOURCES["smollm2"]).model)
    with pytest.raises(ValueError, match="inference only"):
        q.loss(IDS[:, :-1], IDS[:, 1:])
    g = quantize_model(open_model(SOURCES["gpt2"]).model)
    with pytest.raises(ValueError, match="inference only"):
        g.loss(IDS[:, :-1], IDS[:, 1:])


def test_sizes_q8_cannot_hold_and_unknown_kinds_are_refused():
    with pytest.raises(ConfigError, match="176 inputs, not a multiple of 32"):
        open_model(FIXTURES / "hf_models" / "tinyllama", quantize="int8")
    with pytest.raises(ConfigError, match="--quantize int4 is not a kind"):
        open_model(SOURCES["gpt2"], quantize="int4")


@pytest.mark.parametrize("name", ["gpt2", "qwen25"])
def test_quantized_checkpoint_round_trip_is_exact(tmp_path, name):
    m = open_model(SOURCES[name], quantize="int8")
    path = tmp_path / "q8.npz"
    save_checkpoint(path, m.model, m.tokenizer, chat=m.chat_meta())
    with np.load(path, allow_pickle=False) as npz:
        stored = {k: npz[k] for k in npz.files}
    kept = set(kept_params(m.model))
    assert {k[6:] for k in stored if k.startswith("param/")} == kept   # no float matrix stored
    q8_bytes = sum(a.nbytes for k, a in stored.items() if k.startswith("q8/"))
    float_bytes = sum(w.nbytes + (0 if b is None else b.nbytes)
                      for w, b in open_model(SOURCES[name]).model.inference_matrices().values())
    assert q8_bytes <= (1 + 4 / 32) / 4 * float_bytes + 4 * 2 * sum(w.shape[0] for w, _ in
                                                                    m.model.inference_matrices().values())
    back = open_model(path)                                             # no --quantize: int8 as stored
    assert back.description.endswith("int8 weights")
    for k, layer in m.model.quantized.items():
        b = back.model.quantized[k]
        np.testing.assert_array_equal(b.q, layer.q)
        np.testing.assert_array_equal(b.scales, layer.scales)
        assert (b.bias is None) == (layer.bias is None)
    np.testing.assert_array_equal(back.model.forward(IDS), m.model.forward(IDS))


def corrupted(tmp_path, src: Path, edit) -> Path:
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(arrays)
    out = tmp_path / "bad.npz"
    np.savez(out, **arrays)
    return out


def test_corrupt_quantized_checkpoints_give_one_clear_error(tmp_path):
    m = open_model(SOURCES["gpt2"], quantize="int8")
    good = tmp_path / "q8.npz"
    save_checkpoint(good, m.model, m.tokenizer)
    key = "q8/h.0.attn.c_attn.scales"

    def negative_scale(a):
        a[key] = -a[key]

    def missing(a):
        del a[key]

    def wrong_dtype(a):
        a["q8/h.1.mlp.c_fc.q"] = a["q8/h.1.mlp.c_fc.q"].astype(np.int16)

    def float_matrix_too(a):
        a["param/h.0.mlp.c_fc.weight"] = np.zeros((32, 128), np.float32)

    for edit, needle in [(negative_scale, "finite and >= 0"), (missing, "lacks 'h.0.attn.c_attn.scales'"),
                         (wrong_dtype, "int8"), (float_matrix_too, "not a float32 weight of an int8 model")]:
        with pytest.raises(CheckpointError, match=needle):
            open_model(corrupted(tmp_path, good, edit))
    with pytest.raises(CheckpointError, match="inference only"):
        load_checkpoint(good)                                           # what train --resume / --init-from call


def test_cli_generate_explain_and_convert_with_quantize(tmp_path):
    g = str(SOURCES["gpt2"])
    r = helpers.run_cli(["generate", "--model", g, "--prompt", "Hello", "--quantize", "int8",
                         "--temperature", "0", "--max-new-tokens", "5", "--no-echo"], tmp_path)
    helpers.assert_ok(r)
    q = open_model(g, quantize="int8")
    want = q.tokenizer.decode(list(q.model.generate(q.prompt_ids("Hello"), 5, temperature=0.0)))
    assert r.stdout == want + "\n"
    assert "int8 weights" in r.stderr
    helpers.assert_ok(helpers.run_cli(["explain", "--model", g, "--text", "Hi there", "--quantize", "int8"], tmp_path))
    out = tmp_path / "q8.npz"
    helpers.assert_ok(helpers.run_cli(["convert", g, "--out", str(out), "--quantize", "int8"], tmp_path))
    r2 = helpers.run_cli(["generate", "--model", str(out), "--prompt", "Hello", "--temperature", "0",
                          "--max-new-tokens", "5", "--no-echo"], tmp_path)
    assert r2.stdout == r.stdout
    assert_one_line_error(helpers.run_cli(["generate", "--model", g, "--prompt", "x", "--quantize", "int4"],
                                          tmp_path), "--quantize")
    (tmp_path / "notes.txt").write_text("some words to fine-tune on\n" * 400)
    assert_one_line_error(helpers.run_cli(["train", "--init-from", str(out), "--data", "notes.txt", "--steps", "1"],
                                          tmp_path), "inference only")
    assert_one_line_error(helpers.run_cli(["generate", "--model", str(FIXTURES / "hf_models" / "tinyllama"),
                                           "--prompt", "x", "--quantize", "int8"], tmp_path), "multiple of 32")


def test_kernels_numpy_flag_runs_the_int8_twin_and_tokenize_reads_an_int8_checkpoint(tmp_path):
    from pythia import kernels
    from pythia.commands.kernel_choice import select_kernels
    before, kernels_before = quant.BACKEND, kernels.BACKEND
    try:
        select_kernels("numpy")
        assert quant.BACKEND == "numpy" and kernels.BACKEND == "numpy"
    finally:
        quant.use(before)
        kernels.use(kernels_before)          # --kernels switches both; later tests need them back
    m = open_model(SOURCES["gpt2"], quantize="int8")
    save_checkpoint(tmp_path / "q8.npz", m.model, m.tokenizer)
    r = helpers.run_cli(["tokenize", "--checkpoint", "q8.npz", "--text", "Hello"], tmp_path)
    helpers.assert_ok(r)


def assert_same_int8(got, want):
    assert set(got.quantized) == set(want.quantized)
    for k, layer in want.quantized.items():
        s = got.quantized[k]
        np.testing.assert_array_equal(s.q, layer.q)
        np.testing.assert_array_equal(s.scales, layer.scales)
        assert (s.bias is None) == (layer.bias is None)
        if s.bias is not None:
            np.testing.assert_array_equal(s.bias, layer.bias)
    for k in kept_params(want):
        np.testing.assert_array_equal(got.params[k], want.params[k])


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_quantizing_one_matrix_at_a_time_gives_the_same_arrays(name, tmp_path):
    from pythia.quant.model import quantize_tensors
    f = open_model(SOURCES[name]).model
    whole = quantize_model(f)
    reads = []

    def read(n, out):
        reads.append(n)
        out[...] = f.params[n]
    assert_same_int8(quantize_tensors(type(f), f.config, read), whole)
    assert sorted(reads) == sorted(f.params)                            # each weight read once
    opened = open_model(SOURCES[name], quantize="int8").model           # a folder streams its int8
    assert_same_int8(opened, whole)
    np.testing.assert_array_equal(opened.forward(IDS), whole.forward(IDS))
    save_checkpoint(tmp_path / "f32.npz", f, open_model(SOURCES[name]).tokenizer)
    assert_same_int8(open_model(tmp_path / "f32.npz", quantize="int8").model, whole)   # and a checkpoint


# VmHWM: this process's peak resident size (ru_maxrss would start at the forking parent's)
_PEAK = """
import sys
import pythia.formats.checkpoint, pythia.model, pythia.quant.model, pythia.text.bpe   # what a load imports
from pythia.formats.source import open_model
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
base = hwm()
m = open_model(sys.argv[1], quantize=sys.argv[2] if len(sys.argv) > 2 else None)
print(base, hwm())
"""


def test_streamed_quantization_holds_one_float_matrix_at_a_time(tmp_path):
    """Peak resident memory a load adds (over the process after its imports), in a fresh process:
    a float32 checkpoint opened with quantize="int8" adds about the int8 model plus its largest
    float32 matrix (read first, the token table), far below the float32 load's."""
    import subprocess
    import sys

    from pythia.model import Pythia, PythiaConfig
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc/self/status (VmHWM) to read a process's peak memory")
    f = Pythia(PythiaConfig(vocab_size=16384, block_size=64, d_model=512, n_layer=4, n_head=8), seed=0)
    save_checkpoint(tmp_path / "f32.npz", f, open_model(SOURCES["gpt2"]).tokenizer)
    f32 = sum(p.nbytes for p in f.params.values())                      # 84 MB
    largest = max(w.nbytes for w, _ in f.inference_matrices().values())  # 34 MB, the token table
    added = {}
    for kind in (None, "int8"):
        p = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / "f32.npz"), *([kind] if kind else [])],
                           capture_output=True, text=True, timeout=300, env=helpers.subprocess_env())
        assert p.returncode == 0, p.stderr
        base, peak = map(int, p.stdout.split())
        added[kind] = peak - base
    assert added[None] >= f32                                           # the float32 model, resident
    assert added["int8"] <= largest + 0.35 * f32, (added, largest, f32)   # int8 ~0.28 f32 + one matrix
    assert added["int8"] <= 0.8 * added[None]


def test_a_corrupt_weight_met_while_quantizing_gives_one_line(tmp_path):
    f = open_model(SOURCES["gpt2"]).model
    tok = open_model(SOURCES["gpt2"]).tokenizer
    bad = type(f)(f.config, init=False)
    bad.load_params(f.params)
    bad.params["h.0.mlp.c_fc.weight"][3, 4] = np.nan
    save_checkpoint(tmp_path / "nan.npz", bad, tok)
    with pytest.raises(CheckpointError, match="'h.0.mlp.c_fc.weight' holds NaN"):
        open_model(tmp_path / "nan.npz", quantize="int8")
    good = tmp_path / "f32.npz"
    save_checkpoint(good, f, tok)
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    import zipfile
    with zipfile.ZipFile(good) as z:                                    # a member's data damaged in place
        info = z.getinfo("param/wte.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    cut.write_bytes(data[:start] + bytes(len(data) - start)[:4096] + data[start + 4096:])
    with pytest.raises(CheckpointError, match="corrupt"):
        open_model(cut, quantize="int8")
