"""GPU acceptance in one script: every CUDA path, the speed targets and notebook 06, in one go.

    python benchmarks/gpu_acceptance.py --out gpu_acceptance        # or: make gpu-check

Made for a short GPU loan with no network: no thinking on the machine, one table at the end
(printed, and written as ``gpu_acceptance.json`` / ``gpu_acceptance.md`` into ``--out``). Steps:

1. ``wheels``: install the wheels carried in ``.whl/`` (``../shared/gpu/fetch-wheels.sh``) into a
   private folder, then check that the modules the steps need import (bitsandbytes, trl, ...).
2. ``local_model``: a Qwen2.5-0.5B-shaped model (random weights, tied embeddings, GQA) with a
   byte-level BPE tokenizer and chat template, built here (``dphrl_mini.local_models``).
3. ``gpu_tests``: every pytest test marked ``gpu``.
4. ``sampler``: "static", "merged" and "plain" rollouts give identical greedy tokens, and each
   one's sampled log-probs match the training forward within the CPU tests' tolerance (fp32).
5. ``speed_bf16`` / ``speed_nf4``: dphrl-mini ("static" and "merged") against TRL's GRPOTrainer
   in one process (``bench_trl.py``'s runs): LoRA r16, 64 completions x 256 tokens; s/step and
   peak memory, targets as ratios. ``speed_bf16`` also times the padded update against the packed
   one (``packed_vs_padded`` rows). ``rollout_b256``: rollout tokens/s at batch 256 x 256.
6. ``notebook06_nf4`` / ``notebook06_fp16``: notebook 06's real-model branch in small settings on
   the local model and the local GSM8K-style sample, in 4-bit, then the float16 path a GPU
   without bf16 takes. A cell added after the parameters cell sets the local data source.

Each step runs in its own process with its own time budget (and a global one, 10 minutes by
default): a failure, a crash or a hang costs that step only, and the table still prints. Rows
are written as they come, so a step cut off by its budget keeps what it measured. Without CUDA
every GPU step is skipped with one line and the script exits 0; the exit status is 1 when a
check failed or a step errored or ran out of time (a missed speed target is a result, not an error).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]

NEEDED_MODULES = ("bitsandbytes", "trl", "datasets", "peft", "accelerate", "nbclient", "nbformat", "ipykernel")
PROMPTS = ["3 5 7 -> 22:", "12 4 -> 3:", "1 2 3 4 -> 10:", "Ana has 12 apples and buys 3 bags of 4."]
LOGP_ATOL = 1e-4  # tests/test_engine.py's fp32 tolerance for sampled vs training-forward log-probs
GSM8K_SAMPLE = REPO / "dphrl_mini" / "tasks" / "data" / "gsm8k_sample.jsonl"
NOTEBOOK_06 = REPO / "notebooks" / "06_one_gpu_qlora.ipynb"
FAILED = ("fail", "error", "timeout")

Row = dict


def row(step: str, check: str, value: str, status: str, target: str = "", number: float | None = None) -> Row:
    """One table line; ``status``: pass/fail (checks), met/missed (targets), info, skipped, error, timeout."""
    return {"step": step, "check": check, "value": value, "target": target, "status": status, "number": number}


def target_row(step: str, check: str, value: float, limit: float, at_least: bool, unit: str = "x") -> Row:
    """A measured value against its target: met when ``value >= limit`` (``at_least``) or ``<= limit``."""
    met = value >= limit if at_least else value <= limit
    fmt = (lambda v: f"{v:,.0f} {unit}") if unit == "tok/s" else (lambda v: f"{v:.2f}{unit}")
    return row(step, check, fmt(value), "met" if met else "missed", f"{'>=' if at_least else '<='} {fmt(limit)}", value)


# --- steps (each runs in a child process; yields rows as soon as it has them) ---------------------
def step_wheels(ctx: "Context") -> Iterator[Row]:
    wheels = sorted(ctx.wheels.glob("*.whl")) if ctx.wheels.is_dir() else []
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(ctx.site), *map(str, wheels)], check=True)
        importlib.invalidate_caches()
        yield row("wheels", "install", f"{len(wheels)} wheels from {ctx.wheels.name}/", "pass")
    else:
        yield row("wheels", "install", f"no wheels in {ctx.wheels}", "info")
    broken = []
    for name in NEEDED_MODULES:  # with CUDA: imported (bitsandbytes loads its CUDA library); else: found
        try:
            if not ctx.cuda and importlib.util.find_spec(name) is None:
                raise ImportError(name)
            if ctx.cuda:
                importlib.import_module(name)
        except Exception as error:  # noqa: BLE001  ImportError, or a library that fails to load
            broken.append(f"{name} ({type(error).__name__})")
    status = "pass" if not broken else "fail" if ctx.cuda else "info"  # only the GPU steps need them
    yield row("wheels", "modules the steps import",
              f"cannot import: {', '.join(broken)}" if broken else ", ".join(NEEDED_MODULES), status)


def step_local_model(ctx: "Context") -> Iterator[Row]:
    from dphrl_mini.local_models import build_local_model

    t = time.perf_counter()
    build_local_model(ctx.model_dir, arch="qwen2", shape="qwen2.5-0.5b", seed=0)
    yield row("local_model", "build Qwen2.5-0.5B shape (random weights, local BPE)",
              f"{time.perf_counter() - t:.1f} s", "pass")


def step_gpu_tests(ctx: "Context") -> Iterator[Row]:
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"],
                         cwd=REPO, capture_output=True, text=True)
    print(run.stdout[-4000:], run.stderr[-2000:], sep="\n")
    lines = [line.strip("= ") for line in run.stdout.splitlines() if line.strip()]
    summary = "no test is marked gpu" if run.returncode == 5 else lines[-1] if lines else f"exit {run.returncode}"
    yield row("gpu_tests", "pytest -m gpu", summary, "pass" if run.returncode == 0 else "fail")


def step_sampler(ctx: "Context") -> Iterator[Row]:
    import torch

    from dphrl_mini.engine import RolloutEngine
    from dphrl_mini.models import load_policy
    from dphrl_mini.rollout import generate, sequence_logps

    torch.manual_seed(0)
    model, tok = load_policy(str(ctx.model_dir), lora_rank=16, dtype="float32", device="cuda")
    with torch.no_grad():  # non-zero LoRA B: the merged copy must add the adapters
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    samplers = {"plain": lambda **kw: generate(model, tok, PROMPTS, **kw)}
    for mode in ("merged", "static"):
        engine = RolloutEngine(model, mode)
        assert engine.mode == mode, f"rollout_engine={mode!r} resolved to {engine.mode!r}"
        samplers[mode] = lambda engine=engine, **kw: engine.generate(tok, PROMPTS, **kw)
    greedy = {name: fn(max_new_tokens=32, greedy=True).completion_ids for name, fn in samplers.items()}
    for name in ("merged", "static"):
        same = greedy[name].shape == greedy["plain"].shape and torch.equal(greedy[name], greedy["plain"])
        yield row("sampler", f"greedy tokens {name} == plain", "identical" if same else "differ",
                  "pass" if same else "fail")
    for name, fn in samplers.items():
        out = fn(num_generations=4, max_new_tokens=32, generator=torch.Generator("cuda").manual_seed(0))
        with torch.no_grad():
            rescored = sequence_logps(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
        diff = float((out.logps - rescored.float()).abs().max())
        yield row("sampler", f"sampled log-probs {name} vs training forward (fp32)", f"max |diff| {diff:.2e}",
                  "pass" if diff <= LOGP_ATOL else "fail", f"<= {LOGP_ATOL:.0e}", diff)


def _bench_args(warmup: int, steps: int, *extra: str):
    """``bench_trl.py``'s settings for one run: 64 completions x 256 tokens on CUDA, LoRA r16."""
    import bench_trl

    return bench_trl.parse_args(["--device", "cuda", "--G", "8", "--prompts", "8", "--max-new-tokens", "256",
                                 "--rounds", "1", "--warmup", str(warmup), "--steps", str(steps), *extra])


