"""What a re-run notebook cell costs: ``fit`` with freshly built but equal objects.

The workload: 16 MLPs 1-32-1 (tanh), 500 full-batch Adam epochs on one
``regression(n_train=20)`` draw, the call a student writes inline:
``fit(mlp(1, hidden=(32,)), data, key=keys, optimizer=optax.adam(1e-2))``.
Rows: the first call (it compiles), the same call again with fresh model,
optimizer and stopping-rule objects (``overfit/static.py`` keys the compiled
program by what they compute, so it should not compile), the same objects
reused, and a different learning rate (a new program: it must compile).
Times are wall seconds blocking on the parameters; compiles from ``jax.monitoring``.

    python benchmarks/bench_reuse.py          # ~15 s on 2 cores
"""

from __future__ import annotations

import time

import jax
import optax

import overfit as of


def main() -> None:
    data = of.data.regression(jax.random.key(0), n_train=20)
    keys = jax.random.split(jax.random.key(1), 16)
    model, opt = of.models.mlp(1, hidden=(32,)), optax.adam(1e-2)

    stop = of.early_stopping.never()

    def call(model, opt, stop):
        with of.CompileClock() as clock:
            start = time.perf_counter()
            jax.block_until_ready(of.fit(model, data, key=keys, optimizer=opt, epochs=500,
                                         early_stopping=stop).params)
            return time.perf_counter() - start, clock.compiles

    rows = [("first call (compiles)", call(model, opt, stop)),
            ("fresh equal objects", call(of.models.mlp(1, hidden=(32,)), optax.adam(1e-2),
                                         of.early_stopping.never())),
            ("same objects", call(model, opt, stop)),
            ("learning rate 1e-3 (new program)", call(model, optax.adam(1e-3), stop))]
    print(f"device: {jax.devices()[0].device_kind}")
    print("| call | wall s | XLA compiles |\n|---|---|---|")
    for name, (seconds, compiles) in rows:
        print(f"| {name} | {seconds:.3f} | {compiles} |")


if __name__ == "__main__":
    main()
