"""The README's Python example runs as printed and shows what it says it shows."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _run_example(heading: str) -> dict:
    """Execute the first Python block after ``heading``; returns its global names."""
    section = README.read_text().split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    return scope


def test_the_five_lines_draw_a_u_curve_over_degree():
    scope = _run_example("## Five lines of Python")
    labels = [line.get_label() for line in plt.gcf().axes[0].lines]
    train = np.asarray(scope["res"].history.train_metric[:, -1])
    val = np.asarray(scope["res"].history.val_metric[:, -1])
    best = int(np.argmin(val))
    assert {"train", "validation", f"best validation at {best}"} <= set(labels)
    # more capacity fits the training points better; the validation optimum is inside
    assert train[-1] < 0.5 * train[0] and train[8] < train[2]
    assert 2 <= best <= 12 and val[best] < 0.5 * val[0]
    plt.close("all")


def test_the_bias_variance_example_shows_the_trade_off_it_prints():
    scope = _run_example("## Bias and variance in one call")
    got = {d: {k: float(t.value) for k, t in terms.items()} for d, terms in scope["terms"].items()}
    printed = {1: (0.175, 0.011), 4: (0.022, 0.011), 8: (0.035, 0.154)}
    for degree, (bias2, variance) in printed.items():
        t = got[degree]
        assert abs(t["bias2"] - bias2) < 1e-3 and abs(t["variance"] - variance) < 1e-3
        assert abs(t["noise"] - 0.09) < 1e-6
        assert abs(t["loss"] - (t["bias2"] + t["variance"] + 0.09)) < 1e-5
