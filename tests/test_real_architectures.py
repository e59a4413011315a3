"""Real instruct-model paths on local Qwen2-like and Llama-3-like folders (local_models.py): stop tokens
from generation_config, one BOS under a chat template, chat-format data, a custom reward in every
place, and presample -> train -> eval -> reload-in-PEFT through the command line."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model, LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from dphrl_mini.cli import main
from dphrl_mini.config import preset_config
from dphrl_mini.local_models import build_local_model
from dphrl_mini.models import load_policy
from dphrl_mini.rollout import generate
from dphrl_mini.trainer import Trainer

torch.set_num_threads(1)
ARCHS = ("qwen2", "llama3")
ROWS = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(1, 7) for b in range(1, 7)]
REWARD_FILE = '''def exact(prompts, completions, answer, **kwargs):
    return [float(answer_of(c) == a) for c, a in zip(completions, answer)]


def answer_of(completion):
    text = completion if isinstance(completion, str) else completion[0]["content"]
    return text.strip()


def parity(prompts, completions, **kwargs):
    return [float(len(answer_of(c)) % 2) for c in completions]
'''


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: build_local_model(root / arch, arch=arch) for arch in ARCHS}


def always(prompts, completions, **_):
    return [1.0] * len(completions)


def config(tmp_path, model, **overrides):
    values = dict(model=str(model), steps=1, train_size=8, prompts_per_step=2, num_generations=2,
                  max_new_tokens=6, eval_size=2, eval_n=2, eval_ks=[1, 2], presample_k=2, presample_threshold=0.5,
                  reference_batch_size=2, output_dir=str(tmp_path / "run"), progress=False, device="cpu",
                  updates_per_step=1, lora_rank=4, chat_template=True, eval_fraction=0.25)
    values.update(overrides)
    return preset_config("tiny-cpu", **values)


def test_rollouts_stop_at_generation_config_eos(folders):
    """A token that only generation_config names as a stop token ends the completion."""
    model = AutoModelForCausalLM.from_pretrained(folders["llama3"])
    tokenizer = AutoTokenizer.from_pretrained(folders["llama3"])
    first = generate(model, tokenizer, ["hello"], max_new_tokens=6, greedy=True).completion_ids[0, 0]
    assert int(first) != tokenizer.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, int(first)]
    rollout = generate(model, tokenizer, ["hello"], max_new_tokens=6, greedy=True)
    assert rollout.completion_mask.sum() == 1 and not rollout.truncated.any()


def quick_stopping_policy(folder):
    """The folder's policy with every token a stop token (random weights never emit EOS, and presample
    keeps only completions that stop)."""
    model, tokenizer = load_policy(str(folder), lora_rank=4, device="cpu")
    model.get_base_model().generation_config.eos_token_id = list(range(len(tokenizer)))
    return model, tokenizer


@pytest.mark.parametrize("arch", ARCHS)
def test_custom_reward_drives_presample_and_eval_with_one_bos(tmp_path, folders, arch):
    model, tokenizer = quick_stopping_policy(folders[arch])
    trainer = Trainer(config(tmp_path, folders[arch], method="dph_js"), model=model, tokenizer=tokenizer,
                      reward_fns=[always], train_dataset=ROWS)
    trainer.prepare_data()
    store = trainer.presampled.store
    assert len(trainer.presampled.near_perfect) == 8 and len(store) == 8  # the custom reward split the prompts
    bos = trainer.tokenizer.bos_token_id
    if bos is not None:  # Llama-3: the chat template writes the BOS; tokenizing must not add a second
        assert all(ids.count(bos) == 1 for ids in store.prompt_ids)
    assert trainer.evaluate("test").summary()["pass@1"] == 1.0


def test_chat_format_prompts_train(tmp_path, folders):
    seen = []

    def reward(prompts, completions, answer, **_):
        seen.append((prompts[0], completions[0], answer[0]))
        return [float(i % 2) for i in range(len(completions))]

    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": r["prompt"]}],
             "answer": r["answer"]} for r in ROWS]
    trainer = Trainer(config(tmp_path, folders["qwen2"], chat_template=False), reward_fns=[reward], train_dataset=rows)
    trainer.output_dir.mkdir()
    metrics = trainer.step()
    prompt, completion, answer = seen[0]
    assert prompt[1]["role"] == "user" and completion[0]["role"] == "assistant" and answer.isdigit()
    assert metrics["grad_norm"] > 0


def test_missing_pad_token_is_set_and_plain_models_are_refused_for_the_reference(tmp_path, folders):
    tokenizer = AutoTokenizer.from_pretrained(folders["llama3"])
    assert tokenizer.pad_token is None
    base = AutoModelForCausalLM.from_pretrained(folders["llama3"])
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = Trainer(config(tmp_path, folders["llama3"]), model=model, tokenizer=tokenizer, reward_fns=[always],
                      train_dataset=ROWS)
    assert trainer.tokenizer.pad_token == tokenizer.eos_token
    plain = AutoModelForCausalLM.from_pretrained(folders["llama3"])
    with pytest.raises(ValueError, match="needs the online reference"):
        Trainer(config(tmp_path, folders["llama3"], method="rkl"), model=plain, tokenizer=tokenizer,
                reward_fns=[always], train_dataset=ROWS)


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_presample_train_eval_reload(tmp_path, folders, arch, monkeypatch):
    """A user's JSONL and reward file, no code: presample, train, evaluate, then plain PEFT reloads the
    adapter from another working directory with the same logits."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "my_reward.py").write_text(REWARD_FILE)
    run = tmp_path / "run"
    common = ["--model", str(folders[arch]), "--dataset", str(data), "--reward", f"{tmp_path / 'my_reward.py'}:exact",
              "--reward", f"{tmp_path / 'my_reward.py'}:parity", "--reward-weights", "1", "0.5",
              "--chat-template", "--method", "dph_js", "--steps", "2", "--train-size", "8",
              "--prompts-per-step", "2", "--num-generations", "2", "--max-new-tokens", "6", "--eval-n", "2",
              "--eval-ks", "1", "2", "--presample-k", "2", "--presample-threshold", "0.5", "--correct-threshold", "0",
              "--reference-batch-size", "2", "--updates-per-step", "1", "--no-progress", "--device", "cpu",
              "--output-dir", str(run)]
    main(["presample", *common, "--lora-rank", "4", "--lora-target-modules", "all-linear"])
    assert len(json.loads((run / "presample.json").read_text())["pass_rates"]) == 8
    main(["train", *common, "--lora-rank", "4", "--lora-target-modules", "all-linear", "--splits", "test"])
    result = json.loads((run / "eval_test.json").read_text())
    assert result["split"] == "test" and result["correct"] == [2] * len(result["ids"])  # every total >= 0
    main(["eval", *common, "--splits", "test"])  # rank 16 in the config, 4 in adapter_config.json
    adapter = run / "adapter"
    card = (adapter / "README.md").read_text()
    assert "dph_js" in card and str(folders[arch]) in card
    assert (adapter / "tokenizer_config.json").exists()
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(folders[arch].resolve())

    ours, tokenizer = load_policy(str(folders[arch]), adapter_path=adapter, device="cpu")
    monkeypatch.chdir(tmp_path.parent)
    base = AutoModelForCausalLM.from_pretrained(saved["base_model_name_or_path"])
    theirs = PeftModel.from_pretrained(base, str(adapter))
    ids = AutoTokenizer.from_pretrained(adapter)("What is 2 plus 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in theirs.named_parameters() if "lora_B" in n)
