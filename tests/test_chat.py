"""The chat REPL, driven through its stdin with a scripted model.

The scripted model records every generate() call (prompt ids and sampling settings) and yields
token ids of a text chosen by the test, so each test states exactly what the model "says" and
checks what the user sees and what the model was asked.
"""
import io
import string
from types import SimpleNamespace

import numpy as np
import pytest

from pythia.chat import ChatSession, ChatSettings, StopFilter, stream_text
from pythia.tokenizer import SimpleTokenizer
from pythia.ui import ConsoleUI

VOCAB = "\n !.:?" + string.ascii_letters


class ScriptedModel:
    """generate() yields the ids of `replies` in turn; `raise_after` raises Ctrl-C mid-reply."""

    def __init__(self, tok, replies, block_size=64, raise_after=None):
        self.tok, self.replies = tok, list(replies)
        self.config = SimpleNamespace(block_size=block_size)
        self.calls = []
        self.raise_after = raise_after

    def generate(self, prompt, max_new_tokens, *, temperature, top_k, top_p, rng):
        self.calls.append(dict(prompt=list(prompt), n=max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, draw=rng.integers(1 << 30)))
        ids = self.tok.encode(self.replies.pop(0) if self.replies else " ok\n")

        def gen():
            for j, i in enumerate(ids[:max_new_tokens]):
                if self.raise_after is not None and j == self.raise_after:
                    raise KeyboardInterrupt
                yield i
        return gen()


def session(lines, replies, *, block_size=64, raise_after=None, settings=None):
    tok = SimpleTokenizer(VOCAB)
    model = ScriptedModel(tok, replies, block_size, raise_after)
    out = io.StringIO()
    s = ChatSession(model, tok, ui=ConsoleUI(out, color=False, live=False), settings=settings,
                    stdin=io.StringIO("".join(line + "\n" for line in lines)))
    s.run()
    return s, model, tok, out.getvalue()


def test_piped_turn_streams_the_reply_and_stops_at_the_next_speaker():
    s, model, tok, out = session(["Hello", "quit"], [" Hi there!\nUser: more"])
    assert "you> Hello\n" in out                      # piped input is echoed like typed input
    assert "pythia> Hi there!\n" in out
    assert "more" not in out
    assert out.rstrip().endswith("Goodbye.")
    assert tok.decode(model.calls[0]["prompt"]) == "User: Hello\nPythia:"
    assert s.transcript == "User: Hello\nPythia: Hi there!\n\n"


def test_second_turn_sees_the_first_in_corpus_format():
    _, model, tok, _ = session(["Hello", "How are you?", "exit"], [" Hi.\n", " Fine.\n"])
    assert tok.decode(model.calls[1]["prompt"]) == "User: Hello\nPythia: Hi.\n\nUser: How are you?\nPythia:"


def test_context_is_cropped_to_the_last_block_size_tokens():
    _, model, tok, _ = session(["Hello", "How are you today?", "quit"], [" Hi there.\n", " Fine.\n"], block_size=16)
    full = tok.encode("User: Hello\nPythia: Hi there.\n\nUser: How are you today?\nPythia:")
    assert model.calls[1]["prompt"] == full[-16:]


def test_unknown_characters_are_dropped_with_one_notice():
    _, model, tok, out = session(["Heé€llo", "quit"], [" Hi.\n"])
    notices = [line for line in out.splitlines() if "dropped" in line]
    assert len(notices) == 1 and "é" in notices[0] and "€" in notices[0]
    assert tok.decode(model.calls[0]["prompt"]) == "User: Hello\nPythia:"


def test_message_of_only_unknown_characters_is_not_sent():
    _, model, _, out = session(["€€€", "quit"], [])
    assert model.calls == [] and "nothing left to say" in out


def test_commands_change_what_the_model_is_asked():
    lines = ["/temp 0.5", "/topk 7", "/topp 0.9", "/len 5", "Hi", "/topk 0", "/topp 1", "Hi", "quit"]
    _, model, _, out = session(lines, [" a\n", " b\n"])
    first, second = model.calls
    assert (first["temperature"], first["top_k"], first["top_p"], first["n"]) == (0.5, 7, 0.9, 5)
    assert (second["top_k"], second["top_p"]) == (None, None)


@pytest.mark.parametrize("line", ["/temp -1", "/temp x", "/topk -2", "/topp 0", "/topp 1.5", "/len 0",
                                  "/seed -3", "/seed x", "/frobnicate"])
