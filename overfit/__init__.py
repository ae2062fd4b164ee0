"""overfit: see overfitting and the bias-variance trade-off, thousands of models at a time.

The flat public API. Submodules, one job each: ``data`` (samplers with the
truth kept), ``models`` (``(init, apply)`` pairs of varying capacity), ``solve``
(closed-form fits), ``train`` (the fused training loop), ``losses`` (per-example
losses by name), ``activations`` (by name, with their slopes), ``kernels`` (an
MLP's gradient as one GPU kernel per model), ``early_stopping``, ``sweep``
(grids), ``chunks`` (members in memory-sized chunks across devices, stored for
resume), ``clock`` (compile time), ``decompose`` (bias-variance terms), ``bootstrap``
(mlxtend's bootstrap decomposition, every round in one call),
``theory`` (analytic risk curves), ``display`` (plots), ``scenario`` (TOML
runs), ``idx`` (MNIST's IDX files from a local folder).
"""

from overfit import decompose, theory
from overfit.bootstrap import Bootstrap, bootstrap_bias_variance
from overfit.chunks import run_chunks, storing
from overfit.clock import CompileClock
from overfit.data import (
    REAL_DATASETS,
    SHAPES,
    TARGETS,
    Dataset,
    bootstrap_indices,
    classification,
    make_classification_preset,
    real,
    regression,
    resample,
    sphere,
    subsample,
)
from overfit.data import (
    linear as linear_data,
)
from overfit.decompose import Term
from overfit.early_stopping import EarlyStopping, StopState, never, patience, prechelt
from overfit.idx import load_mnist_arrays, mnist, read_idx
from overfit.models import Model, dropout, legendre, linear, mlp, polynomial, random_features
from overfit.solve import fit_linear, solve
from overfit.sweep import fast_compile_options, grid, map_members, take, unflatten
from overfit.train import FitResult, History, evaluate, fit, objective

__version__ = "0.1.0"

__all__ = [
    "ComparisonDisplay", "CurveDisplay", "FitDisplay", "HistogramDisplay", "divergence_note",
    "panels", "save_figure",
    "REAL_DATASETS", "SHAPES", "TARGETS", "Dataset", "bootstrap_indices", "classification",
    "linear_data", "make_classification_preset", "real", "regression", "resample", "sphere",
    "subsample",
    "load_mnist_arrays", "mnist", "read_idx",
    "EarlyStopping", "StopState", "never", "patience", "prechelt",
    "Model", "dropout", "legendre", "linear", "mlp", "polynomial", "random_features",
    "fit_linear", "solve", "grid", "fast_compile_options", "map_members", "take", "unflatten",
    "run_chunks", "storing", "CompileClock",
    "History", "FitResult", "evaluate", "fit", "objective",
    "decompose", "theory", "Term", "Bootstrap", "bootstrap_bias_variance",
]

_PLOTTING = ("ComparisonDisplay", "CurveDisplay", "FitDisplay", "HistogramDisplay",
             "divergence_note", "panels", "save_figure")


def __getattr__(name: str):
    # matplotlib loads only when a Display is first asked for
    if name in _PLOTTING:
        from overfit import display

        return getattr(display, name)
    raise AttributeError(f"module 'overfit' has no attribute {name!r}")
