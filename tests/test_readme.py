"""The README's Python example runs as printed and shows what it says it shows."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_five_lines_draw_a_u_curve_over_degree():
    text = README.read_text()
    section = text.split("## Five lines of Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    labels = [line.get_label() for line in plt.gcf().axes[0].lines]
    train = np.asarray(scope["res"].history.train_metric[:, -1])
    val = np.asarray(scope["res"].history.val_metric[:, -1])
    best = int(np.argmin(val))
    assert {"train", "validation", f"best validation at {best}"} <= set(labels)
    # more capacity fits the training points better; the validation optimum is inside
    assert train[-1] < 0.5 * train[0] and train[8] < train[2]
    assert 2 <= best <= 12 and val[best] < 0.5 * val[0]
    plt.close("all")
