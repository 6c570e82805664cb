"""LiteRT's 16x8 arithmetic (int16 activations, int8 weights, int64 bias) and its other integer
kernels that the profile vocabulary cannot express: TRANSPOSE_CONV, SUB, LEAKY_RELU, QUANTIZE
between int16/int32, SOFTMAX on int16.

Mixed into :class:`mrq.lower._Lowerer` through :class:`mrq.lower_extra.ExtraOpsLowering`, whose
``lower_override`` calls :meth:`Tflite16Lowering.lower_tflite16` first for the two LiteRT profiles
(``tflite-int8`` = BUILTIN_REF, ``litert-default``). XNNPACK takes none of the int16 ops, so both
profiles run TFLite's own kernels for them, and for int16 those are the same code in the
reference and the optimized builds (verified op by op against ai-edge-litert 2.3,
tests/tflite/test_tflite_int16.py):

* CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV with int16 input: int64
  accumulator, int64 bias, then the 64-bit ``MultiplyByQuantizedMultiplier``: the Q31 multiplier
  ``M`` is reduced to 15 bits (``Mr = M < 0x7FFF0000 ? (M + 2**15) >> 16 : 0x7FFF``) and
  ``(acc * Mr + 2**(t-1)) >> t`` with ``t = 15 - exponent`` (one rounding, half up) = the
  requantization block ``rq_mode='fixed'``, ``rq_rounding='half_up'``. (LiteRT then truncates the
  int64 result to int32 before the clamp; that differs from the saturating ``fixed`` mode only
  for results beyond 2**31, i.e. outputs 65536 times outside the int16 range.)
* ADD / SUB on int16 (non power-of-two scales): the 8-bit algorithm with ``left_shift = 15``; SUB
  negates the second input's Q31 multiplier; the optimized build (``litert-default``) rounds the
  inputs' multiply of int16 ADD once (``add_sub_tflite`` step kind).
* LEAKY_RELU (8-bit reference, int16 both): ``z_out + MBQM(x - z_in, M_identity or M_alpha)``
  (gemmlowp double rounding) with multipliers from float32 scale ratios; 8-bit on the default
  path: XNNPACK's ``((x - z_in) * lrintf(256 * scale) + (z_out << 8) + 128) >> 8``. Both as a
  table over every input code (``lut`` for 8-bit, ``lut16`` for 16-bit).
* LOGISTIC / TANH on int16: LiteRT's interpolated ``sigmoid_table_uint16`` kernels, as a 65536-entry
  table (``lut16``).
* MEAN on int16 (both builds): the reference ``QuantizedMeanOrSum``.
* QUANTIZE int16 <-> int32/int16/int8 (``Requantize``): ``MBQM(x - z_in) + z_out`` with the Q31
  multiplier of ``s_in / s_out`` (double rounding), clamped to the output type.
"""
from __future__ import annotations

import numpy as np

from mrq import multipliers as mul
from mrq.errors import UnsupportedOpError
from mrq.ir import QParams, storage_dtype
from mrq.lower_lstm import RecurrentLowering

_INT16 = ("int16",)


def _f32(x) -> np.float32:
    return np.float32(x)


# ---------------------------------------------------------------------------------------------
# TFLite fixed-point helpers (numpy, exact int64 arithmetic): used to build tables and parameters
# ---------------------------------------------------------------------------------------------
def reduce_multiplier_16(m: int) -> int:
    """The 15-bit multiplier of LiteRT's int64 ``MultiplyByQuantizedMultiplier``."""
    return 0x7FFF if m >= 0x7FFF0000 else (int(m) + (1 << 15)) >> 16


def tflite_16x8_multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (reduced multiplier, right shift ``15 - exponent``) of the 16x8 kernels, for
    the ``fixed`` requantization with rounding half up."""
    real = np.atleast_1d(np.asarray(real, np.float64))
    mult = np.zeros(real.size, np.int64)
    shift = np.zeros(real.size, np.int64)
    for i, r in enumerate(real):
        m, e = mul.tflite_quantize_multiplier(float(r))
        mult[i], shift[i] = reduce_multiplier_16(m), 15 - e
    return mult, shift


def _srdhm(a: np.ndarray, b: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64 arrays."""
    a = np.asarray(a, np.int64)
    ab = a * np.int64(b)
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    v = ab + nudge
    q = np.where(v >= 0, v >> 31, -((-v) >> 31))      # C truncating division by 2**31
    sat = (a == -(1 << 31)) & (b == -(1 << 31))
    return np.where(sat, np.int64((1 << 31) - 1), q)


