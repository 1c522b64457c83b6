"""`python -m pythia serve` as a process: the official openai client against it, concurrent
requests decoded together, disconnects, SIGTERM, the start-up checks.

The reference for every reply is the same model run in this process, one sequence alone
(forward_cached per token, argmax; its log-softmax in float64 within 1e-5). Skipped when the
serve extra or httpx is absent; the openai tests when the client is absent.
"""
from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from pythia.chat import StopFilter, stream_text  # noqa: E402
from pythia.formats.source import open_model  # noqa: E402
from serve_process import FIXTURES, REPO, Server, serving  # noqa: E402

MODEL = FIXTURES / "smollm2"
TIMEOUT = 60


@pytest.fixture(scope="module")
def local():
    return open_model(MODEL)


@pytest.fixture(scope="module")
def server():
    with serving("--model", str(MODEL), "--max-batch", "8") as s:
        yield s
        assert s.stop() == 0


def reference(m, messages: list[dict], max_tokens: int) -> tuple[str, list[float], int, int]:
    """(reply text, each reply token's log-probability, prompt tokens, reply tokens): the model alone, greedy."""
    ids = m.tokenizer.encode(m.template.render(messages, add_generation_prompt=True), add_special_tokens=False)
    cache, out, lps = m.model.new_kv_cache(), [], []
    logits = m.model.forward_cached(np.array(ids), cache)
    for _ in range(max_tokens):
        z = logits.astype(np.float64)
        t = int(np.argmax(z))
        if t in m.stop_ids:
            break
        out.append(t)
        lps.append(float(z[t] - z.max() - np.log(np.exp(z - z.max()).sum())))
        logits = m.model.forward_cached(np.array([t]), cache)
    stop = StopFilter(tuple(m.template.stop_strings()))
    text = "".join(stop.feed(p)[0] for p in stream_text(m.tokenizer, iter(out))) + stop.flush()
    return text, lps, len(ids), len(out)


def messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question {i}: " + "tell me more " * (i % 4)}]


# ---- the official client ---------------------------------------------------------------------------

def test_openai_client_lists_the_model_and_gets_the_greedy_reply_streamed_or_whole(server, local):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    msgs = messages(1)
    text, lps, n_prompt, n_reply = reference(local, msgs, 20)
    r = client.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=20, logprobs=True,
                                       top_logprobs=2)
    assert r.choices[0].message.content == text and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == n_reply
    assert r.usage.total_tokens == n_prompt + n_reply
    np.testing.assert_allclose([c.logprob for c in r.choices[0].logprobs.content], lps, atol=1e-5, rtol=0)
    assert all(len(c.top_logprobs) == 2 for c in r.choices[0].logprobs.content)

    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=20,
                                                stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    # the tokens ready every 2 ms go out as one chunk, and this tiny model can decode the whole reply in
    # that time; tests/test_serve.py checks a chunk per token with the interval off
    assert "".join(pieces) == text and finish == r.choices[0].finish_reason

    short = client.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_completion_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    cut = text[4:7]
    stopped = client.chat.completions.create(model="smollm2", messages=msgs, temperature=0, max_tokens=20, stop=cut)
    assert stopped.choices[0].message.content == text[:text.index(cut)]
    assert stopped.choices[0].finish_reason == "stop"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2", messages=[])
    assert e.value.body["param"] == "messages"


# ---- batching, disconnects --------------------------------------------------------------------------

def test_eight_concurrent_greedy_requests_each_get_the_text_they_get_alone(server):
    body = lambda i: {"model": "smollm2", "messages": messages(i), "temperature": 0, "max_tokens": 16 + i}  # noqa: E731
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        alone = [c.post("/v1/chat/completions", json=body(i)).json()["choices"][0]["message"]["content"]
                 for i in range(8)]
        before = c.get("/health").json()["widest_batch"]
    def ask(i):
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
            return c.post("/v1/chat/completions", json=body(i)).json()["choices"][0]["message"]["content"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert together == alone
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        h = c.get("/health").json()
    assert before == 1 and h["widest_batch"] > 1 and h["active"] == 0


def test_a_client_that_disconnects_frees_its_slot(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as c:
        with c.stream("POST", "/v1/chat/completions", json={"messages": messages(2), "max_tokens": 200,
                                                            "temperature": 1.0, "stream": True}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            h = c.get("/health").json()
            assert h["active"] + h["waiting"] == 1
        deadline = time.monotonic() + 10
        while c.get("/health").json()["active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        h = c.get("/health").json()
        assert h["active"] == 0 and h["waiting"] == 0


def test_requests_on_one_connection_are_not_held_back_by_nagles_algorithm(server):
    """A response goes out in two writes (headers, body). With Nagle's algorithm on, the second
    waits for the client's delayed ACK of the first, about 40 ms, on every request after the
    first of a keep-alive connection; the server turns it off (TCP_NODELAY). /health answers in
    well under a millisecond, so a median round trip over 20 ms can only be that wait."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    times = []
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as k:
        for _ in range(9):
            t0 = time.perf_counter()
            k.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            reply = b""
            while not reply.endswith(b"}"):
                reply += k.recv(65536)
            times.append(time.perf_counter() - t0)
    assert reply.startswith(b"HTTP/1.1 200") and np.median(times) < 0.020, times


# ---- stopping, start-up -----------------------------------------------------------------------------

def test_sigterm_ends_the_streams_in_flight_with_a_final_event_and_exits_0():
    with serving("--model", str(MODEL)) as s:
        with httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
            with c.stream("POST", "/v1/chat/completions", json={"messages": messages(3), "max_tokens": 240,
                                                                "stream": True, "stream_options": {"include_usage": True}}) as r:
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
                s.proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                rest = [x for x in lines if x]
                assert time.monotonic() - t0 < 10
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-3][6:])["choices"][0]["finish_reason"] == "length"
        assert json.loads(rest[-2][6:])["usage"]["completion_tokens"] < 100     # cut short, not run to the cap
        assert s.proc.wait(15) == 0
        assert "server stopped" in s.stderr and "Traceback" not in s.stderr


def test_every_interface_without_a_key_warns_and_a_busy_port_is_one_error_line():
    with serving("--model", str(MODEL), "--host", "0.0.0.0", "--quiet") as s:
        assert "warning:" in s.stderr and "--api-key" in s.stderr
        port = s.url.rsplit(":", 1)[1]
        busy = subprocess.run([sys.executable, "-m", "pythia", "serve", "--model", str(MODEL), "--port", port],
                              cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                              env=__import__("helpers").subprocess_env())
        assert busy.returncode == 1 and busy.stderr.strip().splitlines()[-1].startswith("error: cannot listen on")
        assert "Traceback" not in busy.stderr
        assert s.stop() == 0


def test_without_the_serve_extra_serve_says_how_to_install_it():
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "from pythia.cli import main; sys.exit(main(['serve', '--model', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(MODEL)], cwd=REPO, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 1 and r.stderr.startswith("error: serve needs the serve extra")
    assert "pip install" in r.stderr and len(r.stderr.strip().splitlines()) == 1
