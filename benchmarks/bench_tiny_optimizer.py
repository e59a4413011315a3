"""How far does a warm-start step get the tiny model? AdamW against Muon on the same data, held-out loss.

    python benchmarks/bench_tiny_optimizer.py [--model tiny] [--steps 800] [--every 200] [--json]

A built-in model's warm start (``dphrl_mini.tiny_build``) is most of its build. This trains the same
initialization on the same warm-start data in the same batch order twice, ``--steps`` steps each with
the cosine schedule over those steps: once with AdamW at ``lr`` on every parameter, once with Muon
(``TinyConfig.optimizer="muon"``: ``torch.optim.Muon`` at ``muon_lr`` on the hidden matrices, AdamW at
``lr`` on the embeddings and norms). Every ``--every`` steps it prints the loss on held-out reference
solutions (``sft_examples``, 2 per problem) of 600 Countdown and 300 SQL *test* problems, never trained
on, with the seconds spent training so far (the held-out evaluation not counted). The recipe's data flags come
from ``tiny.BUILT_IN[--model]``; its own step count and optimizer do not matter here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import LlamaForCausalLM  # noqa: E402

from dphrl_mini import tiny, tiny_build  # noqa: E402
from dphrl_mini.tasks import countdown, sql  # noqa: E402


@torch.no_grad()
def heldout_loss(model, examples, pad_id: int, batch_size: int = 256) -> float:
    """Mean next-token loss over the completion tokens of encoded ``examples``."""
    was_training, total, tokens = model.training, 0.0, 0
    model.eval()
    for start in range(0, len(examples), batch_size):
        index = list(range(start, min(len(examples), start + batch_size)))
        input_ids, attention_mask, labels = tiny_build._collate(examples, index, pad_id)
        n = int((labels[:, 1:] != -100).sum())  # the tokens the shifted loss averages over
        total += model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item() * n
        tokens += n
    model.train(was_training)
    return total / tokens


def run(name: str = "tiny", steps: int = 800, every: int = 200) -> list[dict]:
    if name not in tiny.BUILT_IN:
        raise ValueError(f"--model must be one of {sorted(tiny.BUILT_IN)}, got {name!r}")
    recipe = {k: v for k, v in tiny.BUILT_IN[name]().items() if k != "init_from"}
    cfg = dataclasses.replace(tiny_build.TinyConfig(**recipe), steps=steps)
    torch.set_num_threads(cfg.num_threads)
    tokenizer = tiny.build_tokenizer(cfg.max_position_embeddings)
    pairs = tiny_build.sft_pairs(cfg)
    heldout = {task.NAME: tiny_build.encode_pairs(tokenizer, task.sft_examples(task.make_dataset("test", size, seed=0),
                                                                         per_problem=2, seed=1),
                                            cfg.max_position_embeddings)
               for task, size in ((countdown, 600), (sql, 300))}
    rows = []
    for optimizer in ("adamw", "muon"):
        torch.manual_seed(cfg.seed)  # the same initialization and batch order for both
        model = LlamaForCausalLM(tiny.tiny_model_config(cfg, len(tokenizer)))
        train_seconds, last = [0.0], [time.perf_counter()]
        losses = []

        def record(step, model, _tokenizer):
            train_seconds[0] += time.perf_counter() - last[0]
            row = {"optimizer": optimizer, "step": step, "train_s": round(train_seconds[0], 1)}
            row.update({f"{task}_heldout_loss": heldout_loss(model, examples, tokenizer.pad_token_id)
                        for task, examples in heldout.items()})
            losses.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            last[0] = time.perf_counter()

        muon_lr = dataclasses.replace(cfg, optimizer=optimizer).warm_start_muon_lr()
        tiny_build._fit(model, tokenizer, pairs, cfg, steps, cfg.lr, cfg.warmup_steps, random.Random(cfg.seed),
                  log_every=every, callback=record, muon_lr=muon_lr)
        rows += losses
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help=f"whose warm-start data: one of {', '.join(tiny.BUILT_IN)}")
    parser.add_argument("--steps", type=int, default=800, help="steps per optimizer (the schedule's length)")
    parser.add_argument("--every", type=int, default=200, help="steps between held-out measurements")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be at least 1")
    rows = run(args.model, args.steps, args.every)
    if args.json:
        print(json.dumps(rows))
        return
    print("| optimizer | step | train s | Countdown held-out loss | SQL held-out loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimizer']} | {r['step']} | {r['train_s']:.0f} | {r['countdown_heldout_loss']:.3f} | "
              f"{r['sql_heldout_loss']:.3f} |")


if __name__ == "__main__":
    main()
