"""Local stand-ins for real instruct models: Qwen2-like and Llama-3-like folders, built offline.

The hub is unreachable in tests and CI, yet the paths a real instruct model takes (a byte-level
BPE tokenizer, a chat template, extra stop tokens in ``generation_config``, no pad token) must be
exercised. ``build_local_model`` writes a folder that ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` load exactly as they would a downloaded checkpoint:

* **Tokenizer.** A real byte-level BPE (``tokenizers``), trained here on the project's own task
  prompts and a few chat lines, with the family's special tokens and chat template:

  - ``"qwen2"``: ``<|endoftext|> <|im_start|> <|im_end|>``; ChatML template (a default system
    turn, as Qwen2.5-Instruct's); eos ``<|im_end|>``, pad ``<|endoftext|>``, no BOS;
    ``generation_config.eos_token_id = [<|im_end|>, <|endoftext|>]``.
  - ``"llama3"``: ``<|begin_of_text|> <|end_of_text|> <|start_header_id|> <|end_header_id|>
    <|eot_id|>``; the tokenizer prepends ``<|begin_of_text|>`` and so does the chat template (as
    Llama-3-Instruct's: tokenizing a templated prompt again with special tokens doubles the BOS);
    eos ``<|end_of_text|>`` with **no pad token**; the end of an assistant turn, ``<|eot_id|>``,
    is a stop token only through ``generation_config.eos_token_id = [<|end_of_text|>, <|eot_id|>]``.
* **Model.** Random weights (``seed``) in one of two shapes:

  - ``"tiny"``: 2 layers, width 128, GQA (4 heads, 2 KV heads), vocabulary = the tokenizer's
    (~600 tokens): ~0.4M parameters, saved in float32, built in seconds (CI).
  - ``"qwen2.5-0.5b"``: Qwen2.5-0.5B's real configuration (width 896, 24 layers, 14 heads,
    2 KV heads, MLP 4864, tied embeddings, **vocabulary 151,936** as in the real config, so the
    embedding and LM head have their real size) saved in bfloat16 (~1 GB). The locally trained
    tokenizer uses only its first few thousand ids; the rest of the rows are never produced,
    just as the real checkpoint's padding rows past its tokenizer's vocabulary. For speed and
    memory measurements, never for quality.

``python -m dphrl_mini.local_models OUT_DIR --arch llama3 --shape tiny`` builds one folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

from .tiny import save_tokenizer

ARCHS = ("qwen2", "llama3")
SHAPES = ("tiny", "qwen2.5-0.5b")
TOKENIZER_VOCAB = 2048  # an upper bound: the small corpus stops the merges near 600
MAX_POSITIONS = {"tiny": 1024, "qwen2.5-0.5b": 32768}

QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>")
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def training_corpus() -> list[str]:
    """Text the BPE merges are learned from: the built-in tasks' prompts and answers, plus chat lines."""
    from .tasks import countdown, math

    lines = [r["prompt"] + " " + "+".join(map(str, r["numbers"])) for r in countdown.make_dataset("train", 400)]
    lines += [r["prompt"] + " \\boxed{" + r["answer"] + "}" for r in math.make_dataset("train", 300)]
    lines += [f"SELECT name FROM t{i} WHERE price > {i} ORDER BY name; SELECT COUNT(*) FROM orders;"
              for i in range(50)]
    lines += ["You are a helpful assistant.", "user", "assistant", "system",
              "Think step by step, then give the final answer.", "The answer is 42."] * 20
    return lines


def build_tokenizer(arch: str, max_length: int = MAX_POSITIONS["tiny"]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``arch``'s special tokens, chat template, eos and pad."""
    specials = QWEN2_SPECIALS if arch == "qwen2" else LLAMA3_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    if arch == "qwen2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=QWEN2_CHAT_TEMPLATE,
            model_max_length=max_length, clean_up_tokenization_spaces=False)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token="<|end_of_text|>",
        additional_special_tokens=list(LLAMA3_SPECIALS[2:]), chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=max_length, clean_up_tokenization_spaces=False)


def build_config(arch: str, shape: str, vocab_size: int, special_ids: dict[str, int]):
    """The model configuration: ``shape``'s dimensions in ``arch``'s class, with its special ids."""
    if shape == "tiny":
        dims = dict(vocab_size=vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=256, tie_word_embeddings=True)
    else:  # Qwen2.5-0.5B's config.json
        dims = dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, intermediate_size=4864, tie_word_embeddings=True)
    dims.update(max_position_embeddings=MAX_POSITIONS[shape], rms_norm_eps=1e-6, hidden_act="silu")
    if arch == "qwen2":
        return Qwen2Config(**dims, rope_theta=1_000_000.0, bos_token_id=special_ids["<|endoftext|>"],
                           eos_token_id=special_ids["<|im_end|>"], pad_token_id=special_ids["<|endoftext|>"])
    return LlamaConfig(**dims, rope_theta=500_000.0, bos_token_id=special_ids["<|begin_of_text|>"],
                       eos_token_id=special_ids["<|end_of_text|>"])


def build_local_model(out_dir: str | Path, arch: str = "qwen2", shape: str = "tiny", seed: int = 0) -> Path:
    """Write a Qwen2-like or Llama-3-like model folder (random weights, local BPE tokenizer) to ``out_dir``.

    Returns the folder; it loads offline with ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {list(SHAPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch, MAX_POSITIONS[shape])
    specials = QWEN2_SPECIALS if arch == "qwen2" else LLAMA3_SPECIALS
    special_ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    config = build_config(arch, shape, len(tokenizer), special_ids)
    torch.manual_seed(seed)
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    model = (Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM)(config).to(dtype)
    stop = ["<|im_end|>", "<|endoftext|>"] if arch == "qwen2" else ["<|end_of_text|>", "<|eot_id|>"]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[special_ids[s] for s in stop],
        pad_token_id=special_ids["<|endoftext|>"] if arch == "qwen2" else None, do_sample=True)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=ARCHS, default="qwen2")
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_local_model(args.out_dir, args.arch, args.shape, args.seed))


if __name__ == "__main__":
    main()
