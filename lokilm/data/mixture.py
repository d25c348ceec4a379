"""A data mixture's schedule: which source each window slot of a training run reads (data.mixture, data.phases).

Every training window is context_length tokens, so a share of the windows is the same share of the tokens.
Within a phase, slots are dealt by Balinski and Young's quota method: slot n (1-based from the phase's first
slot) goes, among the sources still under their upper quota (c_s < w_s * n, c_s: slots it had so far in the
phase), to the one with the largest w_s / (c_s + 1); ties go to the source listed first. The quota method
keeps every source within quota at every n, floor(w_s * n) <= c_s <= ceil(w_s * n): the weights are honoured
to within one window at every step, not only on average (the plain "furthest behind its share" rule strays
past one window with five or more sources of unequal weights). The choice is a pure function of the phase's counts, so
the sampler's state (its slot and those counts) resumes it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lokilm.config import DataConfig


@dataclass
class Phase:
    start: int  # first slot
    end: int | None  # first slot of the next phase (None: to the end of training)
    weights: list[float]  # one per source, in data.mixture's order; they sum to 1


class Schedule:
    def __init__(self, data: DataConfig, tokens_per_window: int):
        self.names = [s.name for s in data.mixture]
        mixture = [s.weight for s in data.mixture]
        phases = data.phases or [None]
        self.phases, start = [], 0
        for p in phases:
            weights = mixture if p is None or not p.weights else [p.weights.get(n, 0.0) for n in self.names]
            # a slot belongs to the phase its first token falls in
            end = None if p is None or p.until_tokens is None else max(start, math.ceil(p.until_tokens / tokens_per_window))
            self.phases.append(Phase(start, end, weights))
            start = end if end is not None else start

    def phase_of(self, slot: int) -> int:
        return next(i for i, p in enumerate(self.phases) if p.end is None or slot < p.end)

    def assign(self, slot: int, counts: list[int], n: int) -> tuple[list[int], list[int]]:
        """The sources (indices) of slots slot..slot+n-1, given `counts` (each source's slots so far in the phase
        of slot-1); and the counts after them."""
        counts, out = list(counts), []
        for k in range(slot, slot + n):
            phase = self.phases[self.phase_of(k)]
            if k == phase.start:
                counts = [0] * len(self.names)
            n_slots, w = k - phase.start + 1, phase.weights
            s = max((i for i in range(len(counts)) if w[i] and counts[i] < w[i] * n_slots),
                    key=lambda i: (w[i] / (counts[i] + 1), -i))
            counts[s] += 1
            out.append(s)
        return out, counts

    def planned(self, slots: int) -> list[float]:
        """Each source's windows over the first `slots` slots of a run (from the weights; exact to within one)."""
        out = [0.0] * len(self.names)
        for p in self.phases:
            n = max(0, min(slots, p.end if p.end is not None else slots) - p.start)
            for i, w in enumerate(p.weights):
                out[i] += w * n
        return out
