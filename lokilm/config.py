"""Typed configuration: dataclass defaults, YAML presets that say only what differs, key=value overrides."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lokilm.curate.settings import CurateConfig
from lokilm.distill.settings import DistillConfig
from lokilm.errors import ConfigError, LokiError, check  # noqa: F401 (ConfigError: re-exported)
from lokilm.model.config import ModelConfig


# where train.trackers can send metrics (lokilm/train/trackers.py opens each)
TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class SourceConfig:
    """One named source of a data mixture (lokilm/data/mixture.py)."""
    name: str = ""  # letters, digits, - and _: also its shard folder's name (shards/<name>/)
    inputs: list[str] = field(default_factory=list)  # files or folders, read like data.inputs
    weight: float = 1.0  # its share of the training tokens (weights that do not sum to 1 are normalised)
    text_field: str | None = None  # the JSONL/Parquet key holding the text; None: data.text_field
    # with curate.enabled: false passes this source to the tokenizer as it is (e.g. generated textbook text);
    # the curated sources go through one curation together (dedup and decontamination across all of them)
    curate: bool = True


@dataclass
class PhaseConfig:
    """One phase of data.phases: the mixture's weights for the training tokens before until_tokens."""
    until_tokens: int | None = None  # None: to the end of training (the last phase only)
    weights: dict[str, float] = field(default_factory=dict)  # source name -> weight; empty: data.mixture's


@dataclass
class DataConfig:
    # Files or folders of raw text: .txt (Project Gutenberg boilerplate is stripped), WikiExtractor
    # <doc> files, .jsonl; each may be compressed (.xz, .bz2, .gz, .zst). Relative paths are read
    # from the working directory.
    inputs: list[str] = field(default_factory=lambda: ["data/corpus"])
    text_field: str = "text"  # the JSONL key holding the document text
    holdout_fraction: float = 0.02  # share of documents kept out of training (chosen by hash of id)
    # > 0: instead, hold out documents (in hash-of-id order) until they hold this many UTF-8 bytes: a held-out
    # set of a known size, large enough to compare models (lokilm/shards.py holdout_cut)
    holdout_bytes: int = 0
    shard_tokens: int = 100_000_000  # tokens per shard file
    shards: str | None = None  # train on this shard folder instead of the run's own shards/
    # Named sources with weights, instead of inputs: one shard folder per source, and a training sampler that
    # gives each its share of the tokens exactly (lokilm/data/mixture.py, lokilm/train/mixture_data.py)
    mixture: list[SourceConfig] = field(default_factory=list)
    # Optional schedule of the mixture's weights by training tokens, e.g. machine-generated text early on
    phases: list[PhaseConfig] = field(default_factory=list)


@dataclass
class TokenizerConfig:
    vocab_size: int | None = None  # None: the model's vocabulary size
    path: str | None = None  # use this tokenizer JSON instead of training one
    # bpe: learn a fresh byte-level BPE; adapt: prune cl100k_base to vocab_size on the sample (tokenizer/adapt.py)
    kind: Literal["bpe", "adapt"] = "bpe"
    train_max_bytes: int = 200_000_000  # sample of the training documents the tokenizer is learnt from
    min_frequency: int = 2
    adapt_new_merges: int = 0  # adapt: this many of the vocab_size tokens are new merges learnt on the sample
    adapt_round_fraction: float = 0.02  # adapt: share of the vocabulary removed (added) between re-encodings


@dataclass
class SpikeConfig:
    enabled: bool = True
    window: int = 50  # recent losses the statistics are taken over
    min_history: int = 20  # no spike is called before this many steps of history
    zscore: float = 6.0  # loss above mean + zscore * std is a spike...
    min_ratio: float = 1.5  # ...and above min_ratio * mean (guards against a tiny std)
    max_rollbacks: int = 5


