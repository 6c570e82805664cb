"""Element-wise integer ops: add (four arithmetics), mul, rescale, clamp.

Binary ops follow numpy broadcasting. The add modes (docs/PROGRAM.md):

- ``ort_fma``: ONNX Runtime's x86 QLinearAdd (MLAS AVX2 kernel, as built by GCC, which contracts
  the scalar part into FMAs). With ``rA = f32(sA/sC)``, ``rB = f32(sB/sC)`` and raw codes ``a``,
  ``b`` as float32::

      K  = f32(f32(zC) - fma(rA, f32(zA), f32(rB * f32(zB))))
      v  = fma(a, rA, fma(b, rB, K))
      out = clamp(RNE(v))                       # zero point inside the rounding

  When ORT's broadcaster sees input A as the per-span scalar (A broadcasts along the innermost
  non-trivial dimension, or A is a 0-d/size-1 tensor) it calls the kernel with A and B swapped::

      K' = f32(f32(zC) - fma(rB, f32(zB), f32(rA * f32(zA))))
      v  = fma(b, rB, fma(a, rA, K'))

  (When B is the per-span scalar the kernel computes ``K + b*rB`` once per span, contracted to
  ``fma(b, rB, K)``: the same value as the general formula.) Verified bit-exactly against
  onnxruntime 1.32 (tests/simulator/test_ort_single_ops.py). 8-bit inputs only: ORT's 16-bit
  QLinearAdd uses a different, plain-float helper.
- ``tflite``: TFLite reference ADD: ``x = (q - zp) << left_shift``, each input scaled by
  ``MultiplyByQuantizedMultiplier`` (TFLite exponent convention), summed in int32, scaled by the
  output multiplier, ``+ zp_out``, clamped.
- ``fixed``: ``acc = (a - za) * multiplier_a + (b - zb) * multiplier_b`` exact in int64, then
  the requantization block (``fixed`` or ``shift``).
- ``float``: ``f32(dq(a) + dq(b))`` with ``dq(x) = f32(f32(x - z) * s)``, then quantized by
  division: ``clamp(round(f32(sum / s_out)) + z_out)``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from simulator.errors import KernelInputError
from simulator.kernels import add_i32, simd
from simulator.kernels import epilogue as ep_k
from simulator.kernels.epilogue import store16
from simulator.kernels.jitcache import specialised
from simulator.kernels.portable_glue import read_only
from simulator.kernels.quant import (
    PARALLEL_MIN_ELEMENTS,
    RQ_FIXED,
    check_int_array,
    check_out_range,
    clamp_add_zp,
    quantize_value_divide,
    requant_one,
    requant_params,
    rounding_code,
)
from simulator.launch import Call, In, Launch, Tmp
from simulator.primitives import (
    ROUNDING_CODES,
    f32_add,
    f32_div,
    f32_mul,
    fma_f32,
    int_to_f32,
    round_up,
    sign_cmp,
)

ELTWISE_DTYPES = ("int8", "uint8", "int16", "uint16", "int32")
# ORT's float adds end in nearbyint (RNE); TFLite's add is gemmlowp (RHA) or ruy (RHU)
_RNE = ROUNDING_CODES["half_even"]
_RHA = ROUNDING_CODES["half_away"]
_RHU = ROUNDING_CODES["half_up"]


@njit(cache=True, inline="always")
def _tail16(a1, b1, i, n):
    """Elements ``[i, i + n)`` (``n < 16``) of ``a1`` and ``b1`` in zero-padded 16-element
    arrays, so that the last partial chunk runs through the same 16-lane code."""
    ta = np.zeros(16, dtype=a1.dtype)
    tb = np.zeros(16, dtype=b1.dtype)
    for j in range(n):
        ta[j] = a1[i + j]
        tb[j] = b1[i + j]
    return ta, tb


def broadcast_pair(a, b):
    """Broadcast ``a`` and ``b`` (numpy rules) to contiguous flat arrays: (a1, b1, shape), both
    read-only (:func:`read_only`), as launches pass a step's inputs."""
    if a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous:
        return read_only(a.reshape(-1)), read_only(b.reshape(-1)), a.shape  # views: no copy
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise KernelInputError(
            f"shapes {list(a.shape)} and {list(b.shape)} cannot be broadcast together"
        ) from None
    a1 = np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1)
    b1 = np.ascontiguousarray(np.broadcast_to(b, shape)).reshape(-1)
    return read_only(a1), read_only(b1), shape


