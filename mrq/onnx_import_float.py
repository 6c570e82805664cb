"""Float islands of mixed ONNX graphs -> :mod:`mrq.ir`: ops that read a plain float32 tensor
(a float graph input, or the float output of a dynamically quantized conv/MatMul, or of another
island op) and that ONNX Runtime runs as float kernels before the next quantization.

Each op becomes an IR op on float32 tensors (dtype ``float32``, no grid):

- ``FloatBinary`` (Add/Sub/Mul/Div, PRelu; a constant operand is a float constant tensor, a
  DequantizeLinear view is dequantized as ORT does) and ``FloatUnary`` (Sigmoid, Tanh, Relu,
  Clip, LeakyRelu, HardSigmoid, HardSwish), ``FloatSoftmax``, ``FloatGlobalAveragePool``, ``FloatReduceL2``: ORT's
  float kernels and their summation orders, bit for bit (simulator/kernels/ort_eltwise.py);
- ``FloatConcat``, ``FloatMaxPool`` and pure data movement (``Reshape``, ``Transpose``, ``Take``
  for Slice/Split/Resize-nearest/Expand and the like): exact by construction.

A float op whose output goes only to QuantizeLinear and that commutes with quantization (Relu,
MaxPool, Reshape, ...) is left to the importer, which quantizes first as ORT's optimizer does.
Lowering (mrq/lower_float.py) runs these ops only under a profile whose runtime is ORT.
"""
from __future__ import annotations

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError
from mrq.onnx_import_movement import static_shape

BINARY = ("Add", "Sub", "Mul", "Div")
UNARY = ("Sigmoid", "Tanh", "Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish")
# ops the importer's own grid-preserving path handles on a float input that only QuantizeLinear
# reads (quantize first: exact, as ORT's optimizer moves the QuantizeLinear up)
_COMMUTES = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity",
             "Relu", "Clip")
# ops ORT has no quantized kernel or QDQ fusion for: DequantizeLinear -> float op -> QuantizeLinear
_FLOAT_ONLY = ("PRelu", "ReduceL2")
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _where(node) -> str:
    return node.name or node.output[0]


def is_float_tensor(imp, name: str) -> bool:
    """A run-time float32 tensor without a grid (not a DequantizeLinear view, not a constant)."""
    t = imp.tensors.get(name)
    return (t is not None and name not in imp.alias and not t.is_quantized and not t.is_const
            and t.dtype == "float32")


def handle(imp, node) -> bool:
    """Import ``node`` as a float island op if it reads a plain float tensor and is one this
    module simulates; False leaves it to the importer (which refuses what nobody handles)."""
    op = node.op_type
    if op not in HANDLERS:
        return False
    # ops without an integer kernel in ORT run in float on a DequantizeLinear view too
    reads_float = any(is_float_tensor(imp, n) for n in node.input if n) or \
        (op in _FLOAT_ONLY and node.input[0] in imp.alias) or _float_sub(imp, node)
    if not reads_float:
        return False
    if op in _COMMUTES and _only_quantized(imp, node):
        return False
    HANDLERS[op](imp, node)
    return True


def _float_sub(imp, node) -> bool:
    """A QDQ Sub: ORT fuses no QDQ Sub into an integer kernel, so it runs DQ -> float Sub -> Q.
    One by a scalar constant is left to mrq/onnx_import_islands.py (its 256-entry table)."""
    if node.op_type != "Sub" or not any(n in imp.alias for n in node.input):
        return False
    return not any(n in imp.init and np.asarray(imp.init[n]).size == 1 for n in node.input)


def _only_quantized(imp, node) -> bool:
    out = node.output[0]
    users = imp.consumers.get(out, [])
    return bool(users) and out not in imp.graph_outputs and \
        all(u.op_type == "QuantizeLinear" for u in users)


def _out_shape(imp, node, fallback: tuple) -> tuple:
    shape = imp._shape(node.output[0])
    return shape if shape and len(shape) == len(fallback) else (None,) + tuple(fallback[1:])


