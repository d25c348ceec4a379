"""The figures of `loki report` and `loki ablate`, drawn with matplotlib (no display needed) as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STYLES = ["-", "--", ":", "-."]  # identical variants draw on top of each other: the dashes show both
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return str(path)


def smooth(values, weight: float | None = None) -> np.ndarray:
    """Exponential moving average, bias-corrected so the first points are not pulled towards 0; by default
    lighter on short series, where a heavy average would lag most of the curve."""
    if weight is None:
        weight = float(np.clip(1 - 10 / max(1, len(values)), 0.0, 0.9))
    out, avg = [], 0.0
    for k, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** k))
    return np.asarray(out)


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(r.get("tokens", r["step"]), r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return (np.asarray([t for t, _ in rows], float), np.asarray([v for _, v in rows], float)) if rows else (np.empty(0), np.empty(0))


# ---------------------------------------------------------------- ablations

def ablation_plots(result: dict, root: Path) -> dict[str, str]:
    """Loss curves of every run (one colour per variant) and the deltas against the reference with their
    intervals; returns {title: png path}."""
    from lokilm.train.metrics import read_metrics

    plt = _plt()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (variant, seeds) in enumerate(result["runs"].items()):
        color, style = COLORS[k % len(COLORS)], STYLES[k % len(STYLES)]
        for j, run in enumerate(seeds.values()):
            records = read_metrics(run["run_dir"])
            x, y = _series(records, "loss")
            if len(x):
                ax_loss.plot(x, smooth(y), color=color, ls=style, lw=1.2, alpha=0.8, label=variant if j == 0 else None)
            x, y = _series(records, "val_bpb")
            if len(x):
                ax_val.plot(x, y, color=color, ls=style, lw=1, marker="o", ms=3, alpha=0.8, label=variant if j == 0 else None)
    ax_loss.set(xlabel="tokens", ylabel="training loss (nats, smoothed)", title="Training loss, every seed")
    ax_val.set(xlabel="tokens", ylabel="held-out bits per byte", title="Held-out bits per byte during training")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out = {"loss curves": _save(fig, root / "loss_curves.png")}
    comps = result["comparisons"]
    if comps:
        fig, ax = plt.subplots(figsize=(8, 0.8 + 0.7 * len(comps)))
        names = list(comps)
        for i, name in enumerate(names):
            c = comps[name]
            if c["ci"]:
                lo, hi = c["ci"]
                ax.errorbar([c["delta_bpb"]], [i], xerr=[[c["delta_bpb"] - lo], [hi - c["delta_bpb"]]], fmt="o",
                            color=COLORS[(i + 1) % len(COLORS)], capsize=5, lw=2,
                            label="mean delta, 95% CI (windows)" if i == 0 else None)
            seeds = list(c["per_seed"].values())
            ax.scatter(seeds, [i + 0.18] * len(seeds), marker="x", color="black", s=25,
                       label="each seed's delta" if i == 0 else None)
        floor = result["noise_floor"].get("sd")
        if floor:
            ax.axvspan(-floor, floor, color="grey", alpha=0.15, label=f"± seed sd of {result['reference']} ({floor:.4f})")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(names)), [f"{n}\np={comps[n]['p_holm']:.2g} (Holm)" for n in names])
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.invert_yaxis()
        ax.set(xlabel=f"held-out bits per byte, variant minus {result['reference']} (lower is better)",
               title="Each variant against the reference")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="best")
        out["deltas"] = _save(fig, root / "deltas.png")
    return out


# ---------------------------------------------------------------- one run (`loki report`)

MARKED_EVENTS = ("rollback", "rollback_limit", "resume", "interrupted")


def _step_to_tokens(records: list[dict]):
    steps = np.asarray([r["step"] for r in records if "tokens" in r], float)
    tokens = np.asarray([r["tokens"] for r in records if "tokens" in r], float)
    return lambda s: float(np.interp(s, steps, tokens)) if len(steps) else float(s)


def loss_plot(records: list[dict], events: list[dict], path: Path) -> str | None:
    """Training loss (raw and smoothed) and held-out bits per byte against tokens, rollbacks and resumes marked."""
    x, y = _series(records, "loss")
    xv, yv = _series(records, "val_bpb")
    if not len(x) and not len(xv):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    if len(x):
        ax.plot(x, y, color=COLORS[0], alpha=0.25, lw=0.8, label="training loss")
        ax.plot(x, smooth(y), color=COLORS[0], lw=1.6, label="training loss, smoothed")
    ax.set(xlabel="tokens", ylabel="training loss (nats per token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if len(xv):
        twin = ax.twinx()
        twin.plot(xv, yv, color=COLORS[1], marker="o", ms=4, lw=1.4, label="held-out bits per byte")
        twin.set_ylabel("held-out bits per byte", color=COLORS[1])
        h, lab = twin.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    to_tokens = _step_to_tokens(records)
    seen = set()
    for e in events:
        kind = e.get("event")
        if kind not in MARKED_EVENTS:
            continue
        color = {"rollback": "red", "rollback_limit": "darkred", "resume": "grey", "interrupted": "orange"}[kind]
        ax.axvline(to_tokens(e.get("step", 0)), color=color, ls="--", lw=1, alpha=0.8)
        if kind not in seen:
            seen.add(kind)
            handles.append(plt.Line2D([], [], color=color, ls="--"))
            labels.append(kind)
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    ax.set_title("Loss and held-out bits per byte")
    return _save(fig, path)


def dynamics_plot(records: list[dict], path: Path) -> str | None:
    keys = [("lr", "learning rate"), ("batch_size", "batch size (sequences)"), ("tokens_per_s", "tokens / s"),
            ("grad_norm", "gradient norm (before clipping)")]
    present = [(k, t) for k, t in keys if len(_series(records, k)[0])]
    if not present:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present) + 1, 3))
    for ax, (key, title) in zip(np.atleast_1d(axes), present):
        x, y = _series(records, key)
        ax.plot(x, y, color=COLORS[2], lw=1, alpha=0.5 if key in ("tokens_per_s", "grad_norm") else 1)
        if key in ("tokens_per_s", "grad_norm") and len(y) > 5:
            ax.plot(x, smooth(y), color=COLORS[2], lw=1.6)
        ax.set(title=title, xlabel="tokens")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    return _save(fig, path)


def funnel_plot(stages: list[dict], path: Path) -> str | None:
    """Documents and bytes left after each curation stage."""
    if not stages:
        return None
    plt = _plt()
    names = ["input"] + [s["stage"] for s in stages]
    docs = [stages[0]["documents_in"]] + [s["documents_out"] for s in stages]
    mb = [stages[0]["bytes_in"] / 1e6] + [s["bytes_out"] / 1e6 for s in stages]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.9 + 0.38 * len(names)))
    for ax, values, label, color in ((a, docs, "documents kept", COLORS[0]), (b, mb, "MB kept", COLORS[3])):
        ax.barh(range(len(names)), values, color=color, alpha=0.8)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.0f}" if label.startswith("doc") else f" {v:,.2f}", va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel=label)
        ax.set_xlim(0, max(values) * 1.18 if max(values) else 1)
        ax.grid(alpha=0.3, axis="x")
    a.set_title("Curation funnel: what is left after each stage")
    return _save(fig, path)


def benchmark_plot(ours: dict[str, tuple[float, float]], paper: dict[str, float], path: Path) -> str | None:
    """This run's headline scores (± 1.96 standard errors) beside LokiLM 1.4B's Table 1 figures."""
    if not ours:
        return None
    plt = _plt()
    names = list(paper)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    xs = np.arange(len(names))
    vals = [ours.get(n, (np.nan, 0))[0] for n in names]
    errs = [1.96 * ours.get(n, (0, 0))[1] for n in names]
    ax.bar(xs - 0.2, vals, 0.4, yerr=errs, capsize=4, color=COLORS[0], label="this run (95% interval)")
    ax.bar(xs + 0.2, [paper[n] for n in names], 0.4, color="#bbbbbb", label="LokiLM 1.4B (paper)")
    ax.set_xticks(xs, names)
    ax.set(ylabel="score (%)", title="Benchmarks beside the paper's Table 1")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)
