"""Bias-variance sweep: overfit against mlxtend + scikit-learn, side by side.

The workload (scikit-learn's "Underfitting vs. Overfitting" data): n = 30 points
``x ~ U[0, 1]``, ``y = cos(1.5 pi x) + 0.1 N(0, 1)`` (numpy seed 0) and a test
set of 200 points from the same law. For every polynomial degree 1..15, 200
bootstrap rounds: refit on the resampled training set, predict the test set,
and decompose the squared loss into bias^2 + variance (mlxtend's convention:
noisy targets, ``ddof=0``).

1. overfit: ONE jitted function (float64) for all 15 x 200 = 3000 members:
   bootstrap indices vmapped over keys, ``fit_linear`` of the masked
   ``polynomial(15)`` (one batched QR; the degree is a per-member state), the
   test predictions ``(15, 200, n_test)``, then ``decompose.squared`` per degree;
   compiled with ``overfit.sweep.fast_compile_options()`` (LLVM optimisation off, XLA's
   older CPU emitters).
2. mlxtend: ``bias_variance_decomp(make_pipeline(PolynomialFeatures(d),
   LinearRegression()), ..., loss="mse", num_rounds=200)`` for d = 1..15.

Each tool is timed in-process (steady state: overfit's second call of the
compiled function, the fastest of ``--repeat``; mlxtend's fastest sweep) and as
a whole Python process (``--only TOOL`` in a subprocess; wall time including
interpreter start, imports and, for overfit, compilation). The two tools draw
different bootstrap samples, so their numbers agree only up to Monte-Carlo
error; they are compared on the well-conditioned degrees 1..4. That the work is
the same is checked exactly: overfit's function run on mlxtend's own resamples
gives mlxtend's numbers there. mlxtend is an optional peer (``.[peers]``):
without it overfit's row is timed alone. Run::

    python benchmarks/bench_bias_variance.py             # full comparison
    python benchmarks/bench_bias_variance.py --only overfit   # one tool, JSON out

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST, MAX_DEGREE, ROUNDS = 30, 200, 15, 200
COMPARE_UP_TO = 4  # degrees where raw-power PolynomialFeatures stays well conditioned
GOAL_STEADY, GOAL_E2E = 50.0, 2.0


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.sort(rng.rand(n))
        return x, np.cos(1.5 * np.pi * x) + 0.1 * rng.randn(n)

    x, y = draw(N_TRAIN)
    x_test, y_test = draw(N_TEST)
    return x, y, x_test, y_test


# ------------------------------------------------------------------------------ overfit


def run_overfit(repeat: int, seed: int, replicates: int = 0, parity: bool = False) -> dict:
    t_import = time.perf_counter()
    import jax
    import jax.numpy as jnp
    from threadpoolctl import threadpool_limits

    from overfit import decompose
    from overfit.data import bootstrap_indices
    from overfit.models import polynomial
    from overfit.solve import fit_linear
    from overfit.sweep import fast_compile_options

    t_import = time.perf_counter() - t_import
    x, y, x_test, y_test = make_data(seed)

    with jax.enable_x64(True):
        model = polynomial(MAX_DEGREE)

        def on_rows(rows, x, y, x_test, y_test):
            """The decomposition per degree, ``rows`` (3000, n): each member's resample."""
            degrees = jnp.repeat(jnp.arange(1, MAX_DEGREE + 1), ROUNDS)

            def member(idx, d):
                state = {"degree": d.astype(jnp.int32)}
                params = fit_linear(model, state, x[idx, None], y[idx])
                return model.apply(params, state, x_test[:, None])

            preds = jax.vmap(member)(rows, degrees)  # one batched QR over 3000 members
            preds = preds.reshape(MAX_DEGREE, ROUNDS, -1)
            terms = jax.vmap(lambda p: decompose.squared(p, y=y_test))(preds)
            return terms.loss.value, terms.bias2.value, terms.variance.value

        @functools.partial(jax.jit, compiler_options=fast_compile_options())
        def sweep(key, x, y, x_test, y_test):
            keys = jax.random.split(key, MAX_DEGREE * ROUNDS)
            rows = jax.vmap(bootstrap_indices, in_axes=(0, None))(keys, x.shape[0])
            return on_rows(rows, x, y, x_test, y_test)

        args = (jax.random.key(seed), *(jnp.asarray(a) for a in (x, y, x_test, y_test)))
        # as overfit.sweep.map_members does: XLA's CPU LAPACK calls scipy's OpenBLAS, whose
        # own threads fight XLA's for the cores
        limit = threadpool_limits(limits=1, user_api="blas")
        t0 = time.perf_counter()
        out = jax.block_until_ready(sweep(*args))
        first = time.perf_counter() - t0
        steady = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = jax.block_until_ready(sweep(*args))
            steady.append(time.perf_counter() - t0)
        loss, bias2, var = (np.asarray(a, dtype=np.float64) for a in out)
        # Monte-Carlo spread: the same sweep with other bootstrap keys (same data)
        reps = np.array([np.asarray(sweep(jax.random.key(seed + 1000 + r), *args[1:]))
                         for r in range(replicates)]) if replicates else np.zeros((0, 3, 15))
        # the same work, checked: mlxtend's own resamples (RandomState(seed + d) per degree)
        same = np.asarray(jax.jit(on_rows)(jnp.asarray(mlxtend_rows(seed)), *args[1:])
                          ) if parity else None
        limit.restore_original_limits()
    band = {term: (np.quantile(reps[:, j], [0.05, 0.95], axis=0).tolist() if replicates else None)
            for j, term in enumerate(("loss", "bias2", "variance"))}
    return dict(tool="overfit", import_s=t_import, first_s=first,
                steady_s=min(steady, default=None), loss=loss.tolist(), bias2=bias2.tolist(),
                variance=var.tolist(), band=band, replicates=replicates,
                same_rows=None if same is None else same.tolist())


