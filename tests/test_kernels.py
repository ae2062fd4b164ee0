"""The fused MLP gradient kernel (overfit/kernels.py) computes autodiff's numbers.

Off a GPU the kernel runs in Pallas' interpreter; on a GPU (benchmarks/gpu_check.py
runs this file there) the same tests run the compiled Triton kernel.
"""

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from overfit import classification, kernels, mlp, models, polynomial, regression
from overfit.activations import ACTIVATIONS, ZERO_AT_ZERO
from overfit.kernels import fits_on_chip, mlp_mse_grad
from overfit.train import fit

ON_GPU = jax.default_backend() == "gpu"


@pytest.fixture
def kernel_mlp(monkeypatch):
    """``(mlp, traced)``: ``mlp`` builds models whose ``mse_grad`` runs the kernel on this
    backend (interpreted off a GPU); ``traced`` grows by one each time a kernel is traced,
    so a test can tell the kernel from ``mse_grad``'s autodiff fallback."""
    traced = []

    def counting(*args, **kwargs):
        traced.append(1)
        return fused(*args, **kwargs)

    fused = kernels._fused
    monkeypatch.setattr(kernels, "_fused", counting)
    if not ON_GPU:
        monkeypatch.setattr(models, "mlp_mse_grad", functools.partial(mlp_mse_grad,
                                                                       interpret=True))
    return mlp, traced


def autodiff(model, params, state, x, y):
    def loss(p):
        out = model.apply(p, state, x)
        return jnp.mean(0.5 * (out - y) ** 2), out

    return jax.grad(loss, has_aux=True)(params)


def relative(got, want):
    return max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)), got, want)))


@pytest.mark.parametrize("n_in, hidden, activation, n, width", [
    (1, (64, 64), "tanh", 64, None),  # the GPU target's model
    (3, (16, 32), "relu", 10, 20),  # points padded to 16, units masked to 20
    (2, (32,), "sigmoid", 33, None),  # points padded to 64
    (1, (16, 16, 16), "linear", 5, None),
    # dead units in every position: first and last layer (masked on parameter rows),
    # a sigmoid first layer and a middle layer (masked on tiles), a single layer
    (1, (32, 32), "tanh", 24, 20),
    (2, (32, 32, 32), "sigmoid", 20, 24),
    (1, (32, 32, 32), "tanh", 20, 24),  # slope(0) = 1: the middle layer needs its mask
    (1, (32,), "relu", 16, 10),
])
def test_the_kernel_gradient_and_outputs_are_autodiffs_for_every_member(
        kernel_mlp, n_in, hidden, activation, n, width):
    build, traced = kernel_mlp
    model = build(n_in, hidden, activation=activation)
    kw = {} if width is None else {"width": width}
    params, state = jax.vmap(lambda k: model.init(k, **kw))(jax.random.split(jax.random.key(0), 3))
    x = jax.random.normal(jax.random.key(1), (n, n_in))
    y = jnp.sin(x[:, 0])
    with jax.default_matmul_precision("highest"):
        want, want_out = jax.vmap(lambda p, s: autodiff(model, p, s, x, y))(params, state)
        got, out = jax.vmap(lambda p, s: model.mse_grad(p, s, x, y))(params, state)
    assert traced  # else autodiff would be compared with itself
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    # a doubled or transposed block would be off by O(1)
    assert relative(got, want) < 1e-5
    assert relative(out, want_out) < 1e-5
    if width is not None:  # dead units get no gradient, in or out
        dead = [i for i, h in enumerate(hidden) if h > width]
        assert dead
        for i in dead:
            assert jnp.all(got[i]["w"][:, :, width:] == 0)
            assert jnp.all(got[i]["b"][:, width:] == 0)
            assert jnp.all(got[i + 1]["w"][:, width:] == 0)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "linear"])
def test_any_dead_units_in_any_layer_get_autodiffs_gradient(kernel_mlp, activation):
    # masks drawn at random per layer (mlp's width masks the same units of equal layers),
    # four layers, two inputs; a dead unit's parameters never reach the outputs, even
    # inf ones where the activation is bounded
    _, traced = kernel_mlp
    hidden, act = (16, 32, 16, 16), ACTIVATIONS[activation]

    def apply(params, masks, x):
        h = x
        for layer, live in zip(params[:-1], masks):
            h = act(h @ layer["w"] + layer["b"]) * live
        return (h @ params[-1]["w"] + params[-1]["b"])[:, 0]

    sizes = (2, *hidden, 1)
    keys = iter(jax.random.split(jax.random.key(0), 3 * len(sizes)))
    params = [{"w": jax.random.normal(next(keys), (m, k)) / jnp.sqrt(m),
               "b": jax.random.normal(next(keys), (k,))} for m, k in zip(sizes, sizes[1:])]
    masks = [jax.random.bernoulli(next(keys), 0.6, (h,)) for h in hidden]
    assert all(jnp.any(m) and not jnp.all(m) for m in masks)
    if activation in ("tanh", "sigmoid"):
        params[0]["b"] = jnp.where(masks[0], params[0]["b"], jnp.inf)
    x = jax.random.normal(jax.random.key(1), (24, 2))
    y = jnp.cos(x[:, 0])
    grad = mlp_mse_grad(apply, lambda m: m, hidden, activation, interpret=not ON_GPU)
    with jax.default_matmul_precision("highest"):
        got, out = grad(params, masks, x, y)
        want, want_out = jax.grad(lambda p: (jnp.mean(0.5 * (apply(p, masks, x) - y) ** 2),
                                             apply(p, masks, x)), has_aux=True)(params)
    assert traced
    assert jnp.all(jnp.isfinite(out))
    assert relative(got, want) < 1e-5 and relative(out, want_out) < 1e-5
    for i, live in enumerate(masks):
        assert jnp.all(got[i]["w"][:, ~live] == 0) and jnp.all(got[i]["b"][~live] == 0)


