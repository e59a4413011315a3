"""DPH-RL inside TRL's GRPOTrainer (dphrl_mini.integrations.trl) on the built-in tiny model: the
import guard, the store on the presample path, parity with plain GRPOTrainer at eta=0, the DPH
term against a hand computation, and (slow) rehearsal keeping stored sequences near pi_ref."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from dphrl_mini.data import ReferenceStore, presample  # noqa: E402
from dphrl_mini.integrations import trl as dph_trl  # noqa: E402
from dphrl_mini.integrations.trl import DPHGRPOTrainer, build_reference_store  # noqa: E402
from dphrl_mini.losses import aggregate, divergence_per_token  # noqa: E402
from dphrl_mini.models import model_fingerprint, resolve_model_path  # noqa: E402
from dphrl_mini.tasks import countdown  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = resolve_model_path("tiny")
STORE = dict(k=4, threshold=0.25, max_new_tokens=16)


def load_model():
    return AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(TINY)
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def dataset():
    rows = countdown.make_dataset("train", 16, seed=0)
    return Dataset.from_list([{"prompt": r["prompt"], "numbers": r["numbers"], "target": r["target"]} for r in rows])


@pytest.fixture(scope="module")
def store(tokenizer, dataset):
    return build_reference_store(load_model(), tokenizer, dataset, countdown.reward, **STORE)


def grpo_config(tmp_path, **overrides) -> GRPOConfig:
    """The benchmark's TRL settings (benchmarks/bench_trl.py), shrunk: fp32 on CPU, no KL, token mean."""
    values = dict(output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=8,
                  gradient_accumulation_steps=2, max_completion_length=16, beta=0.0, loss_type="dapo",
                  epsilon=0.2, use_vllm=False, report_to="none", logging_steps=1, max_steps=2,
                  learning_rate=1e-2, temperature=1.0, bf16=False, use_cpu=True, save_strategy="no", seed=0,
                  disable_tqdm=True, dataloader_num_workers=0)
    checkpointing = next(f for f in ("activation_checkpointing", "gradient_checkpointing")  # transformers 5 renamed it
                         if f in GRPOConfig.__dataclass_fields__)
    values[checkpointing] = False
    values.update(overrides)
    return GRPOConfig(**values)


def lora() -> LoraConfig:
    return LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")


def make_trainer(cls, tmp_path, tokenizer, dataset, config=None, **dph):
    return cls(model=load_model(), reward_funcs=countdown.reward, args=config or grpo_config(tmp_path),
               train_dataset=dataset, processing_class=tokenizer, peft_config=lora(), **dph)


