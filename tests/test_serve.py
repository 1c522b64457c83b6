"""`pythia serve` in process (Starlette's TestClient): routes, the API's error shapes, SSE
streaming, logprobs, and replies equal to independent references.

References: transformers' greedy replies and prompt ids for tiny chat-model folders
(tests/fixtures/hf_models/*/expected.json, made by tests/fixtures/make_hf_model_fixtures.py);
the model's own one-sequence forward_cached for log-probabilities (log-softmax in float64, within
1e-5) and for the batched decoder's tokens. Skipped when the serve extra (starlette) or httpx,
which TestClient needs, is absent.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from pythia.formats.source import LoadedModel, open_model  # noqa: E402
from pythia.models.gpt2 import Pythia, PythiaConfig  # noqa: E402
from pythia.serve.app import Settings, create_app  # noqa: E402
from pythia.serve.batch import BatchDecoder, Request  # noqa: E402
from pythia.tokenizer import SimpleTokenizer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "hf_models"
NAMES = ["smollm2", "qwen25", "tinyllama"]
_MODELS: dict = {}


def loaded(name: str) -> LoadedModel:
    if name not in _MODELS:
        _MODELS[name] = open_model(FIXTURES / name)
    return _MODELS[name]


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text(encoding="utf-8"))


def client(m: LoadedModel, name: str = "m", **kw) -> TestClient:
    decoder = BatchDecoder(m.model, max_batch=kw.pop("max_batch", 8), max_queue=kw.pop("max_queue", 8))
    return TestClient(create_app(m, Settings(name, quiet=True, **kw), decoder))


def char_model() -> LoadedModel:
    tok = SimpleTokenizer("User: Hello! Who are you?\nPythia: I am a small model.\n")
    model = Pythia(PythiaConfig(vocab_size=len(tok.chars), block_size=64, d_model=32, n_layer=2, n_head=4), seed=3)
    return LoadedModel(model, tok, "a char model")


def greedy_alone(model, ids: list[int], n: int, stop_ids=()) -> list[int]:
    """The reference: one sequence, one forward_cached per token, argmax."""
    cache, out = model.new_kv_cache(), []
    logits = model.forward_cached(np.array(ids), cache)
    for _ in range(n):
        t = int(np.argmax(logits))
        if t in stop_ids:
            break
        out.append(t)
        if cache.length >= model.config.block_size:
            break
        logits = model.forward_cached(np.array([t]), cache)
    return out


def token_str(m: LoadedModel, i: int) -> str:
    """A token's own text, as the API names it: its bytes (a SentencePiece word keeps its space)."""
    raw = getattr(m.tokenizer, "decode_bytes", None)
    return raw([i]).decode("utf-8", "replace") if raw else m.tokenizer.decode([i])


def error_of(r, status: int, param=None) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if param is not None:
        assert e["param"] == param, e
    return e


# ---- replies equal to the references --------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_chat_reply_equals_transformers_greedy_reply_and_prompt(name):
    """Token by token (each token's text in logprobs); the whole text where its bytes are complete
    (an invalid byte run streams as U+FFFD per held group, not per byte)."""
    m, e = loaded(name), expected(name)
    with client(m, name) as c:
        for chat in e["chats"]:
            reply = chat["reply"]
            stops = [i for i, t in enumerate(reply) if t in m.stop_ids]
            n = stops[0] if stops else len(reply)
            r = c.post("/v1/chat/completions", json={"model": name, "messages": chat["messages"],
                                                     "temperature": 0, "max_tokens": len(reply), "logprobs": True})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["object"] == "chat.completion" and body["model"] == name
            choice = body["choices"][0]
            assert [t["token"] for t in choice["logprobs"]["content"]] == [token_str(m, i) for i in reply[:n]]
            assert choice["message"]["role"] == "assistant"
            if "\ufffd" not in m.tokenizer.decode(reply[:n]):
                assert choice["message"]["content"] == m.tokenizer.decode(reply[:n])
            assert choice["finish_reason"] == ("stop" if stops else "length")
            assert body["usage"] == {"prompt_tokens": len(chat["prompt_ids"]), "completion_tokens": n,
                                     "total_tokens": len(chat["prompt_ids"]) + n}


