"""Double-descent sweep: min-norm random ReLU features, overfit against a numpy loop.

The workload (Belkin et al. 2019, model-wise double descent): n = 200 noisy samples of
a linear truth in d = 10 inputs (``x ~ N(0, I)``, ``|b|^2 = 1``, noise std 0.5) and
1000 test points; N random ReLU features ``sqrt(2/N) relu(x W + c)``,
``W ~ N(0, 1/d)``, ``c ~ N(0, 1)``, with N at 40 values from 20 to 1000 through
the threshold N = n; for every N, 50 fresh training sets, each fitted by
min-norm least squares; the test risk against the noiseless truth, the
training MSE and the coefficient norm per fit.

1. overfit: the ``double_descent`` experiment of a scenario (the public path
   ``overfit run`` takes), every (N, draw) member a float64 SVD solve inside a
   few compiled batched calls, timed in-process from the scenario to the
   numbers (compilation included) and as a whole process.
2. numpy: the loop a user would write: for each N and draw, build the
   features and call ``np.linalg.lstsq`` (LAPACK gelsd, min-norm), float64.

The tools draw different data, so the curves agree up to Monte-Carlo error:
compared by the median test risk away from the threshold. Run::

    python benchmarks/bench_double_descent.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST, D, NOISE, DRAWS = 200, 1000, 10, 0.5, 50
FEATURES = sorted({int(round(v)) for v in np.geomspace(20, 1000, 40)})
GOAL_S = 60.0


def scenario_table(draws: int) -> dict:
    return {"name": "bench_double_descent", "kind": "double_descent", "seed": 0,
            "data": {"source": "linear", "p": D, "n_train": N_TRAIN, "n_val": 0,
                     "n_test": N_TEST, "noise": NOISE, "r2": 1.0},
            "model": {"kind": "random_features", "features": "relu"},
            "train": {"method": "closed_form"},
            "sweep": {"capacity": FEATURES, "seeds": draws}}


def run_overfit(draws: int) -> dict:
    t0 = time.perf_counter()
    import matplotlib.pyplot as plt

    from overfit import experiments, scenario

    t_import = time.perf_counter() - t0
    sc = scenario.from_dict(scenario_table(draws))
    t0 = time.perf_counter()
    rows, figures = experiments.double_descent(sc)
    wall = time.perf_counter() - t0
    for fig in figures.values():
        plt.close(fig)
    risk = np.array([r["test_risk"] for r in rows if r["regularization"] == "min-norm"])
    return dict(tool="overfit", import_s=t_import, run_s=wall,
                median_risk=np.median(risk.reshape(len(FEATURES), draws), axis=1).tolist())


def run_numpy(draws: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(D)
    b /= np.linalg.norm(b)
    t0 = time.perf_counter()
    risk = np.empty((len(FEATURES), draws))
    for i, n_feat in enumerate(FEATURES):
        for s in range(draws):
            x, x_test = rng.standard_normal((N_TRAIN, D)), rng.standard_normal((N_TEST, D))
            y = x @ b + NOISE * rng.standard_normal(N_TRAIN)
            w, c = rng.standard_normal((D, n_feat)) / np.sqrt(D), rng.standard_normal(n_feat)
            scale = np.sqrt(2.0 / n_feat)
            phi, phi_test = (scale * np.maximum(z @ w + c, 0.0) for z in (x, x_test))
            coef = np.linalg.lstsq(phi, y, rcond=None)[0]
            risk[i, s] = np.mean((phi_test @ coef - x_test @ b) ** 2)
    return dict(tool="numpy", import_s=0.0, run_s=time.perf_counter() - t0,
                median_risk=np.median(risk, axis=1).tolist())


RUNNERS = {"overfit": run_overfit, "numpy": run_numpy}


def whole_process(tool: str, draws: int) -> tuple[float, dict]:
    from _common import run_child

    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", tool, "--draws", str(draws)]
    return run_child(cmd, timeout=1800)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted(RUNNERS), help="run one tool, print JSON")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"draws per N (default {DRAWS})")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error(f"--draws {args.draws} must be >= 1")
    if args.only:
        print(json.dumps(RUNNERS[args.only](args.draws)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import cpu_pressure, environment, speed, table

    print(f"# bench_double_descent: {len(FEATURES)} values of N ({FEATURES[0]}..{FEATURES[-1]})"
          f" x {args.draws} draws, n={N_TRAIN}, d={D}, n_test={N_TEST}")
    for k, v in environment().items():
        print(f"  {k}: {v}")
    results = {tool: whole_process(tool, args.draws) for tool in RUNNERS}
    rows = [[tool, f"{wall:.1f}", f"{r['import_s']:.1f}", f"{r['run_s']:.1f}"]
            for tool, (wall, r) in results.items()]
    print()
    print(table(["tool", "whole process (s)", "imports (s)", "sweep in-process (s)"], rows))
    of, npy = results["overfit"][1], results["numpy"][1]
    print()
    print(f"overfit sweep: {of['run_s']:.1f} s (goal < {GOAL_S:.0f} s: "
          f"{'met' if of['run_s'] < GOAL_S else 'NOT met'}); "
          f"{speed(npy['run_s'] / of['run_s'])} the numpy loop in-process, "
          f"{speed(results['numpy'][0] / results['overfit'][0])} it as whole processes "
          "(one run each: expect +-20 % on a shared machine)")
    pressure = cpu_pressure()
    if pressure is not None and pressure > 20:
        print(f"WARNING: CPU pressure {pressure:g}% at the end: other work competed for the "
              "cores, times may be inflated.")
    print()
    print("median test risk (different draws: Monte-Carlo agreement, the threshold is N = n)")
    show = [i for i, n in enumerate(FEATURES) if n in (FEATURES[0], FEATURES[-1])
            or abs(n - N_TRAIN) == min(abs(m - N_TRAIN) for m in FEATURES)
            or n in (FEATURES[len(FEATURES) // 4], FEATURES[3 * len(FEATURES) // 4])]
    print(table(["N", "N / n", "overfit", "numpy"],
                [[str(FEATURES[i]), f"{FEATURES[i] / N_TRAIN:.2f}",
                  f"{of['median_risk'][i]:.3g}", f"{npy['median_risk'][i]:.3g}"]
                 for i in show]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
