"""The KV-cached sampling loop against a no-cache reference loop, and its bookkeeping."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dphrl_mini.rollout import generate, sequence_logps
from dphrl_mini.tiny import build_tokenizer

PROMPTS = ["1 2 -> 3:", "25 7 3 -> 100:", "9:", "4 4 4 4 4 -> 16:"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def make_model(tokenizer, eos_bias: float = 0.0, seed: int = 0):
    """A random 2-layer Llama; ``eos_bias`` is added to the EOS logit so rows end at random times."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, initializer_range=0.2,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.lm_head = torch.nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[tokenizer.eos_token_id] = eos_bias
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer, eos_bias=3.0)


def reference_loop(model, tokenizer, prompts, G, max_new_tokens, temperature, generator, greedy=False):
    """No KV cache: re-run the full [prompt; generated] sequence at every step; only unfinished
    rows draw a token (as in ``rollout.decode``, whose random stream skips finished rows)."""
    rows = [ids for ids in tokenizer(prompts)["input_ids"] for _ in range(G)]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    done = torch.zeros(len(rows), dtype=torch.bool)
    out_tokens, out_mask = [], []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
            token = torch.full((len(rows),), tokenizer.pad_token_id)
            if greedy:
                token[~done] = logits[~done].argmax(-1)
            else:
                probs = torch.softmax(logits[~done].float() / temperature, dim=-1)
                token[~done] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            out_mask.append(~done)
            out_tokens.append(token)
            done = done | (token == tokenizer.eos_token_id)
            if done.all():
                break
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.long)], 1)
    return torch.stack(out_tokens, 1), torch.stack(out_mask, 1).long()


def test_kv_cache_sampling_equals_no_cache_reference(model, tokenizer):
    for seed in range(3):
        roll = generate(model, tokenizer, PROMPTS, num_generations=3, max_new_tokens=12,
                        temperature=0.8, generator=torch.Generator().manual_seed(seed))
        ids, mask = reference_loop(model, tokenizer, PROMPTS, 3, 12, 0.8, torch.Generator().manual_seed(seed))
        assert torch.equal(roll.completion_ids, ids)
        assert torch.equal(roll.completion_mask, mask)
    greedy = generate(model, tokenizer, PROMPTS, num_generations=2, max_new_tokens=12, greedy=True)
    ids, mask = reference_loop(model, tokenizer, PROMPTS, 2, 12, 1.0, None, greedy=True)
    assert torch.equal(greedy.completion_ids, ids) and torch.equal(greedy.completion_mask, mask)


