"""``make demo`` (``dphrl-mini demo``): a second demo replaces the first one's runs without warnings."""

import warnings

from dphrl_mini.demo import run_demo


def test_demo_runs_twice_quietly(tmp_path, capsys):
    run_demo(tmp_path, quick=True, steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. compare's "overwrite=True: deleted ..." warning
        rows = run_demo(tmp_path, quick=True, steps=1)
    out = capsys.readouterr().out
    assert "replacing the previous demo's runs" in out
    assert {r["method"] for r in rows} == {"base", "grpo", "dph_js"}
    assert (tmp_path / "pass_at_k.png").exists() and (tmp_path / "runs" / "summary.csv").exists()
