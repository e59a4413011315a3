"""How the tiny model is built: a supervised warm start, then rejection-sampling fine-tuning.

``python -m dphrl_mini.tiny_build`` trains ``dphrl_mini/assets/tiny`` from random weights (the
recipe is ``tiny.BUILT_IN["tiny"]``; about 15 minutes on a 2-core CPU) and writes its README with
the command and the figures ``tiny_measure.measure`` reads off it; ``--measure`` only measures.
A run never imports this module (``tiny.tiny_model_path`` does, only when the weights are missing).

1. **Warm start.** Supervised fine-tuning on ``<bos> prompt completion <eos>`` with the loss on
   the completion (and EOS) only. Problems come from each task's ``"train"`` generator with a
   seed distinct from the RL prompts (``SFT_SEED + seed``), and each problem appears with
   *several different correct solutions* drawn at random (``sft_examples``), so the initial
   policy spreads its mass over many correct answers: moderate Pass@1, high Pass@k. An underfit,
   broad policy is what the RLVR experiments need; a sharp one would leave nothing for Pass@k to
   measure. The ``"test"``, ``"ood"`` and ``"shift"`` splits are never used; the halves held apart
   from "ood" (``countdown_ood_pretrain_problems``, ``sql_ood_pretrain_problems``) may be, as a
   pretrained model has seen the kind of its out-of-domain tasks. The built-in recipe trains the
   hidden matrices with Muon (``TinyConfig.optimizer``), the embeddings and norms with AdamW.
2. **Rejection-sampling fine-tuning** (``rft_rounds``; STaR / RFT): the warm-started model samples
   ``rft_samples`` answers for each of a few thousand training problems and trains on its own
   distinct correct ones (``rft_pairs``). This is how an instruct model comes out of
   post-training: sharper on what it can solve (higher Pass@1, a near-perfect set), still broad.
   Options, off in the built-in recipe, add reference solutions for the problems no sample solved
   (STaR's rationalization), weigh each problem by its correct samples, replay warm-start pairs, or
   interpolate the weights back towards the round's start (WiSE-FT) (``TinyConfig.rft_*``).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from .tiny import ASSET_DIR, ASSET_ROOT, BUILT_IN, build_tokenizer, save_tokenizer, tiny_model_config, tiny_model_path
from .tiny_measure import MAX_NEW_TOKENS, MEASURE_PROMPTS, MEASURE_SAMPLES, MEASURE_TEST_PROMPTS, figures_table, measure

logger = logging.getLogger(__name__)

SFT_SEED = 12345  # SFT problems: the "train" generator, but not the RL prompts' seed
RFT_SEED = 777  # rejection-sampling problems: the "train" generator with yet another seed
RFT_PROBLEMS = {"countdown": 3000, "sql": 1000}  # training problems sampled per round
RFT_WARMUP_STEPS = 20
SQL_DRILL_QUESTIONS = 20  # questions per made-up schema in the warm start


@dataclass
class TinyConfig:
    """Everything that determines the tiny checkpoint (saved next to it as ``build_config``)."""

    steps: int = 2000
    """Optimizer steps of supervised warm-start."""
    schedule_steps: int | None = None
    """Length of the learning-rate schedule (default: ``steps``); ``steps < schedule_steps`` stops
    that schedule early, reproducing an intermediate checkpoint of the longer run exactly."""
    seed: int = 0
    """Seed for initialization, data order and the SFT problems (``SFT_SEED + seed``)."""
    hidden_size: int = 192
    """Model width; 4 layers of 12*h^2 weights each give ~1.8M parameters at 192."""
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 576
    max_position_embeddings: int = 256
    batch_size: int = 64
    """Sequences per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    optimizer: str = "adamw"
    """The warm start's optimizer: ``"adamw"``, or ``"muon"``: Muon (Jordan et al., 2024; ``torch.optim.Muon``,
    momentum orthogonalized by Newton-Schulz) on the hidden weight matrices at ``muon_lr``, AdamW at ``lr`` on
    the embeddings and norms, as nanochat trains. Rejection-sampling rounds use AdamW either way. It reaches a lower
    held-out loss than AdamW in the same steps (``benchmarks/bench_tiny_optimizer.py``)."""
    muon_lr: float = 0.02
    """Peak Muon learning rate of the hidden matrices (``optimizer="muon"``; same schedule as ``lr``)."""
    warmup_steps: int = 50
    weight_decay: float = 0.01
    countdown_problems: int = 7000
    """Distinct countdown problems in the SFT set, drawn from the whole "train" split (its natural mix)."""
    countdown_mix_problems: int = 0
    """More countdown problems (repeats allowed) drawn with the task's difficulty mix, the
    distribution RL trains and tests on: more of the easy tier, which the near-perfect set needs."""
    countdown_wide_problems: int = 0
    """Countdown problems with targets 101-400 (``countdown.wide_rows``, never an RL or evaluation prompt)
    added to the warm start, as a pretrained model has seen more arithmetic than its RL prompts. The
    forms most "ood" problems need (``n*n-n``, ``(n-n)*n``) are 35% of their solutions and 2.5% of the
    "train" split's, whose targets also have other solutions. 0: none."""
    countdown_ood_pretrain_problems: int = 0
    """Sparse countdown problems from the half held apart from "ood" (``countdown.ood_pretrain_rows``)
    added to the warm start. 0: none."""
    sql_ood_pretrain_problems: int = 0
    """Questions on the held-out schema from the half held apart from "ood" (``sql.ood_pretrain_rows``)
    added to the warm start. 0: none."""
    sql_problems: int = 1000
    """Distinct SQL problems in the SFT set."""
    sql_copy_numbers_only: bool = False
    """SQL warm-start queries copy the question's numbers (``sql.copies_question_numbers``); the
    ``k+1`` variants stay correct answers for RL and evaluation, but a character model that samples
    them gets the arithmetic wrong."""
    sql_drill_families: int = 0
    """Made-up SQL schemas (``sql.schema_drill_examples``, 20 questions each) added to the warm start:
    a drill in copying the question's table, column and value names, which the held-out "ood"
    schema needs. 0: none. It teaches copying only approximately (table names
    misspelt)."""
    per_problem: int = 8
    """Different correct solutions drawn per problem (``sft_examples``)."""
    num_threads: int = 2
    """``torch.set_num_threads``: the build must fit a small shared CPU."""
    init_from: str | None = None
    """Start from this checkpoint instead of random weights (a second stage of a build)."""
    rft_rounds: int = 0
    """Rounds of rejection-sampling fine-tuning after the warm start (``rft_pairs``): the model
    trains on its own distinct correct answers, which sharpens the problems it can solve (higher
    Pass@1, a near-perfect set) as an instruct model's post-training does. 0: none."""
    rft_steps: int = 600
    """Optimizer steps per rejection-sampling round."""
    rft_lr: float = 5e-4
    """Peak learning rate of a rejection-sampling round."""
    rft_samples: int = 8
    """Completions sampled per training problem in a rejection-sampling round."""
    rft_countdown_ood_pretrain_problems: int = 0
    """Held-apart sparse countdown problems (``countdown.ood_pretrain_rows``, never RL or evaluation
    prompts) sampled in each round beside the training problems. 0: none."""
    rft_sql_problems: int | None = None
    """SQL training problems sampled per round (default ``RFT_PROBLEMS["sql"]``, 1,000). Fewer leave more of
    a round's steps to Countdown, and sampling SQL's longer answers is most of a round's sampling time."""
    rft_unsolved_references: int = 0
    """Reference solutions (``sft_examples``, up to this many) added to a round for each of its problems
    that no sample solved. STaR (Zelikman et al., 2022) "rationalizes" a failed problem: the model is shown
    the answer and writes a solution that reaches it; here the solution *is* the answer, so the analogue
    is a reference solution. Without it a round trains only where the model already succeeds and narrows
    the hard tier (lower Pass@64). 0: none."""
    rft_weight_by_success: bool = False
    """Repeat each solved problem's distinct correct answers so that the problem weighs as many pairs as
    it had correct samples (answers kept uniform among themselves), as training on every correct sample
    (STaR) weights problems; off: each distinct answer once (RFT's de-duplication), which weighs a
    problem by how many different answers it has."""
    rft_replay: float = 0.0
    """Warm-start pairs (``sft_pairs``, drawn at random) added to each round, as a multiple of the
    round's own pairs: RFT as Yuan et al. (2023) run it trains on the SFT data next to the distinct
    rejection samples. 0: the round trains on its own samples only; more keeps the model
    broader (higher Pass@64) and blunter (fewer near-perfect prompts, lower Pass@1)."""
    rft_interpolation: float = 1.0
    """After the rounds, move the weights back towards those the rounds started from:
    ``(1 - a) * start + a * end`` with ``a`` this value (WiSE-FT, Wortsman et al., 2022, which interpolates a
    fine-tuned model with its start to keep the start's breadth). 1.0: the rounds' weights as they are;
    less gives back Pass@1 and the near-perfect set for little Pass@64."""

    def warm_start_muon_lr(self) -> float | None:
        """Muon's peak learning rate in the warm start (``_fit``'s ``muon_lr``), None with AdamW."""
        return self.muon_lr if self.optimizer == "muon" else None


