"""benchmarks/gpu_check.py's reading of compiled programs (it runs anywhere)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_step_loops_finds_the_matrix_loop_with_its_trip_count_and_kernels():
    a = jnp.ones((8, 8))

    def f(a):
        mat = jax.lax.scan(lambda c, _: (jnp.tanh(c @ a), None), a, None, length=7)[0]
        # a loop without matrix work is not a step loop
        count = jax.lax.fori_loop(0, 5, lambda i, c: c + jnp.sin(c), jnp.zeros(3))
        return mat, count

    loops = gpu_check.step_loops(jax.jit(f).lower(a).compile().as_text())
    assert len(loops) == 1
    trips, counts = loops[0]
    assert trips == 7
    # the product, the tanh around it: at least two kernels, one of them the dot
    assert counts["dot"] + counts["custom-call"] + counts["fusion"] >= 1
    assert counts["kernels"] >= 2


def test_step_loops_reads_opcodes_after_tuple_shapes():
    hlo = """\
%body (p: (s32[], f32[4,4])) -> (s32[], f32[4,4]) {
  %p = (s32[], f32[4,4]{1,0}) parameter(0)
  %m = (f32[4,4]{1,0}, f32[4,4]{1,0}) fusion(%p), kind=kLoop, calls=%fused
  %d = f32[4,4]{1,0} dot(%x, %y), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[4,4]{1,0}) tuple(%i, %d)
}

ENTRY %main (a: f32[4,4]) -> f32[4,4] {
  %w = (s32[], f32[4,4]{1,0}) while(%init), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"12"}}
}
"""
    assert gpu_check.step_loops(hlo) == [
        (12, {"fusion": 1, "custom-call": 0, "dot": 1, "copy": 0, "kernels": 2})]


def test_step_loops_looks_inside_command_buffers():
    # XLA's GPU command buffers wrap runs of kernels in a call: count what it calls
    hlo = """\
%command_buffer (a: f32[4,4]) -> f32[4,4] {
  %a = f32[4,4]{1,0} parameter(0)
  %g = (f32[4,4]{1,0}, s8[64]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"
  %e = f32[4,4]{1,0} get-tuple-element(%g), index=0
  ROOT %f = f32[4,4]{1,0} fusion(%e), kind=kLoop, calls=%fused_tanh
}

%body (p: (s32[], f32[4,4])) -> (s32[], f32[4,4]) {
  %p = (s32[], f32[4,4]{1,0}) parameter(0)
  %c = f32[4,4]{1,0} call(%x), to_apply=%command_buffer
  %inner = (s32[], f32[4,4]{1,0}) while(%p), condition=%cond, body=%other
  ROOT %t = (s32[], f32[4,4]{1,0}) tuple(%i, %c)
}

ENTRY %main (a: f32[4,4]) -> f32[4,4] {
  %w = (s32[], f32[4,4]{1,0}) while(%init), condition=%cond, body=%body
}
"""
    assert gpu_check.step_loops(hlo) == [
        (None, {"fusion": 1, "custom-call": 1, "dot": 0, "copy": 0, "kernels": 2})]