def test_completion_equals_transformers_greedy_text():
    m, e = loaded("smollm2"), expected("smollm2")
    with client(m, "smollm2") as c:
        r = c.post("/v1/completions", json={"model": "smollm2", "prompt": e["prompt"], "temperature": 0,
                                            "max_tokens": len(e["greedy"])})
        body = r.json()
        assert r.status_code == 200 and body["object"] == "text_completion"
        assert body["choices"][0]["text"] == e["greedy_text"]
        assert body["usage"]["prompt_tokens"] == len(e["prompt_ids"])
        ids = c.post("/v1/completions", json={"prompt": e["prompt_ids"], "temperature": 0, "max_tokens": 4}).json()
        assert ids["choices"][0]["text"] == m.tokenizer.decode(e["greedy"][:4])


def test_logprobs_are_the_models_log_softmax_and_top_logprobs_its_likeliest():
    m, e = loaded("qwen25"), expected("qwen25")
    chat = e["chats"][0]
    with client(m) as c:
        r = c.post("/v1/chat/completions", json={"messages": chat["messages"], "temperature": 0, "max_tokens": 6,
                                                 "logprobs": True, "top_logprobs": 3})
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 6
    cache, ids = m.model.new_kv_cache(), list(chat["prompt_ids"])
    logits = m.model.forward_cached(np.array(ids), cache)
    for entry, want_id in zip(content, chat["reply"]):
        z = logits.astype(np.float64)
        lp = z - np.log(np.sum(np.exp(z - z.max()))) - z.max()       # log-softmax, float64
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["token"] == token_str(m, want_id)
        assert abs(entry["logprob"] - lp[want_id]) < 1e-5
        top = np.argsort(-lp, kind="stable")[:3]
        assert [t["token"] for t in entry["top_logprobs"]] == [token_str(m, int(i)) for i in top]
        np.testing.assert_allclose([t["logprob"] for t in entry["top_logprobs"]], lp[top], atol=1e-5, rtol=0)
        assert all(set(t) == {"token", "logprob", "bytes"} for t in entry["top_logprobs"])
        logits = m.model.forward_cached(np.array([want_id]), cache)


