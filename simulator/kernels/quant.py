"""Quantize, dequantize and the shared requantization of int64 accumulators.

``requantize`` implements every ``rq_mode`` of docs/PROGRAM.md ("Requantization block") on an
int64 accumulator array with per-channel parameters along ``channel_axis``:

- ``none``: the accumulator itself, cast to ``out_dtype`` (int32/int64), no clamp.
- ``fp32``: ``f = f32(f32(acc) * M[c])``, clamp ``f`` to ``[out_min - zp, out_max - zp]``,
  ``q = round(f) + zp``. Rounding is monotone and fixes integers, so clamping in float before
  rounding equals clamping the rounded integer; we round first (saturating to int64) and clamp
  the integer. NaN cannot occur with finite multipliers; it would map to ``out_min``.
- ``fp32_zp_in``: ``q = clamp(round(f32(f32(f32(acc) * M[c]) + f32(zp))))``.
- ``fixed``: ``q = round(acc * M[c] / 2**shift[c]) + zp`` exactly (one rounding), then clamp.
- ``double_q31``: TFLite ``MultiplyByQuantizedMultiplier(wrap32(acc), M[c], 31 - shift[c]) + zp``
  (gemmlowp, both steps RHA), or the ruy variant (both steps RHU) when ``rq_rounding`` is
  ``half_up``; then clamp. The accumulator is wrapped to int32 first: TFLite keeps it in an
  int32 register.
- ``shift``: ``q = round(acc / 2**shift[c]) + zp``, then clamp.

``out_saturated`` counts elements whose unclamped result lies outside ``[out_min, out_max]``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from simulator.errors import KernelInputError
from simulator.kernels import epilogue as ep_k
from simulator.kernels import simd
from simulator.kernels.jitcache import specialised
from simulator.kernels.portable_glue import read_only
from simulator.launch import Call, In, Launch, Tmp, cast_copy
from simulator.primitives import (
    INT64_MAX,
    INT64_MIN,
    ROUNDING_CODES,
    f32_add,
    f32_div,
    f32_mul,
    int_to_f32,
    mul_shift_round,
    multiply_by_quantized_multiplier,
    round_float,
    rounding_shift_right,
    wrap_bits,
)

RQ_FP32 = 1
RQ_FP32_ZP_IN = 2
RQ_FIXED = 3
RQ_DOUBLE_Q31 = 4
RQ_SHIFT = 5

RQ_MODES = {
    "none": 0,
    "fp32": RQ_FP32,
    "fp32_zp_in": RQ_FP32_ZP_IN,
    "fixed": RQ_FIXED,
    "double_q31": RQ_DOUBLE_Q31,
    "shift": RQ_SHIFT,
}

INT_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "int64")

_FIXED_ACC_LIMIT = 2**62
_FIXED_MULT_LIMIT = 2**32

# double_q31 is TFLite's fixed formula, not a profile rounding: the mode only picks the peer
# (gemmlowp rounds half away, ruy half up)
_Q31_GEMMLOWP = ROUNDING_CODES["half_away"]
_Q31_RUY = ROUNDING_CODES["half_up"]


# --------------------------------------------------------------------------------------------
# Small shared helpers (also used by other kernel modules)
# --------------------------------------------------------------------------------------------
def dtype_range(dtype) -> tuple[int, int]:
    """(min, max) of an integer numpy dtype."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def rounding_code(name) -> int:
    """The int code of a rounding-mode string; KernelInputError if unknown."""
    try:
        return ROUNDING_CODES[name]
    except (KeyError, TypeError):
        raise KernelInputError(
            f"unknown rounding mode {name!r}; expected one of {sorted(ROUNDING_CODES)}"
        ) from None


def check_int_array(name, x, dtypes=INT_DTYPES):
    """Raise KernelInputError unless ``x`` is a numpy array of one of ``dtypes``."""
    if not isinstance(x, np.ndarray):
        raise KernelInputError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype.name not in dtypes:
        raise KernelInputError(
            f"{name}: dtype {x.dtype.name} not supported, expected one of {dtypes}"
        )


