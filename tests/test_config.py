"""TrainConfig: presets, YAML round trip, CLI mapping, and errors that name the field."""

import dataclasses

import pytest

from dphrl_mini.cli import build_parser, config_from_args
from dphrl_mini.config import METHODS, NUMERIC_RANGES, PRESETS, TrainConfig, preset_config, resume_changes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    cfg = preset_config(name)
    assert cfg.validate() is cfg


def test_yaml_round_trip(tmp_path):
    cfg = preset_config("tiny-cpu", method="dph_js", eta=0.5, eval_ks=[1, 4])
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_yaml_with_preset(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: tiny-cpu\nmethod: rkl\n")
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert cfg.method == "rkl" and cfg.max_new_tokens == PRESETS["tiny-cpu"]["max_new_tokens"]


def test_method_defaults():
    assert preset_config(method="grpo").method_eps_high() == 0.2
    assert preset_config(method="dapo").method_eps_high() == 0.28
    assert preset_config(method="rkl").method_kl_coef() > 0
    assert preset_config(method="dph_js").dph_divergence() == "js"
    assert not preset_config(method="dph_js").needs_reference_model()
    assert preset_config(method="rkl", kl_coef=0.05, mara=True).needs_reference_model()
    assert set(METHODS) == {"grpo", "dapo", "rkl", "dph_forward_kl", "dph_js", "dph_alpha"}


@pytest.mark.parametrize("field,value,fix", [
    ("method", "ppo", "choose one of"),
    ("eta", -1.0, ">= 0"),
    ("alpha", 1.5, "inside"),
    ("num_generations", 1, "at least 2"),
    ("quantization", "3bit", "4bit"),
    ("top_p", 0.0, "(0, 1]"),
    ("eval_ks", [1, 128], "eval_n"),
    ("keep_references", "some", "all_distinct"),
    ("updates_per_step", 99, "prompts_per_step"),
    ("transfer_task", "countdown", "other than task"),  # the default task is countdown
    ("transfer_task", "chess", "built-in task"),
])
def test_validation_names_field_and_fix(field, value, fix):
    cfg = dataclasses.replace(TrainConfig(), **{field: value})
    with pytest.raises(ValueError, match=field) as info:
        cfg.validate()
    assert fix in str(info.value)


def test_unknown_field_and_preset():
    with pytest.raises(ValueError, match="unknown config field"):
        TrainConfig.from_dict({"lrr": 1e-3})
    with pytest.raises(ValueError, match="preset"):
        preset_config("huge")


def test_4bit_without_bitsandbytes(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ValueError, match="quantization.*pip install bitsandbytes"):
        TrainConfig(quantization="4bit").validate()


def test_cli_maps_onto_config(tmp_path):
    args = build_parser().parse_args(
        ["train", "--preset", "tiny-cpu", "--method", "dph_alpha", "--alpha", "0.3",
         "--eval-ks", "1", "2", "--kl-coef", "none", "--output-dir", str(tmp_path)])
    cfg = config_from_args(args)
    assert (cfg.method, cfg.alpha, cfg.mara, cfg.eval_ks, cfg.kl_coef) == ("dph_alpha", 0.3, False, [1, 2], None)
    assert cfg.max_new_tokens == PRESETS["tiny-cpu"]["max_new_tokens"]


def test_mara_beta_is_the_kl_coefficient():
    """MARA (papers/mara.md): one beta for the augmented rewards and the KL term; no KL is an error."""
    with pytest.raises(ValueError, match="kl_coef"):
        preset_config("tiny-cpu", method="grpo", mara=True)
    with pytest.raises(ValueError, match="kl_coef"):
        preset_config("tiny-cpu", method="rkl", kl_coef=0.0, mara=True)
    cfg = preset_config("tiny-cpu", method="rkl", kl_coef=0.05, mara=True)
    assert cfg.validate() is cfg and cfg.method_kl_coef() == 0.05
    with pytest.raises(ValueError, match="mara_beta.*kl_coef"):
        TrainConfig.from_dict({"method": "rkl", "mara": True, "mara_beta": 0.05})


def test_presets_use_the_released_split_rule_and_strength():
    """Released DPH-RL: 4 samples, all 4 correct; sft_loss_coeff 0.01 = eta 0.00125 in our scale."""
    from dphrl_mini.config import eta_from_sft_loss_coeff

    assert eta_from_sft_loss_coeff(0.01) == pytest.approx(0.00125)
    for name in PRESETS:
        cfg = preset_config(name, method="dph_js")
        assert (cfg.presample_k, cfg.presample_threshold) == (4, 1.0)
        assert eta_from_sft_loss_coeff(0.01) <= cfg.eta <= eta_from_sft_loss_coeff(0.2)


@pytest.mark.parametrize("field,value", [
    ("max_grad_norm", -1.0), ("max_grad_norm", float("nan")), ("max_grad_norm", float("inf")),
    ("temperature", float("inf")), ("eps_low", float("nan")), ("clip_ratio_c", -1.0), ("eta", float("nan")),
    ("eta", float("inf")), ("lr", float("nan")), ("kl_coef", float("inf")), ("steps", 2.5), ("steps", True),
    ("train_size", 0), ("seed", -1), ("lora_dropout", 1.0), ("lr", "fast"),
])
def test_every_numeric_field_is_finite_and_in_range(field, value):
    with pytest.raises(ValueError, match=f"`{field}`=.*must be (a finite number|an integer)"):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()


def test_every_numeric_field_has_a_range():
    import typing

    hints = typing.get_type_hints(TrainConfig)
    numeric = {name for name, hint in hints.items()
               if {int, float} & {hint, *typing.get_args(hint)} and typing.get_origin(hint) is not list}
    assert numeric == set(NUMERIC_RANGES)


def test_yaml_numbers_written_as_text(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nsteps: 1e2\neta: '0.5'\neval_ks: [1, '2']\n")
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml").validate()
    assert (cfg.lr, cfg.steps, cfg.eta, cfg.eval_ks) == (1e-3, 100, 0.5, [1, 2])
    assert isinstance(cfg.steps, int)
    (tmp_path / "c.yaml").write_text("steps: 2.5\n")
    with pytest.raises(ValueError, match="`steps`=2.5: must be an integer >= 1"):
        TrainConfig.from_yaml(tmp_path / "c.yaml").validate()


def test_resume_changes_split_safe_from_refused():
    saved = TrainConfig(steps=4, lr=2e-4, lora_rank=16).to_dict()
    refused, allowed = resume_changes(saved, TrainConfig(steps=8, lr=2e-4, lora_rank=8, eval_every=2))
    assert refused == ["lora_rank: 16 -> 8"] and allowed == ["steps: 4 -> 8", "eval_every: 0 -> 2"]
    refused, _ = resume_changes(saved, TrainConfig(steps=2, method="dapo"))
    assert refused == ["method: 'grpo' -> 'dapo'", "steps: 4 -> 2 (fewer steps)"]


def test_report_to_tensorboard_needs_tensorboard():
    import importlib.util

    from dphrl_mini.config import TrainConfig

    with pytest.raises(ValueError, match="report_to"):
        TrainConfig(report_to="wandb").validate()
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ValueError, match="pip install tensorboard"):
            TrainConfig(report_to="tensorboard").validate()
    else:
        TrainConfig(report_to="tensorboard").validate()
