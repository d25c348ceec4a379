"""A data mixture's training data as a unit: every window slot of the run goes to a source by the mixture's
schedule (lokilm/data/mixture.py), and each source is read in a shuffled, resumable walk of its own."""

from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import torch

from lokilm.data.mixture import Schedule
from lokilm.errors import LokiError
from lokilm.shards import ShuffledOrder, TokenWindows, read_meta
from lokilm.train.units import Step, Unit


class MixtureData(Unit):
    """The batch source of a run with data.mixture, in place of TrainData. Its state (`samples`, windows consumed;
    `taken`, each source's cursor; `counts`, each source's slots in the current phase; the shuffle seed) makes a
    resumed run read exactly the windows an unbroken one would. A source read past its last window starts a new
    shuffled epoch of itself (it is upsampled): said in events.jsonl and in stages/train.json."""
    name = "mixture"

    def __init__(self, windows: dict[str, TokenWindows], schedule: Schedule, micro_batch_size: int, seed: int,
                 device: torch.device, loss_fn, tokens_per_window: int, planned_slots: int, event):
        self.windows, self.schedule, self.micro, self.seed, self.device = windows, schedule, micro_batch_size, seed, device
        self.loss, self.tokens_per_window, self.planned_slots, self.event = loss_fn, tokens_per_window, planned_slots, event
        self.names = list(windows)
        self.samples, self.data_seed = 0, seed
        self.taken, self.counts = [0] * len(self.names), [0] * len(self.names)
        self._orders: dict[str, ShuffledOrder] = {}
        self._plan: tuple[tuple, list[tuple[int, int]], list[int]] | None = None
        self._changed: tuple[list, list] | None = None  # (the checkpoint's phases, the config's), if they differ
        self._resized: dict[str, tuple[int, int]] = {}  # sources whose train windows changed since the checkpoint

    def _order(self, s: int) -> ShuffledOrder:
        name = self.names[s]
        seed = int.from_bytes(hashlib.sha256(f"{self.data_seed}/{name}".encode()).digest()[:8], "big")
        if name not in self._orders or self._orders[name].seed != seed:
            self._orders[name] = ShuffledOrder(len(self.windows[name]), seed)
        return self._orders[name]

    def plan(self, batch_size: int) -> tuple[list[tuple[int, int]], list[int]]:
        """The next `batch_size` slots as (source, window) pairs, and the phase counts after them; nothing moves
        until `consumed`. Made once a step, so each micro-batch (each rank's, under FSDP) reads its part of it."""
        key = (self.samples, batch_size, self.data_seed)
        if self._plan is None or self._plan[0] != key:
            sources, counts = self.schedule.assign(self.samples, self.counts, batch_size)
            taken, rows = list(self.taken), []
            for s in sources:
                rows.append((s, self._order(s)[taken[s]]))
                taken[s] += 1
            self._plan = (key, rows, counts)
        return self._plan[1], self._plan[2]

    def micro_batch(self, step: Step, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.plan(step.batch_size)[0][i * self.micro: (i + 1) * self.micro]
        out = np.empty((len(rows), self.tokens_per_window + 1), dtype=np.int64)
        for s in {s for s, _ in rows}:  # one read (and token-id check) per source
            at = [k for k, (src, _) in enumerate(rows) if src == s]
            out[at] = self.windows[self.names[s]].batch(rows[k][1] for k in at)
        batch = torch.from_numpy(out).to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def consumed(self, step: Step) -> None:
        rows, self.counts = self.plan(step.batch_size)
        for s, _ in rows:
            self.taken[s] += 1
            n = len(self.windows[self.names[s]])
            if self.taken[s] > n and (self.taken[s] - 1) % n == 0:  # its first window of a new epoch
                self.event("source_epoch", step.number, source=self.names[s], epoch=(self.taken[s] - 1) // n + 1)
        self.samples += step.batch_size

    def tokens_by_source(self) -> dict[str, int]:
        return {name: t * self.tokens_per_window for name, t in zip(self.names, self.taken)}

    def epochs_by_source(self) -> dict[str, float]:
        return {name: round(t / len(self.windows[name]), 4) for name, t in zip(self.names, self.taken)}

    def _phases(self) -> list[dict]:
        return [{"start_window": p.start, "end_window": p.end, "weights": dict(zip(self.names, p.weights))}
                for p in self.schedule.phases]

    def start(self, resumed: bool) -> None:
        if resumed:
            return  # said when the run began (a changed mixture is said by before_step)
        planned = self.schedule.planned(self.planned_slots)
        sizes = {name: len(w) for name, w in self.windows.items()}
        self.event("mixture", 0, sources=", ".join(self.names),
                   train_windows=sizes, planned_windows={n: round(p) for n, p in zip(self.names, planned)},
                   phases=[{"start_window": p.start, "weights": dict(zip(self.names, p.weights))}
                           for p in self.schedule.phases])
        for name, p in zip(self.names, planned):
            if p > sizes[name]:
                self.event("source_upsampled", 0, source=name, train_windows=sizes[name], planned_windows=round(p),
                           epochs=round(p / sizes[name], 2))

    def before_step(self, step: Step) -> None:
        from lokilm.parallel.dist import env_rank

        if env_rank() != 0:  # rank 0 says it for all (events.jsonl is rank 0's too)
            self._resized, self._changed = {}, None
        if self._resized:
            resized, self._resized = self._resized, {}
            self.event("mixture_sources_resized", step.number - 1, train_windows=resized)
            print("loki: note: the shards of data.mixture source(s) changed since the checkpoint ("
                  + ", ".join(f"{n}: {a} -> {b} train windows" for n, (a, b) in resized.items())
                  + "); each is read in a new shuffled order from its cursor, so some of its windows may repeat "
                  "and others be skipped", file=sys.stderr)
        if self._changed:  # the first step after a resume with other weights or phases (load_state_dict)
            (old, new), self._changed = self._changed, None
            self.event("mixture_changed", step.number - 1, window=self.samples, checkpoint_phases=old, phases=new)
            print(f"loki: note: data.mixture weights or data.phases changed since the checkpoint (window "
                  f"{self.samples}): it was trained on {_describe(old)}; it continues with {_describe(new)}; the "
                  "windows dealt so far are kept and the quotas follow the new weights from here", file=sys.stderr)

    def after_step(self, step: Step) -> None:
        step.record["tokens_by_source"] = self.tokens_by_source()
        if len(self.schedule.phases) > 1:
            step.record["phase"] = self.schedule.phase_of(max(self.samples - 1, 0))

    def summary(self) -> dict:
        epochs = self.epochs_by_source()
        return {"tokens_by_source": self.tokens_by_source(), "epochs_by_source": epochs,
                "upsampled": [name for name, e in epochs.items() if e > 1]}

    def state_dict(self) -> dict:
        return {"samples": self.samples, "data_seed": self.data_seed, "sources": self.names,
                "taken": list(self.taken), "counts": list(self.counts), "phases": self._phases(),
                "train_windows": {name: len(w) for name, w in self.windows.items()}}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            raise LokiError("the checkpoint holds no mixture sampler state: it was trained without data.mixture; "
                            "resume it with the config it was trained with, or start a new run_dir")
        if state["sources"] != self.names:
            raise LokiError(f"the checkpoint was trained on the sources {state['sources']}, the config names "
                            f"{self.names}: resume with the same data.mixture, or start a new run_dir")
        self.samples, self.data_seed = int(state["samples"]), int(state["data_seed"])
        self.taken, self.counts = [int(x) for x in state["taken"]], [int(x) for x in state["counts"]]
        # A resume with other weights or phase boundaries went on silently with the old run's counts under the new
        # weights (and config.yaml rewritten with the new ones, as if the whole run had used them): allowed, since
        # changing a mixture mid-run is a real use, but said (before_step). Checkpoints from before this key: unknown.
        old, new = state.get("phases"), self._phases()
        self._changed = (old, new) if old is not None and not _same_phases(old, new) else None
        # Re-tokenised sources (data added between a kill and the resume): the cursors index a new shuffled order,
        # so some windows repeat and others are skipped; said too
        sizes = {name: len(w) for name, w in self.windows.items()}
        self._resized = {n: (int(m), sizes[n]) for n, m in state.get("train_windows", {}).items() if int(m) != sizes.get(n)}

    def after_rollback(self, count: int) -> None:
        self.data_seed = self.seed + 1000 * count  # reshuffle each source; the interleaving stays


def _same_phases(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["start_window"] == y["start_window"] and x["end_window"] == y["end_window"]
        and x["weights"].keys() == y["weights"].keys()
        and all(math.isclose(x["weights"][k], y["weights"][k], rel_tol=1e-9, abs_tol=1e-12) for k in x["weights"])
        for x, y in zip(a, b))


def _describe(phases: list[dict]) -> str:
    return "; ".join(f"windows {p['start_window']}-{p['end_window'] if p['end_window'] is not None else 'end'}: "
                     + ", ".join(f"{n} {w:.3g}" for n, w in p["weights"].items()) for p in phases)


def mixture_data(cfg, run, device: torch.device, loss_fn, event) -> MixtureData:
    """The unit for `cfg`'s mixture over the run's shards (written by `loki tokenize` with the same sources)."""
    meta = read_meta(run.shards)
    names = [s.name for s in cfg.data.mixture]
    if list(meta.get("sources", {})) != names:
        have = list(meta["sources"]) if "sources" in meta else "no sources (not a mixture)"
        raise LokiError(f"the shards in {run.shards} hold {have}, data.mixture names {names}: re-run `loki tokenize`")
    t, seq = cfg.train, cfg.model.context_length
    windows = {}
    for name, folder in run.source_shards.items():
        try:
            windows[name] = TokenWindows(folder, "train", seq)
        except LokiError as e:
            raise LokiError(f"data.mixture source {name!r}: {e}") from None
    return MixtureData(windows, Schedule(cfg.data, seq), t.micro_batch_size, t.seed, device, loss_fn, seq,
                       t.max_steps * t.batch_size, event)
