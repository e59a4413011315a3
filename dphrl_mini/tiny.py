"""The project's own tiny model: a character-level Llama that every run can load without the hub.

The hub is unreachable in tests and CI, so the project ships its own policy (DESIGN.md §2). This
module is what a run needs of it; the recipe that trains it is ``tiny_build.py``
(``python -m dphrl_mini.tiny_build``), which a run never imports.

1. **Tokenizer.** A real Hugging Face tokenizer (``tokenizers`` WordLevel model) whose vocabulary
   is the specials ``<pad> <bos> <eos> <unk>`` (ids 0-3), ``"\\n"`` and printable ASCII
   ``chr(32..126)``. A pre-tokenizer splits every character; a ``TemplateProcessing``
   post-processor prepends ``<bos>``; ``padding_side="left"``. It reloads with
   ``AutoTokenizer.from_pretrained``.
2. **Model.** A small ``LlamaForCausalLM`` (4 layers, 4 heads, 2 KV heads (GQA), tied
   embeddings, 256 positions, ~1.8M parameters, fp32 safetensors < 9 MB), committed in
   ``dphrl_mini/assets/tiny`` with a README: the command that rebuilds it and its measured figures.
3. **Names.** ``BUILT_IN`` names the one built-in model, ``tiny``; ``RETIRED`` maps former names to
   it (an alias) or to the git commit that holds their weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from .tiny_build import TinyConfig

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3
CHARS = ("\n",) + tuple(chr(i) for i in range(32, 127))
ASSET_ROOT = Path(__file__).resolve().parent / "assets"
ASSET_DIR = ASSET_ROOT / "tiny"


def build_tokenizer(model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII + newline, ``<bos>`` added, left padding."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.decoder = decoders.Fuse()  # join characters back without spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """``save_pretrained``, naming the class ``PreTrainedTokenizerFast`` so transformers 4.x loads it too."""
    tokenizer.save_pretrained(out_dir)
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 writes "TokenizersBackend"
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def tiny_model_config(cfg: "TinyConfig", vocab_size: int) -> LlamaConfig:
    """The Llama architecture of the tiny model (GQA, tied embeddings)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=SPECIAL_TOKENS.index("<bos>"),
        eos_token_id=SPECIAL_TOKENS.index("<eos>"),
        pad_token_id=SPECIAL_TOKENS.index("<pad>"),
    )


BUILT_IN = {
    "tiny": lambda: {"steps": 1600, "lr": 3e-3, "optimizer": "muon", "countdown_problems": 4000,
                     "sql_problems": 2000, "countdown_ood_pretrain_problems": 3411, "sql_ood_pretrain_problems": 631,
                     "rft_rounds": 1, "rft_steps": 150, "rft_samples": 16, "rft_sql_problems": 200,
                     "rft_countdown_ood_pretrain_problems": 500},
}
"""The built-in model (``dphrl_mini/assets/tiny``) and the ``TinyConfig`` overrides that rebuild it
when it is missing (about 15 minutes on a 2-core CPU). A rebuild repeats the recipe, not the weights
bit for bit: the committed weights carry the measured figures of its README."""

RETIRED = {"tiny-muon": None, "tiny-rft": "55326b2", "tiny-rft2": "55326b2", "tiny-rft3": "55326b2",
           "tiny-30min": "55326b2", "tiny-30min2": "55326b2"}
"""Former built-in names: ``tiny-muon`` is ``tiny`` under its old name; the others were retired and
live in git history (``dphrl_mini/assets/NAME`` at the commit given)."""


def tiny_model_path(name: str = "tiny") -> Path:
    """A built-in checkpoint (``BUILT_IN``); if it is missing from the package, build one into a
    cache dir (slow, once)."""
    if name not in BUILT_IN:
        raise ValueError(f"built-in model must be one of {sorted(BUILT_IN)}, got {name!r}")
    if (ASSET_ROOT / name / "model.safetensors").exists():
        return ASSET_ROOT / name
    cache = Path(os.environ.get("DPHRL_CACHE", Path.home() / ".cache" / "dphrl_mini")) / name
    if not (cache / "model.safetensors").exists():
        logger.warning("%s checkpoint missing from the package; building it into %s (~15 min)", name, cache)
        from .tiny_build import build_tiny_model  # the recipe, only when the weights are missing

        build_tiny_model(cache, **BUILT_IN[name]())
    return cache
