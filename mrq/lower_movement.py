"""Lowering of the shape, movement and selection IR ops of :mod:`mrq.tflite_import_shape`.

Mixed into :class:`mrq.lower._Lowerer` (methods ``_<IR op>``, helpers ``self.t``, ``self.emit``,
``self._tfl()`` = the TFLite flavour of the profile: ``ref`` (LiteRT BUILTIN_REF), ``xnnpack``
(LiteRT's default interpreter) or None (other hardware)).

* ``Take`` -> ``take``; ``ArgMax`` -> ``arg_reduce``; ``ReduceMax`` -> ``reduce_select``;
  ``Maximum`` -> ``select2`` (codes copied or compared: one grid in and out); ``PRelu`` ->
  ``prelu`` (TFLite's two ``MultiplyByQuantizedMultiplier`` branches).
* ``ResizeBilinear`` -> ``resize_bilinear``: ``ref``: int8/int16 ``int10`` (TFLite's integer
  reference), uint8 ``float`` (its float32 template); ``xnnpack``: 8-bit ``q11`` (the
  delegate's 11-bit weights), int16 as ``ref``; other profiles ``int10``.
* TFLite's standalone RELU/RELU6/RELU_N1_TO_1/RELU_0_TO_1 (``Clamp`` nodes) between two 8-bit
  grids -> ``lut`` of ``QuantizedReluX`` (MBQM with gemmlowp rounding, ``roundf`` bounds), which
  both resolvers run; on one grid the ordinary ``clamp``.
* ``HardSwish``, ``Tanh``, ``Cast`` of 8-bit codes -> ``lut``, every code run through LiteRT's
  own arithmetic: HARD_SWISH's int16 fixed-point "reluish" path (``ref`` and ``xnnpack`` alike:
  the delegate leaves quantized HARD_SWISH to TFLite's kernel, which has the same arithmetic);
  TANH's ``LUTPopulate`` (``tanhf``, ``round_half_away(f32(t * f32(1/s_out)))``); CAST is the C
  conversion of the code. Other profiles get the table of :mod:`mrq.pointwise` (the float
  function with their own quantizer), as for ONNX models.
"""
from __future__ import annotations

import math

import numpy as np

from mrq import multipliers as mul
from mrq.errors import UnsupportedOpError
from mrq.ir import QParams, storage_dtype

_8BIT = ("int8", "uint8")
_I16_MIN, _I16_MAX = -(1 << 15), (1 << 15) - 1


# ------------------------------------------------------------------------------------ gemmlowp
def _srdhm16(a: int, b: int) -> int:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int16 (nudge, C truncating division)."""
    if a == b == _I16_MIN:
        return _I16_MAX
    ab = a * b
    n = ab + ((1 << 14) if ab >= 0 else 1 - (1 << 14))
    return -(-n >> 15) if n < 0 else n >> 15


def _sdhm16(a: int, b: int) -> int:
    """TFLite ``SaturatingDoublingHighMul`` on int16 (truncation toward zero)."""
    if a == b == _I16_MIN:
        return _I16_MAX
    ab = a * b
    return -((-ab) >> 15) if ab < 0 else ab >> 15


def _rdbpot(x: int, exponent: int) -> int:
    """gemmlowp ``RoundingDivideByPOT`` (round half away from zero)."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def _sat16(v: int) -> int:
    return min(max(v, _I16_MIN), _I16_MAX)


def _to_int16(v: int) -> int:
    """``static_cast<int16_t>`` (two's-complement wrap)."""
    return ((v + (1 << 15)) & 0xFFFF) - (1 << 15)


def _downscale_to_int16(m32: int) -> int:
    """TFLite ``DownScaleInt32ToInt16Multiplier``."""
    if m32 >= (1 << 31) - 1 - (1 << 15):
        return _I16_MAX
    return (m32 + (1 << 15)) >> 16