def test_float32_numbers_and_integer_targets_take_the_kernel_other_floats_autodiff(kernel_mlp):
    # a float64 or float16 target would change the residual's precision; labels are cast
    build, traced = kernel_mlp
    model = build(1, (16,), activation="tanh")
    params, state = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 1))
    y = jnp.sin(x[:, 0])
    for target, kernel in [(y, True), (jnp.arange(8) % 2, True), (y > 0, True),
                           (y.astype(jnp.float16), False)]:
        before = len(traced)
        got, _ = model.mse_grad(params, state, x, target)
        assert (len(traced) > before) == kernel, target.dtype
        want, _ = autodiff(model, params, state, x, target)
        assert relative(got, want) < 1e-3  # float16's residual
    with jax.enable_x64(True):
        before = len(traced)
        model.mse_grad(params, state, x, y.astype(jnp.float64))
        assert len(traced) == before


@pytest.mark.parametrize("per_member_data", [False, True])
def test_fit_with_the_kernel_trains_as_fit_by_autodiff(kernel_mlp, per_member_data):
    # a width sweep on 20 points (padded to 32), on one data set or a training set per
    # member (the kernel's grid then reads each member's points)
    build, traced = kernel_mlp
    model = build(1, (64, 64))
    draw = functools.partial(regression, target="sin", n_train=20, n_val=20, noise=0.1)
    data = (jax.vmap(draw)(jax.random.split(jax.random.key(0), 3)) if per_member_data
            else draw(jax.random.key(0)))
    kwargs = dict(data=data, key=jax.random.split(jax.random.key(1), 3),
                  optimizer=optax.adam(1e-2), epochs=60, eval_every=20,
                  hparams={"width": jnp.array([16, 40, 64])})
    with jax.default_matmul_precision("highest"):
        got = fit(model, **kwargs)
        assert traced
        want = fit(model._replace(mse_grad=None), **kwargs)
    assert relative(got.params, want.params) < 1e-4
    assert relative(got.history.train_loss, want.history.train_loss) < 1e-4
    assert relative(got.test_loss, want.test_loss) < 1e-4
    # the members trained: the comparison is not of two initialisations
    assert jnp.all(got.history.train_loss[:, -1] < 0.9 * got.history.train_loss[:, 0])


def test_fit_with_the_kernel_on_class_labels_with_two_inputs_trains_as_autodiff(kernel_mlp):
    # the square loss on 0/1 labels (integer targets) of a 2-D data set: inputs enter
    # the kernel as two column-times-row products
    build, traced = kernel_mlp
    model = build(2, (32, 32), activation="relu")
    data = classification(jax.random.key(0), shape="xor", n_train=40, n_val=20, n_test=20)
    kwargs = dict(data=data, key=jax.random.split(jax.random.key(1), 2), loss="mse",
                  epochs=30, eval_every=10)
    with jax.default_matmul_precision("highest"):
        got = fit(model, **kwargs)
        assert traced
        want = fit(model._replace(mse_grad=None), **kwargs)
    assert relative(got.params, want.params) < 1e-4
    assert relative(got.history.val_metric, want.history.val_metric) == 0  # accuracies


def test_forward_mode_through_fit_takes_autodiffs_rule(kernel_mlp):
    # a learning-rate hypergradient by jvp: the kernel has no derivative of its own
    build, _ = kernel_mlp
    data = regression(jax.random.key(0), target="sin", n_train=16, n_val=8, noise=0.1)
    opt = lambda h: optax.sgd(h["lr"])  # noqa: E731

    def final_loss(model, lr):
        return fit(model, data, key=jax.random.key(1), optimizer=opt, hparams={"lr": lr},
                   epochs=5).history.train_loss[-1]

    model = build(1, (16, 16))
    with jax.default_matmul_precision("highest"):
        got = jax.jvp(functools.partial(final_loss, model), (0.1,), (1.0,))
        want = jax.jvp(functools.partial(final_loss, model._replace(mse_grad=None)),
                       (0.1,), (1.0,))
    assert float(want[1]) < 0  # a larger step lowers the loss: a tangent that can be wrong
    assert relative(got, want) < 1e-5
    # and it compiles for CUDA, where the primal step is the Triton kernel
    jax.jit(lambda lr: jax.jvp(functools.partial(final_loss, mlp(1, (16, 16))), (lr,),
                               (1.0,))).trace(0.1).lower(lowering_platforms=("cuda",))


