"""Tokenizers beyond characters: GPT-2's BPE, the byte-level BPE trainer and its fast twin, the
tokenizers library's JSON format, a trained BPE written in GPT-2's form, and the token view."""