def ort_input0_is_span_scalar(shape_a, shape_b) -> bool:
    """Whether ORT's ``Broadcaster`` treats input 0 as the per-span scalar (``IsInput0Scalar``).

    Mirrors ``onnxruntime/core/providers/cpu/math/element_wise_ops.h``: the first broadcast axis
    is the innermost axis (among the trailing common ones) whose output size exceeds 1, or the
    outermost common axis if none does; input 0 is "scalar" iff its size there is <= 1. A 0-d
    input 0 is always scalar.
    """
    na, nb = len(shape_a), len(shape_b)
    n_common = min(na, nb)
    if n_common == 0:
        if na == 0:
            return True
        return shape_a[-1] <= 1
    for i in range(n_common):
        da = shape_a[na - 1 - i]
        db = shape_b[nb - 1 - i]
        largest, smallest = max(da, db), min(da, db)
        dim = smallest if smallest == 0 else largest
        if dim <= 1 and i + 1 < n_common:
            continue
        return da <= 1
    return False  # unreachable


# --------------------------------------------------------------------------------------------
# add: ort_fma
# --------------------------------------------------------------------------------------------
def ort_qladd_constant(r_first, z_first, r_second, z_second, z_out):
    """``f32(f32(zC) - fma(r1, f32(z1), f32(r2 * f32(z2))))``: MLAS's ``VectorFixedPart``, one
    scalar per step, computed when the launch is built by the Python interpreter on NumPy
    scalars through the primitives' ``py_func`` (the same IEEE operations as the compiled
    primitives, hence the same float32; compiling it cost ~0.4 s of a cold start)."""
    fma, i2f, mul = fma_f32.py_func, int_to_f32.py_func, f32_mul.py_func
    with np.errstate(all="ignore"):
        inner = fma(r_first, i2f(z_first), mul(r_second, i2f(z_second)))
        return np.float32(np.float64(i2f(z_out)) - np.float64(inner))


@njit(cache=True)
def _add_ort_fma_range(a1, b1, r_a, r_b, k_const, swapped, out_min, out_max, out, i0, i1):
    """Elements ``[i0, i1)``, 16 lanes at a time with IEEE fused multiply-adds
    (``llvm.fma``): ``v = fma(a, rA, fma(b, rB, K))`` (or swapped), then RNE and the clamp."""
    ra = simd.vsplat_f32(r_a)
    rb = simd.vsplat_f32(r_b)
    kc = simd.vsplat_f32(k_const)
    cnt = 0
    n_full = (i1 - i0) // 16
    for t in range(n_full):  # full 16-lane chunks: no tail logic in this loop
        i = i0 + 16 * t
        av = simd.vcvt_f32(simd.vload_ext(a1, i))
        bv = simd.vcvt_f32(simd.vload_ext(b1, i))
        if swapped:
            v = simd.vfma_f32(bv, rb, simd.vfma_f32(av, ra, kc))
        else:
            v = simd.vfma_f32(av, ra, simd.vfma_f32(bv, rb, kc))
        q, k = simd.vquant(v, out_min, out_max, 16, _RNE)
        cnt += k
        simd.vstore_codes(out, i, q)
    i = i0 + 16 * n_full
    n = i1 - i
    if n > 0:
        ta, tb = _tail16(a1, b1, i, n)
        av = simd.vcvt_f32(simd.vload_ext(ta, 0))
        bv = simd.vcvt_f32(simd.vload_ext(tb, 0))
        if swapped:
            v = simd.vfma_f32(bv, rb, simd.vfma_f32(av, ra, kc))
        else:
            v = simd.vfma_f32(av, ra, simd.vfma_f32(bv, rb, kc))
        q, k = simd.vquant(v, out_min, out_max, n, _RNE)
        cnt += k
        store16(out, i, 1, q, n)
    return cnt


