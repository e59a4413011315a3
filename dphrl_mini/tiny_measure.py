"""How the tiny model is measured: the figures a base model of the papers' regime must show.

``measure`` runs the project's own evaluator (``evaluate.evaluate``: temperature 1, no top-k/top-p,
the experiments' sampler and scorer) on the held-out splits and on the RL training prompts;
``TARGETS`` are the papers' regime in miniature (moderate Pass@1, high Pass@k, a near-perfect set,
reachable out-of-domain splits); ``figures_table`` prints the figures against them, as the model's
README does. Used by the build (``tiny_build.py``) and its ``--measure`` flag.
"""

from __future__ import annotations

import math
import statistics

MAX_NEW_TOKENS = {"countdown": 32, "sql": 96}  # sampled tokens per answer, in the rounds and in `measure`
MEASURE_PROMPTS, MEASURE_SAMPLES = 100, 64  # per split, per prompt (README numbers)
# The test split is measured on more prompts: with 100, Pass@64 moves a point per prompt, and a model
# picked among several builds by its 100-prompt figure would read high there.
MEASURE_TEST_PROMPTS = {"countdown": 600, "sql": 300}


def measure(model, tokenizer, n_prompts: int = MEASURE_PROMPTS, n: int = MEASURE_SAMPLES, seed: int = 0,
            train_prompts: dict[str, int] | None = None, test_prompts: dict[str, int] | None = None,
            progress: bool = False) -> dict[str, dict]:
    """The figures the RLVR experiments need from a base model, with the project's own evaluator
    (``evaluate.evaluate``: temperature 1, no top-p; the experiments' sampler and scorer):

    * ``{task}/test``, ``{task}/ood`` and ``{task}/shift``: Pass@1, Pass@n and distinct correct
      solutions per prompt on held-out prompts, ``test_prompts[task]`` (``MEASURE_TEST_PROMPTS``) for the
      test split and ``n_prompts`` for the others (Countdown also per difficulty); the test split's
      Pass@1 and Pass@n also with their standard errors over prompts;
    * ``{task}/train``: on the RL training prompts (``make_dataset("train", size, seed=0)``, the
      experiments' ``train_size``), the share that is near-perfect under the released rule (4 of 4
      samples correct) and under "6 of 8", and the 4-of-4 share's expectation over draws of the rule,
      estimated from the 8 samples (with its standard error).
    """
    from .evaluate import all_of_k, evaluate, pass_at_k
    from .tasks import countdown, sql

    train_prompts = train_prompts or {"countdown": 2000, "sql": 400}
    test_prompts = test_prompts or MEASURE_TEST_PROMPTS
    results: dict[str, dict] = {}
    for task in (countdown, sql):
        max_new = MAX_NEW_TOKENS[task.NAME]
        for split in ("test", "ood", "shift"):
            rows = task.make_dataset(split, test_prompts[task.NAME] if split == "test" else n_prompts, seed=seed)
            result = evaluate(model, tokenizer, rows, task, n=n, ks=[1, n], max_new_tokens=max_new, seed=seed,
                              greedy=False, progress=progress)
            summary = result.summary()
            results[f"{task.NAME}/{split}"] = {k: summary[k] for k in ("pass@1", f"pass@{n}", "distinct_correct")}
            if split == "test":  # standard errors over prompts: is a figure near its bound within noise?
                for k in (1, n):
                    results[f"{task.NAME}/test"][f"pass@{k} (std err)"] = _std_err(
                        [pass_at_k(n, c, k) for c in result.correct])
            if "difficulty" in rows[0]:
                for level in task.DIFFICULTIES:
                    c = [c for c, row in zip(result.correct, rows) if row["difficulty"] == level]
                    if c:
                        results[f"{task.NAME}/{split}"][f"pass@1 {level}"] = sum(c) / (n * len(c))
        rows = task.make_dataset("train", train_prompts[task.NAME], seed=0)
        shares, correct = {}, {}
        for k, need in ((4, 4), (8, 6)):
            correct[k] = evaluate(model, tokenizer, rows, task, n=k, max_new_tokens=max_new, seed=seed + k,
                                  greedy=False, progress=progress).correct
            shares[f"near-perfect {need}/{k}"] = sum(c >= need for c in correct[k]) / len(rows)
        # The 4/4 share above is one draw of the released rule (near 10% it varies by about 0.7 points,
        # 13 of 2,000 prompts, from draw to draw); its expectation, estimated without bias from the 8
        # samples of each prompt (``all_of_k``: C(c, 4) / C(8, 4)), with its standard error.
        chances = [all_of_k(8, c, 4) for c in correct[8]]
        shares["expected near-perfect 4/4"] = sum(chances) / len(rows)
        shares["expected near-perfect 4/4 (std err)"] = _std_err(chances)
        results[f"{task.NAME}/train"] = shares
    return results


