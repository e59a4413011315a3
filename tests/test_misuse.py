"""No silent misuse (issue 44, part 2): each mistake a new user makes is one line naming the setting and the
fix, before any work, never a traceback or a wrong answer."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from dphrl_mini import experiments
from dphrl_mini.cli import build_parser, config_from_args, main
from dphrl_mini.config import TrainConfig, preset_config
from dphrl_mini.experiments import compare, parse_variants, resolve_splits
from dphrl_mini.models import resolve_model_path
from dphrl_mini.rewards import Verifier
from dphrl_mini.sources import task_data
from dphrl_mini.trainer import Trainer

torch.set_num_threads(1)

ROWS = [{"prompt": f"{a} + {a} =", "answer": str(2 * a)} for a in range(24)]
REWARD_FILE = """
def exact(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def anything(prompts, completions, **kwargs):
    return [1.0 for _ in completions]
"""
SMALL = ["--steps", "1", "--train-size", "8", "--prompts-per-step", "2", "--num-generations", "2",
         "--max-new-tokens", "4", "--eval-size", "2", "--eval-n", "2", "--eval-ks", "1", "2", "--presample-k", "2",
         "--presample-threshold", "0.5", "--correct-threshold", "0", "--reference-batch-size", "2",
         "--updates-per-step", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture
def byo(tmp_path):
    """CLI options for a run on a user's JSONL with a reward file, in ``tmp_path / "run"``."""
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "my_reward.py").write_text(REWARD_FILE)
    return ["--dataset", str(tmp_path / "d.jsonl"), "--output-dir", str(tmp_path / "run"), *SMALL]


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect a user error: exit status 2, no traceback, and the error's one line last on
    stderr (after any progress bars), which is returned."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == str(exit_.value)
    assert str(exit_.value).startswith("error: ") and "\n" not in str(exit_.value)
    return str(exit_.value)


def args(*argv: str):
    return build_parser().parse_args(list(argv))


# --- 1. a stale pre-sampled split is refused -----------------------------------------------------------------

def test_presample_under_another_reward_is_refused(tmp_path, byo, capsys):
    reward = tmp_path / "my_reward.py"
    main(["presample", *byo, "--method", "dph_js", "--reward", f"{reward}:exact"])
    record = json.loads((tmp_path / "run" / "presample.json").read_text())["source"]
    assert record["reward"][0].startswith("my_reward.exact@") and record["presample_k"] == 2
    assert {"dataset", "reward_weights", "correct_threshold", "temperature", "top_p", "max_new_tokens", "seed"} <= set(record)
    for other in (["--reward", f"{reward}:anything"], ["--reward", f"{reward}:exact", "--correct-threshold", "1"],
                  ["--reward", f"{reward}:exact", "--temperature", "0.7"]):
        line = one_line_error(capsys, ["train", *byo, "--method", "dph_js", *other])
        assert "pre-sampled with other settings" in line and "--overwrite" in line
    reward.write_text(REWARD_FILE.replace("c.strip() == a", "c == a"))  # the same name, another reward
    line = one_line_error(capsys, ["presample", *byo, "--method", "dph_js", "--reward", f"{reward}:exact"])
    assert "reward: ['my_reward.exact@" in line
    main(["presample", *byo, "--method", "dph_js", "--reward", f"{reward}:exact", "--overwrite"])  # the fix works


# --- 2, 3. eval of a finished run keeps its prompts and its base model ---------------------------------------

def test_eval_of_a_run_uses_its_data_and_base_model(tmp_path, byo, capsys):
    reward = f"{tmp_path / 'my_reward.py'}:exact"
    main(["train", *byo, "--reward", reward, "--data-seed", "3", "--eval-fraction", "0.25", "--splits", "test"])
    run = tmp_path / "run"
    ids = json.loads((run / "eval_test.json").read_text())["ids"]
    main(["eval", "--output-dir", str(run), "--splits", "test", "--no-progress"])  # the run's own settings
    assert json.loads((run / "eval_test.json").read_text())["ids"] == ids
    stored = (run / "eval_test.json").read_text()
    for other in (["--data-seed", "0"], ["--eval-fraction", "0.5"], ["--reward", f"{tmp_path / 'my_reward.py'}:anything"]):
        line = one_line_error(capsys, ["eval", "--output-dir", str(run), *other])
        assert "differs from the run's" in line and "--output-dir NEW_FOLDER" in line
    one_line_error(capsys, ["eval", "--output-dir", str(run), "--base"])
    assert (run / "eval_test.json").read_text() == stored  # never overwritten with other prompts' results
    other = other_base_model(tmp_path)  # the same architecture and tokenizer, other weights
    line = one_line_error(capsys, ["eval", "--output-dir", str(run), "--model", str(other), "--splits", "test"])
    assert "trained on base model 'tiny'" in line and "--model tiny" in line


