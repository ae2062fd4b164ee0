"""Display objects for the classic curves (scikit-learn's Display pattern).

Compute once, restyle many times: ``__init__`` stores data, ``plot(ax=None)``
draws, stores its artists (``ax_``, ``figure_``, ``lines_``, ``bands_``) and
returns ``self``; ``from_*`` constructors compute. This is the only module
that imports matplotlib, and nothing here calls ``show()``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from overfit._checks import check_choice, check_int
from overfit.train import FitResult


def _axes(ax: plt.Axes | None) -> plt.Axes:
    return plt.subplots(figsize=(5.5, 4))[1] if ax is None else ax


def _finish(display: Any, ax: plt.Axes, *, xlabel: str = "", ylabel: str = "",
            title: str | None = None, legend: bool = True) -> Any:
    """Label the axes, add the legend, store ``ax_``/``figure_``; return the display."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(frameon=False, fontsize="small")
    display.ax_, display.figure_ = ax, ax.figure
    return display


def _columns(field: str, values: Any, n_x: int) -> np.ndarray:
    """``values`` as ``(n_x, n_repeats)``: one row per x, repeats as columns."""
    values = np.asarray(values, float)
    if values.shape == (n_x,) or (values.ndim == 2 and values.shape[0] == n_x):
        # inf (a diverged loss) has no place on an axis: left out like NaN, so the mean
        # and the median modes agree
        return np.where(np.isfinite(values), values, np.nan).reshape(n_x, -1)
    hint = (" (repeats as rows? pass its transpose)" if values.ndim == 2
            and values.shape[1] == n_x else "")
    raise ValueError(f"{field} has shape {values.shape}; allowed: ({n_x},) or ({n_x}, "
                     f"n_repeats), one row per x{hint}.")


def _x_scale(x: np.ndarray, log: bool | None) -> str:
    """scikit-learn's rule for ``log=None``: a log axis when the largest gap between
    sorted x values is over 5 times the smallest (a geometric grid), ``"symlog"``
    when x reaches 0 or below (lambda = 0 in a grid of penalties)."""
    x = np.unique(np.asarray(x, float)[np.isfinite(x)])
    if log is None:
        gaps = np.diff(x)
        log = gaps.size > 0 and gaps.max() / gaps.min() > 5
    if not log:
        return "linear"
    return "symlog" if x.size and x.min() <= 0 else "log"