def _measure(args, fn, *fn_args) -> dict:
    import bench_trl

    return bench_trl.summarize(bench_trl.isolated(args, fn, *fn_args))


def _run_rows(step: str, label: str, r: dict) -> Iterator[Row]:
    yield row(step, f"{label} s/step", f"{r['s_per_step']:.2f} s", "info", number=r["s_per_step"])
    yield row(step, f"{label} rollout tok/s (B=64)", f"{r['rollout_tok_s']:,.0f}", "info", number=r["rollout_tok_s"])
    yield row(step, f"{label} peak memory", f"{r['peak_mb']:,.0f} MB", "info", number=r["peak_mb"])


def _speed(ctx: "Context", step: str, quantization: tuple[str, ...], step_target: float) -> Iterator[Row]:
    """TRL, then dphrl-mini "merged" and "static", in this one process. TRL first and "static" last:
    a slow or stuck CUDA-graph compile cannot cost the other measurements. One warm-up step
    each, two for "static" (its first rollouts compile the decode step and record the graphs)."""
    from bench_trl import run_dphrl, run_trl

    path = str(ctx.model_dir)
    trl = _measure(_bench_args(1, 2, *quantization), run_trl, path)
    yield from _run_rows(step, "TRL GRPOTrainer", trl)
    for engine, warmup in (("merged", 1), ("static", 2)):
        args = _bench_args(warmup, 2, *quantization)
        ours = _measure(args, run_dphrl, path, "grpo", engine)
        yield from _run_rows(step, f"dphrl-mini [{ours['engine_resolved']}]", ours)
        yield target_row(step, f"step time TRL / dphrl-mini [{engine}]", trl["s_per_step"] / ours["s_per_step"],
                         step_target, at_least=True)
        yield target_row(step, f"peak memory dphrl-mini [{engine}] / TRL", ours["peak_mb"] / trl["peak_mb"],
                         1.0, at_least=False)
        if engine == "merged" and not quantization:
            padded = _measure(args, run_dphrl, path, "grpo", engine, False)
            yield row("packed_vs_padded", "update s: packed / padded (64 x 256 tokens, bf16)",
                      f"{ours['update_s']:.3f} s / {padded['update_s']:.3f} s", "info",
                      number=padded["update_s"] / ours["update_s"])


