"""Pass@k against exact combinatorics; evaluate() end to end on a tiny random model."""

import math
import types
from fractions import Fraction

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dphrl_mini.evaluate import EvalResult, default_ks, evaluate, kept_lost, pass_at_k, pass_at_k_curve
from dphrl_mini.rollout import generate
from dphrl_mini.tiny import build_tokenizer


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


# --- pass@k ------------------------------------------------------------------------------------------

def test_pass_at_k_matches_exact_combinatorics():
    cases = [(n, c, k) for n in (1, 2, 5, 16, 64) for c in range(n + 1) for k in range(1, n + 1)]
    cases += [(1024, c, k) for c in (0, 1, 3, 100, 512, 1000, 1023, 1024) for k in (1, 2, 16, 256, 1000, 1024)]
    for n, c, k in cases:
        assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12, abs=1e-12), (n, c, k)
    assert pass_at_k(1024, 0, 512) == 0.0 and pass_at_k(1024, 600, 512) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_pass_at_k_is_monotonic():
    n = 64
    for c in range(n + 1):
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert all(a <= b + 1e-15 for a, b in zip(values, values[1:]))
    for k in (1, 8, 64):
        values = [pass_at_k(n, c, k) for c in range(n + 1)]
        assert all(a <= b + 1e-15 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("n,c,k,name", [(0, 0, 1, "n="), (4, -1, 1, "c="), (4, 5, 1, "c="),
                                        (4, 2, 0, "k="), (4, 2, 5, "k=")])
def test_pass_at_k_errors_name_the_argument(n, c, k, name):
    with pytest.raises(ValueError, match=name):
        pass_at_k(n, c, k)


def test_pass_at_k_curve_is_the_mean_of_scalar_values():
    rng = np.random.default_rng(0)
    for n in (1, 7, 64, 1024):
        counts = rng.integers(0, n + 1, size=30)
        counts[:3] = (0, n, n // 2)
        ks = default_ks(n)
        curve = pass_at_k_curve(n, counts, ks)
        assert curve.shape == (len(ks),)
        for k, value in zip(ks, curve):
            expected = np.mean([float(exact_pass_at_k(n, int(c), k)) for c in counts])
            assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError, match="k="):
        pass_at_k_curve(8, [1, 2], [16])
    with pytest.raises(ValueError, match="correct_counts"):
        pass_at_k_curve(8, [9], [1])


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(64) == [1, 2, 4, 8, 16, 32, 64]
    assert default_ks(24) == [1, 2, 4, 8, 16, 24]


# --- EvalResult and kept_lost -----------------------------------------------------------------------

def _result(correct, greedy=(), name="countdown"):
    ids = [f"p{i}" for i in range(len(correct))]
    return EvalResult(task=name, split="test", ids=ids, n=4, correct=list(correct),
                      distinct_keys=[set(str(j) for j in range(c)) for c in correct],
                      greedy_correct=list(greedy))


def test_summary_and_curve():
    res = _result([0, 1, 4, 2], greedy=[False, True, True, False])
    summary = res.summary()
    assert summary["greedy"] == 0.5 and summary["n_prompts"] == 4 and summary["n"] == 4
    assert summary["distinct_correct"] == pytest.approx(7 / 4)
    assert summary["pass@1"] == pytest.approx(7 / 16)
    assert summary["pass@4"] == pytest.approx(3 / 4)
    expected2 = np.mean([float(exact_pass_at_k(4, c, 2)) for c in (0, 1, 4, 2)])
    assert summary["pass@2"] == pytest.approx(expected2)
    assert list(res.pass_at_k_curve()) == [1, 2, 4]
    assert list(res.summary([1, 3, 64])) [1:3] == ["pass@1", "pass@3"]  # k > n is left out
    assert math.isnan(_result([1]).summary()["greedy"])


def test_kept_lost_on_hand_made_results():
    base = _result([0, 3, 1, 0, 2])
    other = _result([1, 0, 4, 0, 1])
    assert kept_lost(base, other) == {"base_solved": 3, "kept": 2, "lost": 1, "newly_solved": 1,
                                      "kept_frac": pytest.approx(2 / 3)}
    shuffled = EvalResult("countdown", "test", other.ids[::-1], 4, other.correct[::-1])
    assert kept_lost(base, shuffled) == kept_lost(base, other)  # matched by id, not position
    assert math.isnan(kept_lost(_result([0, 0]), _result([1, 0]))["kept_frac"])
    with pytest.raises(ValueError, match="ids"):
        kept_lost(base, _result([1, 1]))


# --- evaluate() end to end ------------------------------------------------------------------------------

def _is_correct(completion, mod):
    return bool(completion) and ord(completion[0]) % mod == 0


def _fake_task():
    """Deterministic reward: correct iff the completion's first character code is divisible by
    the row's ``mod`` (1: any non-empty completion, 1000: never)."""
    def reward(prompts, completions, mod, **_):
        assert len(prompts) == len(completions) == len(mod)
        assert all(p == f"{m} ->" for p, m in zip(prompts, mod))  # columns aligned with rows
        return [float(_is_correct(c, m)) for c, m in zip(completions, mod)]

    return types.SimpleNamespace(NAME="fake", reward=reward, solution_key=lambda c: c[:2] or None)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, initializer_range=0.2)
    return LlamaForCausalLM(config).eval(), tokenizer


