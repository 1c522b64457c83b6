"""One request's sequence in the batched decoder, seen from the event loop.

The decoder's thread hands events to the loop (call_soon_threadsafe into an asyncio.Queue);
pieces() turns them into (text, tokens, finish_reason) steps through ReplyText. watch(receive)
runs beside it and cancels the sequence when the client disconnects, so its slot is free at the
decoder's next step; a sequence that reached a stop string is cancelled the same way.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from .batch import BatchDecoder, QueueFull, Request, Token
from .openai_schema import APIError
from .prompts import Prompt
from .reply import ReplyText


class Generation:
    def __init__(self, decoder: BatchDecoder, tokenizer, prompt: Prompt, request: Request):
        """Queue the sequence now (APIError 503 with Retry-After when the queue is full)."""
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.text = ReplyText(tokenizer, prompt.stop_strings, prompt.lstrip)
        self.prompt_tokens, self.completion_tokens = len(prompt.ids), 0
        try:
            self.seq = decoder.submit(request, self._post)
        except QueueFull as e:
            raise APIError(503, f"the server is busy ({e}); retry in a moment", type="server_error",
                           code="server_busy", headers={"Retry-After": "1"}) from None

    def _post(self, event: tuple) -> None:                 # on the decoder's thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def cancel(self) -> None:
        self.seq.cancel()
        self.events.put_nowait(("gone", None))

    async def watch(self, receive) -> None:
        """Wait for the client to go away, then cancel (run as a task; cancelled when the reply is done)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.cancel()
                return

    async def pieces(self) -> AsyncIterator[tuple[str, list[Token], str | None]]:
        """(new text, the tokens whose text is now decided, finish_reason or None) until the reply
        ends; nothing more once the client is gone. The tokens are those ReplyText keeps: each
        with at least one character in the returned text."""
        try:
            while True:
                kind, value = await self.events.get()
                if kind == "token":
                    self.completion_tokens += 1
                    out, hit, tokens = self.text.add(value.id, value)
                    if hit:
                        yield out, tokens, "stop"
                        return
                    yield out, tokens, None
                elif kind == "end":
                    out, tokens = self.text.finish()
                    yield out, tokens, value
                    return
                elif kind == "error":
                    raise APIError(500, value, type="server_error")
                else:                                       # "gone": the client disconnected
                    return
        finally:
            self.seq.cancel()                               # a no-op once the decoder ended it