def step_speed_bf16(ctx: "Context") -> Iterator[Row]:
    yield from _speed(ctx, "speed_bf16", (), step_target=8.0)


def step_speed_nf4(ctx: "Context") -> Iterator[Row]:
    yield from _speed(ctx, "speed_nf4", ("--quantization", "4bit"), step_target=3.0)


def step_rollout_b256(ctx: "Context") -> Iterator[Row]:
    """Rollouts alone (no update: its 256 x 256 x 151,936 logits are not what is measured), bf16, LoRA r16."""
    import torch
    from bench_trl import countdown_rows

    from dphrl_mini.engine import RolloutEngine
    from dphrl_mini.models import load_policy

    model, tok = load_policy(str(ctx.model_dir), lora_rank=16, device="cuda")
    prompts = [r["prompt"] for r in countdown_rows(16)[1]]
    for mode in ("merged", "static"):
        engine = RolloutEngine(model, mode)
        kwargs = dict(num_generations=16, max_new_tokens=256, generator=torch.Generator("cuda").manual_seed(0))
        engine.generate(tok, prompts, **kwargs)  # warm-up: the merged copy, the compiled step, the graphs
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = engine.generate(tok, prompts, **kwargs)
        torch.cuda.synchronize()
        tok_s = float(out.completion_mask.sum()) / (time.perf_counter() - t)
        yield target_row("rollout_b256", f"rollout tok/s [{engine.mode}], B={out.completion_mask.shape[0]} x 256",
                         tok_s, 50_000, at_least=True, unit="tok/s")


