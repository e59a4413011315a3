"""Bring your own data and reward: loading, held-out splits, overlap refusal, reward specs, one-line errors,
and the Verifier driving presample, training and evaluation alike."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dphrl_mini.cli import build_parser, config_from_args, main
from dphrl_mini.config import preset_config
from dphrl_mini.rewards import Verifier
from dphrl_mini.sources import as_rows, held_out, load_reward, task_data
from dphrl_mini.tasks import math as math_task

torch.set_num_threads(1)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"{a} + {a} =", "answer": str(2 * a), "level": a % 3} for a in range(40)]


def config(tmp_path, **overrides):
    values = dict(steps=1, train_size=16, prompts_per_step=2, num_generations=2, max_new_tokens=4, eval_size=4,
                  ood_size=0, eval_n=2, eval_ks=[1, 2], presample_k=2, presample_threshold=0.5,
                  reference_batch_size=2, output_dir=str(tmp_path / "run"), progress=False, device="cpu",
                  updates_per_step=1)
    values.update(overrides)
    return preset_config("tiny-cpu", **values)


def exact(prompts, completions, answer, **_):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


# --- the command line keeps a given `none` ---------------------------------------------------------------

def test_none_on_the_command_line_is_kept():
    args = build_parser().parse_args(["train", "--preset", "one-gpu-qlora", "--quantization", "none",
                                      "--task-source", "none", "--optimizer", "adamw"])
    cfg = config_from_args(args)
    assert cfg.quantization is None and cfg.task_source is None
    assert config_from_args(build_parser().parse_args(["train", "--preset", "one-gpu-qlora"])).quantization == "4bit"


def test_rewards_repeat_and_lists_override():
    args = build_parser().parse_args(["train", "--reward", "a:f", "--reward", "b:g", "--reward-weights", "1", "0.5",
                                      "--eval-n", "4", "--eval-ks", "1", "2", "--eval-ks", "4"])
    cfg = config_from_args(args)
    assert cfg.reward == ["a:f", "b:g"] and cfg.reward_weights == [1.0, 0.5] and cfg.eval_ks == [4]


# --- datasets --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", "folder"])
def test_every_source_kind_loads(tmp_path, suffix):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list(ROWS)
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, ROWS)
    elif suffix == ".json":
        data.to_json(str(path), lines=False)
    elif suffix == ".csv":
        data.to_csv(str(path))
    elif suffix == ".parquet":
        data.to_parquet(str(path))
    else:
        data.save_to_disk(str(path))
    rows = as_rows(str(path), "x")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    assert {"id", "prompt", "answer", "level"} <= set(rows[0])


def test_held_out_split_is_disjoint_seeded_and_keeps_repeats_together():
    rows = as_rows(ROWS + ROWS[:5], "x")
    train, test = held_out(rows, 0.1, seed=3)
    assert len({r["prompt"] for r in test}) == 4
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert held_out(rows, 0.1, seed=3) == (train, test) and held_out(rows, 0.1, seed=4) != (train, test)


def test_dataset_rows_reach_rewards_with_every_column(tmp_path):
    cfg = config(tmp_path, dataset=str(write_jsonl(tmp_path / "d.jsonl", ROWS)), eval_fraction=0.25)
    data = task_data(cfg, reward_fns=[exact])
    assert len(data.train) == 16 and len(data.eval["test"]) == 4 and list(data.eval) == ["test"]
    seen = {}

    def spy(prompts, completions, answer, level, **kwargs):
        seen.update(prompts=prompts, answer=answer, level=level, kwargs=kwargs)
        return [0.0] * len(completions)

    rows = data.train[:2]
    Verifier([spy]).score([r["prompt"] for r in rows], ["x", "y"], {k: [r[k] for r in rows] for k in ("answer", "level")})
    assert seen["answer"] == [r["answer"] for r in rows] and seen["level"] == [r["level"] for r in rows]


def test_overlapping_eval_set_is_refused_with_the_count(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[:3] + [{"prompt": "new", "answer": "1", "level": 0}])
    cfg = config(tmp_path, dataset=str(train), eval_dataset=str(test), train_size=100)
    with pytest.raises(ValueError, match="shares 3 prompt"):
        task_data(cfg, reward_fns=[exact])


def test_python_datasets_and_lists_enter_the_same_way(tmp_path):
    datasets = pytest.importorskip("datasets")
    cfg = config(tmp_path)
    from_list = task_data(cfg, [exact], train_dataset=ROWS[:20], eval_dataset=ROWS[20:24])
    from_dataset = task_data(cfg, [exact], train_dataset=datasets.Dataset.from_list(ROWS[:20]),
                             eval_dataset=datasets.Dataset.from_list(ROWS[20:24]))
    assert from_list.train == from_dataset.train and from_list.eval == from_dataset.eval


@pytest.mark.parametrize("rows, match", [
    ([{"question": "q", "answer": "1"}], "no `prompt` column"),
    ([{"prompt": "q"}], r"needs column\(s\) \['answer'\]"),
    ([{"prompt": "q", "answer": "1"}, {"prompt": 3, "answer": "1"}], "row 1: `prompt` must be"),
])
def test_bad_datasets_fail_in_one_line(tmp_path, rows, match):
    cfg = config(tmp_path, dataset=str(write_jsonl(tmp_path / "d.jsonl", rows * 3)), eval_fraction=0.0)
    with pytest.raises(ValueError, match=match):
        task_data(cfg, reward_fns=[exact])


def test_missing_dataset_and_model_paths_fail_in_one_line(tmp_path):
    for missing in (str(tmp_path / "nope.jsonl"), str(tmp_path / "nope_folder"), "./data/train.parquet"):
        with pytest.raises(ValueError, match="no such file or folder"):
            as_rows(missing, "x")
    with pytest.raises(SystemExit, match="model './no/such/model': no such folder"):
        main(["train", "--model", "./no/such/model", "--output-dir", str(tmp_path / "r"), "--device", "cpu"])


def test_reward_specs_load_from_modules_and_files(tmp_path):
    assert load_reward("dphrl_mini.tasks.math:reward") is math_task.reward
    (tmp_path / "my_rewards.py").write_text("def length(prompts, completions, **kw):\n"
                                            "    return [float(len(c)) for c in completions]\n")
    fn = load_reward(f"{tmp_path / 'my_rewards.py'}:length")
    assert fn(["p"], ["abc"]) == [3.0]
    for bad, match in [("no_colon", "MODULE:FUNCTION"), ("no_such_module_xyz:f", "cannot import"),
                       ("dphrl_mini.tasks.math:nope", "no function"), (f"{tmp_path / 'x.py'}:f", "no such file")]:
        with pytest.raises(ValueError, match=match):
            load_reward(bad)


def test_weighted_rewards_and_the_threshold():
    def one(prompts, completions, **_):
        return [1.0] * len(completions)

    def length(prompts, completions, **_):
        return [float(len(c)) for c in completions]

    verifier = Verifier([one, length], reward_weights=[0.5, 0.25], correct_threshold=1.0)
    rewards, errors = verifier.score(["p", "p"], ["ab", "abc"], {})
    assert rewards.tolist() == [1.0, 1.25] and errors == 0
    assert verifier.is_correct(rewards).tolist() == [True, True]
    assert Verifier([one], correct_threshold=1.5).is_correct([1.0]).tolist() == [False]
    with pytest.raises(ValueError, match="2 reward weights for 1"):
        Verifier([one], reward_weights=[1.0, 2.0])


def test_chat_prompts_give_chat_completions_to_rewards():
    seen = {}

    def reward(prompts, completions, **_):
        seen.update(prompts=prompts, completions=completions)
        return [1.0] * len(completions)

    messages = [{"role": "user", "content": "hi"}]
    Verifier([reward]).score([messages], ["hello"], {})
    assert seen == {"prompts": [messages], "completions": [[{"role": "assistant", "content": "hello"}]]}


# --- the built-in math task ------------------------------------------------------------------------------

def test_math_file_splits_are_disjoint_and_prompts_carry_the_instruction():
    source = str(math_task.SAMPLE_PATH)
    train = math_task.make_dataset("train", 100, source=source)
    test = math_task.make_dataset("test", 100, source=source)
    assert train and test and not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(r["prompt"].endswith(math_task.INSTRUCTION) for r in train + test)
    assert math_task.with_instruction(train[0]["prompt"]) == train[0]["prompt"]  # never twice


def test_a_built_in_task_without_ood_rows_still_loads(tmp_path):
    """The one-gpu-qlora preset has ood_size=0: an empty split has no columns to check."""
    cfg = preset_config("one-gpu-qlora", task_source=None, train_size=4, eval_size=2, output_dir=str(tmp_path))
    data = task_data(cfg)
    assert len(data.train) == 4 and len(data.eval["test"]) == 2 and data.eval["ood"] == []
    assert data.verifier.name == "math" and data.verifier.solution_key is math_task.solution_key


def test_shift_split_is_opt_in_and_empty_for_a_task_without_one(tmp_path):
    """"shift" draws ood_size rows of a built-in task's shifted split; math has none (no rows, not an error)."""
    from dphrl_mini.experiments import default_splits, resolve_splits
    from dphrl_mini.tasks import countdown

    cfg = preset_config("tiny-cpu", train_size=4, eval_size=2, ood_size=3, output_dir=str(tmp_path))
    data = task_data(cfg)
    assert [r["id"] for r in data.eval["shift"]] == [r["id"] for r in countdown.make_dataset("shift", 3, seed=0)]
    assert "shift" not in default_splits(cfg) and resolve_splits(cfg, ["test", "shift"]) == ["test", "shift"]
    math_cfg = preset_config("one-gpu-qlora", task_source=None, train_size=4, eval_size=2, ood_size=2,
                             output_dir=str(tmp_path))
    assert task_data(math_cfg).eval["shift"] == []