def _set_log(ax: plt.Axes, axis: str, values: np.ndarray) -> None:
    """A log scale on ``axis``, or symlog when some values are 0 or negative (a log
    scale would drop them without a word). Its linear part reaches the most negative
    value (a quartile of a gap dipping below 0 is noise around 0, not decades of
    it), or the smallest positive value when none is negative, and at least a
    thousandth of the largest magnitude (a dip of 1e-9 would otherwise open six
    empty decades). With no finite value at all the axis stays linear: a log
    axis with nothing on it cannot be drawn (every run diverged)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return
    setter = ax.set_xscale if axis == "x" else ax.set_yscale
    if finite.min() > 0:
        setter("log")
        return
    positive = finite[finite > 0]
    dip = -finite.min() if finite.min() < 0 else 0.0
    reach = dip or (positive.min() if positive.size else 1.0)
    setter("symlog", linthresh=float(max(reach, 1e-3 * np.abs(finite).max())))
    if dip:  # autoscaling pads symlog by whole decades of nothing
        (ax.set_xlim if axis == "x" else ax.set_ylim)(-1.5 * dip, None)


def _isolated(values: np.ndarray) -> np.ndarray:
    """Finite entries with no finite neighbour: a line through them draws nothing."""
    finite = np.isfinite(values)
    before = np.concatenate([[False], finite[:-1]])
    after = np.concatenate([finite[1:], [False]])
    return finite & ~before & ~after


# vertical markers (thresholds, stop epochs) in greys and dash patterns: the curves use
# the colour cycle, and a red threshold beside a red curve read as one of them
_MARKER_STYLES = (":", "-.", (0, (5, 2, 1, 2, 1, 2)), (0, (1, 3)))


class CurveDisplay:
    """Named curves over a shared x axis, mean +/- 1 std across repeats.

    Args:
        x: abscissae, ``(n_x,)`` (epochs, degree, lambda, n_train, ...).
        curves: name -> values ``(n_x,)`` or ``(n_x, n_repeats)``; NaN and inf
            entries (epochs never run, a diverged loss) are left out of the
            centre and band.
        xlabel, ylabel, title: labels.
        best: name of the curve whose optimum is marked, or None.
        best_mode: ``"min"`` or ``"max"``.
        markers: extra vertical lines, label -> x position(s).
        center: ``"mean"`` with a +/- 1 std band, or ``"median"`` with an
            interquartile band (for heavy-tailed errors, e.g. past the
            interpolation threshold, where a few draws dominate the mean).
        errors: name -> ``(n_x,)`` half-widths (e.g. standard errors) drawn as
            the band of a curve given as ``(n_x,)``, instead of a spread.
        note: a line written in the lower-left corner, e.g. which runs were
            left out because they diverged.
    """

    def __init__(
        self,
        x: Sequence[float],
        curves: Mapping[str, Any],
        *,
        xlabel: str = "",
        ylabel: str = "",
        title: str | None = None,
        best: str | None = None,
        best_mode: str = "min",
        markers: Mapping[str, Any] | None = None,
        center: str = "mean",
        errors: Mapping[str, Any] | None = None,
        note: str | None = None,
    ):
        self.center = check_choice("center", center, ("mean", "median"))
        self.best_mode = check_choice("best_mode", best_mode, ("min", "max"))
        self.x = np.asarray(x, float).reshape(-1)
        n_x = self.x.size
        if n_x == 0:
            raise ValueError("x is empty; allowed: one or more abscissae (an epoch, a degree).")
        self.curves = {k: _columns(f"curves[{k!r}]", v, n_x) for k, v in curves.items()}
        self.errors = {k: np.asarray(v, float) for k, v in (errors or {}).items()}
        for k, v in self.errors.items():
            check_choice("errors key", k, self.curves)
            if v.shape != (n_x,):
                raise ValueError(f"errors[{k!r}] has shape {v.shape}; allowed: ({n_x},), "
                                 "one half-width per x.")
        self.xlabel, self.ylabel, self.title = xlabel, ylabel, title
        self.best = None if best is None else check_choice("best", best, self.curves)
        self.markers = dict(markers or {})
        self.note = note

    def mean(self, name: str) -> np.ndarray:
        """Mean over repeats, ``(n_x,)``; NaN where no repeat has a value."""
        values = self.curves[name]
        count = np.sum(np.isfinite(values), axis=1)
        total = np.nansum(values, axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def std(self, name: str) -> np.ndarray:
        """Standard deviation over repeats (ddof=0), ``(n_x,)``; NaN where no repeat has a value."""
        values = self.curves[name]
        centred = values - self.mean(name)[:, None]
        count = np.sum(np.isfinite(values), axis=1)
        return np.where(count > 0, np.sqrt(np.nansum(centred**2, axis=1) / np.maximum(count, 1)),
                        np.nan)

    def summary(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(centre, low, high)`` of a curve, each ``(n_x,)``, NaNs ignored."""
        values = self.curves[name]
        if name in self.errors:
            mid = self.mean(name)
            return mid, mid - self.errors[name], mid + self.errors[name]
        if self.center == "median":
            with warnings.catch_warnings():  # an all-NaN x (every run diverged) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                low, mid, high = np.nanpercentile(values, [25, 50, 75], axis=1)
            return mid, low, high
        mean, std = self.mean(name), self.std(name)
        return mean, mean - std, mean + std

    def _best_index(self) -> int | None:
        if self.best is None:
            return None
        mean = self.summary(self.best)[0]
        if not np.any(np.isfinite(mean)):
            return None
        return int(np.nanargmin(mean) if self.best_mode == "min" else np.nanargmax(mean))

    def best_x(self) -> float | None:
        """x at the optimum of the ``best`` curve's centre line, or None."""
        i = self._best_index()
        return None if i is None else float(self.x[i])

    def plot(
        self,
        ax: plt.Axes | None = None,
        *,
        logx: bool | None = None,
        logy: bool = False,
        band: bool = True,
        line_kw: Mapping[str, Any] | None = None,
    ) -> CurveDisplay:
        """Draw the curves, in increasing x whatever the given order.

        ``logx=None`` follows scikit-learn (log for a geometric grid, symlog when x
        reaches 0). ``logy`` turns into symlog when a drawn value is 0 or negative
        (a gap, a quartile), which a log axis would silently drop.
        """
        ax = _axes(ax)
        self.lines_, self.bands_ = {}, {}
        order = np.argsort(self.x, kind="stable")
        x, drawn = self.x[order], []
        for name in self.curves:
            mid, low, high = (a[order] for a in self.summary(name))
            (line,) = ax.plot(x, mid, **{"label": name, **dict(line_kw or {})})
            self.lines_[name] = line
            drawn.append(mid)
            spread = band and (self.curves[name].shape[1] > 1 or name in self.errors)
            if spread:
                self.bands_[name] = ax.fill_between(
                    x, low, high, alpha=0.25, color=line.get_color(), lw=0
                )
                drawn += [low, high]
            alone = _isolated(mid)
            if alone.any():  # one x, or a point between diverged ones: a dot, not nothing
                yerr = np.stack([mid - low, high - mid])[:, alone] if spread else None
                ax.errorbar(x[alone], mid[alone], yerr=yerr, fmt="o", ms=4, capsize=2,
                            color=line.get_color())
        self.best_line_ = None
        i = self._best_index()
        if i is not None:
            best, value = self.x[i], self.summary(self.best)[0][i]
            self.best_line_ = ax.axvline(best, color="k", ls="--", lw=1,
                                         label=f"best {self.best} at {best:g}")
            ax.plot([best], [value], "o", color="k", ms=5)
        for i, (label, where) in enumerate(self.markers.items()):
            # a marker with no position (the best epoch when every run diverged) is left out
            spots = [float(v) for v in np.atleast_1d(np.asarray(where, dtype=object))
                     if v is not None and np.isfinite(float(v))]
            for j, xv in enumerate(spots):
                ax.axvline(xv, color="0.35", ls=_MARKER_STYLES[i % len(_MARKER_STYLES)], lw=1.2,
                           label=label if j == 0 else None)
        scale = _x_scale(self.x, logx)
        if scale == "symlog":
            _set_log(ax, "x", self.x)
        elif scale == "log":
            ax.set_xscale("log")
            # labelled minor ticks (2x10^1, 3x10^1, ...) collide: label 1-2-5 steps
            # on short ranges (n_train, widths), decades on long ones (lambda)
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if np.log10(np.nanmax(self.x) / np.nanmin(self.x)) <= 3:
                ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        if logy:
            _set_log(ax, "y", np.concatenate(drawn) if drawn else np.zeros(0))
        if self.note:
            ax.text(0.01, 0.01, self.note, transform=ax.transAxes, fontsize="small",
                    color="C3", va="bottom")
        return _finish(self, ax, xlabel=self.xlabel, ylabel=self.ylabel, title=self.title)

    @classmethod
    def from_fit(cls, result: FitResult, *, quantity: str = "loss", **kwargs: Any) -> CurveDisplay:
        """Train vs validation curves per epoch, members as repeats.

        ``result`` may carry any leading member axes; ``quantity`` is
        ``"loss"`` or ``"metric"``. The validation optimum is marked (minimum
        loss or MSE, maximum accuracy): the lesson's "stop here". Members whose
        loss diverged are left out, and a note says how many.
        """
        if quantity not in ("loss", "metric"):
            raise ValueError(f"quantity={quantity!r}; choose 'loss' or 'metric'.")
        h = result.history
        train, val = (h.train_loss, h.val_loss) if quantity == "loss" else (
            h.train_metric, h.val_metric)
        diverged = np.asarray(result.diverged_epoch).reshape(-1) >= 0
        as_cols = lambda a: np.where(  # noqa: E731
            diverged, np.nan, np.asarray(a).reshape(-1, a.shape[-1]).T)
        kwargs.setdefault("note", divergence_note(diverged))
        label = "loss" if quantity == "loss" else result.metric
        kwargs.setdefault("xlabel", "epoch")
        kwargs.setdefault("ylabel", label)
        kwargs.setdefault("best", "validation")
        kwargs.setdefault("best_mode", "max" if label == "accuracy" else "min")
        return cls(np.asarray(result.epochs), {"train": as_cols(train), "validation": as_cols(val)},
                   **kwargs)


