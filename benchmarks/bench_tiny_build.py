"""Will a built-in model's build fit the 20-minute, 2-core budget on this CPU? Times its parts, projects the build.

    python benchmarks/bench_tiny_build.py [--model tiny] [--steps 200] [--problems 300] [--json]

The build time of the ``tiny`` recipe (``dphrl_mini.tiny.BUILT_IN``) depends on the CPU more than on
anything else (15.4 min on the 2-core CPU that built it; ``dphrl_mini/assets/README.md``). This
benchmark times, on this machine and with the
recipe's thread count, the three things a build is made of and projects the whole build from them:

* a warm-start step (64 sequences of the recipe's own warm-start data, from random weights);
* sampling one rejection-sampling problem of each task (``rft_samples`` completions, the round's
  token limits), with the committed model of that name, which stops at its answers as a trained
  model does (a round samples from the model before it, so this is an estimate);
* a round step (64 of those samples' correct answers, the tasks in the round's proportions; the
  warm-start pairs when too few are correct).

Reported: seconds per step and per problem (means over the timed steps and problems), the seconds to
build the warm-start data, and the projected minutes, warm start + rounds, against the 20-minute budget.
Model loading, saving and start-up (seconds) are not counted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: E402

from dphrl_mini import tiny, tiny_build, tiny_measure  # noqa: E402
from dphrl_mini.evaluate import evaluate  # noqa: E402
from dphrl_mini.tasks import countdown, sql  # noqa: E402

BUDGET_MINUTES = 20.0


def _step_seconds(model, tokenizer, pairs, cfg: tiny_build.TinyConfig, steps: int, lr: float,
                  muon_lr: float | None = None) -> float:
    """Mean wall time of one ``tiny_build._fit`` step over ``steps`` steps (the first 5 not counted). The mean, not
    the median: batches are bucketed by length, so a long SQL batch takes several times a short one."""
    stamps = [time.perf_counter()]
    tiny_build._fit(model, tokenizer, pairs, cfg, steps + 5, lr, 5, random.Random(0), log_every=1,
              callback=lambda *_: stamps.append(time.perf_counter()), muon_lr=muon_lr)
    return (stamps[-1] - stamps[5]) / steps  # steps 6 .. steps + 5


def run(name: str = "tiny", steps: int = 200, problems: int = 300) -> dict:
    if name not in tiny.BUILT_IN:
        raise ValueError(f"--model must be one of {sorted(tiny.BUILT_IN)}, got {name!r}")
    cfg = tiny_build.TinyConfig(**tiny.BUILT_IN[name]())
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(0)
    tokenizer = tiny.build_tokenizer(cfg.max_position_embeddings)
    start = time.perf_counter()
    warm_pairs = tiny_build.sft_pairs(cfg) if cfg.steps else []
    data_seconds = time.perf_counter() - start
    warm_step = 0.0
    if cfg.steps:
        model = LlamaForCausalLM(tiny.tiny_model_config(cfg, len(tokenizer)))
        warm_step = _step_seconds(model, tokenizer, warm_pairs, cfg, steps, cfg.lr, cfg.warm_start_muon_lr())
    result = {"model": name, "threads": cfg.num_threads, "warm_start_steps": cfg.steps,
              "warm_start_data_s": data_seconds, "warm_start_step_s": warm_step, "rft_rounds": cfg.rft_rounds}
    minutes = (data_seconds + cfg.steps * warm_step) / 60
    if cfg.rft_rounds:
        path = tiny.tiny_model_path(name)
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        counts = tiny_build.rft_problem_counts(cfg)
        round_pairs, sampling = [], 0.0
        for task in (countdown, sql):  # as ``tiny_build.rft_pairs`` samples
            # the tasks in the round's proportions, so that the round steps see its mix of lengths
            size = max(1, round(problems * counts[task.NAME] / max(counts.values())))
            rows = task.make_dataset("train", size, seed=tiny_build.RFT_SEED)
            start = time.perf_counter()
            sampled = evaluate(model, tokenizer, rows, task, n=cfg.rft_samples,
                               max_new_tokens=tiny_measure.MAX_NEW_TOKENS[task.NAME], greedy=False, progress=False)
            per_problem = (time.perf_counter() - start) / size
            result[f"{task.NAME}_sample_s_per_problem"] = per_problem
            sampling += per_problem * counts[task.NAME]
            round_pairs += [(row["prompt"], key) for row, keys in zip(rows, sampled.distinct_keys) for key in keys]
        pairs = round_pairs if len(round_pairs) >= cfg.batch_size else warm_pairs
        result["round_step_s"] = _step_seconds(model, tokenizer, pairs, cfg, steps, cfg.rft_lr)
        result["round_sampling_s"] = sampling
        minutes += cfg.rft_rounds * (sampling + cfg.rft_steps * result["round_step_s"]) / 60
    result["projected_build_min"] = minutes
    result["fits_budget"] = minutes <= BUDGET_MINUTES
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help=f"one of {', '.join(tiny.BUILT_IN)}")
    parser.add_argument("--steps", type=int, default=200, help="timed steps of each kind (after 5 untimed)")
    parser.add_argument("--problems", type=int, default=300,
                        help="problems sampled to time a round (the larger task; the other in the round's proportion)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.problems < 1:
        parser.error("--steps and --problems must be at least 1")
    r = run(args.model, args.steps, args.problems)
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['model']} on this CPU ({r['threads']} threads):")
    print(f"  warm-start data     {r['warm_start_data_s']:7.1f} s")
    print(f"  warm-start step     {r['warm_start_step_s']:7.3f} s  x {r['warm_start_steps']} steps")
    if r["rft_rounds"]:
        print(f"  sampling, countdown {r['countdown_sample_s_per_problem']:7.3f} s a problem")
        print(f"  sampling, sql       {r['sql_sample_s_per_problem']:7.3f} s a problem")
        print(f"  round sampling      {r['round_sampling_s']:7.1f} s  x {r['rft_rounds']} rounds")
        print(f"  round step          {r['round_step_s']:7.3f} s")
    verdict = "within" if r["fits_budget"] else "over"
    print(f"projected build: {r['projected_build_min']:.1f} min ({verdict} the {BUDGET_MINUTES:.0f}-minute budget; "
          "start-up, loading and saving not counted)")


if __name__ == "__main__":
    main()
