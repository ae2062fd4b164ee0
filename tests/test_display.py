"""Tests of overfit.display: the numbers a Display draws, and its shape checks.

No training here: every display is built from small hand-written arrays whose
means, spreads and optima are worked out by hand.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest

from overfit.display import ComparisonDisplay, CurveDisplay, FitDisplay, HistogramDisplay
from overfit.train import FitResult, History

NAN = np.nan


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_mean_and_std_leave_out_nan_repeats():
    # rows are x values, columns repeats; NaN = an epoch a stopped run never reached
    d = CurveDisplay([1, 2, 3], {"a": [[1.0, 3.0], [NAN, 5.0], [NAN, NAN]]})
    np.testing.assert_allclose(d.mean("a"), [2.0, 5.0, NAN])
    np.testing.assert_allclose(d.std("a"), [1.0, 0.0, NAN])
    mid, low, high = d.summary("a")
    np.testing.assert_allclose(low, [1.0, 5.0, NAN])
    np.testing.assert_allclose(high, [3.0, 5.0, NAN])


def test_inf_is_left_out_like_nan_in_both_centres():
    """[1, inf] had mean inf and median NaN; [inf, inf] a NaN mean: now both modes agree."""
    rows = [[1.0, np.inf], [np.inf, -np.inf], [2.0, 4.0]]
    for center in ("mean", "median"):
        mid = CurveDisplay([1, 2, 3], {"a": rows}, center=center).summary("a")[0]
        np.testing.assert_allclose(mid, [1.0, NAN, 3.0])


def test_median_band_is_the_interquartile_range():
    d = CurveDisplay([0, 1], {"a": [[1.0, 2.0, 3.0, 4.0, 100.0], [0.0, 0.0, 1.0, 1.0, 1.0]]},
                     center="median")
    mid, low, high = d.summary("a")
    np.testing.assert_allclose(mid, [3.0, 1.0])
    np.testing.assert_allclose(low, [2.0, 0.0])
    np.testing.assert_allclose(high, [4.0, 1.0])


def test_given_errors_are_the_band():
    d = CurveDisplay([0, 1], {"a": [1.0, 2.0]}, errors={"a": [0.1, 0.5]})
    _, low, high = d.summary("a")
    np.testing.assert_allclose(low, [0.9, 1.5])
    np.testing.assert_allclose(high, [1.1, 2.5])
    d.plot()
    assert "a" in d.bands_  # one repeat, but a band from the given half-widths


def test_best_marker_sits_on_the_curve_whatever_the_order_of_x():
    # unsorted x (e.g. a sweep listed as given): the optimum is x=2, value 0.1
    d = CurveDisplay([3, 1, 2], {"val": [0.5, 0.9, 0.1]}, best="val").plot()
    assert d.best_x() == 2.0
    assert tuple(d.best_line_.get_xdata()) == (2.0, 2.0)
    marker = [line for line in d.ax_.lines if line.get_marker() == "o"]
    assert len(marker) == 1
    assert tuple(marker[0].get_xdata()) == (2.0,)
    assert tuple(marker[0].get_ydata()) == (0.1,)
    # max mode picks the other end
    assert CurveDisplay([3, 1, 2], {"acc": [0.5, 0.9, 0.1]}, best="acc",
                        best_mode="max").best_x() == 1.0


def test_lines_and_bands_are_drawn_in_increasing_x():
    """Drawn in the given order, [3, 1, 2] zigzagged through values that do not exist."""
    d = CurveDisplay([3, 1, 2], {"v": [[0.5, 0.6], [0.9, 1.0], [0.1, 0.2]]}).plot()
    np.testing.assert_array_equal(d.lines_["v"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(d.lines_["v"].get_ydata(), [0.95, 0.15, 0.55])
    band = d.bands_["v"].get_paths()[0].vertices[:, 0]
    assert np.all(np.diff(band[1:4]) > 0)  # the lower edge runs left to right


@pytest.mark.parametrize("x, scale", [
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "linear"),          # even steps, ratio 10
    ([0.1 * i for i in range(1, 11)], "linear"),          # even in float rounding: was log
    ([1, 10, 100, 1000], "log"),                          # a geometric grid
    ([0, 1e-4, 1e-3, 1e-2, 0.1, 1], "symlog"),            # lambda = 0 included: was linear
    ([5, 10, 20, 50, 100, 200], "log"),                   # n_train sizes
])
def test_the_x_scale_follows_scikit_learns_gap_ratio_rule(x, scale):
    d = CurveDisplay(x, {"v": np.linspace(1, 2, len(x))}).plot()
    assert d.ax_.get_xscale() == scale


def test_a_log_y_axis_keeps_zero_and_negative_values():
    """A generalisation gap's quartile below 0 ran off a log axis without a word."""
    gap = [[0.3, 0.2, 0.25], [0.1, 0.05, 0.09], [0.02, -0.0125, 0.01], [0.0, 0.0, 0.0]]
    d = CurveDisplay([5, 10, 20, 40], {"gap": gap}, center="median").plot(logy=True)
    assert d.ax_.get_yscale() == "symlog"
    # linear down to the most negative value drawn: the lower quartile at x=20, -0.00125
    assert d.ax_.yaxis.get_transform().linthresh == pytest.approx(0.00125)
    zero = CurveDisplay([1, 2, 3], {"v": [0.0, 0.02, 0.5]}).plot(logy=True)
    assert zero.ax_.yaxis.get_transform().linthresh == pytest.approx(0.02)  # smallest > 0
    positive = CurveDisplay([1, 2], {"v": [0.5, 0.1]}).plot(logy=True)
    assert positive.ax_.get_yscale() == "log"


