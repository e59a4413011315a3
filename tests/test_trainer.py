"""The RL trainer on the built-in tiny model: every method updates every LoRA weight, the DPH term
acts alone when advantages vanish, the reference store round-trips, resume is exact, 4-bit trains,
and the CLI runs end to end. Tiny settings throughout (a few seconds per test on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from dphrl_mini.config import preset_config
from dphrl_mini.data import PresampleResult, ReferenceStore
from dphrl_mini.trainer import Trainer

torch.set_num_threads(1)

TIMING = ("time_rollout", "time_update", "time_step", "rollout_tokens_per_s")


def tiny_config(tmp_path, **overrides):
    values = dict(steps=2, train_size=16, prompts_per_step=4, num_generations=4, max_new_tokens=12,
                  eval_size=4, ood_size=4, eval_n=4, eval_ks=[1, 2, 4], presample_k=4,
                  presample_threshold=0.25, reference_batch_size=8, output_dir=str(tmp_path),
                  progress=False, lr=1e-2, updates_per_step=2, device="cpu")
    values.update(overrides)
    return preset_config("tiny-cpu", **values)


def hand_made_store(trainer: Trainer, n: int = 4) -> ReferenceStore:
    """A non-empty store: each row's prompt with one correct-looking answer, arbitrary ref log-probs."""
    tok = trainer.tokenizer
    prompt_ids, completion_ids, logps, ids = [], [], [], []
    for row in trainer.train_rows[:n]:
        a, b, c = row["numbers"][:3]
        completion = tok(f"{a}+{b}+{c}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt_ids.append(tok(row["prompt"])["input_ids"])
        completion_ids.append(completion)
        logps.append([-1.5] * len(completion))
        ids.append(row["id"])
    return ReferenceStore(prompt_ids, completion_ids, logps, ids, trainer.fingerprint)


def force_store(trainer: Trainer) -> None:
    store = hand_made_store(trainer)
    trainer.presampled = PresampleResult({r["id"]: 0.0 for r in trainer.train_rows}, trainer.train_rows, [],
                                         store, k=4, threshold=0.25)


def alternating_reward(prompts, completions, **kw):
    """Rewards 0,1,0,1,... so that every group of completions has non-zero advantages."""
    return [float(i % 2) for i in range(len(completions))]


def lora_params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}


VARIANTS = [("grpo", False), ("dapo", False), ("rkl", False), ("dph_forward_kl", False), ("dph_js", False),
            ("dph_alpha", False), ("rkl", True)]


@pytest.mark.parametrize("method,mara", VARIANTS, ids=[m + ("+mara" if x else "") for m, x in VARIANTS])
def test_every_method_updates_every_lora_weight(tmp_path, method, mara):
    trainer = Trainer(tiny_config(tmp_path, method=method, mara=mara, steps=1), reward_fns=[alternating_reward])
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    if trainer.config.dph_divergence():
        force_store(trainer)
    before = lora_params(trainer)
    assert before and all(".lora_" in n for n in before)
    metrics = trainer.step()  # two optimizer updates: B moves first, then A (LoRA B starts at 0)
    assert metrics["skipped_updates"] == 0
    for key in ("pg_loss", "kl", "dph_loss", "grad_norm", "entropy"):
        assert np.isfinite(metrics[key]), key
    if trainer.config.dph_divergence():
        assert metrics["dph_loss"] != 0.0
    if method == "rkl":
        assert trainer.config.needs_reference_model()
    after = lora_params(trainer)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"{method}: {len(unchanged)}/{len(before)} LoRA tensors did not move, e.g. {unchanged[:3]}"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 1


def constant_reward(prompts, completions, **kw):
    return [1.0] * len(completions)


@pytest.mark.parametrize("method", ["grpo", "dph_js"])
def test_zero_advantages_only_the_dph_term_moves_weights(tmp_path, method):
    trainer = Trainer(tiny_config(tmp_path, method=method, steps=1), reward_fns=[constant_reward])
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    if method == "dph_js":
        force_store(trainer)
    before = lora_params(trainer)
    metrics = trainer.step()
    after = lora_params(trainer)
    assert metrics["reward_std"] == 0.0 and metrics["pg_loss"] == 0.0
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    if method == "grpo":
        assert moved == [], "zero advantages and no DPH term must leave the weights untouched"
    else:
        assert len(moved) == len(before), "the DPH term alone must move every LoRA tensor"


@pytest.mark.parametrize("method", ["grpo", "dph_js"])
def test_train_on_learnable_drops_never_solved_prompts(tmp_path, method):
    trainer = Trainer(tiny_config(tmp_path, method=method, train_on="learnable", train_size=24, presample_k=8))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.prepare_data()
    rates = trainer.presampled.pass_rates
    expected = [r["id"] for r in trainer.train_rows if rates[r["id"]] > 0
                and (method == "grpo" or rates[r["id"]] < trainer.config.presample_threshold)]
    assert 0 < len(expected) < len(trainer.train_rows), "the fixture must have solved and unsolved prompts"
    assert [r["id"] for r in trainer.pool] == expected


