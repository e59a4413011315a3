"""The tiny model: character tokenizer and the committed checkpoint (tiny.py); SFT batches, the builder and its measurement (tiny_build.py, tiny_measure.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from dphrl_mini import tiny, tiny_build, tiny_measure
from dphrl_mini.evaluate import evaluate
from dphrl_mini.tasks import countdown

TEXT = "3 5 7 -> 22:(7+5)*3-14\n ~{}|"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer()


def test_tokenizer_is_character_level_with_bos(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 1
    assert len(ids) == len(TEXT) + 1  # one token per character
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["3", " ", "5"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert len(tokenizer) == 4 + 1 + 95  # specials, "\n", printable ASCII
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 2, 3)
    assert tokenizer("é")["input_ids"] == [1, tokenizer.unk_token_id]


def test_tokenizer_saves_and_reloads_with_autotokenizer(tokenizer, tmp_path):
    tiny.save_tokenizer(tokenizer, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert reloaded.padding_side == "left" and reloaded.eos_token == "<eos>"
    batch = reloaded(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [reloaded.pad_token_id] * 2  # left padding
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1]
    assert reloaded.decode(batch["input_ids"][0], skip_special_tokens=True) == "ab"


def test_sft_batches_mask_the_prompt(tokenizer):
    pairs = [("1 2 -> 3:", "1+2"), ("2 2 -> 4:", "2*2")]
    examples = tiny_build.encode_pairs(tokenizer, pairs, max_length=64)
    ids, n_prompt = examples[0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert n_prompt == 1 + len("1 2 -> 3:")
    input_ids, attention_mask, labels = tiny_build._collate(examples, [0, 1], tokenizer.pad_token_id)
    assert (labels[0, :n_prompt] == -100).all()
    assert tokenizer.decode(labels[0, n_prompt:]) == "1+2<eos>"  # completion and EOS are trained
    assert attention_mask.sum().item() == sum(len(e[0]) for e in examples)


@pytest.mark.parametrize("name", list(tiny.BUILT_IN))
def test_committed_checkpoint_loads_and_generates(name):
    path = tiny.tiny_model_path(name)
    assert path == tiny.ASSET_ROOT / name, f"the {name} checkpoint must be committed in dphrl_mini/assets/{name}"
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 10 * 2**20
    readme = (path / "README.md").read_text()
    assert readme.count("python -m dphrl_mini.tiny_build") >= 1 and "| countdown/test | pass@1 |" in readme
    tiny_build.TinyConfig(**tiny.BUILT_IN[name]())  # the one-call rebuild names only real build settings
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert 5e5 < model.num_parameters() < 3e6
    enc = tokenizer(["3 5 7 -> 22:"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    completion = tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert completion and set(completion) <= set("0123456789+-*/()")


def test_committed_checkpoint_is_broad():
    """Sampling at temperature 1 finds correct countdown answers, and different ones per prompt."""
    path = tiny.tiny_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    rows = countdown.make_dataset("test", 10, seed=1)
    metrics = evaluate(model, tokenizer, rows, countdown, n=32, max_new_tokens=20, greedy=False, progress=False).summary()
    assert 0.02 < metrics["pass@1"] < 0.9  # some skill, not collapsed onto one answer
    assert metrics["pass@32"] > metrics["pass@1"]
    assert metrics["distinct_correct"] > 1.0


def test_figures_table_marks_targets():
    table = tiny_measure.figures_table({"countdown/test": {"pass@1": 0.2, "pass@64": 0.97, "distinct_correct": 3.5},
                                "countdown/train": {"near-perfect 4/4": 199 / 2000},
                                "sql/train": {"near-perfect 4/4": 0.05}})
    assert "| countdown/test | pass@1 | 0.2000 | 0.3-0.5 | **missed** |" in table
    assert "| countdown/test | pass@64 | 0.9700 | >= 0.95 | met |" in table
    assert "| countdown/train | near-perfect 4/4 | 0.0995 | >= 0.1 | **missed** |" in table  # one prompt short shows
    assert "| sql/train | near-perfect 4/4 | 0.0500 | report | |" in table


def test_measure_estimates_the_expected_near_perfect_share(monkeypatch):
    """Besides one 4-of-4 draw, ``measure`` reports that share's expectation, C(c, 4) / C(8, 4) per
    prompt from its 8 samples, with a standard error."""
    import dphrl_mini.evaluate as evaluate_module

    class Result:
        def __init__(self, rows, n):
            self.correct = [n if j % 2 == 0 else 4 for j in range(len(rows))]  # 8/8, then 4/8 correct

        def summary(self):
            return {"pass@1": 0.5, "pass@8": 1.0, "distinct_correct": 2.0}

    monkeypatch.setattr(evaluate_module, "evaluate", lambda model, tokenizer, rows, task, n, **kw: Result(rows, n))
    results = tiny_measure.measure(None, None, n_prompts=2, n=8, train_prompts={"countdown": 10, "sql": 4},
                           test_prompts={"countdown": 2, "sql": 2})
    shares = results["countdown/train"]
    assert shares["near-perfect 4/4"] == 1.0 and shares["near-perfect 6/8"] == 0.5
    assert shares["expected near-perfect 4/4"] == pytest.approx((1 + 1 / 70) / 2)
    assert 0 < shares["expected near-perfect 4/4 (std err)"] < 0.5
    # the test split's Pass@1 and Pass@8 with standard errors over prompts: 8/8 and 4/8 correct give
    # Pass@1 of 1 and 0.5 (std err 0.25), Pass@8 of 1 and 1 (std err 0)
    assert results["countdown/test"]["pass@1 (std err)"] == pytest.approx(0.25)
    assert results["countdown/test"]["pass@8 (std err)"] == 0.0


@pytest.mark.slow
def test_build_tiny_model_smoke(tmp_path):
    out = tiny_build.build_tiny_model(tmp_path / "tiny", steps=20, countdown_problems=40, countdown_mix_problems=20,
                                sql_problems=20, per_problem=2, batch_size=8)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(**tokenizer(["1 2 -> 3:"], return_tensors="pt")).logits).all()
    assert "--steps 20" in (out / "README.md").read_text()


def test_muon_warm_start_trains_hidden_matrices_with_muon_and_the_rest_with_adamw():
    cfg = tiny_build.TinyConfig(steps=3, optimizer="muon", hidden_size=32, intermediate_size=64, countdown_problems=8,
                          sql_problems=4, per_problem=1, batch_size=4)
    model = LlamaForCausalLM(tiny.tiny_model_config(cfg, len(tiny.build_tokenizer())))
    (muon, muon_peak), (adamw, adamw_peak) = tiny_build._optimizers(model, cfg.weight_decay, cfg.lr, cfg.muon_lr)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert (muon_peak, adamw_peak) == (cfg.muon_lr, cfg.lr)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert muon_names and all(".layers." in n and n.endswith("proj.weight") for n in muon_names)
    assert muon_names | adamw_names == set(names.values()) and not muon_names & adamw_names
    assert "model.embed_tokens.weight" in adamw_names
    trained, _ = tiny_build.train_tiny(cfg)
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    with pytest.raises(ValueError, match="optimizer"):
        tiny_build.train_tiny(tiny_build.TinyConfig(steps=0, optimizer="sgd"))


def test_measure_flag_alone_measures_the_built_in_model(monkeypatch, capsys):
    """``python -m dphrl_mini.tiny_build --measure`` (as the README writes it) takes the committed checkpoint."""
    seen = {}

    def fake_measure(model, tokenizer, progress=False):
        seen["vocab"] = len(tokenizer)
        return {"countdown/test": {"pass@1": 0.2}}

    monkeypatch.setattr(tiny_build, "measure", fake_measure)
    tiny_build.main(["--measure"])
    assert seen["vocab"] == len(tiny.build_tokenizer())
    assert "| countdown/test | pass@1 | 0.2000 | 0.3-0.5 | **missed** |" in capsys.readouterr().out


def _assert_correct(pairs, rows):
    """Every (prompt, completion) pair solves its row (``rows`` keyed by prompt)."""
    from dphrl_mini.tasks import sql

    for prompt, completion in pairs:
        row = rows[prompt]
        if "numbers" in row:
            assert countdown.is_correct(row["numbers"], row["target"], completion)
        else:
            assert sql.execution_match(row["db_path"], completion, row["gold_sql"])


def test_rft_pairs_keep_each_distinct_correct_answer_once(monkeypatch):
    from dphrl_mini.tasks import sql

    monkeypatch.setattr(tiny_build, "RFT_PROBLEMS", {"countdown": 24, "sql": 4})
    path = tiny.tiny_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    pairs = tiny_build.rft_pairs(model, tokenizer, seed=0)
    assert pairs and len(pairs) == len(set(pairs))
    rows = {row["prompt"]: row for row in countdown.make_dataset("train", 24, seed=tiny_build.RFT_SEED)}
    rows.update({row["prompt"]: row for row in sql.make_dataset("train", 4, seed=tiny_build.RFT_SEED)})
    _assert_correct(pairs, rows)
    assert tiny_build.rft_pairs(model, tokenizer, seed=0) == pairs  # seeded


def test_rft_round_samples_the_held_apart_sparse_problems_when_asked(monkeypatch):
    """``countdown_ood_pretrain`` adds held-apart sparse problems to the round's Countdown rows, never
    an "ood" evaluation problem."""
    import dphrl_mini.evaluate

    seen = []

    def fake_evaluate(model, tokenizer, rows, task, **kwargs):
        seen.append([row["prompt"] for row in rows])
        return type("Result", (), {"distinct_keys": [set() for _ in rows], "correct": [0] * len(rows)})()

    monkeypatch.setattr(tiny_build, "RFT_PROBLEMS", {"countdown": 24, "sql": 4})
    monkeypatch.setattr(dphrl_mini.evaluate, "evaluate", fake_evaluate)
    tiny_build.rft_pairs(None, None, seed=0, countdown_ood_pretrain=10)
    held_apart = {row["prompt"] for row in countdown.ood_pretrain_rows(10, seed=tiny_build.RFT_SEED)}
    assert len(seen[0]) == 34 and held_apart <= set(seen[0]) and len(seen[1]) == 4
    assert not set(seen[0]) & {row["prompt"] for row in countdown.make_dataset("ood", 1000, seed=0)}
    seen.clear()
    tiny_build.rft_pairs(None, None, seed=0, sql_problems=2)  # ``rft_sql_problems`` overrides RFT_PROBLEMS["sql"]
    assert [len(prompts) for prompts in seen] == [24, 2]


def test_unsolved_problems_get_reference_solutions_only_when_asked(monkeypatch):
    """``unsolved_references`` (STaR's rationalization) adds up to that many correct reference
    solutions for each problem no sample solved, and none for a solved one."""
    import dphrl_mini.evaluate
    from dphrl_mini.tasks import sql

    def fake_evaluate(model, tokenizer, rows, task, **kwargs):  # the first problem of each task solved once
        keys = [{"solved"}] + [set() for _ in rows[1:]]
        return type("Result", (), {"distinct_keys": keys, "correct": [3] + [0] * (len(rows) - 1)})()

    monkeypatch.setattr(tiny_build, "RFT_PROBLEMS", {"countdown": 6, "sql": 3})
    monkeypatch.setattr(dphrl_mini.evaluate, "evaluate", fake_evaluate)
    assert len(tiny_build.rft_pairs(None, None, seed=0)) == 2  # the two sampled answers, no references
    weighted = tiny_build.rft_pairs(None, None, seed=0, weight_by_success=True)  # 3 correct samples, 1 answer
    assert [completion for _, completion in weighted] == ["solved"] * 6
    pairs = tiny_build.rft_pairs(None, None, seed=0, unsolved_references=2)
    rows = {row["prompt"]: row for row in countdown.make_dataset("train", 6, seed=tiny_build.RFT_SEED)}
    rows.update({row["prompt"]: row for row in sql.make_dataset("train", 3, seed=tiny_build.RFT_SEED)})
    references = [(prompt, completion) for prompt, completion in pairs if completion != "solved"]
    first = {next(iter(rows)), list(rows)[6]}
    assert references and not {prompt for prompt, _ in references} & first
    for prompt in set(rows) - first:
        assert 1 <= sum(p == prompt for p, _ in references) <= 2
    _assert_correct(references, rows)
    with pytest.raises(ValueError, match="rft_unsolved_references"):
        tiny_build.train_tiny(tiny_build.TinyConfig(steps=0, rft_unsolved_references=-1))
    with pytest.raises(ValueError, match="rft_sql_problems"):
        tiny_build.train_tiny(tiny_build.TinyConfig(steps=0, rft_sql_problems=-1))


@pytest.mark.slow
def test_build_with_rejection_sampling_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_build, "RFT_PROBLEMS", {"countdown": 16, "sql": 2})
    out = tiny_build.build_tiny_model(tmp_path / "tiny-round", steps=0, init_from=str(tiny.tiny_model_path()), rft_rounds=1,
                                rft_steps=3, rft_samples=2, batch_size=4)
    readme = (out / "README.md").read_text()
    assert "--steps 0" in readme and "--rft-rounds 1" in readme and "--rft-steps 3" in readme
    assert "--rft-samples 2" in readme and "2 samples for each" in readme
    assert "rejection-sampling fine-tuning" in readme
    before = AutoModelForCausalLM.from_pretrained(tiny.tiny_model_path()).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the round trained


def test_built_in_names_resolve():
    from dphrl_mini.models import resolve_model_path

    assert resolve_model_path("dphrl-mini/tiny") == str(tiny.ASSET_ROOT / "tiny")
    with pytest.warns(UserWarning, match="now called 'tiny'"):
        assert resolve_model_path("tiny-muon") == str(tiny.ASSET_ROOT / "tiny")
    with pytest.raises(ValueError, match="'tiny-rft3' was retired.*git show"):
        resolve_model_path("tiny-rft3")
    with pytest.raises(ValueError, match="tiny"):
        tiny.tiny_model_path("tiny-sharp")


def test_one_built_in_model_ships():
    assert sorted(p.name for p in tiny.ASSET_ROOT.iterdir() if p.is_dir()) == ["tiny"]
    assert list(tiny.BUILT_IN) == ["tiny"]


def test_hub_style_names_of_the_built_ins():
    from dphrl_mini.models import resolve_model_path

    assert resolve_model_path("dphrl-mini/tiny") == resolve_model_path("tiny")
    assert resolve_model_path("dphrl-mini/other") == "dphrl-mini/other"  # any other id stays a hub id


def test_rft_replay_adds_warm_start_pairs_to_the_round(monkeypatch):
    seen = []
    monkeypatch.setattr(tiny_build, "rft_pairs", lambda *a, **k: [("1 2 3 -> 6:", "1+2+3")] * 10)
    monkeypatch.setattr(tiny_build, "_fit", lambda model, tokenizer, pairs, *a, **k: seen.append(list(pairs)))
    cfg = tiny_build.TinyConfig(steps=0, init_from=str(tiny.tiny_model_path()), rft_rounds=1, rft_replay=0.5,
                          countdown_problems=20, sql_problems=5)
    tiny_build.train_tiny(cfg)
    (pairs,) = seen
    assert len(pairs) == 15  # the round's 10 samples + 0.5 x 10 warm-start pairs
    assert set(pairs[10:]) <= set(tiny_build.sft_pairs(cfg))
    with pytest.raises(ValueError, match="rft_replay"):
        tiny_build.train_tiny(tiny_build.TinyConfig(steps=0, rft_replay=-1))


def test_rft_interpolation_moves_the_weights_back_towards_the_rounds_start(monkeypatch):
    """``rft_interpolation`` a: final = (1 - a) * start + a * rounds' end (WiSE-FT), tied weights included."""
    monkeypatch.setattr(tiny_build, "rft_pairs", lambda *a, **k: [("1 2 3 -> 6:", "1+2+3")])

    def fake_round(model, *a, **k):  # a "round" that adds 1 to every weight
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)

    monkeypatch.setattr(tiny_build, "_fit", fake_round)
    start = AutoModelForCausalLM.from_pretrained(tiny.tiny_model_path())
    for weight, shift in ((1.0, 1.0), (0.25, 0.25), (0.0, 0.0)):
        cfg = tiny_build.TinyConfig(steps=0, init_from=str(tiny.tiny_model_path()), rft_rounds=2, rft_interpolation=weight)
        model, _ = tiny_build.train_tiny(cfg)
        for (name, before), after in zip(start.named_parameters(), model.parameters()):
            torch.testing.assert_close(after, before + 2 * shift, msg=name)  # two rounds of +1 each
        assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rft_interpolation"):
            tiny_build.train_tiny(tiny_build.TinyConfig(steps=0, rft_interpolation=bad))


