"""Safe reward scoring: a reward function that raises or returns garbage costs one completion, not the run.

The trainer and the pre-sampler call ``score_completions`` with TRL-style reward functions
``fn(prompts, completions, **columns) -> list[float]`` and sum them (DESIGN.md §1, the
verifiable reward R). Departures from TRL's ``GRPOTrainer``, which lets an exception end the run:

1. a function is first called on the whole batch; if it raises, it is called one completion at
   a time, and only the completions whose call raises score 0;
2. a ``None``, NaN or infinite reward scores 0; a wrong-length result scores the batch
   completion by completion;
3. every such failure is counted (``n_errors``, logged by the trainer as ``reward_errors``) and
   its traceback logged once per (function, exception type); ``fail_fast=True`` re-raises instead;
4. ``failures``, when given, collects each failure's message by function name, so that the trainer
   can stop a run whose reward function fails on every completion (``max_reward_error_steps``).
"""

from __future__ import annotations

import logging
import math
import traceback
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


class RewardError(ValueError):
    """A reward function returned something that is not one finite number per completion."""


def reward_name(fn: Callable) -> str:
    """The name a reward function is reported by: its ``__qualname__``, or its class's for a callable object."""
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


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
        raise RewardError(f"reward {value} is not finite")
    return value


def _call(fn: Callable, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list:
    values = list(fn(prompts, completions, **columns))
    if len(values) != len(completions):
        raise RewardError(f"{len(values)} rewards for {len(completions)} completions")
    return values


def score_completions(reward_fns: list[Callable], prompts: list[str], completions: list[str],
                      columns: dict[str, list], fail_fast: bool = False,
                      failures: dict[str, list[str]] | None = None) -> tuple[np.ndarray, int]:
    """Summed rewards (N,) and the number of (function, completion) pairs that failed and scored 0.
    ``failures`` (if given) receives ``{function name: ["ErrorType: message", ...]}``, one entry per
    failed completion.

    >>> def ok(prompts, completions, **_): return [float(c == "4") for c in completions]
    >>> def bad(prompts, completions, **_): return [1 / int(c) for c in completions]
    >>> score_completions([ok, bad], ["2+2="] * 3, ["4", "0", "x"], {})
    (array([1.25, 0.  , 0.  ]), 2)
    """
    n = len(completions)
    total = np.zeros(n, dtype=np.float64)
    n_errors = 0
    for fn in reward_fns:
        try:
            total += [_to_float(v) for v in _call(fn, prompts, completions, columns)]
            continue
        except Exception as err:  # noqa: BLE001 - any failure falls back to per-completion calls
            if fail_fast:
                raise
            batch_error = err
        for i in range(n):
            try:
                row_columns = {k: v[i:i + 1] for k, v in columns.items()}
                total[i] += _to_float(_call(fn, prompts[i:i + 1], completions[i:i + 1], row_columns)[0])
            except Exception as err:  # noqa: BLE001
                n_errors += 1
                _log_once(fn, err)
                if failures is not None:
                    failures.setdefault(reward_name(fn), []).append(f"{type(err).__name__}: {err}")
                batch_error = None
        if batch_error is not None:  # the batch call failed but every single call worked
            _log_once(fn, batch_error)
    return total, n_errors
