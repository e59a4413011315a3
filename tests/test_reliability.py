"""What a long run survives: raising reward functions, non-finite losses, SIGKILL at any moment
(including inside a checkpoint save), bad configurations, out-of-memory, and a corrupt or foreign
reference store. Each failure is either absorbed and counted or stopped with a message that names
the knob to turn."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import dphrl_mini.trainer as trainer_module
from dphrl_mini import checkpoint as ckpt
from dphrl_mini.config import preset_config
from dphrl_mini.data import PresampleResult, ReferenceStore
from dphrl_mini.trainer import NonFiniteError, Trainer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TIMING = ("time_rollout", "time_update", "time_step", "rollout_tokens_per_s")
TINY = dict(steps=2, train_size=8, prompts_per_step=2, num_generations=4, max_new_tokens=10, eval_size=2,
            ood_size=2, eval_n=4, eval_ks=[1, 2, 4], presample_k=4, presample_threshold=0.0,
            reference_batch_size=4, progress=False, lr=1e-2, updates_per_step=2, device="cpu")


def tiny_config(tmp_path, **overrides):
    return preset_config("tiny-cpu", **{**TINY, "output_dir": str(tmp_path), **overrides})


def lora_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}


# --- (a) reward functions that raise ----------------------------------------------------------------
class FlakyReward:
    """Raises on the whole batch and on every third single completion; scores 1 otherwise."""

    def __init__(self):
        self.single_calls = 0
        self.expected_errors = 0

    def __call__(self, prompts, completions, **columns):
        if len(completions) > 1:
            self.expected_errors += -(-len(completions) // 3)  # the per-completion retries that will fail
            raise ZeroDivisionError("batch call fails")
        self.single_calls += 1
        if self.single_calls % 3 == 1:
            raise KeyError("bad completion")
        return [1.0]


def test_raising_reward_scores_zero_and_is_counted(tmp_path):
    flaky = FlakyReward()
    trainer = Trainer(tiny_config(tmp_path, method="grpo"), reward_fns=[flaky])
    history = trainer.train()
    assert len(history) == 2  # training went on
    errors = [m["reward_errors"] for m in history]
    assert sum(errors) == flaky.expected_errors > 0
    n = TINY["prompts_per_step"] * TINY["num_generations"]
    for m, e in zip(history, errors):  # failed completions score 0, the others 1
        assert m["reward_mean"] == pytest.approx((n - e) / n)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_errors"] for m in logged] == errors

    strict = Trainer(tiny_config(tmp_path / "strict", method="grpo", fail_fast=True), reward_fns=[FlakyReward()])
    with pytest.raises(ZeroDivisionError):
        strict.train()


# --- (b) non-finite losses ----------------------------------------------------------------------------
def test_nonfinite_updates_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    real = trainer_module.group_advantages
    calls = {"n": 0}

    def nan_on_second_step(rewards, group_size, **kw):
        calls["n"] += 1
        out = real(rewards, group_size, **kw)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(trainer_module, "group_advantages", nan_on_second_step)
    trainer = Trainer(tiny_config(tmp_path, method="dph_js", steps=3, max_nonfinite_steps=2))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.prepare_data()
    assert trainer.step()["skipped_updates"] == 0
    before, slot = lora_params(trainer), trainer.scheduler.last_epoch
    with pytest.warns(UserWarning, match="non-finite"):
        metrics = trainer.step()
    assert metrics["skipped_updates"] == trainer.config.updates_per_step
    assert trainer.scheduler.last_epoch == slot + trainer.config.updates_per_step  # the lr schedule is not stretched
    assert trainer.nonfinite_in_a_row == 1
    assert all(torch.equal(before[n], p) for n, p in lora_params(trainer).items()), "a skipped update moved weights"
    assert trainer.step()["skipped_updates"] == 0 and trainer.nonfinite_in_a_row == 0  # the count resets

    monkeypatch.setattr(trainer_module, "group_advantages",
                        lambda rewards, group_size, **kw: torch.full_like(rewards, float("nan")))
    trainer = Trainer(tiny_config(tmp_path / "stop", method="grpo", steps=10, max_nonfinite_steps=3))
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(NonFiniteError, match="3 steps in a row.*lr"):
        trainer.train()
    assert trainer.step_index == 3
    logged = [json.loads(x) for x in (tmp_path / "stop" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_updates"] for m in logged] == [TINY["updates_per_step"]] * 3  # skipped steps are logged


# --- (c) SIGKILL at random moments, resume until done ---------------------------------------------
SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from dphrl_mini.config import preset_config
    from dphrl_mini.trainer import Trainer
    cfg = preset_config("tiny-cpu", **json.loads(sys.argv[1]))
    trainer = Trainer(cfg, callbacks=[lambda m: print("STEP", m["step"], flush=True)])
    print("READY", flush=True)
    trainer.train()
    print("DONE", flush=True)
""")