def _float_input(imp, node, name: str) -> str:
    """``name`` as a float32 IR tensor: itself, a float constant, or the ORT dequantization of a
    DequantizeLinear view or of quantized constant codes."""
    if is_float_tensor(imp, name):
        return name
    if name in imp.alias:
        src = imp.alias[name]
        qp = imp.tensors[src].qparams
        if qp is None or qp.per_channel:
            raise UnsupportedOpError(node.op_type, _where(node), f"input {name!r} is a per-channel "
                                     f"DequantizeLinear view")
        out = f"{name}__dequantized"
        if out not in imp.tensors:
            imp._add_tensor(out, imp._shape(name) or imp.tensors[src].shape, "float32")
            imp._emit("Dequantize", f"dequantize_{name}", [src], [out])
        return out
    if name in imp.consts or name in imp.init:
        from mrq.onnx_import_islands import float_constant
        value = float_constant(imp, name, node, "operand")
        return imp._const_tensor(name + "_f", np.ascontiguousarray(value, np.float32), None)
    raise ModelError(f"node {_where(node)!r} ({node.op_type}): input {name!r} is not a float "
                     f"tensor mrq holds")


def _binary(imp, node) -> None:
    a, b = (_float_input(imp, node, n) for n in node.input[:2])
    shapes = [tuple(imp.tensors[n].shape) for n in (a, b)]
    runtime_rank = max((len(s) for n, s in zip((a, b), shapes) if not imp.tensors[n].is_const), default=0)
    for name, shape in zip((a, b), shapes):
        t = imp.tensors[name]
        # a constant of the tensor's full rank must not hold several batch items
        if t.is_const and runtime_rank and len(shape) >= runtime_rank and shape[0] not in (1, None):
            raise UnsupportedOpError(node.op_type, _where(node), f"constant operand {name!r} of "
                                     f"shape {list(shape)} broadcasts over the batch")
    try:
        full = np.broadcast_shapes(*(tuple(1 if d is None else d for d in s) for s in shapes))
    except ValueError:
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): shapes {[list(s) for s in shapes]} "
                         f"do not broadcast") from None
    out = imp._add_tensor(node.output[0], _out_shape(imp, node, (None,) + tuple(full[1:])), "float32")
    imp._emit("FloatBinary", imp._name(node), [a, b], [out], float_op=node.op_type)


def _unary(imp, node) -> None:
    x = _float_input(imp, node, node.input[0])
    attrs, op = _attrs(node), node.op_type
    extra = {}
    if op == "Clip":
        lo, hi = imp._clamp_bounds(node)
        extra = {"lo": None if lo is None else float(np.float32(lo)),
                 "hi": None if hi is None else float(np.float32(hi))}
    elif op == "LeakyRelu":
        extra = {"alpha": float(np.float32(attrs.get("alpha", 0.01)))}
    elif op == "HardSigmoid":
        extra = {"alpha": float(np.float32(attrs.get("alpha", 0.2))),
                 "beta": float(np.float32(attrs.get("beta", 0.5)))}
    out = imp._add_tensor(node.output[0], _out_shape(imp, node, imp.tensors[x].shape), "float32")
    imp._emit("FloatUnary", imp._name(node), [x], [out], float_op=op, **extra)


def float_movement(imp, node, fn) -> None:
    """A pure data movement ``fn`` (array -> list of arrays, one per output) of a float tensor:
    one IR ``Reshape`` (order kept) or ``Take`` (an index map) per output."""
    x = node.input[0]
    in_shape = static_shape(imp, x, node)
    size = int(np.prod(in_shape))
    outs = fn(np.arange(size, dtype=np.int64).reshape((1,) + tuple(in_shape[1:])))
    if len(outs) != len(node.output):
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): the op gives {len(outs)} outputs, "
                         f"the model lists {len(node.output)}")
    name = imp._name(node)
    for k, (o, sources) in enumerate(zip(node.output, outs)):
        if not o:
            continue
        if sources.ndim == 0 or sources.shape[0] != 1:
            raise UnsupportedOpError(node.op_type, _where(node), "moving elements across the batch")
        imp._add_tensor(o, (None,) + tuple(sources.shape[1:]), "float32")
        flat = sources.reshape(-1)
        step = name if len(node.output) == 1 else f"{name}:{k}"
        if flat.size == size and np.array_equal(flat, np.arange(size)):
            imp._emit("Reshape", step, [x], [o], shape=(0,) + tuple(sources.shape[1:]))
        else:
            imp._emit("Take", step, [x], [o], source=np.ascontiguousarray(flat),
                      shape=tuple(int(d) for d in sources.shape[1:]))


