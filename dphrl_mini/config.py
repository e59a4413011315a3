"""Training configuration: one dataclass, two presets, YAML and CLI on top of it.

``TrainConfig`` is flat (CleanRL's ``Args``): every knob is one field with a docstring comment, so
``dphrl-mini train --method dph_js --eta 0.5`` and a YAML file ``method: dph_js`` say the same
thing. ``validate()`` raises a ``ValueError`` that names the field and the fix: every numeric field
must be a finite number in the range ``NUMERIC_RANGES`` declares for it (strings that parse as numbers,
such as YAML's ``lr: 1e-3``, are converted first; an integer field refuses ``2.5``).

Presets: ``tiny-cpu`` (the built-in tiny model, minutes on a laptop CPU) and ``one-gpu-qlora``
(a 0.5B-1.5B instruct model in 4-bit NF4 with LoRA on one Colab-class GPU).

**DPH strength: our ``eta`` vs the released ``sft_loss_coeff``** (papers/dph-rl.md, "Strength of
the DPH term"). We write the loss as ``token_mean(RL) + eta * token_mean(DPH)``. The released verl
code averages per-micro-batch token means over gradient accumulation, with 256 reference rows next
to 2,048 on-policy rows per step, so its ``sft_loss_coeff`` c acts as ``eta ~= 0.125 * c``
(0.10-0.14 depending on the mini-batch): ``eta_from_sft_loss_coeff``. The released scripts use
c = 0.01 (README ranges 0.01-0.05 forward/alpha, 0.05-0.2 JS), i.e. eta ~= 0.001-0.03; our default
``eta`` is the scripts' 0.01 converted, 0.00125. The released split rule is 4 samples, all 4 correct
(``presample_k=4``, ``presample_threshold=1.0``), our defaults.

**MARA's beta is the KL coefficient** (papers/mara.md): MARA's augmented reward gives a uniform
target only inside ``E[R_bar] - beta * KL(pi || pi_ref)`` with the same beta, so ``mara=True`` uses
``kl_coef`` for both and needs ``kl_coef > 0`` (method ``rkl``); "GRPO + MARA rewards" is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .validation import device_problem, read_config_file

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

RELEASED_SFT_LOSS_COEFF = 0.01
"""``actor.sft_loss_coeff`` in the released DPH-RL scripts (forward_kl.sh, js_kl.sh, alpha.sh)."""
ETA_PER_SFT_LOSS_COEFF = 0.125
"""Our eta per unit of released ``sft_loss_coeff``: 256 reference rows / 2,048 on-policy rows."""


def eta_from_sft_loss_coeff(sft_loss_coeff: float) -> float:
    """The released ``sft_loss_coeff`` as our ``eta`` (module docstring).

    >>> eta_from_sft_loss_coeff(0.01)
    0.00125
    """
    return ETA_PER_SFT_LOSS_COEFF * sft_loss_coeff


def method_defaults(method: str) -> dict[str, Any]:
    """Defaults of one method: ``eps_high``, ``divergence`` (None or the DPH generator) and
    ``kl_coef`` (reverse-KL penalty).

    >>> method_defaults("dph_js")["divergence"]
    'js'
    """
    if method not in _METHOD_DEFAULTS:
        raise ValueError(f"method={method!r} is unknown; choose one of {METHODS}")
    return dict(_METHOD_DEFAULTS[method])


@dataclass(frozen=True)
class Range:
    """The values a numeric config field accepts: a finite number between ``low`` and ``high``
    (None = unbounded), each end included unless ``*_open``; ``hint`` explains the range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    hint: str = ""

    def __str__(self) -> str:
        if self.high is None:
            return "any finite number" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, value: Any, integer: bool) -> str | None:
        """Why ``value`` is refused, or None when it is accepted (None itself is left to the field)."""
        kind = "an integer" if integer else "a finite number"
        hint = f" ({self.hint})" if self.hint else ""
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not math.isfinite(value)
                or self.low is not None and (value <= self.low if self.low_open else value < self.low)
                or self.high is not None and (value >= self.high if self.high_open else value > self.high)):
            return f"must be {kind} {self}{hint}"
        return None


