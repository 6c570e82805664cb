"""The ``portable`` path's fully connected layer at batch 1: int8 weights, int16 pair products.

At 1-3 rows a fully connected layer reads every weight once per row, so its time is the weight
read (MLPerf Tiny AD01: 258 KiB of int8 weights per inference, ``bench/ad01_floor.py``). The
dense kernel of :mod:`simulator.kernels.portable` keeps its weights as int16, twice those bytes.
This kernel keeps the same weights as int8 (when every ``ws = w - wzp`` fits int8, as TFLite's
symmetric int8 weights always do) and sign-extends each 32-byte load to 32 int16 lanes in
registers (``vpmovsxbw`` on x86, ``sxtl`` on NEON) before the same pair product
(:func:`simulator.kernels.simd.vmaddwd`). Like :mod:`simulator.kernels.gemv` on the VNNI path,
one broadcast of two input channels meets the weights of several 16-channel output blocks.

Inputs: the int16 image of ``_prepass_images`` (as the portable dense kernel), or, when each
row's channels are whole 4-channel steps, the step's 8-bit input itself (``u = x + 128`` for
int8 formed per pair in a register, :func:`vpair`: no copy); ``biasp`` of ``ConvFast``. Same
exactness argument: ``u`` in [0, 255] times int8 ``ws`` is exact, the int32 lanes wrap, and the
static bound puts the true accumulator in int32.

Weight layout (:func:`pack_int8`, from the portable kernel's int16 pairs
``[block][k4][pair 2][lane 16][2]``): full groups of :data:`GROUP` blocks as ``[group][k4][pair
2][block GROUP][lane 16][2]`` (the bytes one broadcast meets are contiguous), then the
remaining ``nbg % GROUP`` blocks as they are.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from simulator.capabilities import target_features
from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.simd import (
    i32x16,
    vadd_i32,
    vload_i32,
    vmaddwd,
    vstore,
    vzero,
)

LANES = 16
GROUP = 4
# a gemm takes this kernel up to this many rows (the portable dense kernel's one-row case)
MAX_ROWS = 3

_W8 = ir.VectorType(ir.IntType(8), 32)
_W16 = ir.VectorType(ir.IntType(16), 32)
_VT = ir.VectorType(ir.IntType(32), 16)


@intrinsic
def vload_s8x32(typingctx, arr, idx):
    """The 32 int8 elements from ``idx`` of a contiguous 1-D int8 array, sign-extended to 32
    int16 lanes (read as 16 int32 lanes holding pairs, the operand form of ``vmaddwd``)."""
    if not isinstance(arr, types.Array) or arr.dtype != types.int8:
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        p = builder.gep(ary.data, [i])
        v = builder.load(builder.bitcast(p, _W8.as_pointer()), align=1)
        return builder.bitcast(builder.sext(v, _W16), _VT)
    return i32x16(arr, idx), codegen


@intrinsic
def vpair(typingctx, arr, idx, flip):
    """Input channels ``idx`` and ``idx + 1`` as one int16 pair broadcast to 16 int32 lanes (the
    ``vmaddwd`` operand): from the int16 image as they are, or from the step's own 8-bit input
    as ``u = x + flip`` (int8 input, ``flip`` 128: the byte with its top bit flipped; uint8:
    ``flip`` 0), zero-extended."""
    if not isinstance(arr, types.Array) or arr.dtype not in (types.int16, types.int8,
                                                             types.uint8):
        return None
    width = arr.dtype.bitwidth

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        p = builder.gep(ary.data, [i])
        i32 = ir.IntType(32)
        if width == 16:
            v = builder.load(builder.bitcast(p, i32.as_pointer()), align=1)
        else:
            b2 = ir.VectorType(ir.IntType(8), 2)
            pair = builder.load(builder.bitcast(p, b2.as_pointer()), align=1)
            f8 = builder.trunc(context.cast(builder, args[2], sig.args[2], types.int64),
                               ir.IntType(8))
            fv = builder.insert_element(builder.insert_element(ir.Constant(b2, ir.Undefined),
                                                               f8, ir.Constant(i32, 0)),
                                        f8, ir.Constant(i32, 1))
            u16 = builder.zext(builder.xor(pair, fv), ir.VectorType(ir.IntType(16), 2))
            v = builder.bitcast(u16, i32)
        vec = builder.insert_element(ir.Constant(_VT, ir.Undefined), v, ir.Constant(i32, 0))
        return builder.shuffle_vector(vec, vec, ir.Constant(_VT, [0] * 16))
    return i32x16(arr, idx, flip), codegen


def fits(wpk16) -> bool:
    """Whether the portable kernel's int16 weights all fit int8."""
    return wpk16.size > 0 and int(wpk16.min()) >= -128 and int(wpk16.max()) <= 127


