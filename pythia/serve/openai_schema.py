"""The OpenAI API's request bodies, checked, and its error object.

Fields the API defines but Pythia does not use are ignored, as OpenAI ignores unknown ones; a
field Pythia uses with a wrong type or value is refused with the API's error shape,

    {"error": {"message": ..., "type": "invalid_request_error", "param": "temperature", "code": None}}

and status 400 (401 a missing or wrong key, 404 an unknown model or route, 413 a body over the
limit, 503 a full queue). Defaults are the API's: temperature 1, top_p 1, n 1; max_tokens the
room left in the context for chat, 16 for completions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    """An error the client gets as the API's error object."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Sampling:
    """What both endpoints share."""
    model: str | None = None
    stream: bool = False
    include_usage: bool = False                    # stream_options.include_usage
    temperature: float = 1.0
    top_p: float | None = None
    max_tokens: int | None = None                  # None: as much as the context allows
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_logprobs: int | None = None                # None: no logprobs


@dataclass
class ChatRequest(Sampling):
    messages: list[dict] = field(default_factory=list)   # [{"role", "content": str}]


@dataclass
class CompletionRequest(Sampling):
    prompt: str | list[int] = ""


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _bad(param: str, want: str, got: Any) -> APIError:
    return APIError(400, f"{param} must be {want}, got {json.dumps(got)[:80]}", param=param)


def _number(body: dict, name: str, lo: float, hi: float, default):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _bad(name, f"a number from {lo:g} to {hi:g}", v)
    return float(v)


def _int(body: dict, name: str, lo: int, hi: int | None = None):
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise _bad(name, f"a whole number >= {lo}" + (f" and <= {hi}" if hi is not None else ""), v)
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(name, "true or false", v)
    return v


def _sampling(body: dict, into: Sampling) -> None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "a string", model)
    into.model = model
    into.stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options", "an object", opts)
        into.include_usage = _bool(opts, "include_usage")
    into.temperature = _number(body, "temperature", 0, 2, 1.0)
    top_p = _number(body, "top_p", 0, 1, None)
    if top_p == 0:
        raise _bad("top_p", "a number above 0 and at most 1", 0)
    into.top_p = top_p
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise APIError(400, f"n must be 1 (this server makes one choice per request), got {n}", param="n")
    into.seed = _int(body, "seed", -(1 << 63))
    if into.seed is not None and into.seed < 0:
        into.seed &= (1 << 64) - 1                       # NumPy seeds are non-negative; keep every value distinct
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOPS
                             or not all(isinstance(s, str) for s in stop)):
        raise _bad("stop", f"a string or a list of at most {MAX_STOPS} strings", stop)
    into.stop = [s for s in stop or [] if s]


def _content(m: dict, i: int) -> str:
    """The text of message i: a string, or the text parts of a content list."""
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        texts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content[{j}] must be a text part "
                                    f'{{"type": "text", "text": "..."}} (this model reads text only)',
                               param=f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content", "a string or a list of text parts", c)


def parse_chat(body: dict) -> ChatRequest:
    r = ChatRequest()
    _sampling(body, r)
    max_tokens = _int(body, "max_completion_tokens", 1)
    r.max_tokens = max_tokens if max_tokens is not None else _int(body, "max_tokens", 1)
    if _bool(body, "logprobs"):
        r.top_logprobs = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
    elif body.get("top_logprobs") is not None:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "a non-empty list of messages", msgs)
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", 'an object {"role": ..., "content": ...}', m)
        role = m.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {json.dumps(role)}",
                           param=f"messages[{i}].role")
        r.messages.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return r


def parse_completion(body: dict) -> CompletionRequest:
    r = CompletionRequest()
    _sampling(body, r)
    r.max_tokens = _int(body, "max_tokens", 1)
    r.max_tokens = 16 if r.max_tokens is None and "max_tokens" not in body else r.max_tokens
    k = _int(body, "logprobs", 0, 5)
    r.top_logprobs = k
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        r.prompt = list(p)
    elif isinstance(p, str) and p:
        r.prompt = p
    else:
        raise _bad("prompt", "a non-empty string (or a list of token ids)", p)
    return r
