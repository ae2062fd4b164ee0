"""Hand-fused Pallas (Triton) training of the GPU target's MLPs: how far below XLA a GPU gets.

An experiment beside the benchmarks, not part of overfit. XLA runs one full-batch
Adam step of M small MLPs (1-H-H-1, tanh, n points) as a dozen kernels whose
``(M, n, H)`` activations and ``(M, H, H)`` gradients pass through GPU memory:
about 3 GB a step at M = 8192, H = n = 64, a ~1 ms floor at ~3 TB/s, which is
why neither ``fit`` (2.6 s) nor a hand-written vmap + scan (2.3 s) trains
8192 of them for 2000 steps in the issue's 1.5 s on an H100. Here one Triton
program per model keeps a model's activations on chip:

- ``"grad"``: one kernel per step writes each model's loss and gradient;
  optax's Adam updates the stacked parameters in XLA (~1.3 GB a step);
- ``"step"``: the kernel applies Adam too: parameters and both moments are
  read and written once a step (~0.9 GB);
- ``"loop"``: one kernel runs every step; nothing but the result leaves the chip.

Off a GPU the kernels run in Pallas' interpret mode (slow, for checking only):
``python benchmarks/fused_mlp.py --check`` compares every variant with
``jax.grad`` + ``optax.adam`` and confirms each lowers to Triton for CUDA.
``benchmarks/gpu_check.py --fused`` times them on a GPU. On an H100: XLA 2.30 s, ``grad``
1.34 s, ``step`` 1.97 s, ``loop`` 30 s; ``grad`` became ``overfit/kernels.py``, which
``fit`` uses for such MLPs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

VARIANTS = ("grad", "step", "loop")
B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults
NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")
Params = dict[str, jax.Array]


def init(key: jax.Array, n_models: int, hidden: int = 64) -> Params:
    """Stacked parameters of ``n_models`` MLPs 1-H-H-1, every leaf ``(M, rows, cols)``.

    Row layout for the kernels: ``w1, b1, b2, w3`` are ``(M, 1, H)`` (``w3`` is the
    output layer's column as a row), ``w2`` is ``(M, H, H)``, ``b3`` is ``(M, 1, 1)``.
    """
    k1, k2, k3, kb = jax.random.split(key, 4)
    shape = (n_models, 1, hidden)
    return {
        "w1": jax.random.normal(k1, shape),
        "b1": jax.random.uniform(kb, shape, minval=-1.0),
        "w2": jax.random.normal(k2, (n_models, hidden, hidden)) / jnp.sqrt(hidden),
        "b2": jnp.zeros(shape),
        "w3": jax.random.normal(k3, shape) / jnp.sqrt(hidden),
        "b3": jnp.zeros((n_models, 1, 1)),
    }


def loss_and_grads(x: jax.Array, y: jax.Array, p: Params) -> tuple[jax.Array, Params]:
    """``0.5 * mean((f(x) - y)^2)``, shape ``(1, 1)``, and its gradient, for ONE model.

    ``x, y``: ``(n, 1)``. Written with 2-D arrays and ``dot_general`` only, so the
    same code is a Triton kernel body and plain XLA.
    """
    n = x.shape[0]
    h1 = jnp.tanh(x * p["w1"] + p["b1"])  # (n, H)
    h2 = jnp.tanh(_dot(h1, p["w2"], 1, 0) + p["b2"])
    r = jnp.sum(h2 * p["w3"], axis=1, keepdims=True) + p["b3"] - y  # (n, 1)
    g = r / n
    dz2 = g * p["w3"] * (1.0 - h2 * h2)
    dz1 = _dot(dz2, p["w2"], 1, 1) * (1.0 - h1 * h1)
    grads = {
        "w1": jnp.sum(x * dz1, axis=0, keepdims=True),
        "b1": jnp.sum(dz1, axis=0, keepdims=True),
        "w2": _dot(h1, dz2, 0, 0),
        "b2": jnp.sum(dz2, axis=0, keepdims=True),
        "w3": jnp.sum(h2 * g, axis=0, keepdims=True),
        "b3": jnp.sum(g, axis=0, keepdims=True),
    }
    return 0.5 * jnp.sum(r * g, axis=0, keepdims=True), grads


def _dot(a: jax.Array, b: jax.Array, a_axis: int, b_axis: int) -> jax.Array:
    # XLA's default float32 precision (TF32 on tensor cores), as the vmap reference gets
    return jax.lax.dot_general(a, b, (((a_axis,), (b_axis,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _adam(p, g, m, v, c1, c2, lr: float):
    """optax.adam's update of one leaf; ``c1, c2 = 1 / (1 - b^t)``, the bias corrections."""
    m = B1 * m + (1.0 - B1) * g
    v = B2 * v + (1.0 - B2) * g * g
    return p - lr * (m * c1) / (jnp.sqrt(v * c2) + EPS), m, v


def _corrections(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Adam's bias corrections after step ``t`` (1-based), each ``(1, 1)``."""
    t = jnp.reshape(t.astype(jnp.float32), (1, 1))
    return 1.0 / (1.0 - B1 ** t), 1.0 / (1.0 - B2 ** t)


def _call(kernel: Callable, outs: tuple, shared: tuple, per_model: tuple, interpret: bool):
    """``pallas_call`` with one program per model: ``per_model`` pytrees are split along
    their leading ``M`` axis, ``shared`` arrays are seen whole by every program. The
    kernel writes each model's loss ``(1, 1)`` first, then trees shaped like ``outs``;
    returns the losses ``(M,)`` and those trees."""
    n_models = jax.tree.leaves(per_model)[0].shape[0]

    def spec(a):
        return pl.BlockSpec((None, *a.shape[1:]), lambda i: (i,) + (0,) * (a.ndim - 1))

    def whole(a):
        return pl.BlockSpec(a.shape, lambda i: (0,) * a.ndim)

    out_shape = (jax.ShapeDtypeStruct((n_models, 1, 1), jnp.float32),
                 *(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
                   for t in outs))
    loss, *trees = pl.pallas_call(
        kernel, grid=(n_models,), out_shape=out_shape,
        in_specs=(*jax.tree.map(whole, shared), *jax.tree.map(spec, per_model)),
        out_specs=jax.tree.map(spec, out_shape),
        compiler_params=plt.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
    )(*shared, *per_model)
    return loss[:, 0, 0], *trees


def _read(refs: dict) -> Params:
    return {k: r[...] for k, r in refs.items()}


def _write(refs: dict, values: Params) -> None:
    for k in NAMES:
        refs[k][...] = values[k]


def kernel_grads(params: Params, x: jax.Array, y: jax.Array, *,
                 interpret: bool = False) -> tuple[jax.Array, Params]:
    """Every model's loss ``(M,)`` and gradient (leaves as ``params``), one kernel call."""
    def kernel(x_ref, y_ref, p_ref, loss_ref, g_ref):
        loss_ref[...], g = loss_and_grads(x_ref[...], y_ref[...], _read(p_ref))
        _write(g_ref, g)

    return _call(kernel, (params,), (x, y), (params,), interpret)


def _grad_step(x, y, params, opt_state, opt, interpret):
    loss, grads = kernel_grads(params, x, y, interpret=interpret)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _adam_all(p: Params, g: Params, m: Params, v: Params, c1, c2, lr: float):
    """:func:`_adam` on every leaf: new ``(params, m, v)``."""
    new = {k: _adam(p[k], g[k], m[k], v[k], c1, c2, lr) for k in NAMES}
    return tuple({k: a[i] for k, a in new.items()} for i in range(3))


def _fused_step(x, y, params, m, v, t, lr, interpret):
    def kernel(x_ref, y_ref, c_ref, p_ref, m_ref, v_ref, loss_ref, po_ref, mo_ref, vo_ref):
        loss_ref[...], g = loss_and_grads(x_ref[...], y_ref[...], _read(p_ref))
        c1, c2 = c_ref[0][...], c_ref[1][...]
        # leaf by leaf, loaded and stored at once: computing every new leaf before
        # storing any made ptxas spill registers (255 + ~0.9 KB spills against 240, none)
        for k in NAMES:
            po_ref[k][...], mo_ref[k][...], vo_ref[k][...] = _adam(
                p_ref[k][...], g[k], m_ref[k][...], v_ref[k][...], c1, c2, lr)

    loss, params, m, v = _call(kernel, (params, m, v), (x, y, _corrections(t)),
                               (params, m, v), interpret)
    return params, m, v, loss


def _fused_loop(x, y, params, steps: int, lr: float, interpret: bool):
    def kernel(x_ref, y_ref, p_ref, loss_ref, po_ref):
        xv, yv = x_ref[...], y_ref[...]
        p = _read(p_ref)
        zeros = {k: jnp.zeros_like(a) for k, a in p.items()}

        def body(t, carry):
            p, m, v, _ = carry
            loss, g = loss_and_grads(xv, yv, p)
            return (*_adam_all(p, g, m, v, *_corrections(t + 1), lr), loss)

        p, _, _, loss_ref[...] = jax.lax.fori_loop(
            0, steps, body, (p, zeros, zeros, jnp.zeros((1, 1), jnp.float32)))
        _write(po_ref, p)

    loss, params = _call(kernel, (params,), (x, y), (params,), interpret)
    return params, loss


@functools.partial(jax.jit, static_argnames=("steps", "lr", "variant", "interpret"))
def train(params: Params, x: jax.Array, y: jax.Array, *, steps: int, lr: float = 1e-2,
          variant: str = "step", interpret: bool = False) -> tuple[Params, jax.Array]:
    """``steps`` full-batch Adam steps of every model; returns the parameters and
    each model's loss before the last step, ``(M,)``. ``x, y``: ``(n, 1)``, shared."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; allowed: {list(VARIANTS)}")
    # a Triton block is a power of two on every axis, and dots need 16 or more
    for name, size in (("hidden", params["w2"].shape[-1]), ("n (points)", x.shape[0])):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name}={size}; allowed: a power of two >= 16")
    if variant == "loop":
        return _fused_loop(x, y, params, steps, lr, interpret)
    if variant == "grad":
        opt = optax.adam(lr)

        def body(_, carry):
            return _grad_step(x, y, carry[0], carry[1], opt, interpret)

        carry = (params, opt.init(params), jnp.zeros(params["w1"].shape[0]))
        params, _, loss = jax.lax.fori_loop(0, steps, body, carry)
        return params, loss

    def body(t, carry):
        return _fused_step(x, y, *carry[:3], t + 1, lr, interpret)

    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (params, zeros, zeros, jnp.zeros(params["w1"].shape[0]))
    params, _, _, loss = jax.lax.fori_loop(0, steps, body, carry)
    return params, loss


def reference_loss(p: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    """The loss of :func:`loss_and_grads` as a plain forward pass, for ONE model."""
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return 0.5 * jnp.mean((h @ p["w3"].T + p["b3"] - y) ** 2)


@functools.partial(jax.jit, static_argnames=("steps", "lr"))
def reference(params: Params, x: jax.Array, y: jax.Array, *, steps: int,
              lr: float = 1e-2) -> tuple[Params, jax.Array]:
    """The same training by ``jax.grad`` of :func:`reference_loss` and ``optax.adam``."""
    opt = optax.adam(lr)
    loss_and_grad = jax.vmap(jax.value_and_grad(reference_loss), in_axes=(0, None, None))

    def step(carry, _):
        p, s = carry
        loss, g = loss_and_grad(p, x, y)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params, losses[-1]


def data(n: int = 64) -> tuple[jax.Array, jax.Array]:
    """``sin(pi x)`` plus noise 0.1 at ``n`` points of [-1, 1], each ``(n, 1)``."""
    x = jnp.linspace(-1.0, 1.0, n)[:, None]
    return x, jnp.sin(jnp.pi * x) + 0.1 * jax.random.normal(jax.random.key(3), x.shape)


def lowers_for_cuda(variant: str, n_models: int = 8, steps: int = 2) -> bool:
    """Whether ``variant`` lowers to Triton kernels for CUDA (checkable without a GPU)."""
    x, y = data()
    params = init(jax.random.key(0), n_models)
    text = jax.jit(functools.partial(train, steps=steps, variant=variant)).trace(
        params, x, y).lower(lowering_platforms=("cuda",)).as_text()
    return "__gpu$xla.gpu.triton" in text


def check(n_models: int = 3, steps: int = 5) -> dict[str, tuple[float, float]]:
    """Each variant's largest relative difference from :func:`reference`:
    ``{variant: (parameters, loss)}``, relative to each leaf's largest entry."""
    x, y = data()
    params = init(jax.random.key(0), n_models)
    want, want_loss = reference(params, x, y, steps=steps)
    interpret = jax.default_backend() != "gpu"
    out = {}
    for variant in VARIANTS:
        got, loss = train(params, x, y, steps=steps, variant=variant, interpret=interpret)
        out[variant] = (max(_relative(got[k], want[k]) for k in NAMES),
                        _relative(loss, want_loss))
    return out


def _relative(got: jax.Array, want: jax.Array) -> float:
    return float(jnp.max(jnp.abs(got - want)) / (jnp.max(jnp.abs(want)) or 1.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true",
                   help="compare with jax.grad + optax and lower for CUDA (any backend)")
    args = p.parse_args(argv)
    if args.check:
        for variant in VARIANTS:
            print(f"{variant}: lowers to Triton for CUDA: {lowers_for_cuda(variant)}")
        for variant, (dp, dl) in check().items():
            print(f"{variant}: largest relative difference from jax.grad + optax.adam: "
                  f"parameters {dp:.1e}, loss {dl:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
