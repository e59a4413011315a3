"""Training configuration: one dataclass, two presets, YAML and CLI on top of it.

``TrainConfig`` is flat (CleanRL's ``Args``): every knob is one field with a docstring comment, so
``dphrl-mini train --method dph_js --eta 0.5`` and a YAML file ``method: dph_js`` say the same
thing. ``validate()`` raises a ``ValueError`` that names the field and the fix.

Presets: ``tiny-cpu`` (the built-in tiny model, minutes on a laptop CPU) and ``one-gpu-qlora``
(a 0.5B-1.5B instruct model in 4-bit NF4 with LoRA on one Colab-class GPU).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # eps_high: clip-higher 0.28 everywhere except GRPO (papers/dph-rl.md §1.5, "clip" row).
    # kl_coef: 0.01 is the released kl_loss_coef of the k3 reverse-KL baseline.
    # divergence: the generator loss DPH applies on stored reference samples (DESIGN.md §1).
    # An online pi_ref forward is needed when kl_coef > 0 or with MARA (needs_reference_model).
    "grpo": {"eps_high": 0.2, "divergence": None, "kl_coef": 0.0},
    "dapo": {"eps_high": 0.28, "divergence": None, "kl_coef": 0.0},
    "rkl": {"eps_high": 0.28, "divergence": None, "kl_coef": 0.01},
    "dph_forward_kl": {"eps_high": 0.28, "divergence": "forward_kl", "kl_coef": 0.0},
    "dph_js": {"eps_high": 0.28, "divergence": "js", "kl_coef": 0.0},
    "dph_alpha": {"eps_high": 0.28, "divergence": "alpha", "kl_coef": 0.0},
}
METHODS: tuple[str, ...] = tuple(_METHOD_DEFAULTS)
"""Every training method, by the name used in configs, logs and plots."""


def method_defaults(method: str) -> dict[str, Any]:
    """Defaults of one method: ``eps_high``, ``divergence`` (None or the DPH generator) and
    ``kl_coef`` (reverse-KL penalty).

    >>> method_defaults("dph_js")["divergence"]
    'js'
    """
    if method not in _METHOD_DEFAULTS:
        raise ValueError(f"method={method!r} is unknown; choose one of {METHODS}")
    return dict(_METHOD_DEFAULTS[method])


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    model: str = "tiny"
    """Hugging Face id or local path; "tiny" is the built-in character-level model."""
    quantization: str | None = None
    """None, "4bit" (NF4, double quant) or "8bit" (bitsandbytes)."""
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str | list[str] = "all-linear"
    gradient_checkpointing: bool = False
    dtype: str = "auto"
    """"auto" (bf16 on a GPU with native bf16, else fp32, printed), "float32", "bfloat16" or "float16"."""
    device: str = "auto"
    chat_template: bool = False
    """Wrap prompts with the tokenizer's chat template (instruct models)."""

    # --- task ----------------------------------------------------------------------------------
    task: str = "countdown"
    """"countdown", "sql" or "math"."""
    task_source: str | None = None
    """math only: a hub id (e.g. openai/gsm8k; its "test" split is evaluated) or a local JSONL (a fixed
    fifth of its questions is held out for "test"); None = offline synthetic problems."""
    dataset: str | None = None
    """Your own training data instead of the task's (dphrl_mini/sources.py): a .jsonl/.json/.parquet/.csv
    file, a ``save_to_disk`` folder or a hub id, with a ``prompt`` column (string or chat messages);
    every other column reaches the reward functions as a keyword argument."""
    eval_dataset: str | None = None
    """Evaluation data for ``dataset`` (split "test"); None = hold out ``eval_fraction`` of it."""
    eval_fraction: float = 0.1
    """Share of ``dataset``'s distinct prompts held out for evaluation when ``eval_dataset`` is None."""
    reward: list[str] | None = None
    """Reward functions "MODULE:FUNCTION" (module name or path to a .py file), TRL's signature
    ``f(prompts, completions, **kwargs) -> list[float | None]``; None = the task's own reward."""
    reward_weights: list[float] | None = None
    """One weight per ``reward`` function (default 1 each); the total reward is the weighted sum."""
    correct_threshold: float = 1.0
    """A completion is correct when its total reward is >= this (presample split, solve rate, Pass@k)."""
    train_size: int = 1000
    eval_size: int = 100
    ood_size: int = 100
    data_seed: int = 0

    # --- method (DESIGN.md §1: GRPO/DAPO/RKL baselines, DPH-RL, MARA) --------------------------
    method: str = "grpo"
    """One of METHODS: grpo, dapo, rkl, dph_forward_kl, dph_js, dph_alpha."""
    eps_low: float = 0.2
    eps_high: float | None = None
    """None = the method's default (0.2 for grpo, 0.28 for clip-higher methods)."""
    clip_ratio_c: float = 3.0
    scale_advantages_by_std: bool = True
    loss_aggregation: str = "token_mean"
    """"token_mean" or "sequence_mean"."""
    kl_coef: float | None = None
    """Reverse-KL penalty coefficient (rkl); None = the method's default."""
    kl_estimator: str = "k3"
    eta: float = 1.0
    """DPH-RL coefficient on the divergence loss over stored reference samples."""
    alpha: float = 0.5
    """alpha of the alpha divergence (dph_alpha), in (0, 1)."""
    reference_batch_size: int = 64
    """Stored reference sequences per step for DPH methods."""
    mara: bool = False
    """Apply MARA (Algorithm 1) to each prompt's group of rewards; needs the online reference."""
    mara_beta: float = 0.05
    mara_tau: float = 1.0

    # --- pre-sampling (DPH-RL hybrid split) ------------------------------------------------------
    presample_k: int = 8
    """Samples per training prompt from the initial policy."""
    presample_threshold: float = 1.0
    """Pass rate at or above which a prompt is near-perfect (D_pef)."""
    keep_references: str = "one"
    """"one" correct reference per near-perfect prompt (as released) or "all_distinct"."""
    train_on: str = "auto"
    """Prompts for on-policy RL: "all", "exploration" (D_exp only), "auto" (exploration for DPH, all
    otherwise) or "learnable": of those, only prompts the initial policy solved at least once in
    ``presample_k`` samples (an offline form of DAPO's dynamic sampling, for weak base models whose
    never-solved prompts only give zero-advantage groups)."""

    # --- rollouts --------------------------------------------------------------------------------
    num_generations: int = 16
    """G: completions per prompt."""
    prompts_per_step: int = 16
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    generation_batch_size: int = 512
    rollout_engine: str = "auto"
    """Sampler (dphrl_mini/engine.py): "plain" (rollout.generate on the PEFT model), "merged" (a copy
    with LoRA folded into the weights, refreshed each rollout), "static" (merged + static KV cache +
    CUDA-graph decode, CUDA only, opt-in until a GPU run checks it against the reference sampler;
    falls back to "merged" elsewhere) or "auto" (merged)."""

    pack_sequences: bool = True
    """Training forward (dphrl_mini/packing.py): each distinct prompt once, completions without
    padding, one 4-D-masked forward; False: one padded row per completion (rollout.sequence_logps).
    Same values and gradients either way."""

    # --- optimization ----------------------------------------------------------------------------
    steps: int = 100
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    """"constant" or "cosine"."""
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    """"adamw" or "paged_adamw_8bit" (bitsandbytes, GPU)."""
    updates_per_step: int = 2
    """Optimizer updates per RL step, each on a mini-batch of prompt groups (PPO mini-batches)."""
    micro_batch_size: int = 256
    """Sequences per forward/backward; gradients are accumulated over a step."""
    seed: int = 0
    max_nonfinite_steps: int = 5
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    fail_fast: bool = False
    """Raise on the first reward-function error instead of scoring 0."""

    # --- bookkeeping -----------------------------------------------------------------------------
    output_dir: str = "runs/default"
    eval_every: int = 0
    """Evaluate every N steps (0 = only at the end)."""
    eval_n: int = 64
    eval_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    save_every: int = 50
    progress: bool = True
    report_to: str = "none"
    """"none" or "tensorboard" (accelerate's tracker, logs under output_dir; `pip install tensorboard`)."""

    # ------------------------------------------------------------------------------------------
    def method_eps_high(self) -> float:
        return self.eps_high if self.eps_high is not None else method_defaults(self.method)["eps_high"]

    def method_kl_coef(self) -> float:
        return self.kl_coef if self.kl_coef is not None else method_defaults(self.method)["kl_coef"]

    def dph_divergence(self) -> str | None:
        return method_defaults(self.method)["divergence"]

    def needs_reference_model(self) -> bool:
        """The online reference (adapters disabled) is needed only by the KL penalty and MARA."""
        return self.method_kl_coef() > 0 or self.mara

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the field and the fix; return self when all is well."""
        def bad(name: str, why: str) -> None:
            raise ValueError(f"config field `{name}`={getattr(self, name)!r}: {why}")

        if self.method not in METHODS:
            bad("method", f"unknown method; choose one of {METHODS}")
        if self.task not in ("countdown", "sql", "math"):
            bad("task", "choose 'countdown', 'sql' or 'math'")
        if self.quantization not in (None, "4bit", "8bit"):
            bad("quantization", "use None, '4bit' or '8bit'")
        if self.quantization and importlib.util.find_spec("bitsandbytes") is None:
            bad("quantization", "needs bitsandbytes: `pip install bitsandbytes`, or set quantization=None")
        if self.optimizer not in ("adamw", "paged_adamw_8bit"):
            bad("optimizer", "use 'adamw' or 'paged_adamw_8bit'")
        if self.optimizer == "paged_adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
            bad("optimizer", "paged_adamw_8bit needs bitsandbytes; use optimizer='adamw'")
        for name in ("eta", "mara_beta", "weight_decay", "warmup_steps", "eval_every"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.kl_coef is not None and self.kl_coef < 0:
            bad("kl_coef", "must be >= 0")
        for name in ("num_generations", "prompts_per_step", "max_new_tokens", "steps",
                     "micro_batch_size", "presample_k", "eval_n", "reference_batch_size",
                     "lora_rank", "generation_batch_size", "updates_per_step", "max_nonfinite_steps", "save_every"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be a positive integer")
        if self.num_generations < 2:
            bad("num_generations", "group-normalized advantages need at least 2 completions per prompt")
        if self.updates_per_step > self.prompts_per_step:
            bad("updates_per_step", f"at most prompts_per_step={self.prompts_per_step} (each update takes whole groups)")
        if not 0.0 < self.alpha < 1.0:
            bad("alpha", "the alpha divergence needs alpha strictly inside (0, 1)")
        if not 0.0 < self.temperature:
            bad("temperature", "must be > 0")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must lie in (0, 1]")
        if not 0.0 < self.lr < 1.0:
            bad("lr", "a learning rate in (0, 1), e.g. 1e-5 for real models, 2e-4 for the tiny one")
        if self.eps_low < 0 or self.method_eps_high() < 0:
            bad("eps_low", "clip ranges must be >= 0")
        if self.rollout_engine not in ("plain", "merged", "static", "auto"):
            bad("rollout_engine", "use 'plain', 'merged', 'static' or 'auto'")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            bad("kl_estimator", "use 'k1', 'k2' or 'k3'")
        if self.loss_aggregation not in ("token_mean", "sequence_mean"):
            bad("loss_aggregation", "use 'token_mean' or 'sequence_mean'")
        if self.lr_schedule not in ("constant", "cosine"):
            bad("lr_schedule", "use 'constant' or 'cosine'")
        if self.keep_references not in ("one", "all_distinct"):
            bad("keep_references", "use 'one' or 'all_distinct'")
        if self.train_on not in ("auto", "all", "exploration", "learnable"):
            bad("train_on", "use 'auto', 'all', 'exploration' or 'learnable'")
        if not 0.0 <= self.presample_threshold <= 1.0:
            bad("presample_threshold", "a pass rate in [0, 1]")
        if not 0.0 <= self.eval_fraction < 1.0:
            bad("eval_fraction", "a share of the prompts in [0, 1)")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward or []):
            bad("reward_weights", f"give one weight per reward function ({len(self.reward or [])} given)")
        if self.report_to not in ("none", "tensorboard"):
            bad("report_to", "use 'none' or 'tensorboard'")
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            bad("report_to", "needs tensorboard: `pip install tensorboard` (or the `tensorboard` extra)")
        if any(int(k) < 1 or int(k) > self.eval_n for k in self.eval_ks):
            bad("eval_ks", f"every k must satisfy 1 <= k <= eval_n={self.eval_n}; raise eval_n or drop large k")
        return self

    # --- (de)serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        values = yaml.safe_load(Path(path).read_text()) or {}
        preset = values.pop("preset", None)
        return preset_config(preset, **values) if preset else cls.from_dict(values)


PRESETS: dict[str, dict[str, Any]] = {
    # The built-in tiny model on a CPU: a run takes minutes.
    "tiny-cpu": dict(model="tiny", task="countdown", num_generations=16, prompts_per_step=16,
                     max_new_tokens=24, steps=100, lr=2e-4, presample_k=16, presample_threshold=0.25, lora_rank=16, lora_alpha=32,
                     eta=1.0, reference_batch_size=64, eval_n=64, micro_batch_size=256),
    # One Colab-class GPU: a 0.5B-1.5B instruct model in 4-bit with LoRA on GSM8K-style data.
    "one-gpu-qlora": dict(model="Qwen/Qwen2.5-0.5B-Instruct", quantization="4bit", task="math",
                          task_source="openai/gsm8k", chat_template=True, num_generations=8,
                          prompts_per_step=8, max_new_tokens=256, steps=200, lr=1e-5,
                          lora_rank=16, lora_alpha=32, gradient_checkpointing=True,
                          optimizer="paged_adamw_8bit", micro_batch_size=8, eta=0.1,
                          reference_batch_size=16, eval_n=16, eval_ks=[1, 2, 4, 8, 16],
                          generation_batch_size=64, train_size=2000, eval_size=200, ood_size=0),
}


def preset_config(name: str | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a named preset (or the defaults), with field overrides."""
    values: dict[str, Any] = {}
    if name is not None:
        if name not in PRESETS:
            raise ValueError(f"preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[name])
    values.update(overrides)
    return TrainConfig.from_dict(values)
