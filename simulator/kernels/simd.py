"""Explicit SIMD for the integer GEMM micro-kernel: a 512-bit vector type and AVX-512 VNNI ops.

LLVM does not turn a scalar int8 dot product into ``vpdpbusd`` by itself (it stops at
``vpmaddwd`` on 256-bit vectors, about 15 GMAC/s here), so the conv/gemm micro-kernel in
:mod:`simulator.kernels.igemm` is written with these intrinsics (about 200 GMAC/s per core on a
Sapphire/Emerald Rapids core). Everything here is exact integer arithmetic:

- ``I32x16`` is an LLVM ``<16 x i32>`` value (one zmm register); numba keeps it in a register.
- ``vdpbusd(acc, a, b)``: ``acc[j] += sum_{t<4} u8(a[4j+t]) * s8(b[4j+t])`` in int32, wrapping
  (x86 ``vpdpbusd``, no saturation; four products of at most 255*128 each cannot overflow an
  int32 lane on their own, so the lane result is exact whenever the running sum fits int32 --
  the callers prove that from the weights).
- ``vbcast4(arr, i)``: the 4 bytes ``arr[i:i+4]`` broadcast to the 16 lanes (``vpbroadcastd``).
- ``vload(arr, i)`` / ``vstore(arr, i, v)``: 64 unaligned bytes at element ``i``.

Whether the VNNI kernels run is :func:`simulator.capabilities.capabilities` ``.vnni`` (the host
has AVX-512 F/BW/VNNI, numba compiles for the host CPU, and neither ``SIMULATOR_KERNELS`` nor
``SIMULATOR_SIMD=0`` says otherwise); otherwise the portable kernels run: same results, slower.
The kernels built on the VNNI-only ops are only compiled on that path. A few ops here
(``vmadd16_i32``, the fp32 epilogues' rounding) read the gate while generating code and emit a
VNNI instruction or a portable sequence; :mod:`simulator.kernels.jitcache` keeps the two
versions apart on disk.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from simulator import rounding as R
from simulator.capabilities import capabilities, target_features


def __getattr__(name):
    # ``simd.ENABLED`` was a module constant computed at import; the gate answers now, on first
    # use. Kept for readers outside the simulator (tests/simulator/test_sim_conv_fast.py).
    if name == "ENABLED":
        return capabilities().vnni
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class I32x16Type(types.Type):
    """numba type of an LLVM ``<16 x i32>`` value."""

    def __init__(self):
        super().__init__(name="I32x16")


i32x16 = I32x16Type()
_VT = ir.VectorType(ir.IntType(32), 16)


@register_model(I32x16Type)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _elem_ptr(context, builder, arr_ty, arr, idx, idx_ty):
    ary = context.make_array(arr_ty)(context, builder, arr)
    i = context.cast(builder, idx, idx_ty, types.intp)
    return builder.gep(ary.data, [i])


@intrinsic
def vzero(typingctx):
    """A vector of 16 zero int32 lanes."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_VT, [0] * 16)
    return i32x16(), codegen


@intrinsic
def vload(typingctx, arr, idx):
    """The 64 bytes starting at element ``idx`` of a contiguous 1-D array, as 16 int32 lanes."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(p, _VT.as_pointer()), align=1)
    return i32x16(arr, idx), codegen


@intrinsic
def vbcast4(typingctx, arr, idx):
    """The 4 bytes at element ``idx`` of a contiguous 1-D uint8 array, broadcast to 16 lanes."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        v = builder.load(builder.bitcast(p, ir.IntType(32).as_pointer()), align=1)
        vec = builder.insert_element(ir.Constant(_VT, ir.Undefined), v,
                                     ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(vec, vec, ir.Constant(_VT, [0] * 16))
    return i32x16(arr, idx), codegen


@intrinsic
def vdpbusd(typingctx, acc, a, b):
    """``vpdpbusd``: ``acc[j] + sum_{t<4} u8(a)[4j+t] * s8(b)[4j+t]`` per int32 lane (wraps)."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(_VT, [_VT, _VT, _VT])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, list(args))
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """Store 16 int32 lanes at element ``idx`` of a contiguous 1-D int32 array."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        builder.store(args[2], builder.bitcast(p, _VT.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(arr, idx, i32x16), codegen


# --------------------------------------------------------------------------------------------
# Portable 16-lane vectors for the requantization epilogue (generic LLVM IR: any target)
# --------------------------------------------------------------------------------------------
# These use only target-independent LLVM instructions and intrinsics (sitofp, fmul, fcmp/select,
# llvm.roundeven/floor/trunc, sext/mul/ashr...), whose semantics are IEEE / two's complement
# exactly as written; LLVM legalizes them to whatever vector width the CPU has.

class F32x16Type(types.Type):
    """numba type of an LLVM ``<16 x float>`` value."""

    def __init__(self):
        super().__init__(name="F32x16")


class I64x16Type(types.Type):
    """numba type of an LLVM ``<16 x i64>`` value."""

    def __init__(self):
        super().__init__(name="I64x16")


f32x16 = F32x16Type()
i64x16 = I64x16Type()
_FT = ir.VectorType(ir.FloatType(), 16)
_LT = ir.VectorType(ir.IntType(64), 16)
_I1V = ir.VectorType(ir.IntType(1), 16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


@register_model(F32x16Type)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _FT)


@register_model(I64x16Type)
class _I64x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LT)


def _splat(builder, value, vty):
    vec = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 16), [0] * 16))


