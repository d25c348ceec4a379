"""The tokenize stage: the run's documents into train/val token shards (lokilm/shards.py); a mixture's sources
each into a shard folder of their own, under one meta.json naming them."""

from __future__ import annotations

import time

from lokilm.config import Config
from lokilm.data.inputs import documents_in, inputs_key, source_documents, sources_in, split_cut
from lokilm.data.readers import DataError, ReadStats, iter_documents
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.rundir import RunDir
from lokilm.shards import read_meta, write_mixture_meta, write_shards
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
    if cfg.data.mixture:
        return _tokenize_mixture(cfg, run, tok, cut, tokenizer_sha256, wanted, start)
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


def _tokenize_mixture(cfg: Config, run: RunDir, tok, cut: float, tokenizer_sha256: str, wanted: dict,
                      start: float) -> dict:
    """One shard folder per source (its train/val split by document hash, as for data.inputs), then the
    mixture's meta.json over them."""
    metas, reads = {}, {}
    for name in sources_in(cfg):
        stats = ReadStats()
        docs = ((d.id, d.text) for d in source_documents(cfg, name, stats))
        try:
            metas[name] = write_shards(docs, tok, run.source_shards[name], cut, shard_tokens=cfg.data.shard_tokens,
                                       progress=cfg.train.progress, tokenizer_sha256=tokenizer_sha256,
                                       require_val=False)
        except LokiError as e:
            raise DataError(f"data.mixture source {name!r}: {e} ({stats.documents} documents read)") from None
        reads[name] = stats.to_dict()
    meta = write_mixture_meta(run.shards, metas)
    summary = {"status": "done", "inputs": wanted, "path": str(run.shards), "seconds": round(time.time() - start, 2),
               "splits": meta["splits"], "sources": meta["sources"], "read": reads}
    run.write_summary("tokenize", summary)
    return summary
