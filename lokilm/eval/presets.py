"""The benchmark presets: which tasks, with how many shots, on which items; and the headline metric of each."""

from __future__ import annotations

from lokilm.errors import LokiError

# task -> number of few-shot examples
PRESETS: dict[str, dict[str, int]] = {
    # Open LLM Leaderboard v1
    "openllm": {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5},
    # the shot counts printed under each benchmark in the LokiLM paper's Table 1 (TruthfulQA as mc2,
    # the leaderboard's metric, which the paper says its numbers come from)
    "lokilm-paper": {"arc_challenge": 10, "hellaswag": 5, "mmlu": 5, "winogrande": 5, "gsm8k": 8, "truthfulqa_mc2": 10},
    # every task zero-shot on a fixed, evenly spread subset (QUICK_ITEMS): a few minutes on CPU for the
    # tiny model, for use during training and in the quickstart
    "quick": {"arc_challenge": 0, "hellaswag": 0, "mmlu": 0, "winogrande": 0, "gsm8k": 0,
              "truthfulqa_mc1": 0, "truthfulqa_mc2": 0},
}

# items per task in the quick preset (MMLU: per subject)
QUICK_ITEMS = {"arc_challenge": 150, "hellaswag": 150, "mmlu": 3, "winogrande": 150, "gsm8k": 5,
               "truthfulqa_mc1": 60, "truthfulqa_mc2": 60}

# Paper Table 1 row -> (task, lm-eval metric key) that the published numbers use
HEADLINE = {
    "ARC-C": ("arc_challenge", "acc_norm,none"),
    "HellaSwag": ("hellaswag", "acc_norm,none"),
    "MMLU": ("mmlu", "acc,none"),
    "Winogrande": ("winogrande", "acc,none"),
    "GSM8K": ("gsm8k", "exact_match,strict-match"),
    "TruthfulQA": ("truthfulqa_mc2", "acc,none"),
}


def preset_tasks(preset: str, only: list[str] | None = None) -> dict[str, int]:
    """The preset's {task: shots}, restricted to `only` if given; a clear error for an unknown name."""
    if preset not in PRESETS:
        raise LokiError(f"unknown eval preset {preset!r} (known: {', '.join(PRESETS)})")
    tasks = PRESETS[preset]
    if only:
        unknown = [t for t in only if t not in tasks]
        if unknown:
            raise LokiError(f"task(s) {', '.join(unknown)} not in preset {preset!r} (it has: {', '.join(tasks)})")
        tasks = {t: n for t, n in tasks.items() if t in only}
    return tasks


def spread(n_items: int, k: int) -> list[int]:
    """k item indices spread evenly over 0..n_items-1 (all of them if k >= n_items): a fixed subset that
    samples every part of a file, not just its first section."""
    if k >= n_items:
        return list(range(n_items))
    return [i * n_items // k for i in range(k)]