def _rounding_divide_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    x = np.asarray(x, np.int64)
    mask = np.int64((1 << exponent) - 1)
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> exponent) + (rem > thr)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.int64) + (1 << 31)) & ((1 << 32) - 1)) - (1 << 31)


def mbqm(x: np.ndarray, multiplier: int, shift: int) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(int32 x, M, shift)``, double-rounding build
    (ai-edge-litert 2.3): ``RoundingDivideByPOT(SRDHM(x << left, M), right)``."""
    left, right = max(shift, 0), max(-shift, 0)
    return _rounding_divide_by_pot(_srdhm(_wrap32(np.asarray(x, np.int64) << left), multiplier), right)


def tflite_leaky_relu_table(x_qp: QParams, y_qp: QParams, alpha: float) -> np.ndarray:
    """``reference_ops::QuantizeLeakyRelu`` on every input code, indexed by ``code - min``:
    multipliers ``QuantizeMultiplier(f32(f32(s_in * alpha) / s_out))`` and ``f32(s_in / s_out)``
    (LeakyReluPrepare evaluates the ratios in float), then ``z_out + MBQM(x - z_in, ...)``."""
    info = np.iinfo(np.dtype(storage_dtype(x_qp.dtype)))
    out_info = np.iinfo(np.dtype(storage_dtype(y_qp.dtype)))
    s_in, s_out = _f32(x_qp.scale[0]), _f32(y_qp.scale[0])
    m_a, e_a = mul.tflite_quantize_multiplier(float(_f32(_f32(s_in * _f32(alpha)) / s_out)))
    m_i, e_i = mul.tflite_quantize_multiplier(float(_f32(s_in / s_out)))
    codes = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
    v = codes - int(x_qp.zero_point[0])
    y = np.where(v >= 0, mbqm(v, m_i, e_i), mbqm(v, m_a, e_a)) + int(y_qp.zero_point[0])
    return np.clip(y, out_info.min, out_info.max).astype(storage_dtype(y_qp.dtype))


def xnnpack_leaky_relu_table(x_qp: QParams, y_qp: QParams, alpha: float) -> np.ndarray | None:
    """XNNPACK qs8/qu8 leaky ReLU on every input code (measured exhaustively against LiteRT's
    default interpreter): ``M = lrintf(256 * scale)`` with ``scale = f32(s_in / s_out)``, times
    ``alpha`` in float32 below the zero point, ``((x - z_in) * M + (z_out << 8) + 128) >> 8``,
    clamped. None where XNNPACK refuses the scales (TFLite's kernel runs then)."""
    pos = _f32(_f32(x_qp.scale[0]) / _f32(y_qp.scale[0]))
    neg = _f32(pos * _f32(alpha))
    if not (2.0 ** -8 <= pos <= 2.0 ** 7) or not (-float.fromhex("0x1.FFFCp+6") <= neg <= 2.0 ** 7) \
            or abs(float(neg)) < 2.0 ** -8:
        return None
    m_pos, m_neg = (int(np.rint(256.0 * float(v))) for v in (pos, neg))
    info = np.iinfo(np.dtype(storage_dtype(x_qp.dtype)))
    out_info = np.iinfo(np.dtype(storage_dtype(y_qp.dtype)))
    v = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64) - int(x_qp.zero_point[0])
    y = (v * np.where(v >= 0, m_pos, m_neg) + (int(y_qp.zero_point[0]) << 8) + 128) >> 8
    return np.clip(y, out_info.min, out_info.max).astype(storage_dtype(y_qp.dtype))


