"""The paired statistics of ablations and comparisons, on hand-made inputs whose answers are known exactly."""

import itertools
import math

import numpy as np
import pytest

from lokilm.eval import stats


def _exact_sign_flip(d, clusters=None):
    """Every one of the 2^k sign patterns (k items or clusters): the p-value the Monte Carlo test estimates."""
    d = np.asarray(d, float)
    sums = d if clusters is None else np.bincount(np.unique(clusters, return_inverse=True)[1], weights=d)
    hits = sum(abs(np.dot(signs, sums)) / len(d) >= abs(d.mean()) - 1e-12
               for signs in itertools.product([-1, 1], repeat=len(sums)))
    return hits / 2 ** len(sums)


def test_identical_scores_give_zero_delta_and_p_one():
    a = np.linspace(1.0, 2.0, 50)
    out = stats.paired(a, a.copy(), clusters=np.arange(50) // 5)
    assert out["delta"] == 0 and out["ci95"] == [0.0, 0.0] and out["p_value"] == 1.0


@pytest.mark.parametrize("d, clusters", [([0.3, 0.1, 0.2, 0.4, -0.05, 0.25], None),
                                         ([0.3, 0.1, 0.2, 0.4, -0.05, 0.25], [0, 0, 1, 1, 2, 2]),
                                         ([1.0, 1.0, 1.0, 1.0], [0, 0, 1, 1])])
def test_sign_flip_matches_the_exact_enumeration(d, clusters):
    exact = _exact_sign_flip(d, clusters)
    estimate = stats.sign_flip_p(np.asarray(d), 20000, seed=1, clusters=clusters)
    assert estimate == pytest.approx(exact, abs=0.01)


def test_clusters_make_the_test_honest_about_correlated_items():
    # ten windows of one document all favour B: as ten items that is p ~ 0.002, as one document it is p = 1
    d = np.full(10, 0.1)
    assert stats.sign_flip_p(d, 5000) < 0.01
    assert stats.sign_flip_p(d, 5000, clusters=np.zeros(10)) == 1.0


def test_holm_step_down_known_values():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); adjusted values never decrease
    assert stats.holm({"a": 0.04, "b": 0.01, "c": 0.02}) == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04})
    assert stats.holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # capped at 1
    assert stats.holm({"only": 0.2}) == {"only": 0.2}


def test_t_interval_known_values():
    out = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) x sd 1 / sqrt(3)
    assert out["mean"] == 2.0 and out["sd"] == 1.0
    assert out["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert stats.t_interval([0.5])["ci95"] is None  # one seed: no spread to speak of


def test_bootstrap_interval_covers_a_planted_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(2.0, 0.1, 400)
    b = a + 0.02 + rng.normal(0, 0.01, 400)
    out = stats.paired(a, b, iters=2000, seed=0)
    lo, hi = out["ci95"]
    assert lo < 0.02 < hi and lo > 0 and out["p_value"] < 0.001