def test_bad_commands_explain_and_change_nothing(line):
    defaults = ChatSettings()
    s, model, _, out = session([line, "Hi", "quit"], [" a\n"])
    assert "(" in out.split(line, 1)[1].splitlines()[1]  # the next line is a parenthesised notice
    assert (s.settings.temperature, s.settings.top_k, s.settings.top_p, s.settings.max_new_tokens) == \
        (defaults.temperature, defaults.top_k, defaults.top_p, defaults.max_new_tokens)
    assert len(model.calls) == 1


def test_seed_makes_the_sampler_repeat():
    _, model, _, _ = session(["/seed 5", "Hi", "/seed 5", "Hi", "/seed 6", "Hi", "quit"], [])
    a, b, c = (call["draw"] for call in model.calls)
    assert a == b == np.random.default_rng(5).integers(1 << 30)
    assert c == np.random.default_rng(6).integers(1 << 30)


def test_reset_forgets_the_conversation():
    s, model, tok, out = session(["Hello", "/reset", "Hi", "quit"], [" Yo.\n", " Hey.\n"])
    assert "context forgotten" in out
    assert tok.decode(model.calls[1]["prompt"]) == "User: Hi\nPythia:"


def test_help_lists_commands_and_current_settings():
    _, _, _, out = session(["/help", "quit"], [], settings=ChatSettings(temperature=0.3, seed=9))
    for cmd in ("/temp", "/topk", "/topp", "/seed", "/len", "/reset", "/clear", "exit"):
        assert cmd in out
    assert "temperature 0.3" in out and "seed 9" in out


def test_ctrl_c_during_a_reply_returns_to_the_prompt():
    s, model, _, out = session(["Hello", "Again", "quit"], [" abcdefgh\n", " ok\n"], raise_after=4)
    assert "pythia> abc\n" in out                    # " abc" streamed before the interrupt
    assert "(reply interrupted)" in out
    assert out.count("you> ") == 3 and len(model.calls) == 2
    assert out.rstrip().endswith("Goodbye.")


def test_end_of_input_leaves_cleanly():
    _, _, _, out = session(["Hello"], [" Hi.\n"])
    assert out.rstrip().endswith("Goodbye.")


def test_ctrl_c_at_the_prompt_twice_leaves():
    class Interrupting(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt

    tok = SimpleTokenizer(VOCAB)
    out = io.StringIO()
    ChatSession(ScriptedModel(tok, []), tok, ui=ConsoleUI(out, color=False, live=False),
                stdin=Interrupting()).run()
    assert "press Ctrl-C again" in out.getvalue() and out.getvalue().rstrip().endswith("Goodbye.")


def test_reply_without_a_stop_runs_to_the_length_limit():
    _, _, _, out = session(["/len 6", "Hi", "quit"], [" abcdefghij"])
    assert "pythia> abcde\n" in out   # 6 tokens: the leading space and five letters


@pytest.mark.parametrize("text", ["Hello there\nUser: x", "ab Pythia: c", "no stop at all", "Use", "\n",
                                  "User:", "x Us y\nz"])
def test_stop_filter_matches_cutting_the_whole_text_at_the_first_stop(text):
    stops = ("\n", "User:", "Pythia:")
    cut = min([i for i in (text.find(s) for s in stops) if i >= 0] or [len(text)])
    for size in (1, 2, 3, 7):  # any chunking gives the same shown text
        f = StopFilter(stops)
        shown, done = "", False
        for k in range(0, len(text), size):
            out, done = f.feed(text[k:k + size])
            shown += out
            if done:
                break
        if not done:
            shown += f.flush()
        assert shown == text[:cut] and done == (cut < len(text))


def test_stream_text_holds_back_an_incomplete_utf8_character():
    class Bytes:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    ids = list("aé€".encode("utf-8"))
    pieces = list(stream_text(Bytes(), iter(ids)))
    assert "".join(pieces) == "aé€" and "\ufffd" not in "".join(pieces)
    assert pieces == ["a", "", "é", "", "", "€"]


@pytest.mark.parametrize("raw", [b"plain ascii", "caf\u00e9 \u20ac \U0001F600 \u4e2d".encode(), b"a\xff\xff\xff\xffb",
                                 b"\xff\xc3\xa9!", b"end\xe2\x82"])
def test_stream_text_equals_decoding_everything_at_once(raw):
    class Bytes:
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    shown = "".join(stream_text(Bytes(), iter(list(raw))))
    assert shown == raw.decode("utf-8", errors="replace")


def test_an_empty_reply_says_so():
    s, _, _, out = session(["Hello", "quit"], [" \nUser: x"])
    assert "pythia> (no answer)\n" in out
    assert s.transcript == "User: Hello\nPythia:\n\n"
