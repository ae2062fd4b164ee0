"""Train M small MLPs side by side: overfit's fit() against the usual loops.

The workload: M multilayer perceptrons 1-64-64-1 (tanh), each trained for
``--steps`` full-batch Adam steps (same learning rate everywhere) on the same
64 points ``x ~ U[0, 1]``, ``y = sin(2 pi x) + 0.1 N(0, 1)``, with

1. overfit: ``fit(mlp(1, (64, 64)), data, key=jax.random.split(key, M),
   optimizer=optax.adam(lr), epochs=steps)`` (one compiled call; the history
   evaluated every epoch, the default, and every ``--eval-every`` epochs);
2. a hand-written JAX reference (``vmap`` + ``lax.scan`` of optax Adam, no
   evaluation, no masks): what the same hardware does with no library around it;
3. scikit-learn: M x ``MLPRegressor(...).fit`` in a Python loop;
4. PyTorch: M sequential models, each ``steps`` x ``torch.optim.Adam``;
5. PyTorch ``torch.func``: the M models stacked (``stack_module_state``) and
   run with ``vmap(functional_call)``, one Adam over the stacked parameters.

Peers that are not installed are reported as skipped. Run::

    python benchmarks/bench_mlp.py                  # M = 32, 2000 steps
    python benchmarks/bench_mlp.py --models 32 1024 # how the cost grows with M
    python benchmarks/bench_mlp.py --quick          # smoke test, under a minute

See benchmarks/README.md for the meaning of every column.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from collections.abc import Sequence

import numpy as np
from _common import (
    SKIPPED,
    check_json_path,
    cpu_load,
    cpu_pressure,
    environment,
    fmt,
    n_cores,
    optional_import,
    speed,
    table,
    timed,
    write_json,
)

from overfit.clock import CompileClock

HIDDEN = (64, 64)
N_TRAIN = 64
NOISE = 0.1
BUSY = 20.0  # % CPU pressure above which the run is flagged as contended
GOAL = 5.0  # the target: >= 5x faster than the scikit-learn loop once compiled


@dataclasses.dataclass
class Row:
    """One tool's result for M models; times in seconds for all M models."""

    tool: str
    n_models: int
    e2e: float | None = None
    steady: float | None = None
    mse: float | None = None
    note: str = ""
    compile_s: float | None = None  # JAX tracing + compilation inside the end-to-end call
    recompiled: bool = False  # the steady-state call compiled again (jit cache miss)

    @property
    def per_model_ms(self) -> float | None:
        return None if self.steady is None else 1e3 * self.steady / self.n_models


# ------------------------------------------------------------------------------ data


def make_data(seed: int):
    """The overfit Dataset and the same training split as float32 NumPy arrays."""
    import jax

    from overfit.data import regression

    data = regression(jax.random.key(seed), target="sin", n_train=N_TRAIN, n_val=N_TRAIN,
                      n_test=256, noise=NOISE, domain=(0.0, 1.0))
    x = np.array(data.x_train, np.float32)  # writable copies: torch.from_numpy wants them
    y = np.array(data.y_train, np.float32)
    return data, x, y


