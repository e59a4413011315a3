"""Countdown: parser, solver, generators (property-based fuzzing lives in test_hostile_inputs.py)."""

import re
import string
import time

import pytest

from dphrl_mini.tasks import countdown as cd


@pytest.mark.parametrize("expr", ["3*5+7", "7+3*5", "(3*5)+7", " 3 * 5 + 7 ", "((5*3))+7", "7+5*3"])
def test_correct_expressions(expr):
    assert cd.is_correct([3, 5, 7], 22, expr)


@pytest.mark.parametrize("expr", [
    "3*7+5",            # wrong value
    "3*5+7+0",          # extra literal
    "3*5",              # missing a number
    "3*5+7+7-7",        # number used twice
    "22",               # literal not among numbers
    "15+7",             # literal not among numbers
    "-3+5*7-0",         # unary minus
    "3*5+07",           # leading zero
    "3*5+7.0",          # non-integer literal
    "3**5+7", "3*5+", "(3*5+7", "3*5+7)", "", "   ", "3 5 7",
    "__import__('os').system('x')", "3*5+7; 1",
])
def test_wrong_or_malformed(expr):
    assert not cd.is_correct([3, 5, 7], 22, expr)


def test_exact_rational_arithmetic():
    assert cd.is_correct([1, 3, 4, 6], 24, "6/(1-3/4)")  # needs exact fractions
    assert not cd.is_correct([2, 2, 4], 0, "4/(2-2)")    # division by zero is wrong, not an error
    assert cd.is_correct([2, 2, 4], 0, "(2-2)/4")


def test_multiset_semantics():
    assert cd.is_correct([2, 2, 3], 7, "2+2+3")
    assert not cd.is_correct([2, 3, 3], 7, "2+2+3")


def test_bounds_reject_quickly():
    numbers = [9] * 60
    start = time.perf_counter()
    assert not cd.is_correct([3, 5, 7], 22, "(" * 10_000 + "3" + ")" * 10_000)
    assert not cd.is_correct([3, 5, 7], 22, "(" * 50 + "3*5+7" + ")" * 50)  # nested too deeply
    assert not cd.is_correct([3, 5, 7], 22, "3" * 100_000)
    assert not cd.is_correct(numbers, 0, "*".join(["9"] * 60))  # too many tokens
    assert not cd.is_correct([10**9] * 3, 10**27, "1000000000*1000000000*1000000000")  # magnitude bound
    assert time.perf_counter() - start < 1.0


def test_non_string_inputs():
    assert not cd.is_correct([3, 5, 7], 22, None)
    assert cd.extract_answer(None) is None
    assert cd.reward(["p"], [None], numbers=[[3, 5, 7]], target=[22]) == [0.0]


def test_extract_answer_and_key():
    assert cd.extract_answer("3*5+7\nblah") == "3*5+7"
    assert cd.extract_answer("think <answer> 7+3*5 </answer> <answer>x</answer>") == "7+3*5"
    assert cd.extract_answer("<answer>unterminated") == "<answer>unterminated"
    assert cd.solution_key("(3*5)+7") == cd.solution_key(" 3 * 5 + 7") == "3*5+7"
    assert cd.solution_key("3+(5+7)") != cd.solution_key("3+5+7")
    assert cd.solution_key("not an expr") == "notanexpr"
    start = time.perf_counter()
    cd.extract_answer("<answer>" * 200_000)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("numbers", [[3, 5, 7], [2, 2, 4], [1, 1, 1], [20, 9, 13]])
def test_solver_every_solution_is_correct_and_distinct(numbers):
    for target in range(-5, 60):
        found = cd.solutions(numbers, target)
        assert len(found) == len(set(found))
        assert all(cd.is_correct(numbers, target, s) for s in found)
        assert all(cd.solution_key(s) == s for s in found)  # canonical form is a fixed point


