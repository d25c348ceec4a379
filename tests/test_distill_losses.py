import math

import pytest
import torch
import torch.nn.functional as F

from lokilm.distill.losses import minimum_rule, soft_token_loss, token_ce

V = 4


def logits_with_prob(q: torch.Tensor) -> torch.Tensor:
    """Logits over V tokens giving token 0 probability q (the rest shared evenly): CE against token 0 is -ln q."""
    return torch.stack([q.log(), *[((1 - q) / (V - 1)).log()] * (V - 1)], dim=-1)


def test_sequence_minimum_equals_the_least_target_and_only_the_winner_gets_gradient(one_thread):
    # 3 targets (ground truth, two teachers) x 3 sequences x 2 positions; token 0 is the target everywhere.
    # Probabilities chosen so that each sequence has a different winner: teacher 1, ground truth, teacher 2.
    q = torch.tensor([[[0.50, 0.50], [0.90, 0.80], [0.20, 0.10]],    # ground truth
                      [[0.90, 0.70], [0.50, 0.60], [0.30, 0.20]],    # teacher 1
                      [[0.10, 0.20], [0.30, 0.40], [0.60, 0.90]]])   # teacher 2
    logits = logits_with_prob(q).requires_grad_()
    losses, mask = token_ce(logits, torch.zeros(3, 3, 2, dtype=torch.long))
    assert torch.allclose(losses, -q.log())

    loss, wins = minimum_rule(losses, mask, "sequence")
    per_seq = -q.log().mean(-1)  # (target, sequence)
    winners = [1, 0, 2]
    assert per_seq.argmin(0).tolist() == winners
    expected = sum(per_seq[k, b] for b, k in enumerate(winners)) / 3
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert wins.tolist() == [1, 1, 1]

    loss.backward()
    for b, winner in enumerate(winners):
        for k in range(3):
            g = logits.grad[k, b]
            assert (g.abs().sum() > 0) == (k == winner), (k, b)


def test_a_shorter_teacher_is_compared_on_its_own_positions_and_an_empty_one_never_wins():
    losses = torch.tensor([[[2.0, 2.0, 2.0, 2.0]],   # ground truth: mean 2.0
                           [[1.0, 2.0, 9.0, 9.0]],   # teacher covering only its first 2 positions: mean 1.5
                           [[0.0, 0.0, 0.0, 0.0]]])  # teacher with no continuation: covers nothing
    mask = torch.tensor([[[1, 1, 1, 1]], [[1, 1, 0, 0]], [[0, 0, 0, 0]]], dtype=torch.bool)
    loss, wins = minimum_rule(losses, mask, "sequence")
    assert float(loss) == pytest.approx(1.5) and wins.tolist() == [0, 1, 0]


def test_token_and_batch_reductions():
    losses = torch.tensor([[[1.0, 4.0, 2.0], [3.0, 3.0, 3.0]],
                           [[2.0, 1.0, 5.0], [1.0, 9.0, 0.0]]], requires_grad=True)
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    mask[1, 1, 2] = False  # teacher's second sequence ends early: its 0.0 there is not a candidate

    loss, wins = minimum_rule(losses, mask, "token")
    assert float(loss.detach()) == pytest.approx((1 + 1 + 2 + 1 + 3 + 3) / 6)
    assert wins.tolist() == [4, 2]
    loss.backward()
    assert losses.grad[1, 1, 2] == 0 and losses.grad[0, 1, 2] == pytest.approx(1 / 6)

    # batch: ground truth mean of sequence means (7/3 + 3) / 2 = 2.667; teacher (8/3 + 5) / 2 = 3.833
    loss, wins = minimum_rule(losses.detach(), mask, "batch")
    assert float(loss) == pytest.approx((7 / 3 + 3) / 2) and wins.tolist() == [1, 0]


def test_ties_go_to_the_ground_truth():
    losses = torch.ones(3, 2, 5)
    mask = torch.ones(3, 2, 5, dtype=torch.bool)
    assert minimum_rule(losses, mask, "sequence")[1].tolist() == [2, 0, 0]


def test_soft_losses_against_hand_computation():
    student = torch.tensor([[[1.0, 0.0, -1.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 0.0]]])
    q = [math.exp(v) for v in (1.0, 0.0, -1.0)]
    q = [v / sum(q) for v in q]
    p = [math.exp(v) for v in (0.0, 2.0, 0.0)]
    p = [v / sum(p) for v in p]
    soft_ce = -sum(pi * math.log(qi) for pi, qi in zip(p, q))
    forward = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    reverse = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert float(soft_token_loss(student, teacher, "soft_ce")) == pytest.approx(soft_ce, rel=1e-6)
    assert float(soft_token_loss(student, teacher, "forward_kl")) == pytest.approx(forward, rel=1e-6)
    assert float(soft_token_loss(student, teacher, "reverse_kl")) == pytest.approx(reverse, rel=1e-6)

    # top-2 of the teacher: tokens 1 and (the first of the tied) 0 or 2, renormalised
    top = sorted(range(3), key=lambda v: -p[v])[:2]
    pt = [p[v] / sum(p[v] for v in top) for v in top]
    soft_ce2 = -sum(pi * math.log(q[v]) for pi, v in zip(pt, top))
    qt = [q[v] / sum(q[v] for v in top) for v in top]
    reverse2 = sum(qi * math.log(qi / pi) for pi, qi in zip(pt, qt))
    assert float(soft_token_loss(student, teacher, "soft_ce", top_k=2)) == pytest.approx(soft_ce2, rel=1e-5)
    assert float(soft_token_loss(student, teacher, "reverse_kl", top_k=2)) == pytest.approx(reverse2, rel=1e-5)


def test_soft_ce_against_a_one_hot_teacher_is_the_hard_cross_entropy():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    one_hot = F.one_hot(targets, 7).float() * 100  # softmax of this is one-hot to float precision
    hard, _ = token_ce(student, targets)
    assert torch.allclose(soft_token_loss(student, one_hot, "soft_ce"), hard, atol=1e-4)
    assert torch.allclose(soft_token_loss(student, one_hot, "forward_kl"), hard, atol=1e-4)
