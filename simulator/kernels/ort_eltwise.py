"""ONNX Runtime's CPU float32 elementwise kernels, bit for bit: the float islands of a mixed
graph (float ops between dynamically or statically quantized regions).

Binary Add/Sub/Mul/Div are one IEEE float32 rounding per element (Eigen's and MLAS's loops use no
FMA for them), so numpy's float32 ufuncs with numpy broadcasting give ORT's values. Sigmoid and
Tanh are MLAS's rational approximations (``MlasComputeLogistic``/``MlasComputeTanh`` on an
FMA3/AVX-512 host); ``mrq/ort_float.py`` builds its Sigmoid/Tanh tables with these same
functions.
Vectorised numpy, not Numba: every op is one pass over the tensor, and numpy's float32 ufuncs
round exactly as the scalar C++ does.
"""
from __future__ import annotations

import numpy as np

from simulator.errors import KernelInputError

_F32 = np.float32


def fma(a, b, c) -> np.ndarray:
    """float32 ``a * b + c`` rounded once: the exact float64 product, the float64 sum with its
    exact error (TwoSum) rounded to odd, then to float32 (53 >= 24 + 2 bits)."""
    a64, b64, c64 = (np.asarray(v, _F32).astype(np.float64) for v in (a, b, c))
    prod = a64 * b64
    total = prod + c64
    b_virtual = total - prod
    err = (prod - (total - b_virtual)) + (c64 - b_virtual)
    bits = np.asarray(total).view(np.int64)
    to_odd = (err != 0) & ((bits & 1) == 0) & np.isfinite(total)
    total = np.where(to_odd, np.nextafter(total, np.where(err > 0, np.inf, -np.inf)), total)
    return total.astype(_F32)


# onnxruntime/core/mlas/lib/logistic.cpp and tanh.cpp: (range, alpha high..low, beta high..low)
_LOGISTIC = (_F32(-18.0), _F32(18.0),
             np.array([4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05,
                       8.51377133304701e-03, 2.48287947061529e-01], _F32),
             np.array([6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06,
                       1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01], _F32))
_TANH = (_F32(-9.0), _F32(9.0),
         np.array([-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                   5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                   4.89352455891786e-03], _F32),
         np.array([1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                   4.89352518554385e-03], _F32))


def _odd_rational(x, lo, hi, alpha, beta) -> np.ndarray:
    x = np.minimum(hi, np.maximum(lo, x))
    x2 = x * x
    p = fma(x2, alpha[0], alpha[1])
    for coef in alpha[2:]:
        p = fma(x2, p, coef)
    q = fma(x2, beta[0], beta[1])
    for coef in beta[2:]:
        q = fma(x2, q, coef)
    return (x * p) / q


def logistic(x) -> np.ndarray:
    """``MlasComputeLogistic`` (LogisticKernelFma3.S): ``max(0, p/q + 0.5)``."""
    return np.maximum(_F32(0.0), _odd_rational(x, *_LOGISTIC) + _F32(0.5))


def tanh(x) -> np.ndarray:
    """``MlasComputeTanh<float>``: x clamped to [-9, 9], ``x * P(x^2) / Q(x^2)``."""
    return _odd_rational(x, *_TANH)


def _prelu(x, slope):
    # activations/prelu: x > 0 ? x : x * slope (one product)
    return np.where(x > 0, x, x * slope)


BINARY_OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
              "PRelu": _prelu}


def binary(op: str, a, b) -> np.ndarray:
    """``a op b`` in float32 with numpy (= ONNX multidirectional) broadcasting."""
    fn = BINARY_OPS.get(op)
    if fn is None:
        raise KernelInputError(f"float binary op {op!r} is not one of {sorted(BINARY_OPS)}")
    with np.errstate(all="ignore"):   # inf/NaN as IEEE gives them, as in ORT
        return np.ascontiguousarray(fn(np.asarray(a, _F32), np.asarray(b, _F32)), dtype=_F32)


def _clip(x, lo, hi):
    # ORT's Clip: Eigen cwiseMax(min).cwiseMin(max) = std::max/min, which keep a NaN x
    if lo is not None:
        x = np.where(x < _F32(lo), _F32(lo), x)
    if hi is not None:
        x = np.where(x > _F32(hi), _F32(hi), x)
    return x


def unary(op: str, x, alpha: float = 0.0, beta: float = 0.0, lo=None, hi=None) -> np.ndarray:
    """One of ``UNARY_OPS`` on float32 ``x`` as ORT's CPU kernel computes it."""
    x = np.asarray(x, _F32)
    with np.errstate(all="ignore"):
        if op == "Sigmoid":
            y = logistic(x)
        elif op == "Tanh":
            y = tanh(x)
        elif op == "Relu":
            y = _clip(x, 0.0, None)
        elif op == "Clip":
            y = _clip(x, lo, hi)
        elif op == "LeakyRelu":
            # activations.h: x >= 0 ? x : alpha * x
            y = np.where(x >= 0, x, _F32(alpha) * x)
        elif op == "HardSigmoid":
            y = np.maximum(_F32(0.0), np.minimum(_F32(1.0), _F32(alpha) * x + _F32(beta)))
        elif op == "HardSwish":
            # no CPU kernel: the function body Mul(X, HardSigmoid<1/6, 0.5>(X))
            y = x * np.maximum(_F32(0.0), np.minimum(_F32(1.0), _F32(1.0 / 6.0) * x + _F32(0.5)))
        else:
            raise KernelInputError(f"float unary op {op!r} is not one of {sorted(UNARY_OPS)}")
    return np.ascontiguousarray(y, dtype=_F32)


