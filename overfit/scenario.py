"""Scenario files: TOML -> validated frozen dataclasses -> ``run(scenario, out_dir)``.

A scenario names its data, model, training and sweep; its ``kind`` picks the
experiment (``overfit.experiments.EXPERIMENTS``) that turns it into a results
table and figures. ``run`` writes them under ``out_dir/<name>/`` atomically:
everything goes to a ``.partial`` folder first, which replaces the old results
only once complete, so an interrupted run never leaves a table that looks done.

Results are keyed by a fingerprint of the config, the package versions, the
device and the precision: a run whose folder already holds results with the
same fingerprint is skipped (so a gallery killed halfway resumes where it
stopped), and results of anything else are never overwritten without ``force``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import re
import shutil
import time
import tomllib
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from overfit import data as datasets
from overfit.chunks import storing
from overfit.clock import CompileClock
from overfit.early_stopping import MONITORS
from overfit.schema import build, knob

KINDS = ("five_points", "capacity_curve", "training_curves", "early_stopping", "dropout",
         "validation_curve", "learning_curves", "remedies", "bias_variance", "double_descent")

SWEEPS = {  # the sweep lists each kind reads (overfit.experiments); others are refused
    "five_points": (), "capacity_curve": ("capacity",), "training_curves": (),
    "early_stopping": (), "dropout": ("drop_rate",), "validation_curve": ("l2",),
    "learning_curves": ("n_train", "capacity"),
    "remedies": ("l2", "drop_rate", "n_train", "capacity"),
    "bias_variance": ("capacity", "l2", "n_train", "noise", "flip"),
    "double_descent": ("capacity", "n_train", "l2", "noise"),
}
# the data fields each source reads (overfit.experiments.draw): another field set for it
# would be ignored, and a figure would claim a noise level or size its data never had
_GENERATED = ("source", "n_train", "n_val", "n_test", "noise")
SOURCE_FIELDS = {
    "regression": (*_GENERATED, "target", "x_dist", "domain"),
    "classification": (*_GENERATED, "shape", "flip"),
    "linear": (*_GENERATED, "p", "r2", "link"),
    "preset": ("source", "flip_y"),
    "real": ("source", "name", "label_noise", "val_frac", "test_frac"),
}
LABEL_NOISE = {"flip": "classification", "flip_y": "preset", "label_noise": "real"}
DATA_AXES = ("n_train", "noise", "flip")  # sweep fields that change the data
# the sources whose data each swept noise knob changes (n_train: every source)
DRAWN_WITH = {"noise": ("regression", "linear", "classification"), "flip": ("classification",)}
MODEL_FIELDS = {  # the model fields each family reads (overfit.experiments.build_model)
    "polynomial": ("kind", "max_degree"), "random_features": ("kind", "max_features", "features"),
    "linear": ("kind",), "mlp": ("kind", "hidden", "activation", "drop_rate"),
}
GRADIENT_ONLY = ("l1", "weight_decay", "input_noise")  # a closed-form solve takes l2 alone
# budget knobs: where a scenario ignores one (a solve has no epochs, a fixed data set its
# own split sizes) it is let through, so that one --set can shrink a whole gallery; the
# figure claims none of them
BUDGET = {"data": ("n_val", "n_test"), "sweep": ("seeds", "chunk_size"),
          "train": ("optimizer", "learning_rate", "epochs", "batch_size", "eval_every")}
TEST_ONLY_KINDS = ("bias_variance", "double_descent")  # score the test split alone
TRAINED_KINDS = ("training_curves", "early_stopping", "dropout", "remedies")  # read epochs
NEEDS = {  # the sweep lists a kind cannot run without
    "dropout": ("drop_rate",), "validation_curve": ("l2",), "learning_curves": ("n_train",),
    "remedies": ("capacity", "l2", "drop_rate", "n_train"),
}
REMEDY_SETTINGS = NEEDS["remedies"]  # one value each: the remedy's setting, not a sweep


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how noisy it is."""

    source: str = knob("regression", "generator or data set",
                       choices=("regression", "classification", "preset", "real", "linear"))
    target: str = knob("cos", "regression truth f(x)", choices=tuple(datasets.TARGETS))
    shape: str = knob("circle", "classification shape", choices=tuple(datasets.SHAPES))
    name: str = knob("digits", "real data set (source='real')", choices=datasets.REAL_DATASETS)
    p: int = knob(10, "input dimension of the isotropic linear source", lo=1)
    r2: float = knob(1.0, "signal |b|^2 of the linear source", lo=0.0)
    link: str = knob("identity", "link g of the linear source: f = g(x . b)",
                     choices=datasets.LINKS)
    n_train: int = knob(30, "training points (a fixed data set: its whole training split)",
                        lo=1)
    n_val: int = knob(30, "validation points", lo=0)
    n_test: int = knob(500, "test points", lo=0)
    noise: float = knob(0.1, "regression noise std / playground input noise", lo=0.0)
    flip: float = knob(0.0, "label-flip probability (classification)", lo=0.0, hi=1.0,
                       hi_open=True)
    x_dist: str = knob("uniform", "input distribution (regression)", choices=datasets.X_DISTS)
    domain: list[float] = knob([0.0, 1.0], "input range [lo, hi] (regression)")
    flip_y: float = knob(0.05, "label noise of the lesson's preset (scikit-learn's flip_y)",
                         lo=0.0, hi=1.0, hi_open=True)
    label_noise: float = knob(0.0, "label noise injected into a real data set", lo=0.0,
                              hi=1.0, hi_open=True)
    val_frac: float = knob(0.15, "validation fraction of a real data set", lo=0.0, hi=1.0,
                           lo_open=True, hi_open=True)
    test_frac: float = knob(0.15, "test fraction of a real data set (the rest trains)",
                            lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model family and its largest capacity."""

    kind: str = knob("polynomial", "model family",
                     choices=("polynomial", "random_features", "linear", "mlp"))
    max_degree: int = knob(15, "largest polynomial degree", lo=0)
    max_features: int = knob(100, "largest number of random features", lo=1)
    features: str = knob("fourier", "random-feature kind", choices=("fourier", "relu"))
    hidden: list[int] = knob([64, 64], "MLP hidden widths", lo=1)
    activation: str = knob("tanh", "MLP activation", choices=("tanh", "relu", "sigmoid", "gelu"))
    drop_rate: float = knob(0.0, "MLP dropout probability", lo=0.0, hi=1.0, hi_open=True)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How models are fitted."""

    method: str = knob("gradient", "closed-form solve or gradient training",
                       choices=("closed_form", "gradient"))
    precision: str = knob("auto", "floating point: auto = float64 for closed-form solves "
                          "(min-norm near the threshold needs it), float32 for training",
                          choices=("auto", "float32", "float64"))
    optimizer: str = knob("adam", "optax optimizer (adamw: adam with weight_decay's "
                          "decoupled decay)", choices=("adam", "sgd", "adamw"))
    loss: str = knob("auto", "training loss (auto: mse, bce or ce from the task)",
                     choices=("auto", "mse", "bce", "ce", "mse_onehot"))
    learning_rate: float = knob(0.01, "step size", lo=0.0)
    epochs: int = knob(100, "training epochs", lo=1)
    batch_size: int = knob(0, "minibatch size (0 = full batch)", lo=0)
    eval_every: int = knob(1, "epochs between history entries", lo=1)
    l2: float = knob(0.0, "L2 strength: ridge lambda (closed form) or penalty on weights",
                     lo=0.0)
    l1: float = knob(0.0, "L1 penalty strength, proximal step (MLP biases excluded)", lo=0.0)
    weight_decay: float = knob(0.0, "decoupled weight decay (MLP biases excluded)", lo=0.0)
    input_noise: float = knob(0.0, "std of Gaussian noise added to training inputs", lo=0.0)


@dataclasses.dataclass(frozen=True)
class StopConfig:
    """Early stopping inside the compiled loop (``rule = "none"`` trains the full budget)."""

    rule: str = knob("none", "stopping rule", choices=("none", "patience", "GL", "PQ", "UP"))
    monitor: str = knob("val_loss", "monitored quantity", choices=MONITORS)
    patience: int = knob(10, "evaluations without improvement before stopping", lo=0)
    min_delta: float = knob(0.0, "smallest change that counts as an improvement", lo=0.0)
    start_from_epoch: int = knob(0, "evaluations ignored at the start", lo=0)
    alpha: float = knob(5.0, "Prechelt threshold (GL, PQ) or number of strips (UP)", lo=0.0)
    strip: int = knob(5, "Prechelt strip length", lo=1)
    restore_best: bool = knob(True, "return the best evaluation's parameters")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The grid: capacities x repeats (data draws / initialisations)."""

    capacity: list[int] = knob([], "capacities to sweep (degree, features or width)", lo=0)
    l2: list[float] = knob([], "L2 strengths to sweep (closed form: ridge lambda)", lo=0.0)
    drop_rate: list[float] = knob([], "dropout probabilities to sweep", lo=0.0, hi=1.0,
                                  hi_open=True)
    n_train: list[int] = knob([], "training-set sizes to sweep (nested; a fixed data set: "
                              "random subsets of its training split)", lo=1)
    noise: list[float] = knob([], "noise levels (data.noise) to sweep (bias_variance, "
                              "double_descent)", lo=0.0)
    flip: list[float] = knob([], "label-flip rates (data.flip) to sweep (bias_variance)",
                             lo=0.0, hi=1.0, hi_open=True)
    seeds: int = knob(10, "repeats per grid point; repeat s has the same training set and "
                      "initialisation at every point", lo=1)
    inits: int = knob(1, "initialisations per training set (bias_variance)", lo=1)
    chunk_size: int = knob(0, "members trained per compiled call (0: from a memory estimate); "
                           "finished chunks are kept, so a killed run resumes mid-sweep", lo=0)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A whole scenario file."""

    name: str = knob("scenario", "output folder name: letters, digits, '_' and '-'")
    kind: str = knob("capacity_curve", "experiment to run", choices=KINDS)
    title: str = knob("", "figure title")
    description: str = knob("", "what the scenario shows")
    seed: int = knob(0, "master PRNG seed", lo=0, hi=2**32 - 1)
    data: DataConfig = dataclasses.field(default_factory=DataConfig,
                                         metadata=dict(doc="data section"))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig,
                                           metadata=dict(doc="model section"))
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig,
                                           metadata=dict(doc="training section"))
    sweep: SweepConfig = dataclasses.field(default_factory=SweepConfig,
                                           metadata=dict(doc="sweep section"))
    early_stopping: StopConfig = dataclasses.field(default_factory=StopConfig,
                                                   metadata=dict(doc="early-stopping section"))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def from_dict(table: Mapping[str, Any]) -> Scenario:
    """Validate a parsed TOML table; errors name the field and the allowed values."""
    scenario = build(Scenario, table, "")
    if not _NAME.fullmatch(scenario.name):
        raise ValueError(f"name={scenario.name!r} must be letters, digits, '_' or '-' "
                         "(it names the output folder).")
    domain = scenario.data.domain
    if len(domain) != 2 or not -math.inf < domain[0] < domain[1] < math.inf:
        raise ValueError(f"data.domain={scenario.data.domain!r} must be [lo, hi] with finite "
                         "lo < hi.")
    # fields that are valid alone but not together: caught here, so that
    # `overfit validate` and a gallery's up-front load see them before any work
    t, e = scenario.train, scenario.early_stopping
    if t.method == "gradient" and t.epochs % t.eval_every:
        raise ValueError(f"train.eval_every={t.eval_every} must divide "
                         f"train.epochs={t.epochs}.")
    if e.rule == "UP" and (e.alpha < 1 or not float(e.alpha).is_integer()):
        raise ValueError(f"early_stopping.alpha={e.alpha!r}: rule 'UP' stops after alpha "
                         "successive rising strips; give a whole number >= 1.")
    _check_method(scenario)
    _check_kind(scenario)
    _check_unused(scenario)
    return scenario


