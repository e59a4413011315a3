"""Wall time of ``toy_bandits.optimal_policy`` on a large bandit, for every divergence.

    python benchmarks/bench_optimal_policy.py [--arms 10000] [--betas 200] [--repeat 3] [--json]

Random rewards in [0, 1) under a random Dirichlet reference, beta on a log grid 1e-4..1e2 (one
call per divergence solves all betas at once). Reports the best of ``--repeat`` runs per
divergence, their total, and the largest |sum(pi) - 1| over every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_bandits import DIVERGENCES, optimal_policy  # noqa: E402


def run(n_arms: int = 10_000, n_betas: int = 200, repeat: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rewards = rng.random(n_arms)
    reference = rng.dirichlet(np.ones(n_arms))
    betas = np.logspace(-4, 2, n_betas)
    seconds, norm_error = {}, 0.0
    for divergence in DIVERGENCES:
        best = np.inf
        for _ in range(repeat):
            start = time.perf_counter()
            pi = optimal_policy(rewards, reference, betas, divergence)
            best = min(best, time.perf_counter() - start)
        seconds[divergence] = best
        norm_error = max(norm_error, float(np.max(np.abs(pi.sum(axis=1) - 1.0))))
    return {"n_arms": n_arms, "n_betas": n_betas, "seconds": seconds,
            "total_seconds": sum(seconds.values()), "max_normalization_error": norm_error}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", type=int, default=10_000)
    parser.add_argument("--betas", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args.arms, args.betas, args.repeat)
    if args.json:
        print(json.dumps(result))
        return
    print(f"optimal_policy: {result['n_arms']} arms x {result['n_betas']} betas (best of {args.repeat})")
    for divergence, sec in result["seconds"].items():
        print(f"  {divergence:<11s} {sec * 1e3:8.1f} ms")
    print(f"  {'total':<11s} {result['total_seconds'] * 1e3:8.1f} ms")
    print(f"max |sum(pi) - 1| = {result['max_normalization_error']:.1e}")


if __name__ == "__main__":
    main()
