"""Reward scoring with TRL's calling convention; a reward that raises or returns garbage costs one completion.

The trainer, the pre-sampler, the evaluation and the TRL plug-in score through one ``Verifier``: reward
functions summed with weights (DESIGN.md §1, the verifiable reward R), the threshold at which a total
reward counts as correct, and the key that says which correct completions are the same solution.
Every reward function is called by keyword, exactly as TRL 1.16's ``GRPOTrainer`` calls it::

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
       **columns)  # -> list[float | None], one per completion

* ``prompts``: the dataset's prompt of each completion (text, or chat messages);
* ``completions``: the texts; for chat prompts ``[{"role": "assistant", "content": text}]``, as in TRL;
* ``completion_ids``: each completion's token ids (its EOS included when it ended with one);
* ``trainer_state``: a ``RewardState`` (``global_step``, ``max_steps``), for rewards that change with training;
* ``log_extra(column, values)``: one value per completion, written beside the completions of each training
  step's first prompt group (``samples.jsonl`` of a run); ``log_metric(name, value)``: a number, averaged per
  step into ``metrics.jsonl`` (a name the step already logs gets ``reward/``); both are accepted and not
  kept while pre-sampling and evaluating;
* every dataset column (but ``id``), one value per completion.

An ``async def`` reward is awaited on one background event loop (TRL also runs them on a loop of their own;
it works inside Jupyter). Positional fallback, read from the signature and never guessed: positional-only
parameters (``def f(prompts, completions, /, **kwargs)``) get ``prompts``, ``completions``, ``completion_ids``
in that order.

``None`` means "no reward for this sample", as in TRL, which turns it into NaN and sums with ``nansum``: the
total is the weighted sum of the rewards that are numbers; a completion for which every function returned
``None`` is unscorable, its total NaN. It is never correct, and the trainer leaves it out of its group's
mean and std and gives it advantage 0 (``losses.group_advantages``), TRL's rule.

Departures from TRL's ``GRPOTrainer``, which lets an exception end the run:

1. a function is first called on the whole batch; if it raises, it is called one completion at
   a time, and only the completions whose call raises score 0;
2. a NaN, infinite or non-number reward scores 0 (NaN and inf are also counted apart, logged by the
   trainer as ``reward_nonfinite`` with a warning); a wrong-length result scores the batch
   completion by completion;
3. every such failure is counted (``n_errors``, logged by the trainer as ``reward_errors``) and
   its traceback logged once per (function, exception type); ``fail_fast=True`` re-raises instead;
4. ``failures``, when given, collects each failure's message by function name, so that the trainer
   can stop a run whose reward function fails on every completion (``max_reward_error_steps``) and
   pre-sampling can refuse one at once;
5. several ``async def`` rewards are awaited one after the other, not gathered.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import math
import re
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()

TRL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
"""The keywords every reward function gets besides the dataset columns (TRL's ``_calculate_rewards``)."""

NOT_REWARD_COLUMNS = ("id", "prompt", "completion", "completion_ids")
"""Row fields that do not reach reward functions as columns: ``prompt`` arrives as ``prompts=``; TRL leaves
out ``completion`` and ``completion_ids`` too; ``id`` is ours (it names rows in the pre-sampling split)."""


class RewardError(ValueError):
    """A reward function returned something that is not one finite number (or None) per completion."""


@dataclass
class RewardState:
    """The ``trainer_state`` a reward function gets: the fields of TRL's ``transformers.TrainerState``
    that a reward reads to change with training."""

    global_step: int = 0
    """RL steps done (0 while pre-sampling and for the base model's evaluation)."""
    max_steps: int = 0
    """Steps the run takes (0 outside training)."""


@dataclass
class RewardLog:
    """What reward functions logged while one batch was scored (``log_extra``, ``log_metric``)."""

    extra: dict[str, list] = field(default_factory=dict)
    """Column -> one value per completion (None where no successful call logged one)."""
    metrics: dict[str, list[float]] = field(default_factory=dict)
    """Name -> every value logged."""

    def metric_means(self) -> dict[str, float]:
        """Each metric averaged over the calls that logged it (TRL averages per logging step)."""
        return {name: float(np.mean(values)) for name, values in self.metrics.items() if values}

    def samples(self, prompts: list, completions: list[str], rewards, indices) -> list[dict[str, Any]]:
        """One record per completion of ``indices``: prompt, completion, total reward (None when
        unscorable) and every logged extra column."""
        return [{"prompt": prompts[i], "completion": completions[i],
                 "reward": None if math.isnan(rewards[i]) else float(rewards[i]),
                 **{column: values[i] for column, values in self.extra.items()}} for i in indices]

    def write_samples(self, path: Path, step: int, prompts: list, completions: list[str], rewards, indices) -> None:
        """Append the records of completions ``indices`` (``samples``), each with ``step``, to the JSONL
        file ``path``; lines of this step or later (a resumed run's, or one cut by a kill) are dropped first."""
        if path.exists() and path.stat().st_size and _last_step(path) >= step:
            kept = [line for line in path.read_text().splitlines(keepends=True) if _step_of(line) < step]
            path.write_text("".join(kept))
        with open(path, "a") as handle:
            for record in self.samples(prompts, completions, rewards, indices):
                handle.write(json.dumps({"step": step, **record}, default=str) + "\n")


def _step_of(line: str | bytes) -> float:
    """The step of a JSONL line; infinity for a line a kill cut short."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _last_step(path: Path) -> float:
    """The step of the last line of ``path``, read from its end."""
    with open(path, "rb") as handle:
        end = handle.seek(0, 2)
        block = 4096
        while True:
            start = max(end - block, 0)
            handle.seek(start)
            lines = handle.read().rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                return _step_of(lines[-1])
            block *= 4


class _Hooks:
    """``log_extra``/``log_metric`` of one call on ``n`` completions, kept only if the call succeeds."""

    def __init__(self, n: int):
        self.n, self.extra, self.metrics = n, {}, []

    def log_extra(self, column: str, values: list) -> None:
        values = list(values)
        if len(values) != self.n:
            raise RewardError(f"log_extra({column!r}, values) got {len(values)} values for {self.n} completions")
        self.extra[str(column)] = values

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.append((str(name), float(value)))

    def commit(self, log: RewardLog | None, start: int, total: int) -> None:
        if log is None:
            return
        for column, values in self.extra.items():
            log.extra.setdefault(column, [None] * total)[start:start + self.n] = values
        for name, value in self.metrics:
            log.metrics.setdefault(name, []).append(value)


class NonFiniteReward(RewardError):
    """A reward function returned NaN or inf (counted apart: ``score_completions(nonfinite=...)``)."""


def reward_name(fn: Callable) -> str:
    """The name a reward function is reported by: its ``__qualname__``, or its class's for a callable object."""
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def positional_only(fn: Callable) -> int:
    """How many positional-only parameters ``fn`` has (0 when its signature cannot be read)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.kind is p.POSITIONAL_ONLY for p in parameters)


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


def _to_reward(value) -> float:
    """A reward as a float; None (no reward) as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)):
        raise RewardError(f"reward {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise NonFiniteReward(f"reward {value} is not finite")
    return value


_loop: asyncio.AbstractEventLoop | None = None


def _wait(awaitable):
    """The result of an ``async def`` reward, awaited on one background event loop (Jupyter runs its own)."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
        threading.Thread(target=_loop.run_forever, name="dphrl-mini rewards", daemon=True).start()

    async def result():
        return await awaitable

    return asyncio.run_coroutine_threadsafe(result(), _loop).result()


def _call(fn: Callable, n_positional: int, kwargs: dict[str, Any], n: int) -> list:
    kwargs = dict(kwargs)
    args = [kwargs.pop(name) for name in TRL_KEYWORDS[:min(n_positional, 3)]]
    values = fn(*args, **kwargs)
    if inspect.isawaitable(values):
        values = _wait(values)
    values = list(values)
    if len(values) != n:
        raise RewardError(f"{len(values)} rewards for {n} completions")
    return values


def score_completions(reward_fns: list[Callable], prompts: list, completions: list,
                      columns: dict[str, list], fail_fast: bool = False,
                      weights: list[float] | None = None,
                      failures: dict[str, list[str]] | None = None, nonfinite: dict[str, int] | None = None, *,
                      completion_ids: list[list[int]] | None = None, trainer_state: RewardState | None = None,
                      log: RewardLog | None = None) -> tuple[np.ndarray, int]:
    """Rewards summed with ``weights`` (default 1 each), shape (N,), NaN where every function returned
    None, and the number of (function, completion) pairs that failed and scored 0. ``failures`` (if
    given) receives ``{function name: ["ErrorType: message", ...]}``, one entry per failed completion;
    ``nonfinite`` (if given) ``{function name: count}`` of the failures that were NaN or inf rewards;
    ``log`` (if given) receives what the functions logged.

    >>> def ok(completions, **kwargs): return [float(c == "4") for c in completions]
    >>> def bad(prompts, completions, **kwargs): return [1 / int(c) for c in completions]
    >>> score_completions([ok, bad], ["2+2="] * 3, ["4", "0", "x"], {})
    (array([1.25, 0.  , 0.  ]), 2)
    """
    n = len(completions)
    state = trainer_state or RewardState()

    def call(fn: Callable, n_positional: int, part: slice, hooks: _Hooks) -> list[float]:
        kwargs = {k: v[part] for k, v in columns.items()}
        kwargs.update(prompts=prompts[part], completions=completions[part],
                      completion_ids=None if completion_ids is None else completion_ids[part],
                      trainer_state=state, log_extra=hooks.log_extra, log_metric=hooks.log_metric)
        return [_to_reward(v) for v in _call(fn, n_positional, kwargs, hooks.n)]

    per_function = np.zeros((len(reward_fns), n), dtype=np.float64)  # (F, N), NaN = no reward (None)
    n_errors = 0
    for f, fn in enumerate(reward_fns):
        n_positional = positional_only(fn)
        try:
            hooks = _Hooks(n)
            per_function[f] = call(fn, n_positional, slice(0, n), hooks)
            hooks.commit(log, 0, n)
            continue
        except Exception as err:  # noqa: BLE001 - any failure falls back to per-completion calls
            if fail_fast:
                raise
            batch_error = err
        for i in range(n):
            try:
                hooks = _Hooks(1)
                per_function[f, i] = call(fn, n_positional, slice(i, i + 1), hooks)[0]
                hooks.commit(log, i, n)
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
    weighted = per_function * np.asarray(weights or [1.0] * len(reward_fns), dtype=np.float64)[:, None]
    total = np.nansum(weighted, axis=0)  # (N,) TRL's nansum over functions
    unscorable = np.isnan(per_function).all(0)
    total[unscorable] = np.nan
    if unscorable.any() and ("<every function>", "None") not in _logged:
        _logged.add(("<every function>", "None"))
        logger.warning("every reward function returned None for %d of %d completions: they are unscorable "
                       "(never correct; advantage 0 in training). Logged once.", int(unscorable.sum()), n)
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
    """Reward functions with TRL's signature, called by keyword (see the module docstring)."""
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
              nonfinite: dict[str, int] | None = None, *, completion_ids: list[list[int]] | None = None,
              trainer_state: RewardState | None = None, log: RewardLog | None = None) -> tuple[np.ndarray, int]:
        """Total rewards (N,) (NaN: unscorable) and the number of failed calls; chat prompts get chat
        completions. ``failures`` collects each function's errors, ``nonfinite`` its NaN/inf counts, ``log``
        what they logged (``score_completions``)."""
        if prompts and isinstance(prompts[0], list):  # conversational, as TRL passes it
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        return score_completions(self.reward_fns, prompts, completions, columns, fail_fast, self.reward_weights,
                                 failures, nonfinite, completion_ids=completion_ids, trainer_state=trainer_state,
                                 log=log)

    def is_correct(self, rewards: np.ndarray) -> np.ndarray:
        return np.asarray(rewards) >= self.correct_threshold


def as_verifier(task_or_verifier) -> Verifier:
    """A ``Verifier`` as is, or a built-in task module's (``Verifier.for_task``)."""
    return task_or_verifier if isinstance(task_or_verifier, Verifier) else Verifier.for_task(task_or_verifier)