def _task(data: DataConfig) -> str:
    """``"classification"`` or ``"regression"``: what ``data.source`` draws."""
    if data.source == "real":
        return "classification" if datasets.REAL_N_CLASSES[data.name] else "regression"
    return "classification" if data.source in ("classification", "preset") else "regression"


def _n_inputs(data: DataConfig) -> int | None:
    """Input features per point, where the config alone tells (None: a real data set)."""
    return {"regression": 1, "linear": data.p, "classification": 2}.get(data.source)


def _check_method(scenario: Scenario) -> None:
    """Refuse a kind, model and data that the fitting method cannot serve: they would
    crash after the sweep, or draw a curve of something that was never there."""
    kind, method, d, m = scenario.kind, scenario.train.method, scenario.data, scenario.model
    if kind == "five_points":  # always the lesson's two least-squares fits
        if d.source != "regression":
            raise ValueError(f"kind='five_points' fits a line and a polynomial to 1-D points: "
                             f"it needs data.source='regression'; got {d.source!r}.")
        return
    if kind == "dropout" and scenario.model.kind != "mlp":
        raise ValueError(f"kind='dropout' needs model.kind='mlp' (dropout acts on hidden "
                         f"units); got model.kind={scenario.model.kind!r}.")
    if m.kind == "polynomial" and _n_inputs(d) != 1:
        inputs = f"{_n_inputs(d)} inputs" if _n_inputs(d) else "several inputs"
        raise ValueError(f"model.kind='polynomial' needs 1-D inputs; data.source={d.source!r} "
                         f"gives {inputs}: use model.kind 'random_features', 'linear' or 'mlp'.")
    caps = scenario.sweep.capacity
    if m.kind in ("mlp", "random_features") and 0 in caps:
        knob = "width" if m.kind == "mlp" else "number of features"
        raise ValueError(f"sweep.capacity={caps!r}: a {knob} of 0 is no model; "
                         f"model.kind={m.kind!r} takes capacities >= 1.")
    if m.kind == "mlp" and not m.hidden and (caps or kind in ("dropout", "remedies")):
        raise ValueError(f"model.hidden=[] has no hidden layer, whose width kind={kind!r}"
                         f"{' and sweep.capacity' if caps else ''} would change: give one, "
                         "e.g. model.hidden=[64].")
    if d.source == "real" and d.val_frac + d.test_frac >= 1:
        raise ValueError(f"data.val_frac={d.val_frac!r} + data.test_frac={d.test_frac!r} "
                         "leave no training split: their sum must be below 1.")
    if method == "gradient":
        _check_training(scenario)
    if method == "closed_form" and kind in TRAINED_KINDS:
        raise ValueError(f"kind={kind!r} follows training epoch by epoch; "
                         "train.method='closed_form' has no epochs: use train.method='gradient'.")
    if method == "closed_form" and _task(d) == "classification":
        name = f", name={d.name!r}" if d.source == "real" else ""
        raise ValueError(f"train.method='closed_form' is least squares on regression targets; "
                         f"data.source={d.source!r}{name} gives class labels: use "
                         "train.method='gradient'.")
    if kind == "bias_variance" and scenario.train.loss == "mse" and _task(d) == "classification":
        # one output regressed on the 0/1 labels is no logit, which the 0-1 and
        # cross-entropy decompositions read it as
        raise ValueError("kind='bias_variance' decomposes a classifier's logits; train.loss="
                         "'mse' on class labels gives none: use train.loss 'auto', 'bce', 'ce' "
                         "or 'mse_onehot'.")


