"""Tests for the byte-level model (lokilm/model/byte_level.py, lokilm/byte_generate.py): the token-to-bytes table,
bits per byte over bytes, generation that round-trips Unicode, training and resuming."""

import math

import pytest
import torch

from lokilm.config import GenerateConfig, load_config
from lokilm.errors import LokiError
from lokilm.eval.bpb import bits_per_byte
from lokilm.byte_generate import complete_bytes, generate_bytes
from lokilm.model import Transformer
from lokilm.model.byte_level import END, FIRST_SPECIAL, PAD, chunk_bytes
from lokilm.tokenizer.byte_table import byte_table
from lokilm.model.config import ModelConfig
from lokilm.tokenizer import encode, eot_id, token_byte_lengths
from resume_check import trains_and_resumes

pytestmark = pytest.mark.usefixtures("one_thread")

UNICODE = ["naïve café — 日本語のテキスト 🎉👩‍👩‍👧", "Ελληνικά, русский, עברית, العربية", "tab\tnul\x00 e\u0301 \U0010fffd",
           "   spaces   and\r\nnewlines\n\n"]


def byte_model(tok, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=512, n_layer=2, n_head=2, d_model=48, d_ff=96, context_length=64,
                                input="bytes", byte_context=16, byte_d_model=32, byte_n_head=2, byte_n_layer=1,
                                tie_embeddings=True), **kw})
    model = Transformer(cfg)
    model.init_weights()
    model.tok_embeddings.set_table(*byte_table(tok, cfg.vocab_size, cfg.byte_context))
    return model


@pytest.mark.parametrize("text", UNICODE)
def test_the_byte_table_gives_back_the_exact_utf8_of_any_text(small_tokenizer, text):
    table, _ = byte_table(small_tokenizer, 512, 16)
    ids = encode(small_tokenizer, text)
    assert b"".join(chunk_bytes(table[i]) for i in ids) == text.encode("utf-8")
    lengths = token_byte_lengths(small_tokenizer)
    assert all(table[i, lengths[i]] == END for i in ids if lengths[i] < 16)  # every chunk ends with END


def test_special_tokens_are_their_own_symbol(small_tokenizer):
    table, specials = byte_table(small_tokenizer, 512, 16)
    eot = eot_id(small_tokenizer)
    assert table[eot, :3].tolist() == [FIRST_SPECIAL, END, PAD] and specials[0] == eot
    assert table[511, :2].tolist() == [END, PAD] or small_tokenizer.get_vocab_size() > 511


def test_a_token_longer_than_the_byte_context_is_refused(small_tokenizer):
    with pytest.raises(LokiError, match=r"raise model.byte_context to at least \d+"):
        byte_table(small_tokenizer, 512, 3)


def test_bits_per_byte_counts_every_byte_and_the_end_of_each_token(small_tokenizer, sample_text):
    model = byte_model(small_tokenizer).eval()
    ids = torch.tensor([encode(small_tokenizer, sample_text[5000:7000])[:65]])
    x, y = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        per_token = model(x, y, reduction="none")
        mean = model(x, y)
    lengths = token_byte_lengths(small_tokenizer)
    symbols = int(sum(min(16, lengths[t] + 1) for t in y[0].tolist()))  # bytes + END (unless the chunk is full)
    torch.testing.assert_close(per_token.sum() / symbols, mean)

    class Windows:  # one window, in the shape bits_per_byte reads
        def __len__(self):
            return 1

        def batch(self, _):
            return ids.numpy()

    bpb = bits_per_byte(model, Windows(), lengths, 1, 1, torch.device("cpu"))
    assert bpb == pytest.approx(float(per_token.sum()) / math.log(2) / int(lengths[y[0].numpy()].sum()), rel=1e-6)
    assert bpb > 8  # an untrained model: worse than uniform over 256 bytes, END included


def test_the_byte_model_has_no_token_logits(small_tokenizer):
    with pytest.raises(LokiError, match="no token logits"):
        byte_model(small_tokenizer)(torch.zeros(1, 3, dtype=torch.long))


def test_byte_ends_are_smaller_than_a_bpe_embedding_and_head():
    cfg = load_config("configs/stlm-byte.yaml").model
    with torch.device("meta"):
        byte, bpe = Transformer(cfg), Transformer(ModelConfig(**{**cfg.__dict__, "input": "tokens"}))
    ends = byte.num_params() - sum(p.numel() for p in byte.layers.parameters()) - cfg.d_model
    bpe_ends = cfg.vocab_size * cfg.d_model  # tied embedding and head
    assert ends < bpe_ends and byte.num_params() < bpe.num_params()


def test_generation_round_trips_unicode(small_tokenizer):
    """A byte model that has learnt one Unicode string writes it back byte for byte, through multi-byte
    characters split over tokens, and stops at the end-of-text token."""
    text = "naïve 日本語 🎉👩‍👧"
    eot = eot_id(small_tokenizer)
    ids = torch.tensor([[eot] + encode(small_tokenizer, text) + [eot]])
    model = byte_model(small_tokenizer, n_layer=1, byte_context=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.004:
            break
    model.eval()
    greedy = GenerateConfig(max_new_tokens=60, temperature=0.0)
    streamed = []
    assert complete_bytes(model, small_tokenizer, "", greedy, stream=streamed.append) == text
    assert "".join(streamed) == text and "\ufffd" not in "".join(streamed)
    chunks = list(generate_bytes(model, [eot], greedy, stop_id=eot))
    assert b"".join(chunks) == text.encode() and len(chunks) == ids.shape[1] - 2


def test_a_byte_model_with_early_exit_is_refused():
    with pytest.raises(LokiError, match="model.early_exit: is for token models"):
        load_config("configs/stlm-byte.yaml", ["model.early_exit=true"])


def test_the_byte_model_trains_and_resumes(make_cfg, tmp_path):
    records = trains_and_resumes(make_cfg, tmp_path, "model.input=bytes", "model.byte_context=16",
                                 "model.byte_d_model=16", "model.byte_n_head=2", "model.byte_n_layer=1")
    assert 1.0 < records[12]["val_bpb"] < 12.0