NUMERIC_RANGES: dict[str, Range] = {
    # Every numeric TrainConfig field, with the range it must lie in (checked by TrainConfig.validate).
    "lora_rank": Range(1), "lora_alpha": Range(0, low_open=True), "lora_dropout": Range(0, 1, high_open=True),
    "train_size": Range(1), "eval_size": Range(0), "ood_size": Range(0),
    "transfer_size": Range(0), "transfer_max_new_tokens": Range(1), "data_seed": Range(0),
    "eps_low": Range(0, 1, high_open=True, hint="the lower clip range, 0.2 as released"),
    "eps_high": Range(0, hint="the upper clip range; None = the method's default"),
    "clip_ratio_c": Range(1, low_open=True, hint="the dual-clip constant, 3.0 as released"),
    "kl_coef": Range(0), "eta": Range(0),
    "alpha": Range(0, 1, True, True, hint="the alpha divergence needs alpha strictly inside (0, 1)"),
    "reference_batch_size": Range(1), "mara_tau": Range(),
    "presample_k": Range(1), "presample_threshold": Range(0, 1, hint="a pass rate"),
    "num_generations": Range(2, hint="group-normalized advantages need at least 2 completions per prompt"),
    "prompts_per_step": Range(1), "max_new_tokens": Range(1), "temperature": Range(0, low_open=True),
    "top_p": Range(0, 1, low_open=True), "generation_batch_size": Range(1), "steps": Range(1),
    "lr": Range(0, 1, True, True, hint="e.g. 1e-5 for real models, 2e-4 for the tiny one"),
    "weight_decay": Range(0), "warmup_steps": Range(0),
    "max_grad_norm": Range(0, low_open=True, hint="the gradient-norm clip, e.g. 1.0"),
    "updates_per_step": Range(1), "micro_batch_size": Range(1), "seed": Range(0),
    "max_nonfinite_steps": Range(1), "eval_every": Range(0, hint="0 = only at the end"), "eval_n": Range(1),
    "save_every": Range(1), "max_reward_error_steps": Range(1),
    "eval_fraction": Range(0, 1, high_open=True, hint="a share of the prompts"), "correct_threshold": Range(),
}


@functools.cache
def _optional(name: str) -> bool:
    """True when ``None`` is a valid value of field ``name`` (its type says ``| None``)."""
    return type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[name])


