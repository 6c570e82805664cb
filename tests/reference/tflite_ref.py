"""Numpy reference of TFLite's int8 kernels, written from the TFLite/gemmlowp/XNNPACK semantics.

Independent of ``mrq`` and ``simulator`` (it imports neither): it parses .tflite flatbuffers with
the ``tflite`` package itself and runs every op with int64 numpy arithmetic that states the C++
int32 behaviour explicitly (wrap, saturate, truncating division). Two flavours:

* ``"ref"``: LiteRT ``OpResolverType.BUILTIN_REF`` (reference kernels, gemmlowp double rounding);
* ``"xnnpack"``: LiteRT's default x86 interpreter (XNNPACK delegate for what it supports, fp32
  requantization; TFLite's optimized kernels for the rest).

:func:`run_model` returns every tensor of the graph, so tests can compare intermediates. The
per-op functions are also used on their own by the kernel unit tests.
"""
from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1


# =============================================================================================
# int32 / gemmlowp fixed point on int64 arrays
# =============================================================================================
def wrap32(x):
    x = np.asarray(x, np.int64)
    return ((x + 2 ** 31) & 0xFFFFFFFF) - 2 ** 31


def c_div(a, b):
    """C integer division (truncates toward zero), elementwise, int64."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    out = c_div(ab + nudge, np.int64(1) << 31)
    overflow = (a == b) & (a == INT32_MIN)
    return np.where(overflow, INT32_MAX, out)


def rdbpot(x, exponent):
    """gemmlowp RoundingDivideByPOT: round half away from zero of x / 2**exponent."""
    x = np.asarray(x, np.int64)
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def sat_shl(x, exponent: int):
    """gemmlowp SaturatingRoundingMultiplyByPOT with a positive exponent (saturating << )."""
    x = np.asarray(x, np.int64)
    threshold = (1 << (31 - exponent)) - 1
    out = x << exponent
    out = np.where(x > threshold, INT32_MAX, out)
    return np.where(x < -threshold, INT32_MIN, out)


def mbqm(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier (double rounding), TFLite sign convention for shift
    (positive = left). ``x`` is wrapped to int32 as the C++ int32 argument is."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbpot(srdhm(wrap32(wrap32(x) << left), multiplier), right)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier (double in, Q31 mantissa rounded half away, exponent)."""
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    qf = int(math.floor(abs(q) * 2 ** 31 + 0.5)) * (1 if q >= 0 else -1)
    if qf == 2 ** 31:
        qf //= 2
        e += 1
    if e < -31:
        return 0, 0
    return qf, e


def round_half_away(x):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def f32(x):
    with np.errstate(over="ignore"):   # float overflow to inf, as in C
        return np.asarray(x, np.float64).astype(np.float32)


