"""Bootstrap bias-variance of one model on one data set: mlxtend's
``bias_variance_decomp``, with every round trained in one compiled call."""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from overfit import decompose
from overfit._checks import check_choice, check_int, check_range
from overfit.data import Dataset, resample
from overfit.models import Model
from overfit.solve import fit_linear
from overfit.train import check_inputs, check_model_hparams, default_loss, fit, trains_logits

_OWN = ("model", "data", "key", "hparams", "weight")  # fit's arguments a bootstrap sets
_MLXTEND = {"num_rounds": "rounds", "random_seed": "key"}  # mlxtend's names for ours


def _check_fit_kwargs(fit_kwargs: dict[str, Any]) -> None:
    """Refuse, by name, what ``fit`` would not take or the resampling would break."""
    if "weight" in fit_kwargs:
        raise ValueError("weight is per training row and a bootstrap resamples the rows (the "
                         "weights would not follow them): keep only the rows you want in data.")
    allowed = set(inspect.signature(fit).parameters) - set(_OWN)
    for name in fit_kwargs:
        if name not in allowed:
            hint = f" (mlxtend's {name}: use {_MLXTEND[name]}=)" if name in _MLXTEND else ""
            raise ValueError(f"unknown argument {name!r}{hint}; fit options allowed: "
                             f"{sorted(allowed)}.")


class Bootstrap(NamedTuple):
    """What :func:`bootstrap_bias_variance` measured."""

    terms: dict[str, decompose.Term]  # name -> (mean over test points, its standard error)
    preds: Array  # every round's raw outputs at the test points, (rounds, n_test[, K])


def bootstrap_bias_variance(model: Model, data: Dataset, *, key: Array, rounds: int = 200,
                            method: str = "gradient", noise: float | None = None,
                            ddof: int = 0, hparams: dict[str, Any] | None = None,
                            ridge: float = 0.0, **fit_kwargs: Any) -> Bootstrap:
    """Bias, variance (and noise) of ``model`` over bootstrap resamples of ``data``.

    As mlxtend's ``bias_variance_decomp``: each of ``rounds`` rounds draws
    ``n_train`` training rows with replacement, fits a fresh model (its own
    initialisation) and predicts at the test points; the decomposition is over
    the rounds. Here the rounds are the members of ONE ``fit`` call (or one
    batched least-squares solve).

    Args:
        model: any model; ``method="closed_form"`` needs one linear in its
            parameters (polynomial, random features, linear).
        data: ONE data set (no batch axis); its training split is resampled, its
            test split scored.
        key: PRNG key (split into resampling and initialisation keys).
        rounds: bootstrap rounds R >= 2 (mlxtend's ``num_rounds``).
        method: ``"gradient"`` (``fit``; ``fit_kwargs`` such as ``epochs``,
            ``optimizer``, ``loss``, ``early_stopping`` pass through) or
            ``"closed_form"`` (least squares, ``ridge`` its L2 strength).
        noise: regression only. None: against the noisy test targets ``y``, the
            noise inside ``bias2`` and reported 0 (mlxtend's convention). A noise
            VARIANCE (a generator's ``noise**2``): against the truth ``f_test``,
            the noise its own term.
        ddof: 0 (plug-in: mlxtend's numbers) or 1 (unbiased over the R rounds);
            see :mod:`overfit.decompose`. For classifiers it applies to the
            Kohavi-Wolpert terms (the others have no such correction).
        hparams: model knobs (e.g. ``{"degree": 3}``), the same for every round.

    Returns:
        :class:`Bootstrap`. Regression terms: ``loss``, ``bias2``, ``variance``,
        ``noise`` (``loss = bias2 + variance + noise``). Classification, against
        the test labels: :func:`overfit.decompose.classifier`'s (0-1 with
        Domingos' net variance, Kohavi-Wolpert, and the cross-entropy of the
        logits unless ``loss`` is ``"mse_onehot"``: a square loss on one-hot
        targets trains no logits).
    """
    rounds = check_int("rounds", rounds, lo=2)
    check_choice("method", method, ("gradient", "closed_form"))
    _check_fit_kwargs(fit_kwargs)
    if data.x_test.shape[-2] == 0:
        raise ValueError("data has no test points (n_test=0): the terms are averages over "
                         "the test split.")
    task = data.task
    if noise is not None:
        if task != "regression":
            raise ValueError("noise is the noise variance of regression targets; "
                             f"the data set is {task!r}: leave noise=None.")
        check_range("noise", noise, lo=0.0)
        if noise > 0 and bool(jnp.array_equal(data.f_test, data.y_test)):
            raise ValueError(f"noise={noise!r}, but data.f_test equals data.y_test (no known "
                             "truth: a real data set, or noise-free targets); the noise would "
                             "be counted twice: leave noise=None.")
    loss = fit_kwargs.get("loss") or default_loss(model, data)
    if task == "classification":
        if method == "closed_form":
            raise ValueError("method='closed_form' is least squares on regression targets; "
                             "the data set has class labels: use method='gradient'.")
        if loss == "mse":  # its one output scores the 0/1 label: no logit to decompose
            raise ValueError("loss='mse' on class labels gives no logits to decompose: use "
                             "loss 'bce', 'ce' or 'mse_onehot' (or the default).")
    if method == "gradient" and np.any(np.asarray(ridge) != 0):
        raise ValueError(f"ridge={ridge!r} is method='closed_form''s L2 strength; a trained "
                         "model takes its penalty from the optimizer (regularize.l2).")
    hparams = dict(hparams or {})
    key_data, key_init = jax.random.split(key)
    sets = jax.vmap(resample, in_axes=(0, None))(jax.random.split(key_data, rounds), data)
    inits = jax.random.split(key_init, rounds)
    if method == "gradient":
        result = fit(model, sets, key=inits, hparams=hparams, **fit_kwargs)
        params, state = result.params, result.state
    else:
        if fit_kwargs:
            raise ValueError(f"{sorted(fit_kwargs)} are options of method='gradient'; "
                             "method='closed_form' takes hparams and ridge.")
        check_model_hparams(model, hparams, others=())
        check_inputs(model, data)
        state = jax.vmap(lambda k: model.init(k, **hparams)[1])(inits)
        params = jax.vmap(lambda s, d: fit_linear(model, s, d.x_train, d.y_train, ridge=ridge)
                          )(state, sets)
    preds = jax.vmap(model.apply, in_axes=(0, 0, None))(params, state, data.x_test)
    if task == "classification":
        return Bootstrap(decompose.classifier(preds, data.y_test, ddof=ddof,
                                              logits=trains_logits(loss)), preds)
    if noise is None:
        sq = decompose.squared(preds, y=data.y_test, ddof=ddof)
    else:
        sq = decompose.squared(preds, f=data.f_test, noise=noise, ddof=ddof)
    return Bootstrap({"loss": sq.loss, "bias2": sq.bias2, "variance": sq.variance,
                      "noise": sq.noise}, preds)