# --- import guard and supported versions ---------------------------------------------------------
def fresh_import():
    """Execute the module file anew (as a sibling module), so its import-time checks run again."""
    path = Path(dph_trl.__file__)
    spec = importlib.util.spec_from_file_location("dphrl_mini.integrations._trl_probe", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_supported_trl_range_is_the_bench_extra():
    bench = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    trl_spec = next(req for req in bench if req.startswith("trl"))
    assert SpecifierSet(trl_spec.removeprefix("trl")) == SpecifierSet(dph_trl.SUPPORTED_TRL)
    assert trl.__version__ in SpecifierSet(dph_trl.SUPPORTED_TRL)


def test_import_without_trl_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    with pytest.raises(ImportError, match=r"needs TRL: pip install 'dphrl-mini\[bench\]'"):
        fresh_import()


def test_import_with_unsupported_trl_names_the_range(monkeypatch):
    monkeypatch.setattr(trl, "__version__", "0.19.0")
    with pytest.raises(ImportError, match=r"supports trl>=.* but trl 0.19.0 is installed"):
        fresh_import()


# --- the reference store ---------------------------------------------------------------------------
def test_store_is_the_presample_store_and_round_trips(tmp_path, tokenizer, dataset, store):
    rows = [{"id": str(i), **example} for i, example in enumerate(dataset)]
    model = load_model()
    ours = presample(model, tokenizer, rows, countdown, fingerprint=model_fingerprint(model, tokenizer),
                     progress=False, packed=False, batch_size=64, **STORE).store
    assert len(store) > 0
    assert store.completion_ids == ours.completion_ids and store.reference_logps == ours.reference_logps
    assert len(store.meta["pass_rates"]) == len(dataset)
    assert store.meta["exploration"] == [i for i, rate in enumerate(store.meta["pass_rates"]) if rate < 0.25]
    loaded = ReferenceStore.load(store.save(tmp_path / "store.pt"), model_fingerprint(model, tokenizer))
    assert loaded.__dict__ == store.__dict__


def test_store_keeps_every_distinct_correct_answer(tokenizer, dataset, store):
    every = build_reference_store(load_model(), tokenizer, dataset, [countdown.reward], keep="all_distinct", **STORE)
    assert len(every) >= len(store)
    answers = list(zip(every.row_ids, map(tuple, every.completion_ids)))
    assert len(set(answers)) == len(answers)


def test_store_from_chat_messages_passes_messages_to_rewards(tokenizer, dataset, store):
    chat = AutoTokenizer.from_pretrained(TINY)
    # the template writes its own BOS, as real chat templates do (so no second one is added)
    chat.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    messages = dataset.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    seen = []

    def reward(prompts, completions, **columns):  # TRL's conversational shapes
        seen.append((prompts[0], completions[0]))
        return countdown.reward([p[0]["content"] for p in prompts], [c[0]["content"] for c in completions], **columns)

    from_messages = build_reference_store(load_model(), chat, messages, reward, **STORE)
    assert seen[0][0] == [{"role": "user", "content": dataset[0]["prompt"]}]
    assert seen[0][1][0]["role"] == "assistant"
    assert from_messages.completion_ids == store.completion_ids and from_messages.meta == store.meta


def trl_countdown(completions, numbers, target, **kwargs):  # TRL's documented form: completions first, **kwargs
    return countdown.reward(kwargs["prompts"], completions, numbers, target)


def test_store_with_a_trl_signature_reward_is_the_built_in_rewards(tokenizer, dataset, store):
    assert len(store) > 0
    assert build_reference_store(load_model(), tokenizer, dataset, trl_countdown, **STORE).completion_ids == \
        store.completion_ids


def test_store_refuses_a_reward_that_fails_on_every_sample(tokenizer, dataset):
    def offline_judge(prompts, completions, **kwargs):
        raise ConnectionError("judge offline")

    with pytest.raises(ValueError, match="`.*offline_judge` failed on all 64 pre-samples.*ConnectionError: judge offline"):
        build_reference_store(load_model(), tokenizer, dataset, offline_judge, **STORE)


def test_store_with_trl_accuracy_reward_on_chat_messages(tokenizer, dataset):
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    pytest.importorskip("math_verify")
    chat = AutoTokenizer.from_pretrained(TINY)
    chat.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    messages = Dataset.from_list([{"prompt": [{"role": "user", "content": row["prompt"]}], "solution": str(row["target"])}
                                  for row in dataset])
    scores = []

    @functools.wraps(accuracy_reward)
    def spy(*args, **kwargs):
        scores.extend(accuracy_reward(*args, **kwargs))
        return scores[-len(kwargs["completions"]):]

    result = build_reference_store(load_model(), chat, messages, spy, **STORE)
    assert len(scores) == 64 and set(scores) <= {0.0, 1.0} and len(result.meta["pass_rates"]) == 16


def test_bad_arguments_fail_before_training(tmp_path, tokenizer, dataset, store):
    with pytest.raises(ValueError, match="dph_divergence='kl'"):
        make_trainer(DPHGRPOTrainer, tmp_path, tokenizer, dataset, reference_store=store, dph_divergence="kl")
    with pytest.raises(ValueError, match="dph_eta=-1"):
        make_trainer(DPHGRPOTrainer, tmp_path, tokenizer, dataset, reference_store=store, dph_eta=-1)
    with pytest.raises(TypeError, match="reward_funcs"):
        build_reference_store(load_model(), tokenizer, dataset, ["some/reward-model"], **STORE)
    other = ReferenceStore(store.prompt_ids, store.completion_ids, store.reference_logps, store.row_ids, "0" * 16)
    with pytest.raises(ValueError, match="another model or tokenizer"):
        make_trainer(DPHGRPOTrainer, tmp_path, tokenizer, dataset, reference_store=other)


# --- the loss ---------------------------------------------------------------------------------------
class GradientRecorder(TrainerCallback):
    """Every trainable gradient just before each optimizer step."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})


def run(cls, tmp_path, tokenizer, dataset, **dph):
    trainer = make_trainer(cls, tmp_path, tokenizer, dataset, **dph)
    recorder = GradientRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    return trainer, recorder.grads


def test_eta_zero_is_plain_grpo_loss_and_gradients(tmp_path, tokenizer, dataset, store):
    plain, plain_grads = run(GRPOTrainer, tmp_path / "plain", tokenizer, dataset)
    dph, dph_grads = run(DPHGRPOTrainer, tmp_path / "dph", tokenizer, dataset, reference_store=store, dph_eta=0.0,
                         dph_divergence="js", reference_batch_size=4)
    plain_logs = [h for h in plain.state.log_history if "loss" in h]
    dph_logs = [h for h in dph.state.log_history if "loss" in h]
    assert len(plain_logs) == len(dph_logs) == 2 and len(plain_grads) == len(dph_grads) == 2
    assert [h["loss"] for h in dph_logs] == [h["loss"] for h in plain_logs]
    for ours, theirs in zip(dph_grads, plain_grads):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    assert any(g.abs().sum() > 0 for g in plain_grads[-1].values())  # a real update, not two zeros
    assert all(h["dph/loss"] >= 0 for h in dph_logs) and dph_logs[-1]["dph/loss"] > 0  # logged, and the policy moved


def hand_logps(model, batch) -> torch.Tensor:
    """log pi_theta of the stored completion tokens from one plain forward (no project helper)."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)  # (B, P+T)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"].long()], dim=1)  # (B, P+T)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    T = batch["completion_ids"].shape[1]
    logprobs = torch.log_softmax(logits[:, -T - 1:-1].float(), dim=-1)  # (B, T, V) predicts each completion token
    return logprobs.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)  # (B, T)


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "alpha"])
def test_dph_term_is_aggregate_divergence_per_token(tmp_path, tokenizer, dataset, store, monkeypatch, divergence):
    eta, alpha = 0.7, 0.3
    trainer = make_trainer(DPHGRPOTrainer, tmp_path, tokenizer, dataset, reference_store=store,
                           dph_divergence=divergence, dph_eta=eta, dph_alpha=alpha, reference_batch_size=6)
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy off pi_ref: LoRA B starts at zero
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    monkeypatch.setattr(GRPOTrainer, "compute_loss", lambda self, *a, **k: torch.zeros(()))  # the DPH term alone
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # two micro-steps share one reference batch
    total = trainer.compute_loss(trainer.model, {}) + trainer.compute_loss(trainer.model, {})
    total.backward()
    ours = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.model.zero_grad()

    indices = [i for part in trainer._reference_window.parts for i in part]
    assert len(indices) == 6
    batch = store.batch(indices, tokenizer.pad_token_id)
    logps = hand_logps(trainer.model, batch)
    by_hand = aggregate(divergence_per_token(logps, batch["reference_logps"], divergence, alpha), batch["completion_mask"])
    (eta * by_hand).backward()
    assert by_hand.item() > 1e-4  # the policy really differs from pi_ref on these tokens
    assert abs(total.item() - eta * by_hand.item()) < 1e-6
    assert abs(trainer._metrics["train"]["dph/loss"][-1] - by_hand.item()) < 1e-6
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-5)

    trainer.state.global_step = 1  # the next optimizer step draws a fresh reference batch
    trainer.compute_loss(trainer.model, {})
    assert trainer._reference_window.step == 1
    assert [i for part in trainer._reference_window.parts for i in part] != indices