def pack_int8(wpk16, nbg, c4_n):
    """This kernel's int8 weights (module docstring) from the portable kernel's int16 pairs of
    a one-group, one-tap step with ``nbg`` 16-channel blocks of ``c4_n`` 4-channel steps."""
    blocks = np.asarray(wpk16).reshape(nbg, c4_n, 2, LANES * 2)
    full = nbg // GROUP * GROUP
    head = blocks[:full].reshape(-1, GROUP, c4_n, 2, LANES * 2).transpose(0, 2, 3, 1, 4)
    return np.concatenate([head.reshape(-1), blocks[full:].reshape(-1)]).astype(np.int8)


def kernels(kind, rnd):
    """The ``rows_int8`` kernel for an epilogue kind and rounding mode (Python ints); the
    accumulator count follows the target's vector registers."""
    # AVX-512 (32 registers of 16 lanes): a chain per block and pair, so no multiply-add waits
    # for the previous one; elsewhere a 16-lane vector takes 2 of AVX2's 16 registers (4 of
    # NEON's 32): one chain per block, so the accumulators stay in registers
    wide = bool(target_features().get("avx512f"))
    return specialised(_make_kernels, int(kind), int(rnd), wide)


def _make_kernels(kind, rnd, wide):
    @njit(cache=True, inline="always")
    def _finish(out, o, acc, nb, m_out, biasp, mf, mi, s1, s2, zpf, zp, lo, hi):
        m0 = nb * LANES
        nch = min(LANES, m_out - m0)
        codes, k = ep_k.ep16(kind, rnd, vadd_i32(acc, vload_i32(biasp, m0)), mf, mi, s1, s2,
                             m0, zpf, zp, lo, hi, nch)
        ep_k.store16(out, o + m0, 1, codes, nch)
        return k

    @njit(cache=True)
    def rows_int8(xp, flip, ctot, c4_n, nbg, m_out, w8, biasp, mf, mi, s1, s2, zpf, zp, lo, hi,
                  out, n_rows):
        """Rows ``[0, n_rows)`` of ``xp`` (``ctot`` elements apart): the int16 image, or the
        8-bit input read with ``flip`` (:func:`vpair`); returns the saturation count."""
        cnt = 0
        scratch = np.empty(GROUP * LANES, dtype=np.int32)
        n_full = nbg // GROUP
        for r in range(n_rows):
            xb = r * ctot
            o = r * m_out
            wb = 0
            for grp in range(n_full):
                a0 = vzero()
                a1 = vzero()
                a2 = vzero()
                a3 = vzero()
                b0 = vzero()
                b1 = vzero()
                b2 = vzero()
                b3 = vzero()
                for k4 in range(c4_n):
                    x0 = vpair(xp, xb + 4 * k4, flip)
                    x1 = vpair(xp, xb + 4 * k4 + 2, flip)
                    a0 = vmaddwd(a0, x0, vload_s8x32(w8, wb))
                    a1 = vmaddwd(a1, x0, vload_s8x32(w8, wb + 32))
                    a2 = vmaddwd(a2, x0, vload_s8x32(w8, wb + 64))
                    a3 = vmaddwd(a3, x0, vload_s8x32(w8, wb + 96))
                    if wide:
                        b0 = vmaddwd(b0, x1, vload_s8x32(w8, wb + 128))
                        b1 = vmaddwd(b1, x1, vload_s8x32(w8, wb + 160))
                        b2 = vmaddwd(b2, x1, vload_s8x32(w8, wb + 192))
                        b3 = vmaddwd(b3, x1, vload_s8x32(w8, wb + 224))
                    else:
                        a0 = vmaddwd(a0, x1, vload_s8x32(w8, wb + 128))
                        a1 = vmaddwd(a1, x1, vload_s8x32(w8, wb + 160))
                        a2 = vmaddwd(a2, x1, vload_s8x32(w8, wb + 192))
                        a3 = vmaddwd(a3, x1, vload_s8x32(w8, wb + 224))
                    wb += 256
                vstore(scratch, 0, vadd_i32(a0, b0))
                vstore(scratch, 16, vadd_i32(a1, b1))
                vstore(scratch, 32, vadd_i32(a2, b2))
                vstore(scratch, 48, vadd_i32(a3, b3))
                # one inlined epilogue in a loop, as in simulator.kernels.gemv
                for j in range(GROUP):
                    cnt += _finish(out, o, vload_i32(scratch, 16 * j), grp * GROUP + j, m_out,
                                   biasp, mf, mi, s1, s2, zpf, zp, lo, hi)
            for nb in range(n_full * GROUP, nbg):
                a0 = vzero()
                b0 = vzero()
                for k4 in range(c4_n):
                    a0 = vmaddwd(a0, vpair(xp, xb + 4 * k4, flip), vload_s8x32(w8, wb))
                    b0 = vmaddwd(b0, vpair(xp, xb + 4 * k4 + 2, flip), vload_s8x32(w8, wb + 32))
                    wb += 64
                cnt += _finish(out, o, vadd_i32(a0, b0), nb, m_out, biasp, mf, mi, s1, s2, zpf,
                               zp, lo, hi)
        return cnt

    return (rows_int8,)