def sft_pairs(cfg: TinyConfig) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from every tiny task, several correct solutions per problem."""
    from dphrl_mini.tasks import get_task

    countdown, sql = get_task("countdown"), get_task("sql")
    seed = SFT_SEED + cfg.seed
    rows = countdown.make_dataset("train", cfg.countdown_problems, seed=seed, mix=False) if cfg.countdown_problems else []
    if cfg.countdown_mix_problems:
        rows += countdown.make_dataset("train", cfg.countdown_mix_problems, seed=seed + 1)
    if cfg.countdown_wide_problems:
        rows += countdown.wide_rows(cfg.countdown_wide_problems, seed=seed + 2)
    if cfg.countdown_ood_pretrain_problems:
        rows += countdown.ood_pretrain_rows(cfg.countdown_ood_pretrain_problems, seed=seed + 3)
    pairs = countdown.sft_examples(rows, per_problem=cfg.per_problem, seed=seed)
    if cfg.sql_problems:
        rows = sql.make_dataset("train", cfg.sql_problems, seed=seed)
        pairs += sql.sft_examples(rows, per_problem=cfg.per_problem, seed=seed,
                                  copy_numbers_only=cfg.sql_copy_numbers_only)
    if cfg.sql_ood_pretrain_problems:
        rows = sql.ood_pretrain_rows(cfg.sql_ood_pretrain_problems, seed=seed + 3)
        pairs += sql.sft_examples(rows, per_problem=cfg.per_problem, seed=seed + 3,
                                  copy_numbers_only=cfg.sql_copy_numbers_only)
    if cfg.sql_drill_families:
        pairs += sql.schema_drill_examples(cfg.sql_drill_families, SQL_DRILL_QUESTIONS, cfg.per_problem, seed,
                                           copy_numbers_only=cfg.sql_copy_numbers_only)
    return pairs


def encode_pairs(tokenizer, pairs, max_length: int) -> list[tuple[list[int], int]]:
    """``<bos> prompt completion <eos>`` ids and the number of prompt tokens (incl. ``<bos>``)."""
    out = []
    for prompt, completion in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"]  # starts with <bos>
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = prompt_ids + completion_ids + [tokenizer.eos_token_id]
        if len(ids) <= max_length:
            out.append((ids, len(prompt_ids)))
    return out


def _batches(examples, batch_size: int, rng: random.Random):
    """Endless length-bucketed batches: shuffle, sort within chunks of 50 batches, shuffle batches."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        batches = []
        chunk = 50 * batch_size
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: len(examples[i][0]))
            batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        yield from batches


