"""A hand-fused GPU kernel (Pallas, lowered to Triton) for the training loop's hottest work.

XLA runs the full-batch square-loss gradient of M small MLPs as about a dozen
kernels whose ``(M, n, H)`` activations and ``(M, H, H)`` gradients pass
through GPU memory. :func:`mlp_mse_grad` computes the same gradient in ONE
Triton program per model that keeps a model's activations on chip and writes
only its gradient and outputs; ``vmap`` over members becomes the kernel's grid.
On an H100, ``fit`` of 8192 MLPs 1-64-64-1 on 64 points, 2000 full-batch Adam
steps, took 1.51-1.54 s this way against 2.59 s by autodiff
(``benchmarks/gpu_check.py --kernel``), before the kernel lost about 30 % of its
instructions and of its registers (see :func:`_fused`, :func:`_computed_once`;
not yet timed).

Off a GPU, and where a model does not fit on chip, the function is plain
autodiff. On a GPU the two differ by float round-off: at full float32
precision (``jax.default_matmul_precision("highest")``) to ~1e-7 a step; at
the default TF32 precision of both, long trainings of sensitive members part.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from overfit.activations import ACTIVATIONS, SLOPES, ZERO_AT_ZERO
from overfit.losses import half_squared

Params = Any
Grad = Callable[[Params, Any, Array, Array], tuple[Params, Array]]

def fits_on_chip(n_points: int, n_in: int, hidden: Sequence[int]) -> bool:
    """Whether one model's kernel keeps its tiles in registers (4 warps).

    The envelope of a ptxas sweep for the H100 (sm_90a; ``benchmarks/kernel_registers.py``):
    no shape checked inside it spills, with any of the four activations. It was drawn
    when most shapes just outside spilled; many no longer do, but only the target's
    shape has been timed. Other GPUs get the same rule unchecked. Points are padded
    to a power of two >= 16; each input is one column-times-row product, kept live for
    the backward pass.
    """
    n, widest = _padded(n_points), max(hidden)
    if n > 128 or widest > 64 or n * widest > 4096 or n * sum(hidden) > 8192:
        return False
    return n_in == 1 or (n_in <= 4 and n <= 64 and n * widest <= 2048)


def has_kernel(hidden: Sequence[int], activation: str) -> bool:
    """Whether such hidden layers have a kernel: each a power of two >= 16 (Triton's
    blocks and dots), an activation with a slope in ``overfit.activations.SLOPES``."""
    widths = bool(hidden) and all(h >= 16 and not h & (h - 1) for h in hidden)
    return widths and activation in SLOPES


def mlp_mse_grad(
    apply: Callable[..., Array],
    unit_masks: Callable[[Any], list[Array]],
    hidden: Sequence[int],
    activation: str,
    *,
    interpret: bool = False,
) -> Grad:
    """The gradient of an MLP's mean half squared error, fused into one kernel per model.

    Args:
        apply: the MLP's deterministic ``apply(params, state, x) -> (n,)``; its
            params are ``[{"w": (m, k), "b": (k,)}, ...]`` with one output unit.
        unit_masks: ``unit_masks(state)``: per hidden layer, which units are live,
            ``(H_i,)`` bool (``apply`` multiplies a layer's outputs by it).
        hidden, activation: hidden widths and the activation's name, for which
            :func:`has_kernel` holds.
        interpret: run the kernel in Pallas' interpreter on any backend (for
            tests); otherwise it runs on CUDA GPUs and autodiff runs elsewhere.

    Returns:
        ``f(params, state, x, y) -> (grads, out)`` for ONE model, as
        ``jax.grad(..., has_aux=True)`` of ``mean(0.5 * (apply(x) - y)^2)`` returns
        them: ``x`` is ``(n, d)``, ``y`` and ``out`` are ``(n,)``.
        Shapes outside :func:`fits_on_chip`, parameters or inputs other than float32
        and targets of another float width take autodiff on every backend (integer
        and bool targets, labels, are cast to float32 and take the kernel), and so do
        derivatives of the gradient itself (e.g. a hypergradient by ``jax.jvp`` through
        ``fit``): the kernel has no rule of its own.
    """
    if not has_kernel(hidden, activation):
        raise ValueError(f"no kernel for hidden={tuple(hidden)}, activation={activation!r}; "
                         f"allowed: powers of two >= 16, one of {list(SLOPES)}")

    def autodiff(params: Params, state: Any, x: Array, y: Array) -> tuple[Params, Array]:
        def loss(p):
            out = apply(p, state, x)
            return jnp.mean(half_squared(out, y)), out

        return jax.grad(loss, has_aux=True)(params)

    def fused(params: Params, state: Any, x: Array, y: Array) -> tuple[Params, Array]:
        return _fused(params, [m.astype(bool) for m in unit_masks(state)], x, y,
                      activation, interpret)

    @jax.custom_jvp
    def grad(params: Params, state: Any, x: Array, y: Array) -> tuple[Params, Array]:
        n, d = x.shape
        # a float64 target would make autodiff's residual float64: keep its numbers
        floats = (all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, x)))
                  and (y.dtype == jnp.float32 or not jnp.issubdtype(y.dtype, jnp.floating)))
        if not fits_on_chip(n, d, hidden) or not floats or _pallas_triton() is None:
            return autodiff(params, state, x, y)
        if interpret:
            return fused(params, state, x, y)
        return jax.lax.platform_dependent(params, state, x, y, cuda=fused, default=autodiff)

    @grad.defjvp
    def _(primals, tangents):
        return jax.jvp(autodiff, primals, tangents)

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


def _fused(params: Params, masks: list[Array], x: Array, y: Array, activation: str,
           interpret: bool) -> tuple[Params, Array]:
    """:func:`mlp_mse_grad`'s kernel: masks ``(H_i,)`` bool, ``x`` ``(n, d)``, ``y`` ``(n,)``.

    Dead units are zeroed on parameter rows here, in XLA, where the selections fuse
    into neighbouring work, and masked on ``(n, H)`` tiles in the kernel only where
    nothing cheaper is exact: masking tiles of every layer cost 6 % of the kernel's
    instructions and 44 of its 242 registers (1-64-64-1 for an H100, ptxas). The
    last layer's dead units get zero outgoing weight, so from the output back their
    ``dz`` is zero; with more than one layer the first layer's get zero weights and
    bias, so they output ``act(0)``, zero but for sigmoids (masked on tiles); layers
    in between mask tiles. The gradient rows of dead units in the first and output
    layers, which the kernel leaves unmasked, are zeroed after it.
    """
    pl, compiler_params = _pallas_triton()
    n, d = x.shape
    pad = _padded(n) - n
    x = jnp.pad(x, ((0, pad), (0, 0)))
    last = len(masks) - 1
    # selections, not products: a dead unit's inf must not become inf * 0 = NaN
    def live(tree: Any, mask: Array) -> Any:
        return jax.tree.map(lambda a: jnp.where(mask, a, 0.0), tree)

    first, w_out = params[0], live(params[-1]["w"], masks[last][:, None])
    if last > 0:
        first = live(first, masks[0])
    tiles = [0 < i < last or (i == 0 < last and activation not in ZERO_AT_ZERO)
             for i in range(last + 1)]
    # every block is 2-D: columns (n, 1), rows (1, H); biases as rows, the output
    # layer's (H, 1) column as a row
    inputs = {
        "cols": [x[:, k:k + 1] for k in range(d)],
        "y": jnp.pad(y.astype(jnp.float32), (0, pad))[:, None],
        # the mean over the real points; padded points weigh nothing
        "weight": ((jnp.arange(n + pad) < n) / n).astype(jnp.float32)[:, None],
        "rows": [first["w"][k:k + 1] for k in range(d)],
        "ws": [layer["w"] for layer in params[1:-1]],
        "bs": [b[None] for b in (first["b"], *(layer["b"] for layer in params[1:-1]))],
        "lives": [m[None].astype(jnp.float32) if tile else None
                  for m, tile in zip(masks, tiles)],
        "w_out": w_out.T,
        "b_out": params[-1]["b"][None],
    }

    def kernel(in_refs, out_ref, grads_refs):
        out, grads = _forward_backward(jax.tree.map(lambda r: r[...], in_refs),
                                       ACTIVATIONS[activation], SLOPES[activation])
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
    if last > 0:  # the first layer's dz is not zero at its dead units
        grads[0] = live(grads[0], masks[0])
    grads.append({"w": live(g["w_out"].T, masks[last][:, None]), "b": g["b_out"][0]})
    return grads, out[:n, 0]


def _forward_backward(v: dict[str, Any], act: Callable[[Array], Array],
                      slope: Callable[[Array], Array]) -> tuple[Array, dict[str, Any]]:
    """One model's outputs ``(n, 1)`` and gradient blocks (shaped as ``v``'s parameter
    blocks), written with 2-D arrays and ``dot_general`` only: a Triton kernel body.
    ``v["lives"][i]`` (or None) masks layer ``i``'s outputs, and for a layer between
    the first and the last its gradient too (see :func:`_fused`)."""
    lives, last = v["lives"], len(v["lives"]) - 1
    z = v["bs"][0]
    for col, row in zip(v["cols"], v["rows"]):
        z = z + col * row
    z = _computed_once(z)
    hs = []
    for i, live in enumerate(lives):
        if i:
            z = _dot(hs[-1], v["ws"][i - 1], 1, 0) + v["bs"][i]
        hs.append(act(z) if live is None else act(z) * live)
    out = jnp.sum(hs[-1] * v["w_out"], axis=1, keepdims=True) + v["b_out"]
    g = (out - v["y"]) * v["weight"]  # d loss / d out
    grads = {"w_out": jnp.sum(hs[-1] * g, axis=0, keepdims=True),
             "b_out": jnp.sum(g, axis=0, keepdims=True)}
    dh, ws, bs = g * v["w_out"], [], []
    for i in reversed(range(len(hs))):
        dz = dh * slope(hs[i])
        if 0 < i < last:
            dz = dz * lives[i]
        bs.insert(0, jnp.sum(dz, axis=0, keepdims=True))
        if i:
            ws.insert(0, _dot(hs[i - 1], dz, 0, 0))
            dh = _dot(dz, v["ws"][i - 1], 1, 1)
    grads |= {"rows": [jnp.sum(col * dz, axis=0, keepdims=True) for col in v["cols"]],
              "ws": ws, "bs": bs}
    return out, grads


def _computed_once(z: Array) -> Array:
    """``z`` plus a product of zero matrices: the same numbers, computed once.

    Triton recomputes a chain of cheap operations (here the first layer: loads,
    products, the activation) in every register layout its uses need rather than
    convert between layouts, but never recomputes a dot. The first layer's outputs
    feed a dot, a transposed dot and the backward pass's products, so it computed
    them three times: with this dot in the chain, the target's kernel (1-64-64-1,
    tanh, sm_90a) needs 3345 PTX instructions instead of 4552 and 168 registers
    instead of 198 (three programs per SM instead of two).
    """
    n, h = z.shape
    return z + _dot(jnp.zeros((n, 16), z.dtype), jnp.zeros((16, h), z.dtype), 1, 0)


def _dot(a: Array, b: Array, a_axis: int, b_axis: int) -> Array:
    """``a`` and ``b`` contracted over one axis each: the 2-D products Triton takes."""
    return jax.lax.dot_general(a, b, (((a_axis,), (b_axis,)), ((), ())),
                               preferred_element_type=jnp.float32)