def mse_of(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean over models of each model's train MSE; ``pred`` is ``(M, n)``."""
    return float(np.mean((np.asarray(pred, np.float64) - y) ** 2))


# --------------------------------------------------------------------------- overfit


def bench_overfit(data, x, y, n_models: int, steps: int, lr: float, eval_every: int,
                  repeat: int, clock: CompileClock) -> Row:
    import jax
    import optax

    from overfit.models import mlp
    from overfit.train import fit

    keys = jax.random.split(jax.random.key(0), n_models)
    # fit's compile cache keys on what these compute (overfit/static.py): the
    # first call below compiles because its shapes (n_models) are new to this run.
    model, opt = mlp(1, HIDDEN), optax.adam(lr)

    def run():
        result = fit(model, data, key=keys, optimizer=opt, epochs=steps, eval_every=eval_every)
        return jax.block_until_ready(result)

    # fit's chunks reuse a program compiled for an earlier M of the same chunk shape:
    # without this, "end-to-end" at a later M would leave the compilation out
    jax.clear_caches()
    before = clock.seconds
    e2e, result = timed(run)
    compile_s = clock.seconds - before
    steady, recompiled = [], False
    for _ in range(repeat):  # same objects: the jit cache should hit
        n = clock.compiles
        steady.append(timed(run)[0])
        if clock.compiles > n:
            recompiled = True
            break  # every call recompiles: more repeats would only time the compiler
    pred = jax.vmap(model.apply, in_axes=(0, 0, None))(result.params, result.state, x)
    mse = mse_of(pred, y)
    notes = []
    if recompiled:
        notes.append("jit cache MISS: the 2nd call recompiled")
    # The history's last train MSE must be the returned parameters' MSE.
    last = float(np.mean(result.history.train_metric[:, -1]))
    if not math.isclose(last, mse, rel_tol=1e-3, abs_tol=1e-6):
        notes.append(f"history says train MSE {last:.3g}!")
    label = f"overfit fit(), eval_every={eval_every}"
    if eval_every == 1:
        label += " (the issue's call)"
    return Row(label, n_models, e2e, min(steady), mse, "; ".join(notes), compile_s, recompiled)


def bench_jax_reference(x, y, n_models: int, steps: int, lr: float, repeat: int,
                        clock: CompileClock) -> Row:
    import jax
    import jax.numpy as jnp
    import optax

    sizes = (1, *HIDDEN, 1)

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [(jax.random.normal(k, (m, n)) / jnp.sqrt(m), jnp.zeros(n))
                for k, m, n in zip(keys, sizes[:-1], sizes[1:])]

    def apply(params, x):
        h = x
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b)
        w, b = params[-1]
        return (h @ w + b)[:, 0]

    def loss(params, x, y):
        return 0.5 * jnp.mean((apply(params, x) - y) ** 2)

    def make():
        opt = optax.adam(lr)  # a new closure per make(): the first call compiles

        @jax.jit
        def train(keys, x, y):
            params = jax.vmap(init)(keys)
            opt_state = jax.vmap(opt.init)(params)

            def step(carry, _):
                params, opt_state = carry
                grads = jax.vmap(jax.grad(loss), in_axes=(0, None, None))(params, x, y)
                updates, opt_state = jax.vmap(opt.update)(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), None

            (params, _), _ = jax.lax.scan(step, (params, opt_state), None, length=steps)
            return jax.vmap(apply, in_axes=(0, None))(params, x)

        return train

    keys = jax.random.split(jax.random.key(0), n_models)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    train = make()
    before = clock.seconds
    e2e, pred = timed(lambda: jax.block_until_ready(train(keys, xj, yj)))
    compile_s = clock.seconds - before
    steady = min(timed(lambda: jax.block_until_ready(train(keys, xj, yj)))[0]
                 for _ in range(repeat))
    return Row("jax reference: vmap + scan, no eval", n_models, e2e, steady, mse_of(pred, y),
               "hand-written, for scale", compile_s)


# ---------------------------------------------------------------------- scikit-learn


def bench_sklearn(x, y, n_models: int, steps: int, lr: float) -> tuple[float, float] | None:
    """Seconds for ``n_models`` fits in a loop and their mean train MSE."""
    if optional_import("sklearn") is None:
        return None
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    def run():
        preds = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for i in range(n_models):
                est = MLPRegressor(
                    hidden_layer_sizes=HIDDEN, activation="tanh", solver="adam",
                    learning_rate_init=lr, batch_size=len(x), max_iter=steps, tol=0.0,
                    n_iter_no_change=steps + 1, alpha=0.0, shuffle=False, random_state=i,
                )
                est.fit(x, y)
                if est.n_iter_ != steps:
                    raise RuntimeError(f"MLPRegressor stopped after {est.n_iter_} of {steps}")
                preds.append(est.predict(x))
        return np.stack(preds)

    seconds, pred = timed(run)
    return seconds, mse_of(pred, y)


# --------------------------------------------------------------------------- PyTorch


