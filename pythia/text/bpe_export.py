"""A BPE trained by `pythia prepare --tokenizer bpe` written in GPT-2's vocab.json + merges.txt form.

The trained tokenizer (pythia.text.bpe_train.ByteBPETokenizer) numbers its tokens by bytes and merges:
ids 0..255 are the bytes 0..255, merge k makes id 256 + k from a (left id, right id) pair, and
`<|endoftext|>` is the last id. GPT-2's files name tokens by strings instead: a token's bytes, each
mapped through bytes_to_unicode (a space becomes 'Ġ'), so

    vocab.json   {string(id): id} for every id; byte b -> id b, `<|endoftext|>` spelled as itself
    merges.txt   merge k as "string(left) string(right)", in rank order k = 0, 1, ...

Applying the lowest-ranked merge first (GPT-2, Hugging Face and pythia.text.bpe.GPT2Tokenizer) then
reproduces ByteBPETokenizer's ids, provided the map id -> string is one to one: a pair of strings
then names exactly one pair of ids, with the same rank, and the string it joins into names the
merge's own id. Byte-level training can give two ids the same bytes (one string reached by two
merge paths); vocab.json cannot hold both, so such a tokenizer is refused, naming the token.
"""
from __future__ import annotations

from ..errors import ConfigError
from .bpe import EOT, GPT2Tokenizer, bytes_to_unicode


def gpt2_strings(tok) -> list[str]:
    """GPT-2's string for every id of a ByteBPETokenizer, in id order; ConfigError when two ids
    spell the same string."""
    byte_char = bytes_to_unicode()
    strings = ["".join(byte_char[b] for b in tok.token_bytes(i)) for i in range(tok.eot_id)] + [EOT]
    first: dict[str, int] = {}
    for i, s in enumerate(strings):
        if s in first:
            raise ConfigError(f"cannot export this BPE: ids {first[s]} and {i} are the same token {s!r} "
                              f"(bytes {tok.token_bytes(i)!r}) and vocab.json holds one id per token; the model "
                              f"still runs in Pythia (chat, generate), or prepare the corpus with another "
                              f"--vocab-size and train again")
        first[s] = i
    return strings


def as_gpt2_tokenizer(tok) -> GPT2Tokenizer:
    """The GPT2Tokenizer (vocab.json + merges.txt content) that encodes as the ByteBPETokenizer tok."""
    strings = gpt2_strings(tok)
    encoder = {s: i for i, s in enumerate(strings)}
    merges = [(strings[a], strings[b]) for a, b in tok.merges]
    return GPT2Tokenizer(encoder, merges, [EOT])
