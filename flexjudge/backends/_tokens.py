"""Per-tokenizer tables of the transformers backend: each token's text and bytes, and the logit biases.

Each is a pass over the whole vocabulary (150k tokens for Qwen), so each is built once per tokenizer and
kept in a small `BoundedCache` shared by every backend on that tokenizer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from flexjudge.backends._cache import BoundedCache
from flexjudge.backends.engines import TokenizerView

if TYPE_CHECKING:
    import torch

__all__ = ["biases", "token_bytes", "token_texts"]

_texts: BoundedCache[tuple[Any, ...], list[str]] = BoundedCache(4)
_biases: BoundedCache[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = BoundedCache(8)


def token_texts(tok: TokenizerView) -> list[str]:
    """Each token's text by id ("" for special tokens and ids past the tokenizer), built once."""

    def build() -> list[str]:
        texts = [""] * tok.width
        for token, token_id in tok.hf.get_vocab().items():
            if token_id < tok.width and token_id not in tok.special:
                texts[token_id] = tok.hf.convert_tokens_to_string([token])
        return texts

    return _texts.get_or_build((tok.key, tok.width), build)[0]


def token_bytes(tok: TokenizerView) -> list[bytes]:
    """Each token's bytes by id (b"" for special tokens). Byte-level BPE vocabularies (Qwen, GPT-2,
    Llama 3) spell bytes as printable characters, so a token may hold part of a character: its text
    would be a replacement character. SentencePiece byte tokens are "<0xNN>"."""
    backend = getattr(tok.hf, "backend_tokenizer", None)
    byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
    to_byte = _byte_level_decoder() if byte_level else {}
    added = set(tok.hf.get_added_vocab())
    texts = token_texts(tok)
    out = [b""] * tok.width
    for token, token_id in tok.hf.get_vocab().items():
        if token_id >= tok.width or token_id in tok.special:
            continue
        if byte_level and token not in added and all(c in to_byte for c in token):
            out[token_id] = bytes(to_byte[c] for c in token)
        elif _BYTE_TOKEN.fullmatch(token):
            out[token_id] = bytes([int(token[3:5], 16)])
        else:
            out[token_id] = texts[token_id].encode()
    return out


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character -> byte table (the inverse of GPT-2's `bytes_to_unicode`)."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in kept]
    table = {chr(b): b for b in kept}
    table.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return table


def biases(tok: TokenizerView, closing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive logit vectors (free text, under a constraint), built once per tokenizer and bias.

    Under a constraint, tokens holding control characters are banned (JSON strings cannot carry them raw,
    and xgrammar lets them through in length-bounded strings); special tokens other than the stop tokens
    are banned everywhere; `closing` favours tokens that close strings and containers."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        inf = float("-inf")
        # Ids past the tokenizer (a padded embedding matrix) are no tokens at all.
        free = [inf] * tok.width
        constrained = [inf] * tok.width
        texts = token_texts(tok)
        for token_id in tok.hf.get_vocab().values():
            if token_id >= tok.width:
                continue
            if token_id in tok.stops or token_id not in tok.special:
                free[token_id] = constrained[token_id] = 0.0
            if token_id in tok.special:
                continue
            text = texts[token_id]
            if any(ord(c) < 0x20 for c in text):
                constrained[token_id] = inf
            elif closing and text.startswith('"'):
                constrained[token_id] = closing
            elif closing and text[:1] in ("]", "}"):
                constrained[token_id] = closing / 3
        return torch.tensor(free), torch.tensor(constrained)

    return _biases.get_or_build((tok.key, tok.width, tok.stops, closing), build)[0]
