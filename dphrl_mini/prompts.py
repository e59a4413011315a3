"""Which prompts the trainer trains on: the prompt text, the pool a step draws from, and the cursors.

* ``prompt_text``: what the model sees of a row (the chat template's rendering, or the prompt).
* ``prepare``: for DPH methods (and ``train_on`` "exploration"/"learnable") the pre-sampled split
  of DESIGN.md §1, "DPH-RL as released", step 1 (``data.presample``, run once by the main process
  and saved in the run folder, or loaded from there), and the RL prompt pool it chooses: D_exp for
  DPH, the prompts some sample solved for "learnable".
* ``next_rows`` and ``next_reference_indices``: seeded per-epoch (per-pass) permutations of the
  pool and of the reference store, whose positions (``data_state``) a checkpoint saves, so that a
  resumed run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from peft import PeftModel

from .config import TrainConfig
from .data import PresampleResult, presample, presample_source
from .models import reference_mode
from .rewards import Verifier


def prompt_text(tokenizer, row: dict, templated: bool) -> str:
    """The text the model sees: chat messages (or, with ``chat_template``, the prompt as one user
    turn) rendered by the tokenizer's chat template; otherwise the prompt itself."""
    prompt = row["prompt"]
    if not templated:
        return prompt
    if tokenizer.chat_template is None:
        raise ValueError("chat-format prompts (or chat_template=True) need a tokenizer with a chat template; "
                         "this one has none: give plain-text prompts and chat_template=False")
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def needs_split(cfg: TrainConfig) -> bool:
    """DPH methods rehearse the near-perfect set; "exploration" and "learnable" pools need the pass rates."""
    return cfg.dph_divergence() is not None or cfg.train_on in ("exploration", "learnable")


def prepare(cfg: TrainConfig, folder: Path, acc, policy, tokenizer, train_rows: list[dict], verifier: Verifier,
            fingerprint: str, prompt_text: Callable[[dict], str], templated: bool,
            presampled: PresampleResult | None = None) -> tuple[PresampleResult, list[dict]]:
    """Pre-sample once (or load the saved split) and choose the RL prompt pool; returns (split, pool).
    ``acc`` is the run's ``Accelerator``: under DDP the main process samples, the others wait and load."""
    pool = train_rows
    saved = (folder / "presample.json").exists()
    source = presample_source(cfg, verifier, train_rows, templated)  # where the split comes from: checked when reused
    if not saved and acc.is_main_process:  # DDP: the main process samples, the others wait and load
        # the initial policy is pi_ref: presampling runs before any update (also when resuming)
        with reference_mode(policy) if isinstance(policy, PeftModel) else contextlib.nullcontext():
            presampled = presample(
                policy, tokenizer, train_rows, verifier, k=cfg.presample_k,
                threshold=cfg.presample_threshold, keep=cfg.keep_references, fingerprint=fingerprint,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                batch_size=cfg.generation_batch_size, seed=cfg.seed, packed=cfg.pack_sequences,
                prompts=[prompt_text(r) for r in train_rows], progress=cfg.progress,
                add_special_tokens=not templated)
        presampled.source = source
        folder.mkdir(parents=True, exist_ok=True)
        presampled.save(folder)
    if not saved:
        acc.wait_for_everyone()
    if presampled is None:
        presampled = PresampleResult.load(folder, train_rows, fingerprint, source)
    if cfg.train_on in ("auto", "exploration", "learnable"):
        dph_or_exploration = cfg.dph_divergence() is not None or cfg.train_on == "exploration"
        chosen = presampled.exploration if dph_or_exploration else train_rows
        if cfg.train_on == "learnable":  # groups of never-solved prompts have zero advantage
            chosen = [r for r in chosen if presampled.pass_rates[r["id"]] > 0]
        if chosen:
            pool = chosen
        else:
            warnings.warn(f"no training prompt fits train_on={cfg.train_on!r}; training on all prompts")
    if cfg.dph_divergence() and len(presampled.store) == 0:
        warnings.warn("the reference store is empty (no near-perfect prompts): the DPH term is 0; "
                      "lower `presample_threshold` or raise `presample_k`")
    return presampled, pool


def next_rows(pool: list[dict], data_state: dict, seed: int, n: int) -> list[dict]:
    """The next ``n`` prompts of a seeded per-epoch permutation of ``pool`` (advances ``data_state``)."""
    rows = []
    while len(rows) < n:
        order = np.random.RandomState(seed + 1000 * data_state["epoch"]).permutation(len(pool))
        take = order[data_state["cursor"]: data_state["cursor"] + n - len(rows)]
        rows += [pool[i] for i in take]
        data_state["cursor"] += len(take)
        if data_state["cursor"] >= len(pool):
            data_state.update(epoch=data_state["epoch"] + 1, cursor=0)
    return rows


def next_reference_indices(size: int, data_state: dict, seed: int, process_index: int, n: int) -> list[int]:
    """The next ``n`` stored reference rows of a seeded per-pass permutation of a store of ``size`` rows:
    every update rehearses fresh rows, and each row once per pass, as the release's shuffled chunks do
    (advances ``data_state``; each DDP process takes its own pass)."""
    state = data_state
    indices: list[int] = []
    while len(indices) < n:
        pass_seed = seed * 1_000_003 + 7_919 * state["reference_pass"] + process_index
        order = np.random.RandomState(pass_seed % 2**32).permutation(size)
        take = order[state["reference_cursor"]: state["reference_cursor"] + n - len(indices)]
        indices += [int(i) for i in take]
        state["reference_cursor"] += len(take)
        if state["reference_cursor"] >= size:
            state.update(reference_pass=state["reference_pass"] + 1, reference_cursor=0)
    return indices
