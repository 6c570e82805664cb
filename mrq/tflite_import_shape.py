"""TFLite shape, data-movement and simple elementwise operators -> :mod:`mrq.ir`.

Handlers ``(importer, op, name, index, ins, outs)`` for :class:`mrq.tflite_import._Importer`,
looked up by builtin name in :data:`HANDLERS` when the importer has no ``_op_<NAME>`` of its own.

* Every data-movement op is written once, as a numpy function of the input array with TFLite's
  semantics. Applied to constants it folds the op at import (shape arithmetic: SHAPE ->
  STRIDED_SLICE -> PACK feeding a RESHAPE); applied to ``arange`` it gives, for an activation,
  which input element every output element copies: the IR op ``Take`` (``attrs['source']``, the
  flat source offset of each output element of one batch item; ``attrs['shape']``, the output
  shape without the batch). Moves that keep the element order become ``Reshape``, permutations
  that keep the batch axis ``Transpose``. Movement never changes codes, so the input and output
  grids must be equal (TFLite's kernels copy codes too).
* The batch: IR activations have a free leading dimension. A movement op is imported when the
  model's batch is 1 on both sides, so that every output element reads from its own batch item.
* RELU, RELU6, RELU_N1_TO_1, RELU_0_TO_1 -> ``Clamp`` (``lo``, ``hi``), as a fused activation.
* HARD_SWISH, TANH, CAST of 8-bit codes -> ``HardSwish``, ``Tanh``, ``Cast``: the code alone
  decides the result, so :mod:`mrq.lower_movement` lowers them to a 256-entry table holding
  LiteRT's own arithmetic.
* ARG_MAX/ARG_MIN -> ``ArgMax`` (``attrs['axis']``, ``attrs['select']`` max|min), REDUCE_MAX/
  REDUCE_MIN -> ``ReduceMax`` (``attrs['axes']``, ``keep_dims``, ``select``), MAXIMUM/MINIMUM ->
  ``Maximum`` (``attrs['select']``), RESIZE_BILINEAR -> ``ResizeBilinear`` (``size``,
  ``align_corners``, ``half_pixel_centers``), RESIZE_NEAREST_NEIGHBOR -> ``Take``.
* CUSTOM operators are refused with one line naming the operator index and the custom code;
  ``stop_before`` (``mrq sim --stop-before``) imports the graph up to such an operator.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mrq.errors import ModelError, UnsupportedOpError
from mrq.ir import Tensor

_INT_TYPES = ("int32", "int64")


def _unsupported(name: str, index: int, detail: str) -> UnsupportedOpError:
    return UnsupportedOpError(name, f"operator {index}", detail)


# ------------------------------------------------------------------------------------ tensors
def _is_const(imp, idx: int) -> bool:
    return idx >= 0 and isinstance(imp._raw[idx]["data"], np.ndarray)


def _const_data(imp, idx: int, name: str, index: int, what: str) -> np.ndarray:
    if not _is_const(imp, idx):
        raise _unsupported(name, index, f"the {what} must be a constant")
    return imp._raw[idx]["data"]


def _tensor(imp, idx: int, name: str, index: int) -> str:
    """The IR tensor of an activation; unlike the importer's own, int16 codes (movement is
    dtype-agnostic) and unquantized int32/int64 tensors (indices, CAST) are accepted."""
    raw = imp._raw[idx]
    ir_name = imp._ir_name(idx)
    if ir_name in imp.tensors or _is_const(imp, idx):
        return imp._activation(idx, name, index)
    if raw["dtype"] == "int16" or (raw["dtype"] in _INT_TYPES and raw["scale"] is None):
        qp = imp._qparams(raw)
        if raw["dtype"] == "int16" and qp is None:
            raise ModelError(f"tensor {raw['name']!r} is int16 without quantization parameters")
        if qp is not None and qp.per_channel:
            raise _unsupported(name, index, f"per-channel quantized activation {raw['name']!r}")
        shape = (None,) + tuple(raw["shape"][1:]) if raw["shape"] else ()
        imp.tensors[ir_name] = Tensor(ir_name, shape, raw["dtype"], qp)
        return ir_name
    return imp._activation(idx, name, index)


def _output(imp, idx: int, name: str, index: int) -> str:
    if imp._ir_name(idx) in imp.tensors:
        raise ModelError(f"operator {index} ({name}): tensor {imp._raw[idx]['name']!r} is written twice")
    return _tensor(imp, idx, name, index)


def _fold(imp, out_idx: int, value: np.ndarray) -> None:
    """The op's output is a constant: later consumers read it as one (no node)."""
    raw = imp._raw[out_idx]
    dtype = np.dtype(raw["dtype"]) if raw["dtype"] in ("int8", "uint8", "int16", "int32", "int64",
                                                      "float32") else value.dtype
    raw["data"] = np.array(value, dtype=dtype)   # (ascontiguousarray would make scalars 1-D)
    raw["shape"] = tuple(np.shape(value))