def _torch_net(torch):
    layers, sizes = [], (1, *HIDDEN, 1)
    for m, n in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(m, n), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def choose_torch_threads(torch, x, y, requested: int | None) -> tuple[int, str]:
    """Threads for the torch rows: ``requested``, else the faster of all cores and 1.

    On these tiny matrices more threads rarely help, and under CPU contention
    torch's OpenMP pool was 60x slower with 2 threads than with 1 (a
    descheduled worker stalls every op): the torch rows would time the other
    load, not torch. A 30-step probe of each setting gives torch its best.
    """
    if requested:
        torch.set_num_threads(requested)
        return requested, "as requested"
    cores = n_cores()
    if cores == 1:
        torch.set_num_threads(1)
        return 1, "1 core"
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def ms_per_step(threads: int) -> float:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = _torch_net(torch)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def steps(n):
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                (0.5 * ((net(xt)[:, 0] - yt) ** 2).mean()).backward()
                opt.step()

        steps(5)
        return 1e3 * timed(lambda: steps(30))[0] / 30

    t_cores, t_one = ms_per_step(cores), ms_per_step(1)
    probe = f"probe: {cores} threads {t_cores:.2f} ms/step, 1 thread {t_one:.2f} ms/step"
    threads = 1 if t_one < t_cores else cores
    torch.set_num_threads(threads)
    return threads, probe


def bench_torch_loop(x, y, n_models: int, steps: int, lr: float) -> tuple[float, float] | None:
    torch = optional_import("torch")
    if torch is None:
        return None
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def run():
        preds = []
        for i in range(n_models):
            torch.manual_seed(i)
            net = _torch_net(torch)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = 0.5 * ((net(xt)[:, 0] - yt) ** 2).mean()  # sklearn's and overfit's loss
                loss.backward()
                opt.step()
            with torch.no_grad():
                preds.append(net(xt)[:, 0].numpy())
        return np.stack(preds)

    seconds, pred = timed(run)
    return seconds, mse_of(pred, y)