@dataclass
class TrainConfig:
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on CUDA, fp32 on CPU. fp8_tensorwise / fp8_rowwise: bf16 with FP8 matmuls in the large
    # linear layers (torchao; GPUs of compute capability 8.9+, e.g. H100); int8: bf16 with int8 mixed-precision
    # matmuls (torchao; for GPUs without FP8, e.g. A100). lokilm/parallel/precision.py says which ran.
    precision: Literal["auto", "bf16", "fp32", "fp8_tensorwise", "fp8_rowwise", "int8"] = "auto"
    optimizer_8bit: bool = False  # AdamW with 8-bit moments (torchao.optim.AdamW8bit)
    # Scale-out (lokilm/parallel/). fsdp auto: FSDP2 when torchrun starts more than one process; true: also
    # in one process; false: never (YAML reads on/off as true/false too)
    fsdp: bool | Literal["auto"] = "auto"
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"  # FSDP gradient reduce-scatter dtype
    activation_checkpointing: Literal["none", "full", "selective"] = "none"  # selective: keep matmul outputs
    checkpoint_format: Literal["auto", "single", "sharded"] = "auto"  # auto: sharded (DCP) when FSDP is on
    compile: bool = False
    max_steps: int = 1000
    micro_batch_size: int = 8  # sequences per forward pass
    batch_size: int = 64  # sequences per optimiser step (a multiple of micro_batch_size)
    # Batch-size warmup: grow from batch_warmup_start sequences to batch_size over the first
    # batch_warmup_tokens training tokens (0: off); the lr is rescaled with the batch.
    batch_warmup_tokens: int = 0
    batch_warmup_start: int | None = None
    lr_batch_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    # muon: torch.optim.Muon on the hidden matrices, AdamW on embeddings, head and norms (lokilm/train/optimizer.py)
    optimizer: Literal["adamw", "muon"] = "adamw"
    muon_momentum: float = 0.95
    # Dropout schedule (Liu et al. 2023; lokilm/train/dropout.py): model.dropout is the peak value; early/late:
    # on before/after `until` (a fraction of max_steps), linear_up: 0 to peak by `until`, triangle: up to the
    # peak at `until`, then down to 0 at the end.
    dropout_schedule: Literal["constant", "early", "late", "linear_up", "triangle"] = "constant"
    dropout_schedule_until: float = 0.5
    # Early-exit loss curriculum (LayerSkip; with model.early_exit): all = every exit each step, rotational = every
    # early_exit_rotation-th layer in turn, gradual = exits switched on from the last layer down over training.
    early_exit_curriculum: Literal["all", "rotational", "gradual"] = "all"
    early_exit_rotation: int = 2
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # WSD: the final share of steps spent decaying
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: off
    log_every: int = 1
    eval_every: int = 100  # held-out bits per byte (0: only at the end)
    eval_batches: int = 16
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    halt_at_step: int | None = None  # stop after this step, resumable (for time-limited jobs)
    tensorboard: bool = True  # false: no trackers at all (metrics.jsonl only)
    # where metrics go besides metrics.jsonl (lokilm/train/trackers.py): tensorboard, wandb (offline), mlflow
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True
    spike: SpikeConfig = field(default_factory=SpikeConfig)


@dataclass
class GenerateConfig:
    prompts: list[str] = field(default_factory=lambda: ["Once upon a time"])
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 0


@dataclass
class EvalConfig:
    # Benchmark preset (lokilm.eval.presets): quick (a fixed subset, minutes on CPU), openllm, lokilm-paper
    preset: str = "quick"
    tasks: list[str] | None = None  # only these tasks of the preset (None: all)
    batch_size: int = 32  # sequences per forward pass when scoring
    bootstrap_iters: int = 1000
    seed: int = 0  # bootstrap resampling
    bpb_windows: int = 64  # held-out windows for bits per byte (0: skip)
    winobias: bool = True
    qualitative: bool = True  # the paper's prompts, generated with the generate settings below
    max_new_tokens: int = 120
    temperature: float = 0.0  # greedy: the same text every time


