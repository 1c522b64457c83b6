"""The HTTP routes of `pythia serve`: the OpenAI API over one model, and the web chat page.

    GET  /v1/models, /v1/models/{id}    the one model served
    POST /v1/chat/completions           messages through the model's chat template; stream or not
    POST /v1/completions                a raw prompt continued
    GET  /health                        {"status": "ok", ...} with the decoder's load
    GET  /                              the web chat (static/index.html; it fetches nothing else)

Streaming answers are server-sent events as the API defines them: `data: {chunk}` lines, the last
chunk carrying finish_reason, then `data: [DONE]`. Every request gets one log line on stderr:
method, route, status, tokens generated, milliseconds.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from .batch import BatchDecoder
from .batch import Request as DecodeRequest
from .generation import STREAM_INTERVAL, Generation
from .openai_schema import APIError, parse_chat, parse_completion, parse_json
from .prompts import chat_prompt, completion_prompt, fit

MAX_BODY = 1 << 20            # bytes of a request body; a chat that long is far past any context here
PAGE = Path(__file__).parent / "static" / "index.html"
# the page may talk only to this server and load nothing from anywhere
PAGE_POLICY = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:"


@dataclass
class Settings:
    model_id: str
    api_key: str | None = None
    max_body: int = MAX_BODY
    quiet: bool = False
    stream_interval: float = STREAM_INTERVAL    # seconds: a reply's chunks go out at most this often


def create_app(loaded, settings: Settings, decoder: BatchDecoder) -> Starlette:
    """The Starlette app serving loaded (a pythia.formats.source.LoadedModel) through decoder,
    which the app starts and closes with its lifespan."""
    state = _State(loaded, settings, decoder)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        decoder.start()
        try:
            yield
        finally:
            decoder.close()

    routes = [Route("/", state.page), Route("/health", state.health),
              Route("/v1/models", state.models), Route("/v1/models/{model_id:path}", state.model),
              Route("/v1/chat/completions", state.chat, methods=["POST"]),
              Route("/v1/completions", state.completions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.decoder = decoder
    return _RequestLog(app, settings.quiet)


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    kinds = {404: ("not_found", f"no route {request.url.path}; the API lives under /v1"),
             405: ("method_not_allowed", f"{request.method} is not allowed on {request.url.path}")}
    code, message = kinds.get(e.status_code, (None, str(e.detail)))
    return JSONResponse(APIError(e.status_code, message, code=code).body(), status_code=e.status_code)


async def _server_error(request: Request, e: Exception) -> JSONResponse:
    body = APIError(500, f"the server failed: {type(e).__name__}: {e}", type="server_error").body()
    return JSONResponse(body, status_code=500)


class _RequestLog:
    """ASGI middleware: one line per HTTP request on stderr (method, route, status, tokens, ms)."""

    def __init__(self, app: Starlette, quiet: bool):
        self.app, self.quiet = app, quiet
        self.state = app.state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [0]
        scope.setdefault("state", {})

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_status)
        finally:
            if not self.quiet:
                tokens = scope["state"].get("tokens", 0)
                ms = (time.perf_counter() - t0) * 1000
                print(f"{scope['method']} {scope['path']} {status[0] or 'closed'} {tokens} tokens {ms:.0f} ms",
                      file=sys.stderr, flush=True)


class _State:
    def __init__(self, loaded, settings: Settings, decoder: BatchDecoder):
        self.loaded, self.settings, self.decoder = loaded, settings, decoder
        self.created = int(time.time())
        self.block_size = loaded.model.config.block_size

    # ---- guards ------------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            what = "no API key given" if not given else "the API key is not the one this server was started with"
            raise APIError(401, f"{what}; send the header `Authorization: Bearer <key>`", code="invalid_api_key")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.model_id:
            raise APIError(404, f"the model {name!r} does not exist here; this server serves "
                                f"{self.settings.model_id!r}", param="model", code="model_not_found")

    async def body(self, request: Request) -> dict:
        limit = self.settings.max_body
        length = request.headers.get("content-length", "")
        too_big = APIError(413, f"the request body is over {limit} bytes", code="request_too_large")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise too_big
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    # ---- routes ------------------------------------------------------------------------------------
    async def page(self, request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Content-Security-Policy": PAGE_POLICY})

    async def health(self, request: Request) -> JSONResponse:
        active, waiting = self.decoder.load()
        return JSONResponse({"status": "ok", "model": self.settings.model_id, "active": active, "waiting": waiting,
                             "max_batch": self.decoder.max_batch, "context": self.block_size,
                             "steps": self.decoder.steps, "widest_batch": self.decoder.widest})

    def _card(self) -> dict:
        return {"id": self.settings.model_id, "object": "model", "created": self.created, "owned_by": "pythia"}

    async def models(self, request: Request) -> JSONResponse:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self._card()]})

    async def model(self, request: Request) -> JSONResponse:
        self.authorize(request)
        self.check_model(request.path_params["model_id"])
        return JSONResponse(self._card())

    async def chat(self, request: Request):
        self.authorize(request)
        req = parse_chat(await self.body(request))
        self.check_model(req.model)
        prompt = chat_prompt(self.loaded, req.messages, req.stop)
        return await self._answer(request, req, prompt, fit(prompt, req.max_tokens, self.block_size, "messages"),
                                  _ChatShape(self))

    async def completions(self, request: Request):
        self.authorize(request)
        req = parse_completion(await self.body(request))
        self.check_model(req.model)
        prompt = completion_prompt(self.loaded, req.prompt, req.stop)
        return await self._answer(request, req, prompt, fit(prompt, req.max_tokens, self.block_size, "prompt"),
                                  _CompletionShape(self))

    async def _answer(self, request: Request, req, prompt, max_tokens: int, shape):
        gen = Generation(self.decoder, self.loaded.tokenizer, prompt,
                         DecodeRequest(prompt.ids, max_tokens, req.temperature, req.top_p, None, req.seed,
                                       prompt.stop_ids, req.top_logprobs), self.settings.stream_interval)
        watcher = asyncio.ensure_future(gen.watch(request.receive))
        if req.stream:
            return _EventStream(self._events(gen, req, shape, request), watcher)
        try:
            text, tokens, finish = "", [], None
            async for piece, done, end in gen.pieces():
                text += piece
                tokens += done
                finish = end or finish
        finally:
            watcher.cancel()
        request.state.tokens = gen.completion_tokens
        return JSONResponse(shape.whole(text, tokens, finish or "length", req.top_logprobs is not None,
                                        _usage(gen)))

    async def _events(self, gen: Generation, req, shape, request: Request) -> AsyncIterator[dict]:
        yield shape.opening()
        async for piece, tokens, finish in gen.pieces():
            request.state.tokens = gen.completion_tokens
            chunk = shape.chunk(piece, tokens, finish, req.top_logprobs is not None)
            if chunk is not None:
                yield chunk
        if req.include_usage:
            yield shape.usage(_usage(gen))

    def token_text(self, token_id: int) -> tuple[str, list[int]]:
        tok = self.loaded.tokenizer
        raw = getattr(tok, "decode_bytes", None)
        data = raw([token_id]) if raw is not None else tok.decode([token_id]).encode("utf-8")
        return data.decode("utf-8", "replace"), list(data)


def _usage(gen: Generation) -> dict:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


class _ChatShape:
    """Bodies and chunks of /v1/chat/completions."""

    def __init__(self, state: _State):
        self.state = state
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.state.settings.model_id,
                "system_fingerprint": "pythia"}

    def _logprob(self, t) -> dict:
        text, data = self.state.token_text(t.id)
        top = []
        for i, lp in t.top:
            s, b = self.state.token_text(i)
            top.append({"token": s, "logprob": lp, "bytes": b})
        return {"token": text, "logprob": t.logprob, "bytes": data, "top_logprobs": top}

    def whole(self, text: str, tokens: list, finish: str, logprobs: bool, usage: dict) -> dict:
        lp = {"content": [self._logprob(t) for t in tokens], "refusal": None} if logprobs else None
        return {**self._head("chat.completion"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": lp, "finish_reason": finish}], "usage": usage}

    def opening(self) -> dict:
        return {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}]}

    def chunk(self, piece: str, tokens: list, finish: str | None, logprobs: bool) -> dict | None:
        lp = {"content": [self._logprob(t) for t in tokens], "refusal": None} if logprobs and tokens else None
        if not piece and lp is None and finish is None:
            return None
        delta = {"content": piece} if piece or lp is not None else {}
        return {**self._head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    def usage(self, usage: dict) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage}


class _CompletionShape:
    """Bodies and chunks of /v1/completions (logprobs as the legacy API shapes them)."""

    def __init__(self, state: _State):
        self.state = state
        self.id, self.created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.offset = 0                       # characters of the listed tokens streamed so far

    def _head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.state.settings.model_id, "system_fingerprint": "pythia"}

    def _logprobs(self, tokens: list, offset: int = 0) -> dict:
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in tokens:
            text = self.state.token_text(t.id)[0]
            out["tokens"].append(text)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append({self.state.token_text(i)[0]: lp for i, lp in t.top})
            out["text_offset"].append(offset)
            offset += len(text)
        return out

    def whole(self, text: str, tokens: list, finish: str, logprobs: bool, usage: dict) -> dict:
        return {**self._head(), "choices": [{"text": text, "index": 0,
                                             "logprobs": self._logprobs(tokens) if logprobs else None,
                                             "finish_reason": finish}], "usage": usage}

    def opening(self) -> None:
        return None

    def chunk(self, piece: str, tokens: list, finish: str | None, logprobs: bool) -> dict | None:
        if not piece and finish is None and not (logprobs and tokens):
            return None
        lp = self._logprobs(tokens, self.offset) if logprobs and tokens else None
        self.offset += sum(len(t) for t in lp["tokens"]) if lp else 0
        return {**self._head(), "choices": [{"text": piece, "index": 0, "logprobs": lp, "finish_reason": finish}]}

    def usage(self, usage: dict) -> dict:
        return {**self._head(), "choices": [], "usage": usage}


class _EventStream:
    """A server-sent-event response: `data: {json}` per chunk, then `data: [DONE]`. A client that
    goes away (a failed write) ends the generation; so does the watcher noticing the disconnect."""

    def __init__(self, chunks: AsyncIterator[dict | None], watcher: asyncio.Future):
        self.chunks, self.watcher = chunks, watcher

    async def __call__(self, scope, receive, send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async def event(data: str, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": more})
        try:
            try:
                async for chunk in self.chunks:
                    if chunk is not None:
                        await event(json.dumps(chunk, ensure_ascii=False))
            except APIError as e:                # after the status went out: the error is the last event
                await event(json.dumps(e.body(), ensure_ascii=False))
            await event("[DONE]", more=False)
        except OSError:                          # the client went away mid-stream
            pass
        finally:
            self.watcher.cancel()
            await self.chunks.aclose()