def test_a_dip_of_a_billionth_below_zero_opens_no_empty_decades():
    """The linear part of a symlog axis reached only the dip (1e-9): six empty decades
    took most of the learning-curve gap panel. It reaches a thousandth of the top now."""
    gap = [[1.5, 0.3, 2.0], [0.2, 0.1, 0.3], [0.004, -1e-9, -1e-9]]
    d = CurveDisplay([15, 50, 400], {"gap": gap}, center="median").plot(logy=True)
    # a thousandth of the largest value drawn: the upper quartile at x=15, 1.75
    assert d.ax_.yaxis.get_transform().linthresh == pytest.approx(1.75e-3)
    assert d.ax_.get_ylim()[0] == pytest.approx(-1.5e-9)


def _png(display) -> bytes:
    buffer = io.BytesIO()
    display.figure_.savefig(buffer, format="png")
    return buffer.getvalue()


@pytest.mark.parametrize("logy", [False, True])
def test_a_log_axis_with_nothing_finite_stays_linear_and_saves(logy):
    """Every run diverged: a log y axis over nothing raised inside savefig, after the
    scenario's numbers were computed and before they were written."""
    d = CurveDisplay([1, 2, 3], {"v": np.full((3, 2), NAN)}, note="2 of 2 runs diverged"
                     ).plot(logy=logy)
    assert d.ax_.get_yscale() == "linear"
    bars = ComparisonDisplay(["a", "b"], {"v": np.full((2, 2), NAN)}).plot(logy=logy)
    assert _png(d).startswith(b"\x89PNG") and _png(bars).startswith(b"\x89PNG")


def test_a_point_with_no_finite_neighbour_is_drawn_as_a_dot():
    """A line through one x (or between diverged points) draws nothing: the curve was
    in the legend and nowhere on the axes."""
    one = CurveDisplay([5], {"train": [[0.2, 0.25, 0.22]]}, center="median").plot()
    (dots,) = [c for c in one.ax_.containers]  # the errorbar: the dot and its quartiles
    np.testing.assert_allclose(dots.lines[0].get_xydata(), [[5.0, 0.22]])
    assert dots.lines[0].get_color() == one.lines_["train"].get_color()
    gaps = CurveDisplay([1, 2, 3, 4, 5], {"v": [NAN, 0.5, NAN, 0.6, 0.7]}).plot()
    (dots,) = gaps.ax_.containers
    np.testing.assert_allclose(dots.lines[0].get_xydata(), [[2.0, 0.5]])  # 4-5 is a line


def test_markers_are_grey_not_a_curves_colour():
    """The 4th curve and the first marker were both C3: a red threshold beside a red
    curve read as one of them."""
    curves = {f"c{i}": [1.0, 2.0] for i in range(5)}
    d = CurveDisplay([1, 2], curves, markers={"threshold": 1.5, "stop": 1.2}).plot()
    marks = [line for line in d.ax_.lines if line.get_label() in ("threshold", "stop")]
    assert [line.get_color() for line in marks] == ["0.35", "0.35"]
    assert len({str(line.get_linestyle()) for line in marks}) == 2
    colours = {line.get_color() for name, line in d.lines_.items()}
    assert "0.35" not in colours


