"""``make demo``: the whole story on a CPU in a few minutes.

1. Exact bandit targets (toy_bandits): every divergence on MARA's Fig. 3 and Fig. 4 bandits, with
   and without MARA — a printed table and saved figures.
2. The built-in tiny model on Countdown: evaluate the base model, train GRPO (no KL) and DPH-JS on
   the same prompts and seed, and print the Pass@k / diversity table.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np

from toy_bandits import DIVERGENCES, PRESETS, mara_target, optimal_policy
from toy_bandits.plots import plot_targets_vs_beta

from .config import preset_config
from .experiments import compare, format_table
from .plots import plot_pass_at_k_curves


def bandit_table(beta: float = 0.5) -> str:
    lines = [f"Exact optimal targets at beta={beta} (rows: divergence; columns: arms)", ""]
    for preset, tau in (("fig3", 0.9), ("fig4", 1.0)):
        bandit = PRESETS[preset]()
        lines.append(f"{preset}: rewards={np.round(bandit.rewards, 3).tolist()} "
                     f"reference={np.round(bandit.reference, 3).tolist()}, MARA (Algorithm 2) tau={tau}")
        for div in DIVERGENCES:
            target = optimal_policy(bandit.rewards, bandit.reference, beta, div)
            mara = mara_target(bandit.rewards, bandit.reference, beta, tau, div, variant=2)
            lines.append(f"  {div:<11} {np.array2string(target, precision=3):<28} MARA: "
                         f"{np.array2string(mara, precision=3)}")
        lines.append("")
    return "\n".join(lines)


def run_demo(out_dir: str | Path = "outputs/demo", quick: bool = False, steps: int | None = None) -> list[dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(bandit_table())
    betas = np.logspace(-3, 1, 60)
    for preset in ("fig3", "fig5"):
        fig = plot_targets_vs_beta(PRESETS[preset](), betas)
        fig.savefig(out / f"bandit_targets_{preset}.png", dpi=110, bbox_inches="tight")
    print(f"bandit figures saved in {out}/\n")

    steps = steps or (4 if quick else 40)
    # DPH-JS as released: the preset's eta (sft_loss_coeff 0.01 converted) and 4-of-4 split
    cfg = preset_config("tiny-cpu", steps=steps, lr=5e-4, train_size=64 if quick else 300,
                        eval_size=16 if quick else 60, eval_n=16 if quick else 64,
                        eval_ks=[1, 2, 4, 8, 16] if quick else [1, 2, 4, 8, 16, 32, 64],
                        prompts_per_step=8 if quick else 16, save_every=max(steps, 1))
    cfg = dataclasses.replace(cfg, output_dir=str(out / "runs"))
    if (out / "runs").exists():  # the demo's own folder: each demo is a fresh run
        print(f"replacing the previous demo's runs in {out / 'runs'}")
        shutil.rmtree(out / "runs")
    print(f"Training the tiny model on Countdown: GRPO vs DPH-JS, {steps} steps each, same prompts and seed")
    rows = compare(cfg, {"grpo": {"method": "grpo"}, "dph_js": {"method": "dph_js"}},
                   seeds=[0], out_dir=out / "runs", splits=["test"], reuse=False)
    for split in ("test",):
        print(f"\n{split} (Pass@k and greedy in %, distinct correct solutions per prompt):")
        print(format_table(rows, split))
    fig = plot_pass_at_k_curves(out / "runs", split="test")
    fig.savefig(out / "pass_at_k.png", dpi=110, bbox_inches="tight")
    print("\nOne seed and a short run, in-domain only: results/countdown has three seeds, 150 steps and the "
          "out-of-domain splits, from tiny, the built-in model in the papers' regime (notebook 04 tells the "
          "whole story).")
    print(f"\nFigures: {out}/bandit_targets_fig3.png, {out}/bandit_targets_fig5.png, {out / 'pass_at_k.png'}")
    print(f"Tables: {out / 'runs'}/summary.csv (mean over seeds) and {out / 'runs'}/results.csv (per seed)")
    return rows
