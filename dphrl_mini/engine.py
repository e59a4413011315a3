"""Rollout engine: faster sampling for the trainer, same distribution as ``rollout.generate``.

``rollout.generate`` stays the plain reference path (DESIGN.md §1 step 1). ``RolloutEngine`` adds
these, chosen by ``TrainConfig.rollout_engine`` (every mode but "plain" also runs the prompt
prefill once per distinct prompt and indexes its KV cache out to the prompt's G rows):

1. ``"merged"``: sample from a plain (non-PEFT) copy of the base model whose linear weights are
   ``W + scale * B @ A`` for the current LoRA adapters (refreshed before every rollout). PEFT's
   per-layer LoRA forward (two extra small matmuls and Python dispatch per linear layer) is gone
   from the decode loop; the trained model is never touched, so its parameters and gradients
   are exactly what they were. 4-bit / 8-bit bases are dequantized into the copy (compute dtype),
   i.e. the "dequantized bf16 copy" rollouts. The copy costs one extra set of weights in memory;
   on CUDA without room for it (1.2x its size free) the engine falls back to "plain" with a warning.
2. ``"static"`` (CUDA only): the merged copy, decoded with a preallocated ``StaticCache`` sized per
   batch (prompt width + ``max_new_tokens``), the one-token decode step compiled with
   ``torch.compile(mode="reduce-overhead")`` (CUDA graphs), Gumbel-max sampling on the device, and
   a host sync only every ``sync_every`` steps to stop once every row has finished.
   Rows that finished keep their slot (static shapes for the graph) until every row has; there
   is no batch compaction yet. NOT YET MEASURED on a GPU: the loop is tested for correctness on
   CPU (without compilation); the compiled CUDA path only has a GPU-only test, not yet run.
3. ``"auto"``: ``"merged"`` everywhere: ``"static"`` is opt-in until a GPU run shows that it
   matches the reference sampler. ``"plain"`` = ``rollout.generate`` on the PEFT model itself.

The trainer's log-prob forward shares prompts too, by packing (``packing.packed_logps``).

All modes return a ``rollout.Rollout`` whose ``logps`` are the temperature-scaled log-probs of the
sampled tokens under the current policy, as ``rollout.generate`` records them. With the same
``generator`` state, "merged" gives the same tokens as "plain" (up to float rounding of the merged
weights); "static" draws with Gumbel-max, another random stream of the same distribution.
"""

from __future__ import annotations

import copy as _copy
import warnings
from contextlib import contextmanager

import torch
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

from .rollout import CACHE_KWARG, Rollout, generate, generate_with

ENGINES = ("plain", "merged", "static", "auto")