def _check_training(scenario: Scenario) -> None:
    """Losses and stopping monitors that fit the task; a validation split to monitor."""
    d, t, e = scenario.data, scenario.train, scenario.early_stopping
    task = _task(d)
    if task == "regression" and t.loss in ("bce", "ce", "mse_onehot"):
        raise ValueError(f"train.loss={t.loss!r} needs class labels; data.source={d.source!r} "
                         "gives regression targets: use train.loss 'auto' or 'mse'.")
    if e.rule == "none":
        return
    metric = "mse" if task == "regression" else "accuracy"
    if e.monitor.endswith("accuracy" if metric == "mse" else "mse"):
        split = e.monitor.split("_")[0]
        raise ValueError(f"early_stopping.monitor={e.monitor!r}: {task} data is scored by "
                         f"{metric}; use {split}_loss or {split}_{metric}.")
    if e.rule != "patience" and (not e.monitor.startswith("val_") or "accuracy" in e.monitor):
        raise ValueError(f"early_stopping.monitor={e.monitor!r}: rule {e.rule!r} (Prechelt) "
                         "needs a validation error to minimise: use val_loss or val_mse.")
    if (e.monitor.startswith("val_") and "n_val" in SOURCE_FIELDS[d.source]
            and d.n_val == 0):
        raise ValueError(f"early_stopping.monitor={e.monitor!r} watches the validation split, "
                         "and data.n_val=0 draws none: give data.n_val > 0.")


