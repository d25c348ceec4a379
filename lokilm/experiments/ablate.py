"""`loki ablate ABLATION.yaml`: every variant x seed of one config trained on the same data and token budget,
each in its own run directory, scored on the same held-out windows, and compared with the reference.

The file:
    config: configs/tiny.yaml                  # every variant starts from this config
    run_dir: runs/ablate-positions
    seeds: [1, 2, 3]                           # train.seed of each run
    overrides: {train.max_steps: 600}          # applied to every variant (optional)
    variants:                                  # name -> overrides; the first is the reference
      alibi: {}
      rope: {model.position: rope}
    benchmarks: quick                          # optional: also evaluate (and compare) this eval preset
    windows: 0                                 # held-out windows scored (0: all of them)
    jobs: 1                                    # runs trained at once (each gets cpu_count / jobs threads)

The tokenizer and shards are made once in run_dir and shared by every run through tokenizer.path and
data.shards (a variant that changes data.*, tokenizer.*, curate.* or model.vocab_size gets its own, in
run_dir/data-VARIANT). A finished run is not trained again and an interrupted one resumes; a run directory
made with a different config is refused. The comparison (lokilm/eval/stats.py) pairs the per-window deltas,
averaged over the seeds, on the same windows: mean delta, bootstrap 95% interval and sign-flip p-value, both
by held-out document, then Holm's correction over the variants; beside it, each seed's own delta and the
seed-to-seed spread of every variant (the noise floor). Results: ablation.json, ablation.md and the plots.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lokilm.config import Config, ConfigError, load_config, set_value, to_dict
from lokilm.errors import LokiError
from lokilm.fileio import write_json
from lokilm.rundir import RunDir

KEYS = ("config", "run_dir", "seeds", "overrides", "variants", "benchmarks", "windows", "jobs")
DATA_KEYS = ("data.", "tokenizer.", "curate.", "model.vocab_size")  # a variant changing these needs its own data
# keys a run may change between sessions without becoming a different experiment
FREE_KEYS = ("train.max_steps", "train.halt_at_step", "train.progress", "train.tensorboard", "train.trackers",
             "train.device", "eval.")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Ablation:
    config: str
    run_dir: str
    variants: dict[str, dict]
    seeds: list[int] = field(default_factory=lambda: [1])
    overrides: dict = field(default_factory=dict)
    benchmarks: str | None = None
    windows: int = 0
    jobs: int = 1
    base: Config | None = None  # a config already loaded (e.g. with command-line overrides) instead of `config`

    @property
    def reference(self) -> str:
        return next(iter(self.variants))


@dataclass
class Run:
    variant: str
    seed: int
    cfg: Config
    data_cfg: Config  # where its tokenizer and shards are made

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"


def load_ablation(path: str | Path, overrides: list[str] = ()) -> Ablation:
    """Read and check an ablation file; `overrides` (key=value) join its `overrides` (e.g. run_dir=... or
    train.max_steps=...: `run_dir` moves the whole ablation)."""
    path = Path(path)
    if not path.is_file():
        raise LokiError(f"ablation file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LokiError(f"ablation file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LokiError(f"ablation file {path} must hold a mapping (config, run_dir, seeds, variants, ...)")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise LokiError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    for key in ("config", "run_dir", "variants"):
        if key not in data:
            raise LokiError(f"{path}: `{key}` is missing")
    variants = data["variants"]
    if not isinstance(variants, dict) or not variants:
        raise LokiError(f"{path}: `variants` must map variant names to overrides, the first being the reference")
    for name, over in variants.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise LokiError(f"{path}: variant name {name!r} must be letters, digits, '-', '_' or '.' (it names folders)")
        if over is not None and not isinstance(over, dict):
            raise LokiError(f"{path}: variant {name!r} must be a mapping of overrides like {{model.position: rope}}")
    seeds = data.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise LokiError(f"{path}: `seeds` must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise LokiError(f"{path}: `seeds` repeats a seed: {seeds}")
    shared = data.get("overrides") or {}
    if not isinstance(shared, dict):
        raise LokiError(f"{path}: `overrides` must be a mapping like {{train.max_steps: 600}}")
    shared = dict(shared)
    run_dir = str(data["run_dir"])
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LokiError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=200)")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if key == "run_dir":
            run_dir = str(value)
        else:
            shared[key] = value
    for key, kind, low in (("windows", int, 0), ("jobs", int, 1)):
        value = data.get(key, low)
        if not isinstance(value, kind) or isinstance(value, bool) or value < low:
            raise LokiError(f"{path}: `{key}` must be an integer >= {low}, got {value!r}")
    bench = data.get("benchmarks")
    if bench is not None and not isinstance(bench, str):
        raise LokiError(f"{path}: `benchmarks` must be an eval preset name such as quick, got {bench!r}")
    ab = Ablation(config=str(data["config"]), run_dir=run_dir, variants={k: dict(v or {}) for k, v in variants.items()},
                  seeds=seeds, overrides=shared, benchmarks=bench, windows=data.get("windows", 0),
                  jobs=data.get("jobs", 1))
    plan(ab)  # every variant's config is checked now, before anything runs
    return ab


def _apply(cfg: Config, overrides: dict, where: str) -> None:
    try:
        for key, value in overrides.items():
            set_value(cfg, str(key), value)
        cfg.validate()
    except ConfigError as e:
        raise LokiError(f"{where}: {e}") from None


def parent_config(ab: Ablation) -> Config:
    cfg = copy.deepcopy(ab.base) if ab.base is not None else load_config(ab.config)
    _apply(cfg, ab.overrides, "overrides")
    cfg.run_dir = ab.run_dir
    if ab.benchmarks:
        cfg.eval.preset = ab.benchmarks
    return cfg


def _own_data(overrides: dict) -> bool:
    return any(str(k).startswith(DATA_KEYS) for k in overrides)


def plan(ab: Ablation) -> list[Run]:
    """Every run of the ablation, in order (variant by variant, seed by seed), with its full config."""
    from lokilm.distill.cache import cache_root

    parent = parent_config(ab)
    root = RunDir(parent).root
    runs = []
    for variant, over in ab.variants.items():
        data_cfg = parent
        if _own_data(over):
            data_cfg = copy.deepcopy(parent)
            _apply(data_cfg, over, f"variant {variant}")
            data_cfg.run_dir = str(root / f"data-{variant}")
        for seed in ab.seeds:
            cfg = copy.deepcopy(parent)
            _apply(cfg, over, f"variant {variant}")
            data = RunDir(data_cfg)
            cfg.tokenizer.path, cfg.data.shards = str(data.tokenizer), str(data.shards)
            cfg.curate.enabled = False
            cfg.distill.cache_dir = str(cache_root(data_cfg))
            cfg.train.seed = seed
            run = Run(variant, seed, cfg, data_cfg)
            cfg.run_dir = str(RunDir(parent).child(run.name))
            runs.append(run)
    return runs


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_experiment(run: Run) -> None:
    """A run directory that already holds a run of another config is not silently resumed or reused."""
    saved = RunDir(run.cfg).config_file
    if not saved.is_file():
        return
    old, new = _flat(yaml.safe_load(saved.read_text()) or {}), _flat(to_dict(run.cfg))
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
              and k != "run_dir" and not k.startswith(FREE_KEYS)]
    if differ:
        k = differ[0]
        raise LokiError(f"{saved.parent} was trained with {k}={old.get(k)!r}, this ablation asks for {new.get(k)!r}: "
                        "delete that run directory or give the ablation another run_dir")


def status(run: Run) -> str:
    """finished / partial (step N) / new."""
    from lokilm.checkpoint import latest_checkpoint

    rd = RunDir(run.cfg)
    done = rd.read_summary("train")
    ckpt = latest_checkpoint(rd.checkpoints) if rd.checkpoints.is_dir() else None
    if done and done.get("status") == "finished" and ckpt and ckpt.step == done.get("step") >= run.cfg.train.max_steps:
        return "finished"
    return f"partial (step {ckpt.step})" if ckpt else "new"


def dry_run(ab: Ablation) -> str:
    runs = plan(ab)
    lines = [f"ablation in {ab.run_dir}: {len(ab.variants)} variants x {len(ab.seeds)} seeds = {len(runs)} runs "
             f"(reference: {ab.reference})", "", "| run | variant | seed | overrides | data | status |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        over = _fmt(ab.variants[run.variant]) or ("(reference)" if run.variant == ab.reference else "-")
        lines.append(f"| {run.cfg.run_dir} | {run.variant} | {run.seed} | {over} | {run.data_cfg.run_dir} | {status(run)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- running

def _prepare_data(cfgs: list[Config]) -> None:
    from lokilm import stages

    for cfg in cfgs:
        RunDir(cfg).save_config()
        for name in ("curate", "tokenizer", "tokenize"):
            print(f"== {name} ({cfg.run_dir}): {stages.STAGES[name](cfg).get('status')}", flush=True)


def _train_one(cfg_dict: dict, threads: int | None) -> dict:
    """One run, in this process or a worker of the pool (spawned: no torch state is inherited)."""
    import torch

    from lokilm.config import from_dict
    from lokilm.train.trainer import train

    if threads:
        torch.set_num_threads(threads)
    cfg = from_dict(cfg_dict)
    with RunDir(cfg).lock("ablate"):  # nor may a `loki train` of this run start beside it
        return train(cfg)


def _train_all(todo: list[Run], jobs: int) -> None:
    if jobs <= 1 or len(todo) <= 1:
        for run in todo:
            print(f"== train {run.name} -> {run.cfg.run_dir}", flush=True)
            _train_one(to_dict(run.cfg), None)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    print(f"== training {len(todo)} runs, {jobs} at once with {threads} threads each", flush=True)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for run in todo:
            d = to_dict(run.cfg)
            d["train"]["progress"] = False  # several progress bars on one terminal are unreadable
            futures[run.name] = pool.submit(_train_one, d, threads)
        for name, fut in futures.items():
            fut.result()  # re-raises a run's error (a LokiError stays one)
            print(f"== trained {name}", flush=True)


def _scores(run: Run, windows: int) -> dict:
    """The run's per-window held-out scores, kept in the run directory for the checkpoint they came from."""
    import json

    from lokilm.checkpoint import latest_checkpoint
    from lokilm.experiments.heldout import well_formed, window_scores

    rd = RunDir(run.cfg)
    path = rd.root / "heldout_windows.json"
    ckpt = latest_checkpoint(rd.checkpoints)
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
        except ValueError:
            kept = None
        if isinstance(kept, dict) and well_formed(kept) and ckpt and kept.get("checkpoint") == str(ckpt.path) and kept.get("asked") == windows:
            return kept
    scores = {**window_scores(rd.root, windows, run.cfg.train.device, run.cfg.eval.batch_size), "asked": windows}
    write_json(path, scores)
    return scores


