"""Several processes (DDP, as under ``accelerate launch`` on GPUs): two CPU processes train the tiny model.

The main process pre-samples while the other waits and loads the split; only the main process
writes files; both run the same number of backward passes, so DDP's all-reduce never hangs; the
learning-rate schedule runs at the single-process pace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch_two_processes(out: Path, method: str) -> subprocess.CompletedProcess:
    args = ["--preset", "tiny-cpu", "--method", method, "--steps", "2", "--save-every", "1",
            "--train-size", "8", "--prompts-per-step", "4", "--num-generations", "2", "--max-new-tokens", "8",
            "--updates-per-step", "2", "--presample-k", "2", "--presample-threshold", "0",
            "--reference-batch-size", "4", "--eval-size", "2", "--ood-size", "2", "--eval-n", "2",
            "--eval-ks", "1", "2", "--splits", "test", "--no-progress", "--device", "cpu", "--lr", "1e-2",
            "--lr-schedule", "cosine", "--output-dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.x); torchrun starts
    # two, and Accelerator picks the process group up from its environment (gloo on CPU)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dphrl_mini.cli", "train", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_cpu_processes_train_and_write_once(tmp_path):
    out = tmp_path / "ddp"
    done = launch_two_processes(out, "dph_js")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("[train finished") == 2, "expected two processes to finish"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # written once, by the main process only
    # cosine over 2 steps x 2 updates: half-way after step 1 (not stepped once per process: 2x too fast)
    assert metrics[0]["lr"] == pytest.approx(0.5e-2) and metrics[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "presample.json").exists() and (out / "reference_store.pt").exists()
    assert (out / "checkpoint-000002" / "manifest.json").exists()
    import torch

    rngs = torch.load(out / "checkpoint-000002" / "state.pt", weights_only=False)["rng_per_process"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["generator"], rngs[1]["generator"])  # each rank resumes its own
    assert (out / "eval_test.json").exists()
    assert not list(out.glob(".*.tmp")), "a process left temporary files behind"


@pytest.mark.slow
def test_two_cpu_processes_measure_the_kl_share(tmp_path):
    """RKL's share needs two backward passes per forward, which DDP's all-reduce allows only once:
    they run without sync and the gradients are averaged once."""
    out = tmp_path / "ddp_rkl"
    done = launch_two_processes(out, "rkl")
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["kl_update_share"] <= 1 and 0 <= m["kl_grad_share"] <= 1 for m in metrics)