def test_transfer_split_is_another_tasks_test_scored_by_its_verifier(tmp_path):
    """transfer_task: the other task's "test" rows, next to the run's own, each split with its verifier."""
    from dphrl_mini.experiments import default_splits, resolve_splits
    from dphrl_mini.tasks import countdown, sql

    cfg = preset_config("tiny-cpu", train_size=4, eval_size=2, ood_size=2, transfer_task="sql", transfer_size=3,
                        output_dir=str(tmp_path))
    data = task_data(cfg)
    assert data.verifier.name == "countdown" and data.eval_verifiers["transfer"].name == "sql"
    assert [r["id"] for r in data.eval["transfer"]] == [r["id"] for r in sql.make_dataset("test", 3, seed=0)]
    assert {r["id"] for r in data.eval["test"]} <= {r["id"] for r in countdown.make_dataset("test", 2, seed=0)}
    row = data.eval["transfer"][0]
    reward = data.eval_verifiers["transfer"].score([row["prompt"]], [row["gold_sql"]], {k: [v] for k, v in row.items()})
    assert reward[0].tolist() == [1.0]  # the gold query is correct under SQL's execution match
    plain = preset_config("tiny-cpu", train_size=4, eval_size=2)
    assert "transfer" not in task_data(plain).eval
    assert default_splits(cfg) == ["test", "ood", "transfer"] and default_splits(plain) == ["test", "ood"]
    with pytest.raises(ValueError, match="transfer_task"):  # asked for, never configured: one clear line
        resolve_splits(plain, ["test", "transfer"])
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        resolve_splits(plain, ["tset"])


