"""The RLVR training loop: GRPO/DAPO/RKL baselines, DPH-RL rehearsal and MARA (DESIGN.md §1).

One step (``Trainer.step``):
1. draw ``prompts_per_step`` training prompts (D_exp for DPH methods) and sample G completions each;
2. score them with the run's verifier (``rewards.Verifier``: the task's reward or the user's, from
   ``sources.task_data``, the one way data and rewards enter; a raising reward scores 0 and is counted);
3. [MARA] augment each group's rewards with the anchor rule (``toy_bandits.mara_rewards``,
   sequence log-probs from the online reference = the same model with adapters disabled);
4. group-normalized advantages; then ``updates_per_step`` optimizer updates, each on a mini-batch
   of groups, minimizing the ``losses`` terms: clipped surrogate (+ reverse-KL penalty for rkl)
   on the rollouts, plus ``eta`` times the DPH divergence on a batch of stored reference samples;
5. [DPH, RKL] how much of each update the regularizer made (``shares.py``, on by default with
   ``measure_shares``): ``dph_grad_share`` / ``kl_grad_share`` = ||g_reg|| / (||g_rest|| + ||g_reg||),
   ``*_update_share`` the same for AdamW's step split through its first moment, ``*_grad_cosine``,
   and for DPH the drift on the rehearsed tokens, ``reference_drift`` = mean |pi/pi_ref - 1| and
   ``reference_halved_frac`` (the share whose probability fell below half of pi_ref's).

Departures from the released verl code (DPH-RL notes §1.3-1.4): the reference batch is its own
micro-batch stream rather than rows concatenated into the RL batch (so routing never mixes row
types); the forward-KL loss is not clamped at ±10; old log-probs come from the sampler (fp32) or a
recomputed forward pass (bf16/fp16), not a separate actor.
Everything else a long run needs is here too: non-finite steps are skipped (and stop the run after
``max_nonfinite_steps`` in a row), a reward function that fails on every completion stops the run
after ``max_reward_error_steps`` steps in a row, atomic checksummed checkpoints with exact resume
(refused when the config changed the run's mathematics; a checkpoint with non-finite weights is
never written), one run per output folder (``run.lock``), metrics to ``metrics.jsonl`` (with the rewards' ``log_metric``
values) and each step's first group of completions to ``samples.jsonl`` (with their ``log_extra`` columns), periodic
evaluation, and ``accelerate launch`` for several processes (DDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object
from peft import PeftModel
from tqdm.auto import tqdm

from toy_bandits.mara import mara_rewards

from . import checkpoint as ckpt
from .config import TrainConfig, resume_changes
from .data import PresampleResult, presample, presample_source, reward_columns
from .engine import RolloutEngine
from .evaluate import EvalResult, evaluate
from .losses import aggregate, clipped_surrogate, divergence_per_token, group_advantages, kl_penalty_per_token
from .models import lean_lora, load_policy, model_fingerprint, reference_mode, save_adapter
from .packing import packed_logps
from .rewards import RewardLog, RewardState
from .rollout import Rollout, sequence_logps
from .shares import UpdateShares, clip_coefficient
from .sources import task_data

OOM_HINT = ("out of GPU memory: lower `micro_batch_size` or `generation_batch_size`, shorten "
            "`max_new_tokens`, set `gradient_checkpointing=True`, or load the model with "
            "`quantization='4bit'`")


def _to_device(rollout: Rollout, device) -> Rollout:
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(rollout).items()}
    return dataclasses.replace(rollout, **moved)


def _mara_scored(rewards: np.ndarray, reference_logps: np.ndarray, beta: float, tau: float) -> np.ndarray:
    """MARA on one group's scored completions; unscorable ones (NaN reward) stay NaN."""
    out, scored = rewards.copy(), ~np.isnan(rewards)
    if scored.any():
        out[scored] = mara_rewards(rewards[scored], reference_logps[scored], beta, tau)
    return out


class NonFiniteError(RuntimeError):
    """Raised after ``max_nonfinite_steps`` consecutive steps with a non-finite loss or gradient, or
    when the weights themselves are no longer finite (no checkpoint is written then)."""


class RewardFunctionError(ValueError):
    """Raised after ``max_reward_error_steps`` consecutive steps in which a reward function failed on
    every completion: such a run would train on nothing."""


RUN_FILES = ("config.yaml", "metrics.jsonl", "evals.jsonl", "samples.jsonl", "presample.json", "reference_store.pt",
             "reference_store.pt.sha256", "adapter", "eval_*.json", "checkpoint-*", ".checkpoint-*")
"""What a run writes in its output_dir (globs); ``overwrite=True`` deletes these and nothing else."""