def _same_grid(imp, x: str, y: str, name: str, index: int) -> None:
    xq, yq = imp.tensors[x].qparams, imp.tensors[y].qparams
    if imp.tensors[x].dtype != imp.tensors[y].dtype:
        raise _unsupported(name, index, f"input {x!r} is {imp.tensors[x].dtype}, output {y!r} "
                                        f"{imp.tensors[y].dtype}")
    if (xq is None) != (yq is None) or (xq is not None and not xq.same_grid(yq)):
        raise _unsupported(name, index, f"input {x!r} and output {y!r} have different quantization "
                                        f"(a data-movement op copies codes)")


# ------------------------------------------------------------------------------------ movement
def _movement(imp, name: str, index: int, x_idx: int, out_idxs, fn: Callable) -> None:
    """Fold ``fn`` on a constant input, else emit one Take/Reshape/Transpose per output.
    ``fn(array) -> list of arrays`` (one per output)."""

    def per_output(arrays):
        if len(arrays) != len(out_idxs):
            raise ModelError(f"operator {index} ({name}): the op gives {len(arrays)} outputs, the "
                             f"model lists {len(out_idxs)}")
        return zip(out_idxs, arrays)

    if _is_const(imp, x_idx):
        for o, value in per_output(fn(imp._raw[x_idx]["data"])):
            _fold(imp, o, value)
        return
    x = _tensor(imp, x_idx, name, index)
    in_shape = tuple(imp._raw[x_idx]["shape"])
    if not in_shape or in_shape[0] != 1:
        raise _unsupported(name, index, f"input of shape {list(in_shape)}: the leading (batch) "
                                        f"dimension must be 1")
    size = int(np.prod(in_shape))
    sources = fn(np.arange(size, dtype=np.int64).reshape(in_shape))
    for o, src in per_output(sources):
        y = _output(imp, o, name, index)
        _same_grid(imp, x, y, name, index)
        _check_shape(imp, o, src.shape, name, index)
        out_shape = tuple(imp._raw[o]["shape"])
        if not out_shape or out_shape[0] != 1:
            raise _unsupported(name, index, f"output of shape {list(out_shape)}: the leading "
                                            f"(batch) dimension must be 1")
        flat = src.reshape(-1)
        if flat.size == size and np.array_equal(flat, np.arange(size)):
            imp._emit("Reshape", name, index, [x], [y], shape=(0,) + out_shape[1:])
        else:
            imp._emit("Take", name, index, [x], [y], source=np.ascontiguousarray(flat),
                      shape=out_shape[1:])


def _check_shape(imp, out_idx: int, shape: tuple, name: str, index: int) -> None:
    out_shape = tuple(imp._raw[out_idx]["shape"])
    if out_shape != tuple(shape):
        raise ModelError(f"operator {index} ({name}): output {imp._raw[out_idx]['name']!r} has shape "
                         f"{list(out_shape)}, the op gives {list(shape)}")


def _axis(axis: int, rank: int, name: str, index: int) -> int:
    if not -rank <= axis < rank:
        raise ModelError(f"operator {index} ({name}): axis {axis} is outside the input's {rank} axes")
    return axis % rank


