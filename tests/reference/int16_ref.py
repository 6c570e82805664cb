"""Numpy reference of LiteRT's 16x8 kernels and the other kernels of mrq/lower_tflite16.py.

Independent of ``mrq`` and ``simulator`` (it imports neither): plain numpy/Python integer
arithmetic written from the TFLite sources (``reference_integer_ops::ConvPerChannel`` /
``DepthwiseConvPerChannel`` / ``FullyConnected`` / ``TransposeConv`` for int16,
``reference_ops::Add``/``Sub``/``QuantizeLeakyRelu``/``Requantize``/``SoftmaxInt16``) with every
C++ int32/int64 behaviour stated explicitly. Each op function takes the tensors' codes and
scales and derives its parameters itself, as the kernels' Prepare does.
"""
from __future__ import annotations

import math

import numpy as np

from tests.reference import tflite_ref as T


# =============================================================================================
# TFLite fixed point
# =============================================================================================
def quantize_multiplier(real: float) -> tuple[int, int]:
    """``QuantizeMultiplier``: (Q31 mantissa, exponent) from ``frexp``, mantissa rounded half
    away from zero, 2**31 folded back."""
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    m = math.floor(abs(q) * (1 << 31) + 0.5) * (1 if q >= 0 else -1)
    if m == 1 << 31:
        m //= 2
        e += 1
    if e < -31:
        return 0, 0
    return m, e


def wrap(x, bits: int):
    """Two's-complement wrap of int64 values to ``bits``."""
    x = np.asarray(x, np.int64)
    if bits >= 64:
        return x
    half = np.int64(1) << (bits - 1)
    return ((x + half) & ((np.int64(1) << bits) - 1)) - half


def _c_shift_div(v, bits):
    """C truncating division of int64 ``v`` by ``2**bits``."""
    return np.where(v >= 0, v >> bits, -((-v) >> bits))


def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul (int32 values in int64 arrays)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    v = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    return np.where((a == -(1 << 31)) & (b == -(1 << 31)), np.int64((1 << 31) - 1),
                    _c_shift_div(v, 31))


def rdbpot(x, e):
    """gemmlowp RoundingDivideByPOT (half away from zero)."""
    x = np.asarray(x, np.int64)
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    return (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0)))


def mbqm32(x, m, shift):
    """int32 ``MultiplyByQuantizedMultiplier`` (gemmlowp double rounding); ``m`` may be
    negative (SUB's negated multiplier)."""
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rdbpot(srdhm(wrap(np.asarray(x, np.int64) << left, 32), m), right)


def mbqm_single(x, m, shift):
    """One rounding half up with the whole Q31 multiplier: ``(x * M + 2**(t-1)) >> t``,
    ``t = 31 - shift`` (FULLY_CONNECTED 16x8; the optimized int16 ADD's input scaling)."""
    t = 31 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * np.asarray(m, np.int64) + (np.int64(1) << (t - 1))) >> t


def mbqm64_reduced(x, m, shift):
    """int64 ``MultiplyByQuantizedMultiplier`` of the 16x8 conv kernels: the multiplier reduced
    to 15 bits, one rounding half up, the result truncated to int32."""
    m = np.asarray(m, np.int64)
    mr = np.where(m >= 0x7FFF0000, np.int64(0x7FFF), (m + (1 << 15)) >> 16)
    t = 15 - np.asarray(shift, np.int64)
    return wrap((np.asarray(x, np.int64) * mr + (np.int64(1) << (t - 1))) >> t, 32)


# =============================================================================================
# LUT-based int16 kernels
# =============================================================================================
def lut_populate_int16(fn, input_scale, input_zp, output_scale, output_zp):
    """``LUTPopulateInt16<double>``: 513 entries over 512 equal segments of the int16 input
    range, each the rounded sample minus half the rounded midpoint interpolation error."""
    def rnd(v):
        return math.copysign(math.floor(abs(v) + 0.5), v)

    in_min, in_max = input_scale * (-32768 - input_zp), input_scale * (32767 - input_zp)
    out_min, out_max = output_scale * (-32768 - output_zp), output_scale * (32767 - output_zp)
    step = (in_max - in_min) / 512
    inv = 65536.0 / (out_max - out_min)
    lut = []
    for i in range(512):
        v, v_mid, v_next = (fn(in_min + i * step), fn(in_min + i * step + step / 2),
                            fn(in_min + (i + 1) * step))
        err = rnd((v_next * inv + rnd(v * inv)) / 2) - rnd(v_mid * inv)
        lut.append(min(max(rnd(v * inv) - rnd(err / 2), -32768), 32767))
    lut.append(min(max(rnd(fn(in_max) * inv), -32768), 32767))
    return np.array(lut, np.int64)