@functools.cache
def _is_int_field(name: str) -> bool:
    """True for ``int`` fields (``int | None`` included), False for ``float`` ones."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return int in (hint, *typing.get_args(hint))


def _as_number(value: Any, integer: bool) -> Any:
    """``"1e-3"`` -> 0.001 and, for an integer field, ``3.0`` -> 3; anything else is returned as is
    (``validate`` refuses what is still not a number of the right kind)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if integer and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    model: str = "tiny"
    """Hugging Face id or local path; "tiny" is the built-in character-level model, in the papers'
    regime (moderate Pass@1, high Pass@k, a near-perfect set; ``dphrl_mini/assets/README.md``)."""
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
    """Reward functions "MODULE:FUNCTION" (module name or path to a .py file), called by keyword as TRL
    calls them: ``f(completions=..., prompts=..., <each column>=..., **kwargs) -> list[float | None]``;
    None = the task's own reward."""
    reward_weights: list[float] | None = None
    """One weight per ``reward`` function (default 1 each); the total reward is the weighted sum."""
    correct_threshold: float = 1.0
    """A completion is correct when its total reward is >= this (presample split, solve rate, Pass@k)."""
    train_size: int = 1000
    eval_size: int = 100
    ood_size: int = 100
    """Prompts of a built-in task's out-of-domain splits, "ood" and "shift" (each)."""
    transfer_task: str | None = None
    """Another built-in task whose "test" split is also evaluated, as split "transfer": what training
    on ``task`` costs (or gains) on a skill it does not train, the papers' cross-task out-of-domain
    test (DPH-RL scores its SQL-trained models on math). None = no transfer split."""
    transfer_size: int = 100
    """Prompts of the "transfer" split."""
    transfer_max_new_tokens: int | None = None
    """Completion budget on the "transfer" split (the other task may need longer answers); None =
    ``max_new_tokens``."""
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
    """Reverse-KL penalty coefficient beta (rkl; also MARA's beta); None = the method's default."""
    kl_estimator: str = "k3"
    eta: float = eta_from_sft_loss_coeff(RELEASED_SFT_LOSS_COEFF)
    """DPH-RL coefficient on the token-mean divergence loss over stored reference samples; the
    released sft_loss_coeff c is eta = 0.125 c (module docstring), so the default is c = 0.01."""
    alpha: float = 0.5
    """alpha of the alpha divergence (dph_alpha), in (0, 1)."""
    reference_batch_size: int = 64
    """Stored reference sequences per optimizer update for DPH methods, drawn afresh each update
    from a seeded pass over the store (the release: 256 per 2,048 on-policy rows)."""
    mara: bool = False
    """Apply MARA (Algorithm 1) to each prompt's group of rewards, with beta = ``kl_coef`` (MARA's
    beta *is* the KL coefficient); needs ``kl_coef > 0``."""
    mara_tau: float = 1.0

    # --- pre-sampling (DPH-RL hybrid split) ------------------------------------------------------
    presample_k: int = 4
    """Samples per training prompt from the initial policy (released: 4)."""
    presample_threshold: float = 1.0
    """Pass rate at or above which a prompt is near-perfect (D_pef); released: 1.0 (4 of 4)."""
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
    measure_shares: bool = True
    """Log each update's DPH (or KL) share of the gradient and of the optimizer step (``shares.py``);
    RKL runs pay one more backward pass for it."""
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

    # --- guards against silent failure -------------------------------------------------------------
    max_reward_error_steps: int = 3
    """Stop after this many consecutive steps in which a reward function failed on every completion."""
    overwrite: bool = False
    """Start afresh in ``output_dir``: delete the run files a previous run left there (checkpoints,
    metrics, pre-sampled data, adapter) instead of resuming from them."""

    def __post_init__(self) -> None:
        """Numbers given as text (YAML reads ``1e-3`` as a string) become numbers; ``validate`` checks them."""
        for name in NUMERIC_RANGES:
            setattr(self, name, _as_number(getattr(self, name), _is_int_field(name)))
        if isinstance(self.eval_ks, (list, tuple)):
            self.eval_ks = [_as_number(k, True) for k in self.eval_ks]
        self._check_mara()  # at construction: a MARA config without its KL term is never built

    # ------------------------------------------------------------------------------------------
    def _check_mara(self) -> None:
        if self.mara and self.method in METHODS and self.method_kl_coef() <= 0:
            raise ValueError(
                f"config field `kl_coef`={self.kl_coef!r} (method {self.method!r}): MARA needs a reverse-KL term, "
                "because its beta is the KL coefficient (the augmented rewards give a uniform target only "
                "inside E[R] - beta*KL with the same beta; without it the optimum is the correct answer with "
                "the lowest pi_ref). Use method='rkl' with kl_coef>0, e.g. kl_coef=0.05")

    def method_eps_high(self) -> float:
        return self.eps_high if self.eps_high is not None else method_defaults(self.method)["eps_high"]

    def method_kl_coef(self) -> float:
        return self.kl_coef if self.kl_coef is not None else method_defaults(self.method)["kl_coef"]

    def dph_divergence(self) -> str | None:
        return method_defaults(self.method)["divergence"]

    def regularized(self) -> bool:
        """A DPH term or a KL penalty, whose share of each update the trainer measures."""
        return self.dph_divergence() is not None or self.method_kl_coef() > 0

    def needs_reference_model(self) -> bool:
        """The online reference (adapters disabled) is needed by the KL penalty (and so by MARA)."""
        return self.method_kl_coef() > 0

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the field and the fix; return self when all is well."""
        def bad(name: str, why: str) -> None:
            raise ValueError(f"config field `{name}`={getattr(self, name)!r}: {why}")

        if self.method not in METHODS:
            bad("method", f"unknown method; choose one of {METHODS}")
        if self.task not in ("countdown", "sql", "math"):
            bad("task", "choose 'countdown', 'sql' or 'math'")
        if self.transfer_task is not None and (self.transfer_task not in ("countdown", "sql", "math")
                                               or self.transfer_task == self.task and not self.dataset):
            bad("transfer_task", f"choose a built-in task other than task={self.task!r} ('countdown', 'sql' or "
                "'math'), or None")
        if self.quantization not in (None, "4bit", "8bit"):
            bad("quantization", "use None, '4bit' or '8bit'")
        if self.quantization and importlib.util.find_spec("bitsandbytes") is None:
            bad("quantization", "needs bitsandbytes: `pip install bitsandbytes`, or set quantization=None")
        if self.optimizer not in ("adamw", "paged_adamw_8bit"):
            bad("optimizer", "use 'adamw' or 'paged_adamw_8bit'")
        if self.optimizer == "paged_adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
            bad("optimizer", "paged_adamw_8bit needs bitsandbytes; use optimizer='adamw'")
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and not _optional(f.name):
                bad(f.name, "a value is required (`none` is only for fields whose default is None)")
        if device_problem(self.device):
            bad("device", device_problem(self.device))
        for name, allowed in NUMERIC_RANGES.items():
            problem = allowed.problem(getattr(self, name), _is_int_field(name))
            if problem:
                bad(name, problem)
        self._check_mara()
        if self.updates_per_step > self.prompts_per_step:
            bad("updates_per_step", f"at most prompts_per_step={self.prompts_per_step} (each update takes whole groups)")
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
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward or []):
            bad("reward_weights", f"give one weight per reward function ({len(self.reward or [])} given)")
        if self.report_to not in ("none", "tensorboard"):
            bad("report_to", "use 'none' or 'tensorboard'")
        if self.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            bad("report_to", "needs tensorboard: `pip install tensorboard` (or the `tensorboard` extra)")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > self.eval_n for k in self.eval_ks):
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
        if "mara_beta" in values:
            raise ValueError("config field `mara_beta` was removed: MARA's beta is the KL coefficient, "
                             "set `kl_coef` (with method='rkl') instead")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """The fields of a YAML file (``validation.read_config_file``), from its ``preset`` if it names one."""
        values = read_config_file(path)
        preset = values.pop("preset", None)
        return preset_config(preset, **values) if preset else cls.from_dict(values)


PRESETS: dict[str, dict[str, Any]] = {
    # The built-in tiny model on a CPU: a run takes minutes.
    # DPH: the released split rule (4 of 4) and eta (sft_loss_coeff 0.01); 16 reference rows per
    # update next to 128 on-policy rows, the release's 1:8.
    "tiny-cpu": dict(model="tiny", task="countdown", num_generations=16, prompts_per_step=16,
                     max_new_tokens=24, steps=100, lr=2e-4, presample_k=4, presample_threshold=1.0,
                     lora_rank=16, lora_alpha=32, reference_batch_size=16, eval_n=64, micro_batch_size=256),
    # One Colab-class GPU: a 0.5B-1.5B instruct model in 4-bit with LoRA on GSM8K-style data.
    "one-gpu-qlora": dict(model="Qwen/Qwen2.5-0.5B-Instruct", quantization="4bit", task="math",
                          task_source="openai/gsm8k", chat_template=True, num_generations=8,
                          prompts_per_step=8, max_new_tokens=256, steps=200, lr=1e-5,
                          lora_rank=16, lora_alpha=32, gradient_checkpointing=True,
                          optimizer="paged_adamw_8bit", micro_batch_size=8,
                          reference_batch_size=4, eval_n=16, eval_ks=[1, 2, 4, 8, 16],
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


RESUME_SAFE_FIELDS = frozenset({
    "steps", "output_dir", "overwrite", "progress", "eval_every", "eval_n", "eval_ks", "eval_size", "ood_size",
    "transfer_task", "transfer_size", "transfer_max_new_tokens",
    "save_every", "device", "micro_batch_size", "generation_batch_size", "gradient_checkpointing",
    "rollout_engine", "pack_sequences", "max_nonfinite_steps", "max_reward_error_steps", "fail_fast"})
"""Fields a resumed run may change (each change is logged): evaluation, progress and bookkeeping,
memory knobs that give the same updates (micro-batches, the sampler, packing), the guards, and a
larger ``steps``. Any other difference changes the run's mathematics and refuses to resume."""


def resume_changes(saved: dict[str, Any], config: TrainConfig) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the differences from a run folder's saved config to ``config``, each as
    ``"field: old -> new"``. Fields absent from ``saved`` (written by an older version) are skipped.

    >>> resume_changes({"lr": 2e-4, "steps": 4}, TrainConfig(lr=1e-3, steps=6))
    (['lr: 0.0002 -> 0.001'], ['steps: 4 -> 6'])
    """
    refused, allowed = [], []
    for name, value in config.to_dict().items():
        if name not in saved or saved[name] == value:
            continue
        line = f"{name}: {saved[name]!r} -> {value!r}"
        safe = name in RESUME_SAFE_FIELDS and not (name == "steps" and value < saved[name])
        (allowed if safe else refused).append(line if safe or name != "steps" else line + " (fewer steps)")
    return refused, allowed