def _strided_slice(imp, op, name, index, ins, outs):
    o = imp._options(op, "StridedSliceOptions")
    begin = _const_data(imp, ins[1], name, index, "begin").astype(np.int64).reshape(-1)
    end = _const_data(imp, ins[2], name, index, "end").astype(np.int64).reshape(-1)
    strides = (_const_data(imp, ins[3], name, index, "strides").astype(np.int64).reshape(-1)
               if len(ins) > 3 else np.ones(begin.size, np.int64))
    masks = {"begin": 0, "end": 0, "ellipsis": 0, "new_axis": 0, "shrink": 0, "offset": False}
    if o is not None:
        masks.update(begin=o.BeginMask(), end=o.EndMask(), ellipsis=o.EllipsisMask(),
                     new_axis=o.NewAxisMask(), shrink=o.ShrinkAxisMask(),
                     offset=bool(o.Offset()) if hasattr(o, "Offset") else False)
    if masks["ellipsis"] or masks["new_axis"]:
        raise _unsupported(name, index, "ellipsis_mask/new_axis_mask")
    if np.any(strides == 0):
        raise ModelError(f"operator {index} ({name}): stride 0")

    def fn(a):
        rank = a.ndim
        if begin.size > rank:
            raise ModelError(f"operator {index} ({name}): {begin.size} slice dims for a rank-{rank} input")
        picks, keep = [], []
        for d in range(rank):
            n = a.shape[d]
            if d >= begin.size:
                picks.append(np.arange(n))
                keep.append(True)
                continue
            s = int(strides[d])
            if masks["begin"] >> d & 1:
                start = 0 if s > 0 else n - 1
            else:
                start = int(begin[d]) + (n if begin[d] < 0 else 0)
                start = min(max(start, 0), n) if s > 0 else min(max(start, -1), n - 1)
            shrink = masks["shrink"] >> d & 1
            if shrink:
                stop = start + 1
            elif masks["end"] >> d & 1:
                stop = n if s > 0 else -1
            else:
                stop = int(end[d]) + (int(begin[d]) if masks["offset"] else 0)
                stop += n if stop < 0 else 0
                stop = min(max(stop, 0), n) if s > 0 else min(max(stop, -1), n - 1)
            picks.append(np.arange(start, stop, s if not shrink else 1))
            keep.append(not shrink)
        out = a[np.ix_(*picks)] if rank else a
        return [out.reshape(tuple(dim for dim, k in zip(out.shape, keep) if k))]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def _slice(imp, op, name, index, ins, outs):
    begin = _const_data(imp, ins[1], name, index, "begin").astype(np.int64).reshape(-1)
    size = _const_data(imp, ins[2], name, index, "size").astype(np.int64).reshape(-1)

    def fn(a):
        if begin.size != a.ndim or size.size != a.ndim:
            raise ModelError(f"operator {index} ({name}): begin/size do not match the input rank {a.ndim}")
        sl = []
        for d in range(a.ndim):
            b = int(begin[d])
            e = a.shape[d] if size[d] == -1 else b + int(size[d])
            if not 0 <= b <= e <= a.shape[d]:
                raise ModelError(f"operator {index} ({name}): slice [{b}, {e}) outside dimension {d} "
                                 f"of size {a.shape[d]}")
            sl.append(slice(b, e))
        return [a[tuple(sl)]]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def _split_sizes(n: int, sizes, name, index) -> list:
    sizes = [int(s) for s in sizes]
    if sizes.count(-1) > 1:
        raise ModelError(f"operator {index} ({name}): more than one size -1")
    if -1 in sizes:
        sizes[sizes.index(-1)] = n - (sum(sizes) + 1)
    if sum(sizes) != n or any(s < 0 for s in sizes):
        raise ModelError(f"operator {index} ({name}): split sizes {sizes} do not add up to {n}")
    return sizes


