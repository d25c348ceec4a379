import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lokilm.tokenizer import EOT, decode, encode, eot_id, load_tokenizer, token_byte_lengths, train_bpe


def test_trained_vocabulary_has_the_asked_size_and_eot(small_tokenizer):
    assert small_tokenizer.get_vocab_size() == 512
    assert eot_id(small_tokenizer) is not None


def test_bpe_compresses_real_text(small_tokenizer, sample_text):
    ids = encode(small_tokenizer, sample_text[:20000])
    assert len(sample_text[:20000].encode()) / len(ids) > 1.7  # merges were learnt, not just bytes


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_encode_roundtrip_any_unicode(small_tokenizer, text):
    assert decode(small_tokenizer, encode(small_tokenizer, text)) == text


def test_roundtrip_edge_cases(small_tokenizer):
    for text in ["", " ", "  leading", "trailing  \n\n", "\t\r\n", "日本語のテキスト", "🦊🦊", "e\u0301", EOT + "x"]:
        assert decode(small_tokenizer, encode(small_tokenizer, text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_token_byte_lengths_sum_to_utf8_length(small_tokenizer, text):
    lengths = token_byte_lengths(small_tokenizer)
    ids = encode(small_tokenizer, text.replace(EOT, ""))
    assert int(lengths[ids].sum()) == len(text.replace(EOT, "").encode("utf-8"))


def test_save_and_load(tmp_path, small_tokenizer):
    path = tmp_path / "tok.json"
    small_tokenizer.save(str(path))
    again = load_tokenizer(path)
    assert encode(again, "Fair is foul") == encode(small_tokenizer, "Fair is foul")
    assert np.array_equal(token_byte_lengths(again), token_byte_lengths(small_tokenizer))


def test_load_errors_are_clear(tmp_path):
    import pytest

    from lokilm.errors import LokiError

    with pytest.raises(LokiError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LokiError, match="could not be loaded"):
        load_tokenizer(bad)


def test_training_is_deterministic(sample_text):
    a = train_bpe([sample_text[:50000]], vocab_size=400)
    b = train_bpe([sample_text[:50000]], vocab_size=400)
    assert a.to_str() == b.to_str()
