"""One reply as it streams: token ids in, text out, ending at a stop string, and which tokens
that text is made of.

Text comes from pythia.chat.stream_text (a token whose bytes do not complete a character yet is
held back; the text of each step is exactly what decoding the whole reply gives), then
pythia.chat.StopFilter (text that could still become a stop string is held until it is decided,
and a stop string is never shown); the leading whitespace of a reply can be dropped (lstrip).

Each token carries an item (its log-probabilities, say) that is released with the first of its
characters that is shown, never before (nor later, so a streamed token's item goes out in the
same chunk as the start of its text). The rule for
which items are kept: a token is listed when at least one character of its text is in the
returned text. So a token that straddles the end (its text starts before a stop string and runs
into it, "a\\n" with stop "\\n") is listed, a token wholly inside the stop string (or after it)
is not, nor is a token that was only leading whitespace dropped by lstrip. Tokens that together
make one character (bytes of a UTF-8 sequence) share that character's span and are kept or
dropped together. Joined, the listed tokens' text starts with the returned text (after any
dropped leading whitespace) and runs past it by at most the straddling token's tail.
"""
from __future__ import annotations

import collections

from ..chat import StopFilter, stream_text


class _Feed:
    """An iterator the caller fills one id at a time; it ends when empty (only asked when not)."""

    def __init__(self) -> None:
        self.items: collections.deque[int] = collections.deque()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.items:
            return self.items.popleft()
        raise StopIteration


class ReplyText:
    def __init__(self, tokenizer, stops: tuple[str, ...], lstrip: bool = False):
        self._feed = _Feed()
        self._pieces = stream_text(tokenizer, self._feed)
        self._stop = StopFilter(tuple(stops))
        self._started = not lstrip            # the leading whitespace is dropped until text starts
        self.text = ""                        # everything shown so far
        # positions count characters of the raw reply (stream_text's text, before stop and lstrip)
        self._raw = 0                         # raw characters made so far
        self._decided = 0                     # raw characters shown or dropped as leading whitespace
        self._start = 0                       # where the shown text starts (after dropped whitespace)
        self._group: list = []                # items of tokens whose bytes have not made a character yet
        self._pending: collections.deque = collections.deque()   # (start, end, item) not yet released

    def add(self, token: int, item=None) -> tuple[str, bool, list]:
        """(the new text safe to show, whether a stop string was reached, the items released) after
        one more token; item is what the caller wants back for this token (None: nothing)."""
        self._feed.items.append(int(token))
        self._group.append(item)
        return self._take(next(self._pieces))

    def finish(self) -> tuple[str, list]:
        """(the text still held back, the items still pending) once generation ended without a
        stop string being reached."""
        tail = "".join(self._pieces)          # the feed is empty: stream_text releases what it held
        out, hit, items = self._take(tail)
        if not hit:
            rest, _, more = self._take(self._stop.flush(), ended=True, filtered=True)
            out, items = out + rest, items + more
        return out, items

    def _take(self, piece: str, ended: bool = False, filtered: bool = False) -> tuple[str, bool, list]:
        if piece and not filtered:            # the group's tokens made this piece: they share its span
            end = self._raw + len(piece)
            self._pending.extend((self._raw, end, it) for it in self._group if it is not None)
            self._group, self._raw = [], end
        out, hit = (piece, False) if filtered else self._stop.feed(piece)
        self._decided += len(out)
        if not self._started:
            kept = out.lstrip()
            self._start = self._decided - len(kept)
            self._started, out = bool(kept), kept
        self.text += out
        return out, hit, self._release(everything=hit or ended)

    def _release(self, everything: bool) -> list:
        """Items of the tokens whose first shown character is decided now: a token is kept when at
        least one character of its text is shown, so it can go out with that character; a token
        whose text was all decided without showing any (dropped leading whitespace) is dropped,
        and so is every token still pending when the reply is over."""
        items = []
        while self._pending:
            start, end, item = self._pending[0]
            if max(start, self._start) < min(end, self._decided):
                items.append(item)
            elif not (everything or end <= self._decided):
                break
            self._pending.popleft()
        return items