# --- TRL's reward contract on the whole BYO path (rewards.py) -----------------------------------------------
TRL_REWARD_FILE = '''def reward(completions, answer, completion_ids, **kwargs):
    kwargs["log_extra"]("n_tokens", [len(ids) for ids in completion_ids])
    kwargs["log_metric"]("step_seen", float(kwargs["trainer_state"].global_step))
    return [float(a == "yes" and len(ids) > 0) for a, ids in zip(answer, completion_ids)]


def boom(prompts, completions, **kwargs):
    return [1 / 0 for _ in completions]


def always(prompts, completions, **kwargs):
    return [1.0] * len(completions)
'''


def byo_cli(tmp_path, *extra):
    """A countdown-prompt JSONL (every other row answers "yes") and the reward file; the CLI options of a tiny run."""
    from dphrl_mini.tasks import countdown

    rows = [{"prompt": r["prompt"], "answer": "yes" if i % 2 == 0 else "no"}
            for i, r in enumerate(countdown.make_dataset("train", 24, seed=0))]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "r.py").write_text(TRL_REWARD_FILE)
    return ["--preset", "tiny-cpu", "--dataset", str(tmp_path / "d.jsonl"), "--method", "dph_js", "--steps", "1",
            "--train-size", "16", "--prompts-per-step", "2", "--num-generations", "2", "--max-new-tokens", "16",
            "--eval-n", "2", "--eval-ks", "1", "2", "--eval-fraction", "0.25", "--presample-k", "4",
            "--presample-threshold", "0.25", "--reference-batch-size", "2", "--updates-per-step", "1",
            "--no-progress", "--device", "cpu", "--output-dir", str(tmp_path / "run"), *extra]


