"""The chat REPL: talk to a model, one streamed reply at a time.

A model Pythia trained keeps the conversation in the bundled corpus's dialogue format
(data/model.txt):

    User: Hello! Who are you?
    Pythia: I am Pythia, a small language model ...
    <blank line>

Each turn appends "User: <message>\\nPythia:" to the transcript, feeds the last block_size tokens
of it to the model and streams what comes back until the model starts a new line (the end of a
turn in that format) or writes a speaker tag, or the length limit is reached. A chat model (SmolLM2,
Qwen2.5, TinyLlama) gets its own chat template instead, and a reply ends at the template's
end-of-turn token (pythia.conversation holds both formats).

Controls: exit / quit, /clear, /help, /temp X, /topk K, /topp P, /seed N, /len N, /reset, /probs, /stats,
/system TEXT (chat models).
Ctrl-C interrupts a reply and returns to the prompt; Ctrl-D (end of input) leaves.
"""
from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

import numpy as np

from .inspection.explain import token_probs
from .ui import ConsoleUI
from .units import parse_number

from .conversation import BOT, USER, Dialogue, Templated
MAX_LINE = 1 << 20                 # longest line read from piped input, in characters (a bound, not a limit of use)

HELP = """\
Type a message and press Enter. Commands:
  /help          this list and the current settings
  /temp X        sampling temperature (0 = always the likeliest token)
  /topk K        sample only from the K likeliest tokens (0 = off)
  /topp P        sample from the smallest set of tokens with probability >= P (1 = off)
  /seed N        reseed the sampler, so the same conversation gives the same replies
  /len N         longest reply, in tokens
  /probs         after each reply, show how sure the model was of each token (toggle)
  /stats         the last reply's speed: prompt and generated tokens per second, and the load time
  /system TEXT   the system prompt of a chat model (empty: its default); the conversation is kept
  /reset         forget the conversation so far
  /clear         clear the screen
  exit, quit     leave (so do Ctrl-D and, twice in a row, Ctrl-C)
Ctrl-C during a reply stops that reply."""


@dataclass
class ChatSettings:
    temperature: float = 0.8           # < 1 sharpens the distribution; 0 is greedy
    top_k: int | None = 40             # None: sample from the whole vocabulary
    top_p: float | None = None         # None: no nucleus cut
    max_new_tokens: int = 200          # a reply stops here at the latest
    seed: int | None = None            # None: a fresh random seed per session
    show_probs: bool = False           # /probs: show each reply token's probability after the reply

    def describe(self) -> str:
        k = "off" if self.top_k is None else str(self.top_k)
        p = "off" if self.top_p is None else f"{self.top_p:g}"
        s = "random" if self.seed is None else str(self.seed)
        return (f"temperature {self.temperature:g}, top-k {k}, top-p {p}, length {self.max_new_tokens}, seed {s}, "
                f"probs {'on' if self.show_probs else 'off'}")


