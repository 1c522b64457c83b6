"""One request's sequence in the batched decoder, seen from the event loop.

The decoder's thread appends events to a deque and wakes the loop (call_soon_threadsafe) only
when no wake-up is pending already: waking the loop costs a write to its self-pipe and a switch
of threads, which for a small model is as dear as decoding the token. pieces() then takes every
event that is ready at once and turns them into one (text, tokens, finish_reason) step through
ReplyText, so when the decoder runs ahead of the network the tokens that are ready go out in one
chunk (the text and logprobs are the same; only their grouping into chunks differs). After each
chunk the loop looks again only `interval` seconds later (the decoder does not wake it in
between): a model that decodes a token in well under a millisecond then sends a few tokens a
chunk instead of paying the hand-off for each, at the price of at most `interval` seconds of delay
a token; a model slower than that sends one token a chunk as before; interval 0 sends a chunk
per token whatever the pace. watch(receive)
runs beside it and cancels the sequence when the client disconnects, so its slot is free at the
decoder's next step; a sequence that reached a stop string is cancelled the same way.
"""
from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator

from .batch import BatchDecoder, QueueFull, Request, Token
from .openai_schema import APIError
from .prompts import Prompt
from .reply import ReplyText

STREAM_INTERVAL = 0.002       # seconds between two looks at a sequence's events: a chunk at most this often


class Generation:
    def __init__(self, decoder: BatchDecoder, tokenizer, prompt: Prompt, request: Request,
                 interval: float = STREAM_INTERVAL):
        """Queue the sequence now (APIError 503 with Retry-After when the queue is full)."""
        self.loop, self.interval = asyncio.get_running_loop(), interval
        self.events: collections.deque = collections.deque()   # filled by the decoder's thread
        self.ready = asyncio.Event()                            # set on the loop: events may wait
        self.pending = False                                    # a wake-up is on its way to the loop
        self.text = ReplyText(tokenizer, prompt.stop_strings, prompt.lstrip)
        self.prompt_tokens, self.completion_tokens = len(prompt.ids), 0
        try:
            self.seq = decoder.submit(request, self._post)
        except QueueFull as e:
            raise APIError(503, f"the server is busy ({e}); retry in a moment", type="server_error",
                           code="server_busy", headers={"Retry-After": "1"}) from None

    def _post(self, event: tuple) -> None:                 # on the decoder's thread
        self.events.append(event)
        if not self.pending:                                # the event is in the deque before the flag is read,
            self.pending = True                             # so a wake-up still pending will find it
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:                                # on the loop
        self.pending = False
        self.ready.set()

    def cancel(self) -> None:
        self.seq.cancel()
        self.events.append(("gone", None))
        self.ready.set()

    async def watch(self, receive) -> None:
        """Wait for the client to go away, then cancel (run as a task; cancelled when the reply is done)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.cancel()
                return

    async def pieces(self) -> AsyncIterator[tuple[str, list[Token], str | None]]:
        """(new text, the tokens whose first character it shows, finish_reason or None) for each
        batch of ready events, until the reply ends; nothing more once the client is gone. The
        tokens are those ReplyText keeps: each with at least one character in the returned text."""
        try:
            while True:
                if not self.events:
                    self.ready.clear()
                    await self.ready.wait()
                    continue
                text, tokens = "", []
                while self.events:
                    kind, value = self.events.popleft()
                    if kind == "token":
                        self.completion_tokens += 1
                        out, hit, done = self.text.add(value.id, value)
                        text, tokens = text + out, tokens + done
                        if hit:
                            yield text, tokens, "stop"
                            return
                        if self.interval <= 0:                  # no grouping: a chunk per token
                            break
                    elif kind == "end":
                        out, done = self.text.finish()
                        yield text + out, tokens + done, value
                        return
                    elif kind == "error":
                        if text or tokens:
                            yield text, tokens, None
                        raise APIError(500, value, type="server_error")
                    else:                                   # "gone": the client disconnected
                        return
                yield text, tokens, None
                if self.interval > 0 and self.completion_tokens < self.seq.request.max_tokens:
                    # let the next tokens gather without waking us (not when the end is the next event)
                    self.pending = True
                    await asyncio.sleep(self.interval)
                    self.pending = False
        finally:
            self.seq.cancel()                               # a no-op once the decoder ended it
