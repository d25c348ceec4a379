"""The byte-level model's table of every token's bytes (lokilm/model/byte_level.py reads it; the tokenizer owns
what its tokens are, so the model package needs no tokenizer)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lokilm.errors import LokiError
from lokilm.model.byte_level import END, FIRST_SPECIAL, MAX_SPECIAL, PAD
from lokilm.tokenizer.bpe import _bytes_to_unicode  # GPT-2's byte <-> character map of ByteLevel tokens


def byte_table(tok, vocab_size: int, byte_context: int) -> tuple[Tensor, Tensor]:
    """The chunk of every token id, (vocab_size, byte_context) symbols: its bytes, END if it is shorter than the
    chunk, PAD after; a special token is its own symbol and END; ids the tokenizer does not have are just END.
    Also the token id of each special symbol (-1: none). Raises LokiError if a token does not fit."""
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    special = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    if len(special) > MAX_SPECIAL:
        raise LokiError(f"the tokenizer has {len(special)} special tokens; the byte-level model has room for {MAX_SPECIAL}")
    table = np.full((vocab_size, byte_context), PAD, dtype=np.int64)
    table[:, 0] = END
    specials = np.full(MAX_SPECIAL, -1, dtype=np.int64)
    for k, idx in enumerate(sorted(special.values())):
        specials[k] = idx
        table[idx, :2] = [FIRST_SPECIAL + k, END]
    longest = max((len(t) for t in tok.get_vocab() if t not in special), default=0)
    if longest > byte_context:
        raise LokiError(f"the tokenizer's longest token has {longest} bytes, more than model.byte_context="
                        f"{byte_context}: raise model.byte_context to at least {longest}")
    for token, idx in tok.get_vocab().items():
        if token in special:
            continue
        if idx >= vocab_size:
            raise LokiError(f"token id {idx} is outside model.vocab_size={vocab_size}")
        data = [byte_of[c] for c in token]
        table[idx, :len(data)] = data
        if len(data) < byte_context:
            table[idx, len(data)] = END
    return torch.from_numpy(table), torch.from_numpy(specials)