def test_ood_pretrain_problems_join_the_warm_start():
    """``countdown_ood_pretrain_problems`` / ``sql_ood_pretrain_problems`` add the held-apart sparse
    problems and held-out-schema questions to the warm start, never an "ood" evaluation prompt."""
    from dphrl_mini.tasks import countdown, sql

    base = tiny_build.TinyConfig(countdown_problems=20, sql_problems=5, per_problem=2)
    more = tiny_build.TinyConfig(countdown_problems=20, sql_problems=5, per_problem=2, countdown_ood_pretrain_problems=10,
                           sql_ood_pretrain_problems=4)
    plain, more_pairs = tiny_build.sft_pairs(base), tiny_build.sft_pairs(more)
    added = [p for p in more_pairs if p not in set(plain)]
    prompts = {prompt for prompt, _ in added}
    assert len(prompts) == 14 and len(plain) + len(added) == len(more_pairs)
    assert len({prompt for prompt in prompts if prompt.startswith("hospital | ")}) == 4
    ood_prompts = {r["prompt"] for task in (countdown, sql) for r in task.make_dataset("ood", 500, seed=0)}
    assert not prompts & ood_prompts


def test_wide_countdown_problems_join_the_warm_start():
    """``countdown_wide_problems`` adds targets 101-400 to the warm start, and nothing else changes."""
    base = tiny_build.TinyConfig(countdown_problems=20, sql_problems=0, per_problem=2)
    wide = tiny_build.TinyConfig(countdown_problems=20, sql_problems=0, per_problem=2, countdown_wide_problems=10)
    plain, more = tiny_build.sft_pairs(base), tiny_build.sft_pairs(wide)
    added = [p for p in more if p not in plain]
    assert plain == more[:len(plain)] and len({prompt for prompt, _ in added}) == 10
    assert all(int(prompt.split("-> ")[1].rstrip(":")) > 100 for prompt, _ in added)


