"""The ``portable`` path's fully connected layer at batch 1: int8 weights, int16 pair products.

At 1-3 rows a fully connected layer uses every weight once per row, so its time is the weight
stream (MLPerf Tiny AD01: 258 KiB of int8 weights per inference, ``bench/ad01_floor.py``). The
dense kernel of :mod:`simulator.kernels.portable` keeps its weights as int16, twice those bytes.
This kernel keeps the weights as bytes (when every ``ws = w - wzp`` fits int8, as TFLite's
symmetric int8 weights always do) and multiplies them with int16 pair products
(:func:`simulator.kernels.simd.vmaddwd`: ``vpmaddwd``; LLVM fuses it with the add into
``vpdpwssd`` where the CPU has AVX-512 VNNI), 32 products per instruction, which is the bound on
this path (``bench/ad01_floor.py`` measures it).

Split words: the weights of two 16-channel output blocks E (even) and O (odd) share one int16
word per (channel, input pair lane): low byte ``L = wE + 128`` (unsigned), high byte ``H = wO``,
so the word's int16 value is ``256 H + L``. For an input pair broadcast ``u`` (int16 lanes,
``0 <= u <= 255``) two multiply-adds per 64-byte word vector give both blocks:

- ``A += vmaddwd(u, word)``, i.e. ``A = sum u (256 H + L)``;
- ``B += vmaddwd(u, word >> 8)`` (arithmetic shift per 16-bit lane: ``H``), i.e. ``B = sum u
  H``: block O's sum;
- block E's sum is ``A - 256 B - 128 U`` with ``U = sum u`` over the row's channels (computed
  once per row): ``sum u (L - 128) = sum u wE``.

That is one shift and two multiply-adds per 64 weights, where sign-extending each byte to int16
first (``vpmovsxbw``) costs one widening and one multiply-add per 32 (measured ~15% slower on
AD01's 640-channel layers, Zen 4). Exactness: each product
``|u * word| <= 255 * 32768`` and each pair sum are exact int32 values (``vpmaddwd`` overflows
only for two ``-32768 * -32768`` products, impossible with ``u >= 0``); every other operation
wraps modulo 2**32, so each block's int32 result is congruent to its true accumulator, and the
static bound of ``ConvFast`` puts that accumulator in int32: the wrapped result is exact.
Channels past a row's end (a 4-channel step's padding: zero weights, ``L = 128``) contribute
``128 u`` to ``A`` and the same to ``128 U``, whatever ``u`` is.

Like :mod:`simulator.kernels.gemv` on the VNNI path, one broadcast of two input channels meets
the weights of several output blocks: :data:`GROUP_WIDE` on AVX-512 targets, :data:`GROUP`
elsewhere (:func:`group_for`). The broadcasts come from memory: each row's ``u`` is first
widened into an int32 scratch of channel pairs (:func:`vstore_u16x32`, 32 channels per
instruction) on the stack (:func:`stack_i32`). Forming each pair in registers instead (load two
bytes, flip, widen, broadcast) measured ~1.2x slower.

Inputs: the int16 image of ``_prepass_images`` (as the portable dense kernel), or, when each
row's channels are whole 4-channel steps, the step's 8-bit input itself (``u = x + 128`` for
int8, ``u = x`` for uint8: no image); ``biasp`` of ``ConvFast``.

Weight layout (:func:`pack_int8`, from the portable kernel's int16 pairs
``[block][k4][pair 2][lane 16][2]``; an odd block count gets a zero block as the last partner):
block pairs as 64-byte word vectors, full groups of ``group / 2`` pairs as ``[group][k4][pair
2][block pair][lane 16][2 words]`` (the bytes one broadcast meets are contiguous), then the
remaining pairs as ``[pair][k4][pair 2][lane 16][2 words]``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from simulator.kernels import epilogue as ep_k
from simulator.kernels.jitcache import specialised
from simulator.kernels.portable import wide_target
from simulator.kernels.simd import (
    i32x16,
    vadd_i32,
    vbcast4,
    vload,
    vload_i32,
    vmaddwd,
    vshl_i32,
    vsplat_i32,
    vstore,
    vsub_i32,
    vzero,
)

LANES = 16
# blocks that meet one broadcast: AVX2 / NEON, and AVX-512 targets (portable.wide_target)
GROUP = 4
GROUP_WIDE = 8
# a gemm takes this kernel up to this many rows (the portable dense kernel's one-row case)
MAX_ROWS = 3
# int32 elements of the kernel's scratch on the stack (8 KiB: up to 3584 input channels); a
# larger one is allocated. A heap scratch costs each call an allocation, a free and a reference
# count round trip of every array argument (tens of ns; AD01's 128x128 layers take ~220 ns)
STACK_I32 = 2048

_W8 = ir.VectorType(ir.IntType(8), 32)
_W16 = ir.VectorType(ir.IntType(16), 32)
_W8_I32 = ir.VectorType(ir.IntType(32), 32)
_VT = ir.VectorType(ir.IntType(32), 16)


@intrinsic
def vhigh_s8(typingctx, v):
    """The high byte of each of the 32 int16 lanes of ``v``, sign-extended (``v >> 8``
    arithmetic per 16-bit lane: ``vpsraw``)."""
    def codegen(context, builder, sig, args):
        w = builder.bitcast(args[0], _W16)
        return builder.bitcast(builder.ashr(w, ir.Constant(_W16, [8] * 32)), _VT)
    return i32x16(i32x16), codegen


def fits(wpk16) -> bool:
    """Whether the portable kernel's int16 weights all fit int8."""
    return wpk16.size > 0 and int(wpk16.min()) >= -128 and int(wpk16.max()) <= 127


