"""``gemm_ort``: float32 ``x @ weight + bias`` over the last axis, ONNX Runtime's CPU Gemm/MatMul
kernel (MLAS SGEMM)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels.ort_conv import gemm_ort
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class GemmOrtParams(Params):
    """``weight`` float32 [K, N], optional ``bias`` [N]; ``trans_b``: the model stores the
    weight as [N, K] (ONNX ``Gemm`` ``transB=1``), which selects another one-row kernel in MLAS.
    Leading axes of the input are rows (ORT folds them into M). The summation order is ORT
    1.32's on x86-64 with one thread (simulator/kernels/ort_conv.py)."""

    weight: Any
    bias: Any = None
    trans_b: bool = False

    def check(self, where_: str) -> None:
        w = np.asarray(self.weight)
        if w.ndim != 2 or w.dtype != np.float32:
            raise ProgramError(f"{where_}: 'weight' must be a 2-D float32 array [K, N]")
        if self.bias is not None and np.asarray(self.bias).shape != (w.shape[1],):
            raise ProgramError(f"{where_}: 'bias' must hold {w.shape[1]} values")


def execute_gemm_ort(step, p, x):
    """Gemm in float32."""
    k = np.asarray(p.weight).shape[0]
    if x.ndim < 1 or x.shape[-1] != k:
        raise ProgramError(f"step {step.name!r}: input {list(x.shape)} for a weight of {k} rows")
    rows = np.ascontiguousarray(x, np.float32).reshape(-1, k)
    y = gemm_ort(rows, weight=p.weight, bias=p.bias, trans_b=bool(p.trans_b))
    return (y.reshape(x.shape[:-1] + (y.shape[1],)),), stats()


KIND = register("gemm_ort", GemmOrtParams, execute_gemm_ort)