# ---- gemmlowp transcendental functions (FixedPoint<int32, k>) -------------------------------
def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    """exp(a) for a in [-1/4, 0), a and result in Q0.31."""
    constant_term = 1895147668          # exp(-1/8) in Q0.31
    constant_1_over_3 = 715827883
    x = wrap32(a + (1 << 28))           # a + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rdbpot(x4, 2)
    poly = rdbpot(wrap32(srdhm(wrap32(x4_over_4 + x3), constant_1_over_3) + x2), 1)
    return wrap32(constant_term + srdhm(constant_term, wrap32(x + poly)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a, integer_bits: int):
    """gemmlowp exp_on_negative_values: ``a`` raw Q(integer_bits).(31-integer_bits) <= 0, result
    raw Q0.31."""
    a = np.asarray(a, np.int64)
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    mask = one_quarter - 1
    a_mod = wrap32((a & mask) - one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(sat_shl(a_mod, integer_bits))
    remainder = wrap32(a_mod - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = 1 << (frac_bits + exponent)
            result = np.where((remainder & bit) != 0, srdhm(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a):
    """gemmlowp 1/(1+a) for a in [0, 1): Q0.31 in, Q0.31 out (Newton-Raphson in Q2.29)."""
    a = np.asarray(a, np.int64)
    s = a + INT32_MAX                                  # RoundingHalfSum(a, One)
    half_den = c_div(s + np.where(s >= 0, 1, -1), 2)
    c48_17, cneg32_17 = 1515870810, -1010580540
    x = wrap32(c48_17 + srdhm(half_den, cneg32_17))
    for _ in range(3):
        hd_x = srdhm(half_den, x)
        one_minus = wrap32((1 << 29) - hd_x)
        x = wrap32(x + sat_shl(srdhm(x, one_minus), 2))
    return sat_shl(x, 1)


def get_reciprocal(x, x_integer_digits: int):
    """TFLite GetReciprocal: (Q0.31 reciprocal raw, num_bits_over_unit) of a positive int32."""
    x = np.asarray(x, np.int64)
    headroom_plus_one = np.array([32 - int(v).bit_length() for v in x.reshape(-1)],
                                 np.int64).reshape(x.shape)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted = ((x << headroom_plus_one) & 0xFFFFFFFF) - (1 << 31)
    return one_over_one_plus_x_for_x_in_0_1(wrap32(shifted)), num_bits_over_unit


# =============================================================================================
# Per-op references
# =============================================================================================
def softmax_ref_params(input_scale: float, beta: float = 1.0) -> tuple[int, int, int]:
    """(input_multiplier, input_left_shift, diff_min) as TFLite's SoftmaxPrepare (reference)."""
    integer_bits = 5
    real = min(float(beta) * float(np.float32(input_scale)) * (1 << (31 - integer_bits)),
               (1 << 31) - 1.0)
    mult, left = quantize_multiplier(real)
    assert left >= 0
    radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left))
    return mult, left, -radius


def softmax_ref(x, input_scale: float, beta: float = 1.0, out_dtype="int8"):
    """TFLite reference_ops::Softmax for int8/uint8 in, int8/uint8 out, along the last axis."""
    mult, left, diff_min = softmax_ref_params(input_scale, beta)
    x = np.asarray(x).astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    rescaled = srdhm(wrap32(diff * (1 << left)), mult)
    exps = exp_on_negative_values(rescaled, 5)
    exps = np.where(valid, exps, 0)
    sum_of_exps = wrap32(np.sum(np.where(valid, rdbpot(exps, 12), 0), axis=-1, keepdims=True))
    recip, bits_over = get_reciprocal(sum_of_exps, 12)
    info = np.iinfo(np.dtype(out_dtype))
    exponent = bits_over + 31 - 8 * np.dtype(out_dtype).itemsize
    unsat = rdbpot(srdhm(recip, exps), exponent)
    out = np.clip(unsat + info.min, info.min, info.max)
    out = np.where(valid, out, info.min)
    return out.astype(out_dtype)


def softmax_lut(x, input_scale: float, beta: float, out_scale: float, out_zero_point: int,
                out_dtype="int8"):
    """TFLite optimized_ops::Softmax (uint8/int8 float LUT), the default (non-reference) kernel:
    ``table[255 - d] = expf(f32(-s*beta) * d)``, float sum in order, ``inv = 1/(sum*out_scale)``,
    ``round(e * inv) + zp`` (round half away), clamp."""
    scale = f32(-np.float32(input_scale) * np.float32(beta))
    table = np.empty(256, np.float32)
    for val in range(256):
        table[255 - val] = f32(np.exp(np.float64(f32(scale * np.float32(val)))))
    x = np.asarray(x).astype(np.int64)
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty(rows.shape, np.int64)
    info = np.iinfo(np.dtype(out_dtype))
    for r, row in enumerate(rows):
        mx = int(row.max())
        vals = table[255 - mx + row]
        s = np.float32(0)
        for v in vals:
            s = np.float32(s + v)
        inv = np.float32(np.float32(1) / np.float32(s * np.float32(out_scale)))
        prob = (vals * inv).astype(np.float32)
        if np.dtype(out_dtype) == np.uint8:   # x86 specialization: int(prob + 0.5f), no zero point
            q = np.trunc((prob + np.float32(0.5)).astype(np.float32)).astype(np.int64)
        else:
            q = round_half_away(prob).astype(np.int64) + out_zero_point
        out[r] = np.clip(q, info.min, info.max)
    return out.reshape(x.shape).astype(out_dtype)


def lut_int8(input_scale, input_zero_point, output_scale, output_zero_point, fn, dtype="int8"):
    """TFLite LUTPopulate for 8-bit types: a [256] table indexed by ``code - qmin``."""
    info = np.iinfo(np.dtype(dtype))
    vals = np.arange(info.min, info.max + 1, dtype=np.int64)
    deq = f32(np.float32(input_scale) * f32(vals - input_zero_point))
    transformed = fn(deq)
    inv = np.float32(np.float32(1) / np.float32(output_scale))
    rescaled = round_half_away(f32(transformed * inv))
    q = rescaled + output_zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def sigmoid_f32(v):
    """``1.0f / (1.0f + expf(-v))`` with a correctly rounded expf."""
    v = np.asarray(v, np.float32)
    with np.errstate(over="ignore"):
        e = f32(np.exp(-v.astype(np.float64)))
    return f32(np.float32(1) / f32(np.float32(1) + e))


def logistic(x, input_scale, input_zero_point, output_scale=1 / 256, output_zero_point=-128,
             dtype="int8"):
    table = lut_int8(input_scale, input_zero_point, output_scale, output_zero_point, sigmoid_f32, dtype)
    info = np.iinfo(np.dtype(dtype))
    return table[np.asarray(x).astype(np.int64) - info.min]


def mean_ref(x, axes, keep_dims, input_scale, input_zero_point, output_scale, output_zero_point,
             dtype="int8"):
    """TFLite reference_ops::QuantizedMeanOrSum (mean): int32 sum of raw codes, then
    ``MBQM(sum - zp_in * n, M', s')`` where (M, s) = QuantizeMultiplier(s_in / s_out) is
    re-adapted to include 1/n: ``shift = min(floor(log2 n), 32, 31 + s)``,
    ``M' = (M << shift) // n`` (C division), ``s' = s - shift``."""
    x = np.asarray(x).astype(np.int64)
    axes = tuple(sorted({a % x.ndim for a in axes}))
    n = int(np.prod([x.shape[a] for a in axes]))
    total = wrap32(x.sum(axis=axes, keepdims=keep_dims))
    mult, shift = quantize_multiplier(float(np.float32(input_scale)) / float(np.float32(output_scale)))
    sh = min(n.bit_length() - 1, 32, 31 + shift)
    mult = (mult << sh) // n
    shift = shift - sh
    info = np.iinfo(np.dtype(dtype))
    out = mbqm(wrap32(total - input_zero_point * n), mult, shift) + output_zero_point
    return np.clip(out, info.min, info.max).astype(dtype)


def mean_xnnpack(x, axes, keep_dims, input_scale, input_zero_point, output_scale,
                 output_zero_point, dtype="int8", fma=False):
    """XNNPACK qs8 mean (LiteRT default delegate): int32 sum of raw codes, then the int32->qs8
    reference conversion with ``scale = f32(f32(s_in/s_out) * f32(1/n))`` and the input zero
    point folded into the output zero point: ``zp' = f32(zp_out - f32(f32(n*zp_in) * scale))``,
    ``q = nearbyint(f32(f32(sum) * scale) + zp')``, saturate."""
    x = np.asarray(x).astype(np.int64)
    axes = tuple(sorted({a % x.ndim for a in axes}))
    n = int(np.prod([x.shape[a] for a in axes]))
    total = x.sum(axis=axes, keepdims=keep_dims)
    scale = f32(np.float32(f32(np.float32(input_scale) / np.float32(output_scale)))
                * f32(np.float32(1.0) / np.float32(n)))
    zp = f32(np.float32(output_zero_point) - f32(f32(np.float32(n) * np.float32(input_zero_point)) * scale))
    acc = f32(total)
    if fma:
        y = f32(acc.astype(np.float64) * np.float64(scale) + np.float64(zp))
    else:
        y = f32(f32(acc * scale) + zp)
    info = np.iinfo(np.dtype(dtype))
    return np.clip(np.rint(y), info.min, info.max).astype(dtype)


# =============================================================================================
# Flatbuffer parsing (with the ``tflite`` package) and a whole-model interpreter
# =============================================================================================
_NP_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


def _builtin_names() -> dict:
    from tflite.BuiltinOperator import BuiltinOperator
    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


def _options(op, kind):
    import importlib
    mod = importlib.import_module(f"tflite.{kind}")
    table = op.BuiltinOptions()
    if table is None:
        return None
    opts = getattr(mod, kind)()
    opts.Init(table.Bytes, table.Pos)
    return opts


class RefModel:
    """A parsed .tflite (first subgraph): tensors (name, shape, dtype, scale, zp, qdim, data) and
    ops (builtin name, inputs, outputs, raw operator for options)."""

    def __init__(self, data: bytes):
        import tflite
        self.model = tflite.Model.GetRootAsModel(data, 0)
        g = self.model.Subgraphs(0)
        names = _builtin_names()
        self.tensors = []
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            q = t.Quantization()
            scale = zp = None
            qdim = 0
            if q is not None and q.ScaleLength() > 0:
                scale = q.ScaleAsNumpy().astype(np.float32)
                zp = q.ZeroPointAsNumpy().astype(np.int64)
                qdim = q.QuantizedDimension()
            dtype = _NP_TYPES[t.Type()]
            buf = self.model.Buffers(t.Buffer())
            data = None
            if buf is not None and buf.DataLength() > 0:
                data = np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=dtype).reshape(t.ShapeAsNumpy())
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            self.tensors.append(dict(name=t.Name().decode(), shape=shape, dtype=dtype, scale=scale,
                                     zp=zp, qdim=qdim, data=data))
        self.ops = []
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            self.ops.append(dict(name=names[code], inputs=[int(v) for v in op.InputsAsNumpy()],
                                 outputs=[int(v) for v in op.OutputsAsNumpy()], op=op))
        self.inputs = [int(v) for v in g.InputsAsNumpy()]
        self.outputs = [int(v) for v in g.OutputsAsNumpy()]


def _same_pads(size, k, s, d):
    out = -(-size // s)
    eff = (k - 1) * d + 1
    total = max((out - 1) * s + eff - size, 0)
    return out, total // 2, total - total // 2


def _geometry(h, w, kh, kw, sh, sw, dh, dw, padding):
    if padding == 0:  # SAME
        oh, pt, pb = _same_pads(h, kh, sh, dh)
        ow, pl, pr = _same_pads(w, kw, sw, dw)
    else:
        oh = (h - ((kh - 1) * dh + 1)) // sh + 1
        ow = (w - ((kw - 1) * dw + 1)) // sw + 1
        pt = pb = pl = pr = 0
    return oh, ow, (pt, pl, pb, pr)


def _patches(x, kh, kw, sh, sw, dh, dw, pads, oh, ow, fill):
    """[N, OH, OW, KH, KW, C] windows of an NHWC array padded with ``fill``."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb + kh * dh), (pl, pr + kw * dw), (0, 0)), constant_values=fill)
    out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = xp[:, i * dh: i * dh + sh * oh: sh, j * dw: j * dw + sw * ow: sw, :][:, :oh, :ow]
    return out


def act_range_ref(act: int, scale, zp, dtype="int8"):
    """CalculateActivationRangeQuantized: bounds quantized with zp + round_half_away(f32(v / s))."""
    info = np.iinfo(np.dtype(dtype))
    q = lambda v: int(zp) + int(round_half_away(f32(np.float32(v) / np.float32(scale))))
    lo, hi = info.min, info.max
    if act == 1:
        lo = max(lo, q(0.0))
    elif act == 3:
        lo, hi = max(lo, q(0.0)), min(hi, q(6.0))
    elif act == 2:
        lo, hi = max(lo, q(-1.0)), min(hi, q(1.0))
    elif act != 0:
        raise NotImplementedError(f"fused activation {act}")
    return lo, hi


def act_range_xnn(act: int, scale, zp, dtype="int8"):
    """XNNPACK delegate: float bounds quantized by xnn_qs8_quantize, RNE(f32(f32(v/s) + zp))."""
    info = np.iinfo(np.dtype(dtype))
    q = lambda v: int(np.rint(np.clip(f32(f32(np.float32(v) / np.float32(scale)) + np.float32(zp)),
                                      info.min, info.max)))
    if act == 0:
        return info.min, info.max
    if act == 1:
        return q(0.0), info.max
    if act == 3:
        return q(0.0), q(6.0)
    if act == 2:
        return q(-1.0), q(1.0)
    raise NotImplementedError(f"fused activation {act}")


def mbqm_single(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier, TFLITE_SINGLE_ROUNDING variant: one rounding half
    up, ``(x * M + 2**(30 - shift)) >> (31 - shift)``."""
    total = 31 - np.asarray(shift, np.int64)
    x = wrap32(x) * np.asarray(multiplier, np.int64)
    return (x + (np.int64(1) << (total - 1))) >> total


def mbqm_ruy(x, multiplier, shift):
    """TFLite's optimized x86 MultiplyByQuantizedMultiplier (ruy): double rounding, both steps
    half up: ``y = (x << left) * M + 2**30 >> 31``, then ``(y + 2**(right-1)) >> right``."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    y = (wrap32(wrap32(x) << left) * np.asarray(multiplier, np.int64) + (1 << 30)) >> 31
    return np.where(right > 0, (y + ((np.int64(1) << right) >> 1)) >> right, y)


def requant_ref(acc, mult, shift, zp, lo, hi, channel_axis=-1, single=False):
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    m = np.asarray(mult, np.int64).reshape(shape)
    s = np.asarray(shift, np.int64).reshape(shape)
    fn = mbqm_single if single else mbqm
    return np.clip(fn(acc, m, s) + zp, lo, hi)


def requant_fp32(acc, scale, zp, lo, hi, channel_axis=-1):
    shape = [1] * acc.ndim
    shape[channel_axis] = -1
    sc = np.asarray(scale, np.float32).reshape(shape)
    f = f32(f32(wrap32(acc)) * sc)
    f = np.clip(f, lo - zp, hi - zp)
    return np.rint(f).astype(np.int64) + zp


class Interpreter:
    """Runs a :class:`RefModel` with numpy. ``flavour``: 'ref' (BUILTIN_REF) or 'xnnpack'
    (LiteRT default on x86). FULLY_CONNECTED in 'ref': ``fc_multiplier`` 'double' (double
    product s_in*s_w/s_out, as measured for LiteRT 2.3) or 'f32_product' (double(f32(s_in*s_w))
    / s_out, the legacy GetQuantizedConvolutionMultipler); ``fc_single`` True: one rounding half
    up (TFLITE_SINGLE_ROUNDING-style MBQM, as measured for LiteRT 2.3's reference FC), False:
    gemmlowp double rounding (as its CONV_2D)."""

    def __init__(self, model, flavour="ref", fc_multiplier="double", fc_single=True):
        if isinstance(model, (str, bytes)):
            model = RefModel(open(model, "rb").read() if isinstance(model, str) else model)
        self.m = model
        self.flavour = flavour
        self.fc_multiplier = fc_multiplier
        self.fc_single = fc_single

    # ------------------------------------------------------------------ helpers
    def t(self, i):
        return self.m.tensors[i]

    def _act_range(self, act, t):
        fn = act_range_ref if self.flavour == "ref" else act_range_xnn
        return fn(act, t["scale"][0], t["zp"][0], t["dtype"])

    def _requant(self, acc, ti, tw, to, act, channel_axis, fc=False):
        sx, sw, sy = ti["scale"][0], tw["scale"], to["scale"][0]
        zo = int(to["zp"][0])
        lo, hi = self._act_range(act, to)
        if self.flavour == "ref":
            if fc and sw.size == 1 and self.fc_multiplier == "f32_product":
                reals = [float(np.float32(sx * sw[0])) / float(sy)]
            else:
                reals = [float(sx) * float(s) / float(sy) for s in sw]
            ms = [quantize_multiplier(r) for r in reals]
            return requant_ref(acc, [m for m, _ in ms], [e for _, e in ms], zo, lo, hi, channel_axis,
                               single=fc and self.fc_single)
        scale = f32(f32(np.float32(sx) * sw.astype(np.float32)) / np.float32(sy))
        return requant_fp32(acc, scale, zo, lo, hi, channel_axis)

    def run(self, feeds: dict) -> dict:
        env = {}
        for i in self.m.inputs:
            env[i] = np.asarray(feeds[self.t(i)["name"]])
        for k, t in enumerate(self.m.tensors):
            if t["data"] is not None:
                env[k] = t["data"]
        for idx, op in enumerate(self.m.ops):
            fn = getattr(self, "_" + op["name"], None)
            if fn is None:
                raise NotImplementedError(f"operator {idx} ({op['name']})")
            ins = [env[i] if i >= 0 else None for i in op["inputs"]]
            outs = fn(op, *ins)
            for o, v in zip(op["outputs"], outs if isinstance(outs, tuple) else (outs,)):
                env[o] = v.astype(self.t(o)["dtype"])
        return {self.t(k)["name"]: v for k, v in env.items()}

    # ------------------------------------------------------------------ ops
    def _conv(self, op, x, w, b, depthwise):
        kind = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"
        o = _options(op["op"], kind)
        ti, tw, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        zx = int(ti["zp"][0])
        n, h, wd, c = x.shape
        if depthwise:
            _, kh, kw, m = w.shape
        else:
            m, kh, kw, _ = w.shape
        oh, ow, pads = _geometry(h, wd, kh, kw, o.StrideH(), o.StrideW(), o.DilationHFactor(),
                                 o.DilationWFactor(), o.Padding())
        p = _patches(x.astype(np.int64) - zx, kh, kw, o.StrideH(), o.StrideW(), o.DilationHFactor(),
                     o.DilationWFactor(), pads, oh, ow, 0)
        wv = w.astype(np.int64)
        if depthwise:
            dm = m // c
            acc = np.einsum("nyxijc,ijcd->nyxcd", p, wv.reshape(kh, kw, c, dm)).reshape(n, oh, ow, m)
        else:
            acc = np.einsum("nyxijc,mijc->nyxm", p, wv)
        if b is not None:
            acc = acc + b.astype(np.int64)
        return self._requant(wrap32(acc), ti, tw, to, o.FusedActivationFunction(), 3)

    def _CONV_2D(self, op, x, w, b=None):
        return self._conv(op, x, w, b, False)

    def _DEPTHWISE_CONV_2D(self, op, x, w, b=None):
        return self._conv(op, x, w, b, True)

    def _FULLY_CONNECTED(self, op, x, w, b=None):
        o = _options(op["op"], "FullyConnectedOptions")
        ti, tw, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        k = w.shape[1]
        a = x.astype(np.int64).reshape(-1, k) - int(ti["zp"][0])
        acc = a @ w.astype(np.int64).T
        if b is not None:
            acc = acc + b.astype(np.int64)
        out = self._requant(wrap32(acc), ti, tw, to, o.FusedActivationFunction(), -1, fc=True)
        if o.KeepNumDims():
            out = out.reshape(x.shape[:-1] + (w.shape[0],))
        return out

    def _ADD(self, op, a, b):
        o = _options(op["op"], "AddOptions")
        ta, tb, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        lo, hi = self._act_range(o.FusedActivationFunction(), to)
        sa, sb, so = (float(t["scale"][0]) for t in (ta, tb, to))
        za, zb, zo = (int(t["zp"][0]) for t in (ta, tb, to))
        if self.flavour == "ref":
            return add_ref(a, b, sa, za, sb, zb, so, zo, lo, hi)
        return add_xnnpack(a, b, sa, za, sb, zb, so, zo, lo, hi)

    def _MUL(self, op, a, b):
        o = _options(op["op"], "MulOptions")
        ta, tb, to = (self.t(i) for i in (op["inputs"][0], op["inputs"][1], op["outputs"][0]))
        lo, hi = self._act_range(o.FusedActivationFunction(), to)
        sa, sb, so = (float(t["scale"][0]) for t in (ta, tb, to))
        za, zb, zo = (int(t["zp"][0]) for t in (ta, tb, to))
        if self.flavour == "ref":
            return mul_ref(a, b, sa, za, sb, zb, so, zo, lo, hi)
        return mul_xnnpack(a, b, sa, za, sb, zb, so, zo, lo, hi)

    def _pool(self, op, x, kind):
        o = _options(op["op"], "Pool2DOptions")
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        n, h, w, c = x.shape
        kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
        oh, ow, pads = _geometry(h, w, kh, kw, sh, sw, 1, 1, o.Padding())
        lo, hi = self._act_range(o.FusedActivationFunction(), to)
        if kind == "max":
            p = _patches(x.astype(np.int64), kh, kw, sh, sw, 1, 1, pads, oh, ow, -(1 << 40))
            return np.clip(p.max(axis=(3, 4)), lo, hi)
        p = _patches(x.astype(np.int64), kh, kw, sh, sw, 1, 1, pads, oh, ow, 0)
        ones = _patches(np.ones((1, h, w, 1), np.int64), kh, kw, sh, sw, 1, 1, pads, oh, ow, 0)
        total = p.sum(axis=(3, 4))
        count = ones.sum(axis=(3, 4))
        if self.flavour == "ref" or not self._avgpool_xnn:
            avg = np.where(total > 0, c_div(total + count // 2, count), c_div(total - count // 2, count))
            return np.clip(avg, lo, hi)
        raise NotImplementedError("xnnpack average pool")

    _avgpool_xnn = False

    def _AVERAGE_POOL_2D(self, op, x):
        return self._pool(op, x, "avg")

    def _MAX_POOL_2D(self, op, x):
        return self._pool(op, x, "max")

    def _RESHAPE(self, op, x, shape=None):
        to = self.t(op["outputs"][0])
        return x.reshape(to["shape"])

    def _SOFTMAX(self, op, x):
        o = _options(op["op"], "SoftmaxOptions")
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        if self.flavour == "ref":
            return softmax_ref(x, ti["scale"][0], o.Beta(), to["dtype"])
        return softmax_lut(x, ti["scale"][0], o.Beta(), to["scale"][0], int(to["zp"][0]), to["dtype"])

    def _LOGISTIC(self, op, x):
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        return logistic(x, ti["scale"][0], int(ti["zp"][0]), to["scale"][0], int(to["zp"][0]), to["dtype"])

    def _MEAN(self, op, x, axes):
        o = _options(op["op"], "ReducerOptions")
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        args = (x, [int(a) for a in np.asarray(axes).reshape(-1)], bool(o.KeepDims()), ti["scale"][0],
                int(ti["zp"][0]), to["scale"][0], int(to["zp"][0]), to["dtype"])
        return mean_ref(*args) if self.flavour == "ref" else mean_xnnpack(*args)

    def _PAD(self, op, x, paddings, value=None):
        to = self.t(op["outputs"][0])
        pads = [(int(a), int(b)) for a, b in np.asarray(paddings).reshape(-1, 2)]
        code = int(to["zp"][0]) if value is None else int(np.asarray(value).reshape(-1)[0])
        return np.pad(x, pads, constant_values=code)

    def _PADV2(self, op, x, paddings, value=None):
        return self._PAD(op, x, paddings, value)

    def _CONCATENATION(self, op, *xs):
        o = _options(op["op"], "ConcatenationOptions")
        return np.concatenate(xs, axis=o.Axis())

    def _QUANTIZE(self, op, x):
        ti, to = self.t(op["inputs"][0]), self.t(op["outputs"][0])
        info = np.iinfo(np.dtype(to["dtype"]))
        zo = int(to["zp"][0])
        if ti["dtype"] == "float32":
            if self.flavour == "ref":
                q = round_half_away(f32(np.asarray(x, np.float32) / np.float32(to["scale"][0])))
            else:
                q = np.rint(f32(np.asarray(x, np.float32) * f32(np.float32(1) / np.float32(to["scale"][0]))))
            return np.clip(q + zo, info.min, info.max)
        ratio = f32(np.float32(ti["scale"][0]) / np.float32(to["scale"][0]))
        m, e = quantize_multiplier(float(ti["scale"][0]) / float(to["scale"][0]))
        xz = x.astype(np.int64) - int(ti["zp"][0])
        if self.flavour == "xnnpack":
            if ti["dtype"] == to["dtype"] and 2.0 ** -8 <= float(ratio) <= 2.0 ** 7:
                # XNNPACK convert: M = lrintf(256 * f32(s_in/s_out)), ((x - z_in)*M + 128) >> 8
                mx = int(np.rint(np.float64(f32(np.float32(256.0) * ratio))))
                return np.clip(((xz * mx + 128) >> 8) + zo, info.min, info.max)
            # not delegated: TFLite optimized Requantize, x86 MBQM = ruy (both steps half up)
            return np.clip(mbqm_ruy(xz, m, e) + zo, info.min, info.max)
        return np.clip(mbqm(xz, m, e) + zo, info.min, info.max)

    def _DEQUANTIZE(self, op, x):
        ti = self.t(op["inputs"][0])
        return f32(f32(x.astype(np.int64) - int(ti["zp"][0])) * np.float32(ti["scale"][0]))


def add_ref(a, b, sa, za, sb, zb, so, zo, lo, hi, left_shift=20):
    """TFLite reference int8 ADD: inputs shifted left by 20, three Q31 multipliers."""
    twice_max = 2.0 * max(float(np.float32(sa)), float(np.float32(sb)))
    ma, ea = quantize_multiplier(float(np.float32(sa)) / twice_max)
    mb, eb = quantize_multiplier(float(np.float32(sb)) / twice_max)
    mo, eo = quantize_multiplier(twice_max / ((1 << left_shift) * float(np.float32(so))))
    xa = (np.asarray(a).astype(np.int64) - za) << left_shift
    xb = (np.asarray(b).astype(np.int64) - zb) << left_shift
    s = mbqm(xa, ma, ea) + mbqm(xb, mb, eb)
    return np.clip(mbqm(s, mo, eo) + zo, lo, hi)


def mul_ref(a, b, sa, za, sb, zb, so, zo, lo, hi):
    m, e = quantize_multiplier(float(np.float32(sa)) * float(np.float32(sb)) / float(np.float32(so)))
    acc = (np.asarray(a).astype(np.int64) - za) * (np.asarray(b).astype(np.int64) - zb)
    return np.clip(mbqm(acc, m, e) + zo, lo, hi)


def xnnpack_add_params(sa, sb, so):
    """XNNPACK xnn_init_qs8_add_minmax_scalar_params: (a_multiplier, b_multiplier, shift)."""
    a_os = f32(np.float32(sa) / np.float32(so))
    b_os = f32(np.float32(sb) / np.float32(so))
    mx = max(abs(float(a_os)), abs(float(b_os)))
    exponent = math.frexp(mx)[1] - 1
    shift = 20 - exponent
    am = int(np.rint(np.float64(a_os) * 2.0 ** shift))
    bm = int(np.rint(np.float64(b_os) * 2.0 ** shift))
    return am, bm, shift


def add_xnnpack(a, b, sa, za, sb, zb, so, zo, lo, hi):
    """XNNPACK qs8 vadd: ``(bias + a*am + b*bm) >> shift`` (floor) with
    ``bias = 2**(shift-1) - am*za - bm*zb``, i.e. round half up, then + zp and clamp."""
    am, bm, shift = xnnpack_add_params(sa, sb, so)
    acc = (np.asarray(a).astype(np.int64) - za) * am + (np.asarray(b).astype(np.int64) - zb) * bm
    q = (acc + (1 << (shift - 1))) >> shift
    return np.clip(q + zo, lo, hi)


def mul_xnnpack(a, b, sa, za, sb, zb, so, zo, lo, hi):
    """XNNPACK qs8 vmul (fp32): ``RNE(f32(f32(acc) * f32(f32(sa*sb)/so))) + zp`` clamped."""
    scale = f32(f32(np.float32(sa) * np.float32(sb)) / np.float32(so))
    acc = (np.asarray(a).astype(np.int64) - za) * (np.asarray(b).astype(np.int64) - zb)
    return requant_fp32(acc, [scale], zo, lo, hi)
