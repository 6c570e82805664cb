"""ONNX Runtime's com.microsoft QLinearSoftmax (what its optimizer makes of ``DQ -> Softmax -> Q``
on 8-bit codes): a 256-entry float32 table of ``exp`` built in double, a float32 row sum in
element order, ``nearbyintf(t * f32(floor(1 / y_scale) / sum)) + y_zp``. The table is built
here (lowering); the simulator's ``softmax_ort`` step runs the rows."""
from __future__ import annotations

import math

import numpy as np

_FLT_MAX = float(np.finfo(np.float32).max)


def qlinear_softmax_table(x_scale: float, reduce_len: int, signed: bool) -> np.ndarray:
    """``QlinearBuildLookupTableUint32`` with float entries: ``exp((i - 255 + shift) * x_scale)``
    in double, ``shift = max(0, logf(FLT_MAX / reduce_len) - 5) / x_scale``, stored at index
    ``uint8(i - 128)`` for int8 inputs."""
    xs = float(np.float32(x_scale))
    # ``log(FLT_MAX / reduce_len)``: a float division and the float overload of log (logf)
    quotient = np.float32(np.float32(_FLT_MAX) / np.float32(reduce_len))
    shift = max(0.0, float(np.float32(math.log(float(quotient)))) - 5.0) / xs
    table = np.empty(256, np.float32)
    for i in range(256):
        table[(i - 128) & 0xFF if signed else i] = np.float32(math.exp((i - 255 + shift) * xs))
    return table


def qlinear_softmax_y_scale(y_scale: float) -> np.float32:
    """The kernel's output factor: ``floor(1.0f / y_scale)`` in float32."""
    return np.float32(math.floor(float(np.float32(np.float32(1.0) / np.float32(y_scale)))))