def _check_kind(scenario: Scenario) -> None:
    """What each kind needs of its sweep, rule and data before it can run."""
    kind, sweep, d = scenario.kind, scenario.sweep, scenario.data
    if kind not in TEST_ONLY_KINDS and "n_val" in SOURCE_FIELDS[d.source] and d.n_val == 0:
        raise ValueError(f"kind={kind!r} draws (or chooses by) validation scores, and "
                         "data.n_val=0 draws no validation split: give data.n_val > 0.")
    for field in NEEDS.get(kind, ()):
        if not getattr(sweep, field):
            raise ValueError(f"kind={kind!r} needs sweep.{field} (a non-empty list).")
    if kind in ("early_stopping", "remedies") and scenario.early_stopping.rule == "none":
        what = "" if kind == "early_stopping" else " for its early-stopping arm"
        raise ValueError(f"kind={kind!r} needs early_stopping.rule (patience, GL, PQ or UP)"
                         f"{what}, not 'none'.")
    if kind == "remedies":
        _check_remedies(scenario)
    if kind == "bias_variance":
        fields = ("capacity", "l2", *DATA_AXES)
        swept = [f for f in fields if getattr(sweep, f)]
        if len(swept) != 1:
            raise ValueError(f"kind='bias_variance' draws the terms against exactly one of "
                             f"sweep.{', sweep.'.join(fields)} (a non-empty list); got "
                             f"{swept or 'none'}.")
    if kind == "double_descent":
        if scenario.train.method != "closed_form":
            if sweep.n_train:
                raise ValueError("kind='double_descent' sweeps sweep.n_train with "
                                 "train.method='closed_form' only (min-norm solutions).")
            extra = [f"sweep.{f}" for f in ("noise", "l2") if getattr(sweep, f)]
            if extra:
                raise ValueError(f"kind='double_descent' draws {', '.join(extra)} as extra "
                                 "curves of min-norm fits only (train.method='closed_form'); "
                                 "a trained sweep takes sweep.capacity.")
        if not sweep.n_train and not sweep.capacity:
            raise ValueError("kind='double_descent' needs sweep.capacity (or, min-norm, "
                             "sweep.n_train): a non-empty list.")
    for field, sources in DRAWN_WITH.items():
        if getattr(sweep, field) and d.source not in sources:
            # every value would train on the same data: a flat curve that looks like a finding
            raise ValueError(f"kind={kind!r} varies data.{field}, which "
                             f"data.source={d.source!r} does not use; "
                             f"use data.source in {list(sources)}.")


