"""``matmul_integer``: ONNX ``MatMulInteger`` with zero points given as buffers (computed at run
time by ``dynamic_quantize``, or constants)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.kernels.ort_dynamic import matmul_integer
from simulator.steps.base import PairSumsBlock, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class MatMulIntegerParams(PairSumsBlock):
    """Inputs ``(a, b, zero_point_a, zero_point_b)``: ``acc[..., m, n] = sum_k (a[..., m, k] -
    zero_point_a) * (b[..., k, n] - zero_point_b[n])``, leading dimensions broadcast as
    numpy's matmul, the result int32 (wrapping, as ORT's MLAS accumulator). ``zero_point_a`` is a
    scalar, ``zero_point_b`` a scalar or one per column of ``b``. ``pair_sums``: ``exact``, or
    ``saturate_int16`` (uint8 ``a``, int8 ``b``): the raw codes' products summed two at a time
    along k, each pair sum saturated to int16 (x86 ``vpmaddubsw``), as in the pair-sums
    block."""

    def check(self, where_: str) -> None:
        self.check_pair_sums(where_)


def execute_matmul_integer(step, p, a, b, zero_point_a, zero_point_b):
    """int8/uint8 a, b and their zero points -> int32."""
    return (matmul_integer(a, b, zero_point_a, zero_point_b, p.pair_sums),), stats()


KIND = register("matmul_integer", MatMulIntegerParams, execute_matmul_integer, n_inputs=4)