def _weights(fast):
    """The step's int8 weights, packed on first use; ``None`` when they do not fit int8."""
    w8 = getattr(fast, "_portable_w8", False)
    if w8 is False:
        w8 = pack_int8(fast.wpk, fast.nbg, fast.c4_n) if fits(fast.wpk) else None
        fast._portable_w8 = w8
    return w8


def applies(fast, total) -> bool:
    """Whether ``total`` output positions of a prepared
    :class:`simulator.kernels.igemm.ConvFast` step on the portable path run here: at most
    :data:`MAX_ROWS` positions of a gemm-like step (1x1, stride 1, unpadded, NHWC) whose weights
    fit int8."""
    return (total <= MAX_ROWS and fast.run_mode and not fast.nchw and fast._pointwise()
            and _weights(fast) is not None)


def reads_input(fast, total) -> bool:
    """Whether the kernel reads the step's 8-bit input itself (no int16 image): when it
    applies and each row's channels are a multiple of 4, so no read passes the input's end."""
    return fast.cg % 4 == 0 and applies(fast, total)


def call(fast, xp, flip, biasp, flat, total):
    """The :class:`simulator.launch.Call` of this kernel (see :func:`applies`) reading ``xp``
    (the int16 image, or the input with ``flip`` when :func:`reads_input`) and writing
    ``flat``, or ``None`` when it does not apply."""
    from simulator.launch import Call

    if not applies(fast, total):
        return None
    ep = fast.ep
    args = (xp, flip, fast.ctot, fast.c4_n, fast.nbg, fast.m_out, _weights(fast),
            biasp) + ep.arrays() + (flat, total)
    return Call(kernels(ep.kind, ep.rnd), args, counted=True)


__all__ = ["GROUP", "MAX_ROWS", "applies", "call", "fits", "kernels", "pack_int8",
           "reads_input", "vload_s8x32", "vpair"]
