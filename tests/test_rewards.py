"""Safe reward scoring: failures cost one completion, are counted, logged once, or re-raised; rewards are
called as TRL 1.16's GRPOTrainer calls them (keywords, None, async, log_extra/log_metric)."""

import asyncio
import logging
import math

import numpy as np
import pytest

from dphrl_mini.rewards import TRL_KEYWORDS, RewardLog, RewardState, Verifier, score_completions
from dphrl_mini.sources import check_columns
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


# --- TRL 1.16's calling convention (GRPOTrainer._calculate_rewards) ------------------------------------
def reward_len(completions, **kwargs):  # the example reward of TRL's GRPOTrainer documentation
    return [-abs(20 - len(completion)) for completion in completions]


def test_trl_documented_reward_gets_the_completions():
    rewards, errors = score_completions([reward_len], ["a prompt of some length"] * 2, ["x" * 20, "x" * 15], {})
    assert rewards.tolist() == [0.0, -5.0] and errors == 0


def test_every_trl_keyword_and_every_column_arrives_by_keyword():
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        kwargs["log_metric"]("seen", 1.0)
        return [0.0] * len(kwargs["completions"])

    state = RewardState(global_step=3, max_steps=10)
    score_completions([spy], ["p", "q"], ["a", "b"], {"answer": ["1", "2"]}, completion_ids=[[5, 2], [6]],
                      trainer_state=state)
    assert sorted(seen) == sorted([*TRL_KEYWORDS, "answer"])
    assert (seen["prompts"], seen["completions"], seen["completion_ids"], seen["answer"]) == (
        ["p", "q"], ["a", "b"], [[5, 2], [6]], ["1", "2"])
    assert seen["trainer_state"].global_step == 3 and callable(seen["log_extra"])


def test_positional_only_parameters_get_prompts_completions_and_ids():
    def positional(prompts, completions, ids, /, answer, **kwargs):
        return [float(c == a and len(i) == 1) for c, a, i in zip(completions, answer, ids)]

    rewards, errors = score_completions([positional], ["p", "p"], ["1", "2"], {"answer": ["1", "1"]},
                                        completion_ids=[[7], [8]])
    assert rewards.tolist() == [1.0, 0.0] and errors == 0


def test_none_is_no_reward_summed_with_nansum_as_in_trl():
    def first(completions, **_):
        return [None, 1.0, None]

    def second(completions, **_):
        return [1.0, None, None]

    rewards, errors = score_completions([first, second], ["p"] * 3, ["a", "b", "c"], {}, weights=[1.0, 2.0])
    assert rewards[:2].tolist() == [2.0, 1.0] and math.isnan(rewards[2]) and errors == 0
    assert Verifier([first]).is_correct(rewards).tolist() == [True, True, False]  # unscorable is never correct


def test_async_reward_is_awaited_also_inside_a_running_event_loop():
    async def judge(completions, **_):
        await asyncio.sleep(0)
        return [float(c == "4") for c in completions]

    assert score_completions([judge], ["2+2="] * 2, ["4", "5"], {})[0].tolist() == [1.0, 0.0]

    async def notebook_cell():  # Jupyter runs cells inside its own event loop
        return score_completions([judge], ["2+2="], ["4"], {})

    assert asyncio.run(notebook_cell())[0].tolist() == [1.0]


def test_log_extra_and_log_metric_are_kept_per_completion():
    def logging_reward(completions, log_extra, log_metric, **_):
        if len(completions) > 1 and "x" in completions:
            raise ValueError("fails on the batch, works one by one but for x")
        if completions == ["x"]:
            log_extra("verdict", ["never kept: the call fails"])
            raise ValueError("x")
        log_extra("verdict", [f"saw {c}" for c in completions])
        log_metric("calls", 1.0)
        return [1.0] * len(completions)

    log = RewardLog()
    rewards, errors = score_completions([logging_reward], ["p"] * 3, ["a", "x", "b"], {}, log=log)
    assert rewards.tolist() == [1.0, 0.0, 1.0] and errors == 1
    assert log.extra == {"verdict": ["saw a", None, "saw b"]} and log.metric_means() == {"calls": 1.0}
    assert [s["verdict"] for s in log.samples(["p"] * 3, ["a", "x", "b"], rewards, [0, 1])] == ["saw a", None]


def test_trl_accuracy_reward_on_a_conversational_batch():
    rewards_module = pytest.importorskip("trl.rewards")
    pytest.importorskip("math_verify")
    prompt = [{"role": "user", "content": "What is 1/3 + 1/3? Answer in \\boxed{}."}]
    log = RewardLog()
    rewards, errors = Verifier([rewards_module.accuracy_reward]).score(
        [prompt] * 3, ["It is \\boxed{\\frac{2}{3}}", "It is \\boxed{1}", "It is \\boxed{1}"],
        {"solution": ["\\frac{2}{3}", "\\frac{2}{3}", "no latex here ("]}, log=log)
    assert rewards[:2].tolist() == [1.0, 0.0] and math.isnan(rewards[2]) and errors == 0  # gold unparseable: None
    assert {"solution", "gold_parsed", "answer_parsed"} <= set(log.extra)


def test_columns_check_knows_trl_keywords_and_needs_kwargs(tmp_path):
    def trl_style(completions, answer, completion_ids, **kwargs):
        return [1.0] * len(completions)

    rows = [{"id": "0", "prompt": "p", "answer": "1"}]
    check_columns(rows, Verifier([trl_style]), "d")  # completion_ids is not a column
    with pytest.raises(ValueError, match=r"needs column\(s\) \['p', 'c'\].*called by keyword as in TRL"):
        check_columns(rows, Verifier([lambda p, c, **kw: [1.0] * len(c)]), "d")
    with pytest.raises(ValueError, match=r"does not accept the keyword\(s\) \['prompts', .*'answer'\].*\*\*kwargs"):
        check_columns(rows, Verifier([lambda completions: [1.0] * len(completions)]), "d")
