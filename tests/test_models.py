"""load_policy: LoRA wiring, the adapter-off reference, 4-bit on CPU, target checks, fingerprints."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from dphrl_mini.models import count_parameters, load_policy, model_fingerprint, reference_mode
from dphrl_mini.tiny import build_tokenizer, tiny_model_config
from dphrl_mini.tiny_build import TinyConfig

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _save_random_tiny(path, **overrides):
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(tiny_model_config(TinyConfig(**overrides), len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A randomly initialized tiny model on disk (fast, independent of the committed checkpoint)."""
    return _save_random_tiny(tmp_path_factory.mktemp("tiny_random"))


@pytest.fixture(scope="module")
def batch():
    tokenizer = build_tokenizer()
    return tokenizer(["3 5 7 -> 22:3*5+7", "1 2 -> 3:"], return_tensors="pt", padding=True)


def _perturb_lora(model, scale=0.5):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(scale * torch.randn_like(param))


def test_only_lora_is_trainable(tiny_dir):
    model, tokenizer = load_policy(str(tiny_dir), lora_rank=4, device="cpu")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    n_trainable, n_total = count_parameters(model)
    assert n_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_trainable < n_total
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert next(model.parameters()).dtype == torch.float32  # dtype="auto" on CPU


def test_reference_mode_is_the_base_model(tiny_dir, batch):
    model, _ = load_policy(str(tiny_dir), device="cpu")
    base = LlamaForCausalLM.from_pretrained(tiny_dir).eval()
    model.eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
        assert torch.allclose(model(**batch).logits, base_logits, atol=1e-5)  # LoRA B starts at zero
        _perturb_lora(model)
        adapted = model(**batch).logits
        assert not torch.allclose(adapted, base_logits, atol=1e-3)
        with reference_mode(model):
            assert torch.allclose(model(**batch).logits, base_logits, atol=1e-5)
        assert torch.allclose(model(**batch).logits, adapted)  # adapters back on afterwards


def test_adapter_path_round_trip(tiny_dir, batch, tmp_path):
    model, _ = load_policy(str(tiny_dir), lora_rank=4, device="cpu")
    _perturb_lora(model)
    model.save_pretrained(tmp_path / "adapter")
    reloaded, _ = load_policy(str(tiny_dir), adapter_path=tmp_path / "adapter", device="cpu")
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-6)
    assert count_parameters(reloaded)[0] == count_parameters(model)[0] > 0


def test_explicit_and_bad_target_modules(tiny_dir):
    model, _ = load_policy(str(tiny_dir), lora_target_modules=["q_proj", "v_proj"], device="cpu")
    trainable = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match="lora_target_modules") as err:
        load_policy(str(tiny_dir), lora_target_modules=["q_proj", "query_key_value"], device="cpu")
    assert "query_key_value" in str(err.value) and "gate_proj" in str(err.value)


def test_gradient_checkpointing_backward(tiny_dir, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' current names, no deprecation warnings
        model, _ = load_policy(str(tiny_dir), gradient_checkpointing=True, device="cpu")
    base = model.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes not installed")
def test_4bit_on_cpu_trains_lora(tiny_dir, batch):
    model, tokenizer = load_policy(str(tiny_dir), quantization="4bit", device="cpu")
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit"
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):  # lora_B starts at zero, so lora_A only moves from the second step on
        out = model(**batch, labels=batch["input_ids"])
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)
    # the 4-bit base is the same base: fingerprint as in full precision
    full, _ = load_policy(str(tiny_dir), device="cpu")
    assert model_fingerprint(model, tokenizer) == model_fingerprint(full, tokenizer)
    trainable, total = count_parameters(model)
    assert total == count_parameters(full)[1]  # packed 4-bit weights counted at full size


def test_missing_bitsandbytes_is_a_clear_error(tiny_dir, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="quantization.*pip install bitsandbytes"):
        load_policy(str(tiny_dir), quantization="4bit", device="cpu")
    with pytest.raises(ValueError, match="quantization"):
        load_policy(str(tiny_dir), quantization="3bit", device="cpu")


def test_fingerprint_tracks_config_vocab_and_weights(tiny_dir, tmp_path):
    model, tokenizer = load_policy(str(tiny_dir), device="cpu")
    again, tokenizer_again = load_policy(str(tiny_dir), lora_rank=4, device="cpu")
    reference = model_fingerprint(model, tokenizer)
    assert reference == model_fingerprint(again, tokenizer_again)  # adapters do not matter
    assert len(reference) == 16

    other_config = _save_random_tiny(tmp_path / "deeper", num_hidden_layers=3)
    deeper, _ = load_policy(str(other_config), device="cpu")
    assert model_fingerprint(deeper, tokenizer) != reference

    bigger_vocab = AutoTokenizer.from_pretrained(tiny_dir)
    bigger_vocab.add_tokens(["<extra>"])
    assert model_fingerprint(model, bigger_vocab) != reference

    with torch.no_grad():
        model.get_base_model().get_input_embeddings().weight[0, 0] += 1.0  # "retrained" weights
    assert model_fingerprint(model, tokenizer) != reference


def test_tiny_name_resolves_to_the_builtin_model(batch):
    model, tokenizer = load_policy("tiny", device="cpu")
    assert tokenizer.bos_token == "<bos>" and tokenizer.padding_side == "left"
    out = model.generate(**tokenizer(["3 5 7 -> 22:"], return_tensors="pt"), max_new_tokens=8,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > 5


def test_loading_the_built_in_model_never_imports_its_build():
    """A run loads ``tiny`` through tiny.py alone: the recipe (tiny_build.py) and its measurement
    (tiny_measure.py) stay out of ``sys.modules``, for ``load_policy`` and for the trainer's import."""
    code = ("import sys; from dphrl_mini.models import load_policy; import dphrl_mini.trainer; "
            "load_policy('tiny', device='cpu'); "
            "print(sorted(m for m in sys.modules if m.startswith('dphrl_mini.tiny')))")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().splitlines()[-1] == "['dphrl_mini.tiny']"


def test_target_modules_as_the_command_line_gives_them(tiny_dir):
    """``--lora-target-modules all-linear`` arrives as a one-item list; ``q_proj,v_proj`` as one string."""
    from dphrl_mini.cli import build_parser, config_from_args
    from dphrl_mini.models import check_target_modules

    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    for given, expected in [("all-linear", "all-linear"), ("q_proj,v_proj", ["q_proj", "v_proj"])]:
        cfg = config_from_args(build_parser().parse_args(["train", "--lora-target-modules", given]))
        assert check_target_modules(model, cfg.lora_target_modules) == expected


def test_auto_dtype_on_a_gpu_without_native_bf16_is_float32(monkeypatch, caplog):
    from dphrl_mini import models

    cuda = torch.device("cuda")
    monkeypatch.setattr(models, "cuda_has_native_bf16", lambda device: True)
    assert models.resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(models, "cuda_has_native_bf16", lambda device: False)  # e.g. a T4
    assert models.resolve_dtype("auto", cuda) == torch.float32
    assert "no native bfloat16; computing in float32" in caplog.text
    assert models.resolve_dtype("bfloat16", cuda) == torch.bfloat16  # an explicit choice is kept


def test_local_model_paths_resolve_absolute_and_missing_ones_fail(tiny_dir, monkeypatch):
    from dphrl_mini.models import resolve_model_path

    monkeypatch.chdir(tiny_dir.parent)
    assert resolve_model_path(tiny_dir.name) == str(tiny_dir.resolve())
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(ValueError, match="no such folder"):
        resolve_model_path("models/qwen/checkpoint")
