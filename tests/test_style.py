"""Display names and colours: every variant name the CLI produces reads as a method, never raw."""

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.colors import to_hex

from dphrl_mini.experiments import format_table, parse_variants
from dphrl_mini.style import BASE_LINE, display_name, family, family_color, metric_label
from toy_bandits.style import DIVERGENCE_COLORS, distinct_colors, series_colors


@pytest.mark.parametrize("spec, shown", [
    ("grpo", "GRPO"),
    ("dapo", "DAPO"),
    ("rkl:kl_coef=0.05", "RKL β=0.05"),
    ("rkl+mara:kl_coef=0.05", "RKL+MARA β=0.05"),
    ("grpo+mara", "GRPO+MARA"),
    ("grpo+mara:mara_beta=0.1", "GRPO+MARA β=0.1"),
    ("rkl+mara:kl_coef=0.05,mara_beta=0.1", "RKL+MARA β=0.05, MARA β=0.1"),
    ("dph_js:eta=0.02", "DPH-JS η=0.02"),
    ("dph_forward_kl:eta=0.02,keep_references=all_distinct", "DPH-F η=0.02, all refs"),
    ("dph_forward_kl:eta=2,keep_references=all_distinct,train_on=all", "DPH-F η=2, all refs, train on all"),
    ("dph_alpha:eta=2,alpha=0.3", "DPH-α η=2, α=0.3"),
    ("dph_js:keep_references=all_distinct", "DPH-JS, all refs"),
    ("dph_js:eta=4,keep_references=all_distinct,presample_threshold=0.125", "DPH-JS η=4, all refs, threshold 0.125"),
    ("grpo:reference_batch_size=32", "GRPO, reference batch size 32"),  # any other field, in words
    ("grpo:rollout_engine=plain", "GRPO, rollout engine plain"),
])
def test_display_name_of_every_cli_variant(spec, shown):
    (folder,) = parse_variants([spec])  # the folder name compare writes
    assert display_name(folder) == shown
    assert "_" not in display_name(folder)


def test_other_names_pass_through_and_families_share_a_colour():
    assert display_name("base") == "base" and display_name("my run") == "my run"
    assert family("dph_js_eta4_keep_referencesall_distinct") == family("dph_js_eta16") == "dph_js"
    assert family_color("dph_js_eta4") == family_color("dph_js_eta16") == DIVERGENCE_COLORS["js"]
    assert family_color("rkl_kl_coef0.05") == DIVERGENCE_COLORS["reverse_kl"]
    assert family_color("base") == BASE_LINE["color"] == "black"
    colors = {to_hex(family_color(n)) for n in ("base", "grpo", "dapo", "rkl", "rkl+mara", "grpo+mara",
                                                 "dph_forward_kl", "dph_js", "dph_alpha", "dph_js+mara")}
    assert len(colors) == 10  # every family its own colour; grpo+mara is not the base's


def test_repeated_colours_are_shaded_apart_and_mara_keeps_its_divergence():
    assert len({to_hex(c) for c in distinct_colors(["#009E73"] * 4)}) == 4
    colors = series_colors(["reference", "reverse_kl", "reverse_kl + MARA", "forward_kl beta=1"])
    assert colors == ["black", DIVERGENCE_COLORS["reverse_kl"], DIVERGENCE_COLORS["reverse_kl"],
                      DIVERGENCE_COLORS["forward_kl"]]


def test_tables_and_axes_use_display_names_and_percent():
    rows = [{"method": m, "seed": 0, "split": "test", "pass@1": 0.2, "distinct_correct": 2.0}
            for m in ("base", "dph_js_eta4_keep_referencesall_distinct")]
    table = format_table(rows, "test")
    assert "| DPH-JS η=4, all refs |" in table and "keep_references" not in table
    assert metric_label("pass@64") == "Pass@64 (%)" and metric_label("kept_frac").endswith("(%)")
    assert "%" not in metric_label("distinct_correct")


