"""``float_global_avgpool``: ONNX Runtime's float32 GlobalAveragePool (NCHW) in a float island
of a mixed graph, in ORT's summation order."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels.ort_eltwise import GLOBAL_POOL_ORDERS, global_average_pool
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatGlobalAvgpoolParams(Params):
    """The mean of each channel's plane of an NCHW float32 tensor, summed in ``order``:
    ``mlas`` (4 lanes) or ``nchwc`` (each plane in order)."""

    order: str = "mlas"

    def check(self, where_: str) -> None:
        if self.order not in GLOBAL_POOL_ORDERS:
            raise ProgramError(f"{where_}: 'order' must be one of {list(GLOBAL_POOL_ORDERS)}")


def execute_float_global_avgpool(step, p, x):
    """float32 [N, C, ...] -> float32 [N, C, 1, ...]."""
    return (global_average_pool(x, p.order),), stats()


KIND = register("float_global_avgpool", FloatGlobalAvgpoolParams, execute_float_global_avgpool)