def _vcall(builder, name, vty, *args):
    fnty = ir.FunctionType(vty, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, list(args))


def _clamp_f(builder, x, lo, hi):
    """min(max(x, lo), hi) with compare+select (no NaN reaches here)."""
    x = builder.select(builder.fcmp_ordered("<", x, lo), lo, x)
    return builder.select(builder.fcmp_ordered(">", x, hi), hi, x)


def _clamp_i(builder, x, lo, hi):
    x = builder.select(builder.icmp_signed("<", x, lo), lo, x)
    return builder.select(builder.icmp_signed(">", x, hi), hi, x)


def _count_lanes(builder, mask, n):
    """Number of true lanes of ``mask`` among the first ``n`` (i64)."""
    lane = ir.Constant(_LT, list(range(16)))
    valid = builder.icmp_signed("<", lane, _splat(builder, n, _LT))
    bits = builder.bitcast(builder.and_(mask, valid), ir.IntType(16))
    cnt = _vcall(builder, "llvm.ctpop.i16", ir.IntType(16), bits)
    return builder.zext(cnt, _I64)


# --------------------------------------------------------------------------------------------
# Rounding, generated at compile time from the rule of a static mode (simulator.rounding)
# --------------------------------------------------------------------------------------------
def _static_mode(rnd):
    """The :class:`simulator.rounding.Mode` of an intrinsic's rounding argument, or ``None``
    (numba then retries with the literal type). Only a compile-time constant is accepted: the
    kernels pass closure constants, so every mode gets straight-line code and the epilogue never
    branches on the mode."""
    if isinstance(rnd, types.IntegerLiteral):
        return R.get_mode(rnd.literal_value)
    return None


def _rule(above, tie, below):
    return (above.table, tie.table, below.table)


def _holds(builder, table, q_neg, q_odd):
    """i1 lanes: the predicate with truth table ``table`` (bit ``2 * neg + odd``) of ``q``, or
    ``True`` (Python) when it always holds. ``q_neg``/``q_odd`` build the lanes on demand, so a
    rule that never looks at the sign (or parity) costs nothing for it."""
    if table == R.ALWAYS.table:
        return True

    def by_parity(t):  # t: truth table over (even, odd) for one sign
        if t == 0:
            return ir.Constant(_I1V, [0] * 16)
        if t == 3:
            return ir.Constant(_I1V, [1] * 16)
        return q_odd() if t == 2 else builder.not_(q_odd())

    nonneg, neg = table & 3, table >> 2
    if nonneg == neg:
        return by_parity(neg)
    if {nonneg, neg} == {0, 3}:
        return q_neg() if neg == 3 else builder.not_(q_neg())
    return builder.select(q_neg(), by_parity(neg), by_parity(nonneg))


def _up_lanes(builder, mode, region, q_neg, q_odd):
    """i1 lanes "round up to q + 1" of ``mode``'s rule, or ``None`` if it never does.
    ``region(frozenset of 'above'/'tie'/'below')``: the lanes whose fraction lies in one of those
    regions (never a zero fraction). Regions sharing a predicate are tested together, so e.g.
    half_up is a single ``rem >= half``."""
    groups = {}
    for name, pred in (("above", mode.above), ("tie", mode.tie), ("below", mode.below)):
        if pred.table != R.NEVER.table:
            groups.setdefault(pred.table, set()).add(name)
    up = None
    for table, names in groups.items():
        cond = region(frozenset(names))
        h = _holds(builder, table, q_neg, q_odd)
        term = cond if h is True else builder.and_(cond, h)
        up = term if up is None else builder.or_(up, term)
    return up


# the comparison with the midpoint (fraction 1/2) that selects a set of regions
_ABOVE = frozenset({"above"})
_REGION_CMP = {frozenset({"above"}): ">", frozenset({"tie"}): "==", frozenset({"below"}): "<",
               frozenset({"above", "tie"}): ">=", frozenset({"tie", "below"}): "<=",
               frozenset({"above", "below"}): "!="}


def _region_fn(builder, cmp, value, half, nonzero, zero_below_half=False):
    """``region`` for :func:`_up_lanes`: ``value`` (lanes) compared with the midpoint ``half``
    by ``cmp(op, a, b)`` (``icmp_signed`` or ``fcmp_ordered``); ``nonzero()``: the lanes whose
    fraction is not 0. (The remainder and 2**(s-1), or ``g`` and ``floor(g) + 1/2``.)
    ``zero_below_half``: a zero fraction always compares below the midpoint (true for floats;
    for a shift by 0 the integer midpoint is 0 too), so only 'below' needs ``nonzero``."""
    def region(names):
        if len(names) == 3:
            return nonzero()
        c = cmp(_REGION_CMP[names], value, half)
        # 'above' alone excludes a zero fraction already (the midpoint lies above it)
        if names == _ABOVE or (zero_below_half and "below" not in names):
            return c
        return builder.and_(c, nonzero())
    return region


def _lazy(make):
    """``make()``, built once on first use: IR for ``q < 0`` or the parity only where a rule
    needs it."""
    cache = []

    def get():
        if not cache:
            cache.append(make())
        return cache[0]
    return get