def _reshape(imp, node) -> None:
    if node.op_type == "Identity":
        return float_movement(imp, node, lambda arr: [arr])
    target = imp._reshape_target(node, _attrs(node), node.input[0])

    def fn(arr):
        shape = [arr.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return [arr.reshape(shape)]
    float_movement(imp, node, fn)


def _transpose(imp, node) -> None:
    perm = _attrs(node).get("perm")

    def fn(arr):
        p = list(range(arr.ndim))[::-1] if perm is None else [int(v) for v in perm]
        if p[0] != 0:
            raise UnsupportedOpError("Transpose", _where(node), "transposing the batch dimension")
        return [np.transpose(arr, p)]
    float_movement(imp, node, fn)


def _via_movement_handler(imp, node) -> None:
    """Slice, Split, Resize (nearest) and the other index maps of mrq/onnx_import_movement.py:
    its handler builds the map and hands a float input to :func:`float_movement`."""
    from mrq.onnx_import_movement import HANDLERS as MOVEMENT
    MOVEMENT[node.op_type](imp, node)


def _concat(imp, node) -> None:
    inputs = [_float_input(imp, node, n) for n in node.input]
    shapes = [tuple(imp.tensors[n].shape) for n in inputs]
    rank = len(shapes[0])
    axis = int(_attrs(node).get("axis", 0))
    if not -rank <= axis < rank or axis % rank == 0:
        raise UnsupportedOpError("Concat", _where(node), f"axis {axis} of a rank-{rank} tensor "
                                 f"(the batch axis cannot be concatenated)")
    axis %= rank
    if any(imp.tensors[n].is_const for n in inputs):
        raise UnsupportedOpError("Concat", _where(node), "a constant operand of a float Concat")
    dims = [s[axis] for s in shapes]
    shape = list(shapes[0])
    shape[axis] = None if None in dims else sum(dims)
    out = imp._add_tensor(node.output[0], _out_shape(imp, node, (None,) + tuple(shape[1:])), "float32")
    imp._emit("FloatConcat", imp._name(node), inputs, [out], axis=axis)


def _maxpool(imp, node) -> None:
    attrs = _attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOpError("MaxPool", _where(node), "the Indices output is not supported")
    if attrs.get("storage_order", 0):
        raise UnsupportedOpError("MaxPool", _where(node), "storage_order=1 is not supported")
    x = node.input[0]
    geom = imp._pool_attrs(node, attrs, x)
    geom.pop("count_include_pad", None)
    in_shape = static_shape(imp, x, node)
    from mrq.shapes import pool_out
    dims = [pool_out(in_shape[2 + i], geom["kernel"][i], geom["strides"][i], geom["pads"][i],
                     geom["pads"][2 + i], geom["dilations"][i], geom["ceil_mode"]) for i in range(2)]
    out = imp._add_tensor(node.output[0], (None, in_shape[1], *dims), "float32")
    imp._emit("FloatMaxPool", imp._name(node), [x], [out], **geom)


def _softmax(imp, node) -> None:
    x = _float_input(imp, node, node.input[0])
    shape = imp.tensors[x].shape
    rank = len(shape)
    opset = max((o.version for o in imp.model.opset_import if o.domain in ("", "ai.onnx")), default=13)
    axis = int(_attrs(node).get("axis", -1 if opset >= 13 else 1))
    if not -rank <= axis < rank:
        raise ModelError(f"node {_where(node)!r} (Softmax): axis {axis} of a rank-{rank} tensor")
    axis %= rank
    if axis == 0:
        raise UnsupportedOpError("Softmax", _where(node), "a softmax over the batch dimension")
    if opset < 13 and axis != rank - 1:   # opset < 13: rows are the flattened trailing axes
        raise UnsupportedOpError("Softmax", _where(node), f"opset-{opset} softmax over axes "
                                 f"{axis}.. (a flattened row of several axes)")
    out = imp._add_tensor(node.output[0], _out_shape(imp, node, shape), "float32")
    imp._emit("FloatSoftmax", imp._name(node), [x], [out], axis=axis)


def _global_average_pool(imp, node) -> None:
    x = _float_input(imp, node, node.input[0])
    shape = static_shape(imp, node.input[0], node)
    if len(shape) < 3:
        raise ModelError(f"node {_where(node)!r} (GlobalAveragePool): input of rank {len(shape)}")
    out = imp._add_tensor(node.output[0], (None, shape[1]) + (1,) * (len(shape) - 2), "float32")
    imp._emit("FloatGlobalAveragePool", imp._name(node), [x], [out],
              order="nchwc" if _ort_nchwc_global_pool(imp, node, shape) else "mlas")


NCHWC_BLOCK = 16   # MlasNchwcGetBlockSize() on an AVX-512F host (8 on AVX2)


def _ort_nchwc_global_pool(imp, node, shape) -> bool:
    """Whether ORT's NchwcTransformer (optimization level ALL) gives this GlobalAveragePool its
    NCHWc kernel: a 4-D input of a multiple of 16 channels with no producer node left in NCHW,
    i.e. a graph input or the output of a float MaxPool/AveragePool it converted too (chains of
    NCHWc elementwise ops in between are not followed: the MLAS order is assumed)."""
    if len(shape) != 4 or shape[1] is None or shape[1] % NCHWC_BLOCK:
        return False
    x = node.input[0]
    if x in imp.graph_inputs:
        return True
    producer = next((n for n in imp.model.graph.node if x in n.output), None)
    return producer is not None and producer.op_type in ("MaxPool", "AveragePool")


def _reduce_l2(imp, node) -> None:
    x = _float_input(imp, node, node.input[0])
    shape = static_shape(imp, node.input[0], node)
    attrs = _attrs(node)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in np.asarray(imp._const(node.input[1], node, "axes")).reshape(-1)]
    if axes is None or [int(a) % len(shape) for a in axes] != [len(shape) - 1] \
            or not attrs.get("keepdims", 1) or len(shape) < 2:
        raise UnsupportedOpError("ReduceL2", _where(node), "only over the last axis with keepdims "
                                 "(the order ORT's reduction uses is measured for that case)")
    out = imp._add_tensor(node.output[0], (None,) + tuple(shape[1:-1]) + (1,), "float32")
    imp._emit("FloatReduceL2", imp._name(node), [x], [out])


def _expand(imp, node) -> None:
    target = tuple(int(v) for v in np.asarray(imp._const(node.input[1], node, "shape")).reshape(-1))

    def fn(arr):
        try:
            shape = np.broadcast_shapes(arr.shape, target)
        except ValueError:
            raise ModelError(f"node {_where(node)!r} (Expand): {list(arr.shape)} does not "
                             f"broadcast to {list(target)}") from None
        return [np.broadcast_to(arr, shape)]
    float_movement(imp, node, fn)


HANDLERS = {**{op: _binary for op in BINARY}, **{op: _unary for op in UNARY},
            **{op: _reshape for op in _RESHAPES}, "Transpose": _transpose,
            **{op: _via_movement_handler for op in ("Slice", "Split", "Resize", "Upsample")},
            "Concat": _concat, "MaxPool": _maxpool, "Softmax": _softmax,
            "GlobalAveragePool": _global_average_pool, "PRelu": _binary,
            "ReduceL2": _reduce_l2, "Expand": _expand}