def mlxtend_rows(seed: int) -> np.ndarray:
    """The rows mlxtend's bias_variance_decomp resamples for degrees 1..15, ``(3000, n)``:
    ``RandomState(random_seed).choice(n, n)`` per round, as its _draw_bootstrap_sample."""
    out = []
    for d in range(1, MAX_DEGREE + 1):
        rng = np.random.RandomState(seed + d)
        out += [rng.choice(np.arange(N_TRAIN), size=N_TRAIN, replace=True) for _ in range(ROUNDS)]
    return np.array(out)


# ------------------------------------------------------------------------------ mlxtend


def run_mlxtend(repeat: int, seed: int) -> dict:
    t_import = time.perf_counter()
    from mlxtend.evaluate import bias_variance_decomp
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    t_import = time.perf_counter() - t_import
    x, y, x_test, y_test = make_data(seed)

    def sweep() -> np.ndarray:
        rows = []
        for d in range(1, MAX_DEGREE + 1):
            est = make_pipeline(PolynomialFeatures(d), LinearRegression())
            rows.append(bias_variance_decomp(est, x[:, None], y, x_test[:, None], y_test,
                                             loss="mse", num_rounds=ROUNDS, random_seed=seed + d))
        return np.array(rows, dtype=np.float64)

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = sweep()
        times.append(time.perf_counter() - t0)
    return dict(tool="mlxtend", import_s=t_import, first_s=times[0], steady_s=min(times),
                loss=out[:, 0].tolist(), bias2=out[:, 1].tolist(), variance=out[:, 2].tolist())


RUNNERS = {"overfit": run_overfit, "mlxtend": run_mlxtend}


def whole_process(tool: str, seed: int) -> tuple[float, dict]:
    """Wall time of ``python bench_bias_variance.py --only TOOL --repeat 0`` (start to exit)."""
    from _common import run_child

    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", tool, "--repeat", "0",
           "--replicates", "0", "--seed", str(seed)]
    return run_child(cmd, timeout=900)