def check_out_range(out_min, out_max, out_dtype) -> tuple[int, int, np.dtype]:
    """Validate ``out_min <= out_max`` inside ``out_dtype``'s range; return them as ints."""
    try:
        dt = np.dtype(out_dtype)
    except TypeError:
        raise KernelInputError(f"unknown out_dtype {out_dtype!r}") from None
    if dt.name not in INT_DTYPES:
        raise KernelInputError(f"out_dtype {dt.name} is not an integer storage type")
    lo, hi = dtype_range(dt)
    out_min, out_max = int(out_min), int(out_max)
    if not (lo <= out_min <= out_max <= hi):
        raise KernelInputError(
            f"clamp [{out_min}, {out_max}] is empty or outside the {dt.name} range [{lo}, {hi}]"
        )
    return out_min, out_max, dt


def per_channel(name, values, n_channels, dtype) -> np.ndarray:
    """Broadcast a length-1 or length-``n_channels`` parameter to a contiguous array."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] not in (1, n_channels):
        raise KernelInputError(
            f"{name}: expected shape [1] or [{n_channels}], got {list(np.shape(values))}"
        )
    if np.dtype(dtype).kind == "f":
        if arr.dtype != np.float32:
            raise KernelInputError(f"{name}: expected float32, got {arr.dtype.name}")
    elif arr.dtype.kind not in "iu":
        raise KernelInputError(f"{name}: expected an integer array, got {arr.dtype.name}")
    return np.ascontiguousarray(np.broadcast_to(arr.astype(dtype), (n_channels,)))


def split_axis(shape, axis) -> tuple[int, int, int, int]:
    """(outer, channels, inner, normalized axis) of ``shape`` around ``axis``."""
    ndim = len(shape)
    if ndim == 0:
        return 1, 1, 1, 0
    if not -ndim <= axis < ndim:
        raise KernelInputError(f"channel axis {axis} out of range for shape {list(shape)}")
    axis %= ndim
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner, axis


@njit(cache=True)
def clamp_add_zp(r, zp, out_min, out_max):
    """``clamp(r + zp, out_min, out_max)`` without int64 overflow; returns (value, saturated).

    ``r`` may be a saturated int64 (INT64_MIN/MAX); the comparison is done against
    ``out_min - zp`` and ``out_max - zp``, which are small.
    """
    lo = out_min - zp
    hi = out_max - zp
    if r < lo:
        return out_min, True
    if r > hi:
        return out_max, True
    return r + zp, False


# --------------------------------------------------------------------------------------------
# Requantization
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def requant_one(acc, mode, mult_f, mult_i, shift, rnd, zp):
    """The unclamped requantized value ``r`` such that the output is ``clamp(r + zp)``.

    For ``fp32_zp_in`` the zero point is inside the rounding, so this returns ``q - zp``.
    Saturates to the int64 range, never wraps.
    """
    if mode == RQ_FP32:
        f = f32_mul(int_to_f32(acc), mult_f)
        return round_float(f, rnd)
    if mode == RQ_FP32_ZP_IN:
        f = f32_add(f32_mul(int_to_f32(acc), mult_f), int_to_f32(zp))
        q = round_float(f, rnd)
        if q == INT64_MIN or q == INT64_MAX:
            return q
        return q - zp
    if mode == RQ_FIXED:
        return mul_shift_round(acc, mult_i, shift, rnd)
    if mode == RQ_DOUBLE_Q31:
        return multiply_by_quantized_multiplier(
            wrap_bits(acc, 32), mult_i, 31 - shift, rnd == _Q31_RUY
        )
    # RQ_SHIFT
    return rounding_shift_right(acc, shift, rnd)


@njit(cache=True, parallel=True)
def _requant_kernel(acc3, mode, mult_f, mult_i, shifts, rnd, zp, out_min, out_max, out3):
    """``out3 = clamp(requant(acc3) + zp)`` per channel; returns the saturation count.

    The mode is tested outside the element loop so each loop body is straight-line code.
    """
    outer, n_ch, inner = acc3.shape
    sat = np.zeros(outer * n_ch, dtype=np.int64)
    for oc in prange(outer * n_ch):
        o = oc // n_ch
        c = oc % n_ch
        mf = mult_f[c]
        mi = mult_i[c]
        sh = shifts[c]
        count = 0
        if mode == RQ_FP32:
            for i in range(inner):
                r = round_float(f32_mul(int_to_f32(acc3[o, c, i]), mf), rnd)
                v, s = clamp_add_zp(r, zp, out_min, out_max)
                out3[o, c, i] = v
                count += s
        elif mode == RQ_SHIFT:
            for i in range(inner):
                v, s = clamp_add_zp(rounding_shift_right(acc3[o, c, i], sh, rnd), zp, out_min,
                                    out_max)
                out3[o, c, i] = v
                count += s
        else:
            for i in range(inner):
                r = requant_one(acc3[o, c, i], mode, mf, mi, sh, rnd, zp)
                v, s = clamp_add_zp(r, zp, out_min, out_max)
                out3[o, c, i] = v
                count += s
        sat[oc] = count
    return sat.sum()


class RequantParams:
    """Validated requantization block for ``n_ch`` channels (see :func:`requant_params`)."""

    __slots__ = ("mode", "rnd", "mult_f", "mult_i", "shifts", "zp", "out_min", "out_max",
                 "dtype", "_ep")

    def epilogue(self):
        """The :class:`simulator.kernels.epilogue.Epilogue` of these parameters, or ``None``
        when the branch-free formulas do not apply (cached)."""
        if self._ep is False:
            self._ep = None if self.mode == 0 else ep_k.prepare(
                self.mode, self.rnd, self.mult_f, self.mult_i, self.shifts, self.zp,
                self.out_min, self.out_max, self.dtype, len(self.mult_f))
        return self._ep


def requant_params(*, rq_mode, rq_multiplier=None, rq_shift=None, rq_rounding="half_even",
                   out_zero_point=0, out_min=None, out_max=None, out_dtype="int8", n_ch=1):
    """Validate a requantization block for ``n_ch`` channels; raises KernelInputError.

    Every check of :func:`requantize` that does not depend on the accumulator values.
    """
    if rq_mode not in RQ_MODES:
        raise KernelInputError(f"unknown rq_mode {rq_mode!r}; expected one of {sorted(RQ_MODES)}")
    dt = np.dtype(out_dtype)
    if out_min is None or out_max is None:
        if dt.name not in INT_DTYPES:
            raise KernelInputError(f"out_dtype {dt.name} is not an integer storage type")
        lo, hi = dtype_range(dt)
        out_min = lo if out_min is None else out_min
        out_max = hi if out_max is None else out_max
    out_min, out_max, dt = check_out_range(out_min, out_max, dt)
    p = RequantParams()
    p._ep = False
    p.out_min, p.out_max, p.dtype = out_min, out_max, dt
    if rq_mode == "none":
        if dt.name not in ("int32", "int64"):
            raise KernelInputError(f"rq_mode 'none' needs out_dtype int32 or int64, got {dt.name}")
        p.mode, p.rnd, p.zp = 0, 0, 0
        p.mult_f = np.zeros(n_ch, dtype=np.float32)
        p.mult_i = np.zeros(n_ch, dtype=np.int64)
        p.shifts = np.zeros(n_ch, dtype=np.int64)
        return p
    mode = RQ_MODES[rq_mode]
    rnd = rounding_code(rq_rounding)
    zp = int(out_zero_point)
    if not -(2**31) <= zp < 2**31:
        raise KernelInputError(f"out_zero_point {zp} out of range")
    if rq_multiplier is None:
        raise KernelInputError(f"rq_mode {rq_mode!r} needs rq_multiplier")
    if mode in (RQ_FP32, RQ_FP32_ZP_IN):
        mult_f = per_channel("rq_multiplier", rq_multiplier, n_ch, np.float32)
        mult_i = np.zeros(n_ch, dtype=np.int64)
        shifts = np.zeros(n_ch, dtype=np.int64)
    else:
        mult_f = np.zeros(n_ch, dtype=np.float32)
        mult_i = per_channel("rq_multiplier", rq_multiplier, n_ch, np.int64)
        if mode == RQ_SHIFT and rq_shift is None:
            raise KernelInputError("rq_mode 'shift' needs rq_shift")
        shifts = per_channel("rq_shift", 0 if rq_shift is None else rq_shift, n_ch, np.int64)

    if mode == RQ_FIXED:
        if np.any(np.abs(mult_i) >= _FIXED_MULT_LIMIT):
            raise KernelInputError("rq_mode 'fixed' needs |rq_multiplier| < 2**32")
    elif mode == RQ_DOUBLE_Q31:
        if np.any(mult_i < -(2**31)) or np.any(mult_i >= 2**31):
            raise KernelInputError("rq_mode 'double_q31' needs an int32 rq_multiplier")
        if np.any(shifts < 1) or np.any(shifts > 62):
            raise KernelInputError(
                "rq_mode 'double_q31' needs 1 <= rq_shift <= 62 (TFLite shift 31 - rq_shift in"
                " [-31, 30])"
            )
        if rnd not in (_Q31_GEMMLOWP, _Q31_RUY):
            raise KernelInputError(
                "rq_mode 'double_q31' supports rq_rounding 'half_away' (gemmlowp) or 'half_up'"
                " (ruy); got " + repr(rq_rounding)
            )
    elif mode == RQ_SHIFT:
        if np.any(mult_i != 1):
            raise KernelInputError("rq_mode 'shift' takes no multiplier other than [1]")
    p.mode, p.rnd, p.zp = mode, rnd, zp
    p.mult_f, p.mult_i, p.shifts = mult_f, mult_i, shifts
    return p


# the loop a requantization specialisation is made with (a closure constant like the kind and
# rounding mode): a step runs one of them, and one vector loop compiles in ~1/3 of the time of all
RQ_LOOP_COLUMNS = 0         # 16-lane epilogue, the channel is the column index (channel-last)
RQ_LOOP_PLANES = 1          # 16-lane epilogue, row i is one plane of channel i % n_ch
RQ_LOOP_SCALAR_COLUMNS = 2  # scalar ep_* functions (an accumulator may not fit int32), by column
RQ_LOOP_SCALAR_PLANES = 3   # scalar ep_* functions, by plane


def _requant_loop(by_column, fits32):
    return (0 if by_column else 1) + (0 if fits32 else 2)


def _requant_kernels(kind, rnd, loop=RQ_LOOP_COLUMNS):
    """``(items, par)`` kernels specialized for an epilogue kind, rounding mode and loop
    (closure constants: only the branch in use is compiled; see ``igemm.kernels``)."""
    return specialised(_make_requant_kernels, int(kind), int(rnd), int(loop))


def _make_requant_kernels(kind, rnd, loop):
    @njit(cache=True)
    def requant_columns(acc2, n_ch, mf, mi, s1, s2, zpf, zp, lo, hi, out2, i0, i1):
        """``requantize`` of rows ``[i0, i1)`` of ``acc2`` (channel = column; every value fits
        int32) through the 16-lane epilogue. Returns the saturation count."""
        width = acc2.shape[1]
        tmp = np.zeros(16, dtype=np.int32)
        count = 0
        for i in range(i0, i1):
            a = acc2[i]
            o = out2[i]
            for j0 in range(0, width, 16):
                n = min(16, width - j0)
                for j in range(n):
                    tmp[j] = np.int32(a[j0 + j])
                codes, k = ep_k.ep16(kind, rnd, simd.vload_i32(tmp, 0), mf, mi, s1, s2, j0,
                                     zpf, zp, lo, hi, n)
                count += k
                ep_k.store16(o, j0, 1, codes, n)
        return count

    @njit(cache=True)
    def requant_planes(acc2, n_ch, mf, mi, s1, s2, zpf, zp, lo, hi, out2, i0, i1):
        """As ``requant_columns`` with row ``i`` one plane of channel ``i % n_ch``."""
        width = acc2.shape[1]
        tmp = np.zeros(16, dtype=np.int32)
        count = 0
        for i in range(i0, i1):
            a = acc2[i]
            o = out2[i]
            c = i % n_ch
            for j0 in range(0, width, 16):
                n = min(16, width - j0)
                for j in range(n):
                    tmp[j] = np.int32(a[j0 + j])
                codes, k = ep_k.ep16_splat(kind, rnd, simd.vload_i32(tmp, 0), mf, mi, s1, s2,
                                           c, zpf, zp, lo, hi, n)
                count += k
                ep_k.store16(o, j0, 1, codes, n)
        return count

    by_column = loop == RQ_LOOP_SCALAR_COLUMNS

    @njit(cache=True)
    def requant_scalar(acc2, n_ch, mf, mi, s1, s2, zpf, zp, lo, hi, out2, i0, i1):
        """Rows ``[i0, i1)`` through the scalar ``ep_*`` functions (any accumulator the
        epilogue's ``acc_limit`` allows); ``by_column``: the channel is the column index."""
        width = acc2.shape[1]
        count = 0
        for i in range(i0, i1):
            a = acc2[i]
            o = out2[i]
            c = i % n_ch
            for j in range(width):
                cc = j if by_column else c
                if kind == ep_k.EP_FP32:
                    q, s = ep_k.ep_fp32(a[j], mf[cc], rnd, zp, lo, hi)
                elif kind == ep_k.EP_FP32_ZP_IN:
                    q, s = ep_k.ep_fp32_zp_in(a[j], mf[cc], zpf, rnd, lo, hi)
                elif kind == ep_k.EP_INT or kind == ep_k.EP_INT32:
                    q, s = ep_k.ep_int(a[j], mi[cc], s1[cc], rnd, zp, lo, hi)
                else:
                    q, s = ep_k.ep_q31(a[j], mi[cc], s1[cc], s2[cc], kind == ep_k.EP_Q31_RUY, zp, lo,
                                       hi)
                o[j] = q
                count += s
        return count

    requant_items = (requant_columns, requant_planes, requant_scalar, requant_scalar)[loop]

    @njit(cache=True, parallel=True)
    def requant_par(acc2, n_ch, mf, mi, s1, s2, zpf, zp, lo, hi, out2, n_chunks):
        n_items = acc2.shape[0]
        sat = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            sat[ch] = requant_items(acc2, n_ch, mf, mi, s1, s2, zpf, zp, lo, hi, out2,
                                    ch * n_items // n_chunks, (ch + 1) * n_items // n_chunks)
        return sat.sum()

    return requant_items, requant_par


# element count below which the standalone kernels run on the calling thread only
PARALLEL_MIN_ELEMENTS = 1 << 18


def requantize(acc, *, rq_mode, rq_multiplier=None, rq_shift=None, rq_rounding="half_even",
               out_zero_point=0, out_min=None, out_max=None, out_dtype="int8", channel_axis=-1):
    """Requantize an integer accumulator array; returns ``(out, out_saturated)``.

    ``acc``: any integer array (converted to int64). Parameters as in docs/PROGRAM.md; a length-1
    multiplier/shift is per-tensor, otherwise its length must equal ``acc.shape[channel_axis]``.
    ``out_min``/``out_max`` default to the ``out_dtype`` range.
    """
    check_int_array("accumulator", acc)
    if rq_mode not in RQ_MODES:
        raise KernelInputError(f"unknown rq_mode {rq_mode!r}; expected one of {sorted(RQ_MODES)}")
    if rq_mode == "none":
        p = requant_params(rq_mode=rq_mode, out_min=out_min, out_max=out_max,
                           out_dtype=out_dtype)
        lo, hi = dtype_range(p.dtype)
        if acc.size and (acc.min() < lo or acc.max() > hi):
            raise KernelInputError(f"rq_mode 'none': accumulator does not fit {p.dtype.name}")
        return acc.astype(p.dtype), 0
    # validate the clamp and rounding before the channel axis (the historical error order)
    dt = np.dtype(out_dtype)
    if out_min is None or out_max is None:
        if dt.name not in INT_DTYPES:
            raise KernelInputError(f"out_dtype {dt.name} is not an integer storage type")
    else:
        check_out_range(out_min, out_max, dt)
    rounding_code(rq_rounding)
    outer, n_ch, inner, _ = split_axis(acc.shape, channel_axis)
    p = requant_params(rq_mode=rq_mode, rq_multiplier=rq_multiplier, rq_shift=rq_shift,
                       rq_rounding=rq_rounding, out_zero_point=out_zero_point, out_min=out_min,
                       out_max=out_max, out_dtype=out_dtype, n_ch=n_ch)
    return requantize_with(acc, p, outer, n_ch, inner)


def requantize_launch(shape, bound, p, outer, n_ch, inner):
    """The :class:`simulator.launch.Launch` of :func:`requantize_with` for an int64 accumulator of
    ``shape`` whose values satisfy ``|acc| <= bound``, or ``None`` when the bound does not decide
    what the interpreter decides from the values (``rq_mode='fixed'`` needs ``|acc| < 2**62``)."""
    if p.mode == RQ_FIXED and bound >= _FIXED_ACC_LIMIT:
        return None
    shape = tuple(int(d) for d in shape)
    size = outer * n_ch * inner
    ep = p.epilogue()
    if ep is not None and (ep.acc_limit is None or bound <= ep.acc_limit):
        by_column = inner == 1 and n_ch > 1
        shape2 = (outer, n_ch) if by_column else (outer * n_ch, inner)
        fits32 = bound < 2**31
        threads = numba.get_num_threads()
        items, par = _requant_kernels(ep.kind, ep.rnd, _requant_loop(by_column, fits32))
        args = (In(0, shape2), n_ch) + ep.arrays() + (Tmp(0, shape2),)
        if size >= PARALLEL_MIN_ELEMENTS and threads > 1 and shape2[0] > 1:
            call = Call(par, args + (min(shape2[0], 4 * threads),), counted=True)
        else:
            call = Call(items, args + (0, shape2[0]), counted=True)
        return Launch(((shape, p.dtype.name),), (call,), (Tmp(0),))
    dims = (outer, n_ch, inner)
    call = Call(_requant_kernel, (In(0, dims), p.mode, p.mult_f, p.mult_i, p.shifts, p.rnd,
                                  np.int64(p.zp), np.int64(p.out_min), np.int64(p.out_max),
                                  Tmp(0, dims)), counted=True)
    return Launch((((size,), "int64"), (shape, p.dtype.name)),
                  (call, Call(cast_copy, (Tmp(0), Tmp(1, (size,))))), (Tmp(1),))


def requantize_with(acc, p, outer, n_ch, inner):
    """``requantize`` with validated parameters ``p`` (:func:`requant_params`) along an axis
    split ``(outer, n_ch, inner)`` of ``acc``."""
    acc = np.ascontiguousarray(acc, dtype=np.int64)
    amin = amax = 0
    if acc.size and (p.mode == RQ_FIXED or p.epilogue() is not None):
        amin, amax = int(acc.min()), int(acc.max())
    if p.mode == RQ_FIXED and (amin <= -_FIXED_ACC_LIMIT or amax >= _FIXED_ACC_LIMIT):
        raise KernelInputError("rq_mode 'fixed' needs |accumulator| < 2**62")
    acc3 = acc.reshape(outer, n_ch, inner)
    out3 = np.empty((outer, n_ch, inner), dtype=p.dtype)
    ep = p.epilogue()
    if ep is not None and (ep.acc_limit is None or max(-amin, amax) <= ep.acc_limit):
        by_column = inner == 1 and n_ch > 1
        shape2 = (outer, n_ch) if by_column else (outer * n_ch, inner)
        acc2 = acc3.reshape(shape2)
        out2 = out3.reshape(shape2)
        fits32 = -(2**31) <= amin and amax < 2**31
        threads = numba.get_num_threads()
        items, par = _requant_kernels(ep.kind, ep.rnd, _requant_loop(by_column, fits32))
        if acc.size >= PARALLEL_MIN_ELEMENTS and threads > 1 and shape2[0] > 1:
            n_sat = par(acc2, n_ch, *ep.arrays(), out2, min(shape2[0], 4 * threads))
        else:
            n_sat = items(acc2, n_ch, *ep.arrays(), out2, 0, shape2[0])
    else:
        out64 = np.empty((outer, n_ch, inner), dtype=np.int64)
        n_sat = _requant_kernel(read_only(acc3), p.mode, read_only(p.mult_f),
                                read_only(p.mult_i), read_only(p.shifts), p.rnd,
                                np.int64(p.zp), np.int64(p.out_min), np.int64(p.out_max), out64)
        out3[...] = out64
    return out3.reshape(acc.shape), int(n_sat)


# --------------------------------------------------------------------------------------------
# Quantize / dequantize
# --------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _quantize_kernel(x3, scale, zp, rnd, use_multiply, out_min, out_max, out3):
    outer, n_ch, inner = x3.shape
    sat = np.zeros(outer * n_ch, dtype=np.int64)
    for oc in prange(outer * n_ch):
        o = oc // n_ch
        c = oc % n_ch
        s = scale[c]
        inv = f32_div(np.float32(1.0), s)
        z = zp[c]
        count = 0
        for i in range(inner):
            if use_multiply:
                f = f32_mul(x3[o, c, i], inv)
            else:
                f = f32_div(x3[o, c, i], s)
            r = round_float(f, rnd)
            v, flag = clamp_add_zp(r, z, out_min, out_max)
            out3[o, c, i] = v
            if flag:
                count += 1
        sat[oc] = count
    return sat.sum()


def _make_quantize_kernels(rnd):
    @njit(cache=True)
    def quantize_range(x1, scale, inv, zp, n_ch, inner, use_multiply, out_min, out_max, out1,
                       i0, i1):
        """Flat elements ``[i0, i1)`` (16-aligned chunks never straddle two channels):
        ``f = f32(x / s)`` (or ``f32(x * inv)``), rounded, clamped, ``+ zp``."""
        tmp = np.zeros(16, dtype=np.float32)
        cnt = 0
        for i in range(i0, i1, 16):
            n = min(16, i1 - i)
            c = (i // inner) % n_ch
            z = zp[c]
            if n == 16:
                xv = simd.vload_f32x(x1, i)
            else:
                for j in range(n):
                    tmp[j] = x1[i + j]
                xv = simd.vload_f32x(tmp, 0)
            if use_multiply:
                f = simd.vmul_f32(xv, simd.vsplat_f32(inv[c]))
            else:
                f = simd.vdiv_f32(xv, simd.vsplat_f32(scale[c]))
            q, k = simd.vquant(f, out_min - z, out_max - z, n, rnd)
            cnt += k
            ep_k.store16(out1, i, 1, simd.vadd_i32(q, simd.vsplat_i32(z)), n)
        return cnt

    @njit(cache=True, parallel=True)
    def quantize_par(x1, scale, inv, zp, n_ch, inner, use_multiply, out_min, out_max, out1,
                     n_chunks):
        n16 = (x1.shape[0] + 15) // 16
        sat = np.zeros(n_chunks, dtype=np.int64)
        for ch in prange(n_chunks):
            i0 = ch * n16 // n_chunks * 16
            i1 = min((ch + 1) * n16 // n_chunks * 16, x1.shape[0])
            sat[ch] = quantize_range(x1, scale, inv, zp, n_ch, inner, use_multiply, out_min,
                                     out_max, out1, i0, i1)
        return sat.sum()

    return quantize_range, quantize_par




def quantize(x, **params):
    """Quantize float32 ``x``: ``q = clamp(round(f32(x / s)) + zp)``; returns
    ``(q, out_saturated)``. Parameters: see :func:`quantize_launch`."""
    outs, n_sat = quantize_launch(x, **params).execute((np.ascontiguousarray(x),))
    return outs[0], n_sat


def quantize_launch(x, *, scale, zero_point, axis=1, rounding="half_even", method="divide",
                    out_min=None, out_max=None, out_dtype="int8"):
    """The :class:`simulator.launch.Launch` of :func:`quantize` for inputs of ``x``'s shape and
    dtype (values not read).

    ``method='divide'`` is ORT/TFLite QuantizeLinear (true IEEE division); ``'multiply'`` uses
    ``f32(x * f32(1 / s))``. Per-axis when ``scale``/``zero_point`` have length > 1. NaN maps to
    ``out_min`` and +-inf to the clamp bounds (ORT's ``maxps``/``minps`` clamp followed by
    ``cvtps2dq`` gives the same).
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise KernelInputError(
            f"quantize: expected a float32 array, got {getattr(x, 'dtype', type(x).__name__)}"
        )
    if method not in ("divide", "multiply"):
        raise KernelInputError(f"quantize: method must be 'divide' or 'multiply', got {method!r}")
    dt = np.dtype(out_dtype)
    lo, hi = dtype_range(dt) if dt.name in INT_DTYPES else (0, -1)
    out_min, out_max, dt = check_out_range(lo if out_min is None else out_min,
                                           hi if out_max is None else out_max, dt)
    rnd = rounding_code(rounding)
    n_params = np.size(scale)
    if n_params > 1:
        outer, n_ch, inner, _ = split_axis(x.shape, axis)
    else:
        outer, n_ch, inner = 1, 1, x.size
    s = per_channel("scale", scale, n_ch, np.float32)
    z = per_channel("zero_point", zero_point, n_ch, np.int64)
    if np.any(~(s > 0)) or np.any(~np.isfinite(s)):
        raise KernelInputError("quantize: scales must be positive and finite")
    small = max(abs(out_min - int(z.min())), abs(out_max - int(z.max())),
                abs(out_min - int(z.max())), abs(out_max - int(z.min()))) < 2**22
    shape = tuple(int(d) for d in x.shape)
    size = outer * n_ch * inner
    if small and (n_ch == 1 or inner % 16 == 0):
        ks = specialised(_make_quantize_kernels, int(rnd))
        inv = np.array([f32_div(np.float32(1.0), v) for v in s], dtype=np.float32)
        args = (In(0, (size,)), s, inv, z, n_ch, inner, method == "multiply", np.int64(out_min),
                np.int64(out_max), Tmp(0))
        threads = numba.get_num_threads()
        if threads > 1 and size >= PARALLEL_MIN_ELEMENTS:
            call = Call(ks[1], args + (4 * threads,), counted=True)
        else:
            call = Call(ks[0], args + (0, size), counted=True)
        return Launch((((size,), dt.name),), (call,), (Tmp(0, shape),))
    call = Call(_quantize_kernel, (In(0, (outer, n_ch, inner)), s, z, rnd, method == "multiply",
                                   np.int64(out_min), np.int64(out_max),
                                   Tmp(0, (outer, n_ch, inner))), counted=True)
    return Launch((((size,), "int64"), ((size,), dt.name)),
                  (call, Call(cast_copy, (Tmp(0), Tmp(1)))), (Tmp(1, shape),))


@njit(cache=True)
def _dequantize_range(x1, scale, zp, n_ch, inner, out1, q0, q1):
    """Planes ``[q0, q1)`` (plane ``q``: ``inner`` consecutive elements of channel ``q % n_ch``)
    of flat ``x1``: ``out1 = f32(f32(x - zp) * s)``. (A serial kernel with one simple loop: the
    former ``parallel=True`` kernel on 3-D arrays took ~3x as long to compile.)"""
    for q in range(q0, q1):
        c = q % n_ch
        s = scale[c]
        z = zp[c]
        b = q * inner
        for i in range(b, b + inner):
            out1[np.uint64(i)] = f32_mul(int_to_f32(np.int64(x1[np.uint64(i)]) - z), s)


@njit(cache=True, parallel=True)
def _dequantize_par(x1, scale, zp, n_ch, inner, out1, n_chunks):
    n_planes = x1.shape[0] // inner
    for ch in prange(n_chunks):
        _dequantize_range(x1, scale, zp, n_ch, inner, out1, ch * n_planes // n_chunks,
                          (ch + 1) * n_planes // n_chunks)


def dequantize(x, **params):
    """Dequantize integer ``x``: ``y = f32(f32(x - zp) * s)`` (ORT DequantizeLinear); float32 out.

    ``x - zp`` is exact in int64 (ORT computes it in int32, the same unless it overflows).
    Parameters: see :func:`dequantize_launch`.
    """
    outs, _ = dequantize_launch(x, **params).execute((np.ascontiguousarray(x),))
    return outs[0]


def dequantize_launch(x, *, scale, zero_point, axis=1):
    """The :class:`simulator.launch.Launch` of :func:`dequantize` for inputs of ``x``'s shape and
    dtype (values not read)."""
    check_int_array("dequantize input", x)
    if np.size(scale) > 1 or np.size(zero_point) > 1:
        n = max(np.size(scale), np.size(zero_point))
        outer, n_ch, inner, _ = split_axis(x.shape, axis)
        if n != n_ch:
            raise KernelInputError(
                f"dequantize: {n} per-axis parameters but axis {axis} has size {n_ch}"
            )
    else:
        outer, n_ch, inner = 1, 1, x.size
    s = per_channel("scale", scale, n_ch, np.float32)
    z = per_channel("zero_point", zero_point, n_ch, np.int64)
    size = outer * n_ch * inner
    n_planes = outer * n_ch
    args = (In(0, (size,)), s, z, n_ch, inner, Tmp(0))
    threads = numba.get_num_threads()
    if threads > 1 and size >= PARALLEL_MIN_ELEMENTS and n_planes > 1:
        call = Call(_dequantize_par, args + (min(n_planes, 4 * threads),))
    else:
        call = Call(_dequantize_range, args + (0, n_planes))
    return Launch((((size,), "float32"),), (call,),
                  (Tmp(0, tuple(int(d) for d in x.shape)),))


# --------------------------------------------------------------------------------------------
# Float re-quantization of a float32 value (shared by softmax, add 'float', rescale float_dq_q)
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def quantize_value_divide(f, scale, zp, rnd, out_min, out_max):
    """``clamp(round(f32(f / scale)) + zp)`` for one float32 ``f``; returns (value, saturated)."""
    r = round_float(f32_div(f, scale), rnd)
    return clamp_add_zp(r, zp, out_min, out_max)


__all__ = [
    "RQ_MODES",
    "requantize",
    "requant_one",
    "quantize",
    "dequantize",
    "clamp_add_zp",
    "quantize_value_divide",
    "dtype_range",
    "rounding_code",
    "check_int_array",
    "check_out_range",
    "per_channel",
    "split_axis",
    "INT64_MAX",
]