def ablate(ab: Ablation) -> dict:
    """Train what is not finished, score every run, compare, and write ablation.json / .md and the plots. The
    caller holds the ablation folder's lock (`loki ablate`, `loki distill experiment`)."""
    start = time.time()
    runs = plan(ab)
    for run in runs:
        check_same_experiment(run)
    root = RunDir(parent_config(ab)).root
    root.mkdir(parents=True, exist_ok=True)
    data_cfgs = list({r.data_cfg.run_dir: r.data_cfg for r in runs}.values())
    _prepare_data(data_cfgs)
    if any(r.cfg.distill.enabled for r in runs):
        from lokilm import stages

        for run in runs:  # sequence-mode teacher caches; a cache shared by several runs is filled once
            stages.distill_stage(run.cfg)
    todo = [r for r in runs if status(r) != "finished"]
    skipped = [r.name for r in runs if r not in todo]
    if skipped:
        print(f"== finished already, not trained again: {', '.join(skipped)}", flush=True)
    _train_all(todo, ab.jobs)
    scores = {}
    for run in runs:
        print(f"== held-out windows: {run.name}", flush=True)
        scores[run.name] = _scores(run, ab.windows)
    bench = _benchmarks(ab, runs) if ab.benchmarks else None
    result = summarise(ab, runs, scores, bench)
    result["trained"], result["skipped"] = [r.name for r in todo], skipped
    result["wall_s"] = round(time.time() - start, 1)
    write_json(root / "ablation.json", result)
    from lokilm.report.plots import ablation_plots

    result["plots"] = ablation_plots(result, root)
    write_json(root / "ablation.json", result)
    (root / "ablation.md").write_text(markdown(result))
    print((root / "ablation.md").read_text(), flush=True)
    return result