def _split_fn(axis_raw, sizes_of, name, index):
    def fn(a):
        axis = _axis(int(axis_raw), a.ndim, name, index)
        sizes = sizes_of(a.shape[axis])
        bounds = np.cumsum([0] + sizes)
        return [np.take(a, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(len(sizes))]
    return fn


def _split(imp, op, name, index, ins, outs):
    axis = int(_const_data(imp, ins[0], name, index, "axis").reshape(-1)[0])
    n_out = len(outs)

    def sizes_of(n):
        if n % n_out:
            raise ModelError(f"operator {index} ({name}): {n} elements do not split into {n_out}")
        return [n // n_out] * n_out

    _movement(imp, name, index, ins[1], outs, _split_fn(axis, sizes_of, name, index))


def _split_v(imp, op, name, index, ins, outs):
    sizes = _const_data(imp, ins[1], name, index, "size_splits").reshape(-1)
    axis = int(_const_data(imp, ins[2], name, index, "axis").reshape(-1)[0])
    _movement(imp, name, index, ins[0], outs,
              _split_fn(axis, lambda n: _split_sizes(n, sizes, name, index), name, index))


def _unpack(imp, op, name, index, ins, outs):
    o = imp._options(op, "UnpackOptions")
    axis_raw = int(o.Axis()) if o is not None else 0

    def fn(a):
        axis = _axis(axis_raw, a.ndim, name, index)
        return [np.take(a, i, axis=axis) for i in range(a.shape[axis])]

    _movement(imp, name, index, ins[0], outs, fn)


def _squeeze(imp, op, name, index, ins, outs):
    shape = tuple(imp._raw[outs[0]]["shape"])
    _movement(imp, name, index, ins[0], outs[:1], lambda a: [a.reshape(shape)])


def _expand_dims(imp, op, name, index, ins, outs):
    axis_raw = int(_const_data(imp, ins[1], name, index, "axis").reshape(-1)[0])

    def fn(a):
        if not -a.ndim - 1 <= axis_raw <= a.ndim:
            raise ModelError(f"operator {index} ({name}): axis {axis_raw} for a rank-{a.ndim} input")
        return [np.expand_dims(a, axis_raw % (a.ndim + 1))]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def _transpose(imp, op, name, index, ins, outs):
    perm = tuple(int(p) for p in _const_data(imp, ins[1], name, index, "permutation").reshape(-1))
    if sorted(perm) != list(range(len(perm))):
        raise ModelError(f"operator {index} ({name}): {list(perm)} is not a permutation")
    if not _is_const(imp, ins[0]) and perm and perm[0] == 0:
        x = _tensor(imp, ins[0], name, index)
        y = _output(imp, outs[0], name, index)
        _same_grid(imp, x, y, name, index)
        imp._emit("Transpose", name, index, [x], [y], perm=perm)
        return
    _movement(imp, name, index, ins[0], outs[:1], lambda a: [a.transpose(perm)])


def _tile(imp, op, name, index, ins, outs):
    reps = tuple(int(r) for r in _const_data(imp, ins[1], name, index, "multiples").reshape(-1))
    _movement(imp, name, index, ins[0], outs[:1], lambda a: [np.tile(a, reps)])


def _gather(imp, op, name, index, ins, outs):
    o = imp._options(op, "GatherOptions")
    axis_raw = int(o.Axis()) if o is not None else 0
    if o is not None and o.BatchDims() != 0:
        raise _unsupported(name, index, "batch_dims != 0")
    indices = _const_data(imp, ins[1], name, index, "indices").astype(np.int64)

    def fn(a):
        axis = _axis(axis_raw, a.ndim, name, index)
        if indices.size and (indices.min() < 0 or indices.max() >= a.shape[axis]):
            raise ModelError(f"operator {index} ({name}): indices outside [0, {a.shape[axis]})")
        return [np.take(a, indices, axis=axis)]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def _depth_to_space(imp, op, name, index, ins, outs):
    o = imp._options(op, "DepthToSpaceOptions")
    b = int(o.BlockSize())

    def fn(a):
        n, h, w, c = a.shape
        if b < 1 or c % (b * b):
            raise ModelError(f"operator {index} ({name}): {c} channels for block size {b}")
        co = c // (b * b)
        return [a.reshape(n, h, w, b, b, co).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * b, w * b, co)]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def _space_to_depth(imp, op, name, index, ins, outs):
    o = imp._options(op, "SpaceToDepthOptions")
    b = int(o.BlockSize())

    def fn(a):
        n, h, w, c = a.shape
        if b < 1 or h % b or w % b:
            raise ModelError(f"operator {index} ({name}): {h}x{w} is not a multiple of block size {b}")
        return [a.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5)
                .reshape(n, h // b, w // b, b * b * c)]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def nearest_neighbor_index(in_size: int, out_size: int, align_corners: bool,
                           half_pixel_centers: bool) -> np.ndarray:
    """TFLite ``GetNearestNeighbor`` for every output position: float32 ``scale`` and
    ``(i + offset) * scale``, then round half away (align_corners) or floor, clamped."""
    f32 = np.float32
    if align_corners and out_size > 1:
        scale = f32(f32(in_size - 1) / f32(out_size - 1))
    else:
        scale = f32(f32(in_size) / f32(out_size))
    offset = f32(0.5) if half_pixel_centers else f32(0.0)
    out = np.empty(out_size, np.int64)
    for i in range(out_size):
        v = f32(f32(f32(i) + offset) * scale)
        j = int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v))) if align_corners \
            else math.floor(float(v))
        j = min(j, in_size - 1)
        out[i] = max(j, 0) if half_pixel_centers else j
    return out


