"""The trainer's log-prob forward, packed: every distinct prompt once, no padding.

``packed_logps`` returns what ``rollout.sequence_logps`` returns (same values and gradients, up to
float rounding) from fewer tokens. A batch of B (prompt, completion) rows, where the G completions
of a group share their prompt, is laid out as a few packed rows

    [prompt_a, completion_a1, ..., completion_aG, prompt_b, completion_b1, ...]

with padding dropped, and a 4-D attention mask that shows every token exactly what it sees in the
padded layout: a prompt token sees the earlier tokens of its prompt; a completion token sees its
prompt and the earlier tokens of its own completion. Position ids restart at the prompt length for
every completion. The logits that predict each completion token are gathered back to (B, T).

The forward then runs over (distinct prompts x P + real completion tokens) instead of
B x (P + T): the G-fold copies of each prompt and the padding up to the longest completion are
gone. Attention inside a packed row is dense under the mask, so a row holds at most
``pack_factor`` x (longest prompt + longest completion) tokens (a group longer than that is split
over several rows, its prompt repeated): attention then costs at most ``pack_factor`` times that of
the padded layout, per sequence. One forward pass, so it works with gradient checkpointing and DDP.
It needs an attention implementation that takes a 4-D mask ("sdpa", "eager"); with any other
(e.g. "flash_attention_2") it falls back to ``sequence_logps``, as it does for empty prompts or
completion masks that are not right-padded.
"""

from __future__ import annotations

import torch

from .rollout import completion_logps, sequence_logps

MASKED_ATTENTION = ("sdpa", "eager")


def _unwrap(model):
    """The model inside a DistributedDataParallel wrapper (accelerate prepares one per process)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def attention_implementation(model) -> str | None:
    """The model's attention implementation (also through a DDP wrapper)."""
    return getattr(getattr(_unwrap(model), "config", None), "_attn_implementation", None)


def _pack(prompts: list[tuple[int, ...]], lengths: list[int], cap: int) -> list[list[tuple[tuple, list[int]]]]:
    """Greedy packing: rows of (prompt, [batch rows of its completions]) parts, each row at most
    ``cap`` tokens, except that a row always takes at least one prompt with one completion."""
    groups: dict[tuple, list[int]] = {}
    for row, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(row)
    packed, current, used = [], [], 0
    for prompt, members in groups.items():
        part = None
        for row in members:
            need = lengths[row] + (len(prompt) if part is None else 0)
            if current and used + need > cap:  # start a new packed row (the prompt is repeated there)
                packed.append(current)
                current, used, part = [], 0, None
                need = lengths[row] + len(prompt)
            if part is None:
                part = (prompt, [])
                current.append(part)
            part[1].append(row)
            used += need
    if current:
        packed.append(current)
    return packed


def _layout(prompts: list[tuple[int, ...]], completions: list[list[int]], lengths: list[int], width: int, cap: int):
    """The packed rows as tensors: input ids, position ids, part (one prompt and its completions,
    -1 = padding) and member (0 = prompt, k = its k-th completion), each (R, L); and for every
    completion its packed row (B,) and the packed position of the logit predicting each token (B, T)."""
    tokens, positions, parts, members = [], [], [], []
    packed_row = [0] * len(prompts)
    source = [[0] * width for _ in prompts]
    part_id = 0
    for r, row_parts in enumerate(_pack(prompts, lengths, cap)):
        ids, pos, part, member = [], [], [], []
        for prompt, rows in row_parts:
            part_id += 1
            last_prompt = len(ids) + len(prompt) - 1
            ids += prompt
            pos += range(len(prompt))
            part += [part_id] * len(prompt)
            member += [0] * len(prompt)
            for k, row in enumerate(rows, start=1):
                n, start = lengths[row], len(ids)
                ids += completions[row][:n]
                pos += range(len(prompt), len(prompt) + n)  # positions as in the padded layout
                part += [part_id] * n
                member += [k] * n
                packed_row[row] = r
                source[row][:n] = [last_prompt] + list(range(start, start + n - 1))
        for out, values in zip((tokens, positions, parts, members), (ids, pos, part, member)):
            out.append(values)
    length = max(map(len, tokens))

    def padded(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([r + [value] * (length - len(r)) for r in rows], dtype=torch.long)

    return (padded(tokens, 0), padded(positions, 0), padded(parts, -1), padded(members, -1),
            torch.tensor(packed_row), torch.tensor(source))


def _attention_mask(part: torch.Tensor, member: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, L, L) additive mask (0 = attend, dtype min = not), the form every transformers
    version takes: a query sees earlier keys of its own part that are the prompt or its own completion."""
    length = part.shape[1]
    index = torch.arange(length, device=part.device)
    causal = index[None, :] <= index[:, None]  # (L, L) [query, key]
    same_part = part[:, :, None] == part[:, None, :]  # (R, L, L)
    visible = (member[:, None, :] == 0) | (member[:, None, :] == member[:, :, None])  # prompt or own completion
    allowed = causal & same_part & visible & (part[:, None, :] >= 0)  # (R, L, L)
    allowed |= torch.eye(length, dtype=torch.bool, device=part.device)  # padding queries see themselves (no all-masked softmax row)
    return torch.zeros(allowed.shape, dtype=dtype, device=part.device).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def packed_logps(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                 completion_mask: torch.Tensor, temperature: float = 1.0, return_entropy: bool = False,
                 pack_factor: float = 4.0):
    """``rollout.sequence_logps`` from one packed forward (module docstring): logps (B, T), or
    (logps, entropy); zeros where ``completion_mask`` is 0. Rows with identical prompts (any
    padding side) share one copy of it; gradients flow unless the caller disables them."""
    device = next(model.parameters()).device
    batch, width = completion_ids.shape
    attention = attention_implementation(model)
    prompt_real = prompt_mask.bool().cpu()
    lengths = completion_mask.long().sum(-1).cpu()
    right_padded = torch.equal(torch.arange(width)[None] < lengths[:, None], completion_mask.bool().cpu())
    if attention not in MASKED_ATTENTION or not right_padded or not bool(prompt_real.any(-1).all()):
        return sequence_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                              temperature=temperature, return_entropy=return_entropy)
    prompt_rows = prompt_ids.cpu()
    prompts = [tuple(prompt_rows[i][prompt_real[i]].tolist()) for i in range(batch)]
    cap = int(pack_factor * (max(map(len, prompts)) + width))
    input_ids, position_ids, part, member, packed_row, source = _layout(
        prompts, completion_ids.cpu().tolist(), lengths.tolist(), width, cap)
    dtype = _unwrap(model).get_input_embeddings().weight.dtype  # that of the attention scores
    mask = _attention_mask(part.to(device), member.to(device), dtype)  # (R, 1, L, L), built on the device
    logits = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=position_ids.to(device),
                   use_cache=False).logits  # (R, L, V)
    logits = logits[packed_row.to(device)[:, None], source.to(device)]  # (B, T, V)
    return completion_logps(logits, completion_ids.to(device), completion_mask.to(device), temperature, return_entropy)
