"""Tokenizers beyond characters: GPT-2's BPE, the byte-level BPE trainer and its fast twin, the
tokenizers library's JSON format (a character vocabulary written for export, and any byte-level or
byte-fallback BPE read from a Hugging Face folder), a trained BPE written in GPT-2's form, and the
token view."""