def _resize_options(imp, op, kind):
    o = imp._options(op, kind)
    align = bool(o.AlignCorners()) if o is not None else False
    half = bool(o.HalfPixelCenters()) if o is not None else False
    return align, half


def _resize_size(imp, ins, name, index) -> tuple[int, int]:
    size = _const_data(imp, ins[1], name, index, "output size").reshape(-1)
    if size.size != 2 or np.any(size <= 0):
        raise ModelError(f"operator {index} ({name}): output size {size.tolist()}")
    return int(size[0]), int(size[1])


def _resize_nearest(imp, op, name, index, ins, outs):
    align, half = _resize_options(imp, op, "ResizeNearestNeighborOptions")
    oh, ow = _resize_size(imp, ins, name, index)

    def fn(a):
        if a.ndim != 4:
            raise _unsupported(name, index, f"input must be 4-D NHWC, got {list(a.shape)}")
        rows = nearest_neighbor_index(a.shape[1], oh, align, half)
        cols = nearest_neighbor_index(a.shape[2], ow, align, half)
        return [a[:, rows][:, :, cols]]

    _movement(imp, name, index, ins[0], outs[:1], fn)


def _resize_bilinear(imp, op, name, index, ins, outs):
    align, half = _resize_options(imp, op, "ResizeBilinearOptions")
    if align and half:
        raise ModelError(f"operator {index} ({name}): align_corners and half_pixel_centers together")
    size = _resize_size(imp, ins, name, index)
    x = _tensor(imp, ins[0], name, index)
    if len(imp.tensors[x].shape) != 4:
        raise _unsupported(name, index, f"input must be 4-D NHWC, got {imp.tensors[x].shape}")
    y = _output(imp, outs[0], name, index)
    _same_grid(imp, x, y, name, index)
    imp._require_quantized([x], name, index)
    in_shape = imp._raw[ins[0]]["shape"]
    _check_shape(imp, outs[0], (in_shape[0], *size, in_shape[3]), name, index)
    imp._emit("ResizeBilinear", name, index, [x], [y], size=size, align_corners=align,
              half_pixel_centers=half)


def _shape(imp, op, name, index, ins, outs):
    shape = np.asarray(imp._raw[ins[0]]["shape"], np.int64)
    _fold(imp, outs[0], shape)


def _pack(imp, op, name, index, ins, outs):
    o = imp._options(op, "PackOptions")
    axis_raw = int(o.Axis()) if o is not None else 0
    if all(_is_const(imp, i) for i in ins):
        _fold(imp, outs[0], np.stack([imp._raw[i]["data"] for i in ins], axis=axis_raw))
        return
    rank = len(imp._raw[ins[0]]["shape"]) + 1
    axis = _axis(axis_raw, rank, name, index)
    if axis == 0:
        raise _unsupported(name, index, "packing along the batch dimension")
    y = _output(imp, outs[0], name, index)
    parts = []
    for k, i in enumerate(ins):
        x = _tensor(imp, i, name, index)
        _same_grid(imp, x, y, name, index)
        shape = list(imp._raw[i]["shape"])
        expanded = tuple(shape[:axis] + [1] + shape[axis:])
        part = imp._new_tensor(f"{y}__pack{k}", (None,) + expanded[1:], imp.tensors[y])
        imp._emit("Reshape", name, index, [x], [part], shape=(0,) + expanded[1:], tflite_part="pack")
        parts.append(part)
    imp._emit("Concat", name, index, parts, [y], axis=axis)


# ------------------------------------------------------------------------------------ elementwise
_RELU_RANGES = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0),
                "RELU_0_TO_1": (0.0, 1.0)}


