"""The rollout engine samples the same distribution as rollout.generate and never touches training."""

import pytest
import torch

from dphrl_mini.config import TrainConfig
from dphrl_mini.engine import RolloutEngine, StaticDecoder, resolve_engine, static_generate
from dphrl_mini.models import load_policy, reference_mode
from dphrl_mini.rollout import generate, sequence_logps

PROMPTS = ["3 5 7 -> 22:", "12 4 -> 3:", "1 2 3 4 -> 10:"]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    model, tokenizer = load_policy("tiny", lora_rank=8, device="cpu")
    with torch.no_grad():  # non-zero LoRA B so the adapters change the policy
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return model, tokenizer


def _sample(fn, seed=3, **kw):
    return fn(num_generations=4, max_new_tokens=12, generator=torch.Generator().manual_seed(seed), **kw)


def test_resolve_engine():
    assert resolve_engine("auto", "cpu") == "merged"
    assert resolve_engine("auto", "cuda") == "merged"  # static is opt-in until checked on a GPU
    assert resolve_engine("static", "cuda") == "static"
    assert resolve_engine("static", "cpu") == "merged"
    assert resolve_engine("plain", "cpu") == "plain"
    with pytest.raises(ValueError):
        resolve_engine("fast", "cpu")
    with pytest.raises(ValueError, match="rollout_engine"):
        TrainConfig(rollout_engine="fast").validate()


def test_merged_same_tokens_and_logps_as_plain(policy):
    model, tok = policy
    plain = _sample(lambda **kw: generate(model, tok, PROMPTS, **kw))
    merged = _sample(lambda **kw: RolloutEngine(model, "merged").generate(tok, PROMPTS, **kw))
    assert torch.equal(plain.completion_ids, merged.completion_ids)
    assert torch.equal(plain.completion_mask, merged.completion_mask)
    torch.testing.assert_close(plain.logps, merged.logps, atol=1e-4, rtol=0)
    assert plain.completions == merged.completions


def test_merged_copy_tracks_adapter_updates_and_reference_mode(policy):
    model, tok = policy
    engine = RolloutEngine(model, "merged")
    engine.generate(tok, PROMPTS, max_new_tokens=2)  # builds the copy with the current adapters
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    saved = lora_b.detach().clone()
    try:
        with torch.no_grad():
            lora_b.add_(0.5)  # an "optimizer step": the next rollout must see it
        plain = _sample(lambda **kw: generate(model, tok, PROMPTS, **kw))
        merged = _sample(lambda **kw: engine.generate(tok, PROMPTS, **kw))
        torch.testing.assert_close(plain.logps, merged.logps, atol=1e-4, rtol=0)
        with reference_mode(model):  # adapters off -> the copy holds the base weights
            base = _sample(lambda **kw: generate(model, tok, PROMPTS, **kw))
            ref = _sample(lambda **kw: engine.generate(tok, PROMPTS, **kw))
        assert torch.equal(base.completion_ids, ref.completion_ids)
        torch.testing.assert_close(base.logps, ref.logps, atol=1e-4, rtol=0)
        # the test can tell the two apart
        assert base.logps.shape != plain.logps.shape or not torch.allclose(base.logps, plain.logps)
    finally:
        with torch.no_grad():
            lora_b.copy_(saved)


def test_merged_rollout_leaves_params_and_grads_untouched(policy):
    model, tok = policy
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    rollout = generate(model, tok, PROMPTS, num_generations=2, max_new_tokens=6)
    sequence_logps(model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                   rollout.completion_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    RolloutEngine(model, "merged").generate(tok, PROMPTS, num_generations=4, max_new_tokens=12)
    assert model.training
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name
    sequence_logps(model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                   rollout.completion_mask).sum().backward()
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=0, rtol=0)
    model.zero_grad(set_to_none=True)


def test_static_decoder_on_cpu_matches_plain(policy):
    """The static-cache loop (uncompiled on CPU): greedy tokens equal, sampled log-probs exact."""
    model, tok = policy
    decoder = StaticDecoder(RolloutEngine(model, "merged")._copy().refresh(), compile=False, sync_every=4)
    greedy_plain = generate(model, tok, PROMPTS, max_new_tokens=12, greedy=True)
    greedy_static = static_generate(decoder, tok, PROMPTS, max_new_tokens=12, greedy=True)
    assert torch.equal(greedy_plain.completion_ids, greedy_static.completion_ids)
    sampled = _sample(lambda **kw: static_generate(decoder, tok, PROMPTS, **kw))
    rescored = sequence_logps(model, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                              sampled.completion_mask).detach()
    torch.testing.assert_close(sampled.logps, rescored, atol=1e-4, rtol=0)
    assert sampled.completion_mask[:, 0].all()


def test_gumbel_sampler_distribution():
    """Gumbel-max draws follow softmax(logits / T) (chi-square-sized tolerance)."""
    from dphrl_mini.engine import _gumbel_next_token

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    tokens, _ = _gumbel_next_token(logits, 0.7, 1.0, False, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.7, -1), atol=0.015, rtol=0)
    top, _ = _gumbel_next_token(logits, 1.0, 0.5, False, torch.Generator().manual_seed(0))
    assert set(top.tolist()) <= {0, 1}  # top-p 0.5 keeps the smallest prefix with mass >= 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph decode path needs a GPU (not yet measured)")
def test_static_cuda_graph_path():
    model, tok = load_policy("tiny", lora_rank=8, device="cuda")
    engine = RolloutEngine(model, "static")
    assert engine.mode == "static"
    out = _sample(lambda **kw: engine.generate(tok, PROMPTS, **kw))
    rescored = sequence_logps(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    torch.testing.assert_close(out.logps, rescored.detach().float(), atol=5e-2, rtol=0)


def test_four_bit_rollouts_from_dequantized_copy():
    """4-bit base: the merged copy holds the dequantized weights + LoRA; same policy as the 4-bit path."""
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    model, tok = load_policy("tiny", quantization="4bit", lora_rank=8, device="cpu")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    engine = RolloutEngine(model, "merged")
    for seed in (3, 4):  # the second refresh follows a 4-bit forward (bitsandbytes repacks CPU weights then)
        merged = _sample(lambda **kw: engine.generate(tok, PROMPTS, **kw), seed=seed)
        rescored = sequence_logps(model, merged.prompt_ids, merged.prompt_mask, merged.completion_ids,
                                  merged.completion_mask).detach()
        torch.testing.assert_close(merged.logps, rescored.float(), atol=2e-3, rtol=0)


def test_repacked_four_bit_weights_are_refused_not_dequantized_wrongly():
    """bitsandbytes repacks CPU 4-bit weights for a bf16 kernel in eval mode; load_policy turns that
    off, and a model where it happened anyway is refused with a message instead of sampled wrongly."""
    pytest.importorskip("bitsandbytes")
    model, tok = load_policy("tiny", quantization="4bit", lora_rank=8, device="cpu")
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)  # load_policy's setting
    for m in layers:
        m.support_avx512bf16_for_cpu = True
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]))
    if not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers):
        pytest.skip("this CPU has no avx512-bf16: bitsandbytes never repacks here")
    with pytest.raises(ValueError, match="repacked.*load_policy"):
        RolloutEngine(model, "merged").generate(tok, PROMPTS, num_generations=2, max_new_tokens=4)
