"""The packed log-prob forward and the fused LoRA forward: same values and gradients as the plain ones."""

import pytest
import torch

from dphrl_mini import packing
from dphrl_mini.models import lean_lora, load_policy, reference_mode
from dphrl_mini.packing import _pack, packed_logps
from dphrl_mini.rollout import generate, sequence_logps

PROMPTS = ["3 5 7 -> 22:", "12 4 -> 3:", "1 2 3 4 -> 10:"]


def _policy(**kwargs):
    torch.manual_seed(0)
    model, tokenizer = load_policy("tiny", lora_rank=8, device="cpu", **kwargs)
    with torch.no_grad():  # non-zero LoRA B so the adapters change the policy
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return model, tokenizer


@pytest.fixture(scope="module")
def policy():
    return _policy()


@pytest.fixture(scope="module")
def batch(policy):
    model, tok = policy
    r = generate(model, tok, PROMPTS, num_generations=3, max_new_tokens=10, generator=torch.Generator().manual_seed(5))
    assert len(set(r.completion_mask.sum(-1).tolist())) > 1  # completions of several lengths (padding to drop)
    rows = torch.tensor([0, 1, 2, 4, 5, 7, 8])  # groups split across the micro-batch, one prompt absent
    return r.prompt_ids[rows], r.prompt_mask[rows], r.completion_ids[rows], r.completion_mask[rows]


def _values_and_grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    logps, entropy = fn(model, *batch, temperature=0.8, return_entropy=True)
    (logps.sum() + 0.1 * entropy.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logps.detach(), entropy.detach(), grads


def _assert_same(got, expected):
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=0)
    assert got[2].keys() == expected[2].keys() and len(expected[2]) > 0
    for name in expected[2]:
        # float32 sums in another order (packed vs padded rows): a few LoRA gradients of the built-in
        # model differ by up to ~2e-5; a wrong mask or position moves them by orders of magnitude more
        torch.testing.assert_close(got[2][name], expected[2][name], atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("pack_factor", [4.0, 0.1])  # 0.1: every completion in its own row, prompt repeated
def test_packed_same_values_and_gradients_as_padded(policy, batch, pack_factor):
    model, _ = policy
    model.train()
    expected = _values_and_grads(model, sequence_logps, batch)
    packed = _values_and_grads(model, lambda *a, **k: packed_logps(*a, pack_factor=pack_factor, **k), batch)
    _assert_same(packed, expected)
    model.eval()


def test_pack_plan_shares_prompts_and_respects_the_cap():
    prompts = [(1, 2, 3)] * 3 + [(4, 5)] * 2
    lengths = [4, 2, 5, 3, 3]
    rows = _pack(prompts, lengths, cap=100)
    assert rows == [[((1, 2, 3), [0, 1, 2]), ((4, 5), [3, 4])]]  # one row, each prompt once
    rows = _pack(prompts, lengths, cap=10)
    assert all(sum(len(p) + sum(lengths[i] for i in members) for p, members in row) <= 10 for row in rows)
    assert sorted(i for row in rows for _, members in row for i in members) == [0, 1, 2, 3, 4]


def test_packed_eager_attention_and_gradient_checkpointing(batch):
    model, _ = _policy(gradient_checkpointing=True)
    model.train()
    expected = _values_and_grads(model, sequence_logps, batch)
    _assert_same(_values_and_grads(model, packed_logps, batch), expected)
    model.config._attn_implementation = "eager"  # additive float mask instead of a boolean one
    try:
        _assert_same(_values_and_grads(model, packed_logps, batch), expected)
    finally:
        model.config._attn_implementation = "sdpa"


def test_packed_falls_back_where_a_4d_mask_cannot_be_used(policy, batch, monkeypatch):
    model, _ = policy
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return sequence_logps(*args, **kwargs)

    monkeypatch.setattr(packing, "sequence_logps", spy)
    monkeypatch.setattr(packing, "attention_implementation", lambda m: "flash_attention_2")
    with torch.no_grad():
        packed_logps(model, *batch)
    assert calls == [1]
    monkeypatch.setattr(packing, "attention_implementation", lambda m: "sdpa")
    prompt_ids, prompt_mask, completion_ids, completion_mask = batch
    holes = completion_mask.clone()
    holes[0, 0] = 0  # not right-padded: the packed layout would not hold these tokens
    with torch.no_grad():
        out = packed_logps(model, prompt_ids, prompt_mask, completion_ids, holes)
    assert calls == [1, 1] and out[0, 0] == 0


def test_lean_lora_same_values_and_gradients_and_reference_mode(policy, batch):
    model, _ = policy
    model.train()
    expected = _values_and_grads(model, packed_logps, batch)
    with lean_lora(model):
        lean = _values_and_grads(model, packed_logps, batch)
        with torch.no_grad(), reference_mode(model):
            reference_inside = packed_logps(model, *batch)
    _assert_same(lean, expected)
    assert not any("forward" in vars(m) for m in model.modules())  # the patch is undone
    with torch.no_grad(), reference_mode(model):
        reference = packed_logps(model, *batch)
    torch.testing.assert_close(reference_inside, reference)
    assert (reference - expected[0]).abs().max() > 1e-3  # the adapters did change the policy
    model.eval()


def test_lean_lora_leaves_dropout_layers_to_peft():
    model, _ = load_policy("tiny", lora_rank=4, lora_dropout=0.1, device="cpu")
    with lean_lora(model):
        assert not any("forward" in vars(m) for m in model.modules())


def test_packed_four_bit(batch):
    pytest.importorskip("bitsandbytes")
    model, _ = _policy(quantization="4bit")
    model.train()
    _assert_same(_values_and_grads(model, packed_logps, batch), _values_and_grads(model, sequence_logps, batch))
