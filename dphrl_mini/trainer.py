"""The RLVR training loop: GRPO/DAPO/RKL baselines, DPH-RL rehearsal and MARA (DESIGN.md §1).

One step (``Trainer.step``):
1. draw ``prompts_per_step`` training prompts (D_exp for DPH methods, ``prompts.next_rows``) and
   sample G completions each;
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
What a long run needs besides the step lives beside it: the prompts and the pre-sampled split
(``prompts.py``), the run folder, its checkpoints with exact resume and the loop of steps
(``run_folder.py``; metrics to ``metrics.jsonl`` with the rewards' ``log_metric`` values, each
step's first group of completions to ``samples.jsonl`` with their ``log_extra`` columns), what stops a run (``guards.py``: non-finite steps are skipped, then stop it;
so does a reward function that fails on every completion), and ``accelerate launch`` for several
processes (DDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from peft import PeftModel

from toy_bandits.mara import mara_rewards

from . import prompts, run_folder
from .config import TrainConfig
from .data import PresampleResult, reward_columns
from .engine import RolloutEngine
from .evaluate import EvalResult, evaluate
from .guards import OOM_HINT, NonFiniteError, RewardFunctionError, check_streaks, warn_nonfinite  # noqa: F401 - the errors stay importable here
from .losses import aggregate, clipped_surrogate, divergence_per_token, group_advantages, kl_penalty_per_token
from .models import lean_lora, load_policy, model_fingerprint, reference_mode, save_adapter
from .packing import packed_logps
from .rewards import RewardLog, RewardState
from .rollout import Rollout, sequence_logps
from .shares import UpdateShares, clip_coefficient
from .sources import task_data


STEP_STATS = ("pg_loss", "kl", "dph_loss", "clip_fraction", "entropy", "grad_norm")
"""Per-update statistics averaged into each step's metrics."""


def _to_device(rollout: Rollout, device) -> Rollout:
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(rollout).items()}
    return dataclasses.replace(rollout, **moved)


def mara_augment(rewards: torch.Tensor, reference_seq_logps: torch.Tensor, group_size: int, beta: float,
                 tau: float) -> torch.Tensor:
    """MARA's augmented rewards (B,), group by group (``_mara_scored``)."""
    groups = zip(rewards.view(-1, group_size).cpu().numpy(), reference_seq_logps.view(-1, group_size).cpu().numpy())
    augmented = [_mara_scored(r, s, beta, tau) for r, s in groups]
    return torch.tensor(np.concatenate(augmented), dtype=torch.float32, device=rewards.device)


def _mara_scored(rewards: np.ndarray, reference_logps: np.ndarray, beta: float, tau: float) -> np.ndarray:
    """MARA on one group's scored completions; unscorable ones (NaN reward) stay NaN."""
    out, scored = rewards.copy(), ~np.isnan(rewards)
    if scored.any():
        out[scored] = mara_rewards(rewards[scored], reference_logps[scored], beta, tau)
    return out


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """CPU unless CUDA is there and asked for; metrics to ``report_to``'s tracker."""
    tracker = {} if cfg.report_to == "none" else {"log_with": cfg.report_to, "project_dir": cfg.output_dir}
    return Accelerator(cpu=not torch.cuda.is_available() or cfg.device == "cpu", **tracker)


def check_processes(cfg: TrainConfig, processes: int) -> None:
    """Every process must run the same number of backward passes (DDP)."""
    if cfg.prompts_per_step % processes or cfg.prompts_per_step // processes < cfg.updates_per_step:
        raise ValueError(
            f"config field `prompts_per_step`={cfg.prompts_per_step}: with {processes} processes it must be "
            f"a multiple of {processes} and give each process at least updates_per_step="
            f"{cfg.updates_per_step} prompts")


def policy_and_tokenizer(cfg: TrainConfig, model=None, tokenizer=None):
    """The config's model with LoRA adapters (models.load_policy), or the caller's, which must be a PEFT
    model when the method needs the online reference (adapters off); a missing pad token is the EOS."""
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
    return model, tokenizer