# LiteRT's ``sigmoid_table_uint16`` (sigmoid(i / 24) in Q0.16, internal/common.h): the data of its
# int16 LOGISTIC and TANH kernels, copied as is (it is not exactly reproducible from a formula).
SIGMOID_TABLE_UINT16 = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498,
    40149, 40794, 41432, 42064, 42688, 43304, 43912, 44511, 45102, 45683, 46255,
    46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409, 51865,
    52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174,
    56503, 56823, 57133, 57433, 57724, 58007, 58280, 58544, 58800, 59048, 59288,
    59519, 59743, 59959, 60168, 60370, 60565, 60753, 60935, 61110, 61279, 61441,
    61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666, 62778, 62886,
    62990, 63090, 63186, 63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835,
    63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308, 64357, 64405, 64450,
    64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786, 64816, 64845,
    64873, 64900, 64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079, 65097,
    65115, 65132, 65149, 65164, 65179, 65194, 65208, 65221, 65234, 65246, 65258,
    65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360,
    65367, 65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425,
    65429, 65433, 65438, 65442, 65445, 65449, 65453, 65456, 65459, 65462, 65465,
    65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491,
    65493, 65495, 65497, 65498, 65500, 65501, 65503, 65504, 65505, 65507, 65508,
    65509, 65510, 65511, 65512, 65513, 65514, 65515, 65516, 65517, 65517, 65518,
    65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524, 65525,
    65525, 65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529,
    65529, 65529, 65530, 65530, 65530, 65530, 65531, 65531, 65531, 65531, 65531,
    65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533, 65533, 65533,
    65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534,
    65534, 65534, 65535], np.int64)


def _checked_log2(scale: float) -> tuple[bool, int]:
    """``CheckedLog2``: (within 1e-3 of a power of two, the rounded log2)."""
    x_log2 = float(_f32(_f32(np.log(np.float32(scale))) * _f32(1.0 / np.log(2.0))))
    rounded = float(np.sign(x_log2) * np.floor(abs(x_log2) + 0.5))
    return abs(x_log2 - rounded) < 1e-3, int(rounded)


def tflite_sigmoid_tanh_int16_table(kind: str, input_scale: float) -> tuple[np.ndarray, bool]:
    """LiteRT's int16 LOGISTIC (``kind='sigmoid'``) or TANH (``'tanh'``) on every input code
    (``reference_integer_ops::Logistic``/``Tanh`` with SigmoidPrepare/TanhPrepare's multiplier:
    ``3 << shift`` for power-of-two input scales, else ``int(s_in * 4096 * 3 * 2**shift)`` with the
    smallest shift that exceeds 16383.5), indexed by ``code + 32768``. Also returns whether the
    power-of-two case applies (the optimized build then runs another kernel)."""
    pot, log2 = _checked_log2(input_scale)
    shift = 12 + log2
    pot = pot and (shift == 0 or (kind == "tanh" and shift == 1))
    if pot:
        mult, shift = 3 << shift, 0
    else:
        mult_f, shift = float(np.float32(input_scale)) * 4096.0 * 3.0, 0
        while mult_f <= 32767.0 / 2.0 and shift <= 30:
            shift += 1
            mult_f *= 2.0
        mult = int(mult_f)
    x = np.arange(-32768, 32768, dtype=np.int64)
    rnd = (1 << (shift - 1)) if shift > 0 else 0
    v = (x * mult + rnd) >> shift
    a = np.abs(v)
    t = SIGMOID_TABLE_UINT16
    if kind == "sigmoid":
        uh = a >> 9
        inside = uh < 255
        ua = t[np.minimum(uh, 254)]
        ub = t[np.minimum(uh, 254) + 1]
        res = np.where(inside, (ua << 9) + (a & 0x1FF) * (ub - ua), 0x7FFF << 10)
        res = np.where(v >= 0, res + (1 << 9), (1 << 25) - res + (1 << 9) - 1) >> 10
    else:
        uh = a >> 8
        inside = uh < 255
        ua = t[np.minimum(uh, 254)]
        ub = t[np.minimum(uh, 254) + 1]
        res = np.where(inside, (ua << 8) + (a & 0xFF) * (ub - ua), 0xFFFF << 8)
        res = np.where(v >= 0, res - (1 << 23) + (1 << 7), -res + (1 << 23) + (1 << 7) - 1) >> 8
    return ((res + (1 << 15)) % (1 << 16) - (1 << 15)).astype(np.int16), pot


