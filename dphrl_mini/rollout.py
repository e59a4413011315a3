"""Sampling rollouts and scoring their tokens: our own batched, KV-cached sampling loop.

``generate`` repeats every prompt ``num_generations`` times (prompt i occupies rows
i*G..(i+1)*G-1, the groups of DESIGN.md §1 step 2), left-pads the prompts, and samples token by
token with a ``DynamicCache``: one prefill forward over the prompts, then one forward of one token
per step, stopping when every row has produced a stop token (``stop_token_ids``: the tokenizer's
EOS and every ``generation_config.eos_token_id``, e.g. Llama-3-Instruct's ``<|eot_id|>``).
Prompts rendered by a chat template already hold their special tokens: pass
``add_special_tokens=False`` so that they are not added twice (a second BOS). ``sequence_logps`` recomputes the per-token
log-probs of given completions with one full forward pass, the quantity the losses need.

Both functions divide the logits by ``temperature`` so the trainer's importance ratio compares
like with like. Departures from ``transformers.generate``:

1. The recorded log-probs are those of the temperature-scaled distribution *before* top-p
   truncation (the distribution ``sequence_logps`` sees), not of the truncated sampler.
2. Greedy decoding records log-probs at temperature 1 and ignores ``temperature``/``top_p``.
3. Tokens after the stop token are ``pad_token_id`` and masked out; the stop token itself is in the mask.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, LlamaForCausalLM

CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
"""The forward's KV-cache keyword: transformers 5.x renamed ``past_key_values`` to ``cache`` (for
every causal LM at once) and warns on the old name; older versions only know ``past_key_values``."""


@dataclass
class Rollout:
    prompt_ids: torch.Tensor        # (B, P) left-padded
    prompt_mask: torch.Tensor       # (B, P) 1 for real tokens
    completion_ids: torch.Tensor    # (B, T) right-padded with pad_token_id
    completion_mask: torch.Tensor   # (B, T) 1 for real completion tokens incl. the EOS
    logps: torch.Tensor             # (B, T) log-probs of the sampled tokens under the sampling policy
    completions: list[str]          # decoded completion texts, special tokens removed
    prompt_index: torch.Tensor      # (B,) long; rows grouped: prompt i occupies rows i*G..(i+1)*G-1
    truncated: torch.Tensor         # (B,) bool, no stop token within max_new_tokens

    def completion_id_lists(self) -> list[list[int]]:
        """Each completion's token ids without padding (its stop token included), TRL's ``completion_ids``."""
        lengths = self.completion_mask.sum(-1).long().tolist()
        return [ids[:n] for ids, n in zip(self.completion_ids.tolist(), lengths)]


def _pad_token_id(tokenizer) -> int:
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


def stop_token_ids(model, tokenizer) -> list[int]:
    """The union of the tokenizer's EOS and the model's ``generation_config.eos_token_id`` (an int or a list)."""
    config = model.generation_config
    extra = [] if config is None or config.eos_token_id is None else config.eos_token_id
    ids = [tokenizer.eos_token_id] + (extra if isinstance(extra, list) else [extra])
    return sorted({int(i) for i in ids if i is not None})


def _left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)  # (B, P)
    for row, s in enumerate(sequences):
        if s:
            ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids, mask


def _right_pad(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)


def _next_token(logits: torch.Tensor, temperature: float, top_p: float, greedy: bool,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row from (B, V) logits; return it (B,) and its log-prob (B,)."""
    if greedy:
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (B, V) temperature 1
        tokens = logprobs.argmax(dim=-1)  # (B,)
    else:
        logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, V)
        probs = logprobs.exp()  # (B, V)
        if top_p < 1.0:  # nucleus: keep the smallest prefix of sorted tokens with mass >= top_p
            sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # (B, V) never the first
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))  # (B, V)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _sample_chunk(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                  temperature: float, top_p: float, greedy: bool, generator, stop_ids: torch.Tensor,
                  pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KV-cached sampling for one chunk; returns completion ids, mask and log-probs, each (b, t)."""
    position_ids = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (b, P) real tokens count from 0
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids,
                   **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]  # (b, V)
    return decode(model, logits, cache, prompt_mask, max_new_tokens, temperature, top_p, greedy,
                  generator, stop_ids, pad_token_id)


def decode(model, logits: torch.Tensor, cache, prompt_mask: torch.Tensor, max_new_tokens: int,
           temperature: float, top_p: float, greedy: bool, generator, stop_ids: torch.Tensor,
           pad_token_id: int, compact_fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decode loop after a prefill (``logits`` (b, V) of the last prompt token, filled ``cache``).

    ``stop_ids`` (k,) are the stop tokens (``stop_token_ids``). Finished sequences stop costing
    work: once at least ``compact_fraction`` of the rows still in the batch have emitted a stop token, they are dropped from the batch and the KV cache
    (``cache.batch_select_indices``), so later steps only run the unfinished rows.
    """
    b, device = prompt_mask.shape[0], prompt_mask.device
    attention_mask = prompt_mask  # (a, P+t) for the a rows still in the batch
    next_position = (prompt_mask.cumsum(-1) - 1).clamp(min=0)[:, -1:] + 1  # (a, 1)
    rows = torch.arange(b, device=device)  # (a,) output row of each batch row
    done = torch.zeros(b, dtype=torch.bool, device=device)  # (a,) emitted EOS, not yet dropped
    out_tokens = torch.full((b, max_new_tokens), pad_token_id, dtype=torch.long, device=device)  # (b, T)
    out_mask = torch.zeros((b, max_new_tokens), dtype=torch.long, device=device)  # (b, T)
    out_logps = torch.zeros((b, max_new_tokens), device=device)  # (b, T)
    for t in range(max_new_tokens):
        live = ~done  # (a,) only unfinished rows draw a token (the random stream ignores the rest)
        token, logp = _next_token(logits[live], temperature, top_p, greedy, generator)  # (a',), (a',)
        out_tokens[rows[live], t], out_logps[rows[live], t], out_mask[rows[live], t] = token, logp, 1
        step_tokens = torch.full_like(rows, pad_token_id).masked_scatter(live, token)  # (a,)
        done = done | torch.isin(step_tokens, stop_ids)
        n_done = int(done.sum())  # the one host sync of the step
        if n_done == len(done) or t == max_new_tokens - 1:
            break
        if n_done >= max(1.0, compact_fraction * len(done)):  # drop finished rows from batch and cache
            keep = (~done).nonzero().squeeze(-1)  # (a',)
            cache.batch_select_indices(keep)
            rows, step_tokens, done = rows[keep], step_tokens[keep], done[keep]
            attention_mask, next_position = attention_mask[keep], next_position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)  # (a, P+t)
        logits = model(input_ids=step_tokens.unsqueeze(-1), attention_mask=attention_mask,
                       position_ids=next_position, **{CACHE_KWARG: cache}, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    width = t + 1
    return out_tokens[:, :width], out_mask[:, :width], out_logps[:, :width]  # (b, t) x3


def generate(model, tokenizer, prompts: list[str], num_generations: int = 1, max_new_tokens: int = 32,
             temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             batch_size: int | None = None, generator: torch.Generator | None = None,
             progress: bool = False, add_special_tokens: bool = True) -> Rollout:
    """Sample ``num_generations`` completions of every prompt (rows grouped per prompt).

    Works on plain Hugging Face causal LMs and PEFT-wrapped ones. Rows are processed in chunks of
    ``batch_size`` (all at once if None). ``generator`` (on the model's device) makes sampling
    reproducible. The model runs in eval mode under ``torch.no_grad``; its training mode is
    restored afterwards. Tensors of the returned :class:`Rollout` live on the model's device.
    """
    def sample(ids, mask, _prompt_index, *rest):
        return _sample_chunk(model, ids, mask, *rest)

    return generate_with(sample, model, tokenizer, prompts, num_generations=num_generations,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         greedy=greedy, batch_size=batch_size, generator=generator, progress=progress,
                         add_special_tokens=add_special_tokens)


def generate_with(sample, model, tokenizer, prompts: list[str], num_generations: int = 1,
                  max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
                  greedy: bool = False, batch_size: int | None = None,
                  generator: torch.Generator | None = None, progress: bool = False,
                  add_special_tokens: bool = True) -> Rollout:
    """``generate``'s batching and packaging around any chunk sampler (``engine.py`` has faster ones):
    ``sample(ids, mask, prompt_index, max_new_tokens, temperature, top_p, greedy, generator, stop_ids, pad)``
    returns completion ids, mask and log-probs, each (b, t)."""
    if num_generations < 1 or max_new_tokens < 1:
        raise ValueError(f"num_generations={num_generations} and max_new_tokens={max_new_tokens} must be >= 1")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0 (use greedy=True for argmax)")
    device = next(model.parameters()).device
    pad_token_id = _pad_token_id(tokenizer)
    stop_ids = torch.tensor(stop_token_ids(model, tokenizer), device=device)  # (k,)
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    rows = [ids for ids in encoded for _ in range(num_generations)]
    prompt_ids, prompt_mask = _left_pad(rows, pad_token_id)  # (B, P)
    prompt_index = torch.arange(len(prompts)).repeat_interleave(num_generations)  # (B,)
    batch_size = batch_size or len(rows)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(rows), batch_size), desc="generate", disable=not progress):
                ids, mask = prompt_ids[start:start + batch_size], prompt_mask[start:start + batch_size]
                first = int(mask.any(0).long().argmax())  # drop columns that are pad in every row
                chunks.append(sample(ids[:, first:].to(device), mask[:, first:].to(device),
                                     prompt_index[start:start + batch_size].to(device), max_new_tokens,
                                     temperature, top_p, greedy, generator, stop_ids, pad_token_id))
    finally:
        model.train(was_training)
    width = max(c[0].shape[1] for c in chunks)
    completion_ids = torch.cat([_right_pad(c[0], width, pad_token_id) for c in chunks])  # (B, T)
    completion_mask = torch.cat([_right_pad(c[1], width, 0) for c in chunks])  # (B, T)
    logps = torch.cat([_right_pad(c[2], width, 0.0) for c in chunks])  # (B, T)
    lengths = completion_mask.sum(-1).tolist()
    completions = tokenizer.batch_decode([ids[:n] for ids, n in zip(completion_ids.tolist(), lengths)],
                                         skip_special_tokens=True)
    stopped = (torch.isin(completion_ids, stop_ids.to(completion_ids.device)) & completion_mask.bool()).any(-1)  # (B,)
    return Rollout(prompt_ids.to(device), prompt_mask.to(device), completion_ids, completion_mask,
                   logps, completions, prompt_index.to(device), ~stopped)