def _collate(examples, index: list[int], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels); labels are -100 on prompt and padding."""
    width = max(len(examples[i][0]) for i in index)
    input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(index), width), -100, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(index), width), dtype=torch.long)  # (B, T)
    for row, i in enumerate(index):
        ids, n_prompt = examples[i]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])  # completion + EOS
    return input_ids, attention_mask, labels


def train_tiny(cfg: TinyConfig, log_every: int = 50, callback=None):
    """Build tokenizer + model (random, or ``init_from``), run the supervised warm start and then
    ``rft_rounds`` rounds of rejection-sampling fine-tuning; returns (model, tokenizer)."""
    if cfg.rft_replay < 0:
        raise ValueError(f"rft_replay must be >= 0 (a multiple of the round's pairs), got {cfg.rft_replay}")
    if cfg.rft_unsolved_references < 0:
        raise ValueError(f"rft_unsolved_references must be >= 0 (solutions per unsolved problem), "
                         f"got {cfg.rft_unsolved_references}")
    if not 0.0 <= cfg.rft_interpolation <= 1.0:
        raise ValueError(f"rft_interpolation must be in [0, 1] (the rounds' share of the final weights), "
                         f"got {cfg.rft_interpolation}")
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}")
    if cfg.rft_sql_problems is not None and cfg.rft_sql_problems < 0:
        raise ValueError(f"rft_sql_problems must be >= 0 (SQL problems per round), got {cfg.rft_sql_problems}")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = build_tokenizer(cfg.max_position_embeddings)
    if cfg.init_from:
        model = LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
    else:
        model = LlamaForCausalLM(tiny_model_config(cfg, len(tokenizer)))
    warm_start = sft_pairs(cfg) if cfg.steps or cfg.rft_replay else []
    if cfg.steps:
        _fit(model, tokenizer, warm_start, cfg, cfg.steps, cfg.lr, cfg.warmup_steps, rng, log_every, callback,
             schedule_steps=cfg.schedule_steps, muon_lr=cfg.warm_start_muon_lr())
    interpolate = cfg.rft_rounds > 0 and cfg.rft_interpolation < 1.0
    start_weights = {name: p.detach().clone() for name, p in model.named_parameters()} if interpolate else {}
    for round_index in range(cfg.rft_rounds):
        model.eval()
        pairs = rft_pairs(model, tokenizer, seed=cfg.seed, round_index=round_index, samples=cfg.rft_samples,
                          countdown_ood_pretrain=cfg.rft_countdown_ood_pretrain_problems,
                          unsolved_references=cfg.rft_unsolved_references, sql_problems=cfg.rft_sql_problems,
                          weight_by_success=cfg.rft_weight_by_success)
        logger.info("rejection-sampling round %d/%d: %d pairs", round_index + 1, cfg.rft_rounds, len(pairs))
        if cfg.rft_replay:
            pairs += rng.sample(warm_start, min(len(warm_start), round(cfg.rft_replay * len(pairs))))
        _fit(model, tokenizer, pairs, cfg, cfg.rft_steps, cfg.rft_lr, RFT_WARMUP_STEPS, rng, log_every)
    if interpolate:
        interpolate_weights(model, start_weights, cfg.rft_interpolation)
        logger.info("weights interpolated: %.2f x rounds + %.2f x start", cfg.rft_interpolation,
                    1 - cfg.rft_interpolation)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def interpolate_weights(model, start_weights: dict[str, torch.Tensor], weight: float) -> None:
    """In place: every parameter becomes ``(1 - weight) * start + weight * current`` (WiSE-FT's
    interpolation; ``start_weights`` maps ``named_parameters`` names to tensors, tied weights once)."""
    for name, param in model.named_parameters():
        param.copy_(torch.lerp(start_weights[name].to(param.dtype), param, weight))


def rft_pairs(model, tokenizer, seed: int = 0, round_index: int = 0, samples: int = TinyConfig.rft_samples,
              countdown_ood_pretrain: int = 0, unsolved_references: int = 0,
              sql_problems: int | None = None, weight_by_success: bool = False) -> list[tuple[str, str]]:
    """Rejection sampling (STaR / RFT): ``samples`` completions at temperature 1 for each of
    ``RFT_PROBLEMS[task]`` training problems (``RFT_SEED + seed``, the same problems every round), and
    every *distinct* correct answer (``solution_key``) kept once as a (prompt, completion) pair: the
    model's own solutions, each distinct answer once by default, nothing for unsolved ones.
    ``countdown_ood_pretrain`` held-apart sparse problems (``countdown.ood_pretrain_rows``) join the
    Countdown ones. ``unsolved_references`` > 0 adds up to that many reference solutions
    (``sft_examples``) for each problem no sample solved (STaR's rationalization, ``TinyConfig``).
    ``sql_problems`` overrides ``RFT_PROBLEMS["sql"]``; ``weight_by_success`` repeats each problem's
    answers ``round(correct / distinct)`` times (``TinyConfig.rft_weight_by_success``)."""
    from .evaluate import evaluate
    from .tasks import countdown, sql

    pairs = []
    for task in (countdown, sql):
        max_new = MAX_NEW_TOKENS[task.NAME]
        size = sql_problems if task is sql and sql_problems is not None else RFT_PROBLEMS[task.NAME]
        rows = task.make_dataset("train", size, seed=RFT_SEED + seed)
        if task is countdown and countdown_ood_pretrain:
            rows += countdown.ood_pretrain_rows(countdown_ood_pretrain, seed=RFT_SEED + seed)
        result = evaluate(model, tokenizer, rows, task, n=samples, max_new_tokens=max_new,
                          seed=seed + round_index, greedy=False, progress=False)
        for row, keys, correct in zip(rows, result.distinct_keys, result.correct):
            repeats = max(1, round(correct / len(keys))) if weight_by_success and keys else 1
            pairs += [(row["prompt"], key) for key in sorted(keys) for _ in range(repeats)]
        unsolved = [row for row, keys in zip(rows, result.distinct_keys) if not keys]
        if unsolved_references and unsolved:
            references = task.sft_examples(unsolved, per_problem=unsolved_references, seed=RFT_SEED + seed + round_index)
            logger.info("%s: %d of %d problems unsolved, %d reference solutions added", task.NAME, len(unsolved),
                        len(rows), len(references))
            pairs += references
    return pairs


def rft_problem_counts(cfg: TinyConfig) -> dict[str, int]:
    """Problems a rejection-sampling round samples per task (Countdown's include the held-apart sparse ones)."""
    return {"countdown": RFT_PROBLEMS["countdown"] + cfg.rft_countdown_ood_pretrain_problems,
            "sql": RFT_PROBLEMS["sql"] if cfg.rft_sql_problems is None else cfg.rft_sql_problems}


def _optimizers(model, weight_decay: float, lr: float,
                muon_lr: float | None) -> list[tuple[torch.optim.Optimizer, float]]:
    """(optimizer, peak learning rate) pairs: AdamW on every parameter, or with ``muon_lr`` Muon on the
    hidden weight matrices and AdamW on the (tied) embeddings and the norms."""
    def adamw(params):
        decay, no_decay = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98))

    if muon_lr is None:
        return [(adamw(list(model.parameters())), lr)]
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(f"optimizer='muon' needs torch.optim.Muon (torch >= 2.9); this is torch {torch.__version__}")
    hidden = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if p.ndim != 2 or "embed" in n]
    return [(torch.optim.Muon(hidden, lr=muon_lr, weight_decay=weight_decay), muon_lr), (adamw(rest), lr)]


