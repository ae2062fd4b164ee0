"""The hand-fused Pallas experiment (benchmarks/fused_mlp.py) stays correct off the GPU.

Its kernels run in Pallas' interpret mode here; the GPU timing is benchmarks/gpu_check.py's.
"""

import sys
from pathlib import Path

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
        fused_mlp.train(fused_mlp.init(fused_mlp.jax.random.key(0), 2), x, y, steps=1,
                        variant="fast")