def resolve_engine(name: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"merged"`` (also on CUDA: ``"static"`` is opt-in, not yet checked on a GPU);
    ``"static"`` off CUDA -> ``"merged"``."""
    if name not in ENGINES:
        raise ValueError(f"rollout_engine={name!r}: choose one of {ENGINES}")
    if name == "auto" or (name == "static" and torch.device(device).type != "cuda"):
        return "merged"
    return name


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    """PEFT LoRA-wrapped modules of the base model, by their (plain-model) module name."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}


def _adapters_disabled(layers: dict[str, torch.nn.Module]) -> bool:
    return any(getattr(m, "disable_adapters", False) for m in layers.values())


def _plain_weight(module: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """A linear layer's weight as a dense tensor (dequantizes bitsandbytes 4/8-bit)."""
    weight = module.weight
    if type(weight).__name__ in ("Params4bit", "Int8Params"):
        from peft.utils.integrations import dequantize_bnb_weight

        state = getattr(weight, "quant_state", None) or getattr(module, "state", None)
        if getattr(state, "packing_format_for_cpu", False):  # dequantizing these gives garbage
            raise ValueError("these 4-bit weights were repacked for bitsandbytes' bf16 CPU kernel; load the model "
                             "with dphrl_mini.models.load_policy (which switches that kernel off), or set "
                             "support_avx512bf16_for_cpu=False on every Linear4bit before its first forward")
        return dequantize_bnb_weight(weight, state).to(dtype)
    return weight.detach().to(dtype)


class MergedCopy:
    """A plain copy of a PEFT model's base with the LoRA deltas folded into its weights.

    ``refresh(adapters=True)`` rewrites only the LoRA-targeted weights (``base + delta``, or just
    ``base`` when ``adapters=False`` = the online reference) and any trainable non-LoRA parameter.
    """

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.source = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.layers = _lora_layers(model)
        self.dtype = dtype or self._compute_dtype(base)
        device = next(base.parameters()).device
        config = _copy.deepcopy(base.config)
        config.use_cache = True
        for key in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, key):
                delattr(config, key)
        with torch.device(device):
            self.model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self.model.eval().requires_grad_(False)
        self.model.generation_config = _copy.deepcopy(base.generation_config)
        self._targets = dict(self.model.named_parameters())
        self._sources = self._source_map(base)
        with torch.no_grad():
            for name, (module, attr) in self._sources.items():
                self._targets[name].copy_(self._read(module, attr))

    @staticmethod
    def _compute_dtype(base) -> torch.dtype:
        dtypes = [p.dtype for p in base.parameters() if p.dtype.is_floating_point]
        q = getattr(base.config, "quantization_config", None)
        compute = getattr(q, "bnb_4bit_compute_dtype", None) if q is not None else None
        if isinstance(compute, str):
            compute = getattr(torch, compute)
        return compute or (max(set(dtypes), key=dtypes.count) if dtypes else torch.float32)

    def _source_map(self, base) -> dict[str, tuple[torch.nn.Module, str]]:
        """Plain parameter name -> (module in the PEFT base that holds it, attribute)."""
        modules = dict(base.named_modules())
        out = {}
        for name in self._targets:
            owner, attr = name.rsplit(".", 1)
            if owner in self.layers:
                out[name] = (self.layers[owner].base_layer, attr)
            elif owner in modules:
                out[name] = (modules[owner], attr)
            else:
                raise ValueError(f"merged copy: no source for parameter {name!r}")
        return out

    def _read(self, module: torch.nn.Module, attr: str) -> torch.Tensor:
        if attr == "weight" and isinstance(module, torch.nn.Linear):
            return _plain_weight(module, self.dtype)
        return getattr(module, attr).detach().to(self.dtype)

    @torch.no_grad()
    def refresh(self, adapters: bool = True) -> torch.nn.Module:
        """Fold the current LoRA weights in (or leave them out) and return the plain model."""
        for owner, layer in self.layers.items():
            weight = _plain_weight(layer.base_layer, torch.float32)
            if adapters:
                for name in layer.active_adapters:
                    if name in layer.lora_A:
                        weight = weight + layer.get_delta_weight(name).float()
            self._targets[f"{owner}.weight"].copy_(weight)
        for name, (module, attr) in self._sources.items():  # e.g. modules_to_save, full fine-tuning
            param = getattr(module, attr)
            if isinstance(param, torch.nn.Parameter) and param.requires_grad and name.rsplit(".", 1)[0] not in self.layers:
                self._targets[name].copy_(param.detach())
        return self.model

def _distinct_rows(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row of every distinct value of ``index``, inverse map row -> distinct slot)."""
    values, inverse = torch.unique(index, return_inverse=True)
    rows = torch.arange(len(index), device=index.device)
    first = torch.full((len(values),), len(index), device=index.device).scatter_reduce(0, inverse, rows, "amin")
    return first, inverse


def _prefill_distinct(model, prompt_ids, prompt_mask, index):
    """One forward over each distinct prompt (the G copies of a prompt share it): returns the
    last-position logits (b, V) and a DynamicCache with one row per sequence, or None when rows
    with the same ``index`` do not hold the same prompt."""
    first, inverse = _distinct_rows(index.to(prompt_ids.device))
    ids, mask = prompt_ids[first], prompt_mask[first]
    if not (torch.equal(ids[inverse], prompt_ids) and torch.equal(mask[inverse], prompt_mask)):
        return None
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                   **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]  # (u, V)
    cache.batch_select_indices(inverse)  # (u, ...) -> (b, ...)
    return logits[inverse], cache


@torch.no_grad()
def _sample_chunk_shared(model, prompt_ids, prompt_mask, index, max_new_tokens, temperature, top_p, greedy,
                         generator, stop_ids, pad_token_id):
    """``rollout._sample_chunk`` with a shared prefill per distinct prompt (same random stream)."""
    from .rollout import _sample_chunk, decode

    prefill = _prefill_distinct(model, prompt_ids, prompt_mask, index)
    if prefill is None:
        return _sample_chunk(model, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, greedy,
                             generator, stop_ids, pad_token_id)
    logits, cache = prefill
    return decode(model, logits, cache, prompt_mask, max_new_tokens, temperature, top_p, greedy,
                  generator, stop_ids, pad_token_id)


def _gumbel_next_token(logits: torch.Tensor, temperature: float, top_p: float, greedy: bool,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Device-side sampling by Gumbel-max (argmax of logprobs + Gumbel noise): no host sync."""
    logprobs = torch.log_softmax(logits.float() / (1.0 if greedy else temperature), dim=-1)  # (b, V)
    if greedy:
        tokens = logprobs.argmax(-1)
    else:
        scores = logprobs
        if top_p < 1.0:
            sorted_lp, order = logprobs.sort(dim=-1, descending=True)
            probs = sorted_lp.exp()
            drop = probs.cumsum(-1) - probs > top_p  # never the first
            scores = logprobs.scatter(-1, order, sorted_lp.masked_fill(drop, float("-inf")))
        u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(min=1e-20)
        tokens = (scores - torch.log(-torch.log(u))).argmax(-1)  # (b,)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class StaticDecoder:
    """KV-cached sampling with a preallocated ``StaticCache`` and an optionally compiled decode step."""

    def __init__(self, model: torch.nn.Module, compile: bool | None = None, sync_every: int = 8):
        self.model = model
        device = next(model.parameters()).device
        self.compile = device.type == "cuda" if compile is None else compile
        self.sync_every = sync_every
        self._step = self._decode
        if self.compile:  # GPU: CUDA graphs via torch.compile; NOT YET MEASURED
            self._step = torch.compile(self._decode, mode="reduce-overhead", fullgraph=False, dynamic=False)

    def _decode(self, input_ids, position_ids, cache_position, attention_mask, cache):
        return self.model(input_ids=input_ids, position_ids=position_ids, cache_position=cache_position,
                          attention_mask=attention_mask, **{CACHE_KWARG: cache}, use_cache=True).logits[:, -1]

    @torch.no_grad()
    def sample(self, prompt_ids, prompt_mask, index, max_new_tokens, temperature, top_p, greedy, generator,
               stop_ids: torch.Tensor, pad_token_id: int):
        b, P = prompt_ids.shape
        L = P + max_new_tokens
        cache = StaticCache(config=self.model.config, max_cache_len=L)
        attention_mask = torch.cat([prompt_mask, prompt_mask.new_zeros(b, max_new_tokens)], 1)  # (b, L)
        position_ids = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        next_position = position_ids[:, -1:] + 1  # (b, 1)
        prefill = _prefill_distinct(self.model, prompt_ids, prompt_mask, index)
        if prefill is None:
            logits = self.model(input_ids=prompt_ids, attention_mask=attention_mask, position_ids=position_ids,
                                cache_position=torch.arange(P, device=prompt_ids.device), **{CACHE_KWARG: cache},
                                use_cache=True, logits_to_keep=1).logits[:, -1]
        else:  # shared prefill, copied into the preallocated cache
            logits, shared = prefill
            for i, layer in enumerate(shared.layers):
                cache.update(layer.keys, layer.values, i, {"cache_position": torch.arange(P, device=prompt_ids.device)})
        tokens = torch.full((b, max_new_tokens), pad_token_id, dtype=torch.long, device=prompt_ids.device)
        logps = torch.zeros(b, max_new_tokens, device=prompt_ids.device)
        masks = torch.zeros(b, max_new_tokens, dtype=torch.long, device=prompt_ids.device)
        finished = torch.zeros(b, dtype=torch.bool, device=prompt_ids.device)
        cache_position = torch.tensor([P], device=prompt_ids.device)
        t = 0
        for t in range(max_new_tokens):
            token, logp = _gumbel_next_token(logits, temperature, top_p, greedy, generator)
            masks[:, t] = (~finished).long()
            tokens[:, t] = token.masked_fill(finished, pad_token_id)
            logps[:, t] = logp.masked_fill(finished, 0.0)
            finished = finished | torch.isin(token, stop_ids)
            if t + 1 == max_new_tokens or ((t + 1) % self.sync_every == 0 and bool(finished.all())):
                break
            attention_mask[:, P + t] = 1
            logits = self._step(tokens[:, t:t + 1].clone(), next_position.clone(), cache_position.clone(),
                                attention_mask, cache).clone()
            next_position += 1
            cache_position += 1
        width = int(masks.sum(0).nonzero().max()) + 1 if masks.any() else 1  # drop all-pad columns
        return tokens[:, :width], masks[:, :width], logps[:, :width]


class RolloutEngine:
    """``RolloutEngine(model, "auto").generate(tokenizer, prompts, ...)`` -> ``Rollout``.

    ``sampling_model(adapters=True)`` is a context manager yielding the model to sample from
    (the merged copy, or the PEFT model itself for "plain"), for callers such as ``evaluate``.
    """

    def __init__(self, model, mode: str = "auto", sync_every: int = 8, compile: bool | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.mode = resolve_engine(mode, self.device)
        self._merged: MergedCopy | None = None
        self._static: StaticDecoder | None = None
        self._sync_every, self._compile = sync_every, compile

    def _copy(self) -> MergedCopy:
        if self._merged is None:
            self._merged = MergedCopy(self.model)
        return self._merged

    def _copy_fits(self) -> bool:
        """CUDA: is there room for the merged copy (1.2x its size)? If not, sample on the PEFT model."""
        if self._merged is not None or self.device.type != "cuda":
            return True
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        numel = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in base.parameters())
        size = numel * torch.empty((), dtype=MergedCopy._compute_dtype(base)).element_size()
        if torch.cuda.mem_get_info(self.device)[0] > 1.2 * size:
            return True
        warnings.warn(f"rollout_engine={self.mode!r}: no GPU memory for a {size / 2**30:.1f} GiB merged copy; "
                      "sampling from the PEFT model (rollout_engine='plain')")
        self.mode = "plain"
        return False

    @contextmanager
    def sampling_model(self, adapters: bool | None = None):
        """The model to sample from; ``adapters=None`` follows the PEFT model's current state
        (off inside ``reference_mode``)."""
        if self.mode == "plain" or not self._copy_fits():
            if adapters is False and hasattr(self.model, "disable_adapter"):
                with self.model.disable_adapter():
                    yield self.model
            else:
                yield self.model
            return
        merged = self._copy()
        if adapters is None:
            adapters = not _adapters_disabled(merged.layers)
        yield merged.refresh(adapters)

    def generate(self, tokenizer, prompts: list[str], num_generations: int = 1, max_new_tokens: int = 32,
                 temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
                 batch_size: int | None = None, generator: torch.Generator | None = None,
                 progress: bool = False, adapters: bool | None = None, add_special_tokens: bool = True) -> Rollout:
        """Same arguments and result as ``rollout.generate``."""
        kwargs = dict(num_generations=num_generations, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, greedy=greedy, batch_size=batch_size, generator=generator, progress=progress,
                      add_special_tokens=add_special_tokens)
        with self.sampling_model(adapters) as model:
            if self.mode == "plain":
                return generate(model, tokenizer, prompts, **kwargs)
            if self.mode == "merged":
                return merged_generate(model, tokenizer, prompts, **kwargs)
            if self._static is None or self._static.model is not model:
                self._static = StaticDecoder(model, compile=self._compile, sync_every=self._sync_every)
            return static_generate(self._static, tokenizer, prompts, **kwargs)


def static_generate(decoder: StaticDecoder, tokenizer, prompts: list[str], **kwargs) -> Rollout:
    """``rollout.generate`` with the ``StaticDecoder`` loop (Gumbel-max sampling)."""
    return generate_with(decoder.sample, decoder.model, tokenizer, prompts, **kwargs)


def merged_generate(model, tokenizer, prompts: list[str], **kwargs) -> Rollout:
    """``rollout.generate`` with one shared prefill per prompt (same random stream, same tokens)."""
    return generate_with(lambda *a: _sample_chunk_shared(model, *a), model, tokenizer, prompts, **kwargs)