def test_completion_logprobs_take_the_legacy_shape():
    m, e = loaded("smollm2"), expected("smollm2")
    with client(m) as c:
        body = c.post("/v1/completions", json={"prompt": e["prompt"], "temperature": 0, "max_tokens": 3,
                                               "logprobs": 2}).json()
    lp = body["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert all(len(d) <= 2 and max(d.values()) >= v - 1e-12 for d, v in zip(lp["top_logprobs"], lp["token_logprobs"]))
    assert lp["text_offset"][0] == 0 and lp["text_offset"][1] == len(lp["tokens"][0])


# ---- streaming ------------------------------------------------------------------------------------

def sse(text: str) -> list:
    """The events of a server-sent-event body: each `data: ...` block, parsed unless it is [DONE]."""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


# interval 0: a chunk per token; the default gathers the tokens of a few milliseconds into one
# chunk (the same text and logprobs, fewer pieces)
@pytest.mark.parametrize("interval", [0.0, None])
def test_stream_is_server_sent_chunks_ending_with_finish_reason_usage_and_done(interval):
    m, e = loaded("smollm2"), expected("smollm2")
    msgs = e["chats"][0]["messages"]
    with client(m, **({} if interval is None else {"stream_interval": interval})) as c:
        whole = c.post("/v1/chat/completions", json={"messages": msgs, "temperature": 0, "max_tokens": 12}).json()
        r = c.post("/v1/chat/completions", json={"messages": msgs, "temperature": 0, "max_tokens": 12, "stream": True,
                                                 "stream_options": {"include_usage": True}, "logprobs": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(ch["object"] == "chat.completion.chunk" and ch["id"] == chunks[0]["id"] for ch in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    body = chunks[1:-1]
    assert body[-1]["choices"][0]["finish_reason"] == "length"
    assert all(ch["choices"][0]["finish_reason"] is None for ch in body[:-1])
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in body)
    assert text == whole["choices"][0]["message"]["content"]
    assert interval is None or len(body) == 12 + 1                 # a chunk a token, then the finish
    assert sum(len(ch["choices"][0]["logprobs"]["content"]) for ch in body if ch["choices"][0]["logprobs"]) == 12


def test_completion_stream_yields_the_same_text_in_pieces():
    m, e = loaded("smollm2"), expected("smollm2")
    with client(m) as c:
        r = c.post("/v1/completions", json={"prompt": e["prompt"], "temperature": 0, "stream": True,
                                            "max_tokens": len(e["greedy"])})
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    assert "".join(ch["choices"][0]["text"] for ch in events[:-1]) == e["greedy_text"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"


# ---- stop, max_tokens, seed, the dialogue format --------------------------------------------------

def test_stop_string_ends_the_reply_before_it_and_max_tokens_caps_it():
    m, e = loaded("smollm2"), expected("smollm2")
    text = e["greedy_text"]
    cut = text[len(text) // 3:len(text) // 3 + 3]
    with client(m) as c:
        r = c.post("/v1/completions", json={"prompt": e["prompt"], "temperature": 0, "stop": [cut],
                                            "max_tokens": len(e["greedy"])}).json()
        assert r["choices"][0]["text"] == text[:text.index(cut)] and r["choices"][0]["finish_reason"] == "stop"
        r = c.post("/v1/completions", json={"prompt": e["prompt"], "temperature": 0, "max_tokens": 2}).json()
        assert r["usage"]["completion_tokens"] == 2 and r["choices"][0]["finish_reason"] == "length"
        r = c.post("/v1/completions", json={"prompt": e["prompt"], "temperature": 0, "max_tokens": 10 ** 6}).json()
        assert r["usage"]["completion_tokens"] == m.model.config.block_size - len(e["prompt_ids"])


def listed_before(m: LoadedModel, ids: list[int], cut: int) -> list[str]:
    """The reference for which tokens logprobs lists when the reply is cut at character `cut`: the
    tokens with at least one character before it, found by decoding each prefix of the whole reply."""
    starts = [len(m.tokenizer.decode(ids[:i])) for i in range(len(ids))]
    return [token_str(m, t) for t, s in zip(ids, starts) if s < cut]


# (stop string, what it shows): one whose first character is inside a token (that token straddles
# the end and is listed; the next, inside the stop string, is not), and one on a token boundary
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["chat", "completions"])
def test_logprobs_list_exactly_the_tokens_whose_text_is_returned_when_a_stop_string_ends_it(route, stream):
    m, e = loaded("smollm2"), expected("smollm2")
    chat = e["chats"][0]
    ids, text = (chat["reply"], chat["reply_text"]) if route == "chat" else (e["greedy"], e["greedy_text"])
    ids, text = ids[:8], m.tokenizer.decode(ids[:8])
    third = len(m.tokenizer.decode(ids[:3]))                       # the end of the third token
    for stop in (text[2:6], text[third:third + 3]):
        cut = text.index(stop)
        body = {"temperature": 0, "max_tokens": 8, "stop": [stop], "stream": stream,
                **({"messages": chat["messages"], "logprobs": True, "top_logprobs": 2} if route == "chat"
                   else {"prompt": e["prompt"], "logprobs": 2})}
        with client(m) as c:
            r = c.post(f"/v1/{route}" if route == "completions" else "/v1/chat/completions", json=body)
        if stream:
            chunks = [ch for ch in sse(r.text)[:-1] if ch["choices"]]
            choices = [ch["choices"][0] for ch in chunks]
        else:
            choices = [r.json()["choices"][0]]
        if route == "chat":
            got = "".join(ch["delta"].get("content", "") if stream else ch["message"]["content"] for ch in choices)
            listed = [t["token"] for ch in choices if ch["logprobs"] for t in ch["logprobs"]["content"]]
        else:
            got = "".join(ch["text"] for ch in choices)
            listed = [t for ch in choices if ch["logprobs"] for t in ch["logprobs"]["tokens"]]
            offsets = [o for ch in choices if ch["logprobs"] for o in ch["logprobs"]["text_offset"]]
            assert offsets == [len("".join(listed[:i])) for i in range(len(listed))]
        assert got == text[:cut] and choices[-1]["finish_reason"] == "stop"
        assert listed == listed_before(m, ids, cut), (stop, listed)
        if stream:                      # an entry comes in the chunk that shows its token's first character
            shown, sent = 0, 0
            for ch in choices:
                before, shown = shown, shown + len(ch["delta"].get("content", "") if route == "chat" else ch["text"])
                lp = ch["logprobs"]
                for t in (lp["content"] if route == "chat" else lp["tokens"]) if lp else []:
                    start = len("".join(listed[:sent]))
                    assert before <= start < shown, (stop, listed, sent)
                    sent += 1
            assert sent == len(listed)


class WordTokenizer:
    """Token i is the string WORDS[i]: spans chosen by hand for ReplyText's rule."""
    WORDS = [" ", "  ", "H", "i\nUs", "er", "!"]

    def decode(self, ids) -> str:
        return "".join(self.WORDS[i] for i in ids)


@pytest.mark.parametrize("ids, stops, text, listed", [
    ([1, 2, 3, 4], ("\n",), "Hi", [2, 3]),          # "  " all dropped whitespace; "i\nUs" straddles the stop
    ([0, 2, 5, 4], ("\n",), "H!er", [2, 5, 4]),     # no stop: everything after the dropped space
    ([2, 3, 4], ("Us",), "Hi\n", [2, 3]),           # the stop inside a token's tail
    ([2, 3, 4], ("i",), "H", [2]),                  # a stop starting a token: that token is not listed
])
def test_reply_text_keeps_each_token_with_a_character_in_the_returned_text(ids, stops, text, listed):
    from pythia.serve.reply import ReplyText
    r = ReplyText(WordTokenizer(), stops, lstrip=True)
    out, items = "", []
    for i in ids:
        piece, hit, released = r.add(i, i)
        out, items = out + piece, items + released
        if hit:
            break
    else:
        piece, released = r.finish()
        out, items = out + piece, items + released
    assert out == r.text == text and items == listed


def test_seed_makes_a_sampled_reply_repeatable():
    m = loaded("tinyllama")
    body = {"prompt": "Hello", "temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "seed": 7}
    with client(m) as c:
        a, b = (c.post("/v1/completions", json=body).json()["choices"][0]["text"] for _ in range(2))
        other = c.post("/v1/completions", json={**body, "seed": 8}).json()["choices"][0]["text"]
    assert a == b and a != other


def test_a_char_model_chats_in_its_dialogue_lines_and_stops_at_a_new_line():
    m = char_model()
    msgs = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "I am."}, {"role": "user", "content": "Who are you?"}]
    prompt = "User: Hello!\nPythia: I am.\n\nUser: Who are you?\nPythia:"
    ids = m.tokenizer.encode(prompt)
    ref = m.tokenizer.decode(greedy_alone(m.model, ids, 64 - len(ids)))
    with client(m) as c:
        r = c.post("/v1/chat/completions", json={"messages": msgs, "temperature": 0, "logprobs": True}).json()
    assert r["usage"]["prompt_tokens"] == len(ids)
    want = ref.split("\n")[0]
    for tag in ("User:", "Pythia:"):
        want = want.split(tag)[0]
    assert r["choices"][0]["message"]["content"] == want.lstrip()
    # one character a token: the listed tokens are the reply's characters, without the space the
    # format puts before it (dropped) and without the new line or tag that ended it
    assert "".join(t["token"] for t in r["choices"][0]["logprobs"]["content"]) == want.lstrip()


# ---- errors: the API's shape and status, and the server still answers -----------------------------

def test_bad_requests_get_the_api_error_object_and_the_server_answers_the_next():
    m = loaded("smollm2")
    good = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    bad = [(b"{not json", None, 400), (b"[1, 2]", None, 400),
           ({"messages": []}, "messages", 400), ({"messages": "hi"}, "messages", 400),
           ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", 400),
           ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", 400),
           ({**good, "temperature": "hot"}, "temperature", 400), ({**good, "temperature": 3}, "temperature", 400),
           ({**good, "max_tokens": 0}, "max_tokens", 400), ({**good, "max_tokens": True}, "max_tokens", 400),
           ({**good, "n": 2}, "n", 400), ({**good, "top_logprobs": 3}, "top_logprobs", 400),
           ({**good, "stop": ["a", "b", "c", "d", "e"]}, "stop", 400), ({**good, "stream": "yes"}, "stream", 400),
           ({**good, "model": "gpt-4o"}, "model", 404)]
    with client(m, "smollm2") as c:
        for body, param, status in bad:
            kw = {"content": body} if isinstance(body, bytes) else {"json": body}
            error_of(c.post("/v1/chat/completions", **kw), status, param)
            ok = c.post("/v1/chat/completions", json={**good, "unknown_field": {"ignored": True}})
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
        error_of(c.post("/v1/completions", json={"prompt": ""}), 400, "prompt")
        error_of(c.post("/v1/completions", json={"prompt": [10 ** 9]}), 400, "prompt")
        assert error_of(c.get("/v1/nothing"), 404)["code"] == "not_found"
        error_of(c.get("/v1/chat/completions"), 405)
        assert error_of(c.get("/v1/models/other"), 404)["code"] == "model_not_found"
        assert c.get("/v1/models/smollm2").json()["id"] == "smollm2"


def test_a_prompt_over_the_context_says_by_how_much_and_a_body_over_the_limit_gets_413():
    m = loaded("smollm2")
    bs = m.model.config.block_size
    with client(m, max_body=4096) as c:
        e = error_of(c.post("/v1/completions", json={"prompt": list(range(bs + 9))}), 400, "prompt")
        assert e["code"] == "context_length_exceeded" and f"{bs + 9} tokens" in e["message"] and "10 tokens too many" in e["message"]
        e = error_of(c.post("/v1/chat/completions", content=b'{"messages": "' + b"x" * 5000 + b'"}'), 413)
        assert "4096 bytes" in e["message"]
        assert c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code == 200


def test_the_api_key_is_required_on_v1_when_set():
    m = loaded("smollm2")
    with client(m, "smollm2", api_key="s3cret") as c:
        assert error_of(c.get("/v1/models"), 401)["code"] == "invalid_api_key"
        assert error_of(c.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
        error_of(c.post("/v1/completions", json={"prompt": "Hi"}), 401)
        r = c.get("/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "smollm2"
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_the_page_and_health():
    m = loaded("smollm2")
    with client(m, "smollm2") as c:
        page = c.get("/")
        h = c.get("/health").json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "/v1/chat/completions" in page.text and "top_logprobs" in page.text
    assert "http://" not in page.text and "https://" not in page.text      # nothing fetched from elsewhere
    assert h["status"] == "ok" and h["model"] == "smollm2" and h["active"] == 0 and h["context"] == 256


def test_a_full_queue_answers_503_with_retry_after():
    m = loaded("smollm2")
    decoder = BatchDecoder(m.model, max_batch=1, max_queue=1)
    c = TestClient(create_app(m, Settings("m", quiet=True), decoder))   # no lifespan: the decoder never runs
    for _ in range(2):
        decoder.submit(Request([1, 2], 5), lambda ev: None)
    r = c.post("/v1/completions", json={"prompt": "Hi"})
    assert error_of(r, 503)["code"] == "server_busy" and r.headers["retry-after"] == "1"


# ---- the batched decoder ---------------------------------------------------------------------------

def collect(decoder: BatchDecoder, requests: list[Request]) -> list[tuple[list[int], str]]:
    """Submit every request, wait for every end; (token ids, finish reason) per request."""
    out = [([], None) for _ in requests]
    done = threading.Semaphore(0)

    def emit_for(i):
        def emit(ev):
            if ev[0] == "token":
                out[i][0].append(ev[1].id)
            else:
                out[i] = (out[i][0], ev[1])
                done.release()
        return emit
    for i, r in enumerate(requests):
        decoder.submit(r, emit_for(i))
    return out, done


def test_sequences_decoded_together_equal_each_decoded_alone_and_join_and_leave_between_steps():
    m = loaded("smollm2")
    V = m.model.config.vocab_size
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, V, n)) for n in (4, 9, 2, 7, 12, 5, 3, 8)]
    lengths = [6, 11, 3, 9, 5, 12, 8, 4]
    decoder = BatchDecoder(m.model, max_batch=5, max_queue=8)
    out, done = collect(decoder, [Request(p, n, temperature=0.0) for p, n in zip(prompts, lengths)])
    decoder.start()                                  # all eight were waiting: five start, three join later
    try:
        for _ in prompts:
            assert done.acquire(timeout=60)
    finally:
        decoder.close()
    assert decoder.widest == 5 and decoder.steps < sum(lengths)
    for (ids, finish), p, n in zip(out, prompts, lengths):
        assert ids == greedy_alone(m.model, p, n) and finish == "length"
    assert decoder.load() == (0, 0)


def test_a_cancelled_sequence_leaves_the_batch_at_the_next_step():
    m = loaded("smollm2")
    decoder = BatchDecoder(m.model, max_batch=2, max_queue=2)
    first = threading.Event()
    seq = decoder.submit(Request([5, 6, 7], 200, temperature=0.0), lambda ev: first.set())
    decoder.start()
    try:
        assert first.wait(30)
        seq.cancel()
        out, done = collect(decoder, [Request([5, 6], 3, temperature=0.0)])
        assert done.acquire(timeout=30)
        assert decoder.load() == (0, 0) and seq.generated < 200 and seq.cache is None
    finally:
        decoder.close()


def test_serving_does_not_import_the_web_stack_into_pythia():
    import subprocess
    import sys
    code = "import sys, pythia, pythia.cli, pythia.serve.batch; print(any(n.startswith(('starlette', 'uvicorn')) for n in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_a_failing_forward_pass_ends_the_stream_with_an_error_event_and_the_server_goes_on():
    m = char_model()
    real = m.model.forward_cached_batch
    calls = {"n": 0}

    def flaky(tokens, caches):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FloatingPointError("overflow in a test")
        return real(tokens, caches)
    m.model.forward_cached_batch = flaky
    body = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 5, "temperature": 0}
    with client(m) as c:
        events = sse(c.post("/v1/chat/completions", json={**body, "stream": True}).text)
        assert events[-1] == "[DONE]" and "overflow in a test" in events[-2]["error"]["message"]
        assert events[-2]["error"]["type"] == "server_error"
        assert c.post("/v1/chat/completions", json=body).json()["usage"]["completion_tokens"] >= 1


def test_an_int8_model_serves_the_same_greedy_text_as_its_own_generate():
    m = open_model(FIXTURES / "smollm2", quantize="int8")
    assert m.model.quantized is not None
    e = expected("smollm2")
    want = m.tokenizer.decode(list(m.model.generate(m.prompt_ids(e["prompt"]), 12, temperature=0.0)))
    with client(m) as c:
        r = c.post("/v1/completions", json={"prompt": e["prompt"], "temperature": 0, "max_tokens": 12}).json()
    assert r["choices"][0]["text"] == want and r["usage"]["completion_tokens"] == 12