def _relu(imp, op, name, index, ins, outs):
    x = _tensor(imp, ins[0], name, index)
    y = _output(imp, outs[0], name, index)
    imp._require_quantized([x, y], name, index)
    lo, hi = _RELU_RANGES[name]
    _check_shape(imp, outs[0], imp._raw[ins[0]]["shape"], name, index)
    imp._emit("Clamp", name, index, [x], [y], lo=lo, hi=hi)


def _table_op(ir_op: str):
    """An 8-bit elementwise op lowered to a 256-entry table (HardSwish, Tanh, Cast)."""
    def handler(imp, op, name, index, ins, outs):
        x = _tensor(imp, ins[0], name, index)
        y = _output(imp, outs[0], name, index)
        # int16 TANH is LiteRT's table-interpolating kernel (mrq/lower_tflite16.py)
        codes = ("int8", "uint8", "int16") if ir_op == "Tanh" else ("int8", "uint8")
        if ir_op != "Cast":
            imp._require_quantized([x, y], name, index)
            if imp.tensors[y].dtype not in codes:
                raise _unsupported(name, index, f"{imp.tensors[y].dtype} output (8-bit codes only)")
        if imp.tensors[x].dtype not in codes:
            raise _unsupported(name, index, f"{imp.tensors[x].dtype} input (8-bit codes only)")
        _check_shape(imp, outs[0], imp._raw[ins[0]]["shape"], name, index)
        imp._emit(ir_op, name, index, [x], [y])
    return handler


def _cast(imp, op, name, index, ins, outs):
    if _is_const(imp, ins[0]):
        _fold(imp, outs[0], imp._raw[ins[0]]["data"])
        return
    _table_op("Cast")(imp, op, name, index, ins, outs)


def _arg(select: str):
    """ARG_MAX/ARG_MIN: the index type is the output tensor's (int32 | int64)."""
    def handler(imp, op, name, index, ins, outs):
        x = _tensor(imp, ins[0], name, index)
        imp._require_quantized([x], name, index)
        rank = len(imp.tensors[x].shape)
        axis = _axis(int(_const_data(imp, ins[1], name, index, "axis").reshape(-1)[0]), rank, name, index)
        if axis == 0:
            raise _unsupported(name, index, "reducing the batch dimension")
        y = _output(imp, outs[0], name, index)
        if imp.tensors[y].dtype not in _INT_TYPES:
            raise _unsupported(name, index, f"output type {imp.tensors[y].dtype}")
        in_shape = imp._raw[ins[0]]["shape"]
        _check_shape(imp, outs[0], tuple(n for d, n in enumerate(in_shape) if d != axis), name, index)
        imp._emit("ArgMax", name, index, [x], [y], axis=axis, select=select)
    return handler


def _reduce(select: str):
    def handler(imp, op, name, index, ins, outs):
        o = imp._options(op, "ReducerOptions")
        x = _tensor(imp, ins[0], name, index)
        imp._require_quantized([x], name, index)
        rank = len(imp.tensors[x].shape)
        axes = sorted({_axis(int(a), rank, name, index)
                       for a in _const_data(imp, ins[1], name, index, "axes").reshape(-1)})
        if 0 in axes:
            raise _unsupported(name, index, "reducing the batch dimension")
        keep = bool(o.KeepDims()) if o is not None else False
        y = _output(imp, outs[0], name, index)
        imp._require_quantized([y], name, index)
        in_shape = imp._raw[ins[0]]["shape"]
        _check_shape(imp, outs[0], tuple(1 if d in axes else n for d, n in enumerate(in_shape)
                                         if keep or d not in axes), name, index)
        imp._emit("ReduceMax", name, index, [x], [y], axes=tuple(axes), keep_dims=keep, select=select)
    return handler


def _maximum(select: str):
    def handler(imp, op, name, index, ins, outs):
        a = _tensor(imp, ins[0], name, index)
        b = _tensor(imp, ins[1], name, index)
        y = _output(imp, outs[0], name, index)
        imp._require_quantized([a, b, y], name, index)
        for t in (a, b):
            if imp.tensors[t].qparams.per_channel:
                raise _unsupported(name, index, f"per-channel operand {t!r}")
        try:
            shape = np.broadcast_shapes(imp._raw[ins[0]]["shape"], imp._raw[ins[1]]["shape"])
        except ValueError:
            raise ModelError(f"operator {index} ({name}): operand shapes do not broadcast") from None
        _check_shape(imp, outs[0], shape, name, index)
        imp._emit("Maximum", name, index, [a, b], [y], select=select)
    return handler


