"""What measuring the DPH / KL share of every update costs (``TrainConfig.measure_shares``, shares.py).

Trains the built-in tiny model with the ``tiny-cpu`` preset for a few steps with the measurement on
and off, for DPH-JS and RKL, on the same seed, and prints the mean step time of each and the
overhead. Each setting runs ``--repeats`` times, alternating, and keeps its fastest median, which
is the least disturbed by other work on the machine. Run: ``python benchmarks/bench_shares.py
[--steps 12] [--repeats 2]`` (the first two steps of each run are warm-up and not counted).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from dphrl_mini.config import preset_config
from dphrl_mini.trainer import Trainer

VARIANTS = {"DPH-JS (eta 0.3)": dict(method="dph_js", eta=0.3), "RKL (beta 0.05)": dict(method="rkl", kl_coef=0.05)}


def step_seconds(overrides: dict, measure: bool, steps: int, folder: str) -> float:
    """The median time of a training step after two warm-up steps."""
    config = preset_config("tiny-cpu", **overrides, steps=steps, train_size=400, measure_shares=measure,
                           output_dir=folder, progress=False, save_every=10_000)
    history = Trainer(config).train()
    return statistics.median(m["time_step"] for m in history[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{'method':<18} {'off (s/step)':>13} {'on (s/step)':>12} {'overhead':>9}")
    for name, overrides in VARIANTS.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for measure in (False, True):
                with tempfile.TemporaryDirectory() as folder:
                    times[measure].append(step_seconds(overrides, measure, args.steps, folder))
        off, on = min(times[False]), min(times[True])
        print(f"{name:<18} {off:>13.3f} {on:>12.3f} {100 * (on / off - 1):>8.1f}%")


if __name__ == "__main__":
    main()
