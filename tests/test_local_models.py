"""The local Qwen2-like and Llama-3-like folders load offline like downloaded instruct models."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from dphrl_mini.local_models import build_local_model


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def folder(request, tmp_path_factory):
    return request.param, build_local_model(tmp_path_factory.mktemp(request.param), arch=request.param)


def test_folder_loads_with_auto_classes(folder):
    arch, path = folder
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == {"qwen2": "qwen2", "llama3": "llama"}[arch]
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 1e6
    text = "3 5 7 -> 22: 7*3+5"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_special_tokens_follow_the_family(folder):
    arch, path = folder
    tokenizer = AutoTokenizer.from_pretrained(path)
    stops = GenerationConfig.from_pretrained(path).eos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    if arch == "qwen2":
        assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
        assert prompt.endswith("<|im_start|>assistant\n")
        assert stops == tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    else:
        assert tokenizer.pad_token is None and tokenizer.eos_token == "<|end_of_text|>"
        assert prompt.startswith("<|begin_of_text|><|start_header_id|>user")
        assert stops == tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
        bos = tokenizer.bos_token_id  # the template and the tokenizer both add it, as Llama-3's do
        assert tokenizer(prompt).input_ids[:2] == [bos, bos]
        assert tokenizer(prompt, add_special_tokens=False).input_ids.count(bos) == 1


def test_unknown_arch_or_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        build_local_model(tmp_path, arch="gpt2")
    with pytest.raises(ValueError, match="unknown shape"):
        build_local_model(tmp_path, shape="7b")