def _check_remedies(scenario: Scenario) -> None:
    if scenario.model.kind != "mlp":
        raise ValueError(f"kind='remedies' needs model.kind='mlp' (its arms change the width "
                         f"and the drop rate); got model.kind={scenario.model.kind!r}.")
    if scenario.data.source in ("preset", "real"):
        raise ValueError(f"kind='remedies' needs a generating data.source (regression, linear, "
                         f"classification) for its more-data arm; got "
                         f"data.source={scenario.data.source!r}, a fixed data set.")
    for field in REMEDY_SETTINGS:
        values = getattr(scenario.sweep, field)
        if len(values) != 1:
            raise ValueError(f"kind='remedies' takes one value in sweep.{field} (the "
                             f"remedy's setting); got sweep.{field}={values!r}.")
    if scenario.sweep.n_train[0] < scenario.data.n_train:
        raise ValueError(f"kind='remedies' adds data: sweep.n_train={scenario.sweep.n_train} "
                         f"must be at least data.n_train={scenario.data.n_train}.")


def _check_unused(scenario: Scenario) -> None:
    """Refuse a field the scenario would silently ignore: a remedy or a sweep that
    looks switched on but is not would draw a figure that claims what it did not do.
    Budget knobs (``BUDGET``) claim nothing and pass."""
    reads, capacity = SWEEPS[scenario.kind], scenario.sweep.capacity
    # one capacity value is not a sweep: it sizes the model (experiments.build_model)
    if "capacity" not in reads and len(capacity) > 1:
        raise ValueError(f"sweep.capacity={capacity!r} is not swept by kind={scenario.kind!r}: "
                         "only its largest value sizes the model; give one value, or set "
                         "model.hidden / model.max_degree / model.max_features.")
    for f in dataclasses.fields(SweepConfig):
        value = getattr(scenario.sweep, f.name)
        if f.name != "capacity" and isinstance(value, list) and value and f.name not in reads:
            raise ValueError(f"sweep.{f.name}={value!r} is not used by kind={scenario.kind!r}, "
                             f"which sweeps {', '.join(f'sweep.{r}' for r in reads) or 'nothing'}"
                             "; remove it.")
    if scenario.sweep.inits != 1 and scenario.kind != "bias_variance":
        raise ValueError(f"sweep.inits={scenario.sweep.inits} is used by "
                         "kind='bias_variance' only; remove it.")
    d = scenario.data
    m = scenario.model
    for name in _changed_fields(d, DataConfig(), "data"):
        # a polynomial maps data.domain onto its basis's interval, whatever the source
        if name not in SOURCE_FIELDS[d.source] and not (
                name == "domain" and m.kind == "polynomial"):
            readers = [src for src, names in SOURCE_FIELDS.items() if name in names]
            hint = next((f" or use data.{k}" for k, v in LABEL_NOISE.items()
                         if v == d.source and name in LABEL_NOISE), "")
            raise ValueError(f"data.{name}={getattr(d, name)!r} is not used by "
                             f"data.source={d.source!r} (only by "
                             f"{', '.join(map(repr, readers))}); remove it{hint}.")
    for name in _changed_fields(m, ModelConfig(), "model"):
        if name not in MODEL_FIELDS[m.kind]:
            raise ValueError(f"model.{name}={getattr(m, name)!r} is not used by "
                             f"model.kind={m.kind!r}; remove it.")
    if m.drop_rate and scenario.kind in ("dropout", "remedies"):
        raise ValueError(f"model.drop_rate={m.drop_rate!r} is replaced by sweep.drop_rate in "
                         f"kind={scenario.kind!r}; remove it.")
    if scenario.kind == "five_points":  # the lesson's two fits: data, seed and precision
        t = scenario.train
        ignored = [f"train.{n}" for n in _changed_fields(t, TrainConfig(), "train")
                   if n not in ("method", "precision")]
        ignored += [f"{section}.{n}" for section, value, default in (
            ("model", m, ModelConfig()), ("sweep", scenario.sweep, SweepConfig()),
            ("early_stopping", scenario.early_stopping, StopConfig()))
            for n in _changed_fields(value, default, section)]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} is not used by kind='five_points' (always a "
                             "least-squares line and a degree-6 polynomial); remove it.")
        return
    if scenario.train.method == "closed_form":
        t, default = scenario.train, TrainConfig()
        used = [f"train.{n}={getattr(t, n)!r}" for n in (*GRADIENT_ONLY, "loss")
                if getattr(t, n) != getattr(default, n)]
        if scenario.early_stopping.rule != "none":
            used.append(f"early_stopping.rule={scenario.early_stopping.rule!r}")
        if used:
            raise ValueError(f"{', '.join(used)} has no effect with "
                             "train.method='closed_form' (a solve takes train.l2 only); "
                             "use train.method='gradient'.")
        if scenario.kind == "double_descent" and t.l2:
            raise ValueError(f"train.l2={t.l2!r} is not used by kind='double_descent', whose "
                             "curves are min-norm (l2 = 0) and, with sweep.l2, ridge; "
                             "give the strengths in sweep.l2.")