def _nonfinite_weights(adapter: Path) -> str | None:
    """Why a saved adapter must not be resumed from (NaN or inf weights), or None."""
    from safetensors.torch import load_file

    try:
        weights = load_file(adapter)
    except Exception as error:  # noqa: BLE001 - a missing or unreadable file: not resumable either
        return f"its adapter cannot be read ({type(error).__name__}: {error})"
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    return f"its adapter weights are NaN or inf ({bad[0]})" if bad else None


def _logged_step(line: str) -> float:
    """The step of a JSONL log line; infinity for a line a kill cut short (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """``Trainer(config).train()`` runs a whole experiment; notebooks may also call ``step()``."""

    def __init__(self, config: TrainConfig, *, model=None, tokenizer=None, reward_fns: list[Callable] | None = None,
                 train_dataset=None, eval_dataset=None, callbacks: list[Callable[[dict], None]] = (),
                 accelerator: Accelerator | None = None):
        """``reward_fns``, ``train_dataset`` and ``eval_dataset`` (a ``datasets.Dataset``, a list of dicts
        or a source string) replace the config's; see ``sources.task_data``."""
        self.config = cfg = config.validate()
        data = task_data(cfg, reward_fns, train_dataset, eval_dataset)  # bad data fails before the model loads
        tracker = {} if cfg.report_to == "none" else {"log_with": cfg.report_to, "project_dir": cfg.output_dir}
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available() or cfg.device == "cpu",
                                                      **tracker)
        set_seed(cfg.seed + self.accelerator.process_index)
        processes = self.accelerator.num_processes
        if cfg.prompts_per_step % processes or cfg.prompts_per_step // processes < cfg.updates_per_step:
            raise ValueError(  # every process must run the same number of backward passes (DDP)
                f"config field `prompts_per_step`={cfg.prompts_per_step}: with {processes} processes it must be "
                f"a multiple of {processes} and give each process at least updates_per_step="
                f"{cfg.updates_per_step} prompts")
        if model is None:
            model, tokenizer = load_policy(
                cfg.model, quantization=cfg.quantization, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout, lora_target_modules=cfg.lora_target_modules,
                gradient_checkpointing=cfg.gradient_checkpointing, dtype=cfg.dtype, device=cfg.device)
        elif not isinstance(model, PeftModel) and cfg.needs_reference_model():
            raise ValueError(f"method={cfg.method!r}{' with mara' if cfg.mara else ''} needs the online reference "
                             "(the model with its adapters off): pass a PEFT model (peft.get_peft_model) or use "
                             "a method without a KL penalty or MARA")
        if tokenizer.pad_token is None:  # as TRL does
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        self.verifier = data.verifier
        self.train_rows, self._eval_rows, self._eval_verifiers = data.train, data.eval, data.eval_verifiers
        self.templated = cfg.chat_template or isinstance(self.train_rows[0]["prompt"], list)
        """Prompts go through the chat template, which writes its own special tokens (no second BOS)."""
        self.callbacks = list(callbacks)
        self.output_dir = Path(cfg.output_dir)
        self.fingerprint = model_fingerprint(model, tokenizer)

        params = [p for p in model.parameters() if p.requires_grad]
        if cfg.optimizer == "paged_adamw_8bit":
            import bitsandbytes as bnb

            optimizer = bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total_updates = cfg.steps * cfg.updates_per_step
        # not prepared by accelerate, which would step it once per process per update (N times too fast in DDP)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: self._lr_factor(u, total_updates))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        regularized = cfg.dph_divergence() is not None or cfg.method_kl_coef() > 0
        self.shares = UpdateShares(params, optimizer) if cfg.measure_shares and regularized else None
        """The DPH term's and the KL penalty's share of every update (shares.py)."""
        self.policy = self.accelerator.unwrap_model(self.model)  # for sampling and saving
        self.engine = RolloutEngine(self.policy, cfg.rollout_engine)  # rollouts (engine.py)
        self.device = self.accelerator.device
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 7919 + self.accelerator.process_index)
        self.step_index = 0
        self.data_state = {"epoch": 0, "cursor": 0, "reference_pass": 0, "reference_cursor": 0}
        self.nonfinite_in_a_row = 0
        self.reward_failure_streak: dict[str, int] = {}  # reward function -> steps in a row it failed on everything
        self.history: list[dict] = []
        self.presampled: PresampleResult | None = None
        self.pool = self.train_rows

    # --- data ------------------------------------------------------------------------------------
    def _lr_factor(self, update: int, total: int) -> float:
        cfg = self.config
        if cfg.warmup_steps and update < cfg.warmup_steps * cfg.updates_per_step:
            return (update + 1) / (cfg.warmup_steps * cfg.updates_per_step)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(update / max(total, 1), 1.0)))
        return 1.0

    def prompt_text(self, row: dict) -> str:
        """The text the model sees: chat messages (or, with ``chat_template``, the prompt as one user
        turn) rendered by the tokenizer's chat template; otherwise the prompt itself."""
        prompt = row["prompt"]
        if not self.templated:
            return prompt
        if self.tokenizer.chat_template is None:
            raise ValueError("chat-format prompts (or chat_template=True) need a tokenizer with a chat template; "
                             "this one has none: give plain-text prompts and chat_template=False")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def eval_rows(self, split: str) -> list[dict]:
        """The evaluation rows of ``split`` ("test"; "ood" and "shift" for built-in tasks; "transfer" with
        ``transfer_task``); [] for any other."""
        return self._eval_rows.get(split, [])

    def prepare_data(self) -> None:
        """DPH methods (and ``train_on`` "exploration"/"learnable"): pre-sample once (or load the
        saved split) and choose the RL prompt pool."""
        cfg = self.config
        needs_split = cfg.dph_divergence() is not None or cfg.train_on in ("exploration", "learnable")
        if not needs_split:
            return
        folder, acc = self.output_dir, self.accelerator
        saved = (folder / "presample.json").exists()
        source = presample_source(cfg, self.verifier, self.train_rows, self.templated)  # checked when reused
        if not saved and acc.is_main_process:  # DDP: the main process samples, the others wait and load
            # the initial policy is pi_ref: presampling runs before any update (also when resuming)
            with reference_mode(self.policy) if isinstance(self.policy, PeftModel) else contextlib.nullcontext():
                self.presampled = presample(
                    self.policy, self.tokenizer, self.train_rows, self.verifier, k=cfg.presample_k,
                    threshold=cfg.presample_threshold, keep=cfg.keep_references, fingerprint=self.fingerprint,
                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    batch_size=cfg.generation_batch_size, seed=cfg.seed, packed=cfg.pack_sequences,
                    prompts=[self.prompt_text(r) for r in self.train_rows], progress=cfg.progress,
                    add_special_tokens=not self.templated)
            self.presampled.source = source
            folder.mkdir(parents=True, exist_ok=True)
            self.presampled.save(folder)
        if not saved:
            acc.wait_for_everyone()
        if self.presampled is None:
            self.presampled = PresampleResult.load(folder, self.train_rows, self.fingerprint, source)
        if cfg.train_on in ("auto", "exploration", "learnable"):
            dph_or_exploration = cfg.dph_divergence() is not None or cfg.train_on == "exploration"
            pool = self.presampled.exploration if dph_or_exploration else self.train_rows
            if cfg.train_on == "learnable":  # groups of never-solved prompts have zero advantage
                pool = [r for r in pool if self.presampled.pass_rates[r["id"]] > 0]
            if pool:
                self.pool = pool
            else:
                warnings.warn(f"no training prompt fits train_on={cfg.train_on!r}; training on all prompts")
        if cfg.dph_divergence() and len(self.presampled.store) == 0:
            warnings.warn("the reference store is empty (no near-perfect prompts): the DPH term is 0; "
                          "lower `presample_threshold` or raise `presample_k`")

    def next_rows(self, n: int) -> list[dict]:
        """The next ``n`` prompts of a seeded per-epoch permutation (the data position is saved)."""
        rows = []
        while len(rows) < n:
            order = np.random.RandomState(self.config.seed + 1000 * self.data_state["epoch"]).permutation(len(self.pool))
            take = order[self.data_state["cursor"]: self.data_state["cursor"] + n - len(rows)]
            rows += [self.pool[i] for i in take]
            self.data_state["cursor"] += len(take)
            if self.data_state["cursor"] >= len(self.pool):
                self.data_state.update(epoch=self.data_state["epoch"] + 1, cursor=0)
        return rows

    # --- one RL step -----------------------------------------------------------------------------
    def _logps(self, rollout: Rollout, rows: torch.Tensor, entropy: bool = False):
        return self._forward_logps(rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
                                   rollout.completion_mask[rows], entropy)

    def _forward_logps(self, prompt_ids, prompt_mask, completion_ids, completion_mask, entropy: bool = False):
        """Per-token log-probs (and entropies) of completions under the policy: the packed forward
        (``pack_sequences``, packing.py) or padded rows, LoRA fused (models.lean_lora); same values."""
        forward = packed_logps if self.config.pack_sequences else sequence_logps
        with lean_lora(self.policy):
            return forward(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                           temperature=self.config.temperature, return_entropy=entropy)

    @torch.no_grad()
    def _no_grad_logps(self, rollout: Rollout) -> torch.Tensor:
        mb = self.config.micro_batch_size
        chunks = [self._logps(rollout, torch.arange(s, min(s + mb, len(rollout.completions))))
                  for s in range(0, len(rollout.completions), mb)]
        return torch.cat(chunks)  # (B, T)

    def step(self) -> dict:
        """One RL step; returns its metrics (also appended to ``history`` and metrics.jsonl)."""
        try:
            return self._step()
        except torch.cuda.OutOfMemoryError as error:
            raise RuntimeError(f"{OOM_HINT} (at step {self.step_index})") from error

    def _step(self) -> dict:
        cfg, acc = self.config, self.accelerator
        G, t0 = cfg.num_generations, time.perf_counter()
        rows = self.next_rows(cfg.prompts_per_step)[acc.process_index::acc.num_processes]
        prompts = [self.prompt_text(r) for r in rows]
        rollout = self.engine.generate(self.tokenizer, prompts, num_generations=G,
                                       max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                       batch_size=cfg.generation_batch_size, generator=self.generator,
                                       add_special_tokens=not self.templated)
        rollout = _to_device(rollout, self.device)
        t_rollout = time.perf_counter() - t0
        failures: dict[str, list[str]] = {}
        reward_prompts, reward_log = [r["prompt"] for r in rows for _ in range(G)], RewardLog()
        nonfinite: dict[str, int] = {}  # NaN/inf rewards per function (also among the failures)
        raw_rewards, reward_errors = self.verifier.score(  # rewards see the dataset's prompts, as in TRL
            reward_prompts, rollout.completions, reward_columns(rows, G), fail_fast=cfg.fail_fast, failures=failures,
            nonfinite=nonfinite, completion_ids=rollout.completion_id_lists(),
            trainer_state=RewardState(self.step_index, cfg.steps), log=reward_log)  # NaN: every reward None, advantage 0
        if nonfinite:
            warnings.warn(f"step {self.step_index + 1}: reward function(s) returned NaN or inf ("
                          + ", ".join(f"`{name}` {n}x" for name, n in nonfinite.items())
                          + "), scored 0; a reward must be a finite number (metric reward_nonfinite)")
        failed_everywhere = {name: errors[0] for name, errors in failures.items() if len(errors) == len(raw_rewards)}
        self.reward_failure_streak = {name: self.reward_failure_streak.get(name, 0) + 1 for name in failed_everywhere}
        rewards = torch.tensor(raw_rewards, dtype=torch.float32, device=self.device)  # (B,)
        mask = rollout.completion_mask.float()  # (B, T)

        reference_logps = None
        if cfg.needs_reference_model():  # online reference: the same weights with adapters off
            with reference_mode(self.policy):
                reference_logps = self._no_grad_logps(rollout)  # (B, T)
        if cfg.mara:  # MARA Algorithm 1 per prompt group, sequence log-probs under pi_ref; beta = kl_coef
            seq_ref = (reference_logps * mask).sum(-1).view(-1, G).cpu().numpy()
            augmented = [_mara_scored(r, s, cfg.method_kl_coef(), cfg.mara_tau) for r, s in
                         zip(rewards.view(-1, G).cpu().numpy(), seq_ref)]
            rewards = torch.tensor(np.concatenate(augmented), dtype=torch.float32, device=self.device)
        advantages = group_advantages(rewards, G, scale_by_std=cfg.scale_advantages_by_std)  # (B,)
        old_logps = rollout.logps
        if next(self.policy.parameters()).dtype != torch.float32:
            old_logps = self._no_grad_logps(rollout)  # low precision: sampler and trainer differ

        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "kl", "dph_loss", "clip_fraction",
                                                         "entropy", "grad_norm")}
        skipped = 0
        groups = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed + self.step_index))
        t1 = time.perf_counter()
        for update in range(cfg.updates_per_step):
            chosen = groups[update::cfg.updates_per_step]
            batch_rows = (chosen[:, None] * G + torch.arange(G)[None]).flatten().to(self.device)
            if not self._update(rollout, batch_rows, advantages, old_logps, reference_logps, stats, update == 0):
                skipped += 1
        self.step_index += 1
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skipped else 0

        group_rewards = torch.tensor(raw_rewards).view(-1, G)
        scored = group_rewards[~group_rewards.isnan()]  # unscorable completions left out, as in TRL
        metrics = {
            "step": self.step_index,
            "reward_mean": float(scored.mean()), "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0,
            "solve_rate": float(self.verifier.is_correct(group_rewards.numpy()).any(1).mean()),
            "augmented_reward_mean": float(rewards.nanmean()),
            **{k: float(np.mean(v)) if v else 0.0 for k, v in stats.items()},
            "completion_length": float(mask.sum(-1).mean()),
            "truncated_frac": float(rollout.truncated.float().mean()),
            "reward_errors": int(reward_errors), "reward_nonfinite": sum(nonfinite.values()), "skipped_updates": skipped,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "rollout_tokens_per_s": float(mask.sum()) / max(t_rollout, 1e-9),
            "time_rollout": t_rollout, "time_update": time.perf_counter() - t1,
            "time_step": time.perf_counter() - t0,
        }
        metrics.update({name if name not in metrics else f"reward/{name}": value  # the rewards' log_metric
                        for name, value in reward_log.metric_means().items()})
        self.history.append(metrics)
        if cfg.report_to != "none":
            acc.log(metrics, step=self.step_index)
        if acc.is_main_process:
            with open(self.output_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
            reward_log.write_samples(self.output_dir / "samples.jsonl", self.step_index, reward_prompts,
                                     rollout.completions, raw_rewards, range(G))  # the first group, with log_extra
        for callback in self.callbacks:
            callback(metrics)
        for name, streak in self.reward_failure_streak.items():  # the step is logged first
            if streak >= cfg.max_reward_error_steps:
                raise RewardFunctionError(
                    f"reward function `{name}` failed on every completion for {streak} steps in a row "
                    f"(max_reward_error_steps={cfg.max_reward_error_steps}), so the run learns nothing; its "
                    f"first error: {failed_everywhere[name]}. A reward function must return one finite number "
                    "per completion; set fail_fast=True to see the full traceback")
        if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
            raise NonFiniteError(
                f"{self.nonfinite_in_a_row} steps in a row (max_nonfinite_steps={cfg.max_nonfinite_steps}) had a "
                "non-finite loss or gradient and were skipped; lower `lr` or `max_grad_norm` (e.g. 0.5), use "
                "dtype='float32', or check the reward function for NaN/inf")
        return metrics

    def _update(self, rollout, batch_rows, advantages, old_logps, reference_logps, stats, first: bool) -> bool:
        """One optimizer update on a mini-batch of groups (+ a reference batch for DPH)."""
        cfg = self.config
        mb = cfg.micro_batch_size
        mask = rollout.completion_mask.float()
        total_tokens = float(mask[batch_rows].sum().clamp(min=1))
        kl_coef, divergence = cfg.method_kl_coef(), cfg.dph_divergence()
        self.optimizer.zero_grad(set_to_none=True)
        if self.shares:
            self.shares.zero()
        losses = []
        for start in range(0, len(batch_rows), mb):
            rows = batch_rows[start:start + mb]
            logps, entropy = self._logps(rollout, rows, entropy=True)  # (b, T)
            m = mask[rows]
            # token-mean over the whole mini-batch = sum over micro-batches of token sums / all tokens
            weight = float(m.sum()) / total_tokens if cfg.loss_aggregation == "token_mean" else len(rows) / len(batch_rows)
            per_token, clip_fraction = clipped_surrogate(logps, old_logps[rows], advantages[rows][:, None], m,
                                                         eps_low=cfg.eps_low, eps_high=cfg.method_eps_high(),
                                                         clip_ratio_c=cfg.clip_ratio_c)
            pg_loss = aggregate(per_token, m, cfg.loss_aggregation)
            loss = pg_loss
            if kl_coef > 0:
                kl = aggregate(kl_penalty_per_token(logps, reference_logps[rows], cfg.kl_estimator), m, cfg.loss_aggregation)
                loss = loss + kl_coef * kl
                stats["kl"].append(float(kl.detach()))
            if kl_coef > 0 and self.shares:  # the penalty's own backward pass, to measure its share
                with self.accelerator.no_sync(self.model):  # DDP: averaged once, below
                    self.accelerator.backward(pg_loss * weight, retain_graph=True)
                    with self.shares.term("kl"):
                        self.accelerator.backward(kl_coef * kl * weight)
            else:
                self.accelerator.backward(loss * weight)
            losses.append(float(loss.detach()))
            stats["pg_loss"].append(float(pg_loss.detach()))
            stats["clip_fraction"].append(float(clip_fraction))
            if first:
                stats["entropy"].append(float((entropy.detach() * m).sum() / m.sum().clamp(min=1)))
        if kl_coef > 0 and self.shares and self.accelerator.num_processes > 1:
            self.shares.all_reduce(self.accelerator)  # the gradients no_sync kept per process
        if divergence and self.presampled is not None and len(self.presampled.store):
            context = self.shares.term("dph") if self.shares else contextlib.nullcontext()
            with context:
                dph, drift = self._dph_backward(divergence)
            stats["dph_loss"].append(dph)
            for key, value in drift.items():
                stats.setdefault(key, []).append(value)
            losses.append(dph)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        finite = math.isfinite(float(grad_norm)) and all(math.isfinite(x) for x in losses)
        if finite and self.shares:
            for key, value in self.shares.measure(clip_coefficient(float(grad_norm), cfg.max_grad_norm)).items():
                stats.setdefault(key, []).append(value)
        if not finite:  # counted per step in _step (max_nonfinite_steps)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # stepping the schedule without an update is intended here
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                self.scheduler.step()  # the schedule follows update slots, so a skip does not stretch it
            warnings.warn(f"step {self.step_index + 1}: non-finite loss or gradient; update skipped")
            return False
        stats["grad_norm"].append(float(grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        return True

    def next_reference_indices(self, n: int) -> list[int]:
        """The next ``n`` stored reference rows of a seeded per-pass permutation of the store: every
        update rehearses fresh rows, and each row once per pass, as the release's shuffled chunks do
        (the position is saved with ``data_state``; each DDP process takes its own pass)."""
        size, state = len(self.presampled.store), self.data_state
        indices: list[int] = []
        while len(indices) < n:
            seed = self.config.seed * 1_000_003 + 7_919 * state["reference_pass"] + self.accelerator.process_index
            order = np.random.RandomState(seed % 2**32).permutation(size)
            take = order[state["reference_cursor"]: state["reference_cursor"] + n - len(indices)]
            indices += [int(i) for i in take]
            state["reference_cursor"] += len(take)
            if state["reference_cursor"] >= size:
                state.update(reference_pass=state["reference_pass"] + 1, reference_cursor=0)
        return indices

    def _dph_backward(self, divergence: str) -> tuple[float, dict[str, float]]:
        """eta x token-mean divergence_per_token on stored pi_ref samples (DESIGN.md §1, step 2); also
        how far the policy has drifted on those tokens: ``reference_drift``, the mean |pi/pi_ref - 1|,
        and ``reference_halved_frac``, the share of tokens whose probability fell below half of pi_ref's."""
        cfg, store = self.config, self.presampled.store
        indices = self.next_reference_indices(cfg.reference_batch_size)
        total_tokens = sum(len(store.completion_ids[i]) for i in indices)
        value, drift, halved = 0.0, 0.0, 0.0
        for start in range(0, len(indices), cfg.micro_batch_size):
            part = indices[start:start + cfg.micro_batch_size]
            batch = store.batch(part, self.tokenizer.pad_token_id, self.device)
            logps = self._forward_logps(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                        batch["completion_mask"])  # (b, T)
            per_token = divergence_per_token(logps, batch["reference_logps"], divergence, alpha=cfg.alpha)
            m = batch["completion_mask"]
            part_loss = (per_token * m).sum() / total_tokens  # token-mean over the whole reference batch
            self.accelerator.backward(cfg.eta * part_loss)
            value += float(part_loss.detach())
            log_ratio = (logps.detach() - batch["reference_logps"]) * m  # x = log pi - log pi_ref, (b, T)
            drift += float(((log_ratio.exp() - 1).abs() * m).sum())
            halved += float(((log_ratio < -math.log(2)) * m).sum())
        return value, {"reference_drift": drift / max(total_tokens, 1),
                       "reference_halved_frac": halved / max(total_tokens, 1)}

    # --- evaluation ------------------------------------------------------------------------------
    def evaluate(self, split: str = "test", base: bool = False, n: int | None = None) -> EvalResult:
        """Pass@k, greedy accuracy and distinct solutions on a held-out split (``base``: adapters off)."""
        cfg = self.config
        rows = self.eval_rows(split)
        max_new_tokens = cfg.transfer_max_new_tokens if split == "transfer" else None
        kwargs = dict(n=n or cfg.eval_n, ks=cfg.eval_ks, max_new_tokens=max_new_tokens or cfg.max_new_tokens,
                      temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.generation_batch_size,
                      seed=cfg.seed + 17, progress=cfg.progress and self.accelerator.is_main_process,
                      split=split, prompts=[self.prompt_text(r) for r in rows], add_special_tokens=not self.templated,
                      trainer_state=RewardState(self.step_index, cfg.steps))
        with self.engine.sampling_model(adapters=not base) as model:  # base: adapters off
            return evaluate(model, self.tokenizer, rows, self._eval_verifiers.get(split, self.verifier), **kwargs)

    # --- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Every process calls this (it gathers each one's RNG state); the main process writes."""
        nonfinite = [n for n, p in self.policy.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if nonfinite:  # never write (nor prune the good checkpoints for) weights that are NaN or inf
            last = ckpt.latest_checkpoint(self.output_dir)
            raise NonFiniteError(
                f"step {self.step_index}: {len(nonfinite)} weight tensor(s) are NaN or inf (e.g. {nonfinite[0]}); "
                f"no checkpoint written, the last good one ({last.name if last else 'none'}) is kept. Lower `lr` "
                "or `max_grad_norm`, or use dtype='float32'")
        rng = {"python": random.getstate(), "numpy": np.random.get_state(),
               "torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        rng_per_process = gather_object([rng]) if self.accelerator.num_processes > 1 else [rng]
        if not self.accelerator.is_main_process:
            return None
        state = {"step": self.step_index, "data_state": dict(self.data_state),
                 "nonfinite_in_a_row": self.nonfinite_in_a_row, "history": self.history,
                 "reward_failure_streak": self.reward_failure_streak,
                 "update_shares": self.shares.state_dict() if self.shares else None,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng_per_process": rng_per_process}

        def fill(folder: Path) -> None:
            self.save_adapter(folder / "adapter")
            torch.save(state, folder / "state.pt")
            dataclasses.replace(self.config, overwrite=False).to_yaml(folder / "config.yaml")

        path = ckpt.save_folder(self.output_dir / f"checkpoint-{self.step_index:06d}", fill,
                                meta={"step": self.step_index, "fingerprint": self.fingerprint})
        ckpt.prune(self.output_dir, keep=2)
        return path

    def load_checkpoint(self, folder: str | Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        if not ckpt.verify(folder):
            raise ValueError(f"checkpoint {folder} is incomplete or corrupt (manifest check failed)")
        set_peft_model_state_dict(self.policy, load_file(folder / "adapter" / "adapter_model.safetensors"))
        state = torch.load(folder / "state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_index = state["step"]
        self.data_state = {"reference_pass": 0, "reference_cursor": 0, **state["data_state"]}
        self.nonfinite_in_a_row, self.history = state["nonfinite_in_a_row"], state["history"]
        self.reward_failure_streak = state.get("reward_failure_streak", {})
        if self.shares and state.get("update_shares"):
            self.shares.load_state_dict(state["update_shares"])
        rngs, rank = state["rng_per_process"], self.accelerator.process_index
        if len(rngs) != self.accelerator.num_processes:
            warnings.warn(f"checkpoint {folder} was saved by {len(rngs)} process(es), resuming with "
                          f"{self.accelerator.num_processes}: sampling will not repeat the uninterrupted run")
        rng = rngs[rank % len(rngs)]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if self.accelerator.is_main_process:  # the logs = exactly the steps up to the checkpoint, each once
            ckpt.atomic_write_text(self.output_dir / "metrics.jsonl",
                                   "".join(json.dumps(m) + "\n" for m in self.history))
            evals = self.output_dir / "evals.jsonl"
            if evals.exists():
                kept = [line for line in evals.read_text().splitlines(keepends=True)
                        if _logged_step(line) <= self.step_index]
                ckpt.atomic_write_text(evals, "".join(kept))

    # --- the whole run ---------------------------------------------------------------------------
    def train(self, resume: bool = True) -> list[dict]:
        """Pre-sample (DPH), resume from the last complete checkpoint if any, train, evaluate.

        The run owns ``output_dir`` meanwhile (``run.lock``). Resuming refuses a config that changes
        the run's mathematics (``config.resume_changes``); ``overwrite=True`` starts afresh instead."""
        ckpt.make_folder(self.output_dir, "output_dir")
        lock, error = None, None
        if self.accelerator.is_main_process:  # the main process owns the folder for the whole launch
            try:
                lock = ckpt.lock_folder(self.output_dir)
                self._claim_folder()
            except ValueError as raised:
                error = raised
        if self.accelerator.num_processes > 1:  # DDP: every process stops, none waits for the others forever
            error = error or next((ValueError(m) for m in gather_object([error and str(error)]) if m), None)
        try:
            if error is not None:
                raise error
            return self._train(resume)
        finally:
            if lock is not None:
                ckpt.unlock_folder(lock)

    def _train(self, resume: bool) -> list[dict]:
        cfg, folder = self.config, self.output_dir
        if cfg.report_to != "none":
            self.accelerator.init_trackers("dphrl-mini", config={k: v for k, v in cfg.to_dict().items()
                                                                   if isinstance(v, (int, float, str, bool))})
        last = self._resume_point() if resume else None
        if last is None and self.accelerator.is_main_process:
            for log in ("metrics.jsonl", "evals.jsonl"):
                (folder / log).write_text("")
        self.prepare_data()
        if self.accelerator.is_main_process:  # after the data checks: a refused run does not claim the folder
            dataclasses.replace(cfg, overwrite=False).to_yaml(folder / "config.yaml")
        if last is not None:
            self.load_checkpoint(last)
        else:  # same RNG state whether pre-sampling ran now or was loaded from an earlier attempt
            set_seed(cfg.seed + self.accelerator.process_index)
            self.generator.manual_seed(cfg.seed * 7919 + self.accelerator.process_index)
        bar = tqdm(total=cfg.steps, initial=self.step_index, desc=f"{cfg.method}{'+mara' if cfg.mara else ''}",
                   disable=not (cfg.progress and self.accelerator.is_main_process))
        while self.step_index < cfg.steps:
            metrics = self.step()
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.2f}", solved=f"{metrics['solve_rate']:.2f}")
            # evaluate before saving: a checkpoint then follows its step's evaluation, so a resume
            # neither repeats nor skips one
            if cfg.eval_every and self.step_index % cfg.eval_every == 0 and self.step_index < cfg.steps:
                self._log_eval(self.evaluate("test", n=min(cfg.eval_n, 16)), "test", periodic=True)
            if self.step_index % cfg.save_every == 0 or self.step_index == cfg.steps:
                self.save_checkpoint()
        bar.close()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.save_adapter(folder / "adapter")
        if cfg.report_to != "none":
            self.accelerator.end_training()
        return self.history

    def _claim_folder(self) -> None:
        """Main process, holding the lock: start afresh (``overwrite``) or check that the folder's run
        is this config's, then remove what killed saves and prunes left behind."""
        cfg, folder = self.config, self.output_dir
        if cfg.overwrite:
            removed = sorted({p.name for pattern in RUN_FILES for p in folder.glob(pattern)})
            for name in removed:
                if (folder / name).is_dir():
                    shutil.rmtree(folder / name)
                else:
                    (folder / name).unlink()
            if removed:
                warnings.warn(f"overwrite=True: deleted the previous run's files in {folder}: {', '.join(removed)}")
        elif (folder / "config.yaml").exists():
            saved = yaml.safe_load((folder / "config.yaml").read_text()) or {}
            refused, allowed = resume_changes(saved, cfg)
            if refused:
                raise ValueError(
                    f"output_dir {folder} holds a run made with another config, which cannot be resumed with: "
                    f"{'; '.join(refused)}. To start fresh, use another output_dir or pass --overwrite "
                    "(overwrite=True), which deletes that run's checkpoints and logs")
            if allowed:
                warnings.warn(f"resuming {folder} with changed settings: {'; '.join(allowed)}")
        leftovers = ckpt.remove_leftovers(folder)
        if leftovers:
            warnings.warn(f"removed debris of interrupted saves or prunes, and incomplete checkpoints older than "
                          f"the newest complete one, in {folder}: {', '.join(leftovers)}")

    def _resume_point(self) -> Path | None:
        """The newest usable checkpoint; every newer one skipped is named with the reason."""
        skipped = []
        for folder in reversed(ckpt.checkpoint_folders(self.output_dir)):
            problem = ckpt.checkpoint_problem(folder) or _nonfinite_weights(folder / "adapter" / "adapter_model.safetensors")
            if problem is None:
                if skipped and self.accelerator.is_main_process:
                    warnings.warn(f"resuming from {folder.name} at step {int(folder.name.split('-')[1])}; "
                                  f"skipped {'; '.join(skipped)}")
                return folder
            skipped.append(f"{folder.name} because {problem}")
        if skipped and self.accelerator.is_main_process:
            warnings.warn(f"no usable checkpoint in {self.output_dir}: starting again from step 0; "
                          f"skipped {'; '.join(skipped)}")
        return None

    def save_adapter(self, folder: str | Path) -> None:
        """The LoRA adapter with its tokenizer and a model card (models.save_adapter)."""
        save_adapter(self.policy, self.tokenizer, folder, self.config.to_dict())

    def _log_eval(self, result: EvalResult, split: str, periodic: bool = False) -> dict:
        summary = {"step": self.step_index, "split": split, **result.summary(self.config.eval_ks if not periodic else None)}
        if self.accelerator.is_main_process:
            with open(self.output_dir / "evals.jsonl", "a") as handle:
                handle.write(json.dumps(summary) + "\n")
        return summary