def lut_lookup(value, lut):
    """``LUTLookup`` of int16 values: base entry ``256 + (v >> 7)`` plus the interpolated slope
    ``(slope * (v & 127) + 64) >> 7``, as int16."""
    v = np.asarray(value, np.int64)
    idx = 256 + (v >> 7)
    base = lut[idx]
    return wrap(base + (((lut[idx + 1] - base) * (v & 0x7F) + 64) >> 7), 16)


def softmax_int16(x, input_scale, beta):
    """``reference_ops::SoftmaxInt16`` along the last axis (output scale 1/32768)."""
    exp_lut = lut_populate_int16(math.exp, 10.0 / 65535, 32767, 2.0 / 65535, 0)
    recip_lut = lut_populate_int16(lambda v: 1.0 / (1.0 + v), 1.0 / 65535, -32768, 2.0 / 65535, 0)
    m, e = quantize_multiplier(float(np.float32(np.float32(input_scale) * np.float32(beta)))
                               / (10.0 / 65535.0))
    x = np.asarray(x, np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    exps = lut_lookup(np.clip(mbqm32(diff, m, e) + 32767, -32768, 32767), exp_lut)
    total = exps.sum(axis=-1, keepdims=True)
    clz = np.array([32 - int(t).bit_length() for t in total.reshape(-1)], np.int64).reshape(total.shape)
    shifted = ((total << (clz - 1)) + (1 << 13)) >> 14
    recip = lut_lookup(np.clip(shifted - ((1 << 15) + (1 << 16)), -32768, 32767), recip_lut)
    right = 31 - clz
    return np.clip((exps * recip + (np.int64(1) << (right - 1))) >> right, 0, 32767)


# =============================================================================================
# The interpreter: tflite_ref's, with the int16 kernels and TRANSPOSE_CONV, SUB, LEAKY_RELU
# =============================================================================================
class Interpreter(T.Interpreter):
    """``tests.reference.tflite_ref.Interpreter`` (flavour 'ref' or 'xnnpack') with LiteRT's
    int16 kernels, which both builds run (XNNPACK takes none of them)."""

    def _act16(self, act, t):
        return T.act_range_ref(act, t["scale"][0], t["zp"][0], t["dtype"])

    def _multipliers(self, ti, tw, to):
        return [quantize_multiplier(float(ti["scale"][0]) * float(s) / float(to["scale"][0]))
                for s in tw["scale"]]

    def _requant16(self, acc, ti, tw, to, act, fn):
        ms = self._multipliers(ti, tw, to)
        m = np.array([v for v, _ in ms], np.int64)
        e = np.array([v for _, v in ms], np.int64)
        lo, hi = self._act16(act, to)
        return np.clip(fn(acc, m, e), lo, hi)

    def _conv(self, op, x, w, b, depthwise):
        if x.dtype != np.int16:
            return super()._conv(op, x, w, b, depthwise)
        o = T._options(op["op"], "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
        ti, tw, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        n, h, wd, c = x.shape
        m, kh, kw = (w.shape[3], w.shape[1], w.shape[2]) if depthwise else w.shape[:3]
        oh, ow, pads = T._geometry(h, wd, kh, kw, o.StrideH(), o.StrideW(), o.DilationHFactor(),
                                   o.DilationWFactor(), o.Padding())
        p = T._patches(x.astype(np.int64), kh, kw, o.StrideH(), o.StrideW(), o.DilationHFactor(),
                       o.DilationWFactor(), pads, oh, ow, 0)
        wv = w.astype(np.int64)
        if depthwise:
            acc = np.einsum("nyxijc,ijcd->nyxcd", p, wv.reshape(kh, kw, c, m // c)).reshape(n, oh, ow, m)
        else:
            acc = np.einsum("nyxijc,mijc->nyxm", p, wv)
        if b is not None:
            acc = acc + b.astype(np.int64)     # int64 accumulator and bias: no wrap
        return self._requant16(acc, ti, tw, to, o.FusedActivationFunction(), mbqm64_reduced)

    def _FULLY_CONNECTED(self, op, x, w, b=None):
        if x.dtype != np.int16:
            return super()._FULLY_CONNECTED(op, x, w, b)
        o = T._options(op["op"], "FullyConnectedOptions")
        ti, tw, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        acc = x.astype(np.int64).reshape(-1, w.shape[1]) @ w.astype(np.int64).T
        if b is not None:
            acc = acc + b.astype(np.int64)
        return self._requant16(acc, ti, tw, to, o.FusedActivationFunction(), mbqm_single)

    def _TRANSPOSE_CONV(self, op, shape, w, x, b=None):
        o = T._options(op["op"], "TransposeConvOptions")
        ti, tw, to = (self.t(i) for i in (op["inputs"][2], op["inputs"][1], op["outputs"][0]))
        _, oh, ow, m = (int(v) for v in np.asarray(shape).reshape(-1))
        _, kh, kw, _ = w.shape
        sh, sw = o.StrideH(), o.StrideW()
        if o.Padding() == 0:
            pt = max((-(-oh // sh) - 1) * sh + kh - oh, 0) // 2
            pl = max((-(-ow // sw) - 1) * sw + kw - ow, 0) // 2
        else:
            pt = pl = 0
        xv = x.astype(np.int64) - int(ti["zp"][0])
        n, h, wd, _ = x.shape
        full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, m), np.int64)
        for iy in range(h):
            for ix in range(wd):
                full[:, iy * sh: iy * sh + kh, ix * sw: ix * sw + kw, :] += np.einsum(
                    "nc,mijc->nijm", xv[:, iy, ix, :], w.astype(np.int64))
        acc = full[:, pt: pt + oh, pl: pl + ow, :]
        if x.dtype == np.int16:
            if b is not None:
                acc = acc + b.astype(np.int64)
            return self._requant16(acc, ti, tw, to, o.FusedActivationFunction(), mbqm64_reduced)
        acc = T.wrap32(acc + (0 if b is None else b.astype(np.int64)))
        return self._requant(acc, ti, tw, to, o.FusedActivationFunction(), 3)

    def _add_sub(self, op, a, b, subtract):
        o = T._options(op["op"], "SubOptions" if subtract else "AddOptions")
        ta, tb, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        if self.flavour == "xnnpack" and a.dtype != np.int16:
            # XNNPACK qs8 vsub: the vadd with the second multiplier negated
            lo, hi = self._act_range(o.FusedActivationFunction(), to)
            am, bm, shift = T.xnnpack_add_params(ta["scale"][0], tb["scale"][0], to["scale"][0])
            acc = ((a.astype(np.int64) - int(ta["zp"][0])) * am
                   - (b.astype(np.int64) - int(tb["zp"][0])) * bm)
            return np.clip(((acc + (1 << (shift - 1))) >> shift) + int(to["zp"][0]), lo, hi)
        left = 15 if a.dtype == np.int16 else 20
        sa, sb, so = (float(t["scale"][0]) for t in (ta, tb, to))
        tm = 2 * max(sa, sb)
        (ma, ea), (mb, eb) = quantize_multiplier(sa / tm), quantize_multiplier(sb / tm)
        mo, eo = quantize_multiplier(tm / ((1 << left) * so))
        if subtract:
            mb = -mb
        single = self.flavour == "xnnpack" and not subtract and a.dtype == np.int16
        scale = mbqm_single if single else mbqm32
        xa = (a.astype(np.int64) - int(ta["zp"][0])) << left
        xb = (b.astype(np.int64) - int(tb["zp"][0])) << left
        raw = mbqm32(wrap(scale(xa, ma, ea) + scale(xb, mb, eb), 32), mo, eo) + int(to["zp"][0])
        lo, hi = T.act_range_ref(o.FusedActivationFunction(), so, int(to["zp"][0]), to["dtype"])
        return np.clip(raw, lo, hi)

    def _ADD(self, op, a, b):
        if a.dtype != np.int16:
            return super()._ADD(op, a, b)
        return self._add_sub(op, a, b, False)

    def _SUB(self, op, a, b):
        return self._add_sub(op, a, b, True)

    def _MUL(self, op, a, b):
        if a.dtype != np.int16:
            return super()._MUL(op, a, b)
        o = T._options(op["op"], "MulOptions")
        ta, tb, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        m, e = quantize_multiplier(float(ta["scale"][0]) * float(tb["scale"][0]) / float(to["scale"][0]))
        lo, hi = self._act16(o.FusedActivationFunction(), to)
        return np.clip(mbqm32(a.astype(np.int64) * b.astype(np.int64), m, e), lo, hi)

    def _LEAKY_RELU(self, op, x):
        o = T._options(op["op"], "LeakyReluOptions")
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        s_in, s_out = np.float32(ti["scale"][0]), np.float32(to["scale"][0])
        info = np.iinfo(to["dtype"])
        v = x.astype(np.int64) - int(ti["zp"][0])
        pos = np.float32(s_in / s_out)
        neg = np.float32(pos * np.float32(o.Alpha()))
        if self.flavour == "xnnpack" and info.bits == 8 and 2.0 ** -8 <= pos <= 2.0 ** 7 \
                and 2.0 ** -8 <= abs(neg) <= 2.0 ** 7:
            # XNNPACK qs8 leaky ReLU: 8 fractional bits, round half up
            mult = np.where(v >= 0, int(np.rint(256.0 * float(pos))), int(np.rint(256.0 * float(neg))))
            return np.clip((v * mult + (int(to["zp"][0]) << 8) + 128) >> 8, info.min, info.max)
        ma, ea = quantize_multiplier(float(np.float32(np.float32(s_in * np.float32(o.Alpha())) / s_out)))
        mi, ei = quantize_multiplier(float(np.float32(s_in / s_out)))
        y = np.where(v >= 0, mbqm32(v, mi, ei), mbqm32(v, ma, ea)) + int(to["zp"][0])
        return np.clip(y, info.min, info.max)

    def _SOFTMAX(self, op, x):
        if x.dtype != np.int16:
            return super()._SOFTMAX(op, x)
        o = T._options(op["op"], "SoftmaxOptions")
        return softmax_int16(x, float(self.t(op["inputs"][0])["scale"][0]), float(o.Beta()))

    def _MEAN(self, op, x, axes):
        if x.dtype != np.int16:
            return super()._MEAN(op, x, axes)
        o = T._options(op["op"], "ReducerOptions")
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        return T.mean_ref(x, [int(a) for a in np.asarray(axes).reshape(-1)], bool(o.KeepDims()),
                          ti["scale"][0], int(ti["zp"][0]), to["scale"][0], int(to["zp"][0]),
                          to["dtype"])

    def _QUANTIZE(self, op, x):
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        if np.int16 not in (x.dtype, to["dtype"]) or x.dtype.kind == "f":
            return super()._QUANTIZE(op, x)
        m, e = quantize_multiplier(float(ti["scale"][0]) / float(to["scale"][0]))
        info = np.iinfo(to["dtype"])
        y = mbqm32(x.astype(np.int64) - int(ti["zp"][0]), m, e) + int(to["zp"][0])
        return np.clip(y, info.min, info.max)

    # LiteRT's sigmoid_table_uint16 (256 entries, data of its int16 LOGISTIC/TANH kernels); the
    # tests set it from the copy in mrq.lower_tflite16 and check that copy separately
    sigmoid_table = None

    def _LOGISTIC(self, op, x):
        if x.dtype != np.int16:
            return super()._LOGISTIC(op, x)
        return sigmoid_int16(x, float(self.t(op["inputs"][0])["scale"][0]), self.sigmoid_table)


def sigmoid_int16(x, input_scale: float, table) -> np.ndarray:
    """``reference_integer_ops::Logistic`` (int16) with SigmoidPrepare's input scaling, element
    by element in Python integers."""
    lg = math.log2(float(np.float32(input_scale)))
    shift = 12 + round(lg)
    if abs(lg - round(lg)) < 1e-3 and shift == 0:
        mult, shift = 3, 0
    else:
        mult_f, shift = float(np.float32(input_scale)) * 4096.0 * 3.0, 0
        while mult_f <= 32767.0 / 2.0 and shift <= 30:
            shift, mult_f = shift + 1, mult_f * 2.0
        mult = int(mult_f)
    out = []
    for code in np.asarray(x, np.int64).reshape(-1):
        v = (int(code) * mult + ((1 << (shift - 1)) if shift else 0)) >> shift
        a = abs(v)
        if a >> 9 >= 255:
            r = 0x7FFF << 10
        else:
            ua, ub = int(table[a >> 9]), int(table[(a >> 9) + 1])
            r = (ua << 9) + (a & 0x1FF) * (ub - ua)
        r = r + (1 << 9) if v >= 0 else (1 << 25) - r + (1 << 9) - 1
        out.append(r >> 10)
    return np.array(out, np.int64).reshape(np.shape(x))
