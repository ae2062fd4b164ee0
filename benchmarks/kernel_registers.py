"""Registers and spills of overfit's fused MLP kernel, compiled for an H100 without one.

Lowers ``Model.mse_grad`` of each shape to Triton IR with JAX (for CUDA, no GPU needed),
compiles it for sm_90a with the ``triton`` package and reads ptxas' register and spill
report: the evidence behind ``overfit.kernels.fits_on_chip``. Needs ``pip install triton``
(not a project dependency) and a ptxas that reads Triton's PTX (Triton ships one; pass
``--ptxas`` for another)::

    python benchmarks/kernel_registers.py            # the sweep, one line per shape
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp

from overfit import kernels, mlp
from overfit.activations import SLOPES

# (points, inputs, hidden widths): both sides of fits_on_chip's boundary
SHAPES = [
    (64, 1, (64, 64)), (32, 1, (64, 64)), (128, 1, (32, 32)), (128, 1, (16, 16, 16)),
    (32, 1, (64, 64, 64)), (64, 4, (32, 32)), (32, 3, (64, 64)), (64, 2, (16, 16, 16, 16)),
    (128, 1, (64, 64)), (64, 1, (128,)), (128, 1, (64,)), (256, 1, (16, 16)),
    (16, 1, (128, 128)), (64, 2, (64, 64)), (64, 8, (64, 64)), (128, 4, (16, 16)),
    (64, 1, (64, 64, 64)), (128, 1, (32, 32, 32)),
]


def triton_ir(n: int, n_in: int, hidden: tuple[int, ...], activation: str) -> str:
    """The Triton IR that JAX lowers the kernel of this shape to."""
    from jax._src.pallas.triton import lowering  # private: the IR is not exposed otherwise

    captured = {}
    original = lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        module = original(*args, **kwargs)
        captured["ir"] = module.module.operation.get_asm(enable_debug_info=False)
        return module

    model = mlp(n_in, hidden, activation=activation)
    params, state = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 2))
    x, y = jnp.ones((n, n_in)), jnp.ones((n,))
    with mock.patch.object(lowering, "lower_jaxpr_to_triton_module", capture), \
            mock.patch.object(kernels, "fits_on_chip", lambda *_: True):
        jax.jit(jax.vmap(lambda p, s: model.mse_grad(p, s, x, y))).trace(
            params, state).lower(lowering_platforms=("cuda",))
    return captured["ir"]


def registers(ir: str, ptxas: str | None) -> tuple[int, int, int]:
    """(registers per thread, spill-store bytes, PTX instructions per thread) of the IR
    compiled for sm_90a, 4 warps."""
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ttir"
        path.write_text(ir)
        compiled = triton.compile(str(path), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=4, num_stages=1))
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        if ptxas is None:
            # Triton 3.9 writes PTX 9.4, which only the newer of its two ptxas reads
            bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
            ptxas = str(next(p for p in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas")
                             if p.exists()))
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(ptx), "-o",
                                 str(Path(tmp) / "kernel.cubin")],
                                capture_output=True, text=True, check=True).stderr
    used = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    instructions = len(re.findall(r"^\s+[a-z][\w.]*", compiled.asm["ptx"], re.M))
    return int(used.group(1)), int(spills.group(1)) if spills else 0, instructions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ptxas", help="the ptxas to use (default: the one Triton ships)")
    p.add_argument("--activation", default="tanh", choices=sorted(SLOPES))
    args = p.parse_args(argv)
    print("| points | inputs | hidden | fits_on_chip | registers | spill stores (B) | "
          "PTX instructions |")
    print("|---:|---:|---|---|---:|---:|---:|")
    for n, n_in, hidden in SHAPES:
        regs, spills, instructions = registers(triton_ir(n, n_in, hidden, args.activation),
                                               args.ptxas)
        print(f"| {n} | {n_in} | {hidden} | {kernels.fits_on_chip(n, n_in, hidden)} | "
              f"{regs} | {spills} | {instructions} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
