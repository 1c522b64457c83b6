"""SVG loss plots: the drawn points are the logged values, the file is valid SVG, and it renders.

The points are read back from the SVG alone: the tick labels give the pixel position of known
values, so the axis mapping is rebuilt from them and every polyline vertex is mapped back to
(step, loss) and compared with the values that were plotted or logged.
"""
import json
import math
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pythia.errors import ConfigError, DataError
from pythia.system.claims import claim_output
from pythia.inspection.plot import log_ticks, loss_svg, nice_ticks, read_log

NS = {"s": "http://www.w3.org/2000/svg"}


def read_points(svg: str, log_y: bool = False) -> dict[str, list[tuple[float, float]]]:
    """{series: [(step, loss), ...]} recovered from the SVG's polylines through its tick labels."""
    root = ET.fromstring(svg)

    def axis(cls, coord):
        ticks = [(float(t.get(coord)), float(t.get("data-value"))) for t in root.iterfind(".//s:text", NS)
                 if t.get("class") == cls]
        (p0, v0), (p1, v1) = ticks[0], ticks[-1]
        f = math.log10 if (log_y and cls == "ytick") else (lambda v: v)
        g = (lambda u: 10 ** u) if (log_y and cls == "ytick") else (lambda u: u)
        return lambda p: g(f(v0) + (p - p0) / (p1 - p0) * (f(v1) - f(v0)))

    to_x, to_y = axis("xtick", "x"), axis("ytick", "y")
    out = {}
    for line in root.iterfind(".//s:polyline", NS):
        pts = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        out[line.get("class")] = [(to_x(x), to_y(y)) for x, y in pts]
    return out


def assert_points(got, want, y_tol):
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want):
        assert gx == pytest.approx(wx, abs=0.05) and gy == pytest.approx(wy, abs=y_tol)


TRAIN = [(s, 4.2 * math.exp(-s / 40) + 1.1 + 0.05 * math.sin(s)) for s in range(1, 201)]
VAL = [(s, 4.0 * math.exp(-s / 40) + 1.3) for s in range(50, 201, 50)]


@pytest.mark.parametrize("log_y", [False, True])
def test_svg_points_are_the_plotted_values(log_y):
    svg = loss_svg(TRAIN, VAL, log_y=log_y)
    pts = read_points(svg, log_y)
    # coordinates are written to 0.01 px over a ~350 px tall axis spanning ~4 loss units: < 1e-3
    assert_points(pts["train"], TRAIN, 2e-3)
    assert_points(pts["val"], VAL, 2e-3)
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iterfind(".//s:text", NS)]
    assert "train loss" in texts and "val loss" in texts and "step" in texts


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.93, 4.61) == [1.0, 2.0, 3.0, 4.0]          # steps of 1, 2 or 5 x 10^k
    assert nice_ticks(1, 200) == [50, 100, 150, 200]
    assert log_ticks(0.9, 6.0) == [1.0, 2.0, 5.0]


def test_log_file_of_a_resumed_run_keeps_the_latest_value_of_each_step(tmp_path):
    log = tmp_path / "run.jsonl"
    recs = [{"step": 1, "train_loss": 4.0}, {"step": 2, "train_loss": 3.0, "val_loss": 3.5},
            {"step": 3, "train_loss": 2.9},
            {"step": 3, "train_loss": 2.5}, {"step": 4, "train_loss": 2.0, "val_loss": 2.4}]  # resumed at 2
    log.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    train, val = read_log(log)
    assert train.tolist() == [[1, 4.0], [2, 3.0], [3, 2.5], [4, 2.0]] and val.tolist() == [[2, 3.5], [4, 2.4]]


def _reference_read(text: str) -> tuple[list, list]:
    """The specification, read whole: every non-blank line is a JSON record; a later record of a
    step replaces an earlier one; a torn last line (no newline, not JSON) is dropped."""
    train, val = {}, {}
    lines = text.removeprefix("\ufeff").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            assert i == len(lines) - 1, "only the last line may be torn"
            break
        train[int(rec["step"])] = float(rec["train_loss"])
        if rec.get("val_loss") is not None:
            val[int(rec["step"])] = float(rec["val_loss"])
    return [[s, v] for s, v in sorted(train.items())], [[s, v] for s, v in sorted(val.items())]


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_a_log_read_in_chunks_of_any_size_gives_the_whole_file_readers_points(tmp_path, monkeypatch, chunk):
    from pythia.inspection import plot
    monkeypatch.setattr(plot, "CHUNK", chunk)
    rng = np.random.default_rng(5)
    lines, step = [], 0
    for _ in range(400):                                       # a run resumed twice from earlier steps
        step = step + 1 if rng.random() > 0.01 else max(1, step - int(rng.integers(1, 30)))
        rec = {"step": step, "train_loss": float(rng.random()) * 4, "lr": 3e-4, "note": "é ü 😀"}
        if step % 10 == 0:
            rec["val_loss"] = float(rng.random()) * 4
        lines.append(json.dumps(rec, ensure_ascii=bool(rng.random() < 0.5)))
        if rng.random() < 0.03:
            lines.append("  ")                                 # blank lines are skipped
    text = "\ufeff" + "\r\n".join(lines[:50]) + "\r\n" + "\n".join(lines[50:]) + "\n" + '{"step": 9999, "train_lo'
    log = tmp_path / "run.jsonl"
    log.write_bytes(text.encode("utf-8"))
    train, val = read_log(log)
    want_train, want_val = _reference_read(text)
    assert train.tolist() == want_train and val.tolist() == want_val


