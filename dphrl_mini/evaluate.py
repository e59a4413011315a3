"""Pass@k evaluation: unbiased pass@k, greedy accuracy, distinct correct solutions, kept/lost.

DESIGN.md §1 "DPH-RL as released", step 4. Each prompt is sampled ``n`` times (n >= 64 on the
tiny tasks); with c correct samples the unbiased estimator (Chen et al. 2021, Codex) is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

computed in the product form, which never forms a huge binomial coefficient. Diversity is the
number of distinct correct solutions per prompt (``Verifier.solution_key``), and ``kept_lost`` says
which prompts the base model solved (at least one correct of n) that a trained model keeps or loses
(papers/dph-rl.md §3, the "keep vs additional exploration" breakdown).

A completion counts as correct when its total reward is >= the verifier's ``correct_threshold``
(default 1: verifiable 0/1 rewards), the same rule as the pre-sampling split (``data``) and training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .data import reward_columns
from .rewards import RewardState, Verifier, as_verifier
from .rollout import generate


def _check_pass_at_k_args(n: int, c: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"n={n!r} must be >= 1")
    if not 0 <= c <= n:
        raise ValueError(f"c={c!r} must lie in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"k={k!r} must lie in [1, n={n}]")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct among ``n`` samples, in the stable product form.

    >>> pass_at_k(4, 1, 2)
    0.5
    """
    _check_pass_at_k_args(n, c, k)
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def all_of_k(n: int, c: int, k: int) -> float:
    """Unbiased chance that ``k`` fresh samples are all correct, from ``c`` correct among ``n``:
    C(c, k) / C(n, k). With k = 4 it is the chance that the released split rule (4 of 4 correct)
    puts the prompt in D_pef.

    >>> all_of_k(8, 7, 4)
    0.5
    """
    _check_pass_at_k_args(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


def pass_at_k_curve(n: int, correct_counts, ks) -> np.ndarray:
    """Mean pass@k over prompts for every k in ``ks``: an array of shape (len(ks),).

    Vectorized: for each k, the products prod_{i=n-c+1}^{n} (1 - k/i) for every c are the running
    products of (1 - k/i) from i = n downwards; the term i = k is 0, which gives 1.0 exactly
    when n - c < k.
    """
    counts = np.asarray(correct_counts, dtype=int)  # (n_prompts,)
    if counts.size == 0:
        raise ValueError("correct_counts is empty")
    if counts.min() < 0 or counts.max() > n:
        raise ValueError(f"correct_counts must lie in [0, n={n}]")
    i = np.arange(n, 0, -1, dtype=float)  # (n,) n, n-1, ..., 1
    curve = []
    for k in ks:
        _check_pass_at_k_args(n, 0, int(k))
        top_products = np.concatenate([[1.0], np.cumprod(1.0 - k / i)])  # (n+1,) index = c
        curve.append(float(np.mean(1.0 - top_products[counts])))
    return np.array(curve)


def default_ks(n: int) -> list[int]:
    """Powers of two up to n, and n itself."""
    ks = [2**j for j in range(n.bit_length()) if 2**j <= n]
    return ks if ks[-1] == n else ks + [n]


@dataclass
class EvalResult:
    """Per-prompt results of :func:`evaluate` on one task split."""

    task: str
    split: str
    ids: list[str]
    n: int
    """Samples per prompt."""
    correct: list[int]
    """Correct samples (total reward >= correct_threshold) per prompt, out of n."""
    distinct_keys: list[set[str]] = field(default_factory=list)
    """Distinct ``Verifier.solution_key`` of the correct samples, per prompt."""
    greedy_correct: list[bool] = field(default_factory=list)
    """Whether the greedy completion is correct, per prompt (empty if greedy was not run)."""
    reward_errors: int = 0
    """Completions whose reward function raised (scored 0)."""
    ks: list[int] | None = None
    """The k of ``summary()`` and ``pass_at_k_curve()`` by default (None: powers of 2 and n)."""

    def pass_at_k_curve(self, ks: list[int] | None = None) -> dict[int, float]:
        """Mean pass@k for each k in ``ks`` (default ``self.ks``); k > n is left out, since
        pass@k needs at least k samples."""
        ks = ks or self.ks or default_ks(self.n)
        ks = [int(k) for k in ks if k <= self.n]
        return dict(zip(ks, pass_at_k_curve(self.n, self.correct, ks).tolist()))

    def summary(self, ks: list[int] | None = None) -> dict[str, float]:
        """``greedy`` accuracy, ``pass@k`` for each k <= n, mean ``distinct_correct`` solutions per
        prompt, ``n_prompts``, ``n`` and ``reward_errors``."""
        greedy = float(np.mean(self.greedy_correct)) if self.greedy_correct else float("nan")
        out: dict[str, float] = {"greedy": greedy}
        out.update({f"pass@{k}": v for k, v in self.pass_at_k_curve(ks).items()})
        out["distinct_correct"] = float(np.mean([len(s) for s in self.distinct_keys]))
        out["n_prompts"] = len(self.ids)
        out["n"] = self.n
        out["reward_errors"] = self.reward_errors
        return out


def evaluate(model, tokenizer, rows: list[dict], verifier: Verifier, n: int = 64, ks: list[int] | None = None,
             max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
             batch_size: int = 512, seed: int = 0, greedy: bool = True, progress: bool = True, *,
             split: str = "", prompts: list[str] | None = None, add_special_tokens: bool = True,
             trainer_state: RewardState | None = None) -> EvalResult:
    """Sample ``n`` completions per row (seeded), score them with ``verifier`` (a built-in task module
    also works: ``rewards.as_verifier``), and, if ``greedy``, score one greedy completion per row.
    ``prompts`` overrides the text fed to the model (e.g. chat-templated, then with
    ``add_special_tokens=False``); rewards always see ``row["prompt"]`` and the row's columns, with TRL's
    keywords (``rewards``; ``trainer_state`` defaults to step 0).
    ``ks`` become the result's default k (those above n are dropped by ``summary``).
    """
    verifier = as_verifier(verifier)
    model_prompts = prompts or [row["prompt"] for row in rows]
    task_prompts = [row["prompt"] for row in rows]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    sampling = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                    add_special_tokens=add_special_tokens)
    rollout = generate(model, tokenizer, model_prompts, num_generations=n, temperature=temperature, top_p=top_p,
                       generator=generator, **sampling)
    rewards, errors = verifier.score([p for p in task_prompts for _ in range(n)], rollout.completions,
                                     reward_columns(rows, n), completion_ids=rollout.completion_id_lists(),
                                     trainer_state=trainer_state)
    correct = verifier.is_correct(rewards).reshape(len(rows), n)  # (n_prompts, n)
    distinct_keys = []
    for i in range(len(rows)):
        keys = (verifier.solution_key(rollout.completions[i * n + j]) for j in np.flatnonzero(correct[i]))
        distinct_keys.append({key for key in keys if key is not None})
    greedy_correct: list[bool] = []
    if greedy:
        best = generate(model, tokenizer, model_prompts, greedy=True, **sampling)
        greedy_rewards, greedy_errors = verifier.score(task_prompts, best.completions, reward_columns(rows, 1),
                                                       completion_ids=best.completion_id_lists(),
                                                       trainer_state=trainer_state)
        greedy_correct = verifier.is_correct(greedy_rewards).tolist()
        errors += int(greedy_errors)
    return EvalResult(task=verifier.name, split=split, ids=[row["id"] for row in rows], n=n,
                      correct=correct.sum(1).tolist(), distinct_keys=distinct_keys,
                      greedy_correct=greedy_correct, reward_errors=errors,
                      ks=None if ks is None else list(ks))


def kept_lost(base: EvalResult, other: EvalResult) -> dict[str, float]:
    """Which prompts the base model solved (>= 1 correct of n, i.e. pass@n > 0) the other model
    keeps or loses, and which it newly solves; prompts are matched by id."""
    if set(base.ids) != set(other.ids):
        raise ValueError("base and other were evaluated on different prompts (ids differ)")
    other_solved = {i: c > 0 for i, c in zip(other.ids, other.correct)}
    base_solved = {i: c > 0 for i, c in zip(base.ids, base.correct)}
    solved = sum(base_solved.values())
    kept = sum(1 for i, s in base_solved.items() if s and other_solved[i])
    newly = sum(1 for i, s in base_solved.items() if not s and other_solved[i])
    return {"base_solved": solved, "kept": kept, "lost": solved - kept, "newly_solved": newly,
            "kept_frac": kept / solved if solved else float("nan")}
