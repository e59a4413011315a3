"""Exact bandit metrics: pass@k, coverage, entropy."""

from __future__ import annotations

import numpy as np
import pytest

from toy_bandits import coverage, entropy, pass_at_k


def test_pass_at_k_matches_sampling_formula():
    pi, correct = np.array([0.1, 0.2, 0.7]), np.array([True, True, False])
    assert pass_at_k(pi, correct, 1) == pytest.approx(0.3)
    np.testing.assert_allclose(pass_at_k(pi, correct, [1, 2, 8]), 1 - 0.7 ** np.array([1, 2, 8]))


def test_pass_at_k_rows_and_tiny_mass():
    pis = np.array([[1e-18, 1 - 1e-18], [0.5, 0.5]])
    out = pass_at_k(pis, [True, False], np.array([1, 4]))
    assert out.shape == (2, 2)
    assert out[0, 1] == pytest.approx(4e-18, rel=1e-6)       # no cancellation to 0
    np.testing.assert_allclose(out[1], [0.5, 0.9375])


def test_pass_at_k_monotone_in_k():
    vals = pass_at_k([0.05, 0.95], [True, False], np.arange(1, 50))
    assert np.all(np.diff(vals) > 0) and vals[-1] < 1


def test_coverage_fraction_and_count():
    pi = np.array([0.6, 0.3995, 0.0005, 0.0])
    correct = np.array([True, True, True, False])
    assert coverage(pi, correct) == pytest.approx(2 / 3)
    assert coverage(pi, correct, normalize=False) == 2
    assert coverage(pi, correct, eps=1e-4) == 1.0
    np.testing.assert_allclose(coverage(np.stack([pi, pi[::-1]]), correct), [2 / 3, 1 / 3])
    assert np.isnan(coverage(pi, np.zeros(4, bool)))


def test_entropy():
    assert entropy([0.25] * 4) == pytest.approx(np.log(4))
    assert entropy([1.0, 0.0]) == 0.0
    np.testing.assert_allclose(entropy([[0.5, 0.5], [1.0, 0.0]]), [np.log(2), 0.0])


@pytest.mark.parametrize("call, match", [
    (lambda: pass_at_k([0.5, 0.6], [True, False], 1), "policy"),
    (lambda: pass_at_k([0.5, 0.5], [True], 1), "correct"),
    (lambda: pass_at_k([0.5, 0.5], [True, False], 0), "k"),
    (lambda: coverage([0.5, 0.5], [True, False], eps=0), "eps"),
    (lambda: entropy([-0.1, 1.1]), "policy"),
])
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