@pytest.mark.parametrize("temperature,top_p,batch_size", [(1.0, 1.0, None), (0.7, 0.9, 5)])
def test_generate_logps_equal_sequence_logps(model, tokenizer, temperature, top_p, batch_size):
    roll = generate(model, tokenizer, PROMPTS, num_generations=4, max_new_tokens=10,
                    temperature=temperature, top_p=top_p, batch_size=batch_size,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logps, entropy = sequence_logps(model, roll.prompt_ids, roll.prompt_mask, roll.completion_ids,
                                        roll.completion_mask, temperature=temperature, return_entropy=True)
    assert roll.logps.dtype == torch.float32 and logps.shape == roll.logps.shape
    assert torch.allclose(logps, roll.logps, atol=1e-5)
    on = roll.completion_mask.bool()
    assert (roll.logps[on] < 0).all() and (roll.logps[~on] == 0).all() and (entropy[~on] == 0).all()
    # entropy of row 5 recomputed alone, without padding, from a plain forward
    row = 5
    n = int(roll.completion_mask[row].sum())
    alone = torch.cat([roll.prompt_ids[row][roll.prompt_mask[row].bool()], roll.completion_ids[row, :n]])
    with torch.no_grad():
        logits = model(alone[None]).logits[0, -n - 1:-1].float() / temperature
    p = torch.softmax(logits, -1)
    assert torch.allclose(entropy[row, :n], -(p * p.log()).sum(-1), atol=1e-5)


def test_left_padding_does_not_change_a_prompt(model, tokenizer):
    short = ["9:"]
    alone = generate(model, tokenizer, short, num_generations=2, max_new_tokens=10, greedy=True)
    mixed = generate(model, tokenizer, PROMPTS[:2] + short + PROMPTS[3:], num_generations=2,
                     max_new_tokens=10, greedy=True)
    rows = slice(4, 6)  # prompt 2's group
    assert mixed.prompt_mask[rows].sum() < mixed.prompt_mask.shape[1] * 2  # it really is padded
    n = alone.completion_ids.shape[1]
    assert torch.equal(mixed.completion_ids[rows, :n], alone.completion_ids)
    assert torch.allclose(mixed.logps[rows, :n], alone.logps, atol=1e-5)
    assert (mixed.completion_mask[rows, n:] == 0).all()


def test_eos_masks_and_truncation(model, tokenizer):
    roll = generate(model, tokenizer, PROMPTS, num_generations=8, max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert 0 < int(roll.truncated.sum()) < len(roll.truncated)  # both cases occur
    assert roll.completion_ids.shape[1] == 6
    for row in range(len(roll.completions)):
        ids, mask = roll.completion_ids[row].tolist(), roll.completion_mask[row].tolist()
        n = sum(mask)
        assert mask == [1] * n + [0] * (6 - n)
        assert all(t == pad for t in ids[n:])
        if roll.truncated[row]:
            assert n == 6 and eos not in ids
        else:
            assert ids[n - 1] == eos and eos not in ids[:n - 1]
        assert roll.completions[row] == tokenizer.decode(ids[:n], skip_special_tokens=True)
        assert "<eos>" not in roll.completions[row]


def test_stops_when_every_row_has_ended(tokenizer):
    always_eos = make_model(tokenizer, eos_bias=100.0)
    roll = generate(always_eos, tokenizer, PROMPTS, num_generations=2, max_new_tokens=20,
                    generator=torch.Generator().manual_seed(0))
    assert roll.completion_ids.shape == (8, 1)
    assert (roll.completion_ids == tokenizer.eos_token_id).all() and roll.completion_mask.all()
    assert roll.completions == [""] * 8 and not roll.truncated.any()


def test_greedy_is_deterministic_and_grouped(model, tokenizer):
    a = generate(model, tokenizer, PROMPTS, num_generations=3, max_new_tokens=8, greedy=True)
    b = generate(model, tokenizer, PROMPTS, num_generations=3, max_new_tokens=8, greedy=True,
                 batch_size=2, temperature=0.3)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    assert torch.equal(a.prompt_index, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]))
    for i, prompt in enumerate(PROMPTS):
        for row in range(3 * i, 3 * i + 3):
            real = a.prompt_ids[row][a.prompt_mask[row].bool()].tolist()
            assert real == tokenizer(prompt)["input_ids"]
            assert a.completions[row] == a.completions[3 * i]


def test_top_p_keeps_sampling_inside_the_nucleus(model, tokenizer):
    roll = generate(model, tokenizer, PROMPTS, num_generations=8, max_new_tokens=8, temperature=1.0,
                    top_p=0.5, generator=torch.Generator().manual_seed(3))
    ids = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
    mask = torch.cat([roll.prompt_mask, roll.completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    P = roll.prompt_ids.shape[1]
    probs = torch.softmax(logits[:, P - 1:-1], -1)  # (B, T, V)
    chosen = probs.gather(-1, roll.completion_ids[..., None])  # (B, T, 1)
    mass_above = (probs * (probs > chosen)).sum(-1)  # (B, T) mass of strictly likelier tokens
    assert (mass_above[roll.completion_mask.bool()] < 0.5 + 1e-6).all()
    tiny_p = generate(model, tokenizer, PROMPTS, max_new_tokens=8, top_p=1e-9,
                      generator=torch.Generator().manual_seed(0))
    greedy = generate(model, tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
    assert torch.equal(tiny_p.completion_ids, greedy.completion_ids)


def test_training_mode_restored_and_peft(model, tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(make_model(tokenizer, eos_bias=3.0),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    roll = generate(peft_model, tokenizer, PROMPTS, num_generations=2, max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0))
    assert peft_model.training
    logps = sequence_logps(peft_model, roll.prompt_ids, roll.prompt_mask, roll.completion_ids,
                           roll.completion_mask)
    assert logps.requires_grad  # the trainer backpropagates through it
    assert torch.allclose(logps.detach(), roll.logps, atol=1e-5)
    model.eval()
    generate(model, tokenizer, PROMPTS[:1], max_new_tokens=2, greedy=True)
    assert not model.training
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tokenizer, PROMPTS, temperature=0.0)