def lr_factor(cfg: TrainConfig, update: int, total: int) -> float:
    """The learning rate's multiplier at optimizer update ``update`` of ``total``: linear warm-up, then
    constant or cosine (``lr_schedule``)."""
    if cfg.warmup_steps and update < cfg.warmup_steps * cfg.updates_per_step:
        return (update + 1) / (cfg.warmup_steps * cfg.updates_per_step)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(update / max(total, 1), 1.0)))
    return 1.0


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]):
    """AdamW (or bitsandbytes' paged 8-bit AdamW) on the trainable parameters, and its schedule (``lr_factor``)."""
    if cfg.optimizer == "paged_adamw_8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_updates = cfg.steps * cfg.updates_per_step
    # not prepared by accelerate, which would step it once per process per update (N times too fast in DDP)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(cfg, u, total_updates))


class Trainer:
    """``Trainer(config).train()`` runs a whole experiment; notebooks may also call ``step()``."""

    def __init__(self, config: TrainConfig, *, model=None, tokenizer=None, reward_fns: list[Callable] | None = None,
                 train_dataset=None, eval_dataset=None, callbacks: list[Callable[[dict], None]] = (),
                 accelerator: Accelerator | None = None):
        """``reward_fns``, ``train_dataset`` and ``eval_dataset`` (a ``datasets.Dataset``, a list of dicts
        or a source string) replace the config's; see ``sources.task_data``."""
        self.config = cfg = config.validate()
        data = task_data(cfg, reward_fns, train_dataset, eval_dataset)  # bad data fails before the model loads
        self.accelerator = accelerator or make_accelerator(cfg)
        set_seed(cfg.seed + self.accelerator.process_index)
        check_processes(cfg, self.accelerator.num_processes)
        model, tokenizer = policy_and_tokenizer(cfg, model, tokenizer)
        self.tokenizer = tokenizer
        self.data = data
        """Every split with its verifier (``sources.TaskData``)."""
        self.verifier, self.train_rows = data.verifier, data.train
        self.templated = cfg.chat_template or isinstance(self.train_rows[0]["prompt"], list)
        """Prompts go through the chat template, which writes its own special tokens (no second BOS)."""
        self.callbacks = list(callbacks)
        self.output_dir = Path(cfg.output_dir)
        self.fingerprint = model_fingerprint(model, tokenizer)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, self.scheduler = make_optimizer(cfg, params)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.shares = UpdateShares(params, optimizer) if cfg.measure_shares and cfg.regularized() else None
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

    # --- data (prompts.py) ----------------------------------------------------------------------
    def prompt_text(self, row: dict) -> str:
        """The text the model sees of ``row`` (prompts.prompt_text: the chat template's, or the prompt)."""
        return prompts.prompt_text(self.tokenizer, row, self.templated)

    def eval_rows(self, split: str) -> list[dict]:
        """The evaluation rows of ``split`` ("test"; "ood" and "shift" for built-in tasks; "transfer" with
        ``transfer_task``); [] for any other."""
        return self.data.eval.get(split, [])

    def prepare_data(self) -> None:
        """DPH methods (and ``train_on`` "exploration"/"learnable"): pre-sample once (or load the
        saved split) and choose the RL prompt pool (prompts.prepare)."""
        if prompts.needs_split(self.config):
            self.presampled, self.pool = prompts.prepare(
                self.config, self.output_dir, self.accelerator, self.policy, self.tokenizer, self.train_rows,
                self.verifier, self.fingerprint, self.prompt_text, self.templated, self.presampled)

    def next_rows(self, n: int) -> list[dict]:
        """The next ``n`` prompts of a seeded per-epoch permutation (the data position is saved)."""
        return prompts.next_rows(self.pool, self.data_state, self.config.seed, n)

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
        failures, nonfinite, reward_log = {}, {}, RewardLog()  # errors and NaN/inf counts per reward function
        reward_prompts = [r["prompt"] for r in rows for _ in range(G)]
        raw_rewards, reward_errors = self.verifier.score(  # rewards see the dataset's prompts, as in TRL
            reward_prompts, rollout.completions, reward_columns(rows, G), fail_fast=cfg.fail_fast, failures=failures,
            nonfinite=nonfinite, completion_ids=rollout.completion_id_lists(),
            trainer_state=RewardState(self.step_index, cfg.steps), log=reward_log)  # NaN: every reward None, advantage 0
        warn_nonfinite(self.step_index + 1, nonfinite)
        failed_everywhere = {name: errors[0] for name, errors in failures.items() if len(errors) == len(raw_rewards)}
        self.reward_failure_streak = {name: self.reward_failure_streak.get(name, 0) + 1 for name in failed_everywhere}
        rewards = torch.tensor(raw_rewards, dtype=torch.float32, device=self.device)  # (B,)
        mask = rollout.completion_mask.float()  # (B, T)

        reference_logps = None
        if cfg.needs_reference_model():  # online reference: the same weights with adapters off
            with reference_mode(self.policy):
                reference_logps = self._no_grad_logps(rollout)  # (B, T)
        if cfg.mara:  # MARA Algorithm 1 per prompt group, sequence log-probs under pi_ref; beta = kl_coef
            rewards = mara_augment(rewards, (reference_logps * mask).sum(-1), G, cfg.method_kl_coef(), cfg.mara_tau)
        advantages = group_advantages(rewards, G, scale_by_std=cfg.scale_advantages_by_std)  # (B,)
        old_logps = rollout.logps
        if next(self.policy.parameters()).dtype != torch.float32:
            old_logps = self._no_grad_logps(rollout)  # low precision: sampler and trainer differ

        stats: dict[str, list[float]] = {k: [] for k in STEP_STATS}
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
            run_folder.append_log(self.output_dir, "metrics.jsonl", metrics)
            reward_log.write_samples(self.output_dir / "samples.jsonl", self.step_index, reward_prompts,
                                     rollout.completions, raw_rewards, range(G))  # the first group, with log_extra
        for callback in self.callbacks:
            callback(metrics)
        check_streaks(cfg, self.reward_failure_streak, failed_everywhere, self.nonfinite_in_a_row)  # after logging
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
        """The next ``n`` stored reference rows, each once per pass (prompts.next_reference_indices)."""
        return prompts.next_reference_indices(len(self.presampled.store), self.data_state, self.config.seed,
                                              self.accelerator.process_index, n)

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
            return evaluate(model, self.tokenizer, rows, self.data.verifier_for(split), **kwargs)

    # --- checkpoints (run_folder.py) ------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Every process calls this (it gathers each one's RNG state); the main process writes."""
        return run_folder.save_checkpoint(self)

    def load_checkpoint(self, folder: str | Path) -> None:
        run_folder.load_checkpoint(self, folder)

    # --- the whole run (run_folder.py) -----------------------------------------------------------------------
    def train(self, resume: bool = True) -> list[dict]:
        """Pre-sample (DPH), resume from the last complete checkpoint if any, train, evaluate.

        The run owns ``output_dir`` meanwhile (``run.lock``). Resuming refuses a config that changes
        the run's mathematics (``config.resume_changes``); ``overwrite=True`` starts afresh instead."""
        with run_folder.owned(self.config, self.output_dir, self.accelerator):
            return run_folder.run(self, resume)

    def reseed(self) -> None:
        """Every RNG of this process as at the start (a fresh run, whether pre-sampling ran or was loaded)."""
        set_seed(self.config.seed + self.accelerator.process_index)
        self.generator.manual_seed(self.config.seed * 7919 + self.accelerator.process_index)

    def save_adapter(self, folder: str | Path) -> None:
        """The LoRA adapter with its tokenizer and a model card (models.save_adapter)."""
        save_adapter(self.policy, self.tokenizer, folder, self.config.to_dict())
