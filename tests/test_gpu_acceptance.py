"""benchmarks/gpu_acceptance.py without a GPU: every GPU step skips with one line, the table is written, exit 0."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_acceptance.py"
spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
gpu_acceptance = importlib.util.module_from_spec(spec)
sys.modules["gpu_acceptance"] = gpu_acceptance  # its dataclasses look their module up
spec.loader.exec_module(gpu_acceptance)


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a CPU run even on a machine with a GPU
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"),
                           "--workdir", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cpu_dry_run_skips_every_gpu_step_and_writes_the_table(tmp_path):
    run = _run(tmp_path, "--wheels", str(tmp_path / "no-wheels"))
    assert run.returncode == 0, run.stdout + run.stderr
    gpu_steps = [s.name for s in gpu_acceptance.STEPS if s.gpu]
    assert gpu_steps and len(gpu_steps) < len(gpu_acceptance.STEPS)
    for name in gpu_steps:
        assert run.stdout.count(f"[skip] {name}: no CUDA device\n") == 1, run.stdout
    report = json.loads((tmp_path / "out" / "gpu_acceptance.json").read_text())
    status = {r["step"]: r["status"] for r in report["rows"]}
    assert all(status[name] == "skipped" for name in gpu_steps)
    assert status["wheels"] in ("pass", "info")  # the CPU steps ran
    table = (tmp_path / "out" / "gpu_acceptance.md").read_text()
    assert "| step | check | value | target | status |" in table
    assert all(f"| {s.name} |" in table for s in gpu_acceptance.STEPS)


def test_a_failing_step_is_a_row_and_the_table_still_prints(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    run = _run(tmp_path, "--wheels", str(wheels), "--only", "wheels")
    assert run.returncode == 1, run.stdout + run.stderr
    rows = json.loads((tmp_path / "out" / "gpu_acceptance.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["error"] and "CalledProcessError" in rows[0]["value"]
    assert "| wheels | ran without error |" in run.stdout


def test_targets_are_marked_met_or_missed():
    row = gpu_acceptance.target_row
    assert row("s", "step ratio", 8.5, 8.0, at_least=True)["status"] == "met"
    assert row("s", "step ratio", 7.9, 8.0, at_least=True)["status"] == "missed"
    assert row("s", "memory ratio", 0.9, 1.0, at_least=False)["status"] == "met"
    assert row("s", "memory ratio", 1.1, 1.0, at_least=False)["status"] == "missed"
    assert row("s", "rollouts", 49_000, 50_000, at_least=True, unit="tok/s")["target"] == ">= 50,000 tok/s"