def hard_swish_params(x_qp: QParams, y_qp: QParams) -> dict:
    """``HardSwishPrepare``: float32 scales, ``QuantizeMultiplier`` then int16 down-scaling."""
    f32 = np.float32
    hires = f32(f32(1.0 / 128.0) * f32(x_qp.scale[0]))
    out_m, out_e = mul.tflite_quantize_multiplier(float(f32(hires / f32(y_qp.scale[0]))))
    relu_m, relu_e = mul.tflite_quantize_multiplier(float(f32(hires / f32(3.0 / 32768.0))))
    if out_e > 0:
        raise ValueError("HARD_SWISH output multiplier exponent must be <= 0")
    return {"input_zero_point": int(x_qp.zero_point[0]), "output_zero_point": int(y_qp.zero_point[0]),
                "output_multiplier": _downscale_to_int16(out_m), "output_exponent": out_e,
                "reluish_multiplier": _downscale_to_int16(relu_m), "reluish_exponent": relu_e}


def hard_swish_code(v: int, p: dict, qmin: int, qmax: int) -> int:
    """``reference_ops::HardSwish`` for one input code (int16 fixed point)."""
    value = _to_int16(v - p["input_zero_point"])
    hires = _to_int16(value * (1 << 7))
    preshift = _srdhm16(hires, p["output_multiplier"])
    reluish = hires
    e = p["reluish_exponent"]
    if e > 0:
        reluish = _sat16(reluish * (1 << (e - 1)))
    reluish = _srdhm16(reluish, p["reluish_multiplier"])
    if e > 0:
        reluish = _sat16(reluish * 2)
    if e < 0:
        reluish = _rdbpot(reluish, -e)
    reluish = _to_int16((reluish + (1 << 15)) >> 1)
    out = _sdhm16(reluish, preshift)
    out = _to_int16(_rdbpot(out, -p["output_exponent"]) + p["output_zero_point"])
    return min(max(out, qmin), qmax)


def mbqm(v: int, multiplier: int, exponent: int) -> int:
    """gemmlowp ``MultiplyByQuantizedMultiplier``: SRDHM of ``v * 2**max(e, 0)`` by the Q31
    multiplier, then ``RoundingDivideByPOT`` by ``max(-e, 0)`` (both round half away)."""
    v = v * (1 << max(exponent, 0))
    ab = v * multiplier
    n = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    high = -(-n >> 31) if n < 0 else n >> 31
    return _rdbpot(high, max(-exponent, 0))


def _roundf(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def tflite_relu_table(x_qp: QParams, y_qp: QParams, lo, hi) -> np.ndarray:
    """``QuantizedReluX`` for every 8-bit input code: ``z_out + MBQM(v - z_in)`` with the Q31
    encoding of ``f32(s_in / s_out)``, clamped to ``[max(qmin, z_out + roundf(f32(lo / s_out))),
    min(qmax, z_out + roundf(f32(hi / s_out)))]``."""
    f32 = np.float32
    m, e = mul.tflite_quantize_multiplier(float(f32(f32(x_qp.scale[0]) / f32(y_qp.scale[0]))))
    z_in, z_out = int(x_qp.zero_point[0]), int(y_qp.zero_point[0])
    s_out = f32(y_qp.scale[0])
    q_lo = max(y_qp.qmin, z_out + _roundf(float(f32(f32(lo) / s_out))))
    q_hi = y_qp.qmax if hi is None else min(y_qp.qmax, z_out + _roundf(float(f32(f32(hi) / s_out))))
    return np.array([min(max(z_out + mbqm(int(v) - z_in, m, e), q_lo), q_hi) for v in _codes(x_qp)])


def _codes(qp: QParams) -> np.ndarray:
    info = np.iinfo(np.dtype(storage_dtype(qp.dtype)))
    return np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)


def tflite_lut(x_qp: QParams, y_qp: QParams, fn) -> np.ndarray:
    """``LUTPopulate``: ``q = round_half_away(f32(fn(f32(s_in * (v - z_in))) * f32(1/s_out))) +
    z_out``, clamped, for every 8-bit input code ``v``."""
    f32 = np.float32
    s_in, z_in = f32(x_qp.scale[0]), int(x_qp.zero_point[0])
    inv = f32(f32(1.0) / f32(y_qp.scale[0]))
    z_out = int(y_qp.zero_point[0])
    out = []
    for v in _codes(x_qp):
        r = float(f32(f32(fn(f32(s_in * f32(int(v) - z_in)))) * inv))
        q = int(math.copysign(math.floor(abs(r) + 0.5), r)) + z_out
        out.append(min(max(q, y_qp.qmin), y_qp.qmax))
    return np.asarray(out).astype(storage_dtype(y_qp.dtype))


