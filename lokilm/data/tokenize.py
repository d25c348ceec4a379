"""The tokenize stage: the run's documents into train/val token shards (lokilm/shards.py)."""

from __future__ import annotations

import time

from lokilm.config import Config
from lokilm.data.inputs import documents_in, inputs_key, split_cut
from lokilm.data.readers import DataError, ReadStats, iter_documents
from lokilm.fileio import sha256_file
from lokilm.rundir import RunDir
from lokilm.shards import read_meta, write_shards
from lokilm.tokenizer import load_tokenizer


def tokenize_stage(cfg: Config) -> dict:
    run = RunDir(cfg)
    if cfg.data.shards:
        meta = read_meta(run.shards)
        return {"status": "given", "path": str(run.shards), "tokens": meta["splits"]["train"]["tokens"]}
    tok = load_tokenizer(run.tokenizer)  # a missing tokenizer: a clear error before anything is read
    tokenizer_sha256 = sha256_file(run.tokenizer)
    cut = split_cut(cfg)
    wanted = {"inputs": inputs_key(cfg), "text_field": cfg.data.text_field, "holdout_cut": cut,
              "shard_tokens": cfg.data.shard_tokens, "tokenizer_sha256": tokenizer_sha256}
    done = run.finished("tokenize", wanted, run.shards / "meta.json")
    if done:
        return done
    start, stats = time.time(), ReadStats()
    docs = ((d.id, d.text) for d in iter_documents(*documents_in(cfg), stats=stats))
    meta = write_shards(docs, tok, run.shards, cut, shard_tokens=cfg.data.shard_tokens, progress=cfg.train.progress,
                        tokenizer_sha256=tokenizer_sha256)
    if not meta["splits"]["train"]["tokens"]:
        raise DataError(f"tokenize: no training tokens from {documents_in(cfg)[0]} ({stats.documents} documents read, "
                        f"skipped: {stats.skipped or 'nothing'}); check data.inputs (and the curation report)")
    summary = {"status": "done", "inputs": wanted, "path": str(run.shards), "seconds": round(time.time() - start, 2),
               "splits": meta["splits"], "read": stats.to_dict()}
    run.write_summary("tokenize", summary)
    return summary