def test_line_kw_may_rename_a_curve():
    d = CurveDisplay([1, 2], {"a": [1.0, 2.0]}).plot(line_kw={"label": "renamed", "lw": 3})
    assert d.lines_["a"].get_label() == "renamed" and d.lines_["a"].get_linewidth() == 3


def test_no_abscissae_is_refused_by_name():
    with pytest.raises(ValueError, match="x is empty"):
        CurveDisplay([], {"a": []})


def test_fit_display_frames_one_point_and_skips_nan():
    one = FitDisplay([0.5], [1.0], [], [], [0.0, 1.0], {"c": [0.0, 2.0]}).plot()
    low, high = one.ax_.get_ylim()
    assert (low, high) == pytest.approx((0.5, 1.5))  # the curve's middle is in view
    gap = FitDisplay([1, 2], [1.0, NAN], [1], [3.0], [0, 1, 2], {"c": [0, 1, 2]}).plot()
    assert gap.ax_.get_ylim() == pytest.approx((1.0 - 1.2, 3.0 + 1.2))


def test_all_nan_samples_make_an_empty_histogram_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = HistogramDisplay({"stop": [NAN] * 3, "best": [2, 3, 3]}).plot()
    assert sum(p.get_height() for p in d.patches_["stop"]) == 0
    assert sum(p.get_height() for p in d.patches_["best"]) == 3