def _fit(model, tokenizer, pairs, cfg: TinyConfig, steps: int, lr: float, warmup_steps: int, rng: random.Random,
         log_every: int = 50, callback=None, schedule_steps: int | None = None, muon_lr: float | None = None) -> None:
    """``steps`` optimizer steps of next-token loss on the completions of ``pairs`` (linear warm-up,
    cosine decay to 10% of the peak over ``schedule_steps``, default ``steps``): AdamW at ``lr``, or with
    ``muon_lr`` Muon on the hidden matrices (``_optimizers``)."""
    examples = encode_pairs(tokenizer, pairs, cfg.max_position_embeddings)
    logger.info("tiny: %d SFT sequences, %d parameters", len(examples), model.num_parameters())
    optimizers = _optimizers(model, cfg.weight_decay, lr, muon_lr)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10% of the peak
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, (schedule_steps or steps) - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    batches = _batches(examples, cfg.batch_size, rng)
    start, running = time.time(), 0.0
    for step in range(steps):
        input_ids, attention_mask, labels = _collate(examples, next(batches), tokenizer.pad_token_id)
        for optimizer, peak in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = peak * schedule(step)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer, _ in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            logger.info("step %d/%d loss %.4f (%.0fs)", step + 1, steps, running / n, time.time() - start)
            running = 0.0
            if callback is not None:
                callback(step + 1, model, tokenizer)