UNARY_OPS = ("Sigmoid", "Tanh", "Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish")



def maxpool(x, *, layout, kernel, strides, pads, dilations, ceil_mode) -> np.ndarray:
    """Float max pooling with ONNX geometry: each output the largest input value of its window
    (padding never wins: it is -inf, as ORT's ``lowest()`` start never exceeds a real value)."""
    x = np.asarray(x, _F32)
    nchw = np.moveaxis(x, 3, 1) if layout == "NHWC" else x
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    h, w = nchw.shape[2:]
    out = []
    for size, k, s_, d, pb, pe in ((h, kh, sh, dh, top, bottom), (w, kw, sw, dw, left, right)):
        span = size + pb + pe - ((k - 1) * d + 1)
        n = (-(-span // s_) if ceil_mode else span // s_) + 1
        if ceil_mode and (n - 1) * s_ >= size + pb:   # the last window must start inside
            n -= 1
        out.append(n)
    oh, ow = out
    need_h, need_w = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    padded = np.full(nchw.shape[:2] + (max(need_h, h + top), max(need_w, w + left)), -np.inf, _F32)
    padded[:, :, top:top + h, left:left + w] = nchw
    y = np.full(nchw.shape[:2] + (oh, ow), -np.inf, _F32)
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            y = np.maximum(y, tap)
    return np.ascontiguousarray(np.moveaxis(y, 1, 3) if layout == "NHWC" else y)

# The x86-64 float kernel sets of ONNX Runtime's MLAS a profile's ``runtime_isa`` names
# (onnxruntime/core/mlas/lib/platform.cpp): AVX-512F hosts run the *Avx512F kernels, AVX2/FMA3
# hosts the *Fma3/*Avx ones. Their softmax kernels differ (below) and so does the NCHWc channel
# block (simulator/kernels/ort_nchwc.py); their SGEMM order is the same.
ORT_ISAS = ("avx512f", "fma3")


def check_isa(isa: str) -> str:
    """``isa`` if it names one of :data:`ORT_ISAS`, else a KernelInputError."""
    if isa not in ORT_ISAS:
        raise KernelInputError(f"ONNX Runtime kernel set {isa!r} is not one of {ORT_ISAS}")
    return isa


# onnxruntime/core/mlas/lib/compute.cpp (MlasExpConstants). The AVX-512F sum-exp kernel
# (x86_64/TransKernelAvx512F.S) clamps at LowerRange; the FMA3 one (TransKernelFma3.S) at
# LowerRangeSumExp, where round(x / ln2) >= -127 keeps its bit-built 2^m a float (2^-127 -> 0)
_EXP_LOWER = {"avx512f": _F32(-103.9720840454), "fma3": _F32(-88.3762626647949)}
_EXP_ROUNDING_BIAS = _F32(12582912.0)                    # MLAS_ROUNDING_BIAS_MAGIC, 1.5 * 2^23
_EXP_LOG2_RECIPROCAL = _F32(1.44269504088896341)
_EXP_LOG2_HIGH = _F32(-6.93145752e-1)
_EXP_LOG2_LOW = _F32(-1.42860677e-6)
_EXP_POLY = np.array([float.fromhex(h) for h in ("0x1.694000p-10", "0x1.125edcp-7", "0x1.555b5ap-5",
                                                 "0x1.555450p-3", "0x1.fffff6p-2")], _F32)
_EXP_MAXIMUM_EXPONENT = np.int32(0x3F800000)             # 127 << 23, the bits of 1.0f
_LANES = {"avx512f": 16, "fma3": 8}                      # float32 lanes of a zmm / ymm register


def _sum_exp_terms(v, isa: str = "avx512f") -> np.ndarray:
    """exp of the max-shifted values as the sum-exp kernel computes each lane: clamp, range
    reduction by FMAs, the degree-6 polynomial by FMAs, then the scaling by 2^m: AVX-512F
    ``vscalefps`` (one rounding, gradual underflow); FMA3 multiplies by 2^m built from the
    rounding-biased value's bits (``vpslld 23``, ``vpaddd 127 << 23``), so m = -127 gives the
    bits of 0.0f and the lane is 0."""
    v = np.maximum(_EXP_LOWER[check_isa(isa)], v)
    biased = fma(v, _EXP_LOG2_RECIPROCAL, _EXP_ROUNDING_BIAS)
    m = biased - _EXP_ROUNDING_BIAS
    v = fma(m, _EXP_LOG2_HIGH, v)
    v = fma(m, _EXP_LOG2_LOW, v)
    p = np.full_like(v, _EXP_POLY[0])
    for coef in _EXP_POLY[1:]:
        p = fma(p, v, coef)
    p = fma(p, v, _F32(1.0))
    p = fma(p, v, _F32(1.0))
    if isa == "fma3":
        # int32 lane arithmetic wraps, as vpslld/vpaddd do
        bits = (biased.view(np.int32).astype(np.int64) << 23) + int(_EXP_MAXIMUM_EXPONENT)
        scale = ((bits + 2**31) % 2**32 - 2**31).astype(np.int32).view(_F32)
        return (p * scale).astype(_F32)
    return np.ldexp(p, m.astype(np.int32)).astype(_F32)   # vscalefps: one rounding


def _reduce_lanes(acc) -> np.ndarray:
    """The horizontal sum of a row's lane accumulators (last axis, 16 or 8 lanes) in the
    kernels' order: AVX-512F first adds the two 256-bit halves (``vextractf64x4``/``vaddps``);
    then both kernels' two ``vhaddps`` sum pairs within each 128-bit half and the final
    ``vaddss`` adds the halves: ``((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))``."""
    s = acc[:, 8:] + acc[:, :8] if acc.shape[1] == 16 else acc
    h = np.stack([s[:, 0] + s[:, 1], s[:, 2] + s[:, 3], s[:, 4] + s[:, 5], s[:, 6] + s[:, 7]], 1)
    return (h[:, 0] + h[:, 1]) + (h[:, 2] + h[:, 3])


def softmax(x, axis: int, isa: str = "avx512f") -> np.ndarray:
    """ORT's float Softmax (opset 13 semantics: one row per position of the other axes),
    ``MlasComputeSoftmax`` with the ``isa`` kernel set: per row the maximum, the exps of
    ``x + (-max)`` (:func:`_sum_exp_terms`) summed lane-wise over 16-element (AVX-512F) or
    8-element (FMA3: the 24-element loop adds its three vectors in order into one accumulator)
    chunks in order with a zero-filled tail, the lanes reduced by :func:`_reduce_lanes`, then
    each exp times ``1.0f / sum``."""
    lanes = _LANES[check_isa(isa)]
    x = np.asarray(x, _F32)
    moved = np.moveaxis(x, axis, -1)
    rows = np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])
    d = rows.shape[1]
    with np.errstate(all="ignore"):
        neg_max = -rows.max(axis=1, keepdims=True)
        e = _sum_exp_terms(rows + neg_max, isa)
        chunks = -(-d // lanes)
        padded = np.zeros((rows.shape[0], chunks * lanes), _F32)
        padded[:, :d] = e
        acc = np.zeros((rows.shape[0], lanes), _F32)
        for k in range(chunks):
            acc = acc + padded[:, k * lanes:(k + 1) * lanes]
        total = _reduce_lanes(acc)
        scale = (_F32(1.0) / total).astype(_F32)
        y = (e * scale[:, None]).astype(_F32)
    return np.ascontiguousarray(np.moveaxis(y.reshape(moved.shape), -1, axis))


GLOBAL_POOL_ORDERS = ("mlas", "nchwc")


def global_average_pool(x, order: str = "mlas") -> np.ndarray:
    """ORT's float GlobalAveragePool on NCHW, per channel, divided by the element count at the
    end. ``mlas``: ``MlasPoolGlobalKernel``, 4-lane sums over the plane, the lanes reduced as
    ``MlasReduceAddFloat32x4`` does (``(l0 + l2) + (l1 + l3)``), the tail added one by one.
    ``nchwc``: the NCHWc kernel ORT's layout transformer substitutes (one channel per vector
    lane): each plane summed in order (both measured against ORT 1.32)."""
    if order not in GLOBAL_POOL_ORDERS:
        raise KernelInputError(f"global average pool order {order!r} is not one of {GLOBAL_POOL_ORDERS}")
    x = np.asarray(x, _F32)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    size = flat.shape[2]
    with np.errstate(all="ignore"):
        if order == "nchwc":
            total = np.zeros((n, c), _F32)
            for k in range(size):
                total = total + flat[:, :, k]
        else:
            body = size - size % 4
            lanes = np.zeros((n, c, 4), _F32)
            for k in range(0, body, 4):
                lanes = lanes + flat[:, :, k:k + 4]
            total = (lanes[:, :, 0] + lanes[:, :, 2]) + (lanes[:, :, 1] + lanes[:, :, 3])
            for k in range(body, size):
                total = total + flat[:, :, k]
        y = (total / _F32(size)).astype(_F32)
    return np.ascontiguousarray(y.reshape((n, c) + (1,) * (x.ndim - 2)))


def reduce_l2_last(x) -> np.ndarray:
    """ORT's float ReduceL2 over the last axis (keepdims): the squares (one rounding each)
    summed in order, then the float32 square root (measured against ORT 1.32)."""
    x = np.asarray(x, _F32)
    total = np.zeros(x.shape[:-1], _F32)
    with np.errstate(all="ignore"):
        for k in range(x.shape[-1]):
            total = total + x[..., k] * x[..., k]
        return np.ascontiguousarray(np.sqrt(total)[..., None], dtype=_F32)