def test_presample_store_round_trip_and_fingerprint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, method="dph_js", presample_threshold=0.0))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.prepare_data()
    result = trainer.presampled
    solved = [i for i, rate in result.pass_rates.items() if rate > 0]  # threshold 0: one ref per solved prompt
    assert sorted(result.store.row_ids) == sorted(solved) and len(result.pass_rates) == len(trainer.train_rows)
    loaded = PresampleResult.load(tmp_path, trainer.train_rows, trainer.fingerprint)
    assert loaded.store.row_ids == result.store.row_ids
    assert loaded.store.completion_ids == result.store.completion_ids
    assert loaded.store.prompt_ids == result.store.prompt_ids
    assert loaded.store.reference_logps == result.store.reference_logps
    assert [r["id"] for r in loaded.exploration] == [r["id"] for r in result.exploration]
    assert loaded.pass_rates == result.pass_rates
    with pytest.raises(ValueError, match="another model or tokenizer.*presample"):
        PresampleResult.load(tmp_path, trainer.train_rows, "0" * 16)
    # the store's log-probs are those the trainer computes for pi_ref at the same tokens
    if len(loaded.store):
        from dphrl_mini.models import reference_mode
        from dphrl_mini.rollout import sequence_logps

        batch = loaded.store.batch([0], trainer.tokenizer.pad_token_id)
        with reference_mode(trainer.policy), torch.no_grad():
            logps = sequence_logps(trainer.policy, batch["prompt_ids"], batch["prompt_mask"],
                                   batch["completion_ids"], batch["completion_mask"])
        torch.testing.assert_close(logps * batch["completion_mask"], batch["reference_logps"], atol=1e-5, rtol=0)