def _readme(cfg: TinyConfig, n_params: int, seconds: float, results: dict[str, dict] | None, out: Path) -> str:
    """The checkpoint's README: the command that rebuilds it, its size, and the measured metrics."""
    defaults = TinyConfig()
    args = ""
    for f in fields(TinyConfig):
        value = getattr(cfg, f.name)
        if value != getattr(defaults, f.name) and f.name != "num_threads":
            args += f" --{f.name.replace('_', '-')}" + ("" if isinstance(value, bool) else f" {value}")
    where = f"dphrl_mini/assets/{out.name}" if out.resolve().parent == ASSET_ROOT else str(out)
    counts = rft_problem_counts(cfg)
    round_problems = f"{RFT_PROBLEMS['countdown'] + counts['sql']:,} training"
    if cfg.rft_countdown_ood_pretrain_problems:
        round_problems += f" and {cfg.rft_countdown_ood_pretrain_problems:,} held-apart"
    lines = [
        f"# dphrl-mini {out.name} model",
        "",
        "A character-level Llama (4 layers, 4 heads, 2 KV heads, tied embeddings) built by the",
        "project itself and warm-started by supervised fine-tuning on countdown and SQL problems with",
        "several different correct solutions per problem (see `dphrl_mini/tiny_build.py`)"
        + (f", then {cfg.rft_rounds} round{'s' * (cfg.rft_rounds > 1)} of rejection-sampling fine-tuning on its own "
           "distinct correct answers (`rft_pairs`)" if cfg.rft_rounds else "") + ". Reproduce it with",
        "",
        "```",
        f"python -m dphrl_mini.tiny_build --out {where}{args}",
        "```",
        "",
        f"- parameters: {n_params:,} (float32 safetensors)",
        f"- training: {cfg.steps} steps x {cfg.batch_size} sequences"
        + (f" + {cfg.rft_rounds} x ({cfg.rft_samples} samples for each of {round_problems} problems, "
           f"{cfg.rft_steps} steps)" if cfg.rft_rounds else "")
        + f", {seconds / 60:.1f} min on {cfg.num_threads} CPU threads",
        f"- build config: `{asdict(cfg)}`",
        "",
    ]
    if results:
        lines += [f"Measured after the build by `tiny_measure.measure` (the project's evaluator, temperature 1.0, no "
                  f"top-k/top-p; {MEASURE_SAMPLES} samples for each held-out prompt: {MEASURE_TEST_PROMPTS['countdown']} "
                  f"Countdown and {MEASURE_TEST_PROMPTS['sql']} SQL test prompts, {MEASURE_PROMPTS} per other split; "
                  "near-perfect shares over the experiments' RL training prompts). Targets: the papers' regime "
                  "(moderate Pass@1, high Pass@k, a near-perfect set, reachable out-of-domain splits). "
                  f"Re-measure with `python -m dphrl_mini.tiny_build --measure {out.name}`.", "",
                  figures_table(results)]
    return "\n".join(lines) + "\n"