def test_variant_colors_do_not_depend_on_drawing_order():
    """A figure that draws the same variants in another order (bars by value, curves by Pass@64) gives
    each the same colour; the family's plain variant keeps the pure family colour."""
    from dphrl_mini.plots import variant_colors

    names = ["dph_forward_kl_eta1", "grpo", "dph_forward_kl", "dph_forward_kl_eta0.03", "base"]
    colors = variant_colors(names)
    assert colors == variant_colors(reversed(names)) == variant_colors(sorted(names))
    assert colors["dph_forward_kl"] == family_color("dph_forward_kl") and colors["base"] == family_color("base")
    fam = {to_hex(colors[n]) for n in names if n.startswith("dph_forward_kl")}
    assert len(fam) == 3  # shades of one family stay apart


def test_a_sweep_line_follows_its_coefficient_not_its_pass_at_1():
    from dphrl_mini.plots import plot_pareto, sweep_order

    def row(method, p1, p64):
        return {"method": method, "seed": 0, "split": "test", "pass@1": p1, "pass@64": p64}

    sweep = [row("dph_js_eta2", 0.30, 0.95), row("dph_js_eta0.01", 0.35, 0.80), row("dph_js_eta0.3", 0.40, 0.90)]
    assert [r["method"] for r in sweep_order(sweep)] == ["dph_js_eta0.01", "dph_js_eta0.3", "dph_js_eta2"]
    unswept = [row("dph_js", 0.40, 0.9), row("dph_js_eta2", 0.30, 0.95)]  # no coefficient in one name: by Pass@1
    assert [r["method"] for r in sweep_order(unswept)] == ["dph_js_eta2", "dph_js"]
    fig = plot_pareto([row("base", 0.2, 0.97)] + sweep)
    line = next(l for l in fig.axes[0].get_lines() if len(l.get_xdata()) == 3)
    assert list(line.get_xdata()) == [35.0, 40.0, 30.0]  # eta 0.01, 0.3, 2


def test_load_results_keeps_only_the_asked_methods_and_seeds(tmp_path):
    import json

    from dphrl_mini.plots import load_results

    for method, seed in [("base", 0), ("grpo", 0), ("grpo", 1), ("dph_js", 0)]:  # grpo seed 1, dph_js: not asked
        run = tmp_path / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "eval_test.json").write_text(json.dumps({"task": "countdown", "split": "test", "ids": ["a"], "n": 2,
                                                        "correct": [seed + 1], "distinct_keys": [["x"]]}))
    assert {m: len(r) for m, r in load_results(tmp_path).items()} == {"base": 1, "dph_js": 1, "grpo": 2}
    kept = load_results(tmp_path, "test", methods={"base", "grpo"}, seeds={0})
    assert {m: [r.correct for r in rs] for m, rs in kept.items()} == {"base": [[1]], "grpo": [[1]]}


def test_the_transfer_split_names_its_task_on_the_figures():
    from dphrl_mini.evaluate import EvalResult
    from dphrl_mini.plots import plot_pareto, plot_pass_at_k_curves, split_name

    assert split_name("test", "countdown") == "test split" and split_name("transfer", "sql") == "transfer split (sql)"
    result = EvalResult(task="sql", split="transfer", ids=["a", "b"], n=4, correct=[1, 4], distinct_keys=[{"x"}, {"y"}],
                        greedy_correct=[False, True], ks=[1, 2, 4])
    fig = plot_pass_at_k_curves({"base": [result], "grpo": [result]}, split="transfer")
    assert fig.axes[0].get_title().startswith("Pass@k, transfer split (sql)")
    rows = [{"method": m, "seed": 0, "split": "transfer", "pass@1": 0.2, "pass@64": 0.8} for m in ("base", "grpo")]
    assert "transfer split (sql)" in plot_pareto(rows, split="transfer", task="sql").axes[0].get_title()