def bench_torch_vmap(x, y, n_models: int, steps: int, lr: float, repeat: int) -> Row | None:
    torch = optional_import("torch")
    if torch is None:
        return None
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def run():
        torch.manual_seed(0)
        nets = [_torch_net(torch) for _ in range(n_models)]
        params, buffers = stack_module_state(nets)  # leaves with requires_grad
        base = copy.deepcopy(nets[0]).to("meta")

        def one(p, b, x):
            return functional_call(base, (p, b), (x,))[:, 0]

        batched = vmap(one, in_dims=(0, 0, None))
        # Adam is elementwise, so one Adam over the stacked tensors is M
        # independent Adams; the sum of the members' losses has each member's
        # gradient in its own slice.
        opt = torch.optim.Adam(params.values(), lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((batched(params, buffers, xt) - yt) ** 2).mean(dim=1).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return batched(params, buffers, xt).numpy()

    e2e, pred = timed(run)
    steady = min([e2e] + [timed(run)[0] for _ in range(repeat - 1)])
    return Row("torch.func vmap ensemble", n_models, e2e, steady, mse_of(pred, y),
               "no compile step: end-to-end = first run")


# ----------------------------------------------------------------------------- report

PEERS = (("scikit-learn MLPRegressor loop", "the scikit-learn loop"),
         ("torch loop", "the PyTorch loop"),
         ("torch.func vmap ensemble", "the torch.func vmap ensemble"))


def loop_row(tool: str, measured: tuple[float, float] | None, n_timed: int,
             n_models: int) -> Row:
    if measured is None:
        return Row(tool, n_models, note=SKIPPED)
    seconds, mse = measured
    total = seconds * n_models / n_timed
    note = "no compile step: one run serves both columns"
    if n_timed != n_models:
        note = f"timed {n_timed} models, scaled x{n_models / n_timed:g} (linear)"
    return Row(tool, n_models, total, total, mse, note)


def report(rows: list[Row]) -> str:
    base = rows[0]  # the call: overfit fit(), eval_every=1
    body = []
    for r in rows:
        ratio = None if r.steady is None else r.steady / base.steady
        note = r.note
        if r.mse is not None and base.mse and not 0.5 <= r.mse / base.mse <= 2:
            # the same steps from other initial weights: at a few hundred steps the
            # errors may not have met yet, and the timed work is only nominally equal
            note = "; ".join(filter(None, [note, f"final MSE {r.mse / base.mse:.1f}x overfit's"]))
        body.append([r.tool, fmt(r.e2e), fmt(r.compile_s), fmt(r.steady),
                     fmt(r.per_model_ms, ".1f"), fmt(ratio, ".2f"), fmt(r.mse, ".4f"), note])
    out = [table(["tool", "end-to-end s", "compile s", "steady s", "per-model ms",
                  "ratio vs overfit steady", "final train MSE", "note"], body)]

    peers = [(r, what) for name, what in PEERS for r in rows
             if r.tool == name and r.steady is not None]
    ours = [r for r in rows if r.tool.startswith("overfit")]
    if not peers:
        return out[0]
    body = [[o.tool] + [f"{p.steady / o.steady:.2f}x / {p.e2e / o.e2e:.2f}x" for p, _ in peers]
            for o in ours]
    out.append("speed-up of overfit, peer time / overfit time, steady / end-to-end "
               "(> 1: overfit is faster)\n"
               + table(["overfit variant"] + [p.tool for p, _ in peers], body))

    lines = []
    cached = [o for o in ours if not o.recompiled]
    best = [min(cached, key=lambda r: r.steady)] if base.recompiled and cached else []
    for p, what in peers:
        # scikit-learn is the yardstick: every variant; the others: the
        # issue's call and, when that recompiles, the fastest cached variant
        extra = [o for o in cached if o is not base] if p.tool.startswith("scikit") else best
        for o in [base] + extra:
            tag = "" if o is base else f" [{o.tool[len('overfit fit(), '):]}]"
            goal = ""
            if p.tool.startswith("scikit"):
                met = p.steady / o.steady >= GOAL
                goal = f" (goal >= {GOAL:g}x: {'met' if met else 'NOT met'})"
            once = "on a repeat call (it recompiled)" if o.recompiled else "once compiled"
            lines.append(f"overfit{tag} is {speed(p.steady / o.steady)} {what} {once}{goal}")
            lines.append(f"overfit{tag} is {speed(p.e2e / o.e2e)} {what} end-to-end "
                         "including compilation")
    out.append("\n".join(lines))
    return "\n\n".join(out)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, nargs="+", default=None,
                   help="ensemble sizes M to time (default 32)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps = epochs (default 2000)")
    p.add_argument("--repeat", type=int, default=None,
                   help="steady-state calls per compiled tool; the fastest counts (default 3)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    p.add_argument("--eval-every", type=int, default=100,
                   help="eval_every of the second overfit row (default 100; must divide --steps)")
    p.add_argument("--sklearn-models", type=int, default=None,
                   help="the scikit-learn loop times at most this many models and scales "
                        "linearly to M (default 32)")
    p.add_argument("--torch-loop-models", type=int, default=None,
                   help="the same for the torch loop (default 2)")
    p.add_argument("--max-vmap-models", type=int, default=1024,
                   help="skip torch.func vmap above this M (default 1024)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: all cores or 1, whichever a short "
                        "probe finds faster)")
    p.add_argument("--no-peers", action="store_true",
                   help="time overfit and the JAX reference only")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: M=8, 200 steps, 1 repeat, loops time 2 models")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    args = p.parse_args(argv)
    quick = dict(models=[8], steps=200, repeat=1, sklearn_models=2, torch_loop_models=2)
    full = dict(models=[32], steps=2000, repeat=3, sklearn_models=32, torch_loop_models=2)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.models + [args.steps, args.repeat, args.sklearn_models,
                          args.torch_loop_models, args.eval_every]) < 1:
        p.error("--models, --steps, --repeat, --eval-every and the loop model counts must "
                "be >= 1")
    if args.torch_threads is not None and args.torch_threads < 1:
        p.error(f"--torch-threads {args.torch_threads}: give a count >= 1 (or leave it out "
                "to probe)")
    if not args.lr > 0:
        p.error(f"--lr {args.lr:g} must be > 0")
    if len(set(args.models)) < len(args.models):
        p.error(f"--models {args.models} repeats a size")
    bad = check_json_path(args.json)
    if bad:
        p.error(bad)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch = None if args.no_peers else optional_import("torch")
    print("# bench_mlp: M x MLP 1-64-64-1 (tanh), full-batch Adam")
    start_pressure = cpu_pressure()
    env = environment()
    for k, v in env.items():
        print(f"{k:>13}: {v}")
    print(f"{'workload':>13}: {args.steps} steps, lr {args.lr:g}, {N_TRAIN} points "
          f"x ~ U[0, 1], y = sin(2 pi x) + {NOISE:g} N(0, 1); M = {args.models}\n")

    clock = CompileClock()
    data, x, y = make_data(args.seed)
    if torch is not None:
        threads, why = choose_torch_threads(torch, x, y, args.torch_threads)
        env["torch threads"] = f"{threads} ({why})"
        print(f"{'torch threads':>13}: {env['torch threads']}")
    largest = max(args.models)
    n_sk, n_tl = min(largest, args.sklearn_models), min(largest, args.torch_loop_models)
    sk = tl = None
    if not args.no_peers:
        # The loops' cost is linear in M: time them once, scale to every M.
        print(f"timing the scikit-learn loop on {n_sk} models ...", flush=True)
        sk = bench_sklearn(x, y, n_sk, args.steps, args.lr)
        print(f"timing the torch loop on {n_tl} models ...", flush=True)
        tl = bench_torch_loop(x, y, n_tl, args.steps, args.lr)

    results: dict[int, list[Row]] = {}
    for m in args.models:
        print(f"\n## M = {m}", flush=True)
        rows = []
        every = [1] + ([args.eval_every] if args.eval_every != 1 else [])
        for e in every:
            if args.steps % e:
                print(f"(eval_every={e} does not divide --steps={args.steps}: row skipped)")
                continue
            rows.append(bench_overfit(data, x, y, m, args.steps, args.lr, e, args.repeat,
                                      clock))
        rows.append(bench_jax_reference(x, y, m, args.steps, args.lr, args.repeat, clock))
        if not args.no_peers:
            rows.append(loop_row("scikit-learn MLPRegressor loop", sk, n_sk, m))
            rows.append(loop_row("torch loop", tl, n_tl, m))
            if torch is None:
                rows.append(Row("torch.func vmap ensemble", m, note=SKIPPED))
            elif m > args.max_vmap_models:
                rows.append(Row("torch.func vmap ensemble", m,
                                note=f"skipped: M > --max-vmap-models={args.max_vmap_models}"))
            else:
                rows.append(bench_torch_vmap(x, y, m, args.steps, args.lr, args.repeat))
        results[m] = rows
        print(report(rows), flush=True)

    if len(args.models) > 1:
        print("\n## How the cost grows with M: steady-state ms per model (loops: scaled "
              "linearly from the models timed)")
        tools = [r.tool for r in results[args.models[0]]]
        body = []
        for t in tools:
            cells = [next((r for r in results[m] if r.tool == t), None) for m in args.models]
            body.append([t] + [fmt(c.per_model_ms if c else None, ".2f") for c in cells])
        print(table(["tool"] + [f"M={m}" for m in args.models], body))

    print("\nend-to-end: one call from fresh model/optimizer objects, compilation included; "
          "compile: JAX tracing + XLA compilation inside it; steady: fastest of --repeat "
          "further calls with the same objects.")
    print(f"load at the end: {cpu_load()}")
    busy = [p for p in (start_pressure, cpu_pressure()) if p is not None and p > BUSY]
    if busy:
        print(f"WARNING: other work competed for the CPUs (pressure up to {max(busy):g}% > "
              f"{BUSY:g}%) at the start or the end: times may be inflated. Rerun on an idle "
              "machine and keep the faster run.")
    if args.json:
        write_json(args.json, {"environment": env, "args": vars(args),
                               "results": {m: [dataclasses.asdict(r) for r in rs]
                                           for m, rs in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
