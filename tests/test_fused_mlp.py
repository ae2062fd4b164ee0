"""The hand-fused Pallas experiment (benchmarks/fused_mlp.py) stays correct off the GPU.

Its kernels run in Pallas' interpret mode here; the GPU timing is benchmarks/gpu_check.py's.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fused_mlp  # noqa: E402


def test_every_fused_variant_trains_as_jax_grad_and_optax_adam():
    # 5 Adam steps of 3 MLPs: the kernels' hand-written backward pass and Adam
    # agree with autodiff + optax to float32 round-off
    results = fused_mlp.check(n_models=3, steps=5)
    assert set(results) == set(fused_mlp.VARIANTS)
    for variant, (params, loss) in results.items():
        assert params < 1e-5 and loss < 1e-5, (variant, params, loss)


@pytest.mark.parametrize("variant", fused_mlp.VARIANTS)
def test_every_fused_variant_lowers_to_triton_for_cuda(variant):
    assert fused_mlp.lowers_for_cuda(variant)


def test_an_unknown_variant_is_refused_with_the_allowed_ones():
    x, y = fused_mlp.data()
    with pytest.raises(ValueError, match=r"variant='fast'; allowed: \['grad', 'step', 'loop'\]"):
        fused_mlp.train(fused_mlp.init(jax.random.key(0), 2), x, y, steps=1,
                        variant="fast")


def test_the_kernel_gradient_is_autodiffs_for_every_model():
    # Adam barely sees a gradient's scale, so the training check alone would pass a
    # backward pass off by a constant factor: compare the gradients themselves
    x, y = fused_mlp.data()
    params = fused_mlp.init(jax.random.key(1), 3)
    want_loss, want = jax.vmap(jax.value_and_grad(fused_mlp.reference_loss),
                               in_axes=(0, None, None))(params, x, y)
    for loss, grads in (
        jax.vmap(fused_mlp.loss_and_grads, in_axes=(None, None, 0))(x, y, params),
        fused_mlp.kernel_grads(params, x, y, interpret=True),
    ):
        assert jnp.allclose(loss.reshape(3), want_loss, rtol=1e-5)
        for k in fused_mlp.NAMES:
            assert grads[k].shape == want[k].shape
            assert jnp.allclose(grads[k], want[k], rtol=1e-4, atol=1e-7), k


def test_block_sizes_triton_cannot_take_are_refused():
    x, y = fused_mlp.data(48)
    with pytest.raises(ValueError, match=r"n \(points\)=48; allowed: a power of two >= 16"):
        fused_mlp.train(fused_mlp.init(jax.random.key(0), 2), x, y, steps=1)
    x, y = fused_mlp.data()
    with pytest.raises(ValueError, match=r"hidden=8; allowed: a power of two >= 16"):
        fused_mlp.train(fused_mlp.init(jax.random.key(0), 2, hidden=8), x, y, steps=1)