def test_build_benchmark_projects_a_recipe_from_its_timed_parts():
    """``benchmarks/bench_tiny_build.py``: the projection is the recipe's steps and problems times the timed parts."""
    bench = _load_benchmark("bench_tiny_build")
    r = bench.run("tiny", steps=2, problems=7)
    cfg = tiny_build.TinyConfig(**tiny.BUILT_IN["tiny"]())
    counts = tiny_build.rft_problem_counts(cfg)
    sampling = (r["countdown_sample_s_per_problem"] * counts["countdown"] + r["sql_sample_s_per_problem"] * counts["sql"])
    assert r["round_sampling_s"] == pytest.approx(sampling)
    expected = (r["warm_start_data_s"] + cfg.steps * r["warm_start_step_s"]
                + cfg.rft_rounds * (sampling + cfg.rft_steps * r["round_step_s"])) / 60
    assert r["projected_build_min"] == pytest.approx(expected) and r["projected_build_min"] > 0
    assert r["fits_budget"] == (expected <= 30)
    with pytest.raises(ValueError, match="tiny"):
        bench.run("tiny-60min")


def _load_benchmark(name: str):
    """A script of ``benchmarks/`` as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_optimizer_benchmark_measures_both_optimizers_on_held_out_solutions(monkeypatch):
    """``benchmarks/bench_tiny_optimizer.py``: one row per optimizer and measurement, held-out losses finite."""
    bench = _load_benchmark("bench_tiny_optimizer")
    rows = countdown.make_dataset("train", 16, seed=0)
    monkeypatch.setattr(tiny_build, "sft_pairs", lambda cfg: countdown.sft_examples(rows, per_problem=4, seed=0))
    result = bench.run("tiny", steps=2, every=1)
    assert [(r["optimizer"], r["step"]) for r in result] == [("adamw", 1), ("adamw", 2), ("muon", 1), ("muon", 2)]
    for r in result:
        assert 0 < r["countdown_heldout_loss"] < 10 and 0 < r["sql_heldout_loss"] < 10
    assert result[0]["countdown_heldout_loss"] != result[2]["countdown_heldout_loss"]  # the optimizers differ
    with pytest.raises(ValueError, match="tiny"):
        bench.run("tiny-60min")
