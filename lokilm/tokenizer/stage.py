"""The tokenizer stage: build the run's tokenizer.json (a fresh BPE, or cl100k adapted) from its training split."""

from __future__ import annotations

import time

from lokilm.config import Config
from lokilm.data.inputs import inputs_key, split_cut, train_texts
from lokilm.data.readers import DataError, ReadStats
from lokilm.rundir import RunDir
from lokilm.tokenizer.adapt import adapt_cl100k
from lokilm.tokenizer.bpe import load_tokenizer, take_bytes, train_bpe


def tokenizer_stage(cfg: Config) -> dict:
    run = RunDir(cfg)
    vocab = cfg.tokenizer.vocab_size or cfg.model.vocab_size
    if cfg.tokenizer.path:
        load_tokenizer(run.tokenizer)  # fail now, clearly, if it is unusable
        return {"status": "given", "path": str(run.tokenizer)}
    t = cfg.tokenizer
    cut = split_cut(cfg)
    wanted = {"vocab_size": vocab, "inputs": inputs_key(cfg), "holdout_cut": cut,
              "train_max_bytes": t.train_max_bytes, "min_frequency": t.min_frequency}
    if t.kind == "adapt":
        wanted.update(kind=t.kind, adapt_new_merges=t.adapt_new_merges, adapt_round_fraction=t.adapt_round_fraction)
    done = run.finished("tokenizer", wanted, run.tokenizer)
    if done:
        return done
    start, stats = time.time(), ReadStats()
    texts = take_bytes(train_texts(cfg, stats, cut), t.train_max_bytes)
    if t.kind == "adapt":
        print(f"tokenizer: adapting cl100k_base to {vocab} tokens on up to {t.train_max_bytes:,} bytes", flush=True)
        tok, report = adapt_cl100k(texts, vocab, t.adapt_new_merges, t.adapt_round_fraction, progress=cfg.train.progress)
        report.pop("rounds")
    else:
        print(f"tokenizer: training a {vocab}-token byte-level BPE on up to {t.train_max_bytes:,} bytes", flush=True)
        tok, report = train_bpe(texts, vocab, t.min_frequency), None
    if stats.documents == 0:
        raise DataError(f"no documents could be read from {cfg.data.inputs if not cfg.curate.enabled else run.curated} "
                        f"(skipped: {stats.skipped or 'nothing'}, examples: {stats.examples})")
    run.root.mkdir(parents=True, exist_ok=True)
    tok.save(str(run.tokenizer))
    summary = {"status": "done", "inputs": wanted, "path": str(run.tokenizer), "vocab_size": tok.get_vocab_size(),
               "seconds": round(time.time() - start, 2), "read": stats.to_dict(), **({"adapt": report} if report else {})}
    run.write_summary("tokenizer", summary)
    return summary