def _round_generic_f(builder, g, mode):
    """``mode``'s rule on float lanes: ``q = floor(g)``, and ``g`` compared with ``q + 1/2``,
    which is exact for ``|g| < 2**22`` (``g - q`` is not: ``-0.49999997f + 1`` rounds to the tie
    1/2). ``q`` must fit int32 (parity)."""
    q = _vcall(builder, "llvm.floor.v16f32", _FT, g)
    h = builder.fadd(q, ir.Constant(_FT, [0.5] * 16))
    zero = ir.Constant(_FT, [0.0] * 16)
    nonzero = _lazy(lambda: builder.fcmp_ordered("!=", g, q))
    region = _region_fn(builder, builder.fcmp_ordered, g, h, nonzero, zero_below_half=True)
    q_neg = _lazy(lambda: builder.fcmp_ordered("<", q, zero))
    q_odd = _lazy(lambda: builder.trunc(builder.fptosi(q, _VT), _I1V))
    up = _up_lanes(builder, mode, region, q_neg, q_odd)
    if up is None:
        return q
    return builder.select(up, builder.fadd(q, ir.Constant(_FT, [1.0] * 16)), q)


def _fast_f(builder, g, mode):
    """One instruction for the rules that have one (exact for every float), else ``None``;
    tests/simulator/test_rounding.py compares them with :func:`_round_generic_f`. Half up and
    half away have none: ``floor(g + 1/2)`` and ``trunc(g + copysign(1/2, g))`` give 1 for
    ``g = 0.49999997f``, where the f32 sum ``g + 1/2`` rounds up to 1."""
    rule = _rule(mode.above, mode.tie, mode.below)
    if rule == _rule(R.ALWAYS, R.Q_ODD, R.NEVER):
        return _vcall(builder, "llvm.roundeven.v16f32", _FT, g)
    if rule == _rule(R.NEVER, R.NEVER, R.NEVER):
        return _vcall(builder, "llvm.floor.v16f32", _FT, g)
    if rule == _rule(R.Q_NEG, R.Q_NEG, R.Q_NEG):
        return _vcall(builder, "llvm.trunc.v16f32", _FT, g)
    return None


def _round_f(builder, g, mode, fast=True):
    """Round the float lanes ``g`` (``|g| < 2**22``) with the static ``mode``; float lanes."""
    r = _fast_f(builder, g, mode) if fast else None
    return _round_generic_f(builder, g, mode) if r is None else r


def _is_rne(mode):
    return _rule(mode.above, mode.tie, mode.below) == _rule(R.ALWAYS, R.Q_ODD, R.NEVER)


def _i64(context, builder, val, ty):
    return context.cast(builder, val, ty, types.int64)


@intrinsic
def vload_i32(typingctx, arr, idx):
    """16 int32 lanes from element ``idx`` of a contiguous 1-D int32 array."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(p, _VT.as_pointer()), align=4)
    return i32x16(arr, idx), codegen


@intrinsic
def vload_f32(typingctx, arr, idx):
    """16 float32 lanes from element ``idx`` of a contiguous 1-D float32 array."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(p, _FT.as_pointer()), align=4)
    return f32x16(arr, idx), codegen


@intrinsic
def vload_i64(typingctx, arr, idx):
    """16 int64 lanes from element ``idx`` of a contiguous 1-D int64 array."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(p, _LT.as_pointer()), align=8)
    return i64x16(arr, idx), codegen


@intrinsic
def vsplat_f32(typingctx, x):
    """A float32 scalar in all 16 lanes."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, v, _FT)
    return f32x16(x), codegen


@intrinsic
def vsplat_i64(typingctx, x):
    """An int64 scalar in all 16 lanes."""
    def codegen(context, builder, sig, args):
        return _splat(builder, _i64(context, builder, args[0], sig.args[0]), _LT)
    return i64x16(x), codegen


@intrinsic
def vadd_i32(typingctx, a, b):
    """Lane-wise int32 addition (wraps)."""
    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def vload_u8_i32(typingctx, arr, idx):
    """16 bytes from element ``idx`` of a contiguous 1-D uint8 array, zero-extended to int32."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        b16 = ir.VectorType(ir.IntType(8), 16)
        v = builder.load(builder.bitcast(p, b16.as_pointer()), align=1)
        return builder.zext(v, _VT)
    return i32x16(arr, idx), codegen


@intrinsic
def vand_i32(typingctx, a, b):
    """Lane-wise bitwise and of two int32 vectors."""
    def codegen(context, builder, sig, args):
        return builder.and_(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def vmadd_i32(typingctx, acc, a, b):
    """``acc + a * b`` lane-wise in int32 (wraps; the callers' values cannot overflow)."""
    def codegen(context, builder, sig, args):
        return builder.add(args[0], builder.mul(args[1], args[2]))
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def vmadd16_i32(typingctx, acc, a, b):
    """``acc + a * b`` lane-wise in int32 (wraps) for ``0 <= a < 2**15`` and ``b`` in int16
    (only the low 16 bits of each ``b`` lane are used, as a signed value). With AVX-512 VNNI
    this is one ``vpdpwssd`` (``acc + a.lo * b.lo + a.hi * b.hi`` over the 16-bit halves,
    wrapping; the high half of ``a`` is 0, so it adds the single product ``a * b``), else a
    portable 32-bit multiply and add."""
    def codegen(context, builder, sig, args):
        acc_v, a_v, b_v = args
        if capabilities().vnni:
            return _vcall(builder, "llvm.x86.avx512.vpdpwssd.512", _VT, acc_v, a_v, b_v)
        else:
            h = ir.VectorType(ir.IntType(16), 16)
            p = builder.mul(a_v, builder.sext(builder.trunc(b_v, h), _VT))
        return builder.add(acc_v, p)
    return i32x16(i32x16, i32x16, i32x16), codegen


_W32 = ir.VectorType(ir.IntType(16), 32)


def _lanes(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), list(values))


