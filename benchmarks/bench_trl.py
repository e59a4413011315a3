"""dphrl-mini vs TRL's GRPOTrainer at equal settings, in one process; and DPH-RL vs RKL.

    python benchmarks/bench_trl.py --device cpu --model tiny --G 8 --prompts 8 --max-new-tokens 24 \
        --steps 3 --warmup 1 [--json out.json]

Both trainers get the same model (weights, dtype, quantization), LoRA (rank, alpha, all-linear),
countdown prompts and reward function, G completions per prompt, ``prompts`` prompts per step
(one optimizer update per step on all prompts*G completions in one micro-batch), completion
length, temperature 1, beta=0 (no KL, no reference model), clip eps 0.2, token-mean loss
(TRL ``loss_type="dapo"``), gradient checkpointing (off unless ``--gradient-checkpointing``).

Reported per trainer: medians over ``--rounds`` interleaved runs x ``--steps`` timed steps (after
``--warmup`` untimed ones per run); a fresh trainer per run:
  s/step           wall time of one RL step (rollout + reward + update)
  rollout tok/s    sampled completion tokens / median time inside generation
  train tok/s      completion tokens (the tokens the loss sees) / median (step time - generation time)
  peak memory      GPU: torch.cuda.max_memory_allocated during the run; CPU: the peak rise of the
                   process RSS during the run (sampled every 5 ms). On CPU every run is a forked
                   child of the benchmark process (same imports, same starting state), so peaks
                   do not leak from one trainer into the next
Then dphrl-mini rkl (online reference forward each step) vs dph_js (stored reference samples, no
online reference) with the same settings.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# --- memory ------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextmanager
def peak_memory(device: str, out: dict):
    """out["peak_mb"]: GPU max_memory_allocated, or the CPU RSS peak rise during the block."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return
    start, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        out["peak_mb"] = max(peak[0] - start, 0) / 2**20
        out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --- models --------------------------------------------------------------------------------------
def model_path(args) -> str:
    """The built-in tiny model, or a Qwen2.5-0.5B-shaped one with random weights built locally."""
    from dphrl_mini.local_models import build_local_model
    from dphrl_mini.models import resolve_model_path

    if args.model == "tiny":
        return resolve_model_path("tiny")
    return str(build_local_model(tempfile.mkdtemp(prefix="qwen2.5-0.5b-shape-"), "qwen2", "qwen2.5-0.5b"))


def countdown_rows(n: int):
    from dphrl_mini.tasks import get_task

    task = get_task("countdown")
    return task, task.make_dataset("train", n, seed=0)


# --- dphrl-mini ----------------------------------------------------------------------------------
def run_dphrl(args, path: str, method: str, engine: str, pack: bool = True) -> dict:
    from dphrl_mini.config import TrainConfig
    from dphrl_mini.packing import MASKED_ATTENTION, attention_implementation
    from dphrl_mini.trainer import Trainer

    cfg = TrainConfig(model=path, method=method, task="countdown", quantization=args.quantization,
                      lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank, device=args.device,
                      gradient_checkpointing=args.gradient_checkpointing, num_generations=args.G,
                      prompts_per_step=args.prompts, max_new_tokens=args.max_new_tokens, updates_per_step=1,
                      micro_batch_size=args.prompts * args.G, generation_batch_size=args.prompts * args.G,
                      steps=args.warmup + args.steps, lr=1e-5, train_size=max(64, args.prompts * (args.warmup + args.steps)),
                      presample_k=4, presample_threshold=0.25, reference_batch_size=args.reference_batch_size,
                      eval_size=1, ood_size=1, eval_ks=[1], eval_n=1, progress=False, rollout_engine=engine,
                      pack_sequences=pack, output_dir=tempfile.mkdtemp(prefix=f"bench-{method}-"), seed=0)
    out: dict = {"framework": "dphrl-mini", "method": method, "rollout_engine": engine, "pack_sequences": pack}
    with peak_memory(args.device, out):
        trainer = Trainer(cfg)
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        trainer.prepare_data()  # DPH: one-time pre-sampling of the reference store (not in s/step)
        out["setup_presample_s"] = time.perf_counter() - t
        steps = []
        for i in range(args.warmup + args.steps):
            _sync(args.device)
            t = time.perf_counter()
            metrics = trainer.step()
            _sync(args.device)
            if i >= args.warmup:
                steps.append((time.perf_counter() - t, metrics))
    out["engine_resolved"] = trainer.engine.mode
    out["packed_forward"] = pack and attention_implementation(trainer.model) in MASKED_ATTENTION
    out["raw_steps"] = [(s, m["time_rollout"], m["completion_length"] * args.prompts * args.G) for s, m in steps]
    return out


