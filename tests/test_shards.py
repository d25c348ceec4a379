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


def test_holdout_by_bytes_holds_out_at_least_that_many_bytes_in_hash_order(sample_text):
    from types import SimpleNamespace

    from lokilm.config import DataConfig
    from lokilm.shards import holdout_cut

    docs = [SimpleNamespace(id=i, text=t) for i, t in _docs(sample_text, n=60)]
    total = sum(len(d.text.encode()) for d in docs)
    data = DataConfig(holdout_bytes=total // 5)
    cut = holdout_cut(data, lambda: docs)
    held = [d for d in docs if split_of(d.id, cut) == "val"]
    held_bytes = sum(len(d.text.encode()) for d in held)
    # just enough documents: removing the last one taken (highest hash among them) falls short of the budget
    largest = max(len(d.text.encode()) for d in held)
    assert total // 5 <= held_bytes < total // 5 + largest
    assert holdout_cut(data, lambda: reversed(docs)) == cut  # the input order does not matter
    # a larger budget only adds documents: the held-out set of a smaller budget stays held out
    bigger = holdout_cut(DataConfig(holdout_bytes=total // 3), lambda: docs)
    assert bigger > cut and all(split_of(d.id, bigger) == "val" for d in held)
    # without holdout_bytes, the fraction is the cut and the documents are not even read
    assert holdout_cut(DataConfig(holdout_fraction=0.07), lambda: 1 / 0) == 0.07


def test_holdout_bytes_above_half_the_corpus_is_refused(sample_text):
    from types import SimpleNamespace

    from lokilm.config import DataConfig
    from lokilm.shards import holdout_cut

    docs = [SimpleNamespace(id=i, text=t) for i, t in _docs(sample_text, n=10)]
    with pytest.raises(LokiError, match="more than half"):
        holdout_cut(DataConfig(holdout_bytes=len(sample_text)), lambda: docs)


def test_window_documents_follow_the_document_index(tmp_path, small_tokenizer, sample_text):
    docs = _docs(sample_text, n=30)
    write_shards(docs, small_tokenizer, tmp_path, 0.0, shard_tokens=4000, progress=False)
    w = TokenWindows(tmp_path, "train", seq_len=32)
    owners = w.documents()
    assert len(owners) == len(w) and np.all(np.diff(owners) >= 0)  # windows run through documents in order
    meta = read_meta(tmp_path)
    first_doc = 0
    for k, shard in enumerate(meta["splits"]["train"]["shards"]):  # spot-check one window per shard
        starts = np.load(tmp_path / shard["file"].replace(".bin", ".idx.npy"))
        i = int(w._starts[k])
        assert owners[i] == first_doc + np.searchsorted(starts, 1, side="right") - 1
        first_doc += len(starts)
    assert owners[-1] < sum(s["documents"] for s in meta["splits"]["train"]["shards"])


def test_tokenize_stage_holds_out_by_bytes(prepared, tmp_path):
    from lokilm import stages
    from lokilm.config import load_config

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "data.inputs=[data/corpus/shakespeare]",
                                            f"tokenizer.path={prepared}/tokenizer.json", "data.holdout_bytes=300000",
                                            "model.vocab_size=512", "train.progress=false"])
    splits = stages.tokenize_stage(cfg)["splits"]
    assert splits["val"]["bytes"] >= 300_000 > splits["val"]["bytes"] - 300_000
    assert stages.tokenize_stage(cfg)["status"] == "skipped (done)"