def _changed_fields(config: Any, default: Any, section: str) -> list[str]:
    """The fields of a config section that differ from their defaults, budget knobs aside."""
    return [f.name for f in dataclasses.fields(config) if f.name not in BUDGET.get(section, ())
            and getattr(config, f.name) != getattr(default, f.name)]


_BARE_WORD = re.compile(r"[A-Za-z_][\w-]*")


def _parse_value(item: str, text: str) -> Any:
    """A ``--set`` value as TOML; a bare word (``sin``) is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        if _BARE_WORD.fullmatch(text):
            return text
        raise ValueError(f"--set {item!r}: {text!r} is not a TOML value ({e}); quote a "
                         "string ('a b'), write lists as [1, 2].") from None


def apply_overrides(table: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as TOML) to a raw table."""
    table = json.loads(json.dumps(table))  # deep copy of plain TOML data
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {item!r} must look like section.key=value.")
        *parents, leaf = path.strip().split(".")
        node = table
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section.")
        node[leaf] = _parse_value(item, text.strip())
    return table


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Scenario:
    """Read, override and validate a scenario file."""
    with open(path, "rb") as f:
        try:
            table = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from None
    return from_dict(apply_overrides(table, overrides))


def environment() -> dict[str, Any]:
    """Package versions, device and precision: what a result depends on."""
    versions = {}
    for pkg in ("overfit", "jax", "jaxlib", "optax", "numpy", "scikit-learn", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = jax.devices()[0]
    return {
        "versions": versions,
        "python": platform.python_version(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "n_devices": jax.device_count(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def fingerprint(scenario: Scenario) -> str:
    """Hash of what a result depends on: config, package versions, device, precision."""
    env = environment()
    payload = {"scenario": dataclasses.asdict(scenario), "versions": env["versions"],
               "device": env["device"], "x64": env["x64"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _finished(folder: Path) -> dict[str, Any] | None:
    """The metadata of a complete results folder, or None."""
    try:
        meta = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    files = ["results.csv", *meta.get("figures", [])]
    return meta if all((folder / f).is_file() for f in files) else None


def cached(scenario: Scenario, out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir/<name>/`` already holds this scenario's results, same fingerprint."""
    meta = _finished(Path(out_dir) / scenario.name)
    return meta is not None and meta.get("fingerprint") == fingerprint(scenario)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two config tables."""
    out = []
    for key, value in new.items():
        if isinstance(value, Mapping):
            out += _changed(old.get(key) or {}, value, f"{prefix}{key}.")
        elif old.get(key) != value:
            out.append(prefix + key)
    return out


def _difference(meta: dict[str, Any] | None, scenario: Scenario) -> str:
    """What makes existing results differ from a run of ``scenario`` now."""
    if meta is None:
        return "an incomplete or unreadable result"
    fields = _changed(meta.get("scenario", {}), dataclasses.asdict(scenario))
    if fields:
        return (f"results of a different config ({', '.join(fields[:5])} "
                f"{'differs' if len(fields) == 1 else 'differ'})")
    env, now = meta.get("environment", {}), environment()
    versions = [f"{pkg} {v} (now {now['versions'].get(pkg)})"
                for pkg, v in env.get("versions", {}).items() if now["versions"].get(pkg) != v]
    if versions:
        return f"results written by another version: {', '.join(versions)}"
    return (f"results from another device or precision ({env.get('device')}, "
            f"x64={env.get('x64')}; now {now['device']}, x64={now['x64']})")


def run(scenario: Scenario, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Run ``scenario`` and write ``out_dir/<name>/``: figures, results.csv, results.json.

    Returns the folder. Files appear only once the whole scenario has finished.
    If the folder already holds this scenario's results (same fingerprint) the
    run is skipped; if it holds anything else, ``force=True`` is needed to
    replace it.
    """
    from overfit.display import save_figure
    from overfit.experiments import EXPERIMENTS, use_x64

    out_dir = Path(out_dir)
    final = out_dir / scenario.name
    old = out_dir / f".{scenario.name}.old"
    if not final.exists() and _finished(old) is not None:
        old.rename(final)  # killed between the two renames below: the old results stand
    if final.exists() and not force:
        if cached(scenario, out_dir):
            return final
        raise ValueError(f"{final} holds {_difference(_finished(final), scenario)}; "
                         "pass --force (force=True) to replace it.")
    partial = out_dir / f".{scenario.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # finished chunks of the sweeps outlive a killed run (the partial folder does not)
    chunk_dir = out_dir / f".{scenario.name}.chunks"
    start = time.perf_counter()
    with CompileClock() as compiled, storing(chunk_dir) as stored:
        rows, figures = EXPERIMENTS[scenario.kind](scenario)
    for fname, figure in figures.items():
        save_figure(figure, partial / f"{fname}.png")
    (partial / "results.csv").write_text(_csv(rows))
    meta = {"scenario": dataclasses.asdict(scenario), "environment": environment(),
            "fingerprint": fingerprint(scenario),
            "wall_time_s": round(time.perf_counter() - start, 3),
            "compile_time_s": round(compiled.seconds, 3),
            # the fits' floating point (train.precision resolved for the method);
            # environment.x64 is JAX's global default, which the solves override
            "precision": "float64" if use_x64(scenario) else "float32",
            "chunks": stored.chunks,  # members and chunk size of every sweep, in call order
            "figures": sorted(f"{f}.png" for f in figures)}
    (partial / "results.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return final