def other_base_model(tmp_path) -> Path:
    """A copy of the built-in tiny model with its input embedding shifted: the adapter fits it, but it is
    another base model."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "other-base"
    shutil.copytree(resolve_model_path("tiny"), folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if "embed_tokens" in k)
    weights[name] = weights[name] + 0.5
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# --- 4. options the data path ignores ---------------------------------------------------------------------

@pytest.mark.parametrize("extra, field", [(["--task", "sql"], "task"), (["--task-source", "/nonexistent"], "task_source"),
                                          (["--ood-size", "5"], "ood_size")])
def test_options_a_dataset_ignores_are_refused(tmp_path, byo, extra, field):
    with pytest.raises(ValueError, match=f"`{field}`.*ignored.*drop --"):
        config_from_args(args("train", *byo, "--reward", "m:f", *extra))


def test_options_the_built_in_task_ignores_and_missing_splits_are_refused(tmp_path, byo):
    for extra in (["--task-source", "x.jsonl"], ["--eval-fraction", "0.3"], ["--transfer-size", "5"]):
        with pytest.raises(ValueError, match="ignored"):
            config_from_args(args("train", *extra))
    cfg = config_from_args(args("train", *byo, "--reward", "m:f"))
    with pytest.raises(ValueError, match="split 'ood'.*'test' split only"):
        resolve_splits(cfg, ["test", "ood"])
    with pytest.raises(ValueError, match="task 'math' has no 'shift' split"):
        resolve_splits(TrainConfig(task="math"), ["shift"])
    assert resolve_splits(cfg, None) == ["test", "ood"]  # the defaults still skip what a dataset lacks


# --- 5, 8. required numbers, devices, config files --------------------------------------------------------

@pytest.mark.parametrize("field", ["steps", "lr", "presample_k", "eval_n"])
def test_none_for_a_required_number_is_refused_at_validation(field):
    with pytest.raises(ValueError, match=f"`{field}`=None: a value is required"):
        config_from_args(args("train", f"--{field.replace('_', '-')}", "none"))
    assert config_from_args(args("train", "--kl-coef", "none")).kl_coef is None  # None = the method's default


def test_bad_devices_and_config_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- lr: 1e-3\n")
    (tmp_path / "nan.yaml").write_text("steps: .nan\n")
    (tmp_path / "broken.yaml").write_text("lr: [1e-3\n")
    out = ["--output-dir", str(tmp_path / "r")]
    assert "no such file" in one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml"), *out])
    assert "must be a mapping" in one_line_error(capsys, ["train", "--config", str(tmp_path / "list.yaml"), *out])
    assert "not valid YAML" in one_line_error(capsys, ["train", "--config", str(tmp_path / "broken.yaml"), *out])
    assert "`steps`=nan" in one_line_error(capsys, ["train", "--config", str(tmp_path / "nan.yaml"), *out])
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in one_line_error(capsys, ["train", "--device", "cuda", *out])
    assert "device" in one_line_error(capsys, ["train", "--device", "gpu", *out])
    assert not (tmp_path / "r").exists()  # refused before any work


# --- 6. compare checks every variant first -----------------------------------------------------------------

def test_compare_validates_every_variant_before_the_first_run(tmp_path, monkeypatch):
    def no_work(*_, **__):
        raise AssertionError("work started before every variant was validated")

    monkeypatch.setattr(experiments, "evaluate_base", no_work)
    monkeypatch.setattr(experiments, "run", no_work)
    cfg = preset_config("tiny-cpu", output_dir=str(tmp_path / "r"), device="cpu")
    for specs, match in ((["grpo", "dph_jss"], "variant 'dph_jss'.*unknown method"),
                         (["grpo", "dph_js:etaa=2"], r"variant 'dph_js_etaa2'.*unknown config field\(s\) \['etaa'\]"),
                         (["grpo", "dph_js:eta=-1"], "variant 'dph_js_eta-1'.*`eta`"),
                         (["grpo", "grpo+mara"], "variant 'grpo\\+mara'.*kl_coef"),
                         (["grpo:seeds=0-2", "dph_js:seeds=3-4,eta=x"], "variant 'dph_js_etax'.*`eta`='x'")):
        with pytest.raises(ValueError, match=match):
            compare(cfg, parse_variants(specs), seeds=[0, 1], out_dir=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


# --- 7. --help says what each option is -----------------------------------------------------------------

def test_help_shows_each_fields_docstring_and_default(capsys):
    from dphrl_mini.validation import field_docs

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    docs = field_docs(TrainConfig)
    assert docs["presample_k"] == "Samples per training prompt from the initial policy (released: 4)."
    assert "--presample-k PRESAMPLE_K Samples per training prompt from the initial policy (released: 4). (default: 4)" in text
    for name, doc in docs.items():  # argparse rewraps the text, never drops it
        assert " ".join(doc.replace("%", "%").split()[:6]) in text, name
    assert "--lora-rank LORA_RANK (default: 16)" in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "Share of ``dataset``'s distinct prompts held out" in " ".join(capsys.readouterr().out.split())


# --- 9. non-finite rewards are counted each step --------------------------------------------------------

def test_non_finite_rewards_are_counted_apart_from_other_failures():
    def value(prompts, completions, value, **_):
        return value

    verifier = Verifier([value])
    counted: dict[str, int] = {}
    rewards, errors = verifier.score(["p"] * 5, ["a"] * 5, {"value": [1.0, math.inf, math.nan, -math.inf, "x"]},
                                     nonfinite=counted)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0] and errors == 4
    assert counted == {value.__qualname__: 3}


def test_non_finite_rewards_are_counted_and_reported_each_step(tmp_path):
    def value(prompts, completions, value, **_):
        return value

    rows = [{"prompt": f"{i} + {i} =", "value": math.inf if i % 2 else math.nan} for i in range(8)]
    cfg = preset_config("tiny-cpu", steps=2, train_size=8, prompts_per_step=2, num_generations=4, max_new_tokens=4,
                        eval_size=2, eval_n=2, eval_ks=[1, 2], output_dir=str(tmp_path / "run"),
                        progress=False, device="cpu", updates_per_step=1)
    trainer = Trainer(cfg, reward_fns=[value], train_dataset=rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = trainer.train()
    assert [m["reward_nonfinite"] for m in history] == [8, 8] and [m["reward_errors"] for m in history] == [8, 8]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_nonfinite"] for m in logged] == [8, 8]
    said = [str(w.message) for w in caught if "NaN or inf" in str(w.message)]
    assert len(said) == 2 and said[0].startswith("step 1:") and f"`{value.__qualname__}` 8x" in said[0]


# --- 10. Countdown rows that are not finite integers are refused when they load ------------------------------

@pytest.mark.parametrize("row", [{"numbers": [3, 5, 7], "target": math.inf}, {"numbers": [3, math.nan], "target": 8},
                                 {"numbers": [3, 5], "target": 7.5}, {"numbers": [1e400, 2], "target": 4}])
def test_countdown_rows_that_are_not_finite_integers_are_refused_at_load(tmp_path, row):
    rows = [{"prompt": f"numbers {i}", "numbers": [1, 2, 3], "target": 6} for i in range(8)]
    rows[5] = {"prompt": "bad", **row}
    data = tmp_path / "cd.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(task="countdown", dataset=str(data), device="cpu")
    with pytest.raises(ValueError, match=r"cd.jsonl' row id 'row-5': field `(numbers|target)`") as error:
        task_data(cfg)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="row id 'row-5'"):  # from Python too
        task_data(TrainConfig(task="countdown", device="cpu"), train_dataset=rows)