class StopFilter:
    """Streams text through, ending at the first stop string and never showing part of one.

    feed() returns the text that is safe to show now and whether a stop string was reached;
    a tail that could still become a stop string ("Us" of "User:") is held back until the next
    feed() decides it, and flush() releases it when generation ends without a stop.
    """

    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.done = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.done:
            return "", True
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.done, self.held = True, ""
            return buf[:min(hits)], True
        keep = 0  # the longest suffix of buf that is a proper prefix of some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), keep, -1):
                if buf.endswith(s[:n]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


def stream_text(tokenizer: Any, ids: Iterator[int]) -> Iterator[str]:
    """The new text of each generated token ("" while held back), decoding incrementally.

    Byte-level BPE can split one character over several tokens; until its bytes complete, the
    decoded text ends in U+FFFD, so those tokens are held back rather than shown as garbage. A
    UTF-8 character has at most 4 bytes and every token at least one, so after 4 held tokens the
    bytes are truly invalid and are shown as U+FFFD. The new tokens are decoded after the last
    token already shown and that token's text is cut off again: a SentencePiece-style tokenizer
    (Metaspace "▁") drops a word's leading space only at the start of what it decodes, so this
    gives exactly the text of decoding the whole reply at once. Each step decodes a few tokens, so
    streaming n tokens costs O(n), not O(n^2). Whatever is still held at the end is shown.
    """
    prev: list[int] = []          # the last token shown: the context the next ones are decoded in
    held: list[int] = []
    for i in ids:
        held.append(int(i))
        shown = tokenizer.decode(prev) if prev else ""
        text = tokenizer.decode(prev + held)
        if text.endswith("\ufffd") and len(held) < 4:
            yield ""
            continue
        prev, held = held[-1:], []
        yield text[len(shown):] if text.startswith(shown) else text
    if held:
        shown = tokenizer.decode(prev) if prev else ""
        text = tokenizer.decode(prev + held)
        yield text[len(shown):] if text.startswith(shown) else text


class ChatSession:
    """One conversation with a model, reading lines from `stdin` and writing to `ui.out`."""

    def __init__(self, model: Any, tokenizer: Any, *, ui: ConsoleUI | None = None,
                 settings: ChatSettings | None = None, stdin: TextIO | None = None,
                 user: str = USER, bot: str = BOT, template: Any = None, stop_ids: list[int] = (),
                 load_seconds: float | None = None) -> None:
        from .timing import DecodeTimer
        self.model, self.tokenizer = model, tokenizer
        self.load_seconds = load_seconds
        self.timer = DecodeTimer(load_seconds)  # the last reply's speed (/stats)
        # the conversation's format: the model's chat template, or the corpus's dialogue lines
        self.format = Dialogue(tokenizer, user, bot) if template is None else Templated(tokenizer, template, stop_ids)
        self.ui = ui or ConsoleUI()
        self.settings = settings or ChatSettings()
        self.stdin = stdin if stdin is not None else sys.stdin
        self.user, self.bot = user, bot if template is None else "assistant"
        self.ended = False          # whether the last reply ended on its own (benchmarks count these)
        self.rng = np.random.default_rng(self.settings.seed)
        self.block_size = int(model.config.block_size)
        try:
            self.interactive = self.stdin.isatty()
        except (AttributeError, ValueError):
            self.interactive = False
        self.readline = False
        if self.interactive and self.stdin is sys.stdin:
            try:
                importlib.import_module("readline")  # loading it gives input() line editing and history
                self.readline = True
            except ImportError:
                pass

    @property
    def transcript(self) -> str:
        """The dialogue so far (a model Pythia trained; a chat model keeps format.messages)."""
        return getattr(self.format, "transcript", "")

    @transcript.setter
    def transcript(self, text: str) -> None:
        self.format.transcript = text

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        ui = self.ui
        ui.line(ui.style("Chat with the model.", "bold") + " Type /help for commands, exit or Ctrl-D to leave.")
        interrupts = 0
        while True:
            try:
                line = self._read(ui.style("you> ", "bold", "green"))
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts >= 2:
                    ui.line()
                    break
                ui.line()
                ui.notice("(press Ctrl-C again, type exit or press Ctrl-D to leave)")
                continue
            if line is None:  # end of input (Ctrl-D or the end of a pipe)
                ui.line()
                break
            interrupts = 0
            text = line.strip()
            if not text:
                continue
            if text.lower() in ("exit", "quit", "/exit", "/quit"):
                break
            if text.startswith("/"):
                self.command(text)
                continue
            try:
                self.reply(text)
            except KeyboardInterrupt:  # Ctrl-C outside the token loop still only ends the reply
                ui.line()
                ui.notice("(reply interrupted)")
        ui.notice("Goodbye.")

    def _read(self, prompt: str) -> str | None:
        """One line of input without its newline, or None at end of input."""
        if self.stdin is sys.stdin and self.interactive:
            self.ui.end_live()
            if self.readline:  # \001..\002 tell readline the colour codes take no columns
                prompt = re.sub(r"(\033\[[0-9;]*m)", "\001\\1\002", prompt)
            try:
                return input(prompt)
            except EOFError:
                return None
        self.ui.write(prompt)
        line = self.stdin.readline(MAX_LINE + 1)           # bounded: stdin may be /dev/zero or a binary file
        if not line:
            return None
        if len(line) > MAX_LINE and not line.endswith("\n"):
            from .errors import PythiaError
            raise PythiaError(f"a line of input is longer than {MAX_LINE:,} characters (is stdin a device or a "
                              f"binary file?); pipe text with one message per line")
        line = line.rstrip("\r\n")
        from .text.tokenview import escape_controls
        # echo piped input so the transcript reads like a conversation; controls escaped, not obeyed
        self.ui.write(escape_controls(line) + "\n")
        return line

    # ---- commands ------------------------------------------------------------------------------
    def command(self, text: str) -> None:
        ui, s = self.ui, self.settings
        name, _, arg = text.partition(" ")
        name, arg = name.lower(), arg.strip()
        try:
            if name == "/help":
                ui.line(HELP)
                ui.notice(f"now: {s.describe()}")
            elif name == "/clear":
                if ui.live:
                    ui.write("\033[2J\033[H")  # erase the screen, cursor to the top-left corner
            elif name == "/reset":
                self.format.reset()
                ui.notice("(context forgotten)")
            elif name == "/system":
                if not self.format.supports_system:
                    raise ValueError("/system needs a chat model with a chat template; this model "
                                     "continues User:/Pythia: dialogue")
                self.format.system = arg or None
                ui.notice(f"(system prompt: {arg!r})" if arg else "(the model's default system prompt)")
            elif name == "/temp":
                v = _number(arg, float, "/temp X needs a number >= 0, e.g. /temp 0.8")
                if v < 0:
                    raise ValueError("/temp X needs a number >= 0, e.g. /temp 0.8")
                s.temperature = v
                ui.notice(f"(temperature {v:g})")
            elif name == "/topk":
                v = _number(arg, int, "/topk K needs a whole number >= 0, e.g. /topk 40 (0 turns it off)")
                if v < 0:
                    raise ValueError("/topk K needs a whole number >= 0, e.g. /topk 40 (0 turns it off)")
                s.top_k = v or None
                ui.notice(f"(top-k {'off' if s.top_k is None else v})")
            elif name == "/topp":
                v = _number(arg, float, "/topp P needs a number in (0, 1], e.g. /topp 0.9 (1 turns it off)")
                if not 0 < v <= 1:
                    raise ValueError("/topp P needs a number in (0, 1], e.g. /topp 0.9 (1 turns it off)")
                s.top_p = None if v == 1 else v
                ui.notice(f"(top-p {'off' if s.top_p is None else f'{v:g}'})")
            elif name == "/seed":
                v = _number(arg, int, "/seed N needs a whole number >= 0, e.g. /seed 42")
                if v < 0:
                    raise ValueError("/seed N needs a whole number >= 0, e.g. /seed 42")
                s.seed, self.rng = v, np.random.default_rng(v)
                ui.notice(f"(seed {v})")
            elif name == "/len":
                v = _number(arg, int, "/len N needs a whole number >= 1, e.g. /len 200")
                if v < 1:
                    raise ValueError("/len N needs a whole number >= 1, e.g. /len 200")
                s.max_new_tokens = v
                ui.notice(f"(replies up to {v} tokens)")
            elif name == "/probs":
                s.show_probs = not s.show_probs
                if not s.show_probs:
                    ui.notice("(probabilities off)")
                elif ui.color:
                    ui.notice("(probabilities on: each reply is shown again shaded by how sure the model was, "
                              "with its top 5 candidates where it was least sure)")
                else:
                    ui.notice("(probabilities on: the output is not a colour terminal, so each reply is followed "
                              "by a compact table of its tokens' probabilities instead of shading)")
            elif name == "/stats":
                if not self.timer.prompt_tokens:
                    ui.notice("(no reply yet; /stats shows the last reply's speed)")
                for row in self.timer.lines():
                    ui.notice(row)
            else:
                ui.notice(f"(unknown command {name}; /help lists the commands)")
        except ValueError as e:
            ui.notice(f"({e})")

    # ---- one reply -----------------------------------------------------------------------------
    def encode_known(self, text: str) -> tuple[str, list[str]]:
        """Text with the characters the vocabulary lacks removed, and those characters."""
        filt = getattr(self.tokenizer, "filter", None)
        if filt is None:  # byte-level BPE encodes any text
            return text, []
        kept, dropped = filt(text)
        return kept, sorted(set(dropped))

    def reply(self, message: str) -> str:
        """Generate and stream the model's answer to message; returns the text shown."""
        ui, s = self.ui, self.settings
        kept, dropped = self.encode_known(message)
        if dropped:
            shown = "".join(dropped) if len(dropped) <= 12 else "".join(dropped[:12]) + "..."
            ui.notice(f"(dropped {len(dropped)} character(s) the vocabulary lacks: {shown!r})")
        kept = kept.strip()
        if not kept:
            ui.notice("(nothing left to say after dropping those characters; try other words)")
            return ""
        # room for the prompt: the whole context for a small model (the window slides as it
        # generates); a long-context chat model keeps room for the reply too
        room = self.block_size if self.block_size <= 4 * s.max_new_tokens else self.block_size - s.max_new_tokens
        ids = self.format.prompt_ids(kept, room)
        if not ids:
            ui.notice("(the model's vocabulary cannot encode this conversation)")
            return ""
        stop = StopFilter(self.format.stop_strings)
        raw = ""       # the reply as generated (up to the stop), kept in the transcript
        started = False
        ui.write(ui.style(f"{self.bot.lower()}> ", "bold", "cyan"))
        seen: list = []      # (token, its probability, top 5 (token, probability)) per generated token
        watch = {"observe": lambda logits, tok: seen.append(token_probs(logits, tok))} if s.show_probs else {}
        stopped: list[int] = []                   # the end-of-turn id the model chose, if it did
        gen = self.model.generate(ids, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                  top_p=s.top_p, rng=self.rng, **watch)
        from .timing import DecodeTimer
        self.timer = DecodeTimer(self.load_seconds)
        gen = self.timer.wrap(gen, prompt_tokens=len(ids))
        self.last_ids = []                        # the reply's token ids (without the end-of-turn id)
        ids_out = until_stop(gen, self.format.stop_ids, stopped, self.last_ids)
        interrupted = False
        done = False
        try:
            for piece in stream_text(self.tokenizer, ids_out):
                out, done = stop.feed(piece)
                raw += out
                if not started:  # the corpus puts a space after "Pythia:"; do not show it
                    out = out.lstrip()
                    started = bool(out)
                if out:
                    ui.write(out)
                if done:
                    break
            else:
                tail = stop.flush()
                raw += tail
                ui.write(tail if started else tail.lstrip())
                done = bool(stopped)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
        if not raw.strip() and not interrupted:  # the model ended its turn at once
            ui.write(ui.style("(no answer)", "dim"))
        ui.write("\n")
        if interrupted:
            ui.notice("(reply interrupted)")
        self.ended = done              # the model ended its turn itself, before the length limit
        if seen:
            from .inspection.explain import reply_probs_view
            for row in reply_probs_view(self.tokenizer, seen, raw, ended=done, color=ui.color,
                                        unicode=ui.unicode, width=ui.width):
                ui.line(row)
        self.format.record(kept, raw)
        return raw.strip()


def until_stop(ids: Iterator[int], stop_ids, stopped: list[int] | None = None,
               seen: list[int] | None = None) -> Iterator[int]:
    """ids up to the first of stop_ids, which is appended to stopped (when given) rather than
    yielded; each id yielded is appended to seen (when given)."""
    stop_ids = set(stop_ids)
    stopped = [] if stopped is None else stopped
    seen = [] if seen is None else seen
    for i in ids:
        if i in stop_ids:
            stopped.append(i)
            return
        seen.append(int(i))
        yield i


def _number(arg: str, kind: Callable[[str], Any], message: str):
    """arg as a number of kind (pythia.units.parse_number); ValueError(message) when it is not one."""
    try:
        return parse_number(arg, kind)
    except ValueError:
        raise ValueError(message) from None


def run_chat(model: Any, tokenizer: Any, *, ui: ConsoleUI | None = None,
             settings: ChatSettings | None = None, stdin: TextIO | None = None,
             template: Any = None, stop_ids: list[int] = (), load_seconds: float | None = None) -> None:
    """Run the REPL until exit, quit or end of input (with template: a chat model's own format)."""
    ChatSession(model, tokenizer, ui=ui, settings=settings, stdin=stdin, template=template, stop_ids=stop_ids,
                load_seconds=load_seconds).run()