def _std_err(values: list[float]) -> float:
    """Standard error of the mean of per-prompt values."""
    return statistics.stdev(values) / math.sqrt(len(values))


TARGETS: tuple[tuple[str, str, float, float], ...] = (
    # (result key, metric, lower bound, upper bound): the papers' regime in miniature
    ("countdown/test", "pass@1", 0.30, 0.50),
    ("countdown/test", f"pass@{MEASURE_SAMPLES}", 0.95, 1.0),
    ("countdown/test", "pass@1 (std err)", 0.0, 1.0),
    ("countdown/test", f"pass@{MEASURE_SAMPLES} (std err)", 0.0, 1.0),
    ("countdown/test", "distinct_correct", 3.0, float("inf")),
    ("countdown/train", "near-perfect 4/4", 0.10, 1.0),
    ("countdown/train", "expected near-perfect 4/4", 0.0, 1.0),
    ("countdown/train", "expected near-perfect 4/4 (std err)", 0.0, 1.0),
    ("countdown/train", "near-perfect 6/8", 0.0, 1.0),
    ("countdown/ood", f"pass@{MEASURE_SAMPLES}", 0.20, 1.0),
    ("countdown/shift", f"pass@{MEASURE_SAMPLES}", 0.20, 1.0),
    ("sql/test", "pass@1", 0.10, 1.0),
    ("sql/test", f"pass@{MEASURE_SAMPLES}", 0.50, 1.0),
    ("sql/test", "pass@1 (std err)", 0.0, 1.0),
    ("sql/test", f"pass@{MEASURE_SAMPLES} (std err)", 0.0, 1.0),
    ("sql/train", "near-perfect 4/4", 0.0, 1.0),
    ("sql/ood", f"pass@{MEASURE_SAMPLES}", 0.20, 1.0),
    ("sql/shift", f"pass@{MEASURE_SAMPLES}", 0.20, 1.0),
)


def figures_table(results: dict[str, dict]) -> str:
    """Every measured figure as a Markdown table, each target marked met or missed (4 decimals: a
    share of 2,000 prompts that misses its bound by one prompt, 0.0995, does not print as 0.100)."""
    lines = ["| split | figure | value | target | |", "|---|---|---|---|---|"]
    targeted = set()
    for key, metric, lo, hi in TARGETS:
        if key not in results or metric not in results[key]:
            continue
        targeted.add((key, metric))
        value = results[key][metric]
        target = "report" if (lo, hi) == (0.0, 1.0) else (f">= {lo:g}" if hi in (1.0, float("inf")) else f"{lo:g}-{hi:g}")
        verdict = "" if target == "report" else ("met" if lo <= value <= hi else "**missed**")
        lines.append(f"| {key} | {metric} | {value:.4f} | {target} | {verdict} |".replace("|  |", "| |"))
    lines += [f"| {key} | {metric} | {value:.4f} | | |" for key, figures in results.items()
              for metric, value in figures.items() if (key, metric) not in targeted]
    return "\n".join(lines)