def test_solver_is_complete_on_brute_force():
    # every canonical string over the alphabet that is correct must be found: check all short ones
    numbers, target = [1, 2, 3], 9
    found = set(cd.solutions(numbers, target))
    assert {"(1+2)*3", "3*(2+1)"} <= found
    assert cd.solutions(numbers, target, max_solutions=2) == sorted(found)[:2]
    ops = "+-*/"
    for a, b, c in [(1, 2, 3), (3, 2, 1), (2, 3, 1)]:
        for o1 in ops:
            for o2 in ops:
                for expr in (f"{a}{o1}{b}{o2}{c}", f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                    if cd.is_correct(numbers, target, expr):
                        assert cd.solution_key(expr) in found


def test_datasets_deterministic_disjoint_and_well_formed():
    train = cd.make_dataset("train", 3000, seed=1)
    assert train == cd.make_dataset("train", 3000, seed=1)
    assert train != cd.make_dataset("train", 3000, seed=2)
    test = cd.make_dataset("test", 500, seed=1)
    key = lambda r: (tuple(r["numbers"]), r["target"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in test}
    train_all = {(p[0], p[1]) for p in cd._problems("train")}
    test_all = {(p[0], p[1]) for p in cd._problems("test")}
    assert not train_all & test_all
    assert len({r["id"] for r in train}) == len(train)
    ood = cd.make_dataset("ood", 300, seed=0)
    for row in train + test + ood:
        assert set(row) == {"id", "prompt", "numbers", "target", "difficulty"}
        assert row["difficulty"] == cd.difficulty(row["numbers"], row["target"])
        assert len(row["prompt"]) < 40 and all(ch in string.printable[:95] for ch in row["prompt"])
        assert row["prompt"] == cd.format_prompt(row["numbers"], row["target"])
        assert all(n in cd.IN_RANGE for n in row["numbers"])
        count = len(cd.solutions(row["numbers"], row["target"]))
        # in-domain problems have many correct answers; the ood shift is to sparse ones (but >= 1)
        assert count >= cd.MIN_SOLUTIONS if row in train + test else 1 <= count < cd.MIN_SOLUTIONS
    assert not {key(r) for r in ood} & ({key(r) for r in train} | {key(r) for r in test})
    with pytest.raises(ValueError):
        cd.make_dataset("valid", 3)
    with pytest.raises(ValueError):
        cd.make_dataset("test", 10**6)


def test_shift_split_is_the_test_draw_written_largest_first():
    """"shift": the same problems as "test" (same seed and size), numbers in an order no training
    prompt has, every row still solvable and scored by the same verifier."""
    test, shift = cd.make_dataset("test", 200, seed=3), cd.make_dataset("shift", 200, seed=3)
    train_prompts = {r["prompt"] for r in cd.make_dataset("train", 3000, seed=0)}
    for t, s in zip(test, shift):
        assert (sorted(s["numbers"]), s["target"], s["difficulty"]) == (t["numbers"], t["target"], t["difficulty"])
        assert s["numbers"] == sorted(s["numbers"], reverse=True) and s["prompt"] == cd.format_prompt(s["numbers"], s["target"])
        assert s["id"] != t["id"] and s["prompt"] not in train_prompts
        assert cd.reward([s["prompt"]], [cd.solutions(s["numbers"], s["target"])[0]], [s["numbers"]], [s["target"]]) == [1.0]
    assert sum(s["prompt"] != t["prompt"] for t, s in zip(test, shift)) > 190  # only repeated numbers read the same


def test_difficulty_mix():
    """train/test rows follow DIFFICULTY_MIX exactly; easy = sum, moderate = no parentheses/division."""
    rows = cd.make_dataset("test", 250, seed=3)
    counts = {d: sum(r["difficulty"] == d for r in rows) for d in cd.DIFFICULTIES}
    assert counts == {"easy": 100, "moderate": 100, "hard": 50}
    for r in rows:
        found = cd.solutions(r["numbers"], r["target"])
        plain = [s for s in found if "(" not in s and "/" not in s]
        assert (r["difficulty"] == "easy") == (sum(r["numbers"]) == r["target"])
        assert (r["difficulty"] == "hard") == (not plain)
    with pytest.raises(ValueError, match="easy problems"):
        cd.make_dataset("train", 4000)  # 40% easy is more than the split holds


def test_sft_examples_draw_different_solutions():
    rows = cd.make_dataset("train", 50, seed=0)
    pairs = cd.sft_examples(rows, per_problem=4, seed=0)
    assert pairs == cd.sft_examples(rows, per_problem=4, seed=0)
    by_prompt = {}
    for prompt, completion in pairs:
        by_prompt.setdefault(prompt, []).append(completion)
    for row in rows:
        completions = by_prompt[row["prompt"]]
        assert len(completions) == min(4, len(cd.solutions(row["numbers"], row["target"])))
        assert len(set(completions)) == len(completions)
        assert all(cd.is_correct(row["numbers"], row["target"], c) and " " not in c for c in completions)
    # uniform draws: over many seeds each solution of a problem shows up
    row = rows[0]
    seen = {c for s in range(200) for _, c in cd.sft_examples([row], 1, s)}
    assert seen == set(cd.solutions(row["numbers"], row["target"]))


def test_reward_is_trl_compatible():
    rows = cd.make_dataset("test", 4, seed=0)
    sols = [cd.solutions(r["numbers"], r["target"])[0] for r in rows]
    out = cd.reward([r["prompt"] for r in rows], sols, numbers=[r["numbers"] for r in rows],
                    target=[r["target"] for r in rows], id=[r["id"] for r in rows])
    assert out == [1.0] * 4
    out = cd.reward(["p"], ["<answer>3*5+7</answer>"], numbers=[[3, 5, 7]], target=[21])
    assert out == [0.0]


def test_ood_pretrain_rows_are_sparse_and_never_an_ood_problem():
    """The sparse problems split by a fixed hash into "ood" (evaluation) and a held-apart half for a
    warm start (``ood_pretrain_rows``): disjoint, both sparse, deterministic by seed."""
    key = lambda p: (tuple(p[0]), p[1])  # noqa: E731
    ood, held_apart = {key(p) for p in cd._problems("ood")}, {key(p) for p in cd._problems("ood-pretrain")}
    assert not ood & held_apart and 0.4 < len(ood) / (len(ood) + len(held_apart)) < 0.6
    rows = cd.ood_pretrain_rows(200, seed=1)
    assert rows == cd.ood_pretrain_rows(200, seed=1) and rows != cd.ood_pretrain_rows(200, seed=2)
    for row in rows:
        assert (tuple(row["numbers"]), row["target"]) in held_apart
        assert 1 <= len(cd.solutions(row["numbers"], row["target"])) < cd.MIN_SOLUTIONS
    assert not {r["prompt"] for r in rows} & {r["prompt"] for r in cd.make_dataset("ood", 1000, seed=0)}
    with pytest.raises(ValueError, match="asked for"):
        cd.ood_pretrain_rows(10**6)
    with pytest.raises(ValueError):
        cd.make_dataset("ood-pretrain", 3)  # not an evaluation split


def test_wide_rows_lie_outside_every_split_and_teach_the_sparse_forms():
    """``wide_rows`` (warm start only): targets 101-400, so never a train, test, ood or shift problem;
    correct solutions; deterministic by seed; rich in the forms the "ood" split needs."""
    rows = cd.wide_rows(300, seed=1)
    assert rows == cd.wide_rows(300, seed=1) and rows != cd.wide_rows(300, seed=2)
    lo, hi = cd.WIDE_TARGET_RANGE
    assert lo > cd.TARGET_RANGE[1]
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert lo <= row["target"] <= hi and all(n in cd.IN_RANGE for n in row["numbers"])
        assert row["prompt"] == cd.format_prompt(row["numbers"], row["target"])
        assert all(cd.is_correct(row["numbers"], row["target"], s) for s in cd.solutions(row["numbers"], row["target"])[:3])
    forms = [re.sub(r"\d+", "n", s) for r in rows for s in cd.solutions(r["numbers"], r["target"])]
    assert sum(f in ("n*n-n", "(n-n)*n", "n*(n-n)") for f in forms) / len(forms) > 0.2
    with pytest.raises(ValueError, match="asked for"):
        cd.wide_rows(10**6)
