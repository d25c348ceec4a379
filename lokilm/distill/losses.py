"""The KD-batch loss: the student's per-token loss against each target, and LokiLM's minimum rule over targets.

Targets are stacked on a leading axis: index 0 is the ground truth, 1..n the teachers. Every function takes
per-token losses `(K, B, T)` and a mask of the positions each target covers (a teacher's continuation may end
early); the minimum is taken per sequence (LokiLM), per token, or once for the batch, and only the winning
target's losses carry a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

INF = float("inf")


def token_ce(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token cross-entropy of logits (..., T, V) against hard targets (..., T); targets of -1 are padding.
    Returns (losses, mask), padding positions zero in both."""
    mask = targets >= 0
    ce = F.cross_entropy(logits.float().flatten(0, -2), targets.clamp_min(0).flatten(), reduction="none")
    return ce.view(targets.shape) * mask, mask


def soft_token_loss(student_logits: Tensor, teacher_logits: Tensor, kind: str = "soft_ce",
                    top_k: int | None = None) -> Tensor:
    """Per-token loss (..., T) of the student against a teacher's distribution over the same vocabulary.

    soft_ce: -sum_v p(v) log q(v), the cross-entropy against the teacher (hard CE is its one-hot special case,
    so it competes with the ground truth on the same scale); forward_kl: KL(p || q) = soft_ce - H(p);
    reverse_kl: KL(q || p). With top_k, p keeps the teacher's k most likely tokens, renormalised; reverse KL
    then compares both distributions on those k tokens only (outside them p is 0 and the KL would be infinite).
    """
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    if top_k is not None and top_k < log_p.shape[-1]:
        top, index = log_p.topk(top_k, dim=-1)
        log_p = top - top.logsumexp(-1, keepdim=True)
        log_q = log_q.gather(-1, index)
        if kind == "reverse_kl":
            log_q = log_q - log_q.logsumexp(-1, keepdim=True)
    p = log_p.exp()
    if kind == "soft_ce":
        return -(p * log_q).sum(-1)
    if kind == "forward_kl":
        return (p * (log_p - log_q)).sum(-1)
    if kind == "reverse_kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1)
    raise ValueError(f"unknown logit loss {kind!r} (soft_ce, forward_kl, reverse_kl)")


def minimum_rule(losses: Tensor, mask: Tensor, reduction: str = "sequence") -> tuple[Tensor, Tensor]:
    """LokiLM's rule: of K candidate targets, the student is held only to the one it already fits best.

    losses, mask: (K, B, T) per-token losses and the positions each target covers. Returns (loss, wins):
    sequence: each target's mean loss over its positions, per sequence; the least per sequence, averaged over
      the sequences; wins[k] counts the sequences target k won;
    token: the least loss over the targets covering each position, averaged over the positions any target
      covers; wins[k] counts positions;
    batch: each target's mean over its sequences' means; the least one; wins is one-hot.
    Ties go to the lower index (the ground truth first); a target covering nothing can never win.
    """
    K = losses.shape[0]
    mask = mask.to(losses.dtype)
    if reduction == "token":
        masked = losses.masked_fill(mask == 0, INF)
        covered = mask.amax(0) > 0
        best, winner = masked.min(0)
        loss = best[covered].mean()
        wins = torch.bincount(winner[covered], minlength=K)
        return loss, wins
    counts = mask.sum(-1)
    per_seq = (losses * mask).sum(-1) / counts.clamp_min(1)
    per_seq = per_seq.masked_fill(counts == 0, INF)  # (K, B)
    if reduction == "sequence":
        best, winner = per_seq.min(0)
        return best.mean(), torch.bincount(winner, minlength=K)
    if reduction == "batch":
        per_batch = per_seq.mean(-1)  # (K,): a target missing any sequence is inf, out of the running
        winner = per_batch.argmin()
        return per_batch[winner], F.one_hot(winner, K)
    raise ValueError(f"unknown reduction {reduction!r} (sequence, token, batch)")
