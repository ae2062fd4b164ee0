"""Closed-form fits for models linear in their parameters: OLS, ridge, min-norm.

One SVD path serves all three, so a vmapped sweep is one batched SVD rather
than many LAPACK calls (see ARCHITECTURE.md on hangs with many lstsq in one jit).

Cutoff: singular values ``s <= rcond * max(s)`` are treated as zero, with
``rcond = 10 * max(n, P) * eps`` by default (the ``jnp.linalg.pinv`` rule). Near
the interpolation threshold (P ~ n) the smallest live singular values are tiny
but real: use float64 there (``jax.config.update("jax_enable_x64", True)``) so
the min-norm solution is computed, not truncated into a different one.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from overfit._checks import check_range
from overfit.models import Model, Params, State


def solve(phi: Array, y: Array, *, ridge: Array | float = 0.0, rcond: float | None = None) -> Array:
    """Minimise ``(1/2n)|phi w - y|^2 + (ridge/2)|w|^2``; min-norm when ``ridge = 0``.

    Args:
        phi: design matrix, ``(n, P)``.
        y: targets, ``(n,)`` or ``(n, k)``.
        ridge: penalty lambda >= 0 (may be traced); the solution is
            ``(phi'phi + n lambda I)^-1 phi'y``, the GROUND_TRUTH §2 convention.
        rcond: relative singular-value cutoff for the ``ridge = 0`` case.

    Returns:
        ``w`` of shape ``(P,)`` or ``(P, k)``: for full column rank and no ridge
        the least-squares solution; otherwise ``pinv(phi) y``.
    """
    check_range("ridge", ridge, lo=0.0)
    n, p = phi.shape
    if n < p:
        # LAPACK on CPU is ~20x slower on a wide matrix than on its transpose
        v, s, ut = jnp.linalg.svd(phi.T, full_matrices=False)
        u, vt = ut.T, v.T
    else:
        u, s, vt = jnp.linalg.svd(phi, full_matrices=False)
    if rcond is None:
        rcond = 10.0 * max(n, p) * jnp.finfo(phi.dtype).eps
    live = s > rcond * s[0]
    # s / (s^2 + n lambda): 1/s for OLS / min-norm; the safe denominator keeps 0/0 out
    shrink = jnp.where(live, s / jnp.where(live, s**2 + n * ridge, 1.0), 0.0)
    return vt.T @ (shrink[:, None] * (u.T @ y.reshape(n, -1))).reshape((-1, *y.shape[1:]))


def fit_linear(
    model: Model, state: State, x: Array, y: Array, *, ridge: Array | float = 0.0
) -> Params:
    """Closed-form parameters of a linear-in-parameters ``model`` on ``(x, y)``.

    Args:
        model: a model with ``features`` (polynomial, random features, linear).
        state: that model's state (capacity, feature weights).
        x: inputs ``(n, d)``; y: targets ``(n,)``.
        ridge: L2 strength lambda (see :func:`solve`).

    Returns:
        ``{"coef": w}`` usable with ``model.apply``.
    """
    if model.features is None:
        raise ValueError("fit_linear needs a model linear in its parameters "
                         "(polynomial, random_features, linear); got an MLP.")
    return {"coef": solve(model.features(state, x), y, ridge=ridge)}