def run_notebook(path: Path, model_dir: Path, overrides: dict, workdir: Path, timeout: int) -> str:
    """Execute ``path`` with ``RUN.update(overrides)`` after its parameters cell, in small settings
    (``DPHRL_SMALL=1``) on ``model_dir``; returns the text the cells printed."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    parameters = next(i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and "RUN = " in cell.source)
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(f"RUN.update({overrides!r})  # gpu_acceptance"))
    os.environ.update(DPHRL_SMALL="1", DPHRL_MODEL=str(model_dir), MPLBACKEND="Agg")
    workdir.mkdir(parents=True, exist_ok=True)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []))


def _notebook06(ctx: "Context", step: str, dtype: str) -> Iterator[Row]:
    overrides = {"task_source": str(GSM8K_SAMPLE), "max_new_tokens": 64, "dtype": dtype}
    text = run_notebook(NOTEBOOK_06, ctx.model_dir, overrides, ctx.workdir / step, ctx.budget_s)
    print(text[-3000:])
    real = "Real model:" in text and "FELL BACK" not in text
    yield row(step, f"notebook 06 real branch, 4-bit, {dtype}, local GSM8K sample",
              "ran on the real branch" if real else "fell back to the tiny CPU model", "pass" if real else "fail")


def step_notebook06_nf4(ctx: "Context") -> Iterator[Row]:
    yield from _notebook06(ctx, "notebook06_nf4", "bfloat16")


def step_notebook06_fp16(ctx: "Context") -> Iterator[Row]:
    yield from _notebook06(ctx, "notebook06_fp16", "float16")


@dataclass
class Step:
    name: str
    budget_s: int
    run: Callable[["Context"], Iterator[Row]]
    gpu: bool = True
    """skipped without CUDA"""
    needs_model: bool = True
    """skipped when the local model could not be built"""


STEPS = [  # budgets in seconds: together the default global budget of 10 minutes
    Step("wheels", 30, step_wheels, gpu=False, needs_model=False),
    Step("local_model", 30, step_local_model, needs_model=False),
    Step("gpu_tests", 50, step_gpu_tests, needs_model=False),
    Step("sampler", 60, step_sampler),
    Step("speed_bf16", 150, step_speed_bf16),
    Step("speed_nf4", 110, step_speed_nf4),
    Step("rollout_b256", 70, step_rollout_b256),
    Step("notebook06_nf4", 55, step_notebook06_nf4),
    Step("notebook06_fp16", 45, step_notebook06_fp16),
]
BY_NAME = {s.name: s for s in STEPS}


@dataclass
class Context:
    """What every step process knows: folders, whether CUDA is there, its own budget."""
    workdir: Path
    wheels: Path
    cuda: bool
    budget_s: int = 0

    @property
    def site(self) -> Path:  # carried wheels are installed here, on every step's PYTHONPATH
        return self.workdir / "site"

    @property
    def model_dir(self) -> Path:
        return self.workdir / "local-qwen2.5-0.5b"


# --- the runner -----------------------------------------------------------------------------------
def child_main(name: str, ctx: Context, result: Path) -> None:
    """Run one step, rewriting ``result`` after every row; an exception becomes an error row."""
    rows: list[Row] = []

    def write():
        result.write_text(json.dumps(rows))

    write()
    try:
        for r in BY_NAME[name].run(ctx):
            rows.append(r)
            print(f"  {r['step']}: {r['check']}: {r['value']} [{r['status']}]", flush=True)
            write()
    except Exception as error:  # noqa: BLE001  one step's failure must not stop the table
        traceback.print_exc()
        message = (str(error).splitlines() or [""])[0][:200]
        rows.append(row(name, "ran without error", f"{type(error).__name__}: {message}", "error"))
        write()


def run_step(step: Step, ctx: Context, budget_s: int) -> list[Row]:
    """``step`` in a child process (own session, killed with its children after ``budget_s``)."""
    result = ctx.workdir / f"rows-{step.name}.json"
    command = [sys.executable, __file__, "--child", step.name, "--workdir", str(ctx.workdir), "--wheels",
               str(ctx.wheels), "--result", str(result), "--budget-s", str(budget_s), "--cuda", str(int(ctx.cuda))]
    process = subprocess.Popen(command, start_new_session=True)
    try:
        code = process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = None
    rows = json.loads(result.read_text()) if result.exists() else []
    if code is None:
        rows.append(row(step.name, "finished within its budget", f"stopped after {budget_s} s", "timeout"))
    elif code != 0 and not any(r["status"] == "error" for r in rows):
        rows.append(row(step.name, "ran without error", f"process exit status {code}", "error"))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| step | check | value | target | status |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['check']} | {r['value']} | {r['target']} | {r['status']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_acceptance",
                        help="folder for gpu_acceptance.json and gpu_acceptance.md")
    parser.add_argument("--budget-s", type=int, default=600, help="time for all steps together")
    parser.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="folder of carried wheels")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cuda", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # dphrl_mini and bench_trl, from any folder
    if args.child:  # one step, in the process run_step started
        child_main(args.child, Context(args.workdir, args.wheels, bool(args.cuda), args.budget_s), args.result)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="gpu-acceptance-"))).resolve()
    ctx = Context(workdir=workdir, wheels=args.wheels.resolve(), cuda=cuda, budget_s=args.budget_s)
    only = args.only.split(",") if args.only else [s.name for s in STEPS]
    unknown = sorted(set(only) - set(BY_NAME))
    if unknown:
        parser.error(f"--only: unknown step(s) {unknown}; steps are {list(BY_NAME)}")
    ctx.site.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(ctx.site), os.environ.get("PYTHONPATH", "")])
    device = torch.cuda.get_device_name() if cuda else "no CUDA device"
    print(f"gpu_acceptance: {device}, torch {torch.__version__}, budget {args.budget_s} s, scratch {workdir}")
    start, rows = time.perf_counter(), []
    for step in (s for s in STEPS if s.name in only):
        left = int(args.budget_s - (time.perf_counter() - start))
        reason = ("no CUDA device" if step.gpu and not cuda else
                  "no local model (the local_model step did not build it)" if step.needs_model
                  and not (ctx.model_dir / "config.json").exists() else
                  f"the global budget ({args.budget_s} s) is spent" if left < 10 else None)
        if reason:
            print(f"[skip] {step.name}: {reason}")
            rows.append(row(step.name, "-", reason, "skipped"))
            continue
        print(f"[run ] {step.name} (budget {min(step.budget_s, left)} s)", flush=True)
        t = time.perf_counter()
        step_rows = run_step(step, ctx, min(step.budget_s, left))
        print(f"[done] {step.name} in {time.perf_counter() - t:.0f} s")
        rows += step_rows
    table = markdown_table(rows)
    report = {"device": device, "torch": torch.__version__, "budget_s": args.budget_s,
              "elapsed_s": time.perf_counter() - start, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_acceptance.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_acceptance.md").write_text(f"GPU acceptance on {device} (torch {torch.__version__})\n\n{table}")
    print(f"\n{table}\nwritten: {args.out / 'gpu_acceptance.json'}, {args.out / 'gpu_acceptance.md'}")
    return 1 if any(r["status"] in FAILED for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
