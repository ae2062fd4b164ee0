"""Suite-wide settings, applied before any test module imports JAX.

Most of the suite's time is XLA compiling small programs that then run for milliseconds.
``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` keeps every HLO pass (the programs mean the same) and
turns down only LLVM's code generation, which cut the suite from 13.6 to 8.4 minutes on
2 CPU cores. Compiled code then rounds a few reductions differently (an ulp or two), so a test that
compares two programs' floats asserts a tolerance, not bit equality. Subprocesses
(notebooks, the CLI) inherit the setting. Set it to 0 to test fully optimised programs, as
``benchmarks/gpu_check.py`` does on a GPU.

One OpenBLAS thread per process: two xdist workers share two cores, and OpenBLAS's spinning
threads (jaxlib's CPU LAPACK calls run on them) stretched a 10 s test of batched SVDs to
45 s while the other worker compiled.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