def build_tiny_model(out_dir: str | Path, steps: int = TinyConfig.steps, seed: int = 0,
                     evaluate: bool = False, **overrides) -> Path:
    """Train the tiny model and save model, tokenizer and a README into ``out_dir``; returns it.

    ``overrides`` set any other ``TinyConfig`` field. ``evaluate=True`` also measures Pass@1,
    Pass@64 and distinct correct solutions on the test, ood and shift splits and writes them to the README.
    """
    cfg = TinyConfig(steps=steps, seed=seed, **overrides)
    torch.set_num_threads(cfg.num_threads)
    start = time.time()
    model, tokenizer = train_tiny(cfg)
    seconds = time.time() - start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    results = measure(model, tokenizer) if evaluate else None
    if results:
        logger.info("measured figures:\n%s", figures_table(results))
    (out / "README.md").write_text(_readme(cfg, model.num_parameters(), seconds, results, out))
    logger.info("tiny model saved to %s (%.1f min of training)", out, seconds / 60)
    return out


def _field_type(f) -> type:
    """The Python type of a ``TinyConfig`` field (annotations are strings: ``"int | None"``)."""
    return {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split("|")[0].strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSET_DIR), help="output directory (default: %(default)s)")
    parser.add_argument("--no-eval", action="store_true", help="skip the Pass@k measurement")
    parser.add_argument("--measure", metavar="MODEL", nargs="?", const="tiny", default=None,
                        help=f"only measure a checkpoint (one of {', '.join(BUILT_IN)} or a folder; default: tiny) "
                             "and print its figures")
    for f in fields(TinyConfig):  # every build setting, with the TinyConfig default
        flag = "--" + f.name.replace("_", "-")
        if _field_type(f) is bool:
            parser.add_argument(flag, action="store_true", help=f"set TinyConfig.{f.name}")
        else:
            parser.add_argument(flag, type=_field_type(f), default=f.default,
                                help=f"TinyConfig.{f.name} (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.measure is not None:
        from transformers import AutoTokenizer

        path = tiny_model_path(args.measure) if args.measure in BUILT_IN else args.measure
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        print(figures_table(measure(model, AutoTokenizer.from_pretrained(path), progress=True)))
        return
    build_tiny_model(args.out, evaluate=not args.no_eval, **{f.name: getattr(args, f.name) for f in fields(TinyConfig)})


if __name__ == "__main__":
    main()