def test_importing_the_displays_leaves_the_users_backend_alone():
    """display.py switched to Agg whenever $DISPLAY was unset (macOS, Windows): a desktop
    user's plt.show() went silent."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    code = ("import matplotlib; matplotlib.use('svg'); import overfit as of; of.CurveDisplay; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "svg"


def test_every_display_is_a_lazy_attribute_of_the_package():
    import overfit as of
    from overfit import display

    for name in ("ComparisonDisplay", "CurveDisplay", "FitDisplay", "HistogramDisplay",
                 "divergence_note", "panels", "save_figure"):
        assert getattr(of, name) is getattr(display, name) and name in of.__all__


def test_a_marker_without_a_position_is_left_out():
    """The best epoch of a run where every member diverged is None: it crashed the plot."""
    d = CurveDisplay([1, 2], {"a": [NAN, NAN]}, markers={"m": None, "k": [1.5, NAN]}).plot()
    marks = [line for line in d.ax_.lines if line.get_color() == "0.35"]
    assert [tuple(line.get_xdata()) for line in marks] == [(1.5, 1.5)]


def test_integer_samples_get_bins_of_equally_many_integers():
    """Twenty equal-width bins over 1..30 held 2 and 1 integers in turn: a flat
    distribution drew as a comb."""
    d = HistogramDisplay({"epoch": np.repeat(np.arange(1, 31), 10)}).plot(bins=20)
    heights = [p.get_height() for p in d.patches_["epoch"]]
    assert heights == [20] * 15  # step 2: every bin holds two epochs, ten times each
    edges = [p.get_x() for p in d.patches_["epoch"]]
    np.testing.assert_allclose(edges, 0.5 + 2 * np.arange(15))
    few = HistogramDisplay({"e": [3, 3, 4, 7]}).plot()
    assert [p.get_height() for p in few.patches_["e"]] == [2, 1, 0, 0, 1]


def test_curves_of_the_wrong_shape_are_refused_not_scrambled():
    x = np.arange(4)
    with pytest.raises(ValueError, match=r"curves\['train'\] has shape \(3, 4\); allowed: "
                                         r"\(4,\) or \(4, n_repeats\).*transpose"):
        CurveDisplay(x, {"train": np.zeros((3, 4))})  # members x epochs, not epochs x members
    with pytest.raises(ValueError, match=r"curves\['a'\] has shape \(5,\)"):
        CurveDisplay(x, {"a": np.zeros(5)})
    with pytest.raises(ValueError, match=r"errors\['a'\] has shape \(4, 2\); allowed: \(4,\)"):
        CurveDisplay(x, {"a": np.zeros(4)}, errors={"a": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="errors key='vall' is not allowed"):
        CurveDisplay(x, {"val": np.zeros(4)}, errors={"vall": np.zeros(4)})
    with pytest.raises(ValueError, match="best='vall' is not allowed.*Did you mean 'val'"):
        CurveDisplay(x, {"val": np.zeros(4)}, best="vall")
    with pytest.raises(ValueError, match="best_mode='lowest'.*'min', 'max'"):
        CurveDisplay(x, {"val": np.zeros(4)}, best="val", best_mode="lowest")
    with pytest.raises(ValueError, match="center='mode'.*'mean', 'median'"):
        CurveDisplay(x, {"val": np.zeros(4)}, center="mode")
    with pytest.raises(ValueError, match=r"values\['mse'\] has shape \(2, 3\); allowed: \(3,\)"):
        ComparisonDisplay(["a", "b", "c"], {"mse": np.zeros((2, 3))})


def test_comparison_bars_are_means_with_std_error_bars():
    d = ComparisonDisplay(["small", "large"], {"mse": [[1.0, 3.0], [2.0, NAN]]}).plot()
    heights = [bar.get_height() for bar in d.bars_["mse"]]
    np.testing.assert_allclose(heights, [2.0, 2.0])
    # the error bar's segments span mean -/+ std: [1, 3] and [2, 2]
    segments = d.bars_["mse"].errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segments], [[1.0, 3.0], [2.0, 2.0]])
    # on a log axis an error bar reaching below 0 used to vanish: symlog keeps it
    spread = [[0.1, 0.1, 5.0], [1.0, 1.2, 1.1]]  # mean - std < 0 for the first bar
    wide = ComparisonDisplay(["a", "b"], {"mse": spread}).plot(logy=True)
    assert wide.ax_.get_yscale() == "symlog"
    assert ComparisonDisplay(["a"], {"mse": [[1.0, 1.2]]}).plot(logy=True).ax_.get_yscale() == "log"


def test_from_fit_takes_members_as_repeats_and_leaves_out_diverged_ones():
    # 3 members, 4 evaluations every 2 epochs; member 2 diverged
    train = np.array([[4.0, 3.0, 2.0, 1.0], [6.0, 5.0, 4.0, 3.0], [9.0, NAN, NAN, NAN]])
    val = np.array([[5.0, 4.0, 4.5, 6.0], [7.0, 5.0, 6.0, 8.0], [9.0, NAN, NAN, NAN]])
    history = History(train, val, 2 * train, 2 * val)
    m = np.zeros(3)
    result = FitResult({}, {}, history, m, m, m, m, np.array([-1, -1, 1]), m, "mse", 2)
    d = CurveDisplay.from_fit(result)
    np.testing.assert_allclose(d.x, [2, 4, 6, 8])
    np.testing.assert_allclose(d.mean("train"), [5.0, 4.0, 3.0, 2.0])
    np.testing.assert_allclose(d.mean("validation"), [6.0, 4.5, 5.25, 7.0])
    assert d.best_x() == 4.0  # the lesson's "stop here": the validation minimum
    assert d.note == "1 of 3 runs diverged (NaN/inf loss): left out"
    metric = CurveDisplay.from_fit(result, quantity="metric")
    np.testing.assert_allclose(metric.mean("validation"), [12.0, 9.0, 10.5, 14.0])
    assert metric.ylabel == "mse"


def test_results_and_data_print_their_shapes_not_their_numbers():
    from overfit.data import Dataset

    z = np.zeros
    data = Dataset(z((30, 1)), z(30), z(30), z((5, 1)), z(5), z(5), z((7, 1)), z(7), z(7))
    assert repr(data) == "Dataset('regression', x_train=(30, 1), x_val=(5, 1), x_test=(7, 1))"
    history = History(*(z((3, 4)),) * 4)
    result = FitResult({"coef": z((3, 6))}, {}, history, *(z(3),) * 6, "mse", 5)
    assert repr(result) == ("FitResult(members=(3,), epochs=20, eval_every=5, metric='mse', "
                            "params={'coef': (3, 6)})")
    # a tree.map to shapes (a common notebook idiom) prints every field as it is
    import jax

    shapes = jax.tree.map(np.shape, data)
    assert repr(shapes).startswith("Dataset(x_train=(30, 1), y_train=(30,), f_train=(30,)")
    assert "history=History(train_loss=(3, 4)" in repr(jax.tree.map(np.shape, result))


def test_panels_gives_n_axes_and_refuses_none():
    from overfit.display import panels

    fig, axes = panels(4, title="t")
    assert axes.shape == (4,) and sum(ax.get_visible() for ax in fig.axes) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match=r"n=0 is out of range"):  # was ZeroDivisionError
        panels(0)
