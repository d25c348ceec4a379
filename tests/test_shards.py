import numpy as np
import pytest

from lokilm.errors import LokiError
from lokilm.shards import ShuffledOrder, TokenWindows, read_meta, split_of, write_shards
from lokilm.tokenizer import decode, eot_id


def _docs(sample_text, n=40):
    chunk = len(sample_text) // n
    return [(f"doc{i}", sample_text[i * chunk:(i + 1) * chunk]) for i in range(n)]


def test_shards_hold_every_document_and_split_by_hash(tmp_path, small_tokenizer, sample_text):
    docs = _docs(sample_text)
    meta = write_shards(docs, small_tokenizer, tmp_path, holdout_fraction=0.2, shard_tokens=5000, progress=False)
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == len(docs)
    assert splits["val"]["documents"] == sum(split_of(i, 0.2) == "val" for i, _ in docs) > 0
    assert len(splits["train"]["shards"]) > 1  # shard_tokens forced several shards
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == sum(len(t.encode()) for _, t in docs)
    # the token stream decodes back to the documents, in order, separated by EOT
    train_docs = [t for i, t in docs if split_of(i, 0.2) == "train"]
    eot = eot_id(small_tokenizer)
    stream = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=meta["dtype"]) for s in splits["train"]["shards"]])
    pieces = np.split(stream, np.flatnonzero(stream == eot) + 1)
    assert [decode(small_tokenizer, p[:-1].tolist()) for p in pieces if len(p)] == train_docs
    idx = np.load(tmp_path / "train_00000.idx.npy")
    assert idx[0] == 0 and np.all(np.diff(idx) > 0)


def test_windows_are_shifted_pairs_within_shards(tmp_path, small_tokenizer, sample_text):
    meta = write_shards(_docs(sample_text), small_tokenizer, tmp_path, 0.1, shard_tokens=3000, progress=False)
    w = TokenWindows(tmp_path, "train", seq_len=64)
    expected = sum((s["tokens"] - 1) // 64 for s in meta["splits"]["train"]["shards"])
    assert len(w) == expected
    first = np.fromfile(tmp_path / "train_00000.bin", dtype=meta["dtype"])
    assert np.array_equal(w[1], first[64:129])
    assert w.batch([0, 1]).shape == (2, 65)


def test_order_is_a_permutation_per_epoch_and_reproducible():
    order = ShuffledOrder(10, seed=3)
    epoch0 = [order[k] for k in range(10)]
    epoch1 = [order[k] for k in range(10, 20)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    assert [ShuffledOrder(10, seed=3)[k] for k in range(15, 20)] == epoch1[5:]
    assert [ShuffledOrder(10, seed=4)[k] for k in range(10)] != epoch0


def test_bad_shard_folders(tmp_path, small_tokenizer, sample_text):
    with pytest.raises(LokiError, match="run `loki tokenize` first"):
        read_meta(tmp_path)
    write_shards(_docs(sample_text, 4), small_tokenizer, tmp_path, 0.0, progress=False)
    with pytest.raises(LokiError, match="fewer than one window"):
        TokenWindows(tmp_path, "val", 64)
    with open(tmp_path / "train_00000.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(LokiError, match="truncated"):
        TokenWindows(tmp_path, "train", 64)
    with pytest.raises(LokiError, match="no training tokens"):
        write_shards([], small_tokenizer, tmp_path / "empty", 0.1, progress=False)
