"""What stops a run, and with which message: each names the setting to change.

A long run absorbs what it can and counts it: a reward function that raises scores 0 on that
completion (``reward_errors``), a step whose loss or gradient is not finite is skipped
(``skipped_updates``). It stops when absorbing no longer makes sense: after ``max_nonfinite_steps``
skipped steps in a row, or weights that are themselves NaN or inf (``NonFiniteError``, and no
checkpoint is written then); after ``max_reward_error_steps`` steps in a row in which one reward
function failed on every completion (``RewardFunctionError``); on running out of GPU memory
(``OOM_HINT``).
"""

from __future__ import annotations

import warnings

from .config import TrainConfig

OOM_HINT = ("out of GPU memory: lower `micro_batch_size` or `generation_batch_size`, shorten "
            "`max_new_tokens`, set `gradient_checkpointing=True`, or load the model with "
            "`quantization='4bit'`")


class NonFiniteError(RuntimeError):
    """Raised after ``max_nonfinite_steps`` consecutive steps with a non-finite loss or gradient, or
    when the weights themselves are no longer finite (no checkpoint is written then)."""


class RewardFunctionError(ValueError):
    """Raised after ``max_reward_error_steps`` consecutive steps in which a reward function failed on
    every completion: such a run would train on nothing."""


def check_streaks(cfg: TrainConfig, reward_failure_streak: dict[str, int], first_errors: dict[str, str],
                  nonfinite_in_a_row: int) -> None:
    """Stop the run (after its step is logged) when a failure has lasted too many steps in a row."""
    for name, streak in reward_failure_streak.items():
        if streak >= cfg.max_reward_error_steps:
            raise RewardFunctionError(
                f"reward function `{name}` failed on every completion for {streak} steps in a row "
                f"(max_reward_error_steps={cfg.max_reward_error_steps}), so the run learns nothing; its "
                f"first error: {first_errors[name]}. A reward function must return one finite number "
                "per completion; set fail_fast=True to see the full traceback")
    if nonfinite_in_a_row >= cfg.max_nonfinite_steps:
        raise NonFiniteError(
            f"{nonfinite_in_a_row} steps in a row (max_nonfinite_steps={cfg.max_nonfinite_steps}) had a "
            "non-finite loss or gradient and were skipped; lower `lr` or `max_grad_norm` (e.g. 0.5), use "
            "dtype='float32', or check the reward function for NaN/inf")


def warn_nonfinite(step: int, nonfinite: dict[str, int]) -> None:
    """Say which reward functions returned NaN or inf at ``step`` (scored 0; the metric ``reward_nonfinite``)."""
    if nonfinite:
        warnings.warn(f"step {step}: reward function(s) returned NaN or inf ("
                      + ", ".join(f"`{name}` {n}x" for name, n in nonfinite.items())
                      + "), scored 0; a reward must be a finite number (metric reward_nonfinite)")