def test_evaluate_end_to_end(tiny):
    model, tokenizer = tiny
    mods = [2, 3, 1000, 1]
    rows = [{"id": f"r{i}", "prompt": f"{m} ->", "mod": m} for i, m in enumerate(mods)]
    task = _fake_task()
    result = evaluate(model, tokenizer, rows, task, n=32, ks=[1, 4, 32], max_new_tokens=3,
                      batch_size=48, seed=5, progress=False)
    # recount from an independent call with the same seed
    rollout = generate(model, tokenizer, [r["prompt"] for r in rows], num_generations=32, max_new_tokens=3,
                       batch_size=48, generator=torch.Generator().manual_seed(5))
    correct = np.array(task.reward([r["prompt"] for r in rows for _ in range(32)], rollout.completions,
                                   [r["mod"] for r in rows for _ in range(32)])).reshape(4, 32)
    assert result.correct == correct.sum(1).tolist()
    assert result.correct[2] == 0 and result.correct[3] > result.correct[1] > 0
    assert result.correct[3] > result.correct[0] > 0
    assert result.ids == ["r0", "r1", "r2", "r3"] and result.task == "fake" and result.reward_errors == 0
    for i in range(4):
        keys = {rollout.completions[i * 32 + j][:2] for j in range(32) if correct[i, j]}
        assert result.distinct_keys[i] == keys
    greedy = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=3, greedy=True)
    assert result.greedy_correct == [_is_correct(c, m) for c, m in zip(greedy.completions, mods)]
    summary = result.summary()
    assert [k for k in summary if k.startswith("pass@")] == ["pass@1", "pass@4", "pass@32"]
    assert summary["pass@1"] == pytest.approx(correct.mean())
    assert summary["pass@32"] == pytest.approx(np.mean(correct.any(1)))
    again = evaluate(model, tokenizer, rows, task, n=32, max_new_tokens=3, batch_size=48, seed=5,
                     greedy=False, progress=False)
    assert again.correct == result.correct and again.greedy_correct == []


def test_evaluate_counts_reward_errors(tiny):
    model, tokenizer = tiny

    def reward(prompts, completions, **_):
        return [1.0 if c[:1].isdigit() else 1 / 0 if c[:1] in "aeiou" else 0.0 for c in completions]

    task = types.SimpleNamespace(NAME="flaky", reward=reward, solution_key=lambda c: c)
    rows = [{"id": "a", "prompt": "1 ->"}, {"id": "b", "prompt": "2 ->"}]
    result = evaluate(model, tokenizer, rows, task, n=64, max_new_tokens=2, greedy=False, progress=False)
    assert result.reward_errors > 0 and sum(result.correct) > 0


def test_near_perfect_split_of_held_out_prompts():
    """The released rule (4 of 4 correct) applied to the base model's own n samples: C(c,4)/C(n,4) >= 1/2."""
    from dphrl_mini.experiments import difficulty_rows, near_perfect_ids

    base = EvalResult(task="countdown", split="test", ids=["a", "b", "c"], n=8, correct=[8, 7, 1],
                      distinct_keys=[{"x"}, {"y"}, {"z"}], greedy_correct=[True, True, False])
    # C(7,4)/C(8,4) = 35/70 = 0.5 -> near-perfect; C(1,4) = 0 -> exploration
    assert near_perfect_ids(base) == {"a", "b"}
    other = EvalResult(task="countdown", split="test", ids=["a", "b", "c"], n=8, correct=[8, 0, 4],
                       distinct_keys=[{"x"}, set(), {"z", "w"}], greedy_correct=[True, False, True])
    rows = {r["split"]: r for r in difficulty_rows("grpo", 0, {"test": other}, {"test": base}, ks=[1, 8])}
    assert rows["test:near-perfect"]["pass@1"] == 0.5 and rows["test:near-perfect"]["kept_frac"] == 0.5
    assert rows["test:exploration"]["pass@1"] == 0.5 and rows["test:exploration"]["distinct_correct"] == 2
    tiered = {r["split"]: r for r in difficulty_rows("grpo", 0, {"test": other}, {"test": base}, ks=[1, 8],
                                                     tiers={"a": "easy", "b": "easy", "c": "hard"})}
    assert tiered["test:easy"]["pass@1"] == 0.5 and tiered["test:hard"]["pass@1"] == 0.5
    assert "test:moderate" not in tiered