def test_reading_a_long_log_holds_sixteen_bytes_a_point_not_the_file(tmp_path):
    # 200,000 records (30 MB of text): the points take 6.4 MB as float64 pairs; reading costs a
    # few chunks more. A reader holding the lines, or a Python object per point, takes 50 MB
    import tracemalloc
    n = 200_000
    line = '{{"step": {}, "train_loss": 2.5, "lr": 0.0003, "tokens_per_s": 41234.5, "elapsed_s": 1.5, ' \
           '"grad_norm": 0.7, "eval_train_loss": 2.5, "val_loss": 2.6}}\n'
    log = tmp_path / "long.jsonl"
    log.write_text("".join(line.format(i) for i in range(1, n + 1)), encoding="utf-8")
    tracemalloc.start()
    try:
        train, val = read_log(log)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(train) == len(val) == n
    assert peak < 1.1 * 2 * 16 * n + 6 * (1 << 20), peak      # two curves (an array's spare 1/16) + 6 chunks


def test_a_line_too_long_to_be_a_record_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    from pythia.inspection import plot
    monkeypatch.setattr(plot, "MAX_LINE", 1000)
    log = tmp_path / "run.jsonl"
    log.write_text('{"step": 1, "train_loss": 2.0}\n' + "x" * 50_000, encoding="utf-8")
    with pytest.raises(DataError, match="line 2 of .* is not a training log record"):
        read_log(log)


def test_bad_logs_and_targets_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "train_loss": 2.0}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2 of .* is not a training log record"):
        read_log(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_log(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="directory .* does not exist"):
        claim_output(tmp_path / "no" / "loss.svg", flag="--plot").__enter__()
    (tmp_path / "loss.svg").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists"):
        claim_output(tmp_path / "loss.svg", flag="--plot").__enter__()
    assert (tmp_path / "loss.svg").read_text(encoding="utf-8") == "mine"
    with pytest.raises(ConfigError, match="logarithmic axis needs losses above 0"):
        loss_svg([(1, 0.0), (2, 1.0)], log_y=True)


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium to render the SVG with")
def test_svg_renders_in_headless_chromium(tmp_path):
    svg = tmp_path / "loss.svg"
    svg.write_text(loss_svg(TRAIN, VAL), encoding="utf-8")
    png = tmp_path / "shot.png"
    subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=760,440", svg.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert png.is_file() and png.stat().st_size > 0, "Chromium wrote no screenshot"
    pixels = decode_png(png.read_bytes())                                  # (h, w, channels)
    # the curves' colours are drawn: the train blue and the val orange both appear
    rgb = pixels[..., :3].reshape(-1, 3).astype(int)
    assert (np.abs(rgb - [0x48, 0x78, 0xd0]).sum(1) < 40).sum() > 200
    assert (np.abs(rgb - [0xee, 0x85, 0x4a]).sum(1) < 40).sum() > 50
    assert len(np.unique(rgb, axis=0)) > 20                                # not blank


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB or RGBA, non-interlaced PNG -> (h, w, c) uint8, with zlib and NumPy only."""
    import struct
    import zlib
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            c = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    out = np.zeros((h, w * c), np.int32)
    for y in range(h):                                  # undo the per-row filters (PNG spec, section 9)
        f, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros(w * c, np.int32)
        if f == 0:
            cur = row
        elif f == 2:
            cur = (row + prev) & 255
        else:
            row, prev, cur = row.tolist(), prev.tolist(), [0] * (w * c)   # plain ints: a per-byte loop
            for i in range(w * c):
                a = cur[i - c] if i >= c else 0
                b = prev[i]
                d = prev[i - c] if i >= c else 0
                if f == 1:
                    cur[i] = (row[i] + a) & 255
                elif f == 3:
                    cur[i] = (row[i] + (a + b) // 2) & 255
                else:                                   # Paeth
                    p = a + b - d
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
                    pr = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
                    cur[i] = (row[i] + pr) & 255
        out[y] = cur
    return out.reshape(h, w, c).astype(np.uint8)
