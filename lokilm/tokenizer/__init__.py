"""Tokenizers: byte-level BPE training, and cl100k_base adapted (pruned) to a target corpus."""

from lokilm.tokenizer.bpe import EOT, decode, encode, eot_id, load_tokenizer, token_byte_lengths, train_bpe

__all__ = ["EOT", "decode", "encode", "eot_id", "load_tokenizer", "token_byte_lengths", "train_bpe"]