# --- TRL -----------------------------------------------------------------------------------------
def run_trl(args, path: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dphrl_mini.models import quantization_config

    task, rows = countdown_rows(args.prompts * (args.warmup + args.steps) * 2)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "numbers": r["numbers"], "target": r["target"]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    kwargs = {"dtype": dtype}
    if args.quantization:
        kwargs.update(quantization_config=quantization_config(args.quantization, dtype), device_map={"": args.device})
    batch = args.prompts * args.G
    config = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), num_generations=args.G,
                        per_device_train_batch_size=batch, generation_batch_size=batch, gradient_accumulation_steps=1,
                        max_completion_length=args.max_new_tokens, beta=0.0, loss_type="dapo", epsilon=0.2,
                        num_iterations=1, use_vllm=False, report_to="none", logging_steps=1,
                        max_steps=args.warmup + args.steps, learning_rate=1e-5, temperature=1.0,
                        gradient_checkpointing=args.gradient_checkpointing, bf16=args.device == "cuda",
                        use_cpu=args.device == "cpu", save_strategy="no", seed=0, disable_tqdm=True,
                        dataloader_num_workers=0)
    lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear",
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")

    def reward(prompts, completions, numbers, target, **_):
        return task.reward(prompts, completions, numbers=numbers, target=target)

    class Timer(TrainerCallback):
        def __init__(self):
            self.steps, self.t = [], 0.0

        def on_step_begin(self, *a, **k):
            _sync(args.device)
            self.t = time.perf_counter()
            state["gen_s"], state["tokens"] = 0.0, 0.0

        def on_step_end(self, *a, **k):
            _sync(args.device)
            self.steps.append((time.perf_counter() - self.t, state["gen_s"], state["tokens"]))

    state = {"gen_s": 0.0, "tokens": 0.0}
    out: dict = {"framework": "trl", "method": "grpo (TRL GRPOTrainer)"}
    timer = Timer()
    with peak_memory(args.device, out):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if not args.quantization:
            model.to(args.device)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=lora, callbacks=[timer])
        generate, score = trainer._generate, trainer._generate_and_score_completions

        def timed_generate(*a, **k):
            _sync(args.device)
            t = time.perf_counter()
            result = generate(*a, **k)
            _sync(args.device)
            state["gen_s"] += time.perf_counter() - t
            return result

        def counted_score(*a, **k):
            result = score(*a, **k)
            state["tokens"] += float(result["completion_mask"].sum())
            return result

        trainer._generate, trainer._generate_and_score_completions = timed_generate, counted_score
        trainer.train()
    out["raw_steps"] = timer.steps[args.warmup:]
    return out


def isolated(args, fn, *fn_args) -> dict:
    """CPU: run ``fn`` in a forked child so that each trainer's RSS peak starts from the same state
    (same imports, nothing left over from the previous trainer); CUDA: in this process."""
    if args.device == "cuda":
        result = fn(args, *fn_args)
        gc.collect()  # the finished trainer's tensors must not count in the next run's peak
        torch.cuda.empty_cache()
        return result
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child():
        try:
            queue.put(fn(args, *fn_args))
        except BaseException as error:  # report it in the parent
            queue.put({"error": repr(error)})

    process = ctx.Process(target=child)
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(f"{fn.__name__}{fn_args}: {result['error']}")
    return result


def summarize(out: dict) -> dict:
    """Medians over the timed steps of every round (robust to other jobs on a shared machine)."""
    import statistics

    steps = out["raw_steps"]
    step_s = statistics.median(s for s, _, _ in steps)
    rollout_s = statistics.median(r for _, r, _ in steps)
    update_s = statistics.median(s - r for s, r, _ in steps)
    tokens = sum(n for _, _, n in steps) / len(steps)
    out.update(s_per_step=step_s, rollout_s=rollout_s, update_s=update_s, completion_tokens_per_step=tokens,
               rollout_tok_s=tokens / max(rollout_s, 1e-9), train_tok_s=tokens / max(update_s, 1e-9),
               steps_timed=len(steps), s_per_step_min=min(s for s, _, _ in steps))
    return out