@dataclass
class Config:
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        m, t = self.model, self.train
        for key, value in [("model.n_head", m.n_head), ("model.d_model", m.d_model)]:
            _check(value > 0, key, f"must be positive, got {value}")  # before anything divides by them
        _check(m.n_kv_head is None or m.n_kv_head > 0, "model.n_kv_head", f"must be positive (or null), got {m.n_kv_head}")
        _validate_numbers(self)
        _check(m.d_model % m.n_head == 0, "model.d_model", f"{m.d_model} is not divisible by model.n_head={m.n_head}")
        kv = m.n_kv_head or m.n_head
        _check(m.n_head % kv == 0, "model.n_kv_head", f"{kv} does not divide model.n_head={m.n_head}")
        _check(m.position != "rope" or (m.d_model // m.n_head) % 2 == 0, "model.position", "rope needs an even head size")
        for key, value in [("model.vocab_size", m.vocab_size), ("model.n_layer", m.n_layer), ("model.d_ff", m.d_ff),
                           ("model.context_length", m.context_length), ("train.max_steps", t.max_steps),
                           ("train.micro_batch_size", t.micro_batch_size), ("train.batch_size", t.batch_size)]:
            _check(value > 0, key, f"must be positive, got {value}")
        _check(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
        _check(t.batch_size % t.micro_batch_size == 0, "train.batch_size",
               f"{t.batch_size} is not a multiple of train.micro_batch_size={t.micro_batch_size}")
        if t.batch_warmup_tokens:
            start = t.batch_warmup_start or t.micro_batch_size
            _check(0 < start <= t.batch_size and start % t.micro_batch_size == 0, "train.batch_warmup_start",
                   f"{start} must be a multiple of train.micro_batch_size={t.micro_batch_size} and at most train.batch_size")
        _check(0.0 <= self.data.holdout_fraction < 1.0, "data.holdout_fraction", "must be in [0, 1)")
        _check(self.data.holdout_bytes >= 0, "data.holdout_bytes", f"must be >= 0 (0: use holdout_fraction), got {self.data.holdout_bytes}")
        _validate_mixture(self)
        for name in t.trackers:  # the packages are checked when training starts (lokilm/train/trackers.py)
            _check(name in TRACKERS, "train.trackers", f"unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
        _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(t.keep_checkpoints >= 2, "train.keep_checkpoints", "must be >= 2 so a corrupt latest checkpoint has a fallback")
        _check(0.0 <= t.dropout_schedule_until <= 1.0, "train.dropout_schedule_until",
               f"must be a fraction of training in [0, 1], got {t.dropout_schedule_until}")
        _check(t.early_exit_rotation > 0, "train.early_exit_rotation", f"must be positive, got {t.early_exit_rotation}")
        _check(0.0 <= t.muon_momentum < 1.0, "train.muon_momentum", f"must be in [0, 1), got {t.muon_momentum}")
        _check(0.0 < t.decay_fraction <= 1.0, "train.decay_fraction", "must be in (0, 1]")
        v = self.tokenizer.vocab_size
        _check(v is None or 256 < v <= m.vocab_size, "tokenizer.vocab_size",
               f"{v} must be above 256 (the byte alphabet) and at most model.vocab_size={m.vocab_size}")
        _check(self.tokenizer.adapt_new_merges >= 0, "tokenizer.adapt_new_merges", "must be >= 0")
        _check(0.0 < self.tokenizer.adapt_round_fraction <= 1.0, "tokenizer.adapt_round_fraction", "must be in (0, 1]")
        m.validate()
        _validate_distill(self.distill)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _validate_numbers(cfg: Config) -> None:
    """Values that would train silently wrong or crash far from the config (a negative grad_clip flips the
    gradients; log_every=0 divides by zero; a NaN lr trains nothing)."""
    t, g, e, d = cfg.train, cfg.generate, cfg.eval, cfg.data
    _check(_finite(t.lr) and t.lr > 0, "train.lr", f"must be a positive number, got {t.lr}")
    _check(_finite(t.grad_clip) and t.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0: off), got {t.grad_clip}")
    _check(_finite(t.min_lr_ratio) and 0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    _check(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    for key, value in [("train.beta1", t.beta1), ("train.beta2", t.beta2)]:
        _check(_finite(value) and 0 <= value < 1, key, f"must be in [0, 1), got {value}")
    _check(_finite(t.eps) and t.eps > 0, "train.eps", f"must be a positive number, got {t.eps}")
    for key, value in [("train.checkpoint_every", t.checkpoint_every), ("train.log_every", t.log_every),
                       ("train.eval_batches", t.eval_batches), ("train.spike.window", t.spike.window),
                       ("train.spike.min_history", t.spike.min_history), ("data.shard_tokens", d.shard_tokens),
                       ("generate.max_new_tokens", g.max_new_tokens), ("eval.batch_size", e.batch_size),
                       ("eval.bootstrap_iters", e.bootstrap_iters), ("eval.max_new_tokens", e.max_new_tokens)]:
        _check(value > 0, key, f"must be positive, got {value}")
    for key, value in [("train.eval_every", t.eval_every), ("train.batch_warmup_tokens", t.batch_warmup_tokens),
                       ("train.spike.max_rollbacks", t.spike.max_rollbacks), ("eval.bpb_windows", e.bpb_windows),
                       ("tokenizer.train_max_bytes", cfg.tokenizer.train_max_bytes),
                       ("tokenizer.min_frequency", cfg.tokenizer.min_frequency)]:
        _check(value >= 0, key, f"must be >= 0, got {value}")
    _check(t.halt_at_step is None or t.halt_at_step > 0, "train.halt_at_step", f"must be positive (or null), got {t.halt_at_step}")
    for key, value in [("generate.temperature", g.temperature), ("eval.temperature", e.temperature)]:
        _check(_finite(value) and value >= 0, key, f"must be a number >= 0 (0 is greedy), got {value}")
    for key, value in [("generate.seed", g.seed), ("train.seed", t.seed)]:  # what torch's generators take
        _check(isinstance(value, int) and -2**63 <= value < 2**64, key, f"must be an integer seed that fits in 64 bits, got {value}")
    _check(g.top_k is None or g.top_k >= 0, "generate.top_k", f"must be >= 0 (0: off), got {g.top_k}")
    _check(g.top_p is None or (_finite(g.top_p) and 0 < g.top_p <= 1), "generate.top_p",
           f"must be in (0, 1] (1: off), got {g.top_p}")


def _normalised(weights: dict[str, float], key: str) -> dict[str, float]:
    """Weights scaled to sum to 1, with a note on stderr when they did not (the config is normalised in place,
    so the run's saved config.yaml holds what was trained on and the note is printed once)."""
    total = sum(weights.values())  # inf for weights near the float limit: they are scaled by the largest first
    if abs(total - 1.0) <= 1e-9:  # float rounding of weights meant to sum to 1: kept as written
        return weights
    top = max(weights.values())
    scaled = {name: w / top for name, w in weights.items()}
    normalised = {name: w / sum(scaled.values()) for name, w in scaled.items()}
    if abs(total - 1.0) > 1e-6:
        shares = ", ".join(f"{name} {w:.4g}" for name, w in normalised.items())
        print(f"loki: note: {key} weights sum to {total:g}, not 1; normalised to {shares}", file=sys.stderr)
    return normalised


def _validate_mixture(cfg: Config) -> None:
    d = cfg.data
    if not d.mixture:
        _check(not d.phases, "data.phases", "needs data.mixture (the named sources the phases weigh)")
        return
    _check(d.inputs == DataConfig().inputs, "data.mixture",
           f"set data.mixture or data.inputs, not both (data.inputs={d.inputs}); a mixture's sources name their inputs")
    names = [s.name for s in d.mixture]
    for i, s in enumerate(d.mixture):
        key = f"data.mixture[{i}]"
        _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", s.name)), f"{key}.name",
               f"{s.name!r} must be a non-empty name of letters, digits, - and _ (it names the source's shard folder)")
        _check(names.count(s.name) == 1, f"{key}.name", f"{s.name!r} names two sources")
        _check(bool(s.inputs), f"{key}.inputs", f"source {s.name!r} names no input files or folders")
        _check(_finite(s.weight) and s.weight > 0, f"{key}.weight",
               f"source {s.name!r}: must be a positive number, got {s.weight}")
    for s, w in zip(d.mixture, _normalised({s.name: s.weight for s in d.mixture}, "data.mixture").values()):
        s.weight = w
    previous = 0
    for i, phase in enumerate(d.phases):
        key = f"data.phases[{i}]"
        last = i == len(d.phases) - 1
        if last:
            _check(phase.until_tokens is None, f"{key}.until_tokens",
                   f"the last phase runs to the end of training: remove its until_tokens ({phase.until_tokens})")
        else:
            _check(phase.until_tokens is not None, f"{key}.until_tokens", "only the last phase may leave it out")
            _check(phase.until_tokens > previous, f"{key}.until_tokens",
                   f"must increase from phase to phase: {phase.until_tokens} after {previous}")
            previous = phase.until_tokens
        for name, w in phase.weights.items():
            close = difflib.get_close_matches(name, names, n=1)
            _check(name in names, f"{key}.weights", f"unknown source {name!r}"
                   + (f"; did you mean {close[0]!r}?" if close else "") + f" (the sources: {', '.join(names)})")
            _check(_finite(w) and w >= 0, f"{key}.weights.{name}", f"must be a number >= 0, got {w}")
        if phase.weights:
            _check(sum(phase.weights.values()) > 0, f"{key}.weights", "give at least one source a positive weight")
            phase.weights = _normalised(phase.weights, key)


def _validate_distill(d: DistillConfig) -> None:
    """Checked whether or not distillation is on, so a bad value fails here rather than deep in a later command
    (every=0 divides by zero; logit_top_k=0 zeroes the teacher's loss, so it wins every minimum)."""
    for key, value in [("distill.every", d.every), ("distill.gen_batch_size", d.gen_batch_size)]:
        _check(value > 0, key, f"must be positive, got {value}")
    for key, value in [("distill.logit_top_k", d.logit_top_k), ("distill.cache_sequences", d.cache_sequences),
                       ("distill.top_k", d.top_k)]:
        _check(value is None or value > 0, key, f"must be positive or null (null: no limit), got {value}")
    _check(0.0 < d.prefix_fraction < 1.0, "distill.prefix_fraction",
           f"must be in (0, 1) so the teacher has a prompt and a tail to continue, got {d.prefix_fraction}")
    _check(d.max_regenerations >= 0, "distill.max_regenerations", f"must be >= 0, got {d.max_regenerations}")
    _check(d.temperature >= 0, "distill.temperature", f"must be >= 0 (0 is greedy), got {d.temperature}")
    _check(d.top_p is None or 0.0 < d.top_p <= 1.0, "distill.top_p", f"must be in (0, 1] (or unset), got {d.top_p}")
    # numpy's seeded generator (the KD-window plan, lokilm.distill.cache.kd_windows) refuses a negative seed: a
    # ValueError traceback from `loki distill generate` and from training's KD batches
    _check(isinstance(d.seed, int) and d.seed >= 0, "distill.seed", f"must be an integer >= 0, got {d.seed}")


_check = check


# ---------------------------------------------------------------- loading and overriding

def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML preset (and the presets it names in `base:`), then key=value overrides."""
    cfg = Config()
    if path is not None:
        for layer in _preset_layers(Path(path)):
            _apply_mapping(cfg, layer, prefix="")
    apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...], section: str | None = None) -> None:
    """The one parser of key=value overrides (every command's): values are YAML; `section` (e.g. "eval") lets a
    command accept its own keys without the prefix. Validates the result."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=200)")
        if section and "." not in key:
            key = f"{section}.{key}"
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        set_value(cfg, key, value)
    cfg.validate()


def _preset_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} includes itself through base:")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config file {path}: base: must be the path of one preset file, got {base!r}")
    layers = _preset_layers(path.parent / base, seen + (path.resolve(),)) if base else []
    return layers + [data]


def _apply_mapping(obj: Any, mapping: dict, prefix: str) -> None:
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        f = _field(obj, str(key), full)
        if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else getattr(obj, f.name)):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a section (mapping), got {value!r}")
            _apply_mapping(getattr(obj, f.name), value, prefix=f"{full}.")
        else:
            setattr(obj, f.name, coerce(value, _hints(obj)[f.name], full))


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    obj: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        f = _field(obj, part, ".".join(parts[: i + 1]))
        obj = getattr(obj, f.name)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section")
    f = _field(obj, parts[-1], dotted)
    if dataclasses.is_dataclass(getattr(obj, f.name)):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted} is a section; set one of its keys (e.g. {dotted}.{dataclasses.fields(getattr(obj, f.name))[0].name}=...)")
        _apply_mapping(getattr(obj, f.name), value, prefix=f"{dotted}.")
        return
    setattr(obj, f.name, coerce(value, _hints(obj)[f.name], dotted))


def _field(obj: Any, name: str, full: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f"; did you mean {full.rsplit('.', 1)[0] + '.' if '.' in full else ''}{close[0]}?" if close else ""
        raise ConfigError(f"unknown config key {full!r}{hint} (known here: {', '.join(fields)})")
    return fields[name]


def _hints(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) a value against a field's type, or raise ConfigError naming the key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is dict:  # e.g. data.phases[i].weights: source name -> weight
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {coerce(k, args[0], key): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):  # an item of a list of sections, e.g. distill.teachers
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        item = tp()
        _apply_mapping(item, value, prefix=f"{key}.")
        return item
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 1e6 in YAML is a float
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else _bad(key, value, "an integer")
            except ValueError:
                pass
        _bad(key, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        _bad(key, value, "a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        _bad(key, value, "a string")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _bad(key: str, value: Any, expected: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    """Rebuild a Config saved by to_dict (as in a run directory's config.yaml)."""
    cfg = Config()
    _apply_mapping(cfg, data, prefix="")
    cfg.validate()
    return cfg
