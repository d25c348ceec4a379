"""Error bars and paired tests for per-item scores: standard errors, (clustered) bootstrap intervals, p-values."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

_CHUNK = 100  # bootstrap replicates drawn at once (a replicate of 10k items is 80 kB of indices)


def _replicates(values: np.ndarray, clusters: np.ndarray | None, iters: int, seed: int) -> np.ndarray:
    """Bootstrap replicates of the mean of `values`; with `clusters`, whole clusters are resampled (the
    items of one MMLU subject are not independent draws), and each replicate is its items' mean."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        sums, counts = values, np.ones_like(values)
    else:
        _, ids = np.unique(clusters, return_inverse=True)
        sums, counts = np.bincount(ids, weights=values), np.bincount(ids).astype(float)
    out = []
    for done in range(0, iters, _CHUNK):
        draw = rng.integers(0, len(sums), size=(min(_CHUNK, iters - done), len(sums)))
        out.append(sums[draw].sum(1) / counts[draw].sum(1))
    return np.concatenate(out)


def summarise(values, clusters=None, iters: int = 1000, seed: int = 0) -> dict:
    """Mean, standard error and bootstrap 95% interval of per-item scores (clustered if `clusters`)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return {"value": None, "stderr": None, "ci95": None, "n": 0}
    reps = _replicates(x, None if clusters is None else np.asarray(clusters), iters, seed) if n > 1 else np.full(1, x.mean())
    # clustered: the bootstrap's spread is the honest standard error; otherwise the textbook one
    se = float(reps.std(ddof=1)) if clusters is not None and len(reps) > 1 else (float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"value": float(x.mean()), "stderr": se, "ci95": [float(lo), float(hi)], "n": n}


def paired(a, b, clusters=None, iters: int = 1000, seed: int = 0) -> dict:
    """B minus A on the same items: the mean delta, its bootstrap 95% interval and a two-sided p-value.

    0/1 scores get the exact McNemar test (a binomial test on the items where exactly one model is
    right); other scores a sign-flip permutation test on the per-item deltas.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = b - a
    out = summarise(d, clusters, iters, seed)
    out = {"delta": out["value"], "stderr": out["stderr"], "ci95": out["ci95"], "n": out["n"]}
    if len(d) == 0:
        return {**out, "p_value": None, "test": None}
    if set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}:
        b_only, a_only = int(((b == 1) & (a == 0)).sum()), int(((a == 1) & (b == 0)).sum())
        p = 1.0 if b_only + a_only == 0 else float(sps.binomtest(b_only, b_only + a_only, 0.5).pvalue)
        return {**out, "p_value": p, "test": "mcnemar-exact", "b_only": b_only, "a_only": a_only}
    return {**out, "p_value": sign_flip_p(d, iters * 10, seed, clusters), "test": "sign-flip"}


def sign_flip_p(d: np.ndarray, iters: int, seed: int = 0, clusters=None) -> float:
    """Two-sided p-value of mean(d) under the null that each delta's sign is a coin flip; with `clusters`,
    one coin per cluster (the windows of one held-out document are not independent draws)."""
    d = np.asarray(d, dtype=float)
    n, observed = len(d), abs(d.mean())
    if observed == 0:
        return 1.0
    if clusters is not None:  # flipping a cluster flips all its items: flip the cluster sums
        d = np.bincount(np.unique(np.asarray(clusters), return_inverse=True)[1], weights=d)
    rng = np.random.default_rng(seed)
    hits = 0
    for done in range(0, iters, _CHUNK):
        signs = rng.choice([-1.0, 1.0], size=(min(_CHUNK, iters - done), len(d)))
        hits += int((np.abs((signs * d).sum(1)) / n >= observed - 1e-12).sum())
    return (hits + 1) / (iters + 1)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of several p-values (one per variant of an ablation): the family-wise
    error stays at most alpha whatever the dependence between the tests."""
    order = sorted(p_values, key=p_values.get)
    m, running, out = len(order), 0.0, {}
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[name]))  # adjusted p-values never decrease
        out[name] = running
    return out


def t_interval(values) -> dict:
    """Mean and Student-t 95% interval of a few numbers (per-seed deltas: the seed-to-seed view)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return {"mean": float(x.mean()) if len(x) else None, "sd": None, "ci95": None, "n": len(x)}
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.975, len(x) - 1)) * sd / math.sqrt(len(x))
    return {"mean": float(x.mean()), "sd": sd, "ci95": [float(x.mean() - half), float(x.mean() + half)], "n": len(x)}


def paired_average(pairs: list[tuple], iters: int = 1000, seed: int = 0) -> dict:
    """Delta of the unweighted average over benchmarks. `pairs` holds (a, b, clusters or None) per benchmark;
    each benchmark's paired deltas are resampled on their own (by cluster where given)."""
    deltas = [(np.asarray(b, float) - np.asarray(a, float), c) for a, b, c in pairs]
    point = float(np.mean([d.mean() for d, _ in deltas]))
    reps = sum(_replicates(d, None if c is None else np.asarray(c), iters, seed + k)
               for k, (d, c) in enumerate(deltas)) / len(deltas)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    # two-sided bootstrap p-value: how often the replicates, recentred on 0, fall as far out as the delta
    p = float(((np.abs(reps - point) >= abs(point) - 1e-12).sum() + 1) / (iters + 1)) if point else 1.0
    return {"delta": point, "stderr": float(reps.std(ddof=1)), "ci95": [float(lo), float(hi)], "p_value": p,
            "test": "paired-bootstrap"}
