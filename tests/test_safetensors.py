"""The NumPy safetensors reader against files written byte by byte here (and by the safetensors
package, when installed): F32/F16/BF16 values exact, and every malformed file a one-line GPT2Error."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pythia.errors import GPT2Error
from pythia.formats.safetensors import SafetensorsFile, load_safetensors


def write_safetensors(path, tensors: dict, *, header: dict | None = None, pad: int = 0,
                      metadata: dict | None = None) -> None:
    """Write a safetensors file by hand: tensors maps name -> (dtype code, array whose raw
    little-endian bytes are the data). `header` replaces the computed JSON header when given."""
    entries, blobs, offset = {}, [], 0
    for name, (code, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        entries[name] = {"dtype": code, "shape": list(np.shape(arr)), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        entries["__metadata__"] = metadata
    text = json.dumps(header if header is not None else entries).encode("utf-8") + b" " * pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """The bf16 encoding (top 16 bits) of float32 values that are exactly representable in bf16."""
    bits = np.asarray(x, dtype="<f4").view("<u4")
    assert not (bits & 0xFFFF).any(), "test values must be exact in bf16"
    return (bits >> 16).astype("<u2")


def test_f32_f16_bf16_read_back_exactly_as_float32(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 5)).astype("<f4")
    f16 = rng.standard_normal((4, 2)).astype("<f2")
    # bf16-exact values: random float32 with the low 16 bits cleared, plus signed zero and inf
    b = (rng.standard_normal(7).astype("<f4").view("<u4") & 0xFFFF0000).view("<f4")
    b = np.concatenate([b, np.array([-0.0, np.inf, 1e38], "<f4")])
    b = (b.view("<u4") & 0xFFFF0000).view("<f4")
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": ("F32", f32), "h": ("F16", f16), "b": ("BF16", bf16_bits(b))},
                      metadata={"format": "np"})
    out = load_safetensors(path)
    assert set(out) == {"a", "h", "b"}
    assert np.signbit(out["b"][7])  # -0.0 kept its sign
    for name, want in (("a", f32), ("h", f16.astype(np.float32)), ("b", b)):
        got = out[name]
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        got[...] = 7                       # a copy: writing to it leaves the file alone
    np.testing.assert_array_equal(load_safetensors(path)["a"], f32)


def test_scalars_empty_tensors_padding_and_other_dtypes(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"s": ("F32", np.array(2.5, "<f4")), "e": ("F16", np.zeros((0, 3), "<f2")),
                             "i": ("I64", np.arange(4, dtype="<i8"))}, pad=7)
    f = SafetensorsFile(path)
    assert f.keys() == ["s", "e", "i"]
    assert f.shape("e") == (0, 3) and f.dtype("i") == "I64"
    assert f.get("s").shape == () and float(f.get("s")) == 2.5
    assert f.get("e").shape == (0, 3)
    assert set(load_safetensors(path)) == {"s", "e"}  # integer buffers are skipped, not converted
    with pytest.raises(GPT2Error, match="dtype I64"):
        f.get("i")
    with pytest.raises(GPT2Error, match="no tensor 'nope'"):
        f.get("nope")


def test_matches_the_safetensors_package_when_installed(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "t.safetensors"
    st.save_file({"f32": x, "f16": x.half(), "bf16": x.bfloat16()}, str(path))
    out = load_safetensors(path)
    for name, t in (("f32", x), ("f16", x.half()), ("bf16", x.bfloat16())):
        np.testing.assert_array_equal(out[name], t.float().numpy())


def _good(path):
    write_safetensors(path, {"w": ("F32", np.ones((2, 3), "<f4"))})


def _bad_files():
    """(name, writer, message fragment): each writer makes one malformed file."""
    w = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    data = ("F32", np.ones((2, 3), "<f4"))

    def raw(b):
        return lambda p: p.write_bytes(b)

    def hdr(h):
        return lambda p: write_safetensors(p, {"w": data}, header=h)

    return [
        ("empty", raw(b""), "truncated"),
        ("short length", raw(b"\x10\x00\x00"), "truncated"),
        ("header past end", raw(struct.pack("<Q", 1000) + b"{}"), "truncated"),
        ("huge header length", raw(struct.pack("<Q", 2**62) + b"{}"), "implausible"),
        ("not json", raw(struct.pack("<Q", 5) + b"{abc}"), "not valid JSON"),
        ("not utf-8", raw(struct.pack("<Q", 4) + b"\"\xff\xfe\""), "not valid JSON"),
        ("header is a list", hdr([1, 2]), "JSON object"),
        ("entry not an object", hdr({"w": 3}), "not an object"),
        ("unknown dtype", hdr({"w": {**w, "dtype": "F12"}}), "unknown dtype 'F12'"),
        ("negative dim", hdr({"w": {**w, "shape": [-2, 3]}}), "shape"),
        ("float dim", hdr({"w": {**w, "shape": [2.0, 3]}}), "shape"),
        ("offsets not a pair", hdr({"w": {**w, "data_offsets": [0]}}), "data_offsets"),
        ("offsets past end", hdr({"w": {**w, "data_offsets": [0, 48]}}), "outside"),
        ("offsets reversed", hdr({"w": {**w, "data_offsets": [24, 0]}}), "outside"),
        ("shape vs offsets", hdr({"w": {**w, "shape": [3, 3]}}), "needs 36 bytes"),
        ("truncated data", lambda p: (_good(p), p.write_bytes(p.read_bytes()[:-4])), "outside"),
    ]


@pytest.mark.parametrize("name,write,fragment", _bad_files(), ids=[b[0] for b in _bad_files()])
def test_malformed_file_is_a_one_line_gpt2error(tmp_path, name, write, fragment):
    path = tmp_path / "bad.safetensors"
    write(path)
    with pytest.raises(GPT2Error) as e:
        SafetensorsFile(path)
    msg = str(e.value)
    assert fragment in msg and str(path) in msg and "\n" not in msg


def test_missing_file_names_it(tmp_path):
    with pytest.raises(GPT2Error, match="model.safetensors not found"):
        SafetensorsFile(tmp_path / "model.safetensors")


def test_good_file_of_the_malformed_set_reads(tmp_path):
    """The writer behind the malformed cases makes a valid file when left alone."""
    path = tmp_path / "ok.safetensors"
    _good(path)
    np.testing.assert_array_equal(load_safetensors(path)["w"], np.ones((2, 3), np.float32))


@pytest.mark.parametrize("code", ["F32", "F16", "BF16"])
def test_read_into_fills_the_callers_array_chunk_by_chunk_and_by_rows(tmp_path, monkeypatch, code):
    """read_into writes the tensor's values into an array the caller owns, whatever the chunk size
    (a chunk of 7 values splits rows and leaves a ragged last chunk), and rows lo.. of it alone."""
    from pythia.formats import safetensors
    rng = np.random.default_rng(1)
    want = (rng.standard_normal((9, 5)).astype("<f4").view("<u4") & 0xFFFF0000).view("<f4")  # bf16-exact
    want = want.astype("<f2").astype("<f4") if code == "F16" else want                       # f16-exact too
    data = {"F32": want, "F16": want.astype("<f2"), "BF16": bf16_bits(want)}[code]
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"pad": ("F32", np.ones(3, "<f4")), "w": (code, data)})
    monkeypatch.setattr(safetensors, "CHUNK", 7)
    f = SafetensorsFile(path)
    out = np.full((9, 5), np.nan, np.float32)
    f.read_into("w", out)
    np.testing.assert_array_equal(out, want)
    rows = np.full((3, 5), np.nan, np.float32)
    f.read_into("w", rows, 4)                                  # rows 4, 5, 6
    np.testing.assert_array_equal(rows, want[4:7])
    np.testing.assert_array_equal(f.get("w"), want)


def test_read_into_refuses_an_array_it_cannot_fill_and_a_truncated_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": ("BF16", np.zeros((4, 2), "<u2"))})
    f = SafetensorsFile(path)
    for bad, start in ((np.zeros((4, 2), np.float64), 0), (np.zeros((2, 4), np.float32).T, 0),
                       (np.zeros((4, 3), np.float32), 0), (np.zeros((3, 2), np.float32), 2),
                       (np.zeros((1, 2), np.float32), -1)):
        with pytest.raises(ValueError, match="read_into needs"):
            f.read_into("w", bad, start)
    with open(path, "r+b") as fh:                              # cut the last value off
        fh.truncate(path.stat().st_size - 2)
    with pytest.raises(GPT2Error, match="'w' ends early .* truncated"):  # f read the header before the cut
        f.read_into("w", np.zeros((4, 2), np.float32))


def test_reading_maps_nothing(tmp_path):
    """No mapping of the file stays in the process (its pages would count in the resident memory
    beside the model's own copy)."""
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": ("BF16", np.zeros((64, 64), "<u2")), "x": ("F32", np.ones(5, "<f4"))})
    f = SafetensorsFile(path)
    held = [f.get("w"), f.get("x")]
    f.read_into("w", held[0])
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()
