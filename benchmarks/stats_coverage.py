"""Coverage and false positives of dsbs.stats on simulated experiments whose true difference is known.

The review's setting (tests/test_stats.py builds the experiments): 1,000 test items, most of them almost
always right or almost always wrong, each seed shifting a method's accuracy by a run effect with a
standard deviation of 2 points. Prints, per number of seeds and true difference, the share of 95%
intervals that cover the true difference, the share that exclude 0, and the share of p-values < 0.05.

    python benchmarks/stats_coverage.py [--trials 2000]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dsbs.stats import compare  # noqa: E402
from tests.test_stats import experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    args = parser.parse_args()
    started = time.time()
    print("| seeds | true difference | covered | excludes 0 | p < 0.05 | median width |")
    print("|---|---|---|---|---|---|")
    for seeds, true in ((2, 0.0), (2, 2.0), (3, 0.0), (3, 2.0), (5, 0.0), (5, 5.0)):
        rng = np.random.default_rng(seeds * 100 + int(true))
        results = [compare(*experiment(rng, seeds, args.items, true)) for _ in range(args.trials)]
        covered = np.mean([d.low <= true <= d.high for d in results])
        excluded = np.mean([d.low > 0 or d.high < 0 for d in results])
        significant = np.mean([d.p_value < 0.05 for d in results])
        width = np.median([d.high - d.low for d in results])
        print(f"| {seeds} | {true:+.0f} | {covered:.3f} | {excluded:.3f} | {significant:.3f} | {width:.1f} |",
              flush=True)
    print(f"trials={args.trials} items={args.items} seconds={time.time() - started:.0f}")


if __name__ == "__main__":
    main()
