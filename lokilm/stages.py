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
    """`loki run`: every stage in order into one run directory. Under torchrun (several ranks), rank 0 alone
    runs the stages before training while the others wait, every rank trains, and rank 0 alone runs the
    stages after it, so no two processes ever write the same stage's files."""
    from lokilm.parallel.dist import env_world_size

    if env_world_size() > 1:
        return _run_all_ranks(cfg)
    RunDir(cfg).save_config()
    results = {}
    for name in STAGES:
        results[name] = _stage(name, cfg)
    return results


def _stage(name: str, cfg: Config) -> dict:
    print(f"== {name}", flush=True)
    result = STAGES[name](cfg)
    print(f"== {name}: {result.get('status')}", flush=True)
    return result


def _run_all_ranks(cfg: Config) -> dict:
    from lokilm.parallel.dist import env_rank, init_distributed, run_on_main

    before = list(STAGES)[:list(STAGES).index("train")]
    after = list(STAGES)[list(STAGES).index("train") + 1:]
    results: dict = {}

    def prepare() -> None:
        RunDir(cfg).save_config()
        for name in before:
            results[name] = _stage(name, cfg)

    init_distributed(cfg.train.device, cfg.train.fsdp)  # the group training will use (train() closes it)
    try:
        run_on_main(prepare)
    except BaseException:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    results["train"] = _stage("train", cfg) if env_rank() == 0 else STAGES["train"](cfg)
    if env_rank() == 0:
        for name in after:
            results[name] = _stage(name, cfg)
    return results