def sequence_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                   temperature: float = 1.0, return_entropy: bool = False):
    """Per-token log pi(y_t | x, y_<t) of the completion tokens, from one forward over
    [prompt; completion] with logits / temperature. Returns logps (B, T), or (logps, entropy) each
    (B, T) with the entropy of the temperature-scaled next-token distribution; zeros where
    ``completion_mask`` is 0. Gradients flow unless the caller disables them.
    """
    device = next(model.parameters()).device
    T = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1).to(device)  # (B, P+T)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long().to(device)  # (B, P+T)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=T + 1).logits[:, :-1]  # (B, T, V) predicts y_t
    return completion_logps(logits, completion_ids.to(device), completion_mask.to(device), temperature, return_entropy)


def completion_logps(logits: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                     temperature: float = 1.0, return_entropy: bool = False):
    """From the (B, T, V) logits that predict each completion token: its log-prob under the
    temperature-scaled distribution (B, T), and optionally that distribution's entropy (B, T);
    zeros where ``completion_mask`` is 0."""
    logits = logits.float() / temperature  # (B, T, V)
    log_norm = torch.logsumexp(logits, dim=-1)  # (B, T)
    mask = completion_mask.bool()  # (B, T)
    logps = (logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - log_norm).masked_fill(~mask, 0.0)
    if not return_entropy:
        return logps
    logprobs = logits - log_norm.unsqueeze(-1)  # (B, T, V)
    entropy = -(logprobs.exp() * logprobs).sum(-1).masked_fill(~mask, 0.0)  # (B, T)
    return logps, entropy