@intrinsic
def vmaddwd(typingctx, acc, a, w):
    """``acc[j] + a[2j] * w[2j] + a[2j+1] * w[2j+1]`` per int32 lane, ``a`` and ``w`` read as 32
    int16 lanes (products exact, additions wrapping; ``vpmaddwd`` never overflows here because
    the callers' ``a`` is never -32768). The portable dense kernel's inner product
    (:mod:`simulator.kernels.portable`). LLVM does not reliably find ``vpmaddwd`` in the generic
    form (it splits the even/odd lanes into 16-product multiplies), so on x86 targets with
    AVX-512BW or AVX2 (:func:`simulator.capabilities.target_features`) this names the
    instruction; any other target gets the generic sign-extend, multiply and add."""
    def codegen(context, builder, sig, args):
        acc_v, a_v, w_v = args
        feats = target_features()
        if feats.get("avx512bw"):
            p = _vcall(builder, "llvm.x86.avx512.pmaddw.d.512", _VT,
                       builder.bitcast(a_v, _W32), builder.bitcast(w_v, _W32))
        elif feats.get("avx2"):
            h16 = ir.VectorType(ir.IntType(16), 16)
            h8 = ir.VectorType(_I32, 8)
            halves = []
            for half in (0, 8):
                sel = _lanes(range(half, half + 8))
                halves.append(_vcall(builder, "llvm.x86.avx2.pmadd.wd", h8,
                                     builder.bitcast(builder.shuffle_vector(a_v, a_v, sel), h16),
                                     builder.bitcast(builder.shuffle_vector(w_v, w_v, sel), h16)))
            p = builder.shuffle_vector(halves[0], halves[1], _lanes(range(16)))
        else:
            a16 = builder.bitcast(a_v, _W32)
            w16 = builder.bitcast(w_v, _W32)
            p = None
            for first in (0, 1):
                sel = _lanes(range(first, 32, 2))
                prod = builder.mul(builder.sext(builder.shuffle_vector(a16, a16, sel), _VT),
                                   builder.sext(builder.shuffle_vector(w16, w16, sel), _VT))
                p = prod if p is None else builder.add(p, prod)
        return builder.add(acc_v, p)
    return i32x16(i32x16, i32x16, i32x16), codegen


@intrinsic
def vget(typingctx, v, j):
    """Lane ``j`` of an int32 vector, as int64."""
    def codegen(context, builder, sig, args):
        e = builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1],
                                                          types.int32))
        return builder.sext(e, _I64)
    return types.int64(i32x16, j), codegen


def _codes_for(context, builder, sig, args):
    """``(element pointer, the int32 lanes converted to the array's element type)`` for the
    code stores ``(arr, idx, v, ...)``: truncation or sign extension, the values being clamped to
    the dtype range already."""
    ety = context.get_value_type(sig.args[0].dtype)
    p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
    vty = ir.VectorType(ety, 16)
    v = args[2]
    if ety.width < 32:
        v = builder.trunc(v, vty)
    elif ety.width > 32:
        v = builder.sext(v, vty)
    return p, v


