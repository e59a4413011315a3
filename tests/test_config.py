"""TrainConfig: presets, YAML round trip, CLI mapping, and errors that name the field."""

import dataclasses

import pytest

from dphrl_mini.cli import build_parser, config_from_args
from dphrl_mini.config import METHODS, PRESETS, TrainConfig, preset_config


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
    assert preset_config(method="grpo", mara=True).needs_reference_model()
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
        ["train", "--preset", "tiny-cpu", "--method", "dph_alpha", "--alpha", "0.3", "--mara",
         "--eval-ks", "1", "2", "--kl-coef", "none", "--output-dir", str(tmp_path)])
    cfg = config_from_args(args)
    assert (cfg.method, cfg.alpha, cfg.mara, cfg.eval_ks, cfg.kl_coef) == ("dph_alpha", 0.3, True, [1, 2], None)
    assert cfg.max_new_tokens == PRESETS["tiny-cpu"]["max_new_tokens"]


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