def _launch(args: dict, env: dict, log: Path):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=open(log, "w"))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x.strip()) for x in proc.stdout], daemon=True).start()
    return proc, lines


def _wait_line(proc, lines, prefix: str, timeout: float = 120) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if lines.get(timeout=0.05).startswith(prefix):
                return True
        except queue.Empty:
            if proc.poll() is not None:
                return False
    raise AssertionError(f"no {prefix!r} line within {timeout} s")


def _run_dir_state(folder: Path) -> str:
    latest = ckpt.latest_checkpoint(folder)
    tmp = sorted(p.name for p in folder.glob(".checkpoint-*.tmp"))
    return f"latest={latest.name if latest else None} tmp={tmp}"


def _final_state(folder: Path):
    from safetensors.torch import load_file

    metrics = [{k: v for k, v in json.loads(x).items() if k not in TIMING}
               for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return metrics, load_file(folder / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_exact(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = dict(TINY, method="dph_js", steps=3, save_every=1)
    ref = tmp_path / "ref"  # the uninterrupted run, alongside the killed one
    reference, _ = _launch({**args, "output_dir": str(ref)}, env, tmp_path / "ref.log")

    run = tmp_path / "killed"
    slow_env = dict(env, DPHRL_TEST_SLOW_SAVE="0.2")  # three pauses per save: kills land inside saves
    rng = random.Random(20240611)
    modes = ["after-start", "mid-save", "after-step", "mid-save-late"]
    kills: list[str] = []
    finished = False
    for attempt, mode in enumerate(modes + ["none"]):
        debris_before = set(run.glob(".checkpoint-*.tmp"))
        proc, lines = _launch({**args, "output_dir": str(run)}, slow_env, tmp_path / f"attempt{attempt}.log")
        if mode == "none":  # plant a half-written checkpoint and a newer manifest-less folder first
            pass
        elif mode == "after-start":
            if _wait_line(proc, lines, "READY"):  # lands in pre-sampling or the first step
                time.sleep(rng.uniform(0.0, 2.0))
        elif mode == "after-step":
            if _wait_line(proc, lines, "STEP"):
                time.sleep(rng.uniform(0.0, 1.5))
        else:  # mid-save: wait for a temporary checkpoint folder, then kill inside the save
            if mode == "mid-save-late":  # let one save of this attempt complete first
                _wait_line(proc, lines, "STEP")
                if _wait_line(proc, lines, "STEP"):
                    debris_before = set(run.glob(".checkpoint-*.tmp"))
            end = time.monotonic() + 120
            while (not set(run.glob(".checkpoint-*.tmp")) - debris_before and proc.poll() is None
                   and time.monotonic() < end):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
        if mode != "none" and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            in_save = bool(set(run.glob(".checkpoint-*.tmp")) - debris_before)
            kills.append(f"{mode}: {'inside a save; ' if in_save else ''}{_run_dir_state(run)}")
        else:
            finished = proc.wait(timeout=300) == 0
            assert finished, (tmp_path / f"attempt{attempt}.log").read_text()[-3000:]
            break
        if attempt == len(modes) - 1:  # debris a kill can leave: must be ignored on resume
            debris = run / ".checkpoint-000002.abc123.tmp"
            debris.mkdir(exist_ok=True)
            (debris / "state.pt").write_bytes(b"half")
            fake = run / "checkpoint-000099"
            fake.mkdir(exist_ok=True)
            (fake / "state.pt").write_bytes(b"no manifest")
    print(f"\n{len(kills)} kill points:\n" + "\n".join(kills))
    assert finished and len(kills) >= 3
    assert any("inside a save" in k for k in kills), "no kill landed inside a checkpoint save"
    assert reference.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    ref_metrics, ref_adapter = _final_state(ref)
    got_metrics, got_adapter = _final_state(run)
    assert [m["step"] for m in got_metrics] == [1, 2, 3]
    assert got_metrics == ref_metrics
    assert ref_adapter.keys() == got_adapter.keys()
    for name in ref_adapter:
        assert torch.equal(ref_adapter[name], got_adapter[name]), name


def test_half_written_checkpoint_is_ignored_on_resume(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="grpo", steps=1, save_every=1))
    trainer.train()
    good = ckpt.latest_checkpoint(tmp_path)
    assert good is not None and good.name == "checkpoint-000001"
    # a save killed before its rename, and one whose manifest no longer matches its files
    debris = tmp_path / ".checkpoint-000002.xyz.tmp"
    (debris / "adapter").mkdir(parents=True)
    (debris / "state.pt").write_bytes(b"partial")
    ckpt.save_folder(tmp_path / "checkpoint-000003", lambda f: (f / "state.pt").write_bytes(b"x"))
    (tmp_path / "checkpoint-000003" / "state.pt").write_bytes(b"y")
    assert ckpt.latest_checkpoint(tmp_path) == good
    resumed = Trainer(tiny_config(tmp_path, method="grpo", steps=2, save_every=1))
    history = resumed.train()
    assert [m["step"] for m in history] == [1, 2]
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        resumed.load_checkpoint(tmp_path / "checkpoint-000003")


# --- (d) configuration and resource errors name the knob ------------------------------------------
@pytest.mark.parametrize("overrides,field", [
    (dict(method="ppo"), "method"), (dict(eta=-0.1), "eta"), (dict(eval_n=4, eval_ks=[1, 8]), "eval_ks"),
    (dict(num_generations=1), "num_generations"), (dict(alpha=1.0), "alpha"),
])
def test_invalid_config_names_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        tiny_config(tmp_path, **overrides).validate()


def test_four_bit_without_bitsandbytes(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ValueError, match="bitsandbytes"):
        tiny_config(tmp_path, quantization="4bit").validate()
    from dphrl_mini.models import quantization_config

    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        quantization_config("4bit", torch.float32)


def test_unknown_lora_target_modules():
    from dphrl_mini.models import load_policy

    with pytest.raises(ValueError, match="lora_target_modules.*no_such_proj.*q_proj"):
        load_policy("tiny", lora_target_modules=["q_proj", "no_such_proj"], device="cpu")


def test_out_of_memory_names_the_knobs(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path))

    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "_step", oom)
    with pytest.raises(RuntimeError, match="micro_batch_size") as info:
        trainer.step()
    assert isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)