# --- rehearsal, measured -----------------------------------------------------------------------------
@pytest.mark.slow
def test_rehearsal_keeps_reference_sequences_nearer_pi_ref(tmp_path, tokenizer, dataset, store):
    """30 steps of plain GRPO vs DPH-F from the same start: the mean |sequence log pi_theta - log pi_ref|
    over the stored sequences must end smaller with rehearsal (each run's figure is printed)."""
    config = dict(max_steps=30, gradient_accumulation_steps=1, per_device_train_batch_size=8, learning_rate=1e-2)

    def drift(trainer) -> float:
        batch = store.batch(list(range(len(store))), tokenizer.pad_token_id)
        with torch.no_grad():
            logps = hand_logps(trainer.model.eval(), batch)
        return float(((logps - batch["reference_logps"]) * batch["completion_mask"]).sum(-1).abs().mean())

    plain = make_trainer(GRPOTrainer, tmp_path, tokenizer, dataset, grpo_config(tmp_path / "plain", **config))
    plain.train()
    dph = make_trainer(DPHGRPOTrainer, tmp_path, tokenizer, dataset, grpo_config(tmp_path / "dph", **config),
                       reference_store=store, dph_divergence="forward_kl", dph_eta=1.0, reference_batch_size=8)
    dph.train()
    plain_drift, dph_drift = drift(plain), drift(dph)
    print(f"mean |log pi_theta - log pi_ref| per stored sequence: GRPO {plain_drift:.4f}, DPH-F {dph_drift:.4f}")
    assert plain_drift > 0
    assert dph_drift < plain_drift