def divergence_note(diverged: Any) -> str | None:
    """``"k of M runs diverged (NaN/inf loss): left out"``, or None when none did."""
    diverged = np.asarray(diverged, bool).reshape(-1)
    k = int(diverged.sum())
    return f"{k} of {diverged.size} runs diverged (NaN/inf loss): left out" if k else None


class FitDisplay:
    """Training / validation points with fitted curves over a 1-D input grid.

    Args:
        x_train, y_train, x_val, y_val: the points, ``(n,)`` each.
        grid: input grid ``(n_grid,)``; curves: name -> predictions ``(n_grid,)``.
        truth: optional noiseless function on the grid, ``(n_grid,)``.
    """

    def __init__(self, x_train, y_train, x_val, y_val, grid, curves: Mapping[str, Any], *,
                 truth=None, title: str | None = None):
        self.x_train, self.y_train = np.ravel(x_train), np.ravel(y_train)
        self.x_val, self.y_val = np.ravel(x_val), np.ravel(y_val)
        self.grid = np.ravel(grid)
        self.curves = {k: np.ravel(v) for k, v in curves.items()}
        self.truth = None if truth is None else np.ravel(truth)
        self.title = title

    def plot(self, ax: plt.Axes | None = None, *, ylim: tuple[float, float] | None = None
             ) -> FitDisplay:
        """Draw points, curves and truth; clip the y range to the data's neighbourhood."""
        ax = _axes(ax)
        self.lines_ = {}
        if self.truth is not None:
            self.lines_["truth"] = ax.plot(self.grid, self.truth, color="0.6", ls="--",
                                           label="truth")[0]
        for name, values in self.curves.items():
            self.lines_[name] = ax.plot(self.grid, values, label=name)[0]
        self.train_points_ = ax.scatter(self.x_train, self.y_train, color="k", zorder=3,
                                        label="train")
        self.val_points_ = ax.scatter(self.x_val, self.y_val, facecolor="none", edgecolor="C3",
                                      zorder=3, s=50, label="validation")
        ys = np.concatenate([self.y_train, self.y_val])
        ys = ys[np.isfinite(ys)]
        if ylim is None and ys.size:
            # one point (or equal ones) still gets a window the curves can be seen in
            pad = 0.6 * np.ptp(ys) if np.ptp(ys) > 0 else 0.5 * max(abs(ys[0]), 1.0)
            ylim = (ys.min() - pad, ys.max() + pad)
        if ylim is not None:
            ax.set_ylim(*ylim)
        return _finish(self, ax, xlabel="x", ylabel="y", title=self.title)