# ------------------------------------------------------------------------------ main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted(RUNNERS),
                   help="run one tool once (plus --repeat steady calls) and print JSON")
    p.add_argument("--repeat", type=int, default=3,
                   help="steady-state repeats in-process; fastest counts (default 3)")
    p.add_argument("--seed", type=int, default=0, help="data and bootstrap seed")
    p.add_argument("--replicates", type=int, default=40,
                   help="extra overfit sweeps with other bootstrap keys, for the Monte-Carlo "
                        "band of the agreement check (default 40)")
    args = p.parse_args(argv)
    if args.repeat < 0 or args.replicates < 0:
        p.error("--repeat and --replicates must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.only:
        # overfit's first call (compile + run) is the whole workload; --repeat adds steady
        # calls. mlxtend has no compile step: one sweep is the workload.
        repeat = max(args.repeat, 1) if args.only == "mlxtend" else args.repeat
        print(json.dumps(RUNNERS[args.only](repeat, args.seed)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import SKIPPED, environment, optional_import, speed, table

    print(f"# bench_bias_variance: degrees 1..{MAX_DEGREE} x {ROUNDS} bootstrap rounds, "
          f"n={N_TRAIN}, n_test={N_TEST}")
    env = environment()
    mlxtend = optional_import("mlxtend")
    env["mlxtend"] = mlxtend.__version__ if mlxtend else "not installed"
    for k, v in env.items():
        print(f"  {k}: {v}")
    tools = ["overfit", "mlxtend"] if mlxtend else ["overfit"]

    e2e = {tool: whole_process(tool, args.seed)[0] for tool in tools}
    of = run_overfit(max(args.repeat, 1), args.seed, args.replicates, parity=bool(mlxtend))
    rows = [["overfit (one jit, float64)", f"{e2e['overfit']:.2f}", f"{of['import_s']:.2f}",
             f"{of['first_s']:.3f}", f"{of['steady_s'] * 1e3:.1f}"]]
    if not mlxtend:
        rows.append(["mlxtend + scikit-learn", SKIPPED, "-", "-", "-"])
    else:
        ml = run_mlxtend(max(args.repeat, 1), args.seed)
        rows.append(["mlxtend + scikit-learn", f"{e2e['mlxtend']:.2f}", f"{ml['import_s']:.2f}",
                     f"{ml['first_s']:.3f}", f"{ml['steady_s'] * 1e3:.1f}"])
    print()
    print(table(["tool", "end-to-end process (s)", "imports in-process (s)",
                 "first call (s)", "steady (ms)"], rows))
    if not mlxtend:
        print("\nmlxtend is an optional peer: pip install -e '.[peers]' to compare.")
        return 0
    r_steady = ml["steady_s"] / of["steady_s"]
    r_e2e = e2e["mlxtend"] / e2e["overfit"]
    print()
    print(f"once compiled: overfit is {speed(r_steady)} mlxtend (goal >= {GOAL_STEADY:.0f}x "
          f"faster: {'met' if r_steady >= GOAL_STEADY else 'NOT met'})")
    print(f"end-to-end   : overfit is {speed(r_e2e)} mlxtend (goal >= {GOAL_E2E:.0f}x faster: "
          f"{'met' if r_e2e >= GOAL_E2E else 'NOT met'})")

    # the same work: overfit on mlxtend's own resamples gives mlxtend's numbers where
    # scikit-learn's raw-power basis is well conditioned
    same = np.asarray(of["same_rows"])  # (3, degrees): loss, bias2, variance
    ours = np.array([ml["loss"], ml["bias2"], ml["variance"]])
    rel = np.abs(same - ours)[:, :COMPARE_UP_TO] / np.abs(ours[:, :COMPARE_UP_TO])
    print(f"\nsame resamples (mlxtend's RandomState(seed + degree)), degrees 1..{COMPARE_UP_TO}: "
          f"largest relative difference {rel.max():.1e} "
          f"({'the same computation' if rel.max() < 1e-6 else 'NOT the same: check'})")

    print()
    band = of["band"]
    if band["loss"] is None:
        print("(--replicates 0: no Monte-Carlo band for the independent draws)")
        return 0
    print("independent draws: Monte-Carlo error only; 'in band' = mlxtend's value lies in the "
          f"5-95% range of {of['replicates']} overfit sweeps with other keys")
    agree_rows, inside, worst = [], 0, {"loss": 0.0, "bias2": 0.0, "variance": 0.0}
    for i in range(MAX_DEGREE):
        d = i + 1
        row = [str(d)]
        for term in ("loss", "bias2", "variance"):
            a, b = of[term][i], ml[term][i]
            lo, hi = band[term][0][i], band[term][1][i]
            ok = lo <= b <= hi
            rel_ab = abs(a - b) / abs(b)
            if d <= COMPARE_UP_TO:
                worst[term] = max(worst[term], rel_ab)
                inside += ok
            flag = "" if ok else " *"
            row += [f"{a:.4g}", f"{b:.4g}", f"{rel_ab:.0%}", f"{lo:.3g}..{hi:.3g}{flag}"]
        agree_rows.append(row)
    print(table(["deg", "loss of", "loss ml", "rel", "of band", "bias2 of", "bias2 ml", "rel",
                 "of band", "var of", "var ml", "rel", "of band"], agree_rows))
    print(f"degrees 1..{COMPARE_UP_TO}: {inside} of {3 * COMPARE_UP_TO} mlxtend numbers inside "
          "overfit's Monte-Carlo band (* = outside); largest relative difference of the single "
          "runs: " + ", ".join(f"{k} {v:.0%}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
