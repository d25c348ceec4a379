"""Byte-level BPE tokenizers with HF `tokenizers`: train one, load one, and measure token byte lengths."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lokilm.errors import LokiError

EOT = "<|endoftext|>"  # separates documents in the token stream


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Learn a byte-level BPE of `vocab_size` tokens (the 256 bytes, merges, and the EOT token).

    Byte-level with no normaliser and no prefix space, so decode(encode(text)) == text for any string.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise LokiError(f"tokenizer file {path} does not exist (run `loki tokenizer train` first, or set tokenizer.path)")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception for a malformed file
        raise LokiError(f"tokenizer file {path} could not be loaded: {e}") from None
    if tok.token_to_id(EOT) is None:
        raise LokiError(f"tokenizer {path} has no {EOT} token, which lokilm uses to separate documents")
    # The literal text "<|endoftext|>" inside a document is text, not the document separator: otherwise any
    # document could split itself (and a web page quoting it would).
    tok.encode_special_tokens = True
    return tok


def eot_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOT)


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    return tok.decode(list(ids), skip_special_tokens=False)


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits-per-byte.

    In a byte-level BPE every token is a fixed byte string, so summing these over a token stream gives
    exactly the byte length of the text it encodes.
    """
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, idx in tok.get_vocab().items():
        if token in special:
            continue
        if not all(c in byte_of for c in token):
            raise LokiError(f"token {token!r} is not in the byte-level alphabet: is this a byte-level BPE?")
        lengths[idx] = len(token)
    return lengths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel tokens are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def take_bytes(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Yield texts until about `max_bytes` UTF-8 bytes have been yielded (the tokenizer's training sample)."""
    seen = 0
    for text in texts:
        if seen >= max_bytes:
            return
        seen += len(text.encode("utf-8", "surrogatepass"))
        yield text