class ComparisonDisplay:
    """Grouped bars: one group per setting, one bar per measured quantity.

    Args:
        names: setting names, ``(n_settings,)``.
        values: quantity -> ``(n_settings, n_repeats)``; bars show the mean,
            error bars +/- 1 std across repeats.
    """

    def __init__(self, names: Sequence[str], values: Mapping[str, Any], *, ylabel: str = "",
                 title: str | None = None):
        self.names = list(names)
        self.values = {k: _columns(f"values[{k!r}]", v, len(self.names))
                       for k, v in values.items()}
        self.ylabel, self.title = ylabel, title

    def plot(self, ax: plt.Axes | None = None, *, logy: bool = False) -> ComparisonDisplay:
        """Draw the bars; returns self with ``bars_`` (quantity -> BarContainer)."""
        ax = _axes(ax)
        width = 0.8 / max(len(self.values), 1)
        pos = np.arange(len(self.names))
        self.bars_, drawn = {}, []
        for i, (label, v) in enumerate(self.values.items()):
            with warnings.catch_warnings():  # a setting whose every run diverged stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(v, axis=1), np.nanstd(v, axis=1)
            self.bars_[label] = ax.bar(pos + (i - (len(self.values) - 1) / 2) * width,
                                       mean, width, yerr=std, capsize=3, label=label)
            drawn += [mean - std, mean + std]
        ax.set_xticks(pos, self.names, rotation=20, ha="right")
        if logy:  # symlog where an error bar reaches 0 or below, as CurveDisplay
            _set_log(ax, "y", np.concatenate(drawn) if drawn else np.zeros(0))
        # one quantity is named by the axis; a legend over tall bars only hid them
        if len(self.values) > 1:
            ax.legend(fontsize="small", framealpha=0.85)
        spread = "mean, +/- 1 std"
        ylabel = (f"{self.ylabel[:-1]}; {spread})" if self.ylabel.endswith(")")
                  else f"{self.ylabel} ({spread})" if self.ylabel else spread)
        return _finish(self, ax, ylabel=ylabel, title=self.title, legend=False)