# --- (e) the reference store: another model, or flipped bytes -------------------------------------
def _store(fingerprint="abc"):
    return ReferenceStore([[1, 5, 6]], [[7, 8, 2]], [[-0.5, -1.0, -0.1]], ["p0"], fingerprint, {"k": 4})


def test_store_fingerprint_mismatch_and_corruption(tmp_path):
    path = _store().save(tmp_path / "reference_store.pt")
    loaded = ReferenceStore.load(path, "abc")
    assert loaded.completion_ids == [[7, 8, 2]] and loaded.reference_logps == [[-0.5, -1.0, -0.1]]
    with pytest.raises(ValueError, match="another model or tokenizer.*presample"):
        ReferenceStore.load(path, "xyz")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt.*checksum"):
        ReferenceStore.load(path, "abc")


def test_trainer_refuses_a_foreign_presample(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="dph_js"))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    store = ReferenceStore([], [], [], [], "0123456789abcdef")
    PresampleResult({r["id"]: 0.0 for r in trainer.train_rows}, trainer.train_rows, [], store, 4, 0.0).save(tmp_path)
    with pytest.raises(ValueError, match="fingerprint 0123456789abcdef"):
        trainer.prepare_data()


# --- (f) no hangs, no silent non-learning, no silent drift, one run per folder ---------------------
@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when the guarded code runs past 60 s."""
    def timeout(*_):
        raise TimeoutError("hung for 60 s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_empty_dataset_stops_at_once(tmp_path, no_hang):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    with pytest.raises(ValueError, match="training dataset .*empty.jsonl \\(train\\) has 0 usable prompts"):
        Trainer(tiny_config(tmp_path / "run", task="math", task_source=str(data), method="grpo")).train()


def always_raises(prompts, completions, **_):
    return [1 / 0 for _ in completions]


def always_text(prompts, completions, **_):
    return ["1"] * len(completions)


@pytest.mark.parametrize("reward,first_error", [(always_raises, "ZeroDivisionError: division by zero"),
                                                (always_text, "RewardError: reward '1' is not a number")])
def test_a_reward_that_always_fails_stops_the_run(tmp_path, reward, first_error):
    trainer = Trainer(tiny_config(tmp_path, method="grpo", steps=6), reward_fns=[reward])
    with pytest.raises(ValueError, match=f"reward function `{reward.__name__}` failed on every completion for 3 steps "
                                         f"in a row .*first error: {first_error}"):
        trainer.train()
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3]  # the failing steps are logged, then the run stops


def test_resume_refuses_another_config_and_overwrite_starts_fresh(tmp_path):
    Trainer(tiny_config(tmp_path, method="grpo", steps=2, save_every=1)).train()
    saved = (tmp_path / "config.yaml").read_text()
    changed = Trainer(tiny_config(tmp_path, method="dapo", steps=3, lr=1e-3, lora_rank=4, save_every=1))
    with pytest.raises(ValueError, match="another config.*lora_rank: 16 -> 4; method: 'grpo' -> 'dapo'; "
                                         "lr: 0.01 -> 0.001.*another output_dir or pass --overwrite"):
        changed.train()
    with pytest.raises(ValueError, match="steps: 2 -> 1 \\(fewer steps\\)"):
        Trainer(tiny_config(tmp_path, method="grpo", steps=1)).train()
    assert (tmp_path / "config.yaml").read_text() == saved
    extended = Trainer(tiny_config(tmp_path, method="grpo", steps=3, save_every=1, eval_n=2, eval_ks=[1, 2]))
    with pytest.warns(UserWarning, match="changed settings: steps: 2 -> 3; eval_n: 4 -> 2; eval_ks"):
        history = extended.train()
    assert [m["step"] for m in history] == [1, 2, 3]
    fresh = Trainer(tiny_config(tmp_path, method="dapo", steps=1, overwrite=True))
    with pytest.warns(UserWarning, match="overwrite=True: deleted .*checkpoint-000003.*metrics.jsonl"):
        assert [m["step"] for m in fresh.train()] == [1]
    assert "method: dapo" in (tmp_path / "config.yaml").read_text()
    assert [p.name for p in ckpt.checkpoint_folders(tmp_path)] == ["checkpoint-000001"]


def test_a_run_owns_its_folder(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (tmp_path / ckpt.LOCK).write_text(json.dumps({"pid": other.pid, "host": __import__("socket").gethostname()}))
            with pytest.raises(ValueError, match=f"in use by another run \\(pid {other.pid}"):
                Trainer(tiny_config(tmp_path, method="grpo", steps=1)).train()
            assert not (tmp_path / "metrics.jsonl").exists()
        finally:
            other.kill()
    with pytest.warns(UserWarning, match="taking over the lock"):  # its process is gone now
        Trainer(tiny_config(tmp_path, method="grpo", steps=1)).train()
    assert not (tmp_path / ckpt.LOCK).exists()  # released at the end


def test_periodic_evals_are_logged_once_after_a_resume(tmp_path):
    config = tiny_config(tmp_path, method="grpo", steps=4, save_every=2, eval_every=1)
    Trainer(config).train()
    evals = [json.loads(x)["step"] for x in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert evals == [1, 2, 3]
    ckpt._delete(tmp_path / "checkpoint-000004")  # as if killed after step 3's evaluation
    Trainer(config).train()
    evals = [json.loads(x)["step"] for x in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert evals == [1, 2, 3]
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_corrupt_presample_files_say_which_and_how_to_rebuild(tmp_path):
    Trainer(tiny_config(tmp_path, method="dph_js", steps=1)).train()
    rows = Trainer(tiny_config(tmp_path / "x")).train_rows
    store = tmp_path / "reference_store.pt"
    store.write_bytes(store.read_bytes()[:50])  # truncated, and its sidecar gone
    (tmp_path / "reference_store.pt.sha256").unlink()
    with pytest.raises(ValueError, match="reference_store.pt is corrupt \\(its checksum file .* is missing\\); "
                                         "re-run presample"):
        PresampleResult.load(tmp_path, rows)
    split = tmp_path / "presample.json"
    split.write_text(split.read_text()[:40])
    with pytest.raises(ValueError, match="presample.json is corrupt \\(not valid JSON.*re-run presample"):
        PresampleResult.load(tmp_path, rows)


def test_bad_rows_and_output_dir_are_one_line_errors(tmp_path, monkeypatch):
    from dphrl_mini.tasks import countdown

    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="`output_dir`=.*a_file' is a file"):
        Trainer(tiny_config(tmp_path / "a_file", method="grpo")).train()
    real = countdown.make_dataset
    for change, message in [(dict(target=float("inf")), "row 1: field `target`=inf must be an integer"),
                            (dict(target=2.5), "row 1: field `target`=2.5 must be an integer"),
                            (dict(prompt=None), "row 1: field `prompt`=None must be a non-empty string"),
                            (dict(prompt=3), "row 1: field `prompt`=3 must be a non-empty string")]:
        monkeypatch.setattr(countdown, "make_dataset",
                            lambda split, n, seed=0: [row if i != 1 else {**row, **change}
                                                      for i, row in enumerate(real(split, n, seed))])
        with pytest.raises(ValueError, match=f"built-in countdown train split {message}"):
            Trainer(tiny_config(tmp_path / "run"))
    monkeypatch.setattr(countdown, "make_dataset", lambda split, n, seed=0: [{"id": "x", "numbers": [1], "target": 1}])
    with pytest.raises(ValueError, match="row 0: field `prompt` is missing"):
        Trainer(tiny_config(tmp_path / "run"))


def test_nonfinite_weights_are_never_checkpointed_nor_resumed(tmp_path):
    from safetensors.torch import load_file, save_file

    trainer = Trainer(tiny_config(tmp_path, method="grpo", steps=2, save_every=1))
    trainer.train()
    with torch.no_grad():
        next(p for p in trainer.policy.parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN or inf.*no checkpoint written, the last good one "
                                             "\\(checkpoint-000002\\) is kept"):
        trainer.save_checkpoint()
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["checkpoint-000001", "checkpoint-000002"]
    # a NaN checkpoint written by an older version: skipped, with the reason, on resume
    adapter = tmp_path / "checkpoint-000002" / "adapter" / "adapter_model.safetensors"
    weights = load_file(adapter)
    save_file({k: v * float("nan") for k, v in weights.items()}, adapter)
    ckpt.write_manifest(tmp_path / "checkpoint-000002")
    resumed = Trainer(tiny_config(tmp_path, method="grpo", steps=2, save_every=1))
    with pytest.warns(UserWarning, match="resuming from checkpoint-000001 at step 1; skipped checkpoint-000002 "
                                         "because its adapter weights are NaN or inf"):
        assert [m["step"] for m in resumed.train()] == [1, 2]
    for name in ckpt.checkpoints(tmp_path):
        assert all(torch.isfinite(t).all() for t in load_file(name / "adapter" / "adapter_model.safetensors").values())


def test_resume_says_which_checkpoint_it_skipped(tmp_path):
    Trainer(tiny_config(tmp_path, method="grpo", steps=1, save_every=1)).train()
    (tmp_path / "checkpoint-000001" / "state.pt").write_bytes(b"flipped")
    with pytest.warns(UserWarning, match="no usable checkpoint .*starting again from step 0; skipped "
                                         "checkpoint-000001 because state.pt does not match its checksum"):
        Trainer(tiny_config(tmp_path, method="grpo", steps=1, save_every=1)).train()
