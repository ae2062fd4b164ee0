"""What early stopping costs inside ``fit``, and what it saves.

The workload: M = 64 MLPs 1-32-32-1 (tanh) trained in one ``fit`` call with
``key=jax.random.split(key, M)``, on one ``regression(target="sin", n_train=64,
n_val=64, noise=0.3)`` draw, Adam 1e-2, 2000 full-batch epochs (one step each),
history recorded every epoch (``eval_every=1``). Rows:

* ``early_stopping=None``: the baseline, the full budget with no rule;
* ``patience(patience=10**6)``: a rule that never triggers, so the loop runs the
  full budget but pays for the rule (state update, masking of stopped members,
  and with ``restore_best=True`` a copy of the best parameters), once with
  ``restore_best=True`` (the default) and once with ``restore_best=False``;
* ``patience(patience=P)`` (default P = 20): every member stops early; the loop
  ends when the last member stops, so its time should be about
  ``(max stop_epoch + 1) / epochs`` of a full-budget call with the same rule.

Goals (from the issue): the never-triggering rule adds under 10 % to the
baseline, and the all-stop batch finishes proportionally sooner.

Model, optimizer and rule objects are created once and reused (an equal fresh
one would hit ``fit``'s compile cache too: ``overfit/static.py``). The first call
of each row compiles (its compile time is reported separately, from
``jax.monitoring`` events); the steady time is the fastest of ``--repeat``
further calls, blocking on ``result.params``.

    python benchmarks/bench_early_stopping.py            # ~1 min on 2 cores
    python benchmarks/bench_early_stopping.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
from _common import environment, fmt, table

from overfit.clock import CompileClock
from overfit.data import regression
from overfit.early_stopping import patience
from overfit.models import mlp
from overfit.train import fit

OVERHEAD_GOAL = 0.10  # the rule may add at most 10 % to a full-budget call
PROPORTION_TOL = 0.15  # "proportionally sooner": within 15 % of the epoch fraction


def run_all(specs, model, data, keys, opt, epochs, repeat, clock):
    """Compile every row, then time them in interleaved rounds (load drift hits all alike)."""
    def call(rule):
        result = fit(model, data, key=keys, optimizer=opt, epochs=epochs, early_stopping=rule)
        jax.block_until_ready(result.params)
        return result

    rows = []
    for label, rule in specs:
        before = clock.seconds
        t0 = time.perf_counter()
        result = call(rule)
        stop = np.asarray(result.stop_epoch)
        rows.append(dict(label=label, first=time.perf_counter() - t0,
                         compile=clock.seconds - before, times=[], miss=False,
                         stop_min=int(stop.min()), stop_max=int(stop.max()),
                         all_stopped=bool((stop < epochs - 1).all())))
    for _ in range(repeat):
        for row, (_, rule) in zip(rows, specs):
            n = clock.compiles
            t0 = time.perf_counter()
            call(rule)
            row["times"].append(time.perf_counter() - t0)
            row["miss"] |= clock.compiles > n
    for row in rows:
        row["steady"] = min(row["times"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=None, help="M (default 64)")
    p.add_argument("--epochs", type=int, default=None, help="full budget (default 2000)")
    p.add_argument("--patience", type=int, default=20, help="the all-stop row's patience")
    p.add_argument("--repeat", type=int, default=None, help="steady calls (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="M = 8, 400 epochs, 2 repeats (where not given)")
    args = p.parse_args()
    defaults = dict(models=8, epochs=400, repeat=2) if args.quick else dict(
        models=64, epochs=2000, repeat=3)
    for k, v in defaults.items():  # --quick fills what was not given, not overrides it
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.models, args.epochs, args.repeat, args.patience) < 1:
        p.error("--models, --epochs, --repeat and --patience must be >= 1")

    for k, v in environment().items():
        print(f"{k:>12}: {v}")
    print(f"\nM = {args.models} MLPs 1-32-32-1 tanh, sin regression n_train 64 / n_val 64, "
          f"noise 0.3, Adam 1e-2, {args.epochs} full-batch epochs, eval_every=1, "
          f"min of {args.repeat} interleaved steady calls\n")

    clock = CompileClock()
    key = jax.random.key(args.seed)
    data = regression(jax.random.fold_in(key, 1), target="sin", n_train=64, n_val=64,
                      noise=0.3)
    keys = jax.random.split(jax.random.fold_in(key, 2), args.models)
    model, opt = mlp(1, (32, 32)), optax.adam(1e-2)  # built once (equal fresh ones would do)
    never_restore = patience(patience=10**6)
    never_plain = patience(patience=10**6, restore_best=False)
    stops = patience(patience=args.patience)
    specs = [("early_stopping=None (baseline)", None),
             ("patience(10**6), restore_best=True", never_restore),
             ("patience(10**6), restore_best=False", never_plain),
             (f"patience({args.patience}), restore_best=True", stops)]
    rows = run_all(specs, model, data, keys, opt, args.epochs, args.repeat, clock)
    base, full = rows[0]["steady"], rows[1]["steady"]
    print(table(
        ["run", "first call s", "compile s", "steady s", "vs baseline", "stop epochs (min-max)",
         "note"],
        [[r["label"], fmt(r["first"]), fmt(r["compile"]), fmt(r["steady"], ".3f"),
          fmt(r["steady"] / base, ".3f"), f"{r['stop_min']}-{r['stop_max']}",
          "jit cache MISS" if r["miss"] else ""] for r in rows]))
    print(f"\nend load: {environment()['load']}\n")

    for r in rows[1:3]:
        over = r["steady"] / base - 1
        print(f"overhead of {r['label']} on a full-budget call: {over:+.1%} "
              f"(goal < {OVERHEAD_GOAL:.0%}): {'met' if over < OVERHEAD_GOAL else 'NOT met'}")
    r = rows[3]
    frac = (r["stop_max"] + 1) / args.epochs
    vs_base, vs_full = r["steady"] / base, r["steady"] / full
    print(f"all-stop batch: every member stopped early: {r['all_stopped']}; last stop at epoch "
          f"{r['stop_max']} -> (max stop + 1) / epochs = {frac:.3f}")
    print(f"  time ratio vs baseline (None) = {vs_base:.3f}; vs the same rule on the full "
          f"budget = {vs_full:.3f} (expected ~{frac:.3f})")
    ok = r["all_stopped"] and vs_full <= frac * (1 + PROPORTION_TOL)
    print(f"  proportionally sooner (ratio vs same-rule full budget <= "
          f"{1 + PROPORTION_TOL:.2f} x fraction): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
