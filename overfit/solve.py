"""Closed-form fits for models linear in their parameters: OLS, ridge, min-norm.

Two paths, one answer. The reference is an SVD: singular values
``s <= rcond * max(s)`` are treated as zero, with ``rcond = 10 * max(n, P) * eps``
by default (the ``jnp.linalg.pinv`` rule), which gives least squares, ridge and
the minimum-norm solution alike. Near the interpolation threshold (P ~ n) the
smallest live singular values are tiny but real: use float64 there
(``jax.config.update("jax_enable_x64", True)``) so the min-norm solution is
computed, not truncated into a different one.

Plain least squares on a tall design (``n >= P``, ``ridge=0``), the bulk of a
bias-variance or capacity sweep, takes a QR factorisation instead, about 3x
cheaper per member than the SVD on a CPU. Columns that are exactly zero (the
capacity mask) get a zero coefficient, as the SVD gives them. Every member
whose live block has a Frobenius condition number
``|R|_F |R^-1|_F >= 1 / rcond`` (an upper bound on the 2-norm one, so no
member the SVD would truncate slips through) or is singular is solved by the
SVD, so the two paths agree to round-off. A vmapped sweep stays batched: the
QR, the triangular solves and the fallback SVD of the flagged members are one
batched call each, in sequence: independent LAPACK calls in one program have
been seen to hang in OpenBLAS on 2-core CPUs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from overfit._checks import check_range, is_concrete
from overfit.models import Model, Params, State


def solve(phi: Array, y: Array, *, ridge: Array | float = 0.0, rcond: float | None = None,
          weight: Array | None = None) -> Array:
    """Minimise ``(1/2n)|phi w - y|^2 + (ridge/2)|w|^2``; min-norm when ``ridge = 0``.

    Args:
        phi: design matrix, ``(n, P)``, floating point.
        y: targets, ``(n,)`` or ``(n, k)``.
        ridge: penalty lambda >= 0, a scalar (may be traced; vmap for a grid of
            penalties); the solution is ``(phi'phi + n lambda I)^-1 phi'y``, the
            convention of the min-norm / ridge theory (:mod:`overfit.theory`).
        rcond: relative singular-value cutoff >= 0 (may be traced): directions
            whose singular value is below ``rcond`` times the largest are dropped,
            with or without a ridge; default ``10 max(n, P) eps``, counting only
            rows of nonzero weight, so padding a design does not move it.
        weight: per-row weights ``(n,)`` >= 0 (may be traced): minimise the
            weighted mean ``(1/2 sum w) sum_i w_i (phi_i w - y_i)^2`` plus the
            penalty, so ``sum w`` takes the place of ``n``. Rows of weight 0
            drop out exactly: training sets of several sizes padded to one
            shape share one compiled solve.

    Returns:
        ``w`` of shape ``(P,)`` or ``(P, k)``: for full column rank and no ridge
        the least-squares solution; rank-deficient with no ridge, the min-norm
        ``pinv(phi) y``; with a ridge, the ridge solution.
    """
    phi, y = (jnp.asarray(a) if isinstance(a, (list, tuple)) else a for a in (phi, y))
    if jnp.ndim(phi) != 2 or not jnp.issubdtype(jnp.result_type(phi), jnp.floating):
        raise ValueError(f"phi must be a floating-point (n, P) design; got shape "
                         f"{jnp.shape(phi)}, dtype {jnp.result_type(phi)}.")
    n, p = phi.shape
    if jnp.ndim(y) not in (1, 2) or jnp.shape(y)[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, k) to match phi's {n} rows; "
                         f"got {jnp.shape(y)}.")
    if jnp.ndim(ridge) != 0:
        raise ValueError(f"ridge must be a scalar; got shape {jnp.shape(ridge)} "
                         "(vmap solve over a grid of penalties).")
    check_range("ridge", ridge, lo=0.0)
    if rcond is not None:
        check_range("rcond", rcond, lo=0.0)
    if weight is not None:
        if jnp.shape(weight) != (n,):
            raise ValueError(f"weight has shape {jnp.shape(weight)}; it needs one value per "
                             f"row of phi, ({n},).")
        check_range("weight", weight, lo=0.0)
        if is_concrete(weight) and not np.any(np.asarray(weight) > 0):  # w = 0, silently
            raise ValueError("weight keeps no row of phi: at least one must be positive.")
    qr = isinstance(ridge, (int, float)) and ridge == 0 and n >= p  # a traced ridge: SVD
    return _solve(phi, y, ridge, rcond, weight, qr=qr)


# One program per shape and path: called eagerly (a notebook's solve), the QR path's ~50
# small ops compiled one by one (3 s) and its custom rules re-traced on every call (0.5 s).
@functools.partial(jax.jit, static_argnames="qr")
def _solve(phi: Array, y: Array, ridge: Array | float, rcond: Array | float | None,
           weight: Array | None, *, qr: bool) -> Array:
    """:func:`solve` by QR (falling back to the SVD where flagged) or by the SVD."""
    n, p = phi.shape
    y2 = y.reshape(n, -1)
    rows = n
    if weight is not None:
        weight = jnp.asarray(weight, phi.dtype)
        # scaling the rows by sqrt(w) turns the weighted problem into a plain one
        root = jnp.sqrt(weight)[:, None]
        phi, y2 = phi * root, y2 * root
        ridge = ridge * jnp.sum(weight) / n  # the solvers multiply the ridge by n
        # the cutoff of the rows in play: padding must not move it
        rows = jnp.sum(weight > 0)
    if rcond is None:
        rcond = 10.0 * jnp.maximum(rows, p) * jnp.finfo(phi.dtype).eps
    rcond = jnp.asarray(rcond, phi.dtype)
    if qr:
        w = _least_squares(phi[None], y2[None], rcond[None])[0]
    else:
        w = _svd_solve(phi, y2, ridge, rcond)
    return w.reshape((p, *y.shape[1:]))


def _svd_solve(phi: Array, y: Array, ridge: Array | float, rcond: float) -> Array:
    """The reference path for one ``(n, P)`` design and ``(n, k)`` targets."""
    n, p = phi.shape
    if n < p:
        # LAPACK on CPU is ~20x slower on a wide matrix than on its transpose
        v, s, ut = jnp.linalg.svd(phi.T, full_matrices=False)
        u, vt = ut.T, v.T
    else:
        u, s, vt = jnp.linalg.svd(phi, full_matrices=False)
    live = s > rcond * s[0]
    # s / (s^2 + n lambda): 1/s for OLS / min-norm; the safe denominator keeps 0/0 out
    shrink = jnp.where(live, s / jnp.where(live, s**2 + n * ridge, 1.0), 0.0)
    return vt.T @ (shrink[:, None] * (u.T @ y))


def _svd_batch(phi: Array, y: Array, rcond: Array) -> Array:
    """:func:`_svd_solve` least squares of ``(B, n, P)`` designs, ``(B, n, k)`` targets
    and ``(B,)`` cutoffs."""
    return jax.vmap(_svd_solve, in_axes=(0, 0, None, 0))(phi, y, 0.0, rcond)


@jax.custom_batching.custom_vmap
def _many(phi: Array, y: Array, rcond: Array) -> Array:
    """``(B, n, P), (B, n, k), (B,) -> (B, P, k)`` least squares, batched through any vmap.

    A ``custom_vmap`` so that a vmapped sweep reaches :func:`_qr_batch` with all
    its members on one axis: under a plain vmap the SVD fallback would become a
    ``select`` and run for every member.
    """
    return _qr_batch(phi, y, rcond)


@_many.def_vmap
def _many_rule(axis_size: int, in_batched: list[bool], phi: Array, y: Array, rcond: Array):
    phi, y, rcond = (a if b else jnp.broadcast_to(a, (axis_size, *a.shape))
                     for a, b in zip((phi, y, rcond), in_batched, strict=True))
    batch = phi.shape[1]
    out = _many(phi.reshape(-1, *phi.shape[2:]), y.reshape(-1, *y.shape[2:]), rcond.reshape(-1))
    return out.reshape(axis_size, batch, *out.shape[1:]), True


@jax.custom_jvp
def _least_squares(phi: Array, y: Array, rcond: Array) -> Array:
    """:func:`_many`, differentiable: the JVP is the SVD path's (``custom_vmap`` has no
    autodiff of its own)."""
    return _many(phi, y, rcond)


@_least_squares.defjvp
def _least_squares_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    # derivatives (and jacfwd's vmap) through the reference path: same function; the
    # cutoff is a threshold, with no derivative
    phi, y, rcond = primals
    _, tangent = jax.jvp(lambda p, y: _svd_batch(p, y, rcond), (phi, y), tangents[:2])
    return _least_squares(*primals), tangent


def _qr_batch(phi: Array, y: Array, rcond: Array) -> Array:
    b, n, p = phi.shape
    dead = jnp.all(phi == 0, axis=1)  # (B, P): masked columns
    # live columns first: a dead column after them leaves its rows and column of R zero.
    # Capacity masks are trailing already (polynomial, random features): no gathers then.
    trailing = jnp.all(dead[:, :-1] <= dead[:, 1:])
    order = jnp.argsort(dead, axis=1, stable=True)
    a, dead_sorted = lax.cond(
        trailing, lambda: (phi, dead),
        lambda: (jnp.take_along_axis(phi, order[:, None, :], axis=2),
                 jnp.take_along_axis(dead, order, axis=1)))
    r = jnp.linalg.qr(jnp.concatenate([a, y], axis=2), mode="r")  # [R | Q'y]
    eye = jnp.eye(p, dtype=phi.dtype)
    big_r = r[:, :p, :p] + dead_sorted[:, :, None] * eye  # unit pivot: w = 0 there
    qty = jnp.where(dead_sorted[:, :, None], 0.0, r[:, :p, p:])
    sol = lax.linalg.triangular_solve(
        big_r, jnp.concatenate([jnp.broadcast_to(eye, big_r.shape), qty], axis=2),
        left_side=True, lower=False)
    live2 = ~dead_sorted[:, :, None] & ~dead_sorted[:, None, :]
    cond = (jnp.sqrt(jnp.sum(jnp.where(live2, big_r, 0.0) ** 2, axis=(1, 2)))
            * jnp.sqrt(jnp.sum(jnp.where(live2, sol[:, :, :p], 0.0) ** 2, axis=(1, 2))))
    w = lax.cond(trailing, lambda: sol[:, :, p:],
                 lambda: jnp.take_along_axis(sol[:, :, p:], jnp.argsort(order, axis=1)[:, :, None],
                                             axis=1))
    bad = ~(cond * rcond < 1.0)  # NaN and inf (singular) included
    n_bad = jnp.sum(bad)

    def some(size: int) -> Callable[[], Array]:
        def fix() -> Array:
            (idx,) = jnp.nonzero(bad, size=size, fill_value=0)
            keep = bad[idx][:, None, None]
            fixed = _svd_batch(phi[idx], y[idx], rcond[idx])
            return w.at[idx].set(jnp.where(keep, fixed, w[idx]))
        return fix

    # the SVD runs on a gathered few when few are flagged (a rank-deficient resample),
    # on everyone when many are (float32 near the threshold)
    sizes = sorted({max(1, b // 32), max(1, b // 4)})
    branch = jnp.where(n_bad == 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), n_bad))
    w = lax.switch(branch, [lambda: w, *(some(k) for k in sizes),
                            lambda: jnp.where(bad[:, None, None], _svd_batch(phi, y, rcond),
                                              w)])
    return jnp.where(dead[:, :, None], 0.0, w)  # the SVD leaves round-off there


def fit_linear(
    model: Model, state: State, x: Array, y: Array, *, ridge: Array | float = 0.0,
    weight: Array | None = None,
) -> Params:
    """Closed-form parameters of a linear-in-parameters ``model`` on ``(x, y)``.

    Args:
        model: a model with ``features`` (polynomial, random features, linear).
        state: that model's state (capacity, feature weights).
        x: inputs ``(n, d)``; y: targets ``(n,)``, or ``(n, k)`` for a model with
            ``n_out = k`` (then the coefficients are ``(P, k)``).
        ridge: L2 strength lambda (see :func:`solve`).
        weight: per-point weights ``(n,)`` >= 0 (see :func:`solve`); a 0/1
            mask trains on the points it keeps.

    Returns:
        ``{"coef": w}`` usable with ``model.apply``.
    """
    if model.features is None:
        raise ValueError("fit_linear needs a model linear in its parameters "
                         "(polynomial, random_features, linear); got an MLP.")
    own = jax.eval_shape(lambda key: model.init(key)[1], jax.random.key(0))
    if jax.tree.structure(state) != jax.tree.structure(own):  # else a KeyError deep in features
        raise ValueError(f"state has fields {sorted(state) if isinstance(state, dict) else state}; "
                         f"this model's state has {sorted(own)}: pass the state its own init "
                         "returned.")
    if model.n_out == 1 and jnp.ndim(y) != 1:  # (n, 1) gave (P, 1) coefficients, (n, 1) outputs
        raise ValueError(f"y has shape {jnp.shape(y)}; a one-output model takes (n,) targets.")
    return {"coef": solve(model.features(state, x), y, ridge=ridge, weight=weight)}