def tflite_activation_range(qp: QParams, clamp) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized``: bounds ``z + round_half_away(f32(v / s))``."""
    lo, hi = qp.qmin, qp.qmax
    if clamp is None:
        return lo, hi

    def q(v):
        r = float(_f32(_f32(v) / _f32(qp.scale[0])))
        return int(np.sign(r) * np.floor(abs(r) + 0.5)) + int(qp.zero_point[0])

    if clamp[0] is not None:
        lo = max(lo, q(clamp[0]))
    if clamp[1] is not None:
        hi = min(hi, q(clamp[1]))
    return lo, hi


def lut_populate_int16(transform, input_scale: float, input_zero_point: int, output_scale: float,
                       output_zero_point: int) -> np.ndarray:
    """``LUTPopulateInt16<double>``: 512 segments over the int16 input range, each entry the
    rounded sample minus half its midpoint interpolation error, plus the end point (513)."""
    i16min, i16max = -32768, 32767
    input_min = input_scale * (i16min - input_zero_point)
    input_max = input_scale * (i16max - input_zero_point)
    output_min = output_scale * (i16min - output_zero_point)
    output_max = output_scale * (i16max - output_zero_point)
    nb_steps = 512
    step = (input_max - input_min) / nb_steps
    half_step = step / 2
    scaling_inv = float(i16max - i16min + 1) / (output_max - output_min)

    def rnd(v: float) -> float:   # std::round: half away from zero
        return float(np.sign(v) * np.floor(abs(v) + 0.5))

    lut = np.empty(nb_steps + 1, np.int16)
    for i in range(nb_steps):
        val = transform(input_min + i * step)
        val_mid = transform(input_min + i * step + half_step)
        val_next = transform(input_min + (i + 1) * step)
        sample = rnd(val * scaling_inv)
        mid_interp = rnd((val_next * scaling_inv + rnd(val * scaling_inv)) / 2)
        mid_val = rnd(val_mid * scaling_inv)
        bias = rnd((mid_interp - mid_val) / 2)
        lut[i] = int(min(max(sample - bias, i16min), i16max))
    lut[nb_steps] = int(min(max(rnd(transform(input_max) * scaling_inv), i16min), i16max))
    return lut


def tflite_softmax_int16_params(input_scale: float, beta: float) -> dict:
    """SoftmaxPrepare for int16: the two tables (double ``LUTPopulate``) and the Q31 multiplier of
    ``f32(s_in * beta) / (10 / 65535)``."""
    rng = 65535
    exp_lut = lut_populate_int16(lambda v: float(np.exp(v)), 10.0 / rng, 32767, 2.0 / rng, 0)
    recip_lut = lut_populate_int16(lambda v: 1.0 / (1.0 + v), 1.0 / rng, -32768, 2.0 / rng, 0)
    real = float(_f32(_f32(input_scale) * _f32(beta))) / (10.0 / 65535.0)
    m, e = mul.tflite_quantize_multiplier(real)
    return {"exp_lut": exp_lut, "one_over_one_plus_x_lut": recip_lut, "input_multiplier": int(m),
                "input_shift": int(e)}


class Tflite16Lowering(RecurrentLowering):
    """``lower_tflite16(node) -> bool``: lowers ``node`` with LiteRT's arithmetic when it is one
    of the kernels this module covers (see the module docstring), else returns False."""

    def lower_tflite16(self, node) -> bool:
        op = node.op
        x = self.t(node.inputs[0]) if node.inputs else None
        x_dtype = x.qparams.dtype if x is not None and x.qparams is not None else None
        if op in ("Conv", "Gemm") and x_dtype in _INT16 and not node.attrs.get("integer_output"):
            self._conv_16x8(node, "conv" if op == "Conv" else "gemm")
            return True
        if op in ("Add", "Sub") and x_dtype in _INT16:
            self._add_sub_16(node)
            return True
        if op == "LeakyRelu":
            self._leaky_relu(node)
            return True
        if op == "Mul" and x_dtype in _INT16:
            self._mul_16(node)
            return True
        if op == "Mul" and x_dtype in ("int8", "uint8") and (
                self._mul_exponent(node) > 30
                or (self._tfl() == "xnnpack" and not self._xnnpack_takes_mul(node))):
            self._mul_tflite_kernel(node)
            return True
        if op in ("Logistic", "Tanh") and x_dtype in _INT16:
            self._sigmoid_tanh_16(node)
            return True
        if op == "Softmax" and x_dtype in _INT16:
            self._softmax_int16(node)
            return True
        if op == "Mean" and x_dtype in _INT16 and self._tfl() == "xnnpack":
            # XNNPACK takes no int16 MEAN: TFLite's kernel runs, the reference's arithmetic
            self._mean_reference(node)
            return True
        if op == "Rescale" and node.attrs.get("tflite_op") == "QUANTIZE" \
                and "int16" in (x_dtype, self.t(node.outputs[0]).qparams.dtype):
            self._requantize(node)
            return True
        return False

    # ------------------------------------------------------------------ 16x8 conv / FC
    def _conv_16x8(self, node, kind: str) -> None:
        from mrq.lower import _Lowerer  # the generic conv lowering this refines
        x, w, y = self.t(node.inputs[0]), self.t(node.inputs[1]), self.t(node.outputs[0])
        n_out = w.data.shape[0] if kind == "conv" else w.data.shape[1]
        w_scale = np.broadcast_to(w.qparams.scale, (n_out,)).astype(np.float64)
        real = np.float64(x.qparams.scale[0]) * w_scale / np.float64(y.qparams.scale[0])
        if kind == "gemm":
            # FULLY_CONNECTED keeps the whole Q31 multiplier: (acc * M + 2**(t-1)) >> t with
            # t = 31 - exponent (measured: the reduced 15-bit form misses outputs there)
            m, s = mul.tflite_multipliers(real)
        else:
            m, s = tflite_16x8_multipliers(real)
        lo, hi = tflite_activation_range(y.qparams, node.attrs.get("clamp"))
        saved_clips = list(self._clips)
        _Lowerer._conv_like(self, node, kind, acc_bits=64, acc_overflow="wrap", rq_mode="fixed",
                            rq_multiplier=m, rq_shift=s, rq_rounding="half_up",
                            out_min=lo, out_max=hi)
        self._clips = saved_clips   # the profile's own encoding was replaced, not clipped

    # ------------------------------------------------------------------ ADD / SUB
    def _add_sub_16(self, node) -> None:
        qs = [self.t(n).qparams for n in list(node.inputs) + list(node.outputs)]
        if not all(q.dtype == "int16" for q in qs):
            raise UnsupportedOpError(node.op, node.name, "int16 inputs need an int16 output")
        if node.attrs.get("pot_scale_int16") and all(mul.is_pow2(q.scale) for q in qs):
            raise UnsupportedOpError(node.op, node.name, "LiteRT's power-of-two int16 path "
                                     "(pot_scale_int16 with power-of-two scales) is not modelled")
        # the optimized int16 kernel rounds the inputs' multiply once (measured, 0 of 370k
        # elements differ; the gemmlowp form differs on ~4 in 100k)
        single = self._tfl() == "xnnpack" and node.op == "Add"
        self._tflite_add_sub(node, left_shift=15, input_rounding="single" if single else "double")

    def _tflite_add_sub(self, node, left_shift: int, input_rounding: str = "double") -> None:
        """TFLite's general quantized ADD/SUB (Prepare: ``twice_max = 2 * max(s_a, s_b)``,
        ``QuantizeMultiplierSmallerThanOneExp`` of ``s_a / twice_max``, ``s_b / twice_max`` and
        ``twice_max / (2**left_shift * s_out)``; SUB negates the second multiplier)."""
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        sa, sb, sy = (float(_f32(q.scale[0])) for q in (qa, qb, qy))
        twice_max = 2.0 * max(sa, sb)
        ma, ea = mul.tflite_quantize_multiplier(sa / twice_max)
        mb, eb = mul.tflite_quantize_multiplier(sb / twice_max)
        mo, eo = mul.tflite_quantize_multiplier(twice_max / ((1 << left_shift) * sy))
        lo, hi = tflite_activation_range(qy, node.attrs.get("clamp"))
        self.emit("add_sub_tflite", node, [a, b], node.outputs, subtract=node.op == "Sub",
                  left_shift=left_shift, multiplier_a=ma, shift_a=ea, multiplier_b=mb,
                  shift_b=eb, multiplier_out=mo, shift_out=eo, zero_point_a=int(qa.zero_point[0]),
                  zero_point_b=int(qb.zero_point[0]), out_zero_point=int(qy.zero_point[0]),
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(qy.dtype),
                  input_rounding=input_rounding, rq_rounding="half_away")

    def _Sub(self, node):
        if self._tfl() is None:
            if self.a.add == "fixed":   # the add datapath with the second operand negated
                return self._Add(node)
            if self.a.runtime == "onnxruntime":   # no QDQ Sub fusion: DQ -> float Sub -> Q
                return self._ort_float_sub(node)
            raise UnsupportedOpError("Sub", node.name, f"profile {self.a.name!r} has no "
                                     f"subtraction arithmetic (LiteRT profiles and ops.add fixed do)")
        if self.t(node.inputs[0]).qparams.dtype == "int16":
            self._add_sub_16(node)
        elif not (self._tfl() == "xnnpack" and self._xnnpack_add(node, subtract=True)):
            self._tflite_add_sub(node, left_shift=20)

    def _ort_float_sub(self, node) -> None:
        """The steps of the float island ``Dequantize, Dequantize -> FloatBinary Sub -> Quantize``
        that the same QDQ Sub imported as floats would lower to (mrq/lower_float.py)."""
        reals = []
        for i, name in enumerate(node.inputs[:2]):
            qp = self.t(name).qparams
            reals.append(f"{node.outputs[0]}__real{i}")
            self.emit("dequantize", node, [self.ensure_buffer(name, node)], [reals[-1]],
                      suffix=f"/dequantize{i}", scale=qp.scale.astype(np.float32),
                      zero_point=qp.zero_point.astype(np.int64), axis=1)
        diff, y_qp = f"{node.outputs[0]}__float", self.t(node.outputs[0]).qparams
        self.emit("float_binary", node, reals, [diff], suffix="/sub", op="Sub")
        lo, hi = self.out_range(y_qp, node.attrs.get("clamp"))
        self.emit("quantize", node, [diff], node.outputs, scale=y_qp.scale.astype(np.float32),
                  zero_point=y_qp.zero_point.astype(np.int64), axis=1,
                  rounding=self.a.quantize_rounding, method=self.a.quantize_method,
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(y_qp.dtype))

    def _mul_16(self, node) -> None:
        """int16 MUL (``reference_integer_ops::MulElementwise``, both builds): ``MBQM((a - za) *
        (b - zb), M, shift)`` with the gemmlowp double rounding, Q31 multiplier of the double
        ``s_a * s_b / s_out``."""
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        real = np.array([float(qa.scale[0]) * float(qb.scale[0]) / float(qy.scale[0])])
        m, s = mul.tflite_multipliers(real)
        lo, hi = tflite_activation_range(qy, node.attrs.get("clamp"))
        self.emit("mul", node, [a, b], node.outputs, zero_point_a=int(qa.zero_point[0]),
                  zero_point_b=int(qb.zero_point[0]), rq_mode="double_q31", rq_multiplier=m,
                  rq_shift=s, rq_rounding="half_away", out_zero_point=int(qy.zero_point[0]),
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(qy.dtype), channel_axis=-1)

    # ------------------------------------------------------------------ MUL, shift > 30
    def _mul_exponent(self, node) -> int:
        qa, qb, qy = (self.t(n).qparams for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
        if qa is None or qb is None or qy is None:
            return 0
        real = float(qa.scale[0]) * float(qb.scale[0]) / float(qy.scale[0])
        return mul.tflite_quantize_multiplier(real)[1]

    def _xnnpack_takes_mul(self, node) -> bool:
        """The XNNPACK delegate's MUL check: ``f32(f32(s_a * s_b) / s_out)`` in [2**-16, 256);
        outside it LiteRT's own (optimized) kernel runs the node."""
        qa, qb, qy = (self.t(n).qparams for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
        ratio = _f32(_f32(_f32(qa.scale[0]) * _f32(qb.scale[0])) / _f32(qy.scale[0]))
        return 2.0 ** -16 <= float(ratio) < 256.0

    def _mul_tflite_kernel(self, node) -> None:
        """8-bit MUL on LiteRT's own kernels: the reference, and the optimized one where XNNPACK
        refuses the scales. ``MBQM(x, M, shift)`` (double rounding) computes ``x * (1 << shift)``
        in int32, wrapping. A shift beyond 30 (degenerate output scales, e.g. 1e-35 in Coral's
        traffic_model): the reference kernel's scalar ``shl`` takes the count modulo 32; the
        optimized kernel's vectorised loop shifts by a per-lane count, which yields 0 for counts
        of 32 and more, and its scalar tail (the last ``size mod 8`` uint8 / ``size mod 16`` int8
        elements) is the reference again (measured on ai-edge-litert 2.3): only whole vector
        blocks are modelled there."""
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        real = np.array([float(qa.scale[0]) * float(qb.scale[0]) / float(qy.scale[0])])
        m, e = mul.tflite_quantize_multiplier(float(real[0]))
        if self._tfl() == "xnnpack" and e > 30:
            shapes = [tuple(self.t(n).shape[1:]) for n in (a, b, node.outputs[0])]
            size = int(np.prod(shapes[2])) if all(d is not None for d in shapes[2]) else 0
            width = 8 if qy.dtype == "uint8" else 16
            if len(set(shapes)) != 1 or size == 0 or size % width:
                raise UnsupportedOpError(node.op, node.name, f"multiplier 2**{e} (left shift beyond "
                                         f"30) on LiteRT's optimized kernel: only an elementwise "
                                         f"MUL of a multiple of {width} elements is modelled")
            m = 0
            e = 0
        lo, hi = tflite_activation_range(qy, node.attrs.get("clamp"))
        self.emit("mul", node, [a, b], node.outputs, zero_point_a=int(qa.zero_point[0]),
                  zero_point_b=int(qb.zero_point[0]), rq_mode="double_q31",
                  rq_multiplier=np.array([m], np.int64),
                  rq_shift=np.array([31 - (e % 32 if e > 30 else e)], np.int64),
                  rq_rounding="half_away", out_zero_point=int(qy.zero_point[0]),
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(qy.dtype), channel_axis=-1)

    # ------------------------------------------------------------------ TRANSPOSE_CONV
    def _TransposeConv(self, node):
        if self.a.runtime == "onnxruntime" and node.attrs.get("layout") == "NCHW":
            return self._ort_transpose_conv(node)   # ORT's float kernel (mrq/lower_islands.py)
        x, w, y = self.t(node.inputs[0]), self.t(node.inputs[1]), self.t(node.outputs[0])
        x_qp, w_qp, y_qp = x.qparams, w.qparams, y.qparams
        n_out = w.data.shape[0]
        w_scale = np.broadcast_to(w_qp.scale, (n_out,)).astype(np.float64)
        real = np.float64(x_qp.scale[0]) * w_scale / np.float64(y_qp.scale[0])
        clamp = node.attrs.get("clamp")
        flavour = self._tfl()
        if flavour is not None and x_qp.dtype == "int16":
            m, s = tflite_16x8_multipliers(real)
            lo, hi = tflite_activation_range(y_qp, clamp)
            block = {"acc_bits": 64, "acc_overflow": "wrap", "rq_mode": "fixed", "rq_multiplier": m,
                         "rq_shift": s, "rq_rounding": "half_up", "out_min": lo, "out_max": hi,
                         "out_zero_point": 0, "out_dtype": "int16"}
        elif flavour == "ref":
            m, s = mul.tflite_multipliers(real)
            lo, hi = tflite_activation_range(y_qp, clamp)
            block = {"acc_bits": 32, "acc_overflow": "wrap", "rq_mode": "double_q31", "rq_multiplier": m,
                         "rq_shift": s, "rq_rounding": "half_away", "out_min": lo, "out_max": hi,
                         "out_zero_point": int(y_qp.zero_point[0]),
                         "out_dtype": storage_dtype(y_qp.dtype)}
        else:
            ort = mul.ort_multiplier(x_qp.scale[0], w_scale.astype(np.float32), y_qp.scale[0])
            self.xnn_bounds = flavour == "xnnpack"
            try:
                block = dict(self.acc_block(), **self.requant_block(real, y_qp, clamp, 3, ort))
            finally:
                self.xnn_bounds = False
        block["channel_axis"] = 3 if node.attrs.get("layout", "NHWC") == "NHWC" else 1
        bias = (np.zeros(n_out, np.int64) if len(node.inputs) < 3
                else self._bias_codes(node, x_qp, w_qp, n_out))
        wzp = np.broadcast_to(w_qp.zero_point, (n_out,))
        weight = w.data.astype(storage_dtype(w_qp.dtype))
        if np.any(wzp != 0):
            if flavour is not None:
                raise UnsupportedOpError("TransposeConv", node.name, "weights with a zero point")
            # uint8 ONNX weights: the kernel takes the shifted codes (9 bits) as they are
            weight = (weight.astype(np.int64) - wzp.reshape(-1, 1, 1, 1)).astype(np.int16)
        self.emit("transpose_conv", node, node.inputs[:1], node.outputs,
                  weight=np.ascontiguousarray(weight),
                  bias=bias, input_zero_point=int(x_qp.zero_point[0]),
                  strides=tuple(node.attrs["strides"]), pads=tuple(node.attrs["pads"]),
                  output_size=tuple(node.attrs["output_size"]),
                  layout=node.attrs.get("layout", "NHWC"), **block)

    # ------------------------------------------------------------------ LEAKY_RELU
    def _leaky_relu(self, node) -> None:
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        if x_qp.dtype != y_qp.dtype or x_qp.dtype not in ("int8", "uint8", "int16"):
            raise UnsupportedOpError("LeakyRelu", node.name,
                                     "input and output must share one of int8, uint8, int16")
        alpha = float(node.attrs.get("alpha", 0.01))
        table = None
        if self._tfl() == "xnnpack" and x_qp.dtype in ("int8", "uint8"):
            table = xnnpack_leaky_relu_table(x_qp, y_qp, alpha)
        if table is None:
            table = tflite_leaky_relu_table(x_qp, y_qp, alpha)
        kind = "lut16" if x_qp.dtype == "int16" else "lut"
        self.emit(kind, node, node.inputs, node.outputs, table=table,
                  out_dtype=storage_dtype(y_qp.dtype))

    # ------------------------------------------------------------------ QUANTIZE (Requantize)
    def _requantize(self, node) -> None:
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        m, s = mul.tflite_multipliers(np.array([float(x_qp.scale[0]) / float(y_qp.scale[0])]))
        out_dtype = storage_dtype(y_qp.dtype)
        info = np.iinfo(np.dtype(out_dtype))
        self.emit("rescale", node, node.inputs, node.outputs, rq_mode="double_q31",
                  rq_multiplier=m, rq_shift=s, rq_rounding="half_away",
                  input_zero_point=int(x_qp.zero_point[0]), out_zero_point=int(y_qp.zero_point[0]),
                  out_min=int(info.min), out_max=int(info.max), out_dtype=out_dtype,
                  channel_axis=-1)

    # ------------------------------------------------------------------ SOFTMAX int16
    def _softmax_int16(self, node) -> None:
        x = self.t(node.inputs[0])
        y_qp = self.t(node.outputs[0]).qparams
        axis = node.attrs.get("axis", -1)
        if axis not in (-1, len(x.shape) - 1) or y_qp.dtype != "int16":
            raise UnsupportedOpError("Softmax", node.name, "int16 softmax runs along the last axis "
                                     "into an int16 output")
        self.emit("softmax_int16", node, node.inputs, node.outputs,
                  **tflite_softmax_int16_params(float(x.qparams.scale[0]),
                                                float(node.attrs.get("beta", 1.0))))

    # ------------------------------------------------------------------ LOGISTIC / TANH int16
    def _sigmoid_tanh_16(self, node) -> None:
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        if y_qp.dtype != "int16" or not np.isclose(float(y_qp.scale[0]), 2.0 ** -15, rtol=1e-6):
            raise UnsupportedOpError(node.op, node.name, "int16 input needs an int16 output on "
                                     "scale 1/32768 (as LiteRT requires)")
        kind = "sigmoid" if node.op == "Logistic" else "tanh"
        table, pot = tflite_sigmoid_tanh_int16_table(kind, float(x_qp.scale[0]))
        if pot and self._tfl() == "xnnpack":
            raise UnsupportedOpError(node.op, node.name, "a power-of-two input scale runs "
                                     "LiteRT's optimized gemmlowp kernel, which is not modelled")
        self.emit("lut16", node, node.inputs, node.outputs, table=table, out_dtype="int16")

    # ------------------------------------------------------------------ MEAN int16
    def _mean_reference(self, node) -> None:
        from mrq.lower_extra import tflite_mean_params
        x = self.t(node.inputs[0])
        x_qp, y_qp = x.qparams, self.t(node.outputs[0]).qparams
        axes = tuple(int(a) for a in node.attrs["axes"])
        dims = [x.shape[a] for a in axes]
        if any(d is None for d in dims):
            raise UnsupportedOpError("Mean", node.name, f"needs static sizes of the reduced axes {axes}")
        m, e = tflite_mean_params(x_qp, y_qp, int(np.prod(dims)))
        self.emit("mean", node, node.inputs, node.outputs, mode="tflite", axes=axes,
                  keep_dims=bool(node.attrs.get("keep_dims", False)), out_dtype="int16",
                  input_zero_point=0, multiplier=m, shift=e, out_zero_point=0,
                  out_min=y_qp.qmin, out_max=y_qp.qmax)
