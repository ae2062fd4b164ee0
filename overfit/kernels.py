"""A hand-fused GPU kernel (Pallas, lowered to Triton) for the training loop's hottest work.

XLA runs the full-batch square-loss gradient of M small MLPs as about a dozen
kernels whose ``(M, n, H)`` activations and ``(M, H, H)`` gradients pass
through GPU memory. :func:`mlp_mse_grad` computes the same gradient in ONE
Triton program per model that keeps a model's activations on chip and writes
only its gradient and outputs; ``vmap`` over members becomes the kernel's grid.
On an H100, 2000 full-batch Adam steps of 8192 MLPs 1-64-64-1 on 64 points
took 1.34 s this way against 2.30 s for XLA's vmap + scan of ``jax.grad``
(``benchmarks/fused_mlp.py``, ``benchmarks/gpu_check.py``).

Off a GPU, and where a model does not fit on chip, the function is plain
autodiff: the numbers are the same up to float round-off either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from overfit.losses import half_squared

# derivative of each activation from its output h = act(z): the kernel keeps only h
SLOPES: dict[str, Callable[[Array], Array]] = {
    "tanh": lambda h: 1.0 - h * h,
    "sigmoid": lambda h: h * (1.0 - h),
    "relu": lambda h: (h > 0).astype(h.dtype),
    "linear": jnp.ones_like,
}


def fits_on_chip(n_points: int, n_in: int, hidden: Sequence[int]) -> bool:
    """Whether one model's kernel keeps its tiles in registers (sm_90a, 4 warps).

    The envelope of a ptxas sweep (``benchmarks/kernel_registers.py``): inside it no
    shape checked spilled registers (one 8-byte spill), just outside it most did.
    Points are padded to a power of two >= 16; each input is one column-times-row
    product, kept live for the backward pass.
    """
    n, widest = _padded(n_points), max(hidden)
    if n > 128 or widest > 64 or n * widest > 4096 or n * sum(hidden) > 8192:
        return False
    return n_in == 1 or (n_in <= 4 and n <= 64 and n * widest <= 2048)


def kernel_widths(hidden: Sequence[int]) -> bool:
    """Whether Triton can hold these hidden layers: each a power of two >= 16."""
    return bool(hidden) and all(h >= 16 and not h & (h - 1) for h in hidden)


def mlp_mse_grad(
    apply: Callable[..., Array],
    unit_masks: Callable[[Any], list[Array]],
    hidden: Sequence[int],
    act: Callable[[Array], Array],
    activation: str,
    *,
    interpret: bool = False,
) -> Callable[..., tuple[Any, Array]]:
    """The gradient of an MLP's mean half squared error, fused into one kernel per model.

    Args:
        apply: the MLP's deterministic ``apply(params, state, x) -> (n,)``; its
            params are ``[{"w": (m, k), "b": (k,)}, ...]`` with one output unit.
        unit_masks: ``unit_masks(state)``: per hidden layer, which units are live, ``(H_i,)``.
        hidden: hidden widths, each a power of two >= 16 (:func:`kernel_widths`).
        act, activation: the activation and its name, one of :data:`SLOPES`.
        interpret: run the kernel in Pallas' interpreter on any backend (for
            tests); otherwise it runs on CUDA GPUs and autodiff runs elsewhere.

    Returns:
        ``f(params, state, x, y) -> (grads, out)`` for ONE model, as
        ``jax.grad(..., has_aux=True)`` of ``mean(0.5 * (apply(x) - y)^2)`` returns
        them: ``x`` is ``(n, d)``, ``y`` and ``out`` are ``(n,)``.
        Shapes outside :func:`fits_on_chip` and anything but float32 take autodiff on
        every backend.
    """
    if not kernel_widths(hidden) or activation not in SLOPES:
        raise ValueError(f"no kernel for hidden={tuple(hidden)}, activation={activation!r}; "
                         f"allowed: powers of two >= 16, one of {list(SLOPES)}")

    def autodiff(params, state, x, y):
        def loss(p):
            out = apply(p, state, x)
            return jnp.mean(half_squared(out, y)), out

        return jax.grad(loss, has_aux=True)(params)

    def fused(params, state, x, y):
        return _fused(params, [m.astype(jnp.float32) for m in unit_masks(state)], x, y,
                      act, SLOPES[activation], interpret)

    def grad(params, state, x, y):
        n, d = x.shape
        floats = all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, x)))
        if not fits_on_chip(n, d, hidden) or not floats or _pallas_triton() is None:
            return autodiff(params, state, x, y)
        if interpret:
            return fused(params, state, x, y)
        return jax.lax.platform_dependent(params, state, x, y, cuda=fused, default=autodiff)

    return grad


@functools.cache
def _pallas_triton() -> tuple[Any, Any] | None:
    """``(pallas, Triton's compiler parameters)``, or None where this JAX has no Pallas
    Triton backend (deprecated from jax 0.11 on): then every backend takes autodiff."""
    try:
        from jax.experimental import pallas as pl
        from jax.experimental.pallas import triton as plt

        return pl, plt.CompilerParams
    except (ImportError, AttributeError):
        return None


def _padded(n: int) -> int:
    """Points as Triton holds them: a power of two >= 16."""
    return max(16, 1 << (n - 1).bit_length())


def _fused(params, masks: list[Array], x: Array, y: Array, act, slope, interpret: bool):
    pl, compiler_params = _pallas_triton()
    n, d = x.shape
    pad = _padded(n) - n
    x = jnp.pad(x, ((0, pad), (0, 0)))
    # every block is 2-D: columns (n, 1), rows (1, H); biases as rows, the output
    # layer's (H, 1) column as a row
    inputs = {
        "cols": [x[:, k:k + 1] for k in range(d)],
        "y": jnp.pad(y.astype(jnp.float32), (0, pad))[:, None],
        # the mean over the real points; padded points weigh nothing
        "weight": ((jnp.arange(n + pad) < n) / n).astype(jnp.float32)[:, None],
        "rows": [params[0]["w"][k:k + 1] for k in range(d)],
        "ws": [layer["w"] for layer in params[1:-1]],
        "bs": [layer["b"][None] for layer in params[:-1]],
        "lives": [m[None] for m in masks],
        "w_out": params[-1]["w"].T,
        "b_out": params[-1]["b"][None],
    }

    def kernel(in_refs, out_ref, grads_refs):
        out, grads = _forward_backward(jax.tree.map(lambda r: r[...], in_refs), act, slope)
        out_ref[...] = out
        for ref, value in zip(jax.tree.leaves(grads_refs), jax.tree.leaves(grads)):
            ref[...] = value

    grads_shape = {k: inputs[k] for k in ("rows", "ws", "bs", "w_out", "b_out")}
    out, g = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((n + pad, 1), jnp.float32),
                   jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), grads_shape)),
        compiler_params=compiler_params(num_warps=4, num_stages=1),
        interpret=interpret,
    )(inputs)
    firsts = jnp.concatenate(g["rows"], axis=0)
    grads = [{"w": w, "b": b[0]} for w, b in zip([firsts, *g["ws"]], g["bs"])]
    grads.append({"w": g["w_out"].T, "b": g["b_out"][0]})
    return grads, out[:n, 0]


def _forward_backward(v: dict, act, slope) -> tuple[Array, dict]:
    """One model's outputs ``(n, 1)`` and gradient blocks (shaped as ``v``'s parameter
    blocks), written with 2-D arrays and ``dot_general`` only: a Triton kernel body."""
    z = v["bs"][0]
    for col, row in zip(v["cols"], v["rows"]):
        z = z + col * row
    hs = [act(z) * v["lives"][0]]
    for w, b, live in zip(v["ws"], v["bs"][1:], v["lives"][1:]):
        hs.append(act(_dot(hs[-1], w, 1, 0) + b) * live)
    out = jnp.sum(hs[-1] * v["w_out"], axis=1, keepdims=True) + v["b_out"]
    g = (out - v["y"]) * v["weight"]  # d loss / d out
    grads = {"w_out": jnp.sum(hs[-1] * g, axis=0, keepdims=True),
             "b_out": jnp.sum(g, axis=0, keepdims=True)}
    dh, ws, bs = g * v["w_out"], [], []
    for i in reversed(range(len(hs))):
        dz = dh * slope(hs[i]) * v["lives"][i]
        bs.insert(0, jnp.sum(dz, axis=0, keepdims=True))
        if i:
            ws.insert(0, _dot(hs[i - 1], dz, 0, 0))
            dh = _dot(dz, v["ws"][i - 1], 1, 1)
    grads |= {"rows": [jnp.sum(col * dz, axis=0, keepdims=True) for col in v["cols"]],
              "ws": ws, "bs": bs}
    return out, grads


def _dot(a: Array, b: Array, a_axis: int, b_axis: int) -> Array:
    return jax.lax.dot_general(a, b, (((a_axis,), (b_axis,)), ((), ())),
                               preferred_element_type=jnp.float32)
