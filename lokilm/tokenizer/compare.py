"""`loki tokenizer compare`: held-out compression of cl100k_base, the adapted vocabulary and a fresh BPE of the same size.

All three see the same thing: the adapted vocabulary and the fresh BPE are built from the same sample of
the training split (tokenizer.train_max_bytes), and measured on the held-out split of each input, so
neither has seen the text it is measured on. Writes tokenizer_compare/{compare.json, compare.md, adapted.json,
bpe.json} in the run directory, and the stage summary stages/tokenizer_compare.json.
"""

from __future__ import annotations

import time

from tokenizers import Tokenizer

from lokilm.config import Config
from lokilm.data.readers import DataError, ReadStats, iter_documents
from lokilm.fileio import write_json
from lokilm.rundir import RunDir
from lokilm.shards import split_of
from lokilm.data.inputs import sources_in, split_cut, train_texts
from lokilm.tokenizer.adapt import adapt_cl100k, cl100k_tokenizer
from lokilm.tokenizer.bpe import encode, take_bytes, train_bpe

HELDOUT_MAX_BYTES = 20_000_000  # per input: enough for stable ratios, bounded for big corpora


def heldout_texts(inputs: list[str], text_field: str, stats: ReadStats, cut: float) -> list[str]:
    docs = iter_documents(inputs, text_field=text_field, stats=stats)
    return list(take_bytes((d.text for d in docs if split_of(d.id, cut) == "val"), HELDOUT_MAX_BYTES))


def measure(tok: Tokenizer, texts: list[str]) -> dict:
    """Bytes per token and tokens per (whitespace-separated) word over `texts`."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    n_tokens = sum(len(encode(tok, t)) for t in texts)
    return {"bytes": n_bytes, "words": n_words, "tokens": n_tokens,
            "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4), "tokens_per_word": round(n_tokens / max(n_words, 1), 4)}


def compare_stage(cfg: Config) -> dict:
    run, t = RunDir(cfg), cfg.tokenizer
    vocab = t.vocab_size or cfg.model.vocab_size
    out = run.tokenizer_compare
    out.mkdir(parents=True, exist_ok=True)
    start, stats, cut = time.time(), ReadStats(), split_cut(cfg)
    sample = list(take_bytes(train_texts(cfg, stats, cut), t.train_max_bytes))
    if not sample:
        raise DataError(f"no training documents could be read from data.inputs={cfg.data.inputs}")
    sample_bytes = sum(len(s.encode("utf-8")) for s in sample)
    print(f"compare: adapting cl100k_base and training a BPE, both {vocab} tokens, on {sample_bytes:,} bytes", flush=True)
    t0, cpu0 = time.time(), time.process_time()  # CPU time too: a shared machine stretches the wall clock
    adapted, report = adapt_cl100k(sample, vocab, t.adapt_new_merges, t.adapt_round_fraction, progress=cfg.train.progress)
    adapt_s, adapt_cpu_s = time.time() - t0, time.process_time() - cpu0
    t0 = time.time()
    fresh = train_bpe(sample, vocab, t.min_frequency)
    bpe_s = time.time() - t0
    adapted.save(str(out / "adapted.json"))
    fresh.save(str(out / "bpe.json"))
    tokenizers = {"cl100k_base": cl100k_tokenizer(), "adapted": adapted, "bpe": fresh}
    # one column per input, or per source of a data mixture
    columns = sources_in(cfg) if cfg.data.mixture else {str(i): ([i], cfg.data.text_field) for i in cfg.data.inputs}
    heldout = {name: heldout_texts(inputs, field, ReadStats(), cut) for name, (inputs, field) in columns.items()}
    heldout = {k: v for k, v in heldout.items() if v}
    if not heldout:
        raise DataError(f"no held-out documents in {list(columns)} "
                        f"(data.holdout_fraction={cfg.data.holdout_fraction}); raise it to compare")
    every = [text for texts in heldout.values() for text in texts]
    results = {name: {"vocab_size": tok.get_vocab_size(), "all": measure(tok, every),
                      **{inp: measure(tok, texts) for inp, texts in heldout.items()}}
               for name, tok in tokenizers.items()}
    summary = {"status": "done", "vocab_size": vocab, "sample_bytes": sample_bytes, "adapt_seconds": round(adapt_s, 1),
               "adapt_cpu_seconds": round(adapt_cpu_s, 1), "bpe_seconds": round(bpe_s, 1),
               "seconds": round(time.time() - start, 1), "results": results, "adapt": report,
               "settings": {"new_merges": t.adapt_new_merges, "round_fraction": t.adapt_round_fraction,
                            "min_frequency": t.min_frequency, "holdout_fraction": cfg.data.holdout_fraction},
               "read": stats.to_dict()}
    write_json(out / "compare.json", summary)
    (out / "compare.md").write_text(markdown_table(results, list(heldout)))
    run.write_summary("tokenizer_compare", summary)
    return summary


def markdown_table(results: dict, inputs: list[str]) -> str:
    head = "| tokenizer | vocab | " + " | ".join(f"bytes/token {i}" for i in inputs) + " | bytes/token all | tokens/word all |"
    rows = [head, "|" + "---|" * (len(inputs) + 4)]
    for name, r in results.items():
        cells = [f"{r[i]['bytes_per_token']:.3f}" for i in inputs]
        rows.append(f"| {name} | {r['vocab_size']:,} | " + " | ".join(cells)
                    + f" | {r['all']['bytes_per_token']:.3f} | {r['all']['tokens_per_word']:.3f} |")
    return "\n".join(rows) + "\n"