def _benchmarks(ab: Ablation, runs: list[Run]) -> dict:
    """The eval preset on every run, and each variant against the reference of the same seed."""
    from lokilm.eval.compare import compare_runs
    from lokilm.eval.run import eval_stage

    for run in runs:
        print(f"== eval {ab.benchmarks}: {run.name}", flush=True)
        eval_stage(run.cfg)
    by = {(r.variant, r.seed): r for r in runs}
    out = {}
    for variant in list(ab.variants)[1:]:
        out[variant] = {}
        for seed in ab.seeds:
            a, b = by[(ab.reference, seed)].cfg, by[(variant, seed)].cfg
            out[variant][str(seed)] = compare_runs(a.run_dir, b.run_dir, ab.benchmarks, a.eval.bootstrap_iters,
                                                   a.eval.seed)
    return out


# ---------------------------------------------------------------- statistics

def summarise(ab: Ablation, runs: list[Run], scores: dict, bench: dict | None = None) -> dict:
    """Per-run bits per byte (with its standard error), the noise floor, and each variant against the reference."""
    from lokilm.experiments.heldout import items
    from lokilm.eval import stats

    parent = parent_config(ab)
    iters, seed = parent.eval.bootstrap_iters, parent.eval.seed
    per_run, x = {}, {}
    for run in runs:
        s = scores[run.name]
        x[run.name] = items(s)
        summary = stats.summarise(x[run.name], s["documents"], iters, seed)
        rd = RunDir(run.cfg)
        train = rd.read_summary("train") or {}
        per_run.setdefault(run.variant, {})[str(run.seed)] = {
            "run_dir": str(rd.root), "bpb": summary["value"], "stderr": summary["stderr"], "windows": s["windows"],
            "documents": len(set(s["documents"])), "step": train.get("step"), "tokens": train.get("tokens"),
            "elapsed_s": train.get("elapsed_s")}
    spread = {}
    for variant, seeds in per_run.items():
        values = [v["bpb"] for v in seeds.values()]
        spread[variant] = {"mean": float(np.mean(values)),
                           "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None, "values": values}
    n_seeds = len(ab.seeds)
    floor = spread[ab.reference]["sd"]
    noise = {"sd": floor, "variant_sds": {k: v["sd"] for k, v in spread.items()}, "seeds": n_seeds}
    if floor is not None:
        # a difference of means over n seeds each, judged against the seed spread (two-sided t, 2n - 2 df)
        from scipy import stats as sps

        noise["detectable_between_seeds"] = float(sps.t.ppf(0.975, 2 * n_seeds - 2) * floor * math.sqrt(2 / n_seeds))
    comparisons = {}
    ref_runs = {r.seed: r for r in runs if r.variant == ab.reference}
    for variant in list(ab.variants)[1:]:
        var_runs = {r.seed: r for r in runs if r.variant == variant}
        paired_ok = all(var_runs[s].data_cfg is ref_runs[s].data_cfg for s in ab.seeds)
        per_seed = {str(s): per_run[variant][str(s)]["bpb"] - per_run[ab.reference][str(s)]["bpb"] for s in ab.seeds}
        seed_view = stats.t_interval(list(per_seed.values()))
        if paired_ok:
            ref = np.mean([x[ref_runs[s].name] for s in ab.seeds], axis=0)
            var = np.mean([x[var_runs[s].name] for s in ab.seeds], axis=0)
            docs = scores[ref_runs[ab.seeds[0]].name]["documents"]
            test = stats.paired(ref, var, docs, iters, seed)
            comparisons[variant] = {"delta_bpb": test["delta"], "ci": test["ci95"], "p_value": test["p_value"],
                                    "stderr": test["stderr"], "test": f"{test['test']} by document, "
                                    f"{test['n']} windows x {n_seeds} seeds",
                                    "detectable": 1.96 * test["stderr"] if test["stderr"] is not None else None}
        else:  # another tokenizer: no common windows to pair on; only the seeds speak
            from scipy import stats as sps

            a, b = spread[ab.reference]["values"], spread[variant]["values"]
            p = float(sps.ttest_ind(b, a, equal_var=False).pvalue) if n_seeds > 1 else 1.0
            comparisons[variant] = {"delta_bpb": spread[variant]["mean"] - spread[ab.reference]["mean"],
                                    "ci": seed_view["ci95"], "p_value": 1.0 if math.isnan(p) else p, "stderr": None,
                                    "test": "welch t over seeds (another tokenizer: no common windows)",
                                    "detectable": None}
        comparisons[variant].update(per_seed=per_seed, seed_ci=seed_view["ci95"],
                                    seeds_same_sign=_same_sign(list(per_seed.values())))
        if bench:
            comparisons[variant]["benchmarks"] = {s: _bench_summary(c) for s, c in bench[variant].items()}
    if comparisons:
        for variant, p in stats.holm({k: v["p_value"] for k, v in comparisons.items()}).items():
            comparisons[variant]["p_holm"] = p
    return {"config": ab.config, "run_dir": ab.run_dir, "reference": ab.reference, "variants": ab.variants,
            "overrides": ab.overrides, "seeds": ab.seeds, "windows": scores[runs[0].name]["windows"],
            "held_out_documents": len(set(scores[runs[0].name]["documents"])), "runs": per_run,
            "spread": spread, "noise_floor": noise, "comparisons": comparisons,
            **({"benchmarks_preset": ab.benchmarks} if bench else {})}


def _same_sign(deltas: list[float]) -> str:
    return f"{max(sum(d > 0 for d in deltas), sum(d < 0 for d in deltas))}/{len(deltas)}"


def _bench_summary(c: dict) -> dict:
    avg = c.get("average") or {}
    return {"average_delta": avg.get("delta"), "ci": avg.get("ci95"), "p_value": avg.get("p_value"),
            "rows": c["rows"]}


# ---------------------------------------------------------------- the write-up

def markdown(result: dict) -> str:
    ref, seeds = result["reference"], result["seeds"]
    lines = [f"# Ablation: {result['run_dir']}", "",
             f"Every variant from `{result['config']}`" + (f" with {_fmt(result['overrides'])}" if result["overrides"] else "")
             + f"; seeds {', '.join(map(str, seeds))}; held-out bits per byte on {result['windows']} windows "
             f"({result['held_out_documents']} documents); lower is better. Reference: **{ref}**.", "",
             "| variant | overrides | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd over seeds |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for variant, per_seed in result["runs"].items():
        cells = [f"{per_seed[str(s)]['bpb']:.4f} ± {per_seed[str(s)]['stderr']:.4f}" for s in seeds]
        sp = result["spread"][variant]
        sd = f"{sp['sd']:.4f}" if sp["sd"] is not None else "-"
        lines.append(f"| {variant} | {_fmt(result['variants'][variant]) or '(reference)'} | " + " | ".join(cells)
                     + f" | {sp['mean']:.4f} | {sd} |")
    nf = result["noise_floor"]
    lines += ["", "± is the standard error over held-out windows (bootstrap by document)."]
    if nf["sd"] is not None:
        lines += ["", f"Noise floor: the reference's bits per byte vary by sd {nf['sd']:.4f} from seed to seed; with "
                  f"{nf['seeds']} seeds a difference of means must exceed {nf['detectable_between_seeds']:.4f} to stand "
                  "out of that spread (two-sided t, p < 0.05)."]
    if result["comparisons"]:
        lines += ["", f"## Against {ref} (variant minus reference)", "",
                  "| variant | delta bpb | 95% CI | p | p (Holm) | per seed | same sign | seed 95% CI | test |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for variant, c in result["comparisons"].items():
            ci = f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]" if c["ci"] else "-"
            sci = f"[{c['seed_ci'][0]:+.4f}, {c['seed_ci'][1]:+.4f}]" if c["seed_ci"] else "-"
            per = ", ".join(f"{d:+.4f}" for d in c["per_seed"].values())
            lines.append(f"| {variant} | {c['delta_bpb']:+.4f} | {ci} | {c['p_value']:.3g} | {c['p_holm']:.3g} | "
                         f"{per} | {c['seeds_same_sign']} | {sci} | {c['test']} |")
        lines += ["", "The window test pairs the same held-out windows (per-window deltas averaged over the seeds); it "
                  "says whether these models differ on this text, and the seed columns say whether the difference "
                  "is larger than what another seed alone would give."]
        for variant, c in result["comparisons"].items():
            for seed, b in (c.get("benchmarks") or {}).items():
                if b["average_delta"] is not None:
                    lo, hi = b["ci"]
                    lines.append(f"- {variant}, seed {seed}, {result.get('benchmarks_preset')} headline average: "
                                 f"{100 * b['average_delta']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}], p = {b['p_value']:.3g}")
    if result.get("plots"):
        lines += ["", *[f"![{name}]({Path(p).name})" for name, p in result["plots"].items()]]
    lines += ["", f"Wall time {result.get('wall_s', 0):.0f} s; trained now: {', '.join(result.get('trained', [])) or 'none'}."]
    return "\n".join(lines) + "\n"


def _fmt(over: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in over.items())
