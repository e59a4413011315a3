"""DPH-RL for TRL users: TRL's ``GRPOTrainer`` plus rehearsal on stored reference samples.

A TRL GRPO script gains DPH-RL (DESIGN.md §1 step 2; term (3) of ``dphrl_mini.losses``) by building
a reference store once and swapping the trainer class::

    store = build_reference_store(model, tokenizer, dataset, reward_funcs, k=8, threshold=1.0)
    trainer = DPHGRPOTrainer(model=model, reward_funcs=reward_funcs, args=config, train_dataset=dataset,
                             processing_class=tokenizer, reference_store=store, dph_divergence="js", dph_eta=0.1)

Every optimizer step draws ``reference_batch_size`` stored samples (per process) and adds
``dph_eta * aggregate(divergence_per_token(log pi_theta, stored log pi_ref))`` to TRL's loss; the
divergence is logged as ``dph/loss`` next to TRL's own metrics. Everything else is TRL's: datasets,
reward functions, ``peft_config``, generation, logging, checkpoints.

How this differs from the project's own ``dphrl_mini.trainer.Trainer``:

1. The RL term is TRL's, with TRL's settings (``loss_type``, ``epsilon``/``epsilon_high``, ``beta``,
   ``num_iterations``...). TRL's defaults (``loss_type="dapo"``, a token mean; ``beta=0``; ``epsilon=0.2``)
   are ours but for clip-higher: add ``epsilon_high=0.28`` for our DPH methods' objective.
2. RL prompts: TRL trains on the whole ``train_dataset``; the released recipe (and our trainer) runs RL
   on the exploration set only: pass ``dataset.select(store.meta["exploration"])``.
3. eta is the same coefficient on the same term (a token mean over one reference batch per optimizer
   step). Under gradient accumulation the batch is split across the micro-steps, each adding its token
   sum over the whole batch's token count, so the sum over the window is the token mean. With another
   ``loss_type`` (e.g. ``"grpo"``, a sequence mean) the balance between the two terms differs from ours.
4. The reference batch runs through ``rollout.sequence_logps`` (one padded forward, logits divided by
   the temperature the store was sampled at), as ``build_reference_store`` computed the stored log-probs,
   so x = log pi_theta - log pi_ref is exactly the drift since pre-sampling.
5. MARA is not offered here. It rewrites each *group's* rewards from the completions' sequence log
   pi_ref before the advantages are normalized. TRL computes rewards, gathers them across processes and
   normalizes them into advantages inside one private method (``_generate_and_score_completions``);
   reward functions never see log-probs, and ``_calculate_rewards`` returns before the groups are
   gathered. Adding MARA would mean copying that method. Use ``dphrl-mini train --mara`` instead.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import trl
    from trl import GRPOTrainer
except ImportError as error:  # pragma: no cover - exercised by a test that hides trl
    raise ImportError("dphrl_mini.integrations.trl needs TRL: pip install 'dphrl-mini[bench]'") from error
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..data import ReferenceStore, presample
from ..losses import DPH_DIVERGENCES, aggregate, divergence_per_token
from ..models import model_fingerprint
from ..rewards import Verifier
from ..rollout import sequence_logps
from ..sources import check_columns

SUPPORTED_TRL = ">=1.0,<2"
"""The TRL versions this module supports: the ``bench`` extra of pyproject.toml (a test keeps them equal)."""

if Version(trl.__version__) not in SpecifierSet(SUPPORTED_TRL):
    raise ImportError(f"dphrl_mini.integrations.trl supports trl{SUPPORTED_TRL} but trl {trl.__version__} is "
                      f"installed: pip install 'trl{SUPPORTED_TRL}' (the dphrl-mini[bench] extra)")

__all__ = ["DPHGRPOTrainer", "build_reference_store", "SUPPORTED_TRL"]


# --- the reference store from a TRL dataset and TRL reward functions ------------------------------
def build_reference_store(model, tokenizer, dataset, reward_funcs: Callable | list[Callable], k: int = 8,
                          threshold: float = 1.0, keep: str = "one", *, max_new_tokens: int = 512,
                          temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64,
                          solution_key: Callable[[str], Hashable] | None = None, seed: int = 0,
                          progress: bool = False) -> ReferenceStore:
    """Pre-sample ``model`` (= pi_ref) ``k`` times on every prompt of a TRL ``dataset`` and store
    correct responses of the near-perfect prompts with their per-token log pi_ref (DESIGN.md §1 step 1).

    The same code path as ``dphrl-mini presample`` (``data.presample``): a completion is correct when
    the summed reward of ``reward_funcs`` is >= 1 (so pass the correctness rewards, not a format
    bonus) and it ended with EOS; a prompt is near-perfect when its pass rate is >= ``threshold``.
    ``keep="one"`` stores one correct response per near-perfect prompt, ``"all_distinct"`` one per
    distinct ``solution_key(completion)`` (default: the stripped completion text).

    ``dataset`` rows have a ``prompt`` (text, or a list of chat messages, templated with the
    tokenizer's chat template) and any columns the reward functions take, as in TRL. Reward functions are
    called as ``GRPOTrainer`` calls them (``dphrl_mini.rewards``): by keyword, ``prompts``, ``completions``
    (message lists for chat prompts), ``completion_ids``, ``trainer_state`` (``global_step`` 0),
    ``log_extra``/``log_metric`` (accepted; what they log is not kept here) and every column; ``async def``
    rewards are awaited and ``None`` is no reward. A reward function that fails on every sample, or a
    column it needs that the dataset lacks, is a ``ValueError``; the number of samples dropped for not
    ending in EOS within ``max_new_tokens`` is printed. The sampling
    settings default to ``GRPOConfig``'s (``max_completion_length=512``, ``temperature=1``,
    ``top_p=1``). Build the store with the model in the dtype it trains in: TRL's bf16 autocast
    (``GRPOConfig(bf16=True)``) shifts the policy's log-probs away from fp32 stored ones.
    Returns a ``ReferenceStore`` (``.save(path)`` / ``ReferenceStore.load(path)``); its ``meta``
    holds ``pass_rates`` (one per dataset row) and ``exploration``, the indices of the other rows
    (the released recipe's RL prompts).
    """
    funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
    if not funcs or not all(callable(fn) for fn in funcs):
        raise TypeError("reward_funcs must be a reward function or a list of them (reward models by name "
                        "are not supported here)")
    rows, model_prompts = [], []
    for i, example in enumerate(dataset):
        prompt = example["prompt"]  # text, or chat messages (rewards see them as TRL passes them)
        model_prompts.append(prompt if isinstance(prompt, str) else
                             tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        rows.append({**example, "id": str(i)})
    verifier = Verifier(funcs, solution_key=solution_key or str.strip, name="trl")
    check_columns(rows, verifier, "dataset")
    templated = any(not isinstance(row["prompt"], str) for row in rows)
    result = presample(model, tokenizer, rows, verifier, prompts=model_prompts, add_special_tokens=not templated, k=k, threshold=threshold, keep=keep,
                       fingerprint=model_fingerprint(model, tokenizer), max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                       progress=progress, packed=False)  # packed=False: the forward DPHGRPOTrainer uses
    store = result.store
    store.meta.update(pass_rates=[result.pass_rates[row["id"]] for row in rows],
                      exploration=[int(row["id"]) for row in result.exploration])
    return store


# --- the trainer ----------------------------------------------------------------------------------
@dataclass
class _ReferenceWindow:
    """The reference batch of one optimizer step, split over its gradient-accumulation micro-steps."""

    step: int
    parts: list[list[int]]
    total_tokens: int
    cursor: int = 0
    value: float = 0.0


class DPHGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` + ``dph_eta`` x token-mean DPH generator loss on stored reference samples.

    Arguments beyond ``GRPOTrainer``'s (keyword only):

    * ``reference_store``: a ``ReferenceStore`` (``build_reference_store`` or ``dphrl-mini presample``)
      or the path of a saved one; it must come from the same base model and tokenizer;
    * ``dph_divergence``: ``"forward_kl"`` (DPH-F), ``"js"`` (DPH-JS) or ``"alpha"`` (any of
      ``losses.DPH_DIVERGENCES``);
    * ``dph_eta``: the coefficient eta (0 logs the divergence without training on it);
    * ``dph_alpha``: alpha of the alpha divergence, in (0, 1);
    * ``reference_batch_size``: stored samples drawn per optimizer step and process.
    """

    def __init__(self, *args, reference_store: ReferenceStore | str | Path, dph_divergence: str = "forward_kl",
                 dph_eta: float = 0.1, dph_alpha: float = 0.5, reference_batch_size: int = 16, **kwargs):
        if dph_divergence not in DPH_DIVERGENCES:
            raise ValueError(f"dph_divergence={dph_divergence!r}: choose one of {DPH_DIVERGENCES}")
        if not (math.isfinite(dph_eta) and dph_eta >= 0):
            raise ValueError(f"dph_eta={dph_eta!r} must be a finite number >= 0")
        if not 0.0 < dph_alpha < 1.0:
            raise ValueError(f"dph_alpha={dph_alpha!r} must be in (0, 1)")
        if not isinstance(reference_batch_size, int) or reference_batch_size < 1:
            raise ValueError(f"reference_batch_size={reference_batch_size!r} must be an integer >= 1")
        super().__init__(*args, **kwargs)
        fingerprint = model_fingerprint(self.accelerator.unwrap_model(self.model), self.processing_class)
        if isinstance(reference_store, (str, Path)):
            reference_store = ReferenceStore.load(reference_store, fingerprint)
        else:
            reference_store.check_fingerprint(fingerprint)
        if len(reference_store) == 0:
            warnings.warn("the reference store is empty (no near-perfect prompts): the DPH term is 0; "
                          "lower `threshold` or raise `k` in build_reference_store")
        self.reference_store = reference_store
        self.reference_temperature = float(reference_store.meta.get("temperature", 1.0))
        if self.reference_temperature != self.args.temperature:
            warnings.warn(f"the reference store was sampled at temperature {self.reference_temperature} and "
                          f"GRPOConfig.temperature is {self.args.temperature}; the DPH term uses the store's")
        self.dph_divergence, self.dph_eta, self.dph_alpha = dph_divergence, float(dph_eta), float(dph_alpha)
        self.reference_batch_size = reference_batch_size
        self._reference_window: _ReferenceWindow | None = None

    def dph_loss(self, model, indices: list[int]) -> torch.Tensor:
        """Token mean of the DPH generator loss over the stored samples ``indices`` (term (3)):
        ``aggregate(divergence_per_token(log pi_theta, log pi_ref))``, a scalar with gradient."""
        tokenizer = self.processing_class
        pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        batch = self.reference_store.batch(indices, pad, self.accelerator.device)
        logps = sequence_logps(self.accelerator.unwrap_model(model), batch["prompt_ids"], batch["prompt_mask"],
                               batch["completion_ids"], batch["completion_mask"],
                               temperature=self.reference_temperature)  # (b, T)
        per_token = divergence_per_token(logps, batch["reference_logps"], self.dph_divergence, alpha=self.dph_alpha)
        return aggregate(per_token, batch["completion_mask"])

    def _next_reference_part(self) -> tuple[_ReferenceWindow, list[int]]:
        """This micro-step's share of the optimizer step's reference batch (a fresh batch per step,
        drawn with its own seeded generator, so TRL's sampling is untouched)."""
        window, step = self._reference_window, self.state.global_step
        if window is None or window.step != step or window.cursor >= len(window.parts):
            rng = random.Random(f"dph-{self.args.seed}-{step}-{self.accelerator.process_index}")
            indices = [rng.randrange(len(self.reference_store)) for _ in range(self.reference_batch_size)]
            micro_steps = max(int(self.current_gradient_accumulation_steps), 1)
            parts = [indices[i::micro_steps] for i in range(micro_steps)]
            total = sum(len(self.reference_store.completion_ids[i]) for i in indices)
            window = self._reference_window = _ReferenceWindow(step, parts, total)
        part = window.parts[window.cursor]
        window.cursor += 1
        return window, part

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss for this micro-step + eta x this micro-step's share of the DPH term."""
        loss = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not self.model.training or len(self.reference_store) == 0:  # evaluation: TRL's loss alone
            return loss
        window, part = self._next_reference_part()
        if part:
            share = sum(len(self.reference_store.completion_ids[i]) for i in part) / window.total_tokens
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.dph_eta > 0):
                dph = self.dph_loss(model, part) * share  # this part's token sum / the whole batch's tokens
            window.value += float(dph.detach())
            if self.dph_eta > 0:
                loss = loss + self.dph_eta * dph
        if window.cursor == len(window.parts):  # the step's last micro-step: log the batch token mean
            value = torch.tensor(window.value, device=self.accelerator.device)
            self._metrics["train"]["dph/loss"].append(self.accelerator.gather(value).mean().item())
        return loss
