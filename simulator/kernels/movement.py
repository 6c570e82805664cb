"""Data movement: concat, reshape, transpose. No arithmetic; numpy does the work (transpose up
to rank 4: a jitted copy, so that it has a launch).

Shapes follow ONNX: ``reshape`` copies the input dimension for a ``0`` entry (ONNX ``allowzero=0``)
and infers one ``-1`` entry. Outputs are contiguous arrays in the input dtype.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from simulator.errors import KernelInputError
from simulator.launch import Call, In, Launch, Tmp


def concat(arrays, *, axis):
    """Concatenate arrays of one dtype along ``axis`` (negative counts from the end)."""
    if len(arrays) == 0:
        raise KernelInputError("concat: no inputs")
    dtypes = {a.dtype.name for a in arrays}
    if len(dtypes) != 1:
        raise KernelInputError(f"concat: inputs have different dtypes {sorted(dtypes)}")
    ndim = arrays[0].ndim
    if any(a.ndim != ndim for a in arrays):
        raise KernelInputError(f"concat: inputs have different ranks {[a.ndim for a in arrays]}")
    if not -ndim <= axis < ndim:
        raise KernelInputError(f"concat: axis {axis} out of range for rank {ndim}")
    ax = axis % ndim
    for a in arrays[1:]:
        if a.shape[:ax] + a.shape[ax + 1:] != arrays[0].shape[:ax] + arrays[0].shape[ax + 1:]:
            raise KernelInputError(
                f"concat: shapes {[list(a.shape) for a in arrays]} differ off axis {axis}"
            )
    return np.concatenate(arrays, axis=ax)


def reshape_target(in_shape, shape) -> tuple:
    """The ONNX Reshape output shape of ``in_shape`` for target ``shape`` (0 copies, -1 infers)."""
    target = [int(s) for s in shape]
    out = []
    infer_at = None
    for i, s in enumerate(target):
        if s == 0:
            if i >= len(in_shape):
                raise KernelInputError(
                    f"reshape: 0 at position {i} but input rank is {len(in_shape)}"
                )
            out.append(int(in_shape[i]))
        elif s == -1:
            if infer_at is not None:
                raise KernelInputError(f"reshape: more than one -1 in {list(shape)}")
            infer_at = i
            out.append(1)
        elif s < -1:
            raise KernelInputError(f"reshape: invalid dimension {s} in {list(shape)}")
        else:
            out.append(s)
    total = int(np.prod(in_shape, dtype=np.int64))
    known = int(np.prod(out, dtype=np.int64))
    if infer_at is not None:
        if known == 0 or total % known:
            raise KernelInputError(
                f"reshape: cannot infer -1 from {list(in_shape)} to {list(shape)}"
            )
        out[infer_at] = total // known
    elif known != total:
        raise KernelInputError(f"reshape: cannot reshape {list(in_shape)} to {list(shape)}")
    return tuple(out)


def reshape(x, *, shape):
    """ONNX Reshape (``allowzero=0``)."""
    return np.ascontiguousarray(x.reshape(reshape_target(x.shape, shape)))


def transpose(x, *, perm):
    """ONNX Transpose with an explicit permutation."""
    launch = transpose_launch(x, perm=perm)
    if launch is None:
        return np.ascontiguousarray(np.transpose(x, tuple(int(p) for p in perm)))
    outs, _ = launch.execute((np.ascontiguousarray(x),))
    return np.ascontiguousarray(outs[0])


def transpose_launch(x, *, perm):
    """The :class:`simulator.launch.Launch` of :func:`transpose` for inputs of ``x``'s shape and
    dtype (values not read); ``None`` above rank 4 (numpy transposes those)."""
    perm = tuple(int(p) for p in perm)
    if sorted(perm) != list(range(x.ndim)):
        raise KernelInputError(
            f"transpose: perm {list(perm)} is not a permutation of rank {x.ndim}"
        )
    out_shape = tuple(int(x.shape[p]) for p in perm)
    moved = [p for p in perm if x.shape[p] != 1]
    if moved == sorted(moved):
        # only unit axes move: the element order is unchanged, a reshaped view
        return Launch((), (), (In(0, out_shape),))
    if x.ndim > 4:
        return None
    lead = 4 - x.ndim
    shape4 = (1,) * lead + tuple(int(d) for d in x.shape)
    perm4 = tuple(range(lead)) + tuple(p + lead for p in perm)
    strides = (shape4[1] * shape4[2] * shape4[3], shape4[2] * shape4[3], shape4[3], 1)
    out4 = tuple(shape4[p] for p in perm4)
    size = int(np.prod(shape4, dtype=np.int64))
    call = Call(_transpose4, (In(0, (size,)), out4[0], out4[1], out4[2], out4[3],
                              strides[perm4[0]], strides[perm4[1]], strides[perm4[2]],
                              strides[perm4[3]], Tmp(0, (size,))))
    return Launch(((out_shape, x.dtype.name),), (call,), (Tmp(0),))


@njit(cache=True)
def _transpose4(x1, d0, d1, d2, d3, s0, s1, s2, s3, out1):
    """``out[i0, i1, i2, i3] = x1[i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3]`` (flat, C order)."""
    o = 0
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                b = i0 * s0 + i1 * s1 + i2 * s2
                for i3 in range(d3):
                    out1[o] = x1[b + i3 * s3]
                    o += 1
