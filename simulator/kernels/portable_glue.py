"""Glue of the generated program (:mod:`simulator.compiled`) that costs nothing on any host.

At batch 1 a small model's kernels take a few microseconds, so what the generated function
does between its kernel calls shows: each ``np.empty`` of an intermediate buffer is a heap
allocation and a free (~50 ns), and each ``.reshape`` of a contiguous array calls numba's
``numba_attempt_nocopy_reshape`` helper (~15 ns; a program reshapes every argument). Here:

- :func:`stack_array`: an uninitialised 1-D array in the calling function's stack frame (for
  intermediates that no program output aliases; the caller bounds their size);
- :func:`c_view`: ``a.reshape(shape)`` for a C-contiguous ``a`` as a new header over the same
  data (strides computed inline, the element count checked); any other array is reshaped by
  numba as before;
- :func:`read_only`: the same array typed read-only, as :meth:`simulator.launch.Launch.execute`
  passes a step's inputs, so that the program calls the kernel specialisations the interpreter
  calls.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload

# stack frames are 64-byte aligned for vector loads and stores of whole buffers
_ALIGN = 64


@intrinsic
def stack_array(typingctx, n, dtype):
    """A 1-D C array of ``n`` (an integer literal) uninitialised elements of ``dtype`` (a
    numpy scalar type such as ``np.int8``) in the calling function's stack frame: valid until
    that function returns, so never returned or stored."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(dtype, types.NumberClass):
        return None
    size = int(n.literal_value)
    elem = dtype.instance_type
    arrty = types.Array(elem, 1, "C")

    def codegen(context, builder, sig, args):
        ll_elem = context.get_data_type(elem)
        itemsize = context.get_abi_sizeof(ll_elem)
        # in the entry block (one slot per call, not per loop iteration), not zero-filled
        with builder.goto_entry_block():
            buf = builder.alloca(ir.ArrayType(ll_elem, max(size, 1)))
            buf.align = _ALIGN
        intp = context.get_value_type(types.intp)
        ary = context.make_array(arrty)(context, builder)
        context.populate_array(ary, data=builder.bitcast(buf, ll_elem.as_pointer()),
                               shape=[ir.Constant(intp, size)],
                               strides=[ir.Constant(intp, itemsize)],
                               itemsize=ir.Constant(intp, itemsize), meminfo=None)
        return ary._getvalue()
    return arrty(n, dtype), codegen


@intrinsic
def _c_view(typingctx, a, shape):
    """``a`` (C-contiguous) seen with ``shape`` (a tuple of integers whose product is
    ``a.size``: :func:`c_view` checks it): same data, same owner."""
    if not (isinstance(a, types.Array) and a.layout == "C" and isinstance(shape, types.BaseTuple)
            and all(isinstance(t, types.Integer) for t in shape)):
        return None
    ndim = len(shape)
    retty = a.copy(ndim=ndim, layout="C")

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        dims = [context.cast(builder, builder.extract_value(args[1], i), sig.args[1][i],
                             types.intp) for i in range(ndim)]
        strides = [None] * ndim
        step = src.itemsize
        for i in reversed(range(ndim)):
            strides[i] = step
            step = builder.mul(step, dims[i])
        out = context.make_array(retty)(context, builder)
        context.populate_array(out, data=src.data, shape=cgutils.pack_array(builder, dims, intp),
                               strides=cgutils.pack_array(builder, strides, intp),
                               itemsize=src.itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, retty, out._getvalue())
    return retty(a, shape), codegen


@intrinsic
def _read_only(typingctx, a):
    if not isinstance(a, types.Array):
        return None
    retty = a.copy(readonly=True)

    def codegen(context, builder, sig, args):
        # writable and read-only arrays share one data model: the same value, typed otherwise
        return impl_ret_borrowed(context, builder, retty, args[0])
    return retty(a), codegen


def read_only(a):
    """A read-only view of the array ``a`` (``a`` itself when it is read-only already, and
    ``a`` stays writable); compiled: the same array typed read-only, at no cost. Kernels get
    the arrays they only read this way from every caller, so that each has one specialisation
    per dtype and layout instead of one per combination of flags."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


@overload(read_only)
def _read_only_overload(a):
    if isinstance(a, types.Array):
        return lambda a: _read_only(a)
    return None


def c_view(a, shape):
    """``a.reshape(shape)``; compiled: a free view for a C-contiguous ``a`` (module
    docstring)."""
    return np.reshape(a, shape)


@overload(c_view)
def _c_view_overload(a, shape):
    if isinstance(a, types.Array) and a.layout == "C" and isinstance(shape, types.BaseTuple):
        def impl(a, shape):
            n = 1
            for d in shape:
                n *= d
            if n != a.size:
                raise ValueError("c_view: the shape does not match the array's size")
            return _c_view(a, shape)
        return impl

    def fallback(a, shape):
        return a.reshape(shape)
    return fallback


__all__ = ["c_view", "read_only", "stack_array"]
