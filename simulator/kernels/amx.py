"""Intel AMX tile operations (``AMX-TILE``/``AMX-INT8``) as numba intrinsics, for the conv kernel
of :mod:`simulator.kernels.amx_conv`.

An AMX tile is a 2-D register of up to 16 rows of 64 bytes. ``tdpbusd C, A, B`` computes, for
every row ``i`` of ``A`` (u8) and every column ``j`` of ``C`` (int32 lanes),
``C[i, j] += sum_k sum_{t<4} u8(A[i, 4k+t]) * s8(B[k, 4j+t])`` with ``K = colsb(A) / 4`` rows of
``B``: the ``vpdpbusd`` arithmetic of :mod:`simulator.kernels.simd` (four exact products added to
a wrapping int32 lane, no saturation) for a whole 16 x 16 block at once, about 16x the products
per instruction. Exactness therefore rests on the same argument as the VNNI kernels (the static
accumulator bound puts the true sum in int32, so the wrapped lane *is* the sum), and the tests
compare both paths with the integer reference.

Why inline assembly: LLVM's own AMX intrinsics (the ``x86_amx`` type) leave tile configuration
and tile register allocation to LLVM passes, which were not tried here; a few fixed tile
registers written in assembly are simple and leave nothing for a register allocator to get
wrong. Tiles are named by number (``tmm0`` ... ``tmm7``); every kernel that uses them calls
:func:`tile_config` first and :func:`tile_release` last, on the thread that runs it.

Whether the AMX kernels run is :func:`simulator.capabilities.capabilities` ``.amx``: the host
CPU reports ``amx-tile`` and ``amx-int8``, the VNNI kernels run, Linux granted the process the
tile data state (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, requested by the gate on
its first use, never at import) and neither ``SIMULATOR_AMX=0`` nor ``SIMULATOR_KERNELS`` says
otherwise. Otherwise the VNNI kernels run (same bits). Nothing here is code-generated unless an
AMX kernel is compiled, which only happens on that path.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _elem_ptr(context, builder, arr_ty, arr, idx, idx_ty):
    ary = context.make_array(arr_ty)(context, builder, arr)
    return builder.gep(ary.data, [context.cast(builder, idx, idx_ty, types.intp)])


def _asm(builder, text, constraints, args):
    # "~{memory}": the compiler must not move loads/stores of the arrays across tile operations
    fnty = ir.FunctionType(ir.VoidType(), [a.type for a in args])
    builder.asm(fnty, text, constraints + ("," if constraints else "") + "~{memory}", args,
                True)


@intrinsic
def tile_config(typingctx, cfg):
    """``ldtilecfg``: load the 64-byte tile configuration held in the uint8 array ``cfg``."""
    def codegen(context, builder, sig, args):
        p = _elem_ptr(context, builder, sig.args[0], args[0], ir.Constant(ir.IntType(64), 0),
                      types.int64)
        _asm(builder, "ldtilecfg ($0)", "r", [p])
        return context.get_dummy_value()
    return types.none(cfg), codegen


@intrinsic
def tile_release(typingctx):
    """``tilerelease``: return the tiles to their initial state."""
    def codegen(context, builder, sig, args):
        _asm(builder, "tilerelease", "", [])
        return context.get_dummy_value()
    return types.none(), codegen


def _make_zero(t):
    @intrinsic
    def tile_zero(typingctx):
        def codegen(context, builder, sig, args):
            _asm(builder, f"tilezero %tmm{t}", "", [])
            return context.get_dummy_value()
        return types.none(), codegen
    return tile_zero


def _make_mem(text):
    """A tile load or store ``text`` (``$0``: address, ``$1``: row stride in bytes)."""
    @intrinsic
    def tile_mem(typingctx, arr, idx, stride):
        """The tile rows at element ``idx`` of a 1-D array, ``stride`` bytes apart."""
        def codegen(context, builder, sig, args):
            p = _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
            s = context.cast(builder, args[2], sig.args[2], types.int64)
            _asm(builder, text, "r,r", [p, s])
            return context.get_dummy_value()
        return types.none(arr, idx, stride), codegen
    return tile_mem


def _make_dp(c, a, b, op="tdpbusd"):
    @intrinsic
    def tile_dp(typingctx):
        """``tmm{c} += tmm{a} . s8(tmm{b})``, int32 lanes, wrapping: ``tdpbusd`` (``a`` read as
        u8) or ``tdpbssd`` (``a`` read as s8)."""
        def codegen(context, builder, sig, args):
            _asm(builder, f"{op} %tmm{b}, %tmm{a}, %tmm{c}", "", [])
            return context.get_dummy_value()
        return types.none(), codegen
    return tile_dp


# The tiles the conv kernel uses: accumulators 0-3, input rows 4-5, weights 6-7.
zero0, zero1, zero2, zero3 = (_make_zero(t) for t in range(4))
load4, load5, load6, load7 = (_make_mem(f"tileloadd ($0,$1,1), %tmm{t}") for t in range(4, 8))
store0, store1, store2, store3 = (_make_mem(f"tilestored %tmm{t}, ($0,$1,1)") for t in range(4))
dp_0_4_6 = _make_dp(0, 4, 6)
dp_1_4_7 = _make_dp(1, 4, 7)
dp_2_5_6 = _make_dp(2, 5, 6)
dp_3_5_7 = _make_dp(3, 5, 7)
# signed inputs (int8 activations read in place, no +128 flip)
sdp_0_4_6 = _make_dp(0, 4, 6, "tdpbssd")
sdp_1_4_7 = _make_dp(1, 4, 7, "tdpbssd")
sdp_2_5_6 = _make_dp(2, 5, 6, "tdpbssd")
sdp_3_5_7 = _make_dp(3, 5, 7, "tdpbssd")


def config_bytes(rows_a, colsb_a, rows_b):
    """The 64-byte ``ldtilecfg`` block for the conv kernel: accumulator tiles 0-3 of ``rows_a``
    rows x 64 bytes (16 int32 channels), input tiles 4-5 of ``rows_a`` x ``colsb_a`` bytes,
    weight tiles 6-7 of ``rows_b`` (= ``colsb_a / 4``) x 64 bytes."""
    import numpy as np

    if not (1 <= rows_a <= 16 and 4 <= colsb_a <= 64 and colsb_a % 4 == 0
            and rows_b == colsb_a // 4):
        raise ValueError("invalid AMX tile shape")
    cfg = np.zeros(64, dtype=np.uint8)
    cfg[0] = 1  # palette 1
    shapes = [(rows_a, 64)] * 4 + [(rows_a, colsb_a)] * 2 + [(rows_b, 64)] * 2
    for t, (rows, colsb) in enumerate(shapes):
        cfg[16 + 2 * t] = colsb & 0xFF
        cfg[17 + 2 * t] = colsb >> 8
        cfg[48 + t] = rows
    return cfg


__all__ = ["config_bytes", "tile_config", "tile_release", "zero0", "zero1", "zero2",
           "zero3", "load4", "load5", "load6", "load7", "store0", "store1", "store2", "store3",
           "dp_0_4_6", "dp_1_4_7", "dp_2_5_6", "dp_3_5_7", "sdp_0_4_6", "sdp_1_4_7",
           "sdp_2_5_6", "sdp_3_5_7"]
