"""Load a policy: base causal LM (optionally 4/8-bit) + LoRA adapters, and its online reference.

Behaviour of ``load_policy`` (DESIGN.md §2-3):

1. ``"tiny"`` / ``"dphrl-mini/tiny"`` is the project's own character-level model
   (``tiny.tiny_model_path``; former names: ``tiny.RETIRED``);
   anything else is a Hugging Face id or local path loaded with ``AutoModelForCausalLM`` /
   ``AutoTokenizer``. A local folder is made absolute (so the adapter's
   ``base_model_name_or_path`` resolves from any working directory); a path that does not exist
   is an error.
2. ``dtype="auto"`` is bfloat16 on CUDA and float32 on CPU; on a GPU without native bf16 (e.g. a
   T4, where bf16 would be emulated) it is float32, with a warning; ``device="auto"`` is CUDA when
   present.
3. ``quantization="4bit"`` is QLoRA's NF4 with double quantization (compute dtype = ``dtype``);
   ``"8bit"`` is LLM.int8. Both go through ``peft.prepare_model_for_kbit_training``. bitsandbytes
   >= 0.46 also runs 4-bit on CPU, which the tests use with the tiny model; its bf16 CPU kernel
   (eval mode only) is switched off so that rollouts, old log-probs and the training forward all
   see the same fp32 policy.
4. LoRA (``peft.LoraConfig``, task ``CAUSAL_LM``) on ``"all-linear"`` by default; explicitly named
   target modules must exist, else a ``ValueError`` lists the linear modules there are.
   ``adapter_path`` resumes a saved adapter (trainable).
5. Gradient checkpointing is the non-reentrant kind; input embeddings require grad so that it
   also works when the base is frozen.
6. The tokenizer pads on the left (generation); a missing pad token becomes the EOS token.
7. ``save_adapter`` writes a self-contained adapter folder: PEFT's files, the tokenizer and a short
   model card (base model, method, config).

The reference policy of the KL / divergence terms is the *same* model with the adapters switched
off (``reference_mode``), never a second copy. ``model_fingerprint`` identifies the base model so
that stored reference log-probs are never reused with another one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import yaml

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)
_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


def resolve_model_path(name_or_path: str) -> str:
    """``"tiny"`` -> the built-in checkpoint directory; an existing local folder -> its
    absolute path; a hub id (``name`` or ``owner/name``) unchanged; a missing local path -> ``ValueError``."""
    from .sources import looks_like_path
    from .tiny import BUILT_IN, RETIRED, tiny_model_path

    built_in = str(name_or_path).removeprefix("dphrl-mini/")
    if built_in in RETIRED and RETIRED[built_in] is None:
        warnings.warn(f"built-in model {built_in!r} is now called 'tiny'")
        built_in = "tiny"
    elif built_in in RETIRED:
        raise ValueError(f"built-in model {built_in!r} was retired; the built-in model is 'tiny'. Its weights are "
                         f"in git history: `git show {RETIRED[built_in]}:dphrl_mini/assets/{built_in}/model.safetensors`")
    if built_in in BUILT_IN:
        return str(tiny_model_path(built_in))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    if looks_like_path(str(name_or_path)):
        raise ValueError(f"model {name_or_path!r}: no such folder (a hub id is NAME or OWNER/NAME)")
    return str(name_or_path)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Compute capability 8.0 or more (Ampere); older GPUs only emulate bf16."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA GPU with native bf16, float32 elsewhere (CPU bf16 matmuls are slow
    and lossy; older GPUs such as the T4 would emulate bf16 silently, and fp16 would need loss scaling)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        if cuda_has_native_bf16(device):
            return torch.bfloat16
        logger.warning("dtype='auto': this GPU has no native bfloat16; computing in float32 "
                       "(set dtype='float16' or 'bfloat16' explicitly to override)")
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r}: use 'auto', 'bfloat16', 'float16' or 'float32'")
    return _DTYPES[dtype]


def quantization_config(quantization: str | None, compute_dtype: torch.dtype):
    """``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quant) or ``"8bit"``; ``None`` for none."""
    if quantization is None:
        return None
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization={quantization!r}: use None, '4bit' or '8bit'")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"quantization={quantization!r} needs bitsandbytes: `pip install bitsandbytes`, "
                          "or set quantization=None")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the linear layers LoRA can target (``q_proj``, ``up_proj``, ...), lm_head excluded."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name}  # bnb Linear4bit/8bitLt subclass nn.Linear
    return sorted(names - {"lm_head"})


def check_target_modules(model: torch.nn.Module, target_modules: str | list[str]) -> str | list[str]:
    """``"all-linear"`` passes (also as a one-item list, as the CLI gives it); listed names (or
    comma-separated ones) must be linear layers."""
    items = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    wanted = [t.strip() for item in items for t in item.split(",") if t.strip()]
    if wanted == ["all-linear"]:
        return "all-linear"
    available = linear_module_names(model)
    missing = [t for t in wanted if t not in available]
    if missing or not wanted:
        raise ValueError(f"lora_target_modules: {missing or wanted} not found among the model's linear "
                         f"modules {available}; use 'all-linear' or a subset of those names")
    return wanted


def load_policy(name_or_path: str = "tiny", *, quantization: str | None = None, lora_rank: int = 16,
                lora_alpha: int = 32, lora_dropout: float = 0.0,
                lora_target_modules: str | list[str] = "all-linear", gradient_checkpointing: bool = False,
                dtype: str | torch.dtype = "auto", device: str = "auto", adapter_path: str | Path | None = None,
                trust_remote_code: bool = False) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Base model (+ optional 4/8-bit) with trainable LoRA adapters, and its left-padding tokenizer."""
    path = resolve_model_path(name_or_path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    bnb_config = quantization_config(quantization, torch_dtype)
    kwargs = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if bnb_config is not None:
        kwargs.update(quantization_config=bnb_config, device_map={"": torch_device})
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if bnb_config is None:
        model.to(torch_device)
    elif torch_device.type == "cpu":
        for module in model.modules():  # bitsandbytes would repack the 4-bit weights for a bf16 CPU
            if hasattr(module, "support_avx512bf16_for_cpu"):  # kernel used only in eval mode without
                module.support_avx512bf16_for_cpu = False  # grad: rollouts would sample another policy
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    gc_kwargs = {"use_reentrant": False}
    if bnb_config is not None:  # freezes the base, upcasts norms, enables checkpointing if asked
        with warnings.catch_warnings():  # peft calls the name transformers 5.x deprecates (not ours)
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing", category=FutureWarning)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                    gradient_checkpointing_kwargs=gc_kwargs)
    elif gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()  # the frozen embedding output must carry grad
    if gradient_checkpointing:
        model.config.use_cache = False

    with warnings.catch_warnings():  # peft reads the attribute transformers 5.x deprecates (not ours)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        if adapter_path is not None:
            peft_model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
        else:
            lora = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                              target_modules=check_target_modules(model, lora_target_modules),
                              bias="none", task_type="CAUSAL_LM")
            peft_model = get_peft_model(model, lora)
    return peft_model, tokenizer


