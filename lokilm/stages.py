"""The stages of a run, in data-flow order; each writes its outputs and a JSON summary into the run directory.

A stage whose outputs exist and whose inputs have not changed is skipped, so `loki run` can be re-run
after an interruption and picks up where it stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from lokilm.config import Config
from lokilm.data.readers import DataError, ReadStats, iter_documents
from lokilm.fileio import sha256_file
from lokilm.rundir import RunDir
from lokilm.shards import read_meta, split_of, write_shards
from lokilm.tokenizer import load_tokenizer, train_bpe
from lokilm.tokenizer.bpe import take_bytes


def _train_texts(cfg: Config, stats: ReadStats) -> Iterator[str]:
    """Texts of the training split only: the tokenizer never sees held-out documents."""
    for doc in iter_documents(cfg.data.inputs, text_field=cfg.data.text_field, stats=stats):
        if split_of(doc.id, cfg.data.holdout_fraction) == "train":
            yield doc.text


def tokenizer_stage(cfg: Config) -> dict:
    run = RunDir(cfg)
    vocab = cfg.tokenizer.vocab_size or cfg.model.vocab_size
    if cfg.tokenizer.path:
        load_tokenizer(run.tokenizer)  # fail now, clearly, if it is unusable
        return {"status": "given", "path": str(run.tokenizer)}
    wanted = {"vocab_size": vocab, "inputs": cfg.data.inputs, "holdout_fraction": cfg.data.holdout_fraction,
              "train_max_bytes": cfg.tokenizer.train_max_bytes, "min_frequency": cfg.tokenizer.min_frequency}
    done = run.read_summary("tokenizer")
    if done and done.get("inputs") == wanted and run.tokenizer.is_file():
        return {**done, "status": "skipped (done)"}
    start, stats = time.time(), ReadStats()
    print(f"tokenizer: training a {vocab}-token byte-level BPE on up to {cfg.tokenizer.train_max_bytes:,} bytes", flush=True)
    tok = train_bpe(take_bytes(_train_texts(cfg, stats), cfg.tokenizer.train_max_bytes), vocab, cfg.tokenizer.min_frequency)
    if stats.documents == 0:
        raise DataError(f"no documents could be read from data.inputs={cfg.data.inputs} "
                        f"(skipped: {stats.skipped or 'nothing'}, examples: {stats.examples})")
    run.root.mkdir(parents=True, exist_ok=True)
    tok.save(str(run.tokenizer))
    summary = {"status": "done", "inputs": wanted, "path": str(run.tokenizer), "vocab_size": tok.get_vocab_size(),
               "seconds": round(time.time() - start, 2), "read": stats.to_dict()}
    run.write_summary("tokenizer", summary)
    return summary


def tokenize_stage(cfg: Config) -> dict:
    run = RunDir(cfg)
    if cfg.data.shards:
        meta = read_meta(run.shards)
        return {"status": "given", "path": str(run.shards), "tokens": meta["splits"]["train"]["tokens"]}
    wanted = {"inputs": cfg.data.inputs, "text_field": cfg.data.text_field, "holdout_fraction": cfg.data.holdout_fraction,
              "shard_tokens": cfg.data.shard_tokens, "tokenizer_sha256": sha256_file(run.tokenizer)}
    done = run.read_summary("tokenize")
    if done and done.get("inputs") == wanted and (run.shards / "meta.json").is_file():
        return {**done, "status": "skipped (done)"}
    start, stats = time.time(), ReadStats()
    docs = ((d.id, d.text) for d in iter_documents(cfg.data.inputs, text_field=cfg.data.text_field, stats=stats))
    meta = write_shards(docs, load_tokenizer(run.tokenizer), run.shards, cfg.data.holdout_fraction,
                        shard_tokens=cfg.data.shard_tokens, progress=cfg.train.progress)
    summary = {"status": "done", "inputs": wanted, "path": str(run.shards), "seconds": round(time.time() - start, 2),
               "splits": meta["splits"], "read": stats.to_dict()}
    run.write_summary("tokenize", summary)
    return summary


def train_stage(cfg: Config) -> dict:
    from lokilm.train.trainer import train

    return train(cfg)


def generate_stage(cfg: Config) -> dict:
    from lokilm.generate import generate_from_run

    outputs = []
    for prompt in cfg.generate.prompts:
        print(f"\n--- prompt: {prompt!r}\n{prompt}", end="", flush=True)
        text = generate_from_run(cfg.run_dir, prompt, cfg.generate, stream=lambda s: print(s, end="", flush=True))
        print(flush=True)
        outputs.append({"prompt": prompt, "completion": text})
    summary = {"status": "done", "settings": vars(cfg.generate), "samples": outputs}
    RunDir(cfg).write_summary("generate", summary)
    return summary


STAGES = {"tokenizer": tokenizer_stage, "tokenize": tokenize_stage, "train": train_stage, "generate": generate_stage}


def run_all(cfg: Config) -> dict:
    """`loki run`: every stage in order into one run directory."""
    RunDir(cfg).save_config()
    results = {}
    for name, stage in STAGES.items():
        print(f"== {name}", flush=True)
        results[name] = stage(cfg)
        print(f"== {name}: {results[name].get('status')}", flush=True)
    return results