def _prelu(imp, op, name, index, ins, outs):
    x = _tensor(imp, ins[0], name, index)
    alpha = imp._activation(ins[1], name, index)
    y = _output(imp, outs[0], name, index)
    imp._require_quantized([x, alpha, y], name, index)
    if not imp.tensors[alpha].is_const:
        raise _unsupported(name, index, "alpha must be a constant")
    if imp.tensors[alpha].qparams.per_channel:
        raise _unsupported(name, index, "per-channel quantized alpha")
    if any(imp.tensors[t].dtype not in ("int8", "uint8") for t in (x, alpha, y)):
        raise _unsupported(name, index, "8-bit input, alpha and output only")
    _check_shape(imp, outs[0], imp._raw[ins[0]]["shape"], name, index)
    imp._emit("PRelu", name, index, [x, alpha], [y])


HANDLERS: dict[str, Callable] = {
    "STRIDED_SLICE": _strided_slice, "SLICE": _slice, "SPLIT": _split, "SPLIT_V": _split_v,
    "UNPACK": _unpack, "SQUEEZE": _squeeze, "EXPAND_DIMS": _expand_dims, "TRANSPOSE": _transpose,
    "TILE": _tile, "GATHER": _gather, "DEPTH_TO_SPACE": _depth_to_space,
    "SPACE_TO_DEPTH": _space_to_depth, "RESIZE_NEAREST_NEIGHBOR": _resize_nearest,
    "RESIZE_BILINEAR": _resize_bilinear, "SHAPE": _shape, "PACK": _pack, "CAST": _cast,
    "RELU": _relu, "RELU6": _relu, "RELU_N1_TO_1": _relu, "RELU_0_TO_1": _relu,
    "HARD_SWISH": _table_op("HardSwish"), "TANH": _table_op("Tanh"),
    "ARG_MAX": _arg("max"), "ARG_MIN": _arg("min"),
    "REDUCE_MAX": _reduce("max"), "REDUCE_MIN": _reduce("min"),
    "MAXIMUM": _maximum("max"), "MINIMUM": _maximum("min"), "PRELU": _prelu,
}


def _custom(imp, op, name, index, ins, outs):
    raise UnsupportedOpError(name, f"operator {index}",
                             f"custom op {name[7:-1]!r} (a runtime-specific kernel mrq cannot "
                             f"simulate); simulate the graph before it with --stop-before {index}")


def handler_for(name: str) -> Callable | None:
    """The handler of builtin ``name`` (``CUSTOM(<code>)`` for custom ops), or None."""
    if name.startswith("CUSTOM("):
        return _custom
    return HANDLERS.get(name)


def check_stop_before(imp, stop_before: int) -> int:
    """``stop_before`` if it names an operator of the model (the number of operators to import)."""
    n_ops = imp.g.OperatorsLength()
    if not 0 <= stop_before < n_ops:
        raise ModelError(f"{imp.source}: --stop-before {stop_before}: the model has operators "
                         f"0..{n_ops - 1}")
    return stop_before


def stop_outputs(imp, stop_before: int) -> list[int]:
    """TFLite tensor indices that are the graph outputs when importing stops before operator
    ``stop_before``: the inputs of that operator that earlier operators (or the graph inputs)
    computed."""
    op = imp.g.Operators(check_stop_before(imp, stop_before))
    ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
    outs = [i for i in ins if i >= 0 and imp._ir_name(i) in imp.tensors and not _is_const(imp, i)]
    if not outs:
        raise ModelError(f"{imp.source}: operator {stop_before} reads no computed tensor; nothing "
                         f"to simulate before it")
    return list(dict.fromkeys(outs))


def custom_operators(model) -> list[tuple[int, str]]:
    """(operator index, custom code) of every CUSTOM operator of the first subgraph."""
    g = model.Subgraphs(0)
    found = []
    for index in range(g.OperatorsLength()):
        code = model.OperatorCodes(g.Operators(index).OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == 32:
            custom = code.CustomCode()
            found.append((index, custom.decode(errors="replace") if custom else "?"))
    return found


__all__ = ["HANDLERS", "check_stop_before", "custom_operators", "handler_for",
           "nearest_neighbor_index", "stop_outputs"]
