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

``ENABLED`` is true when the host has AVX-512 F/BW/VNNI and numba compiles for the host CPU;
the environment variable ``SIMULATOR_SIMD=0`` turns it off (then the portable kernels run:
same results, slower). The kernels using these ops are only compiled when ``ENABLED`` is true,
so on other machines nothing here is ever code-generated.
"""
from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


def _host_has_vnni() -> bool:
    try:
        import numba
        import llvmlite.binding as llvm

        if numba.config.CPU_NAME not in (None, "host") or numba.config.CPU_FEATURES:
            return False  # a portable/explicit target: do not assume host instructions
        feats = llvm.get_host_cpu_features()
        return all(feats.get(f, False) for f in ("avx512f", "avx512bw", "avx512vnni"))
    except Exception:  # pragma: no cover - unusual llvmlite builds
        return False


ENABLED = _host_has_vnni() and os.environ.get("SIMULATOR_SIMD", "1") != "0"


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


__all__ = ["ENABLED", "i32x16", "vzero", "vload", "vbcast4", "vdpbusd", "vstore"]