def _strip(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_resume_matches_uninterrupted_run(tmp_path):
    kw = dict(method="dph_js", presample_threshold=0.0, save_every=2, train_size=8, prompts_per_step=2)
    full = Trainer(tiny_config(tmp_path / "full", steps=4, **kw))
    full.train()
    part = Trainer(tiny_config(tmp_path / "part", steps=2, **kw))
    part.train()
    resumed = Trainer(tiny_config(tmp_path / "part", steps=4, **kw))
    resumed.train()
    assert _strip(resumed.history) == _strip(full.history)
    assert [m["step"] for m in resumed.history] == [1, 2, 3, 4]
    lines = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert _strip(lines) == _strip(full.history)
    a, b = lora_params(full), lora_params(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    assert (tmp_path / "part" / "adapter" / "adapter_model.safetensors").exists()


def test_four_bit_step_updates_lora(tmp_path):
    pytest.importorskip("bitsandbytes")
    trainer = Trainer(tiny_config(tmp_path, quantization="4bit", steps=1, method="dph_js"))
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    force_store(trainer)
    assert any("Linear4bit" in type(m).__name__ for m in trainer.policy.modules())
    before = lora_params(trainer)
    metrics = trainer.step()
    assert np.isfinite(metrics["pg_loss"]) and metrics["skipped_updates"] == 0
    after = lora_params(trainer)
    assert all(not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    from dphrl_mini.cli import main

    common = ["--preset", "tiny-cpu", "--steps", "1", "--train-size", "8", "--prompts-per-step", "2",
              "--num-generations", "2", "--max-new-tokens", "8", "--eval-size", "2", "--ood-size", "2",
              "--eval-n", "2", "--eval-ks", "1", "2", "--presample-k", "2", "--reference-batch-size", "4",
              "--no-progress", "--device", "cpu", "--lr", "1e-2"]
    run = tmp_path / "run"
    main(["presample", *common, "--method", "dph_js", "--output-dir", str(run)])
    assert (run / "presample.json").exists() and (run / "reference_store.pt").exists()
    main(["train", *common, "--method", "dph_js", "--output-dir", str(run)])
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "eval_test.json").exists() and (run / "eval_ood.json").exists()
    main(["eval", *common, "--method", "dph_js", "--output-dir", str(run), "--splits", "test"])
    main(["eval", *common, "--output-dir", str(tmp_path / "base"), "--base", "--splits", "test"])
    assert (tmp_path / "base" / "eval_test.json").exists()
    out = tmp_path / "cmp"
    main(["compare", *common, "--variants", "grpo", "dph_js:eta=2", "dph_js:eta=4", "--out", str(out), "--splits", "test"])
    summary = (out / "summary.csv").read_text()
    assert "grpo" in summary and "dph_js_eta2" in summary and "base" in summary
    assert (out / "pass_at_k_test.png").exists() and (out / "pareto_test.png").exists()  # eta was swept
    assert (out / "RESULTS.md").read_text().startswith("Regenerate with:")
    stored = (out / "grpo" / "seed0" / "eval_test.json").stat().st_mtime_ns
    main(["compare", *common, "--variants", "grpo", "--out", str(out), "--splits", "test"])  # reloads, trains nothing
    assert (out / "grpo" / "seed0" / "eval_test.json").stat().st_mtime_ns == stored
    with pytest.raises(SystemExit, match="other settings.*lr"):  # stale results are never reused silently
        main(["compare", *common[:-1], "3e-3", "--variants", "grpo", "--out", str(out), "--splits", "test"])
    assert yaml.safe_load((out / "base" / "seed0" / "base.yaml").read_text())["model"] == "tiny"
    with pytest.raises(SystemExit, match="base.*other settings.*max_new_tokens"):  # nor a base model's
        main(["compare", *common, "--max-new-tokens", "6", "--variants", "grpo", "--out", str(out),
              "--splits", "test"])
    with pytest.raises(SystemExit, match="other settings.*eval_n"):
        main(["compare", *common, "--eval-n", "4", "--eval-ks", "1", "--variants", "grpo",
              "--out", str(out), "--splits", "test"])
    # a split asked for later ("transfer": the SQL test split) is evaluated alone on the finished runs
    evaluated = {p: p.stat().st_mtime_ns for p in out.glob("*/seed0/eval_test.json")}
    trained = (out / "grpo" / "seed0" / "metrics.jsonl").read_text()  # a fresh training run would rewrite it
    main(["compare", *common, "--variants", "grpo", "--out", str(out), "--splits", "test", "transfer",
          "--transfer-task", "sql", "--transfer-size", "2", "--transfer-max-new-tokens", "16"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed0/eval_test.json")} == evaluated  # not evaluated again
    assert (out / "grpo" / "seed0" / "metrics.jsonl").read_text() == trained  # nor trained again
    for folder in ("base", "grpo"):
        transfer = json.loads((out / folder / "seed0" / "eval_transfer.json").read_text())
        assert transfer["task"] == "sql" and len(transfer["ids"]) == 2 and transfer["ids"][0].startswith("sql-")
    assert "## transfer" in (out / "RESULTS.md").read_text()
    with pytest.raises(SystemExit, match="other settings.*eval_transfer"):  # another transfer split: refused
        main(["compare", *common, "--variants", "grpo", "--out", str(out), "--splits", "test", "transfer",
              "--transfer-task", "sql", "--transfer-size", "3"])
    printed = capsys.readouterr().out
    assert "pass@1" in printed
    with pytest.raises(SystemExit, match="method"):
        main(["train", *common, "--method", "nope", "--output-dir", str(tmp_path / "bad")])


@pytest.mark.parametrize("method", ["rkl", "dph_js"])
def test_packed_and_padded_forward_train_alike(tmp_path, method):
    """pack_sequences only changes how the forward is laid out: same losses and gradient norms (Adam's
    first steps amplify float rounding in near-zero gradients, so parameters are not compared). The
    LoRA B weights start non-zero (the same in both runs) so that the policy differs from pi_ref and
    the KL / DPH terms are far from zero."""
    results = []
    for pack in (True, False):
        trainer = Trainer(tiny_config(tmp_path / str(pack), method=method, steps=1, updates_per_step=1,
                                      pack_sequences=pack),
                          reward_fns=[alternating_reward])
        trainer.output_dir.mkdir(parents=True, exist_ok=True)
        force_store(trainer)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in sorted(trainer.policy.named_parameters()):
                if "lora_B" in name:
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        results.append(trainer.step())
    packed, padded = results
    for key in ("pg_loss", "kl", "dph_loss", "grad_norm", "entropy"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-7), key
    term = "kl" if method == "rkl" else "dph_loss"
    assert packed["grad_norm"] > 0 and packed[term] > 1e-3, (term, packed[term])


def test_each_update_rehearses_fresh_reference_rows(tmp_path):
    """The release uses each stored row once per pass: the two updates of one step must not
    rehearse the same reference rows (they did when the draw was seeded on the step alone)."""
    trainer = Trainer(tiny_config(tmp_path, method="dph_js", steps=1, reference_batch_size=2),
                      reward_fns=[alternating_reward])
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    force_store(trainer)  # 4 stored rows
    drawn = []
    draw = trainer.next_reference_indices
    trainer.next_reference_indices = lambda n: drawn.append(draw(n)) or drawn[-1]
    trainer.step()
    assert len(drawn) == 2 and sorted(drawn[0] + drawn[1]) == [0, 1, 2, 3]
    assert trainer.data_state["reference_pass"] == 1 and trainer.data_state["reference_cursor"] == 0