@intrinsic
def vstore_codes(typingctx, arr, idx, v):
    """Store 16 int32 lanes at element ``idx`` of a contiguous 1-D integer array, converted to
    its dtype (truncation: the values are already clamped to the dtype range)."""
    def codegen(context, builder, sig, args):
        p, v = _codes_for(context, builder, sig, args)
        builder.store(v, builder.bitcast(p, v.type.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(arr, idx, i32x16), codegen


@intrinsic
def vstore_codes_n(typingctx, arr, idx, v, n):
    """:func:`vstore_codes` of the first ``n`` lanes only (``llvm.masked.store``: one masked
    ``vpmovdb``-style store on AVX-512; masked-off lanes are neither written nor touched, so
    the store may end at the array's last element). ``n >= 16`` stores all 16 lanes."""
    def codegen(context, builder, sig, args):
        p, val = _codes_for(context, builder, sig, args)
        vty = val.type
        n64 = _i64(context, builder, args[3], sig.args[3])
        lanes = ir.Constant(_LT, list(range(16)))
        mask = builder.icmp_signed("<", lanes, _splat(builder, n64, _LT))
        ptr = builder.bitcast(p, vty.as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [vty, ptr.type, _I32, mask.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            f"llvm.masked.store.v16i{vty.element.width}.p0")
        builder.call(fn, [val, ptr, ir.Constant(_I32, 1), mask])
        return context.get_dummy_value()
    return types.none(arr, idx, i32x16, n), codegen


_PAIR = types.Tuple((i32x16, types.int64))


def _make_ep16_fp32(fast=True):
    @intrinsic
    def ep16_fp32(typingctx, acc, m, zp, lo, hi, n, rnd):
        mode = _static_mode(rnd)
        if mode is None:
            return None
        return _PAIR(i32x16, f32x16, zp, lo, hi, n, rnd), _fp32_codegen(mode, fast)
    return ep16_fp32


def _fp32_codegen(mode, fast):
    """``fp32`` requantization of 16 int32 accumulators (see ``epilogue.ep_fp32``):
    ``q = clamp(round(f32(f32(acc) * m)) + zp)``; returns (codes, saturated lanes among the
    first ``n``). Needs ``|lo - zp|, |hi - zp| < 2**22`` (exact float bounds)."""
    def codegen(context, builder, sig, args):
        acc_v, m_v = args[0], args[1]
        zp_, lo_, hi_, n_ = (_i64(context, builder, a, t)
                             for a, t in zip(args[2:6], sig.args[2:6]))
        f = builder.fmul(builder.sitofp(acc_v, _FT), m_v)
        q, cnt = _round_clamp_count(builder, f, builder.sub(lo_, zp_), builder.sub(hi_, zp_),
                                    n_, mode, fast)
        q = builder.add(q, _splat(builder, builder.trunc(zp_, _I32), _VT))
        return context.make_tuple(builder, sig.return_type, (q, cnt))
    return codegen


def _round_clamp_count(builder, f, lo_, hi_, n_, mode, fast):
    """``(clamp(round(f), lo, hi) as int32 lanes, lanes among the first n where the rounded
    value lay outside [lo, hi])`` for float lanes ``f`` and i64 bounds with ``|lo|, |hi| <
    2**22``. ``f`` is first clamped to ``[lo - 1, hi + 1]`` (rounding is monotone and keeps
    those integers, so neither the clamped code nor the flag changes), which makes the rounded
    value an exact small int32; the flag is then "the int32 clamp changed it". Round half to
    even is one ``vcvtps2dq`` with embedded rounding on AVX-512 hosts (with ``fast``)."""
    lo_i = _splat(builder, builder.trunc(lo_, _I32), _VT)
    hi_i = _splat(builder, builder.trunc(hi_, _I32), _VT)
    one = ir.Constant(_FT, [1.0] * 16)
    lo_f = builder.fsub(builder.sitofp(lo_i, _FT), one)
    hi_f = builder.fadd(builder.sitofp(hi_i, _FT), one)
    g = _clamp_f(builder, f, lo_f, hi_f)
    if fast and capabilities().vnni and _is_rne(mode):
        cvt = ir.FunctionType(_VT, [_FT, _VT, ir.IntType(16), _I32])
        fn = cgutils.get_or_insert_function(builder.module, cvt,
                                            "llvm.x86.avx512.mask.cvtps2dq.512")
        # rounding operand 8: {rn-sae}, round to nearest even whatever MXCSR says
        r = builder.call(fn, [g, ir.Constant(_VT, [0] * 16), ir.Constant(ir.IntType(16), -1),
                              ir.Constant(_I32, 8)])
    else:
        r = builder.fptosi(_round_f(builder, g, mode, fast), _VT)
    q = _clamp_i(builder, r, lo_i, hi_i)
    return q, _count_lanes(builder, builder.icmp_signed("!=", r, q), n_)


def _make_ep16_fp32_zp_in(fast=True):
    @intrinsic
    def ep16_fp32_zp_in(typingctx, acc, m, zpf, lo, hi, n, rnd):
        mode = _static_mode(rnd)
        if mode is None:
            return None
        return _PAIR(i32x16, f32x16, zpf, lo, hi, n, rnd), _fp32_zp_in_codegen(mode, fast)
    return ep16_fp32_zp_in


def _fp32_zp_in_codegen(mode, fast):
    """``fp32_zp_in``: ``q = clamp(round(f32(f32(f32(acc) * m) + zpf)))``; needs
    ``|lo|, |hi| < 2**22``."""
    def codegen(context, builder, sig, args):
        acc_v, m_v = args[0], args[1]
        zpf_ = context.cast(builder, args[2], sig.args[2], types.float32)
        lo_, hi_, n_ = (_i64(context, builder, a, t) for a, t in zip(args[3:6], sig.args[3:6]))
        f = builder.fmul(builder.sitofp(acc_v, _FT), m_v)
        f = builder.fadd(f, _splat(builder, zpf_, _FT))
        q, cnt = _round_clamp_count(builder, f, lo_, hi_, n_, mode, fast)
        return context.make_tuple(builder, sig.return_type, (q, cnt))
    return codegen


def _shift_round(builder, p, s_v, vty, mode):
    """``round(p / 2**s)`` lane-wise with the static ``mode`` (``vty``: the lanes' vector type,
    int32 or int64): the floor ``p >> s`` plus one where the remainder ``p & (2**s - 1)``
    rounds up by the mode's rule (a zero remainder never does, which also covers ``s = 0``)."""
    one = ir.Constant(vty, [1] * 16)
    zero = ir.Constant(vty, [0] * 16)
    q = builder.ashr(p, s_v)
    pw = builder.shl(one, s_v)
    rem = builder.and_(p, builder.sub(pw, one))
    half = builder.ashr(pw, one)
    nonzero = _lazy(lambda: builder.icmp_signed("!=", rem, zero))
    region = _region_fn(builder, builder.icmp_signed, rem, half, nonzero)
    q_neg = _lazy(lambda: builder.icmp_signed("<", q, zero))
    q_odd = _lazy(lambda: builder.icmp_signed("!=", builder.and_(q, one), zero))
    up = _up_lanes(builder, mode, region, q_neg, q_odd)
    return q if up is None else builder.add(q, builder.zext(up, vty))


def _clamp_count_zp(builder, r, lo_, hi_, zp_, n_, vty):
    """``(clamp(r, lo - zp, hi - zp) + zp, lanes among the first n outside the clamp)`` on
    lanes of ``vty`` (i64 scalars ``lo_``, ``hi_``, ``zp_``, ``n_``); int32 lanes as the
    result."""
    def splat(v):
        return _splat(builder, builder.trunc(v, _I32) if vty == _VT else v, vty)

    lo_r = splat(builder.sub(lo_, zp_))
    hi_r = splat(builder.sub(hi_, zp_))
    out = builder.or_(builder.icmp_signed("<", r, lo_r), builder.icmp_signed(">", r, hi_r))
    cnt = _count_lanes(builder, out, n_)
    r = builder.add(_clamp_i(builder, r, lo_r, hi_r), splat(zp_))
    return (r if vty == _VT else builder.trunc(r, _VT)), cnt


@intrinsic
def ep16_int_p32(typingctx, acc, m, s, zp, lo, hi, n, rnd):
    """``fixed``/``shift`` when the product itself fits int32 (``|acc * m| < 2**31``) and
    ``0 <= s <= 30``: the formulas of :func:`ep16_int` on int32 lanes, half the vector work
    of the int64 product (the caller proves the bound from the operand dtypes)."""
    mode = _static_mode(rnd)
    if mode is None:
        return None

    def codegen(context, builder, sig, args):
        acc_v = args[0]
        m_v = builder.trunc(args[1], _VT)
        s_v = builder.trunc(args[2], _VT)
        zp_, lo_, hi_, n_ = (_i64(context, builder, a, t) for a, t in zip(args[3:7], sig.args[3:7]))
        r = _shift_round(builder, builder.mul(acc_v, m_v), s_v, _VT, mode)
        r, cnt = _clamp_count_zp(builder, r, lo_, hi_, zp_, n_, _VT)
        return context.make_tuple(builder, sig.return_type, (r, cnt))
    return _PAIR(i32x16, i64x16, i64x16, zp, lo, hi, n, rnd), codegen


def _make_ep16_int(m32):
    @intrinsic
    def ep16_int(typingctx, acc, m, s, zp, lo, hi, n, rnd):
        mode = _static_mode(rnd)
        if mode is None:
            return None
        return _PAIR(i32x16, i64x16, i64x16, zp, lo, hi, n, rnd), _int_codegen(mode, m32)
    return ep16_int


def _int_codegen(mode, m32):
    """``fixed``/``shift`` (see ``epilogue.ep_int``): ``q = clamp(round(acc * m / 2**s) + zp)``
    with ``p = acc * m`` exact in int64 and ``0 <= s <= 62``."""
    def codegen(context, builder, sig, args):
        acc_v, m_v, s_v = args[0], args[1], args[2]
        zp_, lo_, hi_, n_ = (_i64(context, builder, a, t) for a, t in zip(args[3:7], sig.args[3:7]))
        if m32:  # the multipliers fit int32: a 32 x 32 -> 64-bit product (vpmuldq)
            m_v = builder.sext(builder.trunc(m_v, _VT), _LT)
        r = _shift_round(builder, builder.mul(builder.sext(acc_v, _LT), m_v), s_v, _LT, mode)
        r, cnt = _clamp_count_zp(builder, r, lo_, hi_, zp_, n_, _LT)
        return context.make_tuple(builder, sig.return_type, (r, cnt))
    return codegen


def _make_ep16_q31(ruy):
    @intrinsic
    def ep16_q31(typingctx, acc, m, left, right, zp, lo, hi, n):
        return _PAIR(i32x16, i64x16, i64x16, i64x16, zp, lo, hi, n), _q31_codegen(ruy)
    return ep16_q31


def _q31_codegen(ruy):
    """``double_q31`` (see ``epilogue.ep_q31``) on 16 int32 accumulators: TFLite
    ``MultiplyByQuantizedMultiplier`` (gemmlowp RHA, or ruy RHU when ``ruy``) + zp, clamped.
    The accumulators are int32 already (``wrap32`` is the identity)."""
    def codegen(context, builder, sig, args):
        acc_v, m_v, l_v, r_v = args[0], args[1], args[2], args[3]
        zp_, lo_, hi_, n_ = (_i64(context, builder, a, t) for a, t in zip(args[4:], sig.args[4:]))
        z = _mbqm_ir(builder, acc_v, m_v, l_v, r_v, ruy)
        zp32 = builder.trunc(zp_, _I32)
        lo_r = _splat(builder, builder.trunc(builder.sub(lo_, zp_), _I32), _VT)
        hi_r = _splat(builder, builder.trunc(builder.sub(hi_, zp_), _I32), _VT)
        out = builder.or_(builder.icmp_signed("<", z, lo_r), builder.icmp_signed(">", z, hi_r))
        cnt = _count_lanes(builder, out, n_)
        r = builder.add(_clamp_i(builder, z, lo_r, hi_r), _splat(builder, zp32, _VT))
        return context.make_tuple(builder, sig.return_type, (r, cnt))
    return codegen


def _mbqm_ir(builder, x32, m_v, l_v, r_v, ruy):
    """TFLite ``MultiplyByQuantizedMultiplier`` on 16 int32 lanes: ``x << left`` (int32, wraps),
    the 64-bit product with the int32 multiplier (``vpmuldq``: both operands are sign-extended
    32-bit values), then gemmlowp SRDHM + RoundingDivideByPOT (RHA twice) or ruy (RHU twice).
    ``m_v``/``l_v``/``r_v``: int64 lanes holding the int32 multiplier and the left/right shifts
    (0..30, 0..31). Returns int32 lanes (the result always fits int32)."""
    one32 = ir.Constant(_VT, [1] * 16)
    zero32 = ir.Constant(_VT, [0] * 16)
    l32 = builder.trunc(l_v, _VT)
    r32 = builder.trunc(r_v, _VT)
    m32 = builder.trunc(m_v, _VT)
    xs32 = builder.shl(x32, l32)
    ab = builder.mul(builder.sext(xs32, _LT), builder.sext(m32, _LT))
    i32max = ir.Constant(_LT, [2**31 - 1] * 16)
    if ruy:
        # (ab + 2**30) >> 31 saturated to INT32_MAX, then round half up by 2**right:
        # floor(y / 2**r + 1/2) = (y >> r) + bit r-1 of y (no int32 overflow)
        y = builder.ashr(builder.add(ab, ir.Constant(_LT, [1 << 30] * 16)),
                         ir.Constant(_LT, [31] * 16))
        y32 = builder.trunc(builder.select(builder.icmp_signed(">", y, i32max), i32max, y), _VT)
        pos = builder.icmp_signed(">", r32, zero32)
        rm1 = builder.select(pos, builder.sub(r32, one32), zero32)
        bit = builder.and_(builder.ashr(y32, rm1), one32)
        bit = builder.select(pos, bit, zero32)
        return builder.add(builder.ashr(y32, r32), bit)
    # gemmlowp SRDHM: (ab + nudge) / 2**31 truncating; INT32_MIN * INT32_MIN -> INT32_MAX
    zero = ir.Constant(_LT, [0] * 16)
    nudge = builder.select(builder.icmp_signed(">=", ab, zero),
                           ir.Constant(_LT, [1 << 30] * 16),
                           ir.Constant(_LT, [1 - (1 << 30)] * 16))
    v = builder.add(ab, nudge)
    bias = builder.and_(builder.ashr(v, ir.Constant(_LT, [63] * 16)),
                        ir.Constant(_LT, [0x7FFFFFFF] * 16))
    y32 = builder.trunc(builder.ashr(builder.add(v, bias), ir.Constant(_LT, [31] * 16)), _VT)
    i32min = ir.Constant(_VT, [-(2**31)] * 16)
    both_min = builder.and_(builder.icmp_signed("==", xs32, i32min),
                            builder.icmp_signed("==", m32, i32min))
    y32 = builder.select(both_min, ir.Constant(_VT, [2**31 - 1] * 16), y32)
    # RoundingDivideByPOT (RHA): (y >> r) + (rem > (mask >> 1) + (y < 0))
    mask = builder.sub(builder.shl(one32, r32), one32)
    rem = builder.and_(y32, mask)
    thr = builder.add(builder.lshr(mask, one32),
                      builder.zext(builder.icmp_signed("<", y32, zero32), _VT))
    return builder.add(builder.ashr(y32, r32),
                       builder.zext(builder.icmp_signed(">", rem, thr), _VT))


# --------------------------------------------------------------------------------------------
# Element-wise helpers (add, quantize, pooling)
# --------------------------------------------------------------------------------------------
@intrinsic
def vload_ext(typingctx, arr, idx):
    """16 elements from ``idx`` of a contiguous 1-D 8/16/32-bit integer array, sign- or
    zero-extended (by the dtype) to int32 lanes."""
    if not isinstance(arr, types.Array) or not isinstance(arr.dtype, types.Integer):
        return None
    signed = arr.dtype.signed

    def codegen(context, builder, sig, args):
        ety = context.get_value_type(sig.args[0].dtype)
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        vty = ir.VectorType(ety, 16)
        v = builder.load(builder.bitcast(p, vty.as_pointer()), align=1)
        if ety.width == 32:
            return v
        if ety.width > 32:
            return builder.trunc(v, _VT)
        return builder.sext(v, _VT) if signed else builder.zext(v, _VT)
    return i32x16(arr, idx), codegen


@intrinsic
def vsplat_i32(typingctx, x):
    """An integer scalar (truncated to int32) in all 16 lanes."""
    def codegen(context, builder, sig, args):
        return _splat(builder, builder.trunc(_i64(context, builder, args[0], sig.args[0]), _I32),
                      _VT)
    return i32x16(x), codegen


@intrinsic
def vsub_i32(typingctx, a, b):
    """Lane-wise int32 subtraction (wraps)."""
    def codegen(context, builder, sig, args):
        return builder.sub(args[0], args[1])
    return i32x16(i32x16, i32x16), codegen


@intrinsic
def vshl_i32(typingctx, a, k):
    """Lane-wise ``a << k`` for a scalar ``0 <= k < 32`` (int32, wraps)."""
    def codegen(context, builder, sig, args):
        k32 = builder.trunc(_i64(context, builder, args[1], sig.args[1]), _I32)
        return builder.shl(args[0], _splat(builder, k32, _VT))
    return i32x16(i32x16, k), codegen


def _make_vmbqm(ruy):
    @intrinsic
    def vmbqm(typingctx, x, m, left, right):
        """TFLite ``MultiplyByQuantizedMultiplier(x, m, left - right)`` on int32 lanes with
        scalar parameters (``left``/``right`` = max(+-tflite_shift, 0)); gemmlowp (RHA twice)
        or ruy (RHU twice). Same as ``primitives.multiply_by_quantized_multiplier``."""
        def codegen(context, builder, sig, args):
            m_v = _splat(builder, _i64(context, builder, args[1], sig.args[1]), _LT)
            l_v = _splat(builder, _i64(context, builder, args[2], sig.args[2]), _LT)
            r_v = _splat(builder, _i64(context, builder, args[3], sig.args[3]), _LT)
            return _mbqm_ir(builder, args[0], m_v, l_v, r_v, ruy)
        return i32x16(i32x16, m, left, right), codegen
    return vmbqm


vmbqm = _make_vmbqm(False)
vmbqm_ruy = _make_vmbqm(True)


@intrinsic
def vclamp_count(typingctx, x, lo, hi, n):
    """``(clamp(x, lo, hi), lanes among the first n outside [lo, hi])`` on int32 lanes."""
    def codegen(context, builder, sig, args):
        lo_v = _splat(builder, builder.trunc(_i64(context, builder, args[1], sig.args[1]), _I32),
                      _VT)
        hi_v = _splat(builder, builder.trunc(_i64(context, builder, args[2], sig.args[2]), _I32),
                      _VT)
        out = builder.or_(builder.icmp_signed("<", args[0], lo_v),
                          builder.icmp_signed(">", args[0], hi_v))
        cnt = _count_lanes(builder, out, _i64(context, builder, args[3], sig.args[3]))
        return context.make_tuple(builder, sig.return_type,
                                  (_clamp_i(builder, args[0], lo_v, hi_v), cnt))
    return _PAIR(i32x16, lo, hi, n), codegen


@intrinsic
def vcvt_f32(typingctx, x):
    """int32 lanes to float32 (RNE, exact below 2**24)."""
    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _FT)
    return f32x16(i32x16), codegen


@intrinsic
def vfma_f32(typingctx, a, b, c):
    """IEEE fused multiply-add ``f32(a * b + c)`` (one rounding) on float32 lanes."""
    def codegen(context, builder, sig, args):
        return _vcall(builder, "llvm.fma.v16f32", _FT, *args)
    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def vmul_f32(typingctx, a, b):
    """IEEE float32 product (one rounding) lane-wise."""
    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vdiv_f32(typingctx, a, b):
    """IEEE float32 quotient (one rounding) lane-wise."""
    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], args[1])
    return f32x16(f32x16, f32x16), codegen


