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
from lokilm.tokenizer.adapt import adapt_cl100k
from lokilm.tokenizer.bpe import take_bytes


def _documents_in(cfg: Config) -> tuple[list[str], str]:
    """(inputs, text field) the tokenizer and tokenize stages read: the curated JSONL when curation is on."""
    if cfg.curate.enabled:
        return [str(RunDir(cfg).root / "curate" / "output")], "text"
    return cfg.data.inputs, cfg.data.text_field


def _inputs_key(cfg: Config) -> list[str] | dict:
    """What the inputs are, for skipping a finished stage: the curated output is identified by its report."""
    if not cfg.curate.enabled:
        return cfg.data.inputs
    report = RunDir(cfg).root / "curate" / "report.json"
    if not report.is_file():
        raise DataError(f"curate.enabled is true but {report.parent} holds no finished curation: run `loki curate` first")
    return {"curated": _documents_in(cfg)[0], "report_sha256": sha256_file(report)}


def curate_stage(cfg: Config) -> dict:
    if not cfg.curate.enabled:
        return {"status": "off (curate.enabled is false)"}
    from lokilm.curate.pipeline import curate_stage as curate

    return curate(cfg)


def _train_texts(cfg: Config, stats: ReadStats) -> Iterator[str]:
    """Texts of the training split only: the tokenizer never sees held-out documents."""
    for doc in iter_documents(*_documents_in(cfg), stats=stats):
        if split_of(doc.id, cfg.data.holdout_fraction) == "train":
            yield doc.text


def tokenizer_stage(cfg: Config) -> dict:
    run = RunDir(cfg)
    vocab = cfg.tokenizer.vocab_size or cfg.model.vocab_size
    if cfg.tokenizer.path:
        load_tokenizer(run.tokenizer)  # fail now, clearly, if it is unusable
        return {"status": "given", "path": str(run.tokenizer)}
    t = cfg.tokenizer
    wanted = {"vocab_size": vocab, "inputs": _inputs_key(cfg), "holdout_fraction": cfg.data.holdout_fraction,
              "train_max_bytes": t.train_max_bytes, "min_frequency": t.min_frequency}
    if t.kind == "adapt":
        wanted.update(kind=t.kind, adapt_new_merges=t.adapt_new_merges, adapt_round_fraction=t.adapt_round_fraction)
    done = run.read_summary("tokenizer")
    if done and done.get("inputs") == wanted and run.tokenizer.is_file():
        return {**done, "status": "skipped (done)"}
    start, stats = time.time(), ReadStats()
    texts = take_bytes(_train_texts(cfg, stats), t.train_max_bytes)
    if t.kind == "adapt":
        print(f"tokenizer: adapting cl100k_base to {vocab} tokens on up to {t.train_max_bytes:,} bytes", flush=True)
        tok, report = adapt_cl100k(texts, vocab, t.adapt_new_merges, t.adapt_round_fraction, progress=cfg.train.progress)
        report.pop("rounds")
    else:
        print(f"tokenizer: training a {vocab}-token byte-level BPE on up to {t.train_max_bytes:,} bytes", flush=True)
        tok, report = train_bpe(texts, vocab, t.min_frequency), None
    if stats.documents == 0:
        raise DataError(f"no documents could be read from data.inputs={cfg.data.inputs} "
                        f"(skipped: {stats.skipped or 'nothing'}, examples: {stats.examples})")
    run.root.mkdir(parents=True, exist_ok=True)
    tok.save(str(run.tokenizer))
    summary = {"status": "done", "inputs": wanted, "path": str(run.tokenizer), "vocab_size": tok.get_vocab_size(),
               "seconds": round(time.time() - start, 2), "read": stats.to_dict(), **({"adapt": report} if report else {})}
    run.write_summary("tokenizer", summary)
    return summary


def tokenize_stage(cfg: Config) -> dict:
    run = RunDir(cfg)
    if cfg.data.shards:
        meta = read_meta(run.shards)
        return {"status": "given", "path": str(run.shards), "tokens": meta["splits"]["train"]["tokens"]}
    wanted = {"inputs": _inputs_key(cfg), "text_field": cfg.data.text_field, "holdout_fraction": cfg.data.holdout_fraction,
              "shard_tokens": cfg.data.shard_tokens, "tokenizer_sha256": sha256_file(run.tokenizer)}
    done = run.read_summary("tokenize")
    if done and done.get("inputs") == wanted and (run.shards / "meta.json").is_file():
        return {**done, "status": "skipped (done)"}
    start, stats = time.time(), ReadStats()
    docs = ((d.id, d.text) for d in iter_documents(*_documents_in(cfg), stats=stats))
    meta = write_shards(docs, load_tokenizer(run.tokenizer), run.shards, cfg.data.holdout_fraction,
                        shard_tokens=cfg.data.shard_tokens, progress=cfg.train.progress,
                        tokenizer_sha256=sha256_file(run.tokenizer))
    summary = {"status": "done", "inputs": wanted, "path": str(run.shards), "seconds": round(time.time() - start, 2),
               "splits": meta["splits"], "read": stats.to_dict()}
    run.write_summary("tokenize", summary)
    return summary


def distill_stage(cfg: Config) -> dict:
    """Sequence-mode KD needs its teacher caches before training; a finished cache is only checked, not redone."""
    if not cfg.distill.enabled:
        return {"status": "off (distill.enabled is false)"}
    if cfg.distill.mode != "sequence":
        return {"status": f"live ({cfg.distill.mode} mode: the teachers run during training)"}
    from lokilm.distill.generate import generate_stage as fill_caches

    return {"status": "done", **fill_caches(cfg, progress=cfg.train.progress)}


def train_stage(cfg: Config) -> dict:
    from lokilm.train.trainer import train

    return train(cfg)


def generate_stage(cfg: Config) -> dict:
    from lokilm.generate import Sampler

    sampler = Sampler(cfg.run_dir)
    outputs = []
    for prompt in cfg.generate.prompts:
        print(f"\n--- prompt: {prompt!r}\n{prompt}", end="", flush=True)
        text = sampler.complete(prompt, cfg.generate, stream=lambda s: print(s, end="", flush=True))
        print(flush=True)
        outputs.append({"prompt": prompt, "completion": text})
    summary = {"status": "done", "settings": vars(cfg.generate), "samples": outputs}
    RunDir(cfg).write_summary("generate", summary)
    return summary


def eval_stage(cfg: Config) -> dict:
    from lokilm.eval.run import eval_stage as run_eval

    return run_eval(cfg)


STAGES = {"curate": curate_stage, "tokenizer": tokenizer_stage, "tokenize": tokenize_stage,
          "distill": distill_stage, "train": train_stage, "eval": eval_stage, "generate": generate_stage}


def run_all(cfg: Config) -> dict:
    """`loki run`: every stage in order into one run directory."""
    RunDir(cfg).save_config()
    results = {}
    for name, stage in STAGES.items():
        print(f"== {name}", flush=True)
        results[name] = stage(cfg)
        print(f"== {name}: {results[name].get('status')}", flush=True)
    return results