def _row(r: dict) -> str:
    mem = f"{r['peak_mb']:9.1f}"
    return (f"{r['framework']:<11} {r['method']:<22} {r['s_per_step']:8.3f} {r['rollout_s']:9.3f} "
            f"{r['rollout_tok_s']:11.1f} {r['train_tok_s']:11.1f} {mem}")


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's settings (also the ``args`` that ``run_dphrl`` / ``run_trl`` take)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=("tiny", "qwen2-0.5b-shape"), default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--quantization", choices=("4bit", "8bit"), default=None)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--reference-batch-size", type=int, default=16, help="DPH stored samples per step")
    parser.add_argument("--engine", default="auto", help="dphrl-mini rollout_engine")
    parser.add_argument("--threads", type=int, default=1, help="CPU: torch threads (both trainers)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every run")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-dph", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    path = model_path(args)
    import trl  # noqa: F401  imports before the memory windows: module loading is not the trainers' memory

    import dphrl_mini.trainer  # noqa: F401
    from trl import GRPOTrainer  # noqa: F401
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    print(f"settings: {settings}  torch threads={torch.get_num_threads()}  torch={torch.__version__}")

    plan = [(run_dphrl, path, "grpo", args.engine)]
    if args.engine != "plain":
        plan.append((run_dphrl, path, "grpo", "plain"))
    plan.append((run_dphrl, path, "grpo", args.engine, False))  # padded training forward
    if not args.skip_trl:
        plan.append((run_trl, path))
    if not args.skip_dph:
        plan += [(run_dphrl, path, "rkl", args.engine), (run_dphrl, path, "dph_js", args.engine)]
    results: list[dict] = []
    for round_index in range(args.rounds):  # interleaved rounds: slow phases of a shared machine hit all
        for i, (fn, *fn_args) in enumerate(plan):
            result = isolated(args, fn, *fn_args)
            if round_index == 0:
                results.append(result)
            else:
                results[i]["raw_steps"] += result["raw_steps"]
                results[i]["peak_mb"] = max(results[i]["peak_mb"], result["peak_mb"])
    results = [summarize(r) for r in results]
    mem = "GPU max_allocated MB" if args.device == "cuda" else "RSS rise MB"
    print(f"medians over {args.rounds} round(s) x {args.steps} timed steps")
    print(f"{'framework':<11} {'method':<22} {'s/step':>8} {'rollout_s':>9} {'rollout tok/s':>11} "
          f"{'train tok/s':>11} {mem}")
    for r in results:
        tags = f"  [engine={r['engine_resolved']}{'' if r['pack_sequences'] else ', padded'}]" if "engine_resolved" in r else ""
        print(_row(r) + tags)
    ours = results[0]
    ratios = {}
    by = {(r["framework"], r["method"], r.get("rollout_engine"), r.get("pack_sequences")): r for r in results}
    trl = next((r for r in results if r["framework"] == "trl"), None)
    if trl:
        ratios["trl_step_over_dphrl_step"] = trl["s_per_step"] / ours["s_per_step"]
        ratios["dphrl_rollout_tok_s_over_trl"] = ours["rollout_tok_s"] / trl["rollout_tok_s"]
        ratios["dphrl_train_tok_s_over_trl"] = ours["train_tok_s"] / trl["train_tok_s"]
        ratios["dphrl_peak_mem_over_trl"] = ours["peak_mb"] / max(trl["peak_mb"], 1e-9)
    plain, padded = by.get(("dphrl-mini", "grpo", "plain", True)), by.get(("dphrl-mini", "grpo", args.engine, False))
    if plain and plain is not ours:
        ratios["plain_engine_step_over_engine_step"] = plain["s_per_step"] / ours["s_per_step"]
        ratios["engine_rollout_tok_s_over_plain"] = ours["rollout_tok_s"] / plain["rollout_tok_s"]
    if padded:
        ratios["padded_update_s_over_packed_update_s"] = padded["update_s"] / ours["update_s"]
    rkl, dph = by.get(("dphrl-mini", "rkl", args.engine, True)), by.get(("dphrl-mini", "dph_js", args.engine, True))
    if rkl and dph:
        ratios["dph_js_step_over_rkl_step"] = dph["s_per_step"] / rkl["s_per_step"]
        ratios["dph_js_update_s_minus_rkl_update_s"] = dph["update_s"] - rkl["update_s"]
        ratios["dph_js_peak_mem_minus_rkl_mb"] = dph["peak_mb"] - rkl["peak_mb"]
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    report = {"settings": settings, "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "results": results, "ratios": ratios}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