@intrinsic
def vload_f32x(typingctx, arr, idx):
    """16 float32 lanes from a contiguous 1-D float32 array (alias of ``vload_f32``)."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load(builder.bitcast(p, _FT.as_pointer()), align=4)
    return f32x16(arr, idx), codegen


def _make_vquant(fast=True):
    @intrinsic
    def vquant(typingctx, f, lo, hi, n, rnd):
        """Round float32 lanes ``f`` with the static mode ``rnd`` and clamp to the integer range
        [lo, hi] (|lo|, |hi| < 2**22): returns (int32 codes, lanes among the first n whose
        rounded value lies outside). NaN is below every bound (it maps to ``lo``, counted),
        like ``primitives.round_float`` followed by a clamp."""
        mode = _static_mode(rnd)
        if mode is None:
            return None

        def codegen(context, builder, sig, args):
            lo_, hi_, n_ = (_i64(context, builder, a, t) for a, t in zip(args[1:4], sig.args[1:4]))
            lo_f = _splat(builder, builder.sitofp(lo_, ir.FloatType()), _FT)
            hi_f = _splat(builder, builder.sitofp(hi_, ir.FloatType()), _FT)
            one = ir.Constant(_FT, [1.0] * 16)
            low = builder.fsub(lo_f, one)
            f = args[0]
            f = builder.select(builder.fcmp_unordered("uno", f, f), low, f)
            g = _clamp_f(builder, f, low, builder.fadd(hi_f, one))
            r = _round_f(builder, g, mode, fast)
            out = builder.or_(builder.fcmp_ordered("<", r, lo_f),
                              builder.fcmp_ordered(">", r, hi_f))
            cnt = _count_lanes(builder, out, n_)
            q = builder.fptosi(_clamp_f(builder, r, lo_f, hi_f), _VT)
            return context.make_tuple(builder, sig.return_type, (q, cnt))
        return _PAIR(f32x16, lo, hi, n, rnd), codegen
    return vquant


# The rounding argument ``rnd`` of these must be a compile-time constant (a code of
# simulator.rounding): one specialization per mode, generated from the mode's rule.
vquant = _make_vquant()
ep16_fp32 = _make_ep16_fp32()
ep16_fp32_zp_in = _make_ep16_fp32_zp_in()
ep16_int = _make_ep16_int(False)
ep16_int32 = _make_ep16_int(True)
ep16_q31 = _make_ep16_q31(False)
ep16_q31_ruy = _make_ep16_q31(True)


__all__ = [
    "ep16_fp32",
    "ep16_fp32_zp_in",
    "ep16_int",
    "ep16_int32",
    "ep16_int_p32",
    "ep16_q31",
    "ep16_q31_ruy",
    "f32x16",
    "i32x16",
    "i64x16",
    "vadd_i32",
    "vand_i32",
    "vbcast4",
    "vclamp_count",
    "vcvt_f32",
    "vdiv_f32",
    "vdpbusd",
    "vfma_f32",
    "vget",
    "vload",
    "vload_ext",
    "vload_f32",
    "vload_f32x",
    "vload_i32",
    "vload_i64",
    "vload_u8_i32",
    "vmadd16_i32",
    "vmadd_i32",
    "vmaddwd",
    "vmbqm",
    "vmbqm_ruy",
    "vmul_f32",
    "vquant",
    "vshl_i32",
    "vsplat_f32",
    "vsplat_i32",
    "vsplat_i64",
    "vstore",
    "vstore_codes",
    "vstore_codes_n",
    "vsub_i32",
    "vzero",
]