def group_for(wide) -> int:
    """The blocks that meet one broadcast on a target
    (:func:`simulator.kernels.portable.wide_target`)."""
    return GROUP_WIDE if wide else GROUP


def pack_int8(wpk16, nbg, c4_n, group=GROUP):
    """This kernel's weight words (module docstring) from the portable kernel's int16 pairs of
    a one-group, one-tap step with ``nbg`` 16-channel blocks of ``c4_n`` 4-channel steps,
    ``group`` blocks (an even count) to a broadcast; as uint8, 64 bytes per block pair and
    pair step."""
    blocks = np.asarray(wpk16).astype(np.int64).reshape(nbg, c4_n, 2, LANES * 2)
    if nbg % 2:
        blocks = np.concatenate([blocks, np.zeros_like(blocks[:1])])
    words = np.empty(blocks[0::2].shape + (2,), np.uint8)
    words[..., 0] = blocks[0::2] + 128                 # low byte: even block, +128
    words[..., 1] = blocks[1::2].astype(np.uint8)     # high byte: odd block, two's complement
    pairs = group // 2
    full = len(words) // pairs * pairs
    head = words[:full].reshape(-1, pairs, c4_n, 2, LANES * 4).transpose(0, 2, 3, 1, 4)
    return np.concatenate([head.reshape(-1), words[full:].reshape(-1)])


