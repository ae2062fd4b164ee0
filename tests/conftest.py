"""Suite-wide settings, applied before any test module imports JAX.

Most of the suite's time is XLA compiling small programs that then run for milliseconds.
``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` keeps every HLO pass (the programs mean the same) and
turns down only LLVM's code generation (as :func:`overfit.fast_compile_options` does for one
program): the suite took 8.4 minutes instead of 13.6 on 2 CPU cores. Compiled code then
rounds a few reductions differently (an ulp or two), so a test that compares two programs'
floats asserts a tolerance, not bit equality. Subprocesses (notebooks, the CLI) inherit the
setting. Set it to 0 to test fully optimised programs, as ``benchmarks/gpu_check.py`` does
on a GPU.

XLA's older CPU code emitters (``--xla_cpu_use_fusion_emitters=false``) halve what is left of
a compile: an MLP fit with and one without early stopping compiled in 2.8 s instead of 5.7.
The flag goes into ``XLA_FLAGS`` only where this jaxlib knows it (XLA aborts on an unknown
flag), and only with the optimizations off, so a fully optimised run tests XLA's defaults.

One OpenBLAS thread per process: two xdist workers share two cores, and OpenBLAS's spinning
threads (jaxlib's CPU LAPACK calls run on them) stretched a 10 s test of batched SVDs to
45 s while the other worker compiled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

_OLD_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flags: str) -> bool:
    """Whether a CPU backend starts with these XLA_FLAGS (a fresh process: XLA aborts)."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    return subprocess.run(probe, env=env, capture_output=True).returncode == 0


_flags = os.environ.get("XLA_FLAGS", "")
if (os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1" and "fusion_emitters" not in _flags
        and _xla_accepts(f"{_flags} {_OLD_EMITTERS}".strip())):
    os.environ["XLA_FLAGS"] = f"{_flags} {_OLD_EMITTERS}".strip()

# One persistent compilation cache for the whole run, shared by the xdist workers (they
# inherit this process's environment) and the subprocesses they start: a test that
# rebuilds a program another test compiled (a fresh optimizer object, a CLI rerun, a
# notebook's scenario) loads it instead of compiling it again.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="overfit-tests-jax-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# The longest tests (each notebook end to end, each shipped scenario shrunk) go first:
# started last, one of them ran alone on one core while the other core sat idle.
_LONG_FIRST = ("tests/test_notebooks.py", "tests/test_scenarios.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG_FIRST))