def _tanhf(x) -> np.float32:
    """float32 tanh, correctly rounded from the double result."""
    return np.float32(math.tanh(float(np.float32(x))))


class MovementOpsLowering:
    # ------------------------------------------------------------------ movement and selection
    def _Take(self, node):
        x = self.ensure_buffer(node.inputs[0], node)
        self.emit("take", node, [x], node.outputs, index=np.asarray(node.attrs["source"], np.int64),
                  shape=tuple(int(d) for d in node.attrs["shape"]))

    def _ArgMax(self, node):
        out_dtype = self.t(node.outputs[0]).dtype
        self.emit("arg_reduce", node, node.inputs, node.outputs, axis=int(node.attrs["axis"]),
                  select=node.attrs.get("select", "max"), out_dtype=out_dtype)

    def _ReduceMax(self, node):
        self._require_one_grid(node, node.inputs[:1])
        self.emit("reduce_select", node, node.inputs, node.outputs,
                  axes=tuple(int(a) for a in node.attrs["axes"]),
                  keep_dims=bool(node.attrs.get("keep_dims", False)),
                  select=node.attrs.get("select", "max"))

    def _Maximum(self, node):
        inputs = [self.ensure_buffer(n, node) for n in node.inputs]
        self._require_one_grid(node, inputs)
        self.emit("select2", node, inputs, node.outputs, select=node.attrs.get("select", "max"))

    def _require_one_grid(self, node, inputs):
        y_qp = self.t(node.outputs[0]).qparams
        for name in inputs:
            if not self.t(name).qparams.same_grid(y_qp):
                raise UnsupportedOpError(node.op, node.name,
                                         f"input {name!r} and the output have different "
                                         f"quantization (the op compares codes)")

    def _ResizeBilinear(self, node):
        dtype = self.t(node.inputs[0]).dtype
        flavour = self._tfl()
        if flavour == "xnnpack" and dtype in _8BIT:
            mode = "q11"
        elif flavour in ("ref", "xnnpack"):
            mode = "float" if dtype == "uint8" else "int10"
        else:
            mode = "int10"
        self.emit("resize_bilinear", node, node.inputs, node.outputs, size=tuple(node.attrs["size"]),
                  mode=mode, align_corners=bool(node.attrs.get("align_corners", False)),
                  half_pixel_centers=bool(node.attrs.get("half_pixel_centers", False)))

    def _Resize(self, node):
        """ONNX's linear Resize as ONNX Runtime runs a QDQ one: dequantize, interpolate in
        float32 (the positions and weights the importer computed), quantize on the output grid."""
        at = node.attrs
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        tables = {k: np.asarray(at[k]) for k in ("y_lo", "y_hi", "wy_lo", "wy_hi", "x_lo", "x_hi",
                                                 "wx_lo", "wx_hi")}
        if at.get("on_codes"):   # a QOperator graph: ORT's integer kernel interpolates the codes
            self._require_one_grid(node, node.inputs[:1])
            self.emit("resize_linear", node, node.inputs[:1], node.outputs, **tables)
            return
        real, resized = f"{node.outputs[0]}__real", f"{node.outputs[0]}__resized"
        self.emit("dequantize", node, node.inputs[:1], [real], suffix="/dequantize",
                  scale=x_qp.scale.astype(np.float32), zero_point=x_qp.zero_point.astype(np.int64), axis=1)
        self.emit("resize_linear", node, [real], [resized], suffix="/resize", **tables)
        lo, hi = self.out_range(y_qp, at.get("clamp"))
        self.emit("quantize", node, [resized], node.outputs, scale=y_qp.scale.astype(np.float32),
                  zero_point=y_qp.zero_point.astype(np.int64), axis=1,
                  rounding=self.a.quantize_rounding, method=self.a.quantize_method,
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(y_qp.dtype))

    # ------------------------------------------------------------------ PRelu
    def _PRelu(self, node):
        """TFLite PRELU: multipliers ``f32(s_in / s_out)`` and ``f32(f32(s_in * s_alpha) / s_out)``
        (float32 arithmetic, as LiteRT's Prepare), each ``QuantizeMultiplier``-encoded; other
        profiles encode the exact ratios their way."""
        x, alpha = self.t(node.inputs[0]), self.t(node.inputs[1])
        x_qp, a_qp, y_qp = x.qparams, alpha.qparams, self.t(node.outputs[0]).qparams
        f32 = np.float32
        real_pos = float(f32(f32(x_qp.scale[0]) / f32(y_qp.scale[0])))
        real_neg = float(f32(f32(f32(x_qp.scale[0]) * f32(a_qp.scale[0])) / f32(y_qp.scale[0])))
        if self._tfl() is not None:
            (m_pos, m_neg), (s_pos, s_neg) = mul.tflite_multipliers(np.array([real_pos, real_neg]))
            rq_mode, rounding = "double_q31", "half_away"
        else:
            blocks = [self.requant_block(np.array([r]), y_qp, None, -1) for r in (real_pos, real_neg)]
            if blocks[0]["rq_mode"] not in ("double_q31", "fixed", "shift"):
                raise UnsupportedOpError("PRelu", node.name, f"profile {self.a.name!r} requantizes "
                                                             f"in float32; PRelu needs integer multipliers")
            (m_pos, m_neg), (s_pos, s_neg) = ([int(b["rq_multiplier"][0]) for b in blocks],
                                              [int(b["rq_shift"][0]) for b in blocks])
            rq_mode, rounding = blocks[0]["rq_mode"], blocks[0]["rq_rounding"]
        codes = np.asarray(alpha.data).astype(np.int64)
        rank = len(x.shape)
        if codes.ndim > rank:
            raise UnsupportedOpError("PRelu", node.name, f"alpha of rank {codes.ndim} for a rank-{rank} input")
        codes = codes.reshape((1,) * (rank - codes.ndim) + codes.shape)
        if codes.shape[0] != 1:
            raise UnsupportedOpError("PRelu", node.name, "alpha varies along the batch dimension")
        self.emit("prelu", node, node.inputs[:1], node.outputs, alpha=codes,
                  input_zero_point=int(x_qp.zero_point[0]), alpha_zero_point=int(a_qp.zero_point[0]),
                  out_zero_point=int(y_qp.zero_point[0]), out_min=y_qp.qmin, out_max=y_qp.qmax,
                  out_dtype=storage_dtype(y_qp.dtype), rq_mode=rq_mode, rq_rounding=rounding,
                  multiplier_pos=int(m_pos), shift_pos=int(s_pos), multiplier_neg=int(m_neg),
                  shift_neg=int(s_neg))

    # ------------------------------------------------------------------ 8-bit tables
    def tflite_relu(self, node) -> bool:
        """A standalone TFLite RELU* (a ``Clamp`` node) whose input and output grids differ, on a
        TFLite profile: LiteRT requantizes before it clamps (both resolvers run TFLite's kernel
        then), a table of its arithmetic. False: the ordinary Clamp lowering applies."""
        if node.attrs.get("tflite_op") not in ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1") \
                or self._tfl() is None:
            return False
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        if x_qp.same_grid(y_qp) or x_qp.dtype not in _8BIT or y_qp.dtype not in _8BIT:
            return False
        self._table(node, tflite_relu_table(x_qp, y_qp, node.attrs.get("lo"), node.attrs.get("hi")))
        return True


    def _table(self, node, table: np.ndarray):
        out_dtype = storage_dtype(self.t(node.outputs[0]).dtype)
        self.emit("lut", node, node.inputs, node.outputs, table=np.asarray(table).astype(out_dtype),
                  out_dtype=out_dtype)

    def _HardSwish(self, node):
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        if self._tfl() is None:   # other hardware: the float function's table (mrq/pointwise.py)
            self._pointwise(node)
            return
        p = hard_swish_params(x_qp, y_qp)
        self._table(node, [hard_swish_code(int(v), p, y_qp.qmin, y_qp.qmax) for v in _codes(x_qp)])

    def _Tanh(self, node):
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        if self._tfl() is None:
            self._pointwise(node)
            return
        self._table(node, tflite_lut(x_qp, y_qp, _tanhf))

    def _Cast(self, node):
        x = self.t(node.inputs[0])
        info = np.iinfo(np.dtype(storage_dtype(x.dtype)))
        codes = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
        out_dtype = storage_dtype(self.t(node.outputs[0]).dtype)
        self._table(node, codes.astype(out_dtype))   # numpy converts integers as C does (wraps)
