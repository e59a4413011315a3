"""Safe reward scoring: failures cost one completion, are counted, logged once, or re-raised."""

import logging
import math

import numpy as np
import pytest

from dphrl_mini.rewards import score_completions
from dphrl_mini.tasks import countdown


def exact(prompts, completions, target, **_):
    return [float(c == str(t)) for c, t in zip(completions, target)]


def explodes_on_x(prompts, completions, **_):
    if any(c == "x" for c in completions):
        raise ZeroDivisionError("x")
    return [0.5] * len(completions)


def garbage(prompts, completions, **_):
    return [{"a": None, "b": math.nan, "c": math.inf, "d": "1"}.get(c, 2.0) for c in completions]


def test_sums_functions_and_passes_columns():
    rewards, errors = score_completions([exact, exact], ["p"] * 3, ["1", "2", "3"], {"target": [1, 5, 3]})
    assert errors == 0 and rewards.tolist() == [2.0, 0.0, 2.0] and rewards.dtype == np.float64


def test_one_raising_completion_scores_zero_others_keep_reward(caplog):
    with caplog.at_level(logging.WARNING, logger="dphrl_mini.rewards"):
        for _ in range(3):
            rewards, errors = score_completions([explodes_on_x, exact], ["p"] * 3, ["1", "x", "x"],
                                                {"target": [1, 1, 1]})
            assert rewards.tolist() == [1.5, 0.0, 0.0] and errors == 2
    logged = [r for r in caplog.records if "explodes_on_x" in r.getMessage()]
    assert len(logged) <= 1  # once per (function, exception type), across calls
    assert all("ZeroDivisionError" in r.getMessage() for r in logged)


def test_non_finite_and_strings_are_errors_none_is_no_reward():
    rewards, errors = score_completions([garbage], ["p"] * 5, ["a", "b", "c", "d", "e"], {})
    assert math.isnan(rewards[0]) and rewards[1:].tolist() == [0.0, 0.0, 0.0, 2.0] and errors == 3


def test_wrong_length_result_falls_back_per_completion():
    def first_only(prompts, completions, **_):
        return [1.0]
    rewards, errors = score_completions([first_only], ["p"] * 3, ["a", "b", "c"], {})
    assert rewards.tolist() == [1.0, 1.0, 1.0] and errors == 0


def test_fail_fast_reraises():
    with pytest.raises(ZeroDivisionError):
        score_completions([explodes_on_x], ["p"], ["x"], {}, fail_fast=True)


def test_with_real_task_reward_and_hostile_completions():
    rows = countdown.make_dataset("test", 2, seed=0)
    sol = countdown.solutions(rows[0]["numbers"], rows[0]["target"])[0]
    completions = [sol, "(" * 5000, None, "\x00" * 10, sol]
    columns = {"numbers": [rows[0]["numbers"]] * 5, "target": [rows[0]["target"]] * 5, "id": ["a"] * 5}
    rewards, errors = score_completions([countdown.reward], ["p"] * 5, completions, columns)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0] and errors == 0


def test_failures_are_reported_by_function_name():
    def fine(prompts, completions, **_):
        return [1.0] * len(completions)

    def always_text(prompts, completions, **_):
        return ["1"] * len(completions)

    failures: dict = {}
    rewards, n_errors = score_completions([fine, always_text], ["p"] * 3, ["a", "b", "c"], {}, failures=failures)
    assert list(rewards) == [1.0] * 3 and n_errors == 3
    assert list(failures) == ["test_failures_are_reported_by_function_name.<locals>.always_text"]
    assert failures[list(failures)[0]] == ["RewardError: reward '1' is not a number"] * 3