def test_trl_signature_reward_with_completion_ids_trains_and_evaluates(tmp_path):
    """``def reward(completions, answer, completion_ids, **kwargs)``: a non-empty split, the run's evaluation
    scored by it, its log_extra column in samples.jsonl and its log_metric in metrics.jsonl."""
    main(["train", *byo_cli(tmp_path, "--reward", f"{tmp_path / 'r.py'}:reward", "--splits", "test")])
    run = tmp_path / "run"
    assert json.loads((run / "presample.json").read_text())["reference_samples"] > 0
    answers = {f"row-{i}": "yes" if i % 2 == 0 else "no" for i in range(24)}
    result = json.loads((run / "eval_test.json").read_text())
    assert result["correct"] == [2 if answers[i] == "yes" else 0 for i in result["ids"]]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step_seen"] for m in metrics] == [0.0]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["step"] == 1 and s["n_tokens"] > 0 for s in samples)


def test_presample_says_how_many_samples_did_not_end_in_eos(tmp_path, capsys):
    main(["presample", *byo_cli(tmp_path, "--reward", f"{tmp_path / 'r.py'}:always", "--max-new-tokens", "1")])
    err = capsys.readouterr().err
    assert "presample: dropped" in err and "samples that did not end in EOS within max_new_tokens=1" in err
    assert "hit the token limit (max_new_tokens=1): raise --max-new-tokens" in err


def test_presample_refuses_a_reward_that_fails_on_every_sample(tmp_path):
    with pytest.raises(SystemExit, match="reward function `boom` failed on all 64 pre-samples.*"
                                         "first error: ZeroDivisionError: division by zero"):
        main(["presample", *byo_cli(tmp_path, "--reward", f"{tmp_path / 'r.py'}:boom")])
    assert not (tmp_path / "run" / "reference_store.pt").exists()


def test_none_rewards_are_no_reward_in_training(tmp_path):
    """TRL's None: not an error; an unscorable completion gets advantage 0 and stays out of reward_mean."""
    from dphrl_mini.trainer import Trainer

    returned = []

    def none_on_odd_rows(prompts, completions, odd, **_):
        returned.extend(None if o else 1.0 for o in odd)
        return returned[-len(completions):]

    rows = [{**row, "odd": i % 2} for i, row in enumerate(ROWS)]
    cfg = config(tmp_path, dataset=str(write_jsonl(tmp_path / "d.jsonl", rows)), method="grpo", steps=2,
                 num_generations=4)
    history = Trainer(cfg, reward_fns=[none_on_odd_rows]).train()
    assert None in returned and 1.0 in returned  # some of each
    assert [m["reward_errors"] for m in history] == [0, 0]
    assert all(m["reward_mean"] == 1.0 or math.isnan(m["reward_mean"]) for m in history)


def test_trl_accuracy_reward_in_training_on_chat_prompts(tmp_path):
    """The real ``trl.rewards.accuracy_reward`` on a tiny conversational dataset: called without an error,
    and the columns it logs with log_extra land in samples.jsonl."""
    accuracy_reward = pytest.importorskip("trl.rewards").accuracy_reward
    pytest.importorskip("math_verify")
    from dphrl_mini.models import load_policy
    from dphrl_mini.trainer import Trainer

    model, tokenizer = load_policy("tiny", lora_rank=4, device="cpu")
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rows = [{"prompt": [{"role": "user", "content": f"{a} + {a} ="}], "solution": str(2 * a)} for a in range(12)]
    cfg = config(tmp_path, method="grpo", eval_fraction=0.25)
    history = Trainer(cfg, model=model, tokenizer=tokenizer, reward_fns=[accuracy_reward], train_dataset=rows).train()
    assert history[0]["reward_errors"] == 0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"][0]["role"] == "user"  # the dataset's prompt, as the reward saw it
    assert {"solution", "gold_parsed", "answer_parsed"} <= set(samples[0])