@njit(cache=True, parallel=True)
def _add_ort_fma_par(a1, b1, r_a, r_b, k_const, swapped, out_min, out_max, out, n_chunks):
    n16 = (a1.shape[0] + 15) // 16
    sat = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        i0 = ch * n16 // n_chunks * 16
        i1 = min((ch + 1) * n16 // n_chunks * 16, a1.shape[0])
        sat[ch] = _add_ort_fma_range(a1, b1, r_a, r_b, k_const, swapped, out_min, out_max, out,
                                     i0, i1)
    return sat.sum()


def _run_flat(serial, parallel, n, args):
    """Run a flat element kernel on the calling thread or, for large inputs, in parallel."""
    call = _flat_call(serial, parallel, n, args)
    return call.fn(*call.args)


def _flat_call(serial, parallel, n, args):
    """The :class:`Call` of a flat element kernel: serial, or parallel for large inputs."""
    threads = numba.get_num_threads()
    if threads > 1 and n >= PARALLEL_MIN_ELEMENTS:
        return Call(parallel, tuple(args) + (4 * threads,), counted=True)
    return Call(serial, tuple(args) + (0, n), counted=True)


def _same_shape_launch(shape, dtype, serial, parallel, params):
    """The launch of a flat two-input kernel ``kernel(a1, b1, *params, out, ...)`` on inputs of
    one ``shape``: no broadcast copies."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64))
    call = _flat_call(serial, parallel, n, (In(0, (n,)), In(1, (n,))) + tuple(params) + (Tmp(0),))
    return Launch((((n,), np.dtype(dtype).name),), (call,), (Tmp(0, shape),))


def add_ort_fma(a, b, **params):
    """ORT x86 QLinearAdd; returns ``(out, out_saturated)``. See the module docstring and
    :func:`add_ort_fma_launch` for the parameters."""
    launch, flat_params = _add_ort_fma(a, b, **params)
    if launch is not None:
        outs, n_sat = launch.execute((np.ascontiguousarray(a), np.ascontiguousarray(b)))
        return outs[0], n_sat
    a1, b1, shape = broadcast_pair(a, b)
    out = np.empty(a1.shape[0], dtype=params["out_dtype"])
    n_sat = _run_flat(_add_ort_fma_range, _add_ort_fma_par, a1.shape[0],
                      (a1, b1) + flat_params + (out,))
    return out.reshape(shape), int(n_sat)


def add_ort_fma_launch(a, b, **params):
    """The :class:`Launch` of :func:`add_ort_fma` for inputs of ``a``'s and ``b``'s shapes and
    dtypes (values not read) when the shapes are equal, else ``None``. Parameters:
    ``scale_a, scale_b, scale_out, zero_point_a, zero_point_b, zero_point_out, out_min, out_max,
    out_dtype``."""
    return _add_ort_fma(a, b, **params)[0]


def _add_ort_fma(a, b, *, scale_a, scale_b, scale_out, zero_point_a, zero_point_b,
                 zero_point_out, out_min, out_max, out_dtype):
    for name, arr in (("add input a", a), ("add input b", b)):
        check_int_array(name, arr, ("int8", "uint8"))
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    s_a, s_b, s_c = (np.float32(v) for v in (scale_a, scale_b, scale_out))
    r_a = np.float32(s_a / s_c)  # numpy float32 scalar division: IEEE f32
    r_b = np.float32(s_b / s_c)
    swapped = ort_input0_is_span_scalar(a.shape, b.shape)
    if swapped:
        k_const = ort_qladd_constant(r_b, int(zero_point_b), r_a, int(zero_point_a),
                                     int(zero_point_out))
    else:
        k_const = ort_qladd_constant(r_a, int(zero_point_a), r_b, int(zero_point_b),
                                     int(zero_point_out))
    flat_params = (np.float32(r_a), np.float32(r_b), np.float32(k_const), swapped,
                   np.int64(out_min), np.int64(out_max))
    if a.shape != b.shape:
        return None, flat_params
    return _same_shape_launch(a.shape, dt, _add_ort_fma_range, _add_ort_fma_par,
                              flat_params), flat_params


# --------------------------------------------------------------------------------------------
# add: tflite
# --------------------------------------------------------------------------------------------
def _make_add_tflite(ruy):
    mbqm = simd.vmbqm_ruy if ruy else simd.vmbqm

    @njit(cache=True)
    def add_tflite_range(a1, b1, za, zb, zo, left_shift, m_a, l_a, r_a, m_b, l_b, r_b, m_o, l_o,
                         r_o, out_min, out_max, out, i0, i1):
        """Elements ``[i0, i1)``, 16 int32 lanes at a time: ``x = (q - z) << left_shift``, each
        input through ``MultiplyByQuantizedMultiplier``, the int32 sum through the output
        multiplier, then ``clamp(raw + zo)`` (as ``clamp(raw, lo - zo, hi - zo) + zo``)."""
        za_v = simd.vsplat_i32(za)
        zb_v = simd.vsplat_i32(zb)
        zo_v = simd.vsplat_i32(zo)
        cnt = 0
        n_full = (i1 - i0) // 16
        for t in range(n_full):  # full 16-lane chunks
            i = i0 + 16 * t
            x1 = simd.vshl_i32(simd.vsub_i32(simd.vload_ext(a1, i), za_v), left_shift)
            x2 = simd.vshl_i32(simd.vsub_i32(simd.vload_ext(b1, i), zb_v), left_shift)
            y = simd.vadd_i32(mbqm(x1, m_a, l_a, r_a), mbqm(x2, m_b, l_b, r_b))
            q, k = simd.vclamp_count(mbqm(y, m_o, l_o, r_o), out_min - zo, out_max - zo, 16)
            cnt += k
            simd.vstore_codes(out, i, simd.vadd_i32(q, zo_v))
        i = i0 + 16 * n_full
        n = i1 - i
        if n > 0:
            ta, tb = _tail16(a1, b1, i, n)
            x1 = simd.vshl_i32(simd.vsub_i32(simd.vload_ext(ta, 0), za_v), left_shift)
            x2 = simd.vshl_i32(simd.vsub_i32(simd.vload_ext(tb, 0), zb_v), left_shift)
            y = simd.vadd_i32(mbqm(x1, m_a, l_a, r_a), mbqm(x2, m_b, l_b, r_b))
            q, k = simd.vclamp_count(mbqm(y, m_o, l_o, r_o), out_min - zo, out_max - zo, n)
            cnt += k
            store16(out, i, 1, simd.vadd_i32(q, zo_v), n)
        return cnt

    @njit(cache=True, parallel=True)
    def add_tflite_par(a1, b1, za, zb, zo, left_shift, m_a, l_a, r_a, m_b, l_b, r_b, m_o, l_o,
                       r_o, out_min, out_max, out, n_chunks):
        n16 = (a1.shape[0] + 15) // 16
        sat = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            i0 = ch * n16 // n_chunks * 16
            i1 = min((ch + 1) * n16 // n_chunks * 16, a1.shape[0])
            sat[ch] = add_tflite_range(a1, b1, za, zb, zo, left_shift, m_a, l_a, r_a, m_b, l_b,
                                       r_b, m_o, l_o, r_o, out_min, out_max, out, i0, i1)
        return sat.sum()

    return add_tflite_range, add_tflite_par


_ADD_TFLITE = {ruy: specialised(_make_add_tflite, ruy) for ruy in (False, True)}


def _check_tflite_multiplier(name, mult, shift):
    mult, shift = int(mult), int(shift)
    if not 0 <= mult < 2**31:
        raise KernelInputError(f"{name}: TFLite multiplier must be in [0, 2**31), got {mult}")
    if not -31 <= shift <= 30:
        raise KernelInputError(f"{name}: TFLite shift must be in [-31, 30], got {shift}")
    return np.int64(mult), np.int64(shift)


def add_tflite(a, b, **params):
    """TFLite reference ADD (int8/uint8/int16); returns ``(out, out_saturated)``.

    Shifts use TFLite's sign (positive = left). ``rq_rounding='half_away'`` is gemmlowp double
    rounding (the reference kernels); ``'half_up'`` uses ruy's both-steps-RHU multiply.
    The shifted inputs must fit int32: ``|q - zp| * 2**left_shift < 2**31``. Parameters:
    ``left_shift, multiplier_a, shift_a, multiplier_b, shift_b, multiplier_out, shift_out,
    zero_point_a, zero_point_b, zero_point_out, out_min, out_max, out_dtype, rq_rounding``.
    """
    launch, static_ok, kernels_, flat_params, dt = _add_tflite(a, b, **params)
    if not static_ok:
        left_shift = int(params["left_shift"])
        for arr, z in ((a, int(params["zero_point_a"])), (b, int(params["zero_point_b"]))):
            if arr.size:
                span = max(abs(int(arr.max()) - z), abs(int(arr.min()) - z))
                if span << left_shift >= 2**31:
                    raise KernelInputError("add 'tflite': (q - zp) << left_shift overflows int32")
    if launch is not None:
        outs, n_sat = launch.execute((np.ascontiguousarray(a), np.ascontiguousarray(b)))
        return outs[0], n_sat
    a1, b1, shape = broadcast_pair(a, b)
    out = np.empty(a1.shape[0], dtype=dt)
    n_sat = _run_flat(*kernels_, a1.shape[0], (a1, b1) + flat_params + (out,))
    return out.reshape(shape), int(n_sat)


def add_tflite_launch(a, b, **params):
    """The :class:`Launch` of :func:`add_tflite` for inputs of ``a``'s and ``b``'s shapes and
    dtypes (values not read), or ``None``: shapes differ, or the dtype ranges do not prove that
    the shifted inputs fit int32."""
    launch, static_ok = _add_tflite(a, b, **params)[:2]
    return launch if static_ok else None


def _add_tflite(a, b, *, left_shift, multiplier_a, shift_a, multiplier_b, shift_b,
                multiplier_out, shift_out, zero_point_a, zero_point_b, zero_point_out,
                out_min, out_max, out_dtype, rq_rounding="half_away"):
    for name, arr in (("add input a", a), ("add input b", b)):
        check_int_array(name, arr, ("int8", "uint8", "int16", "uint16"))
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    rnd = rounding_code(rq_rounding)
    if rnd not in (_RHA, _RHU):
        raise KernelInputError("add 'tflite': rq_rounding must be 'half_away' or 'half_up'")
    left_shift = int(left_shift)
    if not 0 <= left_shift <= 30:
        raise KernelInputError(f"add 'tflite': left_shift must be in [0, 30], got {left_shift}")
    m_a, s_a = _check_tflite_multiplier("multiplier_a", multiplier_a, shift_a)
    m_b, s_b = _check_tflite_multiplier("multiplier_b", multiplier_b, shift_b)
    m_o, s_o = _check_tflite_multiplier("multiplier_out", multiplier_out, shift_out)
    za, zb = int(zero_point_a), int(zero_point_b)
    static_ok = True
    for arr, z in ((a, za), (b, zb)):
        info = np.iinfo(arr.dtype)
        if max(abs(int(info.max) - z), abs(int(info.min) - z)) << left_shift >= 2**31:
            static_ok = False

    def lr(shift):
        return np.int64(max(int(shift), 0)), np.int64(max(-int(shift), 0))

    kernels_ = _ADD_TFLITE[rnd == _RHU]
    flat_params = (np.int64(za), np.int64(zb), np.int64(zero_point_out), np.int64(left_shift),
                   m_a, *lr(s_a), m_b, *lr(s_b), m_o, *lr(s_o), np.int64(out_min),
                   np.int64(out_max))
    launch = None
    if a.shape == b.shape:
        launch = _same_shape_launch(a.shape, dt, *kernels_, flat_params)
    return launch, static_ok, kernels_, flat_params, dt


# --------------------------------------------------------------------------------------------
# add: fixed and float
# --------------------------------------------------------------------------------------------
def add_fixed(a, b, *, zero_point_a, zero_point_b, multiplier_a, multiplier_b, rq_mode,
              rq_shift, rq_rounding, out_zero_point, out_min, out_max, out_dtype,
              rq_multiplier=(1,)):
    """``acc = (a - za) * ma + (b - zb) * mb`` (exact int64), then requantization (``fixed`` or
    ``shift``, per-tensor). Returns ``(out, out_saturated)``."""
    for name, arr in (("add input a", a), ("add input b", b)):
        check_int_array(name, arr, ELTWISE_DTYPES)
    return AddFixed(zero_point_a=zero_point_a, zero_point_b=zero_point_b,
                    multiplier_a=multiplier_a, multiplier_b=multiplier_b, rq_mode=rq_mode,
                    rq_shift=rq_shift, rq_rounding=rq_rounding, out_zero_point=out_zero_point,
                    out_min=out_min, out_max=out_max, out_dtype=out_dtype,
                    rq_multiplier=rq_multiplier).run(a, b)


class AddFixed:
    """A validated fixed-point add (the parameters of :func:`add_fixed`), so a step that runs many
    times (batch 1) validates them once; :meth:`run` checks only the inputs."""

    def __init__(self, *, zero_point_a, zero_point_b, multiplier_a, multiplier_b, rq_mode,
                 rq_shift, rq_rounding, out_zero_point, out_min, out_max, out_dtype,
                 rq_multiplier=(1,)):
        if rq_mode not in ("fixed", "shift"):
            raise KernelInputError(
                f"add 'fixed': rq_mode must be 'fixed' or 'shift', got {rq_mode!r}")
        m_a, m_b = int(multiplier_a), int(multiplier_b)
        if max(abs(m_a), abs(m_b)) >= 2**31:
            raise KernelInputError("add 'fixed': |multiplier_a|, |multiplier_b| must be < 2**31")
        if np.size(rq_multiplier) != 1 or np.size(rq_shift) != 1:
            raise KernelInputError("add 'fixed': rq_multiplier and rq_shift must be per-tensor")
        # validates the requantization block exactly as requantize() would
        p = requant_params(rq_mode=rq_mode, rq_multiplier=np.asarray(rq_multiplier),
                           rq_shift=np.asarray(rq_shift), rq_rounding=rq_rounding,
                           out_zero_point=out_zero_point, out_min=out_min, out_max=out_max,
                           out_dtype=out_dtype, n_ch=1)
        self.dtype = p.dtype
        self.za, self.zb, self.ma, self.mb = int(zero_point_a), int(zero_point_b), m_a, m_b
        self.mult = int(p.mult_i[0]) if p.mode == RQ_FIXED else 1
        self.shift = int(p.shifts[0])
        self.generic = (np.int64(self.za), np.int64(self.zb), np.int64(m_a), np.int64(m_b),
                        np.int64(p.mode), np.int64(p.mult_i[0]), np.int64(self.shift),
                        np.int64(p.rnd), np.int64(p.zp), np.int64(p.out_min),
                        np.int64(p.out_max))
        self.branch_free = (np.int64(self.za), np.int64(self.zb), np.int64(m_a), np.int64(m_b),
                            np.int64(self.mult), np.int64(self.shift), np.int64(p.zp),
                            np.int64(p.out_min), np.int64(p.out_max))
        self.rnd = int(p.rnd)
        self.vec_params = (np.int32(self.za), np.int32(self.zb), np.int32(m_a), np.int32(m_b),
                           np.int64(self.mult), np.int64(self.shift), np.int64(p.zp),
                           np.int64(p.out_min), np.int64(p.out_max))
        self.lean_params = add_i32.params(self.za, self.zb, m_a, m_b, self.mult,
                                          max(self.shift, 1), p.zp, p.out_min, p.out_max,
                                          p.rnd)
        self._launches = {}

    def run(self, a, b):
        a1, b1, shape = broadcast_pair(a, b)
        outs, n_sat = self.launch(shape, a1.dtype, b1.dtype).execute(
            (a1.reshape(shape), b1.reshape(shape)))
        return outs[0], n_sat

    def launch(self, shape, dtype_a, dtype_b):
        """The :class:`Launch` for two inputs of one ``shape`` and these dtypes."""
        dtype_a, dtype_b = np.dtype(dtype_a), np.dtype(dtype_b)
        key = (tuple(shape), dtype_a.num, dtype_b.num, numba.get_num_threads())
        launch = self._launches.get(key)
        if launch is None:
            launch = self._launches[key] = self._build_launch(shape, dtype_a, dtype_b)
        return launch

    def _build_launch(self, shape, dtype_a, dtype_b):
        # |(a - za) * ma + (b - zb) * mb| from the storage types (launches are cached per dtype)
        acc_bound = _add_bound(dtype_a, dtype_b, self.za, self.zb, self.ma, self.mb)
        # product and rounding offset fit int64: the branch-free kernel for this rounding
        fast = 1 <= self.shift <= 62 and acc_bound * abs(self.mult) < 2**62
        if fast and dtype_a.itemsize <= 2 and dtype_b.itemsize <= 2 \
                and acc_bound < 2**31:
            # the sum fits int32: 16 lanes, fused epilogue; when the product by the multiplier
            # fits int32 too (XNNPACK-style adds: multiplier 1, shift ~20), all in int32 lanes
            if add_i32.applies(self.rnd, self.shift, acc_bound * abs(self.mult)):
                # the rounding as an offset, the zero points folded into one constant
                serial, parallel = add_i32.kernels(self.rnd)
                return _same_shape_launch(shape, self.dtype, serial, parallel, self.lean_params)
            if acc_bound * abs(self.mult) < 2**31 and self.shift <= 30:
                kind = ep_k.EP_INT_P32
            else:
                kind = ep_k.EP_INT32 if abs(self.mult) < 2**31 else ep_k.EP_INT
            serial, parallel = specialised(_make_add_vec_kernels, self.rnd, kind)
            return _same_shape_launch(shape, self.dtype, serial, parallel, self.vec_params)
        if fast:
            serial, parallel = _add_shift_kernels(self.rnd)
            return _same_shape_launch(shape, self.dtype, serial, parallel, self.branch_free)
        return _same_shape_launch(shape, self.dtype, _add_fixed_range, _add_fixed_par,
                                  self.generic)


def _make_add_vec_kernels(rnd, kind):
    """``(serial, parallel)`` fixed-point add kernels on 16 int32 lanes: ``acc = (a - za) * ma +
    (b - zb) * mb`` (exact: the caller proves ``|acc| < 2**31`` from the dtypes, so the int32 lane
    arithmetic never wraps), then the conv kernels' epilogue ``clamp(round(acc * mult / 2**shift)
    + zp)`` of ``kind``: ``EP_INT``, ``EP_INT32`` (``|mult| < 2**31``) or ``EP_INT_P32`` (the
    product fits int32, as the caller proved)."""
    f32_zero = np.float32(0.0)

    @njit(cache=True)
    def add_range(a1, b1, za, zb, ma, mb, mult, shift, zp, lo, hi, out, i0, i1):
        za_v = simd.vsplat_i32(za)
        zb_v = simd.vsplat_i32(zb)
        ma_v = simd.vsplat_i32(ma)
        mb_v = simd.vsplat_i32(mb)
        mi_v = simd.vsplat_i64(mult)
        s_v = simd.vsplat_i64(shift)
        mf_v = simd.vsplat_f32(f32_zero)
        cnt = 0
        n_full = (i1 - i0) // 16
        for t in range(n_full):
            i = i0 + 16 * t
            acc = simd.vmadd_i32(simd.vzero(), simd.vsub_i32(simd.vload_ext(a1, i), za_v),
                                 ma_v)
            acc = simd.vmadd_i32(acc, simd.vsub_i32(simd.vload_ext(b1, i), zb_v), mb_v)
            codes, k = ep_k._ep16_vec(kind, rnd, acc, mf_v, mi_v, s_v, s_v, f32_zero, zp, lo,
                                      hi, 16)
            cnt += k
            simd.vstore_codes(out, i, codes)
        i = i0 + 16 * n_full
        n = i1 - i
        if n > 0:
            ta, tb = _tail16(a1, b1, i, n)
            acc = simd.vmadd_i32(simd.vzero(), simd.vsub_i32(simd.vload_ext(ta, 0), za_v),
                                 ma_v)
            acc = simd.vmadd_i32(acc, simd.vsub_i32(simd.vload_ext(tb, 0), zb_v), mb_v)
            codes, k = ep_k._ep16_vec(kind, rnd, acc, mf_v, mi_v, s_v, s_v, f32_zero, zp, lo,
                                      hi, n)
            cnt += k
            store16(out, i, 1, codes, n)
        return cnt

    @njit(cache=True, parallel=True)
    def add_par(a1, b1, za, zb, ma, mb, mult, shift, zp, lo, hi, out, n_chunks):
        n16 = (a1.shape[0] + 15) // 16
        sat = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            i0 = ch * n16 // n_chunks * 16
            i1 = min((ch + 1) * n16 // n_chunks * 16, a1.shape[0])
            sat[ch] = add_range(a1, b1, za, zb, ma, mb, mult, shift, zp, lo, hi, out, i0, i1)
        return sat.sum()

    return add_range, add_par


def _add_bound(dtype_a, dtype_b, za, zb, ma, mb) -> int:
    """An upper bound on ``|(a - za) * ma + (b - zb) * mb|`` from the storage types."""
    ia, ib = np.iinfo(dtype_a), np.iinfo(dtype_b)
    span_a = max(abs(int(ia.min) - int(za)), abs(int(ia.max) - int(za)))
    span_b = max(abs(int(ib.min) - int(zb)), abs(int(ib.max) - int(zb)))
    return span_a * abs(int(ma)) + span_b * abs(int(mb))


def _add_shift_kernels(rnd):
    """``(serial, parallel)`` fixed-point add kernels for one rounding mode (a closure constant,
    so the element loop is branch-free and LLVM vectorizes it). Valid for ``1 <= shift <= 62``
    and ``|acc * mult| < 2**62`` (checked by the caller)."""
    return specialised(_make_add_shift_kernels, int(rnd))


def _make_add_shift_kernels(rnd):
    @njit(cache=True)
    def add_range(a1, b1, za, zb, ma, mb, mult, shift, zp, lo, hi, out, i0, i1):
        half = np.int64(1) << (shift - 1)
        mask = (np.int64(1) << shift) - 1
        count = 0
        for i in range(i0, i1):
            x = ((np.int64(a1[i]) - za) * ma + (np.int64(b1[i]) - zb) * mb) * mult
            q = x >> shift
            r = x & mask
            v = q + round_up(q, sign_cmp(r, half), r != 0, rnd) + zp
            count += np.int64(v < lo) + np.int64(v > hi)
            out[i] = min(max(v, lo), hi)
        return count

    @njit(cache=True, parallel=True)
    def add_par(a1, b1, za, zb, ma, mb, mult, shift, zp, lo, hi, out, n_chunks):
        n = a1.shape[0]
        sat = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            sat[ch] = add_range(a1, b1, za, zb, ma, mb, mult, shift, zp, lo, hi, out,
                                ch * n // n_chunks, (ch + 1) * n // n_chunks)
        return sat.sum()

    return add_range, add_par


@njit(cache=True)
def _add_fixed_range(a1, b1, za, zb, ma, mb, mode, mult_i, shift, rnd, zp, lo, hi, out, i0, i1):
    """Elements ``[i0, i1)``: exact int64 ``(a - za) * ma + (b - zb) * mb``, requantized."""
    count = 0
    for i in range(i0, i1):
        acc = (np.int64(a1[i]) - za) * ma + (np.int64(b1[i]) - zb) * mb
        v, s = clamp_add_zp(requant_one(acc, mode, np.float32(0), mult_i, shift, rnd, zp), zp,
                            lo, hi)
        out[i] = v
        count += s
    return count


@njit(cache=True, parallel=True)
def _add_fixed_par(a1, b1, za, zb, ma, mb, mode, mult_i, shift, rnd, zp, lo, hi, out, n_chunks):
    n = a1.shape[0]
    sat = np.zeros(n_chunks, dtype=np.int64)
    for ch in prange(n_chunks):
        sat[ch] = _add_fixed_range(a1, b1, za, zb, ma, mb, mode, mult_i, shift, rnd, zp, lo, hi,
                                   out, ch * n // n_chunks, (ch + 1) * n // n_chunks)
    return sat.sum()


@njit(cache=True, parallel=True)
def _add_float_kernel(a1, b1, s_a, z_a, s_b, z_b, s_o, z_o, rnd, out_min, out_max, out):
    n = a1.shape[0]
    chunk = 4096
    n_chunks = (n + chunk - 1) // chunk
    sat = np.zeros(n_chunks, dtype=np.int64)
    for ci in prange(n_chunks):
        count = 0
        for i in range(ci * chunk, min(n, (ci + 1) * chunk)):
            fa = f32_mul(int_to_f32(np.int64(a1[i]) - z_a), s_a)
            fb = f32_mul(int_to_f32(np.int64(b1[i]) - z_b), s_b)
            q, s = quantize_value_divide(f32_add(fa, fb), s_o, z_o, rnd, out_min, out_max)
            out[i] = q
            if s:
                count += 1
        sat[ci] = count
    return sat.sum()


def add_float(a, b, *, scale_a, scale_b, scale_out, zero_point_a, zero_point_b, zero_point_out,
              rounding="half_even", out_min, out_max, out_dtype):
    """Dequantize, add in float32, quantize by division; returns ``(out, out_saturated)``."""
    for name, arr in (("add input a", a), ("add input b", b)):
        check_int_array(name, arr, ELTWISE_DTYPES)
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    rnd = rounding_code(rounding)
    a1, b1, shape = broadcast_pair(a, b)
    out = np.empty(a1.shape[0], dtype=np.int64)
    n_sat = _add_float_kernel(a1, b1, np.float32(scale_a), np.int64(zero_point_a),
                              np.float32(scale_b), np.int64(zero_point_b), np.float32(scale_out),
                              np.int64(zero_point_out), rnd, np.int64(out_min),
                              np.int64(out_max), out)
    return out.reshape(shape).astype(dt), int(n_sat)


# --------------------------------------------------------------------------------------------
# mul, rescale, clamp
# --------------------------------------------------------------------------------------------
def mul_acc(a, b, *, zero_point_a, zero_point_b):
    """``acc = (a - za) * (b - zb)`` exact in int64 with numpy broadcasting."""
    for name, arr in (("mul input a", a), ("mul input b", b)):
        check_int_array(name, arr, ELTWISE_DTYPES)
    try:
        return (a.astype(np.int64) - int(zero_point_a)) * (b.astype(np.int64) - int(zero_point_b))
    except ValueError:
        raise KernelInputError(
            f"shapes {list(a.shape)} and {list(b.shape)} cannot be broadcast together"
        ) from None


@njit(cache=True, parallel=True)
def _rescale_float_kernel(x1, z_in, s_in, s_out, z_out, rnd, out_min, out_max, out):
    n = x1.shape[0]
    chunk = 4096
    n_chunks = (n + chunk - 1) // chunk
    sat = np.zeros(n_chunks, dtype=np.int64)
    for ci in prange(n_chunks):
        count = 0
        for i in range(ci * chunk, min(n, (ci + 1) * chunk)):
            f = f32_mul(int_to_f32(np.int64(x1[i]) - z_in), s_in)
            q, s = quantize_value_divide(f, s_out, z_out, rnd, out_min, out_max)
            out[i] = q
            if s:
                count += 1
        sat[ci] = count
    return sat.sum()


def rescale_float(x, *, input_zero_point, scale_in, scale_out, out_zero_point, rq_rounding,
                  out_min, out_max, out_dtype):
    """``q = clamp(round(f32(f32(f32(x - zin) * s_in) / s_out)) + zout)`` (ORT float region:
    DequantizeLinear then QuantizeLinear). Returns ``(out, out_saturated)``."""
    check_int_array("rescale input", x, ELTWISE_DTYPES)
    out_min, out_max, dt = check_out_range(out_min, out_max, out_dtype)
    rnd = rounding_code(rq_rounding)
    x1 = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(x1.shape[0], dtype=np.int64)
    n_sat = _rescale_float_kernel(x1, np.int64(input_zero_point), np.float32(scale_in),
                                  np.float32(scale_out), np.int64(out_zero_point), rnd,
                                  np.int64(out_min), np.int64(out_max), out)
    return out.reshape(x.shape).astype(dt), int(n_sat)


def clamp(x, *, out_min, out_max):
    """Clamp to [out_min, out_max] in the input dtype; returns ``(out, out_saturated)``."""
    check_int_array("clamp input", x)
    out_min, out_max, _ = check_out_range(out_min, out_max, x.dtype)
    n_sat = int(np.count_nonzero((x < out_min) | (x > out_max)))
    return np.clip(x, out_min, out_max).astype(x.dtype), n_sat


__all__ = [
    "add_fixed",
    "add_float",
    "add_ort_fma",
    "add_tflite",
    "broadcast_pair",
    "clamp",
    "f32_div",
    "mul_acc",
    "ort_input0_is_span_scalar",
    "rescale_float",
]
