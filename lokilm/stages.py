"""The stages of a run, in data-flow order; each stage's body lives in its package, this module only sequences
them. Each writes its outputs and a JSON summary into the run directory.

A stage whose outputs exist and whose inputs have not changed (by content: RunDir.finished) is skipped, so `loki run` can be re-run
after an interruption and picks up where it stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

from lokilm.config import Config
from lokilm.data.tokenize import tokenize_stage
from lokilm.report.report import report_stage
from lokilm.rundir import RunDir
from lokilm.tokenizer.stage import tokenizer_stage


def curate_stage(cfg: Config) -> dict:
    if not cfg.curate.enabled:
        return {"status": "off (curate.enabled is false)"}
    from lokilm.curate.pipeline import curate_stage as curate

    return curate(cfg)


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
          "distill": distill_stage, "train": train_stage, "eval": eval_stage, "generate": generate_stage,
          "report": report_stage}


def run_all(cfg: Config) -> dict:
    """`loki run`: every stage in order into one run directory."""
    RunDir(cfg).save_config()
    results = {}
    for name, stage in STAGES.items():
        print(f"== {name}", flush=True)
        results[name] = stage(cfg)
        print(f"== {name}: {results[name].get('status')}", flush=True)
    return results