class HistogramDisplay:
    """Distributions of samples (e.g. stop epochs across seeds), on shared bins that
    hold the same number of whole values each when every sample is a whole number."""

    def __init__(self, samples: Mapping[str, Any], *, xlabel: str = "", title: str | None = None):
        self.samples = {k: np.ravel(np.asarray(v, float)) for k, v in samples.items()}
        # NaN (a diverged member's epoch) has no bin: left out
        self.samples = {k: v[np.isfinite(v)] for k, v in self.samples.items()}
        self.xlabel, self.title = xlabel, title

    def plot(self, ax: plt.Axes | None = None, *, bins: int = 20) -> HistogramDisplay:
        """Overlaid histograms on shared bins; returns self with ``patches_``."""
        ax = _axes(ax)
        every = np.concatenate([np.zeros(0), *self.samples.values()])
        if every.size and np.all(every == np.round(every)):
            # equal-width bins off the integers would hold 1 and 2 values in turn: a
            # flat distribution drawn as a comb
            lo, hi = every.min(), every.max()
            step = max(1, int(np.ceil((hi - lo + 1) / bins)))
            edges = lo - 0.5 + step * np.arange(int(np.ceil((hi - lo + 1) / step)) + 1)
        else:
            edges = np.histogram_bin_edges(every, bins=bins)
        self.patches_ = {k: ax.hist(v, bins=edges, alpha=0.6, label=k)[2]
                         for k, v in self.samples.items()}
        return _finish(self, ax, xlabel=self.xlabel, ylabel="count", title=self.title)


def panels(n: int, *, ncols: int | None = None, size: tuple[float, float] = (5.0, 4.0),
           title: str | None = None, sharey: bool = False) -> tuple[plt.Figure, np.ndarray]:
    """A figure of ``size`` (inches) per panel with ``n`` axes in a grid.

    ``ncols`` defaults to ``min(n, 3)``; ``title`` goes above the grid; ``sharey``
    shares the y axes. Returns ``(figure, axes)``, the axes a 1-D array of ``n``.
    """
    n = check_int("n", n, lo=1)
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             sharey=sharey, squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig, axes.flat[:n]


def save_figure(figure: plt.Figure, path: str | os.PathLike) -> None:
    """Write a PNG atomically (temporary file, then rename) and close the figure."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png.part")
    try:
        with os.fdopen(fd, "wb") as f:
            figure.savefig(f, format="png", dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a figure is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(figure)
