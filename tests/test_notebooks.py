"""Every notebook runs top to bottom (small sizes), is committed without outputs, and the
lesson's two levels of API give the same numbers.

The notebooks assert their own key numbers (gradient descent reaches (3, -2), the line's slope,
the bias-variance identities, ...), so executing them is a real test. They run in a kernel
started with this interpreter (``sys.executable``), whatever kernels the machine has installed,
with ``OVERFIT_QUICK=1`` selecting the small sizes of each notebook's parameter cell.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import overfit as of

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_frameworks", "02_overfitting", "03_detecting_and_stopping", "04_remedies",
            "05_bias_variance", "06_double_descent", "07_lab", "08_playground"]


def test_the_eight_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    """Outputs are stripped: no outputs, no execution counts, no widget state."""
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    assert "widgets" not in nb["metadata"], "saved widget state: clear it before committing"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {i} has outputs"
            assert cell["execution_count"] is None, f"cell {i} has an execution count"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "teaches" in "".join(first["source"])
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert 'QUICK = os.environ.get("OVERFIT_QUICK") == "1"' in code[0], "parameter cell first"
    last = "".join(nb["cells"][-1]["source"])
    assert "## What you saw" in last


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only kernel runs this interpreter's ipykernel."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    folder = tmp_path / "kernels" / "overfit-test"
    folder.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "overfit test kernel", "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="overfit-test", kernel_spec_manager=specs)


def _tiny_mnist(folder: Path, n_train: int = 300, n_test: int = 60) -> None:
    """Random 28 x 28 'digits' in MNIST's four IDX files (07_lab's MNIST cell reads them)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for what, values in (("images", rng.integers(0, 256, (n, 28, 28))),
                             ("labels", np.arange(n) % 10)):
            head = struct.pack(">BBBB", 0, 0, 0x08, values.ndim)
            head += struct.pack(f">{values.ndim}I", *values.shape)
            rank = values.ndim
            (folder / f"{split}-{what}-idx{rank}-ubyte").write_bytes(
                head + values.astype(np.uint8).tobytes())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("OVERFIT_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if path.stem == "08_playground":  # 18 networks x 600 epochs: run time, not compiles
        monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    if path.stem == "07_lab":
        _tiny_mnist(tmp_path)
        monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, km=_kernel_manager(tmp_path), timeout=600,
        resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails


# ---------------------------------------------------------- low level == high level


def test_hand_written_gradient_descent_equals_fit():
    """01_frameworks' claim: a hand-written JAX GD loop and ``of.fit`` with ``optax.sgd``
    give the same parameters and per-epoch losses on the lesson's linear-regression data."""
    data = of.regression(jax.random.key(0), target="line", n_train=120, n_val=40, n_test=200,
                         noise=0.5, x_dist="grid", domain=(0.0, 3.0))
    x, y = data.x_train[:, 0], data.y_train

    def loss(p, x, y):
        return 0.5 * jnp.mean((p["w"] * x + p["b"] - y) ** 2)

    @jax.jit
    def step(p):
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p, x, y))

    params, losses, val_losses = {"w": jnp.array(0.0), "b": jnp.array(0.0)}, [], []
    for _ in range(200):
        params = step(params)
        losses.append(loss(params, x, y))
        val_losses.append(loss(params, data.x_val[:, 0], data.y_val))
    res = of.fit(of.linear(1), data, key=jax.random.key(0), optimizer=optax.sgd(0.1), epochs=200)
    np.testing.assert_allclose(res.params["coef"], [params["w"], params["b"]], rtol=1e-5)
    np.testing.assert_allclose(res.history.train_loss, losses, rtol=1e-5)
    np.testing.assert_allclose(res.history.val_loss, val_losses, rtol=1e-5)
    # and both head for the least-squares line: GD contracts the error by the known factor
    phi = np.stack([np.asarray(x, float), np.ones(120)], axis=1)
    ols = np.linalg.lstsq(phi, np.asarray(y, float), rcond=None)[0]
    hessian = phi.T @ phi / 120
    contraction = np.max(np.abs(1 - 0.1 * np.linalg.eigvalsh(hessian))) ** 200
    assert np.linalg.norm(np.asarray(res.params["coef"]) - ols) <= (
        contraction * np.linalg.norm(ols) + 1e-4)


def test_hand_written_minibatch_sgd_with_fits_batch_order_equals_fit():
    """Minibatch SGD agrees too when the hand-written loop visits the batches in the same
    order: with ``batch_size`` dividing n and a one-member fit, replay the permutations."""
    data = of.regression(jax.random.key(0), target="line", n_train=120, n_val=40, n_test=10,
                         noise=0.5, x_dist="grid", domain=(0.0, 3.0))
    x, y, epochs, size = data.x_train[:, 0], data.y_train, 5, 20
    res = of.fit(of.linear(1), data, key=jax.random.key(3), optimizer=optax.sgd(0.1),
                 batch_size=size, epochs=epochs)
    # pins fit's epoch keys (train.py): fold_in(second half of the key, epoch) -> (perm, steps)
    _, k_train = jax.random.split(jax.random.key(3))
    coef = jnp.zeros(2)
    grad = jax.grad(lambda c, xb, yb: 0.5 * jnp.mean((c[0] * xb + c[1] - yb) ** 2))
    for e in range(epochs):
        k_perm, _ = jax.random.split(jax.random.fold_in(k_train, e))
        order = jax.random.permutation(k_perm, 120)
        for i in range(0, 120, size):
            batch = order[i : i + size]
            coef = coef - 0.1 * grad(coef, x[batch], y[batch])
    np.testing.assert_allclose(res.params["coef"], coef, rtol=1e-5, atol=1e-6)