@contextmanager
def reference_mode(model: PeftModel):
    """The online reference pi_ref: the same weights with every LoRA adapter switched off."""
    with model.disable_adapter():
        yield model


def _lean_forward(module, base: torch.nn.Module, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if module.disable_adapters or module.merged:  # e.g. reference_mode inside lean_lora
            return type(module).forward(module, x, *args, **kwargs)
        out = base(x, *args, **kwargs)  # (..., out)
        hidden = torch.nn.functional.linear(x, lora_a)  # (..., r)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), hidden.reshape(-1, hidden.shape[-1]), lora_b.t(),
                           alpha=scaling)  # W x + scaling * B A x, the add and the scaling fused in one matmul
        return flat.view(out.shape)
    return forward


@contextmanager
def lean_lora(model: torch.nn.Module):
    """LoRA layers compute ``W x + scaling * B (A x)`` with one fused ``addmm`` (same values and
    gradients as PEFT's ``base(x) + lora_B(lora_A(dropout(x))) * scaling``, less Python and two
    fewer full-size elementwise passes per layer, forward and backward). Only plain
    ``peft.tuners.lora.Linear`` layers with one active unmerged adapter, no dropout, no variant
    (DoRA), no LoRA bias and one dtype; every other layer keeps PEFT's forward. The patch is
    undone on exit; layers whose adapters are switched off (``reference_mode``) run PEFT's forward."""
    from peft.tuners.lora import Linear

    patched = []
    for module in model.modules():
        if type(module) is not Linear or module.merged or module.disable_adapters or len(module.active_adapters) != 1:
            continue
        name = module.active_adapters[0]
        if name not in module.lora_A:
            continue
        base, a, b = module.get_base_layer(), module.lora_A[name], module.lora_B[name]
        if (name in module.lora_variant or module.fan_in_fan_out or b.bias is not None
                or not isinstance(module.lora_dropout[name], torch.nn.Identity)
                or not base.weight.dtype == a.weight.dtype == b.weight.dtype):
            continue
        module.forward = _lean_forward(module, base, a.weight, b.weight, module.scaling[name])
        patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward


def model_fingerprint(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> str:
    """Short stable hash of the base architecture, a sample of its weights and the tokenizer vocab.

    The path/name is left out on purpose (the same checkpoint moved elsewhere is the same
    reference); storage details (dtype, quantization, cache flags) are left out too. The weight
    sample is the first rows of the input embedding cast to bfloat16, which neither the dtype
    choice nor 4/8-bit loading (embeddings stay unquantized) changes, but any retraining does.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config",
                "use_cache", "pad_token_id", "architectures", "_attn_implementation_autoset"):
        config.pop(key, None)
    embedding = base.get_input_embeddings().weight[:8, :64].detach()
    sample = embedding.to("cpu", torch.bfloat16).view(torch.int16).flatten().tolist()
    payload = json.dumps({"config": config, "vocab": sorted(tokenizer.get_vocab().items()), "weights": sample},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights count as their unpacked size."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


BASE_MODEL_FILE = "base_model.json"
"""Written next to a saved adapter: the base model's name and ``model_fingerprint`` (``dphrl-mini eval``
refuses to load the adapter onto another base)."""


def save_adapter(model: PeftModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path,
                 config: dict | None = None) -> Path:
    """A self-contained adapter folder: PEFT's adapter files, the tokenizer and a model card (README.md)
    naming the base model, the method and the training config, and ``BASE_MODEL_FILE``."""
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    base = next(iter(model.peft_config.values())).base_model_name_or_path
    config = config or {}
    method = config.get("method", "unknown") + ("+mara" if config.get("mara") else "")
    card = [
        "---", f"base_model: {base}", "library_name: peft", f"tags: [dphrl-mini, lora, {method}]", "---", "",
        "# LoRA adapter trained with dphrl-mini", "",
        f"- Base model: `{base}`", f"- Method: `{method}`",
        f"- Data: `{config.get('dataset') or config.get('task_source') or config.get('task', '')}`", "",
        "```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
        f'model = AutoPeftModelForCausalLM.from_pretrained("{folder}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{folder}")', "```", "",
        "## Training config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    (folder / "README.md").write_text("\n".join(card))
    record = {"model": config.get("model", base), "fingerprint": model_fingerprint(model, tokenizer)}
    (folder / BASE_MODEL_FILE).write_text(json.dumps(record))
    return folder
