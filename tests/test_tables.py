"""The tables compare writes: the 95% interval and the headline table of the README."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dphrl_mini.experiments import headline_table, interval_95


def test_interval_95_is_students_t():
    assert interval_95(1.0, 5) == pytest.approx(2.776 / np.sqrt(5), rel=1e-4)
    assert interval_95(2.0, 2) == pytest.approx(12.706 * 2 / np.sqrt(2), rel=1e-4)
    assert interval_95(1.0, 1) == 0.0  # one seed: no interval


def test_headline_table_intervals_and_shares(tmp_path):
    rows = []
    for seed, (p1, p64, ood) in enumerate([(0.4, 0.9, 0.5), (0.5, 0.8, 0.3), (0.6, 0.7, 0.4)]):
        for method, shift in (("grpo", 0.0), ("dph_js", 0.1)):
            rows.append({"method": method, "seed": seed, "split": "test", "pass@1": p1 + shift, "pass@64": p64,
                         "distinct_correct": 3.0})
            rows.append({"method": method, "seed": seed, "split": "ood", "pass@1": 0.1, "pass@64": ood,
                         "distinct_correct": 1.0})
        run = tmp_path / "dph_js" / f"seed{seed}"
        run.mkdir(parents=True)
        run.joinpath("metrics.jsonl").write_text(
            "\n".join(json.dumps({"step": i, "dph_update_share": 0.01 * (seed + 1)}) for i in range(3)))
    lines = headline_table(rows, tmp_path, k=64).splitlines()
    assert lines[0] == "| method | seeds | Pass@1 | Pass@64 | distinct correct | ood Pass@64 | share of the update |"
    half = 100 * interval_95(np.std([0.4, 0.5, 0.6], ddof=1), 3)
    assert lines[2] == f"| GRPO | 3 | 50.0 ± {half:.1f} | 80.0 ± {half:.1f} | 3.0 ± 0.0 | 40.0 ± {half:.1f} | – |"
    assert lines[3].startswith(f"| DPH-JS | 3 | 60.0 ± {half:.1f} |") and lines[3].endswith("| 2.00 |")
    assert "ood" not in headline_table([r for r in rows if r["split"] == "test"], tmp_path).splitlines()[0]
