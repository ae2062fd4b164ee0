"""Models of varying capacity as pure ``(init, apply)`` pairs over pytrees.

A :class:`Model` is written for ONE model; ensembles come from ``jax.vmap``.
Capacity (polynomial degree, number of random features, hidden width) and the
drop rate live in the model's ``state``: per-member values up to a maximum fixed
at construction. Units above the live capacity are masked to zero, so a whole
capacity sweep shares one shape and compiles once. ``params`` holds only what
training updates; ``state`` holds what it never touches (capacity, masks'
sources, random feature weights).

Output shapes: ``(n,)`` when ``n_out == 1`` (regression or a binary logit),
otherwise ``(n, n_out)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from overfit._checks import (
    check_choice,
    check_domain,
    check_int,
    check_range,
    check_scalar,
    is_concrete,
)
from overfit.activations import ACTIVATIONS
from overfit.kernels import has_kernel, mlp_mse_grad

Params = Any
State = dict[str, Array]


class Model(NamedTuple):
    """A model: pure functions over ``(params, state)`` pytrees.

    Attributes:
        init: ``init(key, **hparams) -> (params, state)``; ``hparams`` override
            the constructor's defaults for one member (e.g. ``degree=3``) and
            may be traced, so ``jax.vmap(model.init)`` builds a capacity sweep.
        apply: ``apply(params, state, x, *, key=None, train=False) -> out`` for
            ``x`` of shape ``(n, d)``. ``key`` is required when ``train`` and
            the model is stochastic (dropout).
        n_params: ``n_params(state) -> Array`` (int32 scalar; per member under
            vmap): the live parameter count.
        features: for models linear in their parameters,
            ``features(state, x) -> (n, P)`` with ``apply = features @ coef``;
            None otherwise. Closed-form solvers use it.
        capacity: name of the capacity knob in ``init``/``state`` (or None).
        n_out: number of outputs.
        hparams: names of every keyword ``init`` accepts (capacity included).
        mse_grad: for deterministic one-output models with a hand-fused GPU
            kernel (:func:`mlp`), ``mse_grad(params, state, x, y) -> (grads,
            out)``: the gradient of ``mean(0.5 * (apply(x) - y)^2)`` and the
            outputs ``(n,)``, as ``jax.grad(..., has_aux=True)`` gives them.
            Full-batch square-loss training uses it; None otherwise, and
            ``model._replace(mse_grad=None)`` trains by autodiff everywhere. It
            is ``apply``'s gradient: replacing ``apply`` needs ``mse_grad=None``.
    """

    init: Callable[..., tuple[Params, State]]
    apply: Callable[..., Array]
    n_params: Callable[[State], Array]
    features: Callable[[State, Array], Array] | None
    capacity: str | None
    n_out: int
    hparams: tuple[str, ...] = ()
    mse_grad: Callable[..., tuple[Params, Array]] | None = None


def _squeeze(out: Array, n_out: int) -> Array:
    return out[..., 0] if n_out == 1 else out


def _linear_in_params(
    basis: Callable[[State, Array], Array],
    column_scale: Callable[[State], Array],
    make_state: Callable[..., State],
    width: int,
    count: Callable[[State], Array],
    capacity: str | None,
    n_out: int,
) -> Model:
    """A model ``x -> (basis(state, x) * column_scale(state)) @ coef``, ``coef`` zero at init.

    ``column_scale`` ``(P,)`` carries the capacity mask (and any per-column
    normalisation). ``apply`` folds it into ``coef`` instead of the features: a
    capacity sweep predicting shared test points then computes the basis once,
    not once per member, and its predictions are one matrix product.
    """

    def features(state: State, x: Array) -> Array:
        return basis(state, x) * column_scale(state)

    def init(key: Array, **hparams: Any) -> tuple[Params, State]:
        unknown = sorted(set(hparams) - {capacity})
        if unknown:
            raise TypeError(f"init() got unexpected knobs {unknown}; this model's only knob is "
                            f"{capacity!r}." if capacity else f"init() got unexpected knobs "
                            f"{unknown}; this model has none.")
        coef = jnp.zeros((width,) if n_out == 1 else (width, n_out))
        return {"coef": coef}, make_state(key, **hparams)

    def apply(params: Params, state: State, x: Array, *, key=None, train=False) -> Array:
        del key, train  # deterministic
        coef = params["coef"]
        scale = column_scale(state)
        return basis(state, x) @ (scale * coef if coef.ndim == 1 else scale[:, None] * coef)

    def n_params(state: State) -> Array:
        return count(state) * n_out

    return Model(init, apply, n_params, features, capacity, n_out, (capacity,) if capacity else ())


def legendre(t: Array, degree: int) -> Array:
    """Orthonormal Legendre basis on [-1, 1].

    Args:
        t: points, ``(n,)``, ideally in [-1, 1].
        degree: highest degree (static).

    Returns:
        ``(n, degree + 1)``: column k is ``sqrt(2k + 1) P_k(t)``, so every
        column has unit mean square under the uniform measure on [-1, 1] and
        the design stays well conditioned far beyond degree 30.
    """
    degree = check_int("degree", degree, lo=0)
    if jnp.ndim(t) != 1:
        raise ValueError(f"t must be (n,) points; got shape {jnp.shape(t)}.")
    cols = [jnp.ones_like(t), t]
    for k in range(1, degree):  # Bonnet's recurrence, stable on [-1, 1]
        cols.append(((2 * k + 1) * t * cols[k] - k * cols[k - 1]) / (k + 1))
    basis = jnp.stack(cols[: degree + 1], axis=-1)
    return basis * jnp.sqrt(2.0 * jnp.arange(degree + 1) + 1.0)


def polynomial(max_degree: int, *, domain: tuple[float, float] = (0.0, 1.0)) -> Model:
    """Polynomial regression of degree up to ``max_degree`` in 1-D.

    Uses the orthonormal Legendre basis on ``domain`` rescaled to [-1, 1]
    instead of raw powers (whose Vandermonde matrix is singular to working
    precision by degree ~15 on [0, 1]). Coefficients above the live ``degree``
    are masked. ``init(key, degree=max_degree)``.

    Args:
        max_degree: the largest degree (>= 0): ``max_degree + 1`` coefficients.
        domain: ``(lo, hi)``, the input interval mapped onto [-1, 1].

    ``apply`` takes ``x`` of shape ``(n, 1)`` and returns ``(n,)``.
    """
    max_degree = check_int("max_degree", max_degree, lo=0)
    lo, hi = check_domain(domain)

    def make_state(key: Array, degree: Any = max_degree) -> State:
        del key
        check_range("degree", degree, lo=0, hi=max_degree, whole=True)
        return {"degree": jnp.asarray(degree, jnp.int32)}

    def basis(state: State, x: Array) -> Array:
        del state
        if x.shape[-1] != 1:  # x[:, 0] would quietly drop every other input
            raise ValueError(f"a polynomial takes rows of 1 input; got x of shape {x.shape}.")
        return legendre((2.0 * x[:, 0] - (lo + hi)) / (hi - lo), max_degree)

    def column_scale(state: State) -> Array:
        return jnp.where(jnp.arange(max_degree + 1) <= state["degree"], 1.0, 0.0)

    return _linear_in_params(basis, column_scale, make_state, max_degree + 1,
                             lambda s: s["degree"] + 1, "degree", 1)


def random_features(
    max_features: int,
    *,
    n_in: int = 1,
    kind: str = "fourier",
    scale: float = 1.0,
) -> Model:
    """Random-features regression (Rahimi & Recht; Belkin et al. 2019).

    Fourier: ``sqrt(2/N) cos(x W + b)`` with ``W ~ N(0, scale^2 / n_in)``,
    ``b ~ U[0, 2 pi)``. ReLU: ``sqrt(2/N) relu(x W + b)`` with
    ``W ~ N(0, 1/n_in)``, ``b ~ N(0, scale^2)``. The features are drawn from
    the init key and kept in ``state``; only the ``max_features`` output
    coefficients are trained. Features at index >= the live ``n_features`` are
    masked. ``init(key, n_features=max_features)``.

    Args:
        max_features: N, the largest number of features (>= 1).
        n_in: input dimension d: ``apply`` takes ``(n, d)``, returns ``(n,)``.
        kind: ``"fourier"`` or ``"relu"``.
        scale: the bandwidth of ``W`` (Fourier) or the std of ``b`` (ReLU), > 0.
    """
    max_features = check_int("max_features", max_features, lo=1)
    n_in = check_int("n_in", n_in, lo=1)
    check_choice("kind", kind, ("fourier", "relu"))
    check_range("scale", scale, lo=0.0, lo_open=True)

    def make_state(key: Array, n_features: Any = max_features) -> State:
        check_range("n_features", n_features, lo=1, hi=max_features, whole=True)
        kw, kb = jax.random.split(key)
        w = jax.random.normal(kw, (n_in, max_features)) / jnp.sqrt(n_in)
        if kind == "fourier":
            w, b = w * scale, jax.random.uniform(kb, (max_features,), maxval=2 * jnp.pi)
        else:
            b = scale * jax.random.normal(kb, (max_features,))
        return {"n_features": jnp.asarray(n_features, jnp.int32), "w": w, "b": b}

    def basis(state: State, x: Array) -> Array:
        z = x @ state["w"] + state["b"]
        return jnp.cos(z) if kind == "fourier" else jax.nn.relu(z)

    def column_scale(state: State) -> Array:
        live = jnp.arange(max_features) < state["n_features"]
        return live * jnp.sqrt(2.0 / state["n_features"])

    return _linear_in_params(basis, column_scale, make_state, max_features,
                             lambda s: s["n_features"], "n_features", 1)


def linear(n_in: int, *, n_out: int = 1, bias: bool = True) -> Model:
    """Linear / logistic / softmax regression: ``x @ W + b``.

    The same model serves all three; the loss decides (``"mse"``, ``"bce"`` with
    ``n_out=1``, ``"ce"`` with ``n_out = n_classes``). ``bias=False`` gives the
    isotropic linear model of the double-descent theory. Capacity: only the
    first ``n_inputs`` inputs are used, ``init(key, n_inputs=n_in)`` (a p/n
    sweep on one data set).

    Args:
        n_in: input dimension d: ``apply`` takes ``(n, d)``.
        n_out: outputs: ``apply`` returns ``(n,)`` for 1, else ``(n, n_out)``.
        bias: whether to add an intercept (``d + 1`` coefficients per output).
    """
    n_in = check_int("n_in", n_in, lo=1)
    n_out = check_int("n_out", n_out, lo=1)
    if isinstance(bias, str) or bias not in (True, False):
        raise ValueError(f"bias={bias!r} must be True or False.")
    bias = bool(bias)

    def make_state(key: Array, n_inputs: Any = n_in) -> State:
        del key
        check_range("n_inputs", n_inputs, lo=1, hi=n_in, whole=True)
        return {"n_inputs": jnp.asarray(n_inputs, jnp.int32)}

    def basis(state: State, x: Array) -> Array:
        del state
        return jnp.concatenate([x, jnp.ones_like(x[:, :1])], axis=1) if bias else x

    def column_scale(state: State) -> Array:
        live = jnp.arange(n_in + int(bias)) < state["n_inputs"]
        # the bias column (last) is always live
        return jnp.where(live | (jnp.arange(n_in + int(bias)) == n_in), 1.0, 0.0)

    width = n_in + int(bias)
    return _linear_in_params(basis, column_scale, make_state, width,
                             lambda s: s["n_inputs"] + int(bias), "n_inputs", n_out)


def mlp(
    n_in: int,
    hidden: Sequence[int] = (64, 64),
    *,
    n_out: int = 1,
    activation: str = "tanh",
    drop_rate: float = 0.0,
    input_drop_rate: float = 0.0,
) -> Model:
    """Fully connected network with masked width and inverted dropout.

    ``init(key, width=max(hidden), drop_rate=..., input_drop_rate=...)``: every
    hidden layer keeps its first ``min(width, hidden[i])`` units; weights are
    drawn ``N(0, g^2 / live_fan_in)`` (g = sqrt(2) for ReLU, 1 otherwise) so a
    masked network starts like an unmasked one of the live width; hidden biases
    ``U(-1, 1) / sqrt(live_fan_in)`` (as PyTorch), the output bias 0. Dropout is
    inverted (kept units scaled by ``1 / (1 - q)``), ``drop_rate`` q is the
    probability of DROPPING a unit (stax's ``rate`` is the keep probability),
    active only when ``train=True`` and then requires ``key``. Dropout is
    compiled in when the constructor's ``drop_rate`` or ``input_drop_rate`` is
    positive: to sweep rates including 0 per member, construct with a positive
    default and pass ``drop_rate`` to ``init``.

    Args:
        n_in: input dimension d: ``apply`` takes ``(n, d)``.
        hidden: hidden widths, e.g. ``(64, 64)``; ``()`` is a linear model.
        n_out: outputs: ``apply`` returns ``(n,)`` for 1, else ``(n, n_out)``.
        activation: ``"tanh"``, ``"relu"``, ``"sigmoid"``, ``"gelu"`` or ``"linear"``.
        drop_rate, input_drop_rate: default dropout probabilities of the hidden
            units and of the inputs, in [0, 1).
    """
    n_in = check_int("n_in", n_in, lo=1)
    n_out = check_int("n_out", n_out, lo=1)
    if isinstance(hidden, str | bytes) or np.ndim(hidden) != 1:
        raise ValueError(f"hidden={hidden!r} must be a sequence of widths, e.g. (64,) for one "
                         "hidden layer of 64 units.")
    if not isinstance(hidden, list | tuple):  # an array's elements as Python numbers
        hidden = np.asarray(hidden).tolist()
    hidden = tuple(check_int(f"hidden[{i}]", h, lo=1) for i, h in enumerate(hidden))
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    gain = jnp.sqrt(2.0) if activation == "relu" else 1.0
    for name, rate in (("drop_rate", drop_rate), ("input_drop_rate", input_drop_rate)):
        # one default per model: per-member rates go to init (see above)
        check_range(name, check_scalar(name, rate, "per-member rates go through fit's hparams"),
                    lo=0.0, hi=1.0, hi_open=True)
    # dropout masks cost as much as the matmuls on a CPU: compile them in only
    # when the constructor asks for dropout (per-member rates may then be 0)
    stochastic = drop_rate > 0 or input_drop_rate > 0
    sizes = (n_in, *hidden, n_out)
    max_width = max(hidden, default=1)

    def live_sizes(width: Array) -> list[Array]:
        return [jnp.asarray(n_in), *(jnp.minimum(h, width) for h in hidden), jnp.asarray(n_out)]

    def init(
        key: Array,
        width: Any = max_width,
        drop_rate: Any = drop_rate,
        input_drop_rate: Any = input_drop_rate,
    ) -> tuple[Params, State]:
        check_range("width", width, lo=1, hi=max_width, whole=True)
        check_range("drop_rate", drop_rate, lo=0.0, hi=1.0, hi_open=True)
        check_range("input_drop_rate", input_drop_rate, lo=0.0, hi=1.0, hi_open=True)
        if not stochastic:
            for name, q in (("drop_rate", drop_rate), ("input_drop_rate", input_drop_rate)):
                if is_concrete(q) and np.any(np.asarray(q) > 0):
                    raise ValueError(
                        f"{name}={np.asarray(q).tolist()} given to init, but this mlp was built "
                        "without dropout, so none would be applied: build it with a positive "
                        f"{name} (e.g. mlp(..., {name}=0.5)) to sweep rates per member.")
        live = live_sizes(jnp.asarray(width))
        params = []
        for i, (k, (m, n), fan_in) in enumerate(zip(
            jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:]), live[:-1]
        )):
            kw, kb = jax.random.split(k)
            # weights into and out of masked units start (and, their gradients being 0,
            # stay) at 0: a norm of the parameters (L2's, a global-norm clip's) is then the
            # narrow network's own
            rows, cols = jnp.arange(m) < live[i], jnp.arange(n) < live[i + 1]
            w = jax.random.normal(kw, (m, n)) * gain / jnp.sqrt(fan_in)
            w = jnp.where(rows[:, None] & cols[None, :], w, 0.0)
            # zero hidden biases put every ReLU kink (every tanh centre) at x = 0,
            # which cripples low-dimensional inputs; PyTorch's U(+-1/sqrt(fan_in)) spreads them
            bound = jnp.where(cols, 1.0 / jnp.sqrt(fan_in), 0.0) if i < len(hidden) else 0.0
            params.append({"w": w, "b": jax.random.uniform(kb, (n,), minval=-1.0) * bound})
        state = {
            "width": jnp.asarray(width, jnp.int32),
            "drop_rate": jnp.asarray(drop_rate, jnp.float32),
            "input_drop_rate": jnp.asarray(input_drop_rate, jnp.float32),
        }
        return params, state

    def unit_masks(state: State) -> list[Array]:
        return [jnp.arange(h) < state["width"] for h in hidden]

    def apply(params: Params, state: State, x: Array, *, key=None, train=False) -> Array:
        if train and key is None:
            raise ValueError("key is required when train=True (dropout draws a mask).")
        drop = train and stochastic
        keys = jax.random.split(key, len(hidden) + 1) if drop else [None] * (len(hidden) + 1)
        h = dropout(x, state["input_drop_rate"], key=keys[0]) if drop else x
        for i, (layer, live) in enumerate(zip(params[:-1], unit_masks(state))):
            h = act(h @ layer["w"] + layer["b"]) * live
            if drop:
                h = dropout(h, state["drop_rate"], key=keys[i + 1])
        return _squeeze(h @ params[-1]["w"] + params[-1]["b"], n_out)

    def n_params(state: State) -> Array:
        live = live_sizes(state["width"])
        return sum(m * n + n for m, n in zip(live[:-1], live[1:]))

    knobs = ("width", "drop_rate", "input_drop_rate")
    mse_grad = None
    if n_out == 1 and not stochastic and has_kernel(hidden, activation):
        mse_grad = mlp_mse_grad(apply, unit_masks, hidden, activation)
    return Model(init, apply, n_params, None, "width" if hidden else None, n_out, knobs,
                 mse_grad)


def dropout(x: Array, drop_rate: Array | float, *, key: Array) -> Array:
    """Inverted dropout: zero each entry with probability ``drop_rate``, scale the rest.

    ``E[dropout(x)] = x`` and ``Var = x^2 q / (1 - q)``; ``drop_rate = 0`` is the
    identity. ``drop_rate`` may be traced (a vmapped axis); a concrete one must lie in [0, 1).
    """
    check_range("drop_rate", drop_rate, lo=0.0, hi=1.0, hi_open=True)
    keep = 1.0 - drop_rate
    mask = jax.random.uniform(key, x.shape) < keep
    return jnp.where(mask, x / keep, 0.0)