@intrinsic
def stack_i32(typingctx, n):
    """A 1-D int32 array of ``n`` (an integer literal) uninitialised elements in the calling
    function's stack frame: valid until it returns, never returned itself."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = int(n.literal_value)
    arrty = types.Array(types.int32, 1, "C")

    def codegen(context, builder, sig, args):
        # in the entry block, as cgutils.alloca_once, but not zero-filled (that would be a
        # memset of the whole buffer per call)
        with builder.goto_entry_block():
            buf = builder.alloca(ir.ArrayType(ir.IntType(32), size))
        intp = context.get_value_type(types.intp)
        ary = context.make_array(arrty)(context, builder)
        context.populate_array(ary, data=builder.bitcast(buf, ir.IntType(32).as_pointer()),
                               shape=[ir.Constant(intp, size)], strides=[ir.Constant(intp, 4)],
                               itemsize=ir.Constant(intp, 4), meminfo=None)
        return ary._getvalue()
    return arrty(n), codegen


@intrinsic
def vstore_u16x32(typingctx, dst, di, src, si, flip):
    """``u = src[si + t]`` for ``t < 32`` as 32 int16 values (64 bytes) at int32 element ``di``
    of ``dst``: from the int16 image as they are, from 8-bit input as ``x ^ flip``
    zero-extended. One load, one widening, one store for 32 channels:
    the rows' pairs are then plain 32-bit broadcasts."""
    if not (isinstance(src, types.Array) and src.dtype in (types.int16, types.int8, types.uint8)
            and isinstance(dst, types.Array) and dst.dtype == types.int32):
        return None
    width = src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        dary = context.make_array(sig.args[0])(context, builder, args[0])
        sary = context.make_array(sig.args[2])(context, builder, args[2])
        dp = builder.gep(dary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        sp = builder.gep(sary.data, [context.cast(builder, args[3], sig.args[3], types.intp)])
        if width == 16:
            u = builder.load(builder.bitcast(sp, _W16.as_pointer()), align=1)
        else:
            v = builder.load(builder.bitcast(sp, _W8.as_pointer()), align=1)
            f8 = builder.trunc(context.cast(builder, args[4], sig.args[4], types.int64),
                               ir.IntType(8))
            fv = builder.shuffle_vector(
                builder.insert_element(ir.Constant(_W8, ir.Undefined), f8,
                                       ir.Constant(ir.IntType(32), 0)),
                ir.Constant(_W8, ir.Undefined), ir.Constant(_W8_I32, [0] * 32))
            u = builder.zext(builder.xor(v, fv), _W16)
        builder.store(u, builder.bitcast(dp, _W16.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(dst, di, src, si, flip), codegen


def scratch_fits(c4_n, group) -> bool:
    """Whether the scratch of a step with ``c4_n`` 4-channel steps fits :data:`STACK_I32`
    (then ``rows_int8`` runs it, else ``rows_int8_heap``)."""
    return 2 * c4_n + 2 * group * LANES <= STACK_I32


def kernels(kind, rnd):
    """``(rows_int8, rows_int8_heap)`` for an epilogue kind and rounding mode (Python ints):
    the scratch on the stack or allocated (:func:`scratch_fits`, chosen when the launch is
    built: a branch between them in one kernel made numba count references to every array
    argument); the accumulator count follows the target's vector registers
    (:func:`simulator.kernels.portable.wide_target`)."""
    return specialised(_make_kernels, int(kind), int(rnd), wide_target())


def _make_kernels(kind, rnd, wide):
    group = group_for(wide)

    @njit(cache=True, inline="always")
    def _finish(out, o, acc, nb, m_out, biasp, mf, mi, s1, s2, zpf, zp, lo, hi):
        m0 = nb * LANES
        nch = min(LANES, m_out - m0)
        codes, k = ep_k.ep16(kind, rnd, vadd_i32(acc, vload_i32(biasp, m0)), mf, mi, s1, s2,
                             m0, zpf, zp, lo, hi, nch)
        ep_k.store16(out, o + m0, 1, codes, nch)
        return k

    @njit(cache=True, inline="always")
    def _widen_row(xp, xb, flip, n_ch, xu):
        """``u`` of channels ``xb .. xb + n_ch`` (``n_ch`` even) into ``xu``'s first
        ``n_ch / 2`` int32 elements, two int16 channels each; returns their sum ``U``. (An
        int16 image row may end in bytes of the buffer's slack: read as int16, as the
        multiply-adds read them, they are multiplied by zero weights and cancel in ``U``.)"""
        i = 0
        while i + 32 <= n_ch:
            vstore_u16x32(xu, i // 2, xp, xb + i, flip)
            i += 32
        while i < n_ch:
            u0 = np.int32(xp[xb + i])
            u1 = np.int32(xp[xb + i + 1])
            if xp.itemsize != 2:
                u0 = (u0 + flip) & 0xFF
                u1 = (u1 + flip) & 0xFF
            xu[i // 2] = (u0 & 0xFFFF) | (u1 << 16)
            i += 2
        # summed from xu, whose indices are known non-negative: over xp[xb + i] numba's
        # negative-index handling made LLVM vectorize this loop into gathers (0.3 us at 640)
        usum = 0
        for i in range(n_ch // 2):
            v = np.int64(xu[i])
            usum += (((v & 0xFFFF) ^ 0x8000) - 0x8000) + (v >> 16)
        return usum

    @njit(cache=True, inline="always")
    def _split(xu, at, acc_w, acc_h, corr):
        """Store a block pair's sums at ``xu[at:at + 32]``: the even block's ``A - 256 B - 128
        U`` (module docstring), then the odd block's ``B``."""
        vstore(xu, at, vsub_i32(vsub_i32(acc_w, vshl_i32(acc_h, 8)), corr))
        vstore(xu, at + 16, acc_h)

    @njit(cache=True, inline="always")
    def _rows(xp, flip, ctot, c4_n, nbg, m_out, w8, biasp, mf, mi, s1, s2, zpf, zp, lo, hi,
              out, n_rows, xu):
        """:func:`rows_int8` with its scratch ``xu``: the row's channel pairs (``2 * c4_n``
        int32), then the word and high sums of one group. Inlined into both kernels: a call
        would make the caller count references to each of its 8 array arguments (16 calls of
        ``NRT_incref`` / ``NRT_decref``, ~35 ns per layer)."""
        cnt = 0
        n_pairs = (nbg + 1) // 2
        pairs = group // 2
        n_full = n_pairs // pairs
        n_k2 = 2 * c4_n
        sc = n_k2
        n_tail = n_pairs - n_full * pairs
        for r in range(n_rows):
            usum = _widen_row(xp, r * ctot, flip, 4 * c4_n, xu)
            corr = vsplat_i32(usum * 128)
            o = r * m_out
            wb = 0
            # the full groups, then the block pairs left over; each step's sums go to xu and
            # one inlined epilogue after the branch requantizes them (one copy of it to compile)
            for step in range(n_full + n_tail):
                if step < n_full:
                    a0 = vzero()
                    a1 = vzero()
                    a2 = vzero()
                    a3 = vzero()
                    h0 = vzero()
                    h1 = vzero()
                    h2 = vzero()
                    h3 = vzero()
                    if wide:
                        # 4 block pairs: one broadcast feeds 8 multiply-adds, 8 independent chains
                        for k2 in range(n_k2):
                            xv = vbcast4(xu, k2)
                            w = vload(w8, wb)
                            a0 = vmaddwd(a0, xv, w)
                            h0 = vmaddwd(h0, xv, vhigh_s8(w))
                            w = vload(w8, wb + 64)
                            a1 = vmaddwd(a1, xv, w)
                            h1 = vmaddwd(h1, xv, vhigh_s8(w))
                            w = vload(w8, wb + 128)
                            a2 = vmaddwd(a2, xv, w)
                            h2 = vmaddwd(h2, xv, vhigh_s8(w))
                            w = vload(w8, wb + 192)
                            a3 = vmaddwd(a3, xv, w)
                            h3 = vmaddwd(h3, xv, vhigh_s8(w))
                            wb += 256
                        _split(xu, sc + 64, a2, h2, corr)
                        _split(xu, sc + 96, a3, h3, corr)
                    else:
                        for k2 in range(n_k2):
                            xv = vbcast4(xu, k2)
                            w = vload(w8, wb)
                            a0 = vmaddwd(a0, xv, w)
                            h0 = vmaddwd(h0, xv, vhigh_s8(w))
                            w = vload(w8, wb + 64)
                            a1 = vmaddwd(a1, xv, w)
                            h1 = vmaddwd(h1, xv, vhigh_s8(w))
                            wb += 128
                    _split(xu, sc, a0, h0, corr)
                    _split(xu, sc + 32, a1, h1, corr)
                    nb0 = step * group
                    nb1 = min(nbg, nb0 + group)
                else:
                    # even and odd pair steps in separate chains, so no multiply-add waits
                    pair = n_full * pairs + (step - n_full)
                    a0 = vzero()
                    h0 = vzero()
                    a1 = vzero()
                    h1 = vzero()
                    for k4 in range(c4_n):
                        w = vload(w8, wb)
                        xv = vbcast4(xu, 2 * k4)
                        a0 = vmaddwd(a0, xv, w)
                        h0 = vmaddwd(h0, xv, vhigh_s8(w))
                        w = vload(w8, wb + 64)
                        xv = vbcast4(xu, 2 * k4 + 1)
                        a1 = vmaddwd(a1, xv, w)
                        h1 = vmaddwd(h1, xv, vhigh_s8(w))
                        wb += 128
                    _split(xu, sc, vadd_i32(a0, a1), vadd_i32(h0, h1), corr)
                    nb0 = 2 * pair
                    nb1 = min(nbg, nb0 + 2)
                for nb in range(nb0, nb1):
                    cnt += _finish(out, o, vload_i32(xu, sc + 16 * (nb - nb0)), nb, m_out,
                                   biasp, mf, mi, s1, s2, zpf, zp, lo, hi)
        return cnt

    @njit(cache=True)
    def rows_int8(xp, flip, ctot, c4_n, nbg, m_out, w8, biasp, mf, mi, s1, s2, zpf, zp, lo, hi,
                  out, n_rows):
        """Rows ``[0, n_rows)`` of ``xp`` (``ctot`` elements apart): the int16 image, or the
        8-bit input read with ``flip`` (:func:`vstore_u16x32`); returns the saturation
        count. The scratch is on the stack: only for steps where :func:`scratch_fits`
        (:func:`call` chooses; a check here, even one that raises, brings the reference
        counting back: +30 ns per call)."""
        return _rows(xp, flip, ctot, c4_n, nbg, m_out, w8, biasp, mf, mi, s1, s2, zpf, zp, lo,
                     hi, out, n_rows, stack_i32(STACK_I32))

    @njit(cache=True)
    def rows_int8_heap(xp, flip, ctot, c4_n, nbg, m_out, w8, biasp, mf, mi, s1, s2, zpf, zp, lo,
                       hi, out, n_rows):
        """:func:`rows_int8` with its scratch allocated (a step with more input channels)."""
        xu = np.empty(2 * c4_n + 2 * group * LANES, dtype=np.int32)
        return _rows(xp, flip, ctot, c4_n, nbg, m_out, w8, biasp, mf, mi, s1, s2, zpf, zp, lo,
                     hi, out, n_rows, xu)

    return (rows_int8, rows_int8_heap)


def _weights(fast):
    """The step's int8 weights, packed on first use; ``None`` when they do not fit int8."""
    w8 = getattr(fast, "_portable_w8", False)
    if w8 is False:
        w8 = (pack_int8(fast.wpk, fast.nbg, fast.c4_n, group_for(wide_target()))
              if fits(fast.wpk) else None)
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
    stack, heap = kernels(ep.kind, ep.rnd)
    return Call(stack if scratch_fits(fast.c4_n, group_for(wide_target())) else heap, args,
                counted=True)


__all__ = ["GROUP", "GROUP_WIDE", "MAX_ROWS", "applies", "call", "fits", "group_for",
           "kernels", "pack_int8", "reads_input", "scratch_fits", "stack_i32", "vhigh_s8",
           "vstore_u16x32"]
