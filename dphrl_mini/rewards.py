"""Safe reward scoring: a reward function that raises or returns garbage costs one completion, not the run.

The trainer, the pre-sampler and the evaluation score through one ``Verifier``: TRL-style reward
functions ``fn(prompts, completions, **columns) -> list[float | None]``, summed with weights (DESIGN.md
§1, the verifiable reward R), the threshold at which a total reward counts as correct, and the key
that says which correct completions are the same solution. Chat-format prompts (lists of
``{"role", "content"}`` messages) get chat-format completions, ``[{"role": "assistant", "content": text}]``,
as in TRL. Departures from TRL's ``GRPOTrainer``, which lets an exception end the run:

1. a function is first called on the whole batch; if it raises, it is called one completion at
   a time, and only the completions whose call raises score 0;
2. a ``None``, NaN or infinite reward scores 0 (NaN and inf are also counted apart, logged by the
   trainer as ``reward_nonfinite`` with a warning); a wrong-length result scores the batch completion
   by completion;
3. every such failure is counted (``n_errors``, logged by the trainer as ``reward_errors``) and
   its traceback logged once per (function, exception type); ``fail_fast=True`` re-raises instead;
4. ``failures``, when given, collects each failure's message by function name, so that the trainer
   can stop a run whose reward function fails on every completion (``max_reward_error_steps``).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import re
import traceback
from dataclasses import dataclass
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


class RewardError(ValueError):
    """A reward function returned something that is not one finite number per completion."""


class NonFiniteReward(RewardError):
    """A reward function returned NaN or inf (counted apart: ``score_completions(nonfinite=...)``)."""


def reward_name(fn: Callable) -> str:
    """The name a reward function is reported by: its ``__qualname__``, or its class's for a callable object."""
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def reward_identity(fn: Callable) -> str:
    """``module.name`` of a reward function, with ``@`` and a hash of its source where ``inspect`` finds it,
    so that an edited function is another reward (the pre-sampled split records it)."""
    name = f"{getattr(fn, '__module__', None) or type(fn).__module__}.{reward_name(fn)}"
    try:
        return f"{name}@{hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:12]}"
    except (OSError, TypeError):  # built-in, or defined where there is no source file
        return name


def _log_once(fn: Callable, err: BaseException) -> None:
    key = (reward_name(fn), type(err).__name__)
    if key not in _logged:
        _logged.add(key)
        logger.warning("reward function %s failed (scored 0, logged once per error type):\n%s", key[0],
                       "".join(traceback.format_exception(type(err), err, err.__traceback__)))


def _to_float(value) -> float:
    if value is None or isinstance(value, (str, bytes)):
        raise RewardError(f"reward {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteReward(f"reward {value} is not finite")
    return value


def _call(fn: Callable, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list:
    values = list(fn(prompts, completions, **columns))
    if len(values) != len(completions):
        raise RewardError(f"{len(values)} rewards for {len(completions)} completions")
    return values


def score_completions(reward_fns: list[Callable], prompts: list, completions: list,
                      columns: dict[str, list], fail_fast: bool = False,
                      weights: list[float] | None = None,
                      failures: dict[str, list[str]] | None = None,
                      nonfinite: dict[str, int] | None = None) -> tuple[np.ndarray, int]:
    """Rewards summed with ``weights`` (default 1 each), shape (N,), and the number of (function,
    completion) pairs that failed and scored 0. ``failures`` (if given) receives ``{function name:
    ["ErrorType: message", ...]}``, one entry per failed completion; ``nonfinite`` (if given) ``{function
    name: count}`` of the failures that were NaN or inf rewards.

    >>> def ok(prompts, completions, **_): return [float(c == "4") for c in completions]
    >>> def bad(prompts, completions, **_): return [1 / int(c) for c in completions]
    >>> score_completions([ok, bad], ["2+2="] * 3, ["4", "0", "x"], {})
    (array([1.25, 0.  , 0.  ]), 2)
    """
    n = len(completions)
    total = np.zeros(n, dtype=np.float64)
    n_errors = 0
    for fn, weight in zip(reward_fns, weights or [1.0] * len(reward_fns), strict=True):
        try:
            total += weight * np.array([_to_float(v) for v in _call(fn, prompts, completions, columns)])
            continue
        except Exception as err:  # noqa: BLE001 - any failure falls back to per-completion calls
            if fail_fast:
                raise
            batch_error = err
        for i in range(n):
            try:
                row_columns = {k: v[i:i + 1] for k, v in columns.items()}
                total[i] += weight * _to_float(_call(fn, prompts[i:i + 1], completions[i:i + 1], row_columns)[0])
            except Exception as err:  # noqa: BLE001
                n_errors += 1
                _log_once(fn, err)
                if failures is not None:
                    failures.setdefault(reward_name(fn), []).append(f"{type(err).__name__}: {err}")
                if nonfinite is not None and isinstance(err, NonFiniteReward):
                    nonfinite[reward_name(fn)] = nonfinite.get(reward_name(fn), 0) + 1
                batch_error = None
        if batch_error is not None:  # the batch call failed but every single call worked
            _log_once(fn, batch_error)
    return total, n_errors


def normalized_text(completion: str) -> str:
    """The default solution key: the completion with whitespace collapsed.

    >>> normalized_text("  3*5 +\\n 7 ")
    '3*5 + 7'
    """
    return re.sub(r"\s+", " ", completion).strip()


@dataclass
class Verifier:
    """Everything that judges completions: rewards, what counts as correct, what counts as distinct."""

    reward_fns: list[Callable]
    """TRL-signature reward functions ``f(prompts, completions, **columns) -> list[float | None]``."""
    reward_weights: list[float] | None = None
    """One weight per function (default 1 each); the total reward is the weighted sum."""
    correct_threshold: float = 1.0
    """A completion is correct when its total reward is >= this: the presample split, the training
    solve rate and Pass@k all use this one rule."""
    solution_key: Callable[[str], str | None] = normalized_text
    """Maps a correct completion to its solution, for counting distinct solutions."""
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.reward_fns:
            raise ValueError("no reward function: pass reward_fns=[...] or --reward MODULE:FUNCTION")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_fns):
            raise ValueError(f"{len(self.reward_weights)} reward weights for {len(self.reward_fns)} reward "
                             "functions: give one weight per function")

    @classmethod
    def for_task(cls, task, correct_threshold: float = 1.0) -> "Verifier":
        """A built-in task module's reward and solution key."""
        return cls([task.reward], None, correct_threshold, task.solution_key, task.NAME)

    def score(self, prompts: list, completions: list[str], columns: dict[str, list],
              fail_fast: bool = False, failures: dict[str, list[str]] | None = None,
              nonfinite: dict[str, int] | None = None) -> tuple[np.ndarray, int]:
        """Total rewards (N,) and the number of failed calls; chat prompts get chat completions.
        ``failures`` collects each function's errors, ``nonfinite`` its NaN/inf counts (``score_completions``)."""
        if prompts and isinstance(prompts[0], list):  # conversational, as TRL passes it
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        return score_completions(self.reward_fns, prompts, completions, columns, fail_fast, self.reward_weights,
                                 failures, nonfinite)

    def is_correct(self, rewards: np.ndarray) -> np.ndarray:
        return np.asarray(rewards) >= self.correct_threshold


def as_verifier(task_or_verifier) -> Verifier:
    """A ``Verifier`` as is, or a built-in task module's (``Verifier.for_task``)."""
    return task_or_verifier if isinstance(task_or_verifier, Verifier) else Verifier.for_task(task_or_verifier)