def test_prompt_tiers_name_the_difficulty_of_each_countdown_eval_prompt():
    from dphrl_mini.config import preset_config
    from dphrl_mini.experiments import prompt_tiers

    # 10 test prompts, 5 ood and 5 shift prompts
    tiers = prompt_tiers(preset_config("tiny-cpu", task="countdown", eval_size=10, ood_size=5, train_size=10))
    assert len(tiers) == 20 and set(tiers.values()) <= {"easy", "moderate", "hard"}
    assert list(dict.fromkeys(tiers.values())) == [t for t in ("easy", "moderate", "hard") if t in tiers.values()]
    assert prompt_tiers(preset_config("tiny-cpu", task="sql", eval_size=2, ood_size=2, train_size=2)) == {}


def test_pareto_front_keeps_the_undominated_means_over_seeds():
    from dphrl_mini.experiments import pareto_front

    def row(method, seed, p1, p64):
        return {"method": method, "seed": seed, "split": "test", "pass@1": p1, "pass@64": p64}

    rows = [row("base", 0, 0.1, 0.9), row("a", 0, 0.3, 0.5), row("a", 1, 0.1, 0.5),  # mean 0.2 / 0.5
            row("b", 0, 0.25, 0.6), row("c", 0, 0.3, 0.6), row("d", 0, 0.1, 0.9)]
    assert pareto_front(rows) == ["base", "c", "d"]  # a (by its mean) and b are below c; equal points both stay
    assert pareto_front(rows + [row("e", 0, 0.1, 0.95)]) == ["c", "e"]


def test_all_of_k_is_the_unbiased_chance_that_k_samples_are_all_correct():
    from itertools import combinations

    from dphrl_mini.evaluate import all_of_k

    samples = [1, 1, 1, 0, 1, 0, 1, 1]  # 6 of 8 correct
    subsets = list(combinations(samples, 4))
    assert all_of_k(8, 6, 4) == pytest.approx(sum(all(s) for s in subsets) / len(subsets))
    assert all_of_k(8, 3, 4) == 0.0 and all_of_k(4, 4, 4) == 1.0
    with pytest.raises(ValueError):
        all_of_k(8, 9, 4)


def test_stored_results_of_another_draw_of_a_split_are_refused(tmp_path):
    """A stored evaluation counts only if its prompts are those the split now holds: a changed split
    (another seed, or a task whose split definition changed) with the same prompt count is stale."""
    import json

    from dphrl_mini.config import preset_config
    from dphrl_mini.experiments import _stored, save_eval
    from dphrl_mini.tasks import countdown

    config = preset_config("tiny-cpu", task="countdown", eval_size=6, ood_size=4, train_size=8, eval_n=2,
                           output_dir=str(tmp_path))
    def store(seed):
        rows = countdown.make_dataset("test", config.eval_size, seed=seed)
        save_eval(EvalResult(task="countdown", split="test", ids=[r["id"] for r in rows], n=2, correct=[1] * 6,
                             distinct_keys=[{"x"}] * 6, greedy_correct=[True] * 6), tmp_path / "eval_test.json")

    store(config.data_seed)
    assert _stored(tmp_path, config, ["test", "ood"]) == ["test"]
    store(config.data_seed + 1)  # another draw of the same size: the count alone would pass
    assert len(json.loads((tmp_path / "eval_test.json").read_text())["ids"]) == config.eval_size
    with pytest.raises(ValueError, match=r"prompt ids.*differ"):
        _stored(tmp_path, config, ["test"])


def test_compare_runs_a_variant_on_its_own_seeds_and_the_base_on_all(tmp_path, monkeypatch):
    from dphrl_mini import experiments
    from dphrl_mini.config import preset_config

    trained = []
    fake = lambda: {"test": _result([1, 2, 0], greedy=[True, False, False])}  # noqa: E731
    monkeypatch.setattr(experiments, "evaluate_base", lambda cfg, splits: fake())
    monkeypatch.setattr(experiments, "run", lambda cfg, splits: trained.append((cfg.method, cfg.seed)) or {"eval": fake()})
    monkeypatch.setattr(experiments, "prompt_tiers", lambda cfg: {})
    variants = experiments.parse_variants(["grpo:seeds=0-2", "dph_js"])
    assert list(variants) == ["grpo", "dph_js"] and variants["grpo"]["seeds"] == [0, 1, 2]
    rows = experiments.compare(preset_config("tiny-cpu"), variants, seeds=[0], out_dir=tmp_path, splits=["test"],
                               reuse=False)
    assert trained == [("grpo", 0), ("dph_js", 0), ("grpo", 1), ("grpo", 2)]
    assert sorted({r["seed"] for r in rows if r["method"] == "base"}) == [0, 1, 2]
    assert variants["grpo"]["seeds"] == [0, 1, 2]  # the caller's dict is left as it was