def _triton_calls(model, n_train=64, **fit_kwargs):
    data = regression(jax.random.key(0), target="sin", n_train=n_train, n_val=8, noise=0.1)
    keys = jax.random.split(jax.random.key(1), 4)
    text = jax.jit(lambda k: fit(model, data, key=k, epochs=4, **fit_kwargs)).trace(
        keys).lower(lowering_platforms=("cuda",)).as_text()
    return text.count("__gpu$xla.gpu.triton")


def test_fit_of_an_mlp_lowers_its_gradient_to_triton_kernels_for_cuda():
    model = mlp(1, (64, 64))
    # first gradient, the step loop's, and each evaluation's
    assert _triton_calls(model, eval_every=2) == 3
    assert _triton_calls(model._replace(mse_grad=None), eval_every=2) == 0
    # minibatches, input noise and other losses take autodiff
    assert _triton_calls(model, batch_size=16) == 0
    assert _triton_calls(model, hparams={"input_noise": 0.1}) == 0
    assert _triton_calls(model, loss=lambda out, y: 0.5 * (out - y) ** 2) == 0


@pytest.mark.parametrize("n, n_in, hidden, fits", [
    # the envelope as benchmarks/kernel_registers.py drew it: no spills inside, spills
    # just outside (several of those no longer spill: widen only once a card times them)
    (64, 1, (64, 64), True),  # the GPU target
    (128, 1, (32, 32), True),
    (32, 1, (64, 64, 64), True),
    (64, 4, (32, 32), True),
    (100, 1, (16, 16, 16), True),  # padded to 128
    (65, 1, (64, 64), False),  # padded to 128
    (128, 1, (64,), False),
    (256, 1, (16, 16), False),
    (16, 1, (128, 128), False),
    (64, 2, (64, 64), False),
    (128, 4, (16, 16), False),
    (64, 1, (64, 64, 64), False),
])
def test_the_on_chip_envelope_keeps_the_register_sweeps_findings(n, n_in, hidden, fits):
    assert fits_on_chip(n, n_in, hidden) is fits


def test_shapes_outside_the_envelope_take_autodiff():
    assert _triton_calls(mlp(1, (64, 64)), n_train=65) == 0
    model = mlp(5, (16,))
    x = jnp.ones((8, 5))
    params, state = model.init(jax.random.key(0))
    text = jax.jit(lambda p: model.mse_grad(p, state, x, x[:, 0])).trace(params).lower(
        lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" not in text


def test_a_jax_without_pallas_triton_takes_autodiff(monkeypatch):
    monkeypatch.setattr(kernels, "_pallas_triton", lambda: None)
    assert _triton_calls(mlp(1, (64, 64))) == 0


@pytest.mark.skipif(ON_GPU, reason="off a GPU fit must compile to exactly autodiff's program")
def test_off_a_gpu_fit_gives_autodiffs_numbers_bit_for_bit():
    model = mlp(1, (32, 32))
    data = regression(jax.random.key(0), target="sin", n_train=16, n_val=8, noise=0.1)
    kwargs = dict(data=data, key=jax.random.split(jax.random.key(1), 2), epochs=20)
    got, want = fit(model, **kwargs), fit(model._replace(mse_grad=None), **kwargs)
    assert all(jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(got.params),
                                                      jax.tree.leaves(want.params)))


def test_only_deterministic_one_output_mlps_with_kernel_shapes_get_a_kernel():
    assert mlp(1, (64, 64)).mse_grad is not None
    assert mlp(1, (64,), activation="relu").mse_grad is not None
    assert mlp(1, (64, 64), drop_rate=0.1).mse_grad is None  # dropout draws masks
    assert mlp(1, (64, 64), activation="gelu").mse_grad is None
    assert mlp(1, (48, 64)).mse_grad is None  # Triton blocks are powers of two
    assert mlp(1, (8,)).mse_grad is None  # and dots need 16 or more
    assert mlp(2, (64,), n_out=3).mse_grad is None
    assert polynomial(5).mse_grad is None


def test_the_kernel_factory_refuses_what_it_cannot_hold_by_name():
    with pytest.raises(ValueError, match=r"hidden=\(48,\), activation='tanh'; allowed"):
        mlp_mse_grad(lambda *a: None, lambda s: [], (48,), "tanh")
    with pytest.raises(ValueError, match=r"activation='gelu'; allowed: .*'tanh'"):
        mlp_mse_grad(lambda *a: None, lambda s: [], (64,), "gelu")


def test_zero_at_zero_names_exactly_the_activations_that_vanish_at_zero():
    # the kernel leaves a first layer's dead units unmasked when act(0) == 0
    vanish = {name for name, f in ACTIVATIONS.items() if f(jnp.float32(0)) == 0}
    assert vanish == ZERO_AT_ZERO
