"""Float islands of mixed ONNX graphs -> :mod:`mrq.ir`: ops that read a plain float32 tensor
(a float graph input, or the float output of a dynamically quantized conv/MatMul, or of another
island op) and that ONNX Runtime runs as float kernels before the next quantization.

Each op becomes an IR op on float32 tensors (dtype ``float32``, no grid):

- ``FloatBinary`` (Add/Sub/Mul/Div, PRelu; a constant operand is a float constant tensor, a
  DequantizeLinear view is dequantized as ORT does) and ``FloatUnary`` (Sigmoid, Tanh, Relu,
  Clip, LeakyRelu, HardSigmoid, HardSwish), ``FloatSoftmax``, ``FloatGlobalAveragePool``, ``FloatReduceL2``: ORT's
  float kernels and their summation orders, bit for bit (simulator/kernels/ort_eltwise.py);
- ``FloatMatMul`` (MatMul, with the Transpose of the last two axes and the Mul/Div by a scalar
  constant that ORT's optimizer fuses into it as ``FusedMatMul``) and ``FloatConv`` (a Conv whose
  output no QuantizeLinear quantizes): MLAS SGEMM, bit for bit (simulator/kernels/ort_matmul.py,
  ort_conv.py, ort_nchwc.py);
- ``FloatConcat``, ``FloatMaxPool`` and pure data movement (``Reshape``, ``Transpose``, ``Take``
  for Slice/Split/Resize-nearest/Expand and the like): exact by construction.

A float op whose output goes only to QuantizeLinear and that commutes with quantization (Relu,
MaxPool, Reshape, ...) is left to the importer, which quantizes first as ORT's optimizer does.

A Conv or Gemm between a per-tensor DequantizeLinear and a QuantizeLinear with a float
initializer weight or bias is first rewritten as ORT's WeightBiasQuantization rewrites it (int8
weight, int32 bias, as DequantizeLinear constants; mrq/onnx_import_islands.py computes them);
where ORT's QDQ fusion then makes a QLinearConv/QGemm of the group, it is the importer's integer
Conv/Gemm (whose sums follow the profile, accumulator.pair_sums included); an unfused Conv is a
``FloatConv`` of the dequantized constants, an unfused Gemm refused (mrq has no float Gemm).

Lowering (mrq/lower_float.py) runs these ops only under a profile whose runtime is ORT.
"""
from __future__ import annotations

import numpy as np

from mrq.errors import ModelError, UnsupportedOpError
from mrq.onnx_import_movement import static_shape
from mrq.onnx_nodes import node_attrs as _attrs
from mrq.onnx_nodes import node_where as _where
from mrq.ort_qdq_fusion import clamp_chain, ort_fuses_clamps
from simulator.kernels.ort_nchwc import BLOCKS, nchwc_variant

BINARY = ("Add", "Sub", "Mul", "Div")
UNARY = ("Sigmoid", "Tanh", "Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish")
# ops the importer's own grid-preserving path handles on a float input that only QuantizeLinear
# reads (quantize first: exact, as ORT's optimizer moves the QuantizeLinear up)
_COMMUTES = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Identity",
             "Relu", "Clip")
# ops ORT has no quantized kernel or QDQ fusion for: DequantizeLinear -> float op -> QuantizeLinear
_FLOAT_ONLY = ("PRelu", "ReduceL2")
_RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
# ops that are a float island whenever their output stays float (ORT has no QDQ group for them)
_FLOAT_RESULT = ("MatMul", "Conv")


def is_float_tensor(imp, name: str) -> bool:
    """A run-time float32 tensor without a grid (not a DequantizeLinear view, not a constant)."""
    t = imp.tensors.get(name)
    return (t is not None and name not in imp.alias and not t.is_quantized and not t.is_const
            and t.dtype == "float32")


def handle(imp, node) -> bool:
    """Import ``node`` as a float island op if it reads a plain float tensor and is one this
    module simulates; False leaves it to the importer (which refuses what nobody handles)."""
    op = node.op_type
    if op == "Gemm":
        return _ort_quantized_gemm(imp, node)
    if op not in HANDLERS:
        return False
    if op == "Conv" and _ort_quantized_bias(imp, node):
        return True
    # ops without an integer kernel in ORT run in float on a DequantizeLinear view too
    reads_float = any(is_float_tensor(imp, n) for n in node.input if n) or \
        (op in _FLOAT_ONLY and node.input[0] in imp.alias) or _float_sub(imp, node) or \
        (op in _FLOAT_RESULT and _float_result(imp, node))
    if not reads_float:
        return False
    if op in _COMMUTES and _only_quantized(imp, node):
        return False
    HANDLERS[op](imp, node)
    return True


def _float_result(imp, node) -> bool:
    """A MatMul/Conv of dequantized values whose output no QuantizeLinear quantizes: ORT runs it
    as a float kernel (a QDQ group needs the Q)."""
    if not any(n in imp.alias or n in imp.consts or is_float_tensor(imp, n) for n in node.input[:1]):
        return False
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight in imp.init and weight not in imp.consts and np.asarray(imp.init[weight]).dtype.kind == "f":
        return True   # a float weight: ORT has no QDQ group to fuse, the op runs in float
    return imp._follow_to_quantize(node)[0] is None


def _float_sub(imp, node) -> bool:
    """A Sub with a float operand: ORT runs DQ -> float Sub (-> Q). One by a scalar constant is
    left to mrq/onnx_import_islands.py (its 256-entry table); one of two DequantizeLinear views
    that only QuantizeLinear reads is the importer's quantized Sub (an NPU's integer Sub; ORT's
    float kernel is its lowering under runtime onnxruntime, mrq/lower_tflite16.py)."""
    if node.op_type != "Sub" or not any(n in imp.alias for n in node.input):
        return False
    if all(n in imp.alias for n in node.input[:2]) and _only_quantized(imp, node):
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
    if in_shape[0] != 1:   # a first axis of fixed size: mrq's batch axis, which moves cannot span
        raise UnsupportedOpError(node.op_type, _where(node), f"moving elements of a float tensor "
                                 f"of shape {list(in_shape)} (its first axis is the batch)")
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
        # (int64 labels too: mrq/onnx_import_ml.py moves plain integer tensors here)
        imp._add_tensor(o, (None,) + tuple(sources.shape[1:]),
                        imp.tensors[x].dtype if x in imp.tensors else "float32")
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


# MlasNchwcGetBlockSize() is 16 on an AVX-512F host and 8 on an AVX2 one: the import marks
# what ORT runs in NCHWc on some host (the smallest block) and lowering narrows that to the
# profile's runtime_isa (mrq/lower_float.py), so one imported graph serves every ORT profile
NCHWC_BLOCK = min(BLOCKS.values())


def _ort_nchwc_global_pool(imp, node, shape) -> bool:
    """Whether ORT's NchwcTransformer (optimization level ALL) gives this GlobalAveragePool its
    NCHWc kernel on some host: a 4-D input of a multiple of the smallest block's channels
    (:data:`NCHWC_BLOCK`; lowering checks the profile's) with no producer node left in NCHW,
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


def _producer(imp, name: str):
    return next((n for n in imp.model.graph.node if name in n.output), None)


def _last_two_transpose(imp, name: str):
    """The Transpose producing ``name`` if it swaps only the last two axes and its output is no
    graph output: ORT's MatmulTransposeFusion reads its input with ``transA``/``transB``."""
    node = _producer(imp, name)
    if node is None or node.op_type != "Transpose" or name in imp.graph_outputs:
        return None
    perm = _attrs(node).get("perm")
    if perm is None:
        return None
    perm, rank = [int(v) for v in perm], len(perm)
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    return node if rank >= 2 and perm == swap else None


def _scalar_scale(imp, node, other_index: int | None = None):
    """(scale as float32, index of the scaled operand) when ``node`` is a Mul or Div by a
    one-element constant that does not broadcast the other operand (ORT's MatMulScaleFusion);
    ``other_index`` fixes which operand is the scaled one."""
    if node is None or node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    candidates = (1,) if node.op_type == "Div" else (0, 1)
    for k in candidates:
        scale_name, other = node.input[k], node.input[1 - k]
        if other_index is not None and 1 - k != other_index:
            continue
        if scale_name not in imp.init or other in imp.init:
            continue
        value = np.asarray(imp.init[scale_name])
        other_rank = _rank(imp, other)
        if value.size != 1 or value.ndim > other_rank or value.dtype.kind not in "fiu":
            continue
        if value.dtype.kind in "iu" and float(np.float32(value.reshape(-1)[0])) != value.reshape(-1)[0]:
            continue   # ORT fuses only a scale float32 holds exactly
        scale = np.float32(value.reshape(-1)[0])
        if node.op_type == "Div":
            scale = np.float32(np.float32(1.0) / scale)
        return scale, 1 - k
    return None


def _matmul(imp, node) -> None:
    """A float MatMul as ORT runs it after its MatmulTransposeFusion and MatMulScaleFusion: a
    Transpose of the last two axes before an operand becomes ``trans_a``/``trans_b`` (the
    Transpose's input is read instead; the product is the same, the SGEMM kernel is not), a
    scalar Mul/Div before an operand or after the product becomes ``alpha`` (applied inside the
    SGEMM, one rounding fewer than a separate Mul)."""
    operands, trans, alpha = list(node.input[:2]), [False, False], np.float32(1.0)
    changed = True
    while changed:   # ORT repeats its level-1 fusions until nothing changes
        changed = False
        for k in (0, 1):
            transpose = _last_two_transpose(imp, operands[k])
            if transpose is not None:
                operands[k], trans[k], changed = transpose.input[0], not trans[k], True
                continue
            producer = _producer(imp, operands[k])
            scaled = _scalar_scale(imp, producer)
            if scaled is not None and _rank(imp, producer.input[scaled[1]]):   # not of a scalar
                alpha = np.float32(alpha * scaled[0])
                operands[k], changed = producer.input[scaled[1]], True
    out_name = node.output[0]
    users = imp.consumers.get(out_name, [])
    if len(users) == 1 and out_name not in imp.graph_outputs:
        scaled = _scalar_scale(imp, users[0])
        if scaled is not None and users[0].input[scaled[1]] == out_name:
            alpha = np.float32(alpha * scaled[0])
            imp.done.add(id(users[0]))
            out_name = users[0].output[0]
    # a float initializer as B (not a DequantizeLinear, which runs at run time): ORT packs it
    packed = operands[1] in imp.init and operands[1] not in imp.consts and \
        np.asarray(imp.init[operands[1]]).ndim == 2
    if operands[0] in imp.init and operands[0] not in imp.consts:
        raise UnsupportedOpError("MatMul", _where(node), f"a constant left operand {operands[0]!r} "
                                 f"(a run-time tensor times a weight is the supported form)")
    a, b = (_float_input(imp, node, n) for n in operands)
    shapes = [_operand_shape(imp, onnx_name, ir_name) for onnx_name, ir_name in zip(operands, (a, b))]
    for k in (0, 1):
        if trans[k] and len(shapes[k]) >= 2:
            shapes[k][-2:] = shapes[k][-1:-3:-1]
    sa, sb = shapes
    if len(sb) == 1 and trans[0]:
        raise UnsupportedOpError("MatMul", _where(node), "a transposed left operand times a vector")
    left = [1] + sa if len(sa) == 1 else sa
    right = sb + [1] if len(sb) == 1 else sb
    if len(left) < 2 or len(right) < 2 or left[-1] != right[-2]:
        raise ModelError(f"node {_where(node)!r} (MatMul): cannot multiply {sa} by {sb}")
    try:
        lead = np.broadcast_shapes(*(tuple(1 if d is None else d for d in s[:-2]) for s in (left, right)))
    except ValueError:
        raise ModelError(f"node {_where(node)!r} (MatMul): the leading dimensions of {sa} and {sb} "
                         f"do not broadcast") from None
    shape = list(lead) + ([left[-2]] if len(sa) > 1 else []) + ([right[-1]] if len(sb) > 1 else [])
    out = imp._add_tensor(out_name, (None,) + tuple(shape[1:]) if shape else (), "float32")
    imp._emit("FloatMatMul", imp._name(node), [a, b], [out], trans_a=trans[0], trans_b=trans[1],
              alpha=float(alpha), packed_b=packed)


def _operand_shape(imp, onnx_name: str, ir_name: str) -> list:
    """The full shape of a MatMul operand (the ONNX one where known: the IR opens the first axis
    as the batch, which a 2-D operand's rows are not), an open batch counted as 1."""
    shape = imp.shapes.get(onnx_name)
    if shape is None or any(d is None for d in shape[1:]):
        shape = imp.tensors[ir_name].shape
    return [1 if d in (None, 0) else int(d) for d in shape]


def _rank(imp, name: str) -> int:
    t = imp.tensors.get(name)
    return 0 if t is None else len(t.shape)


def _conv_weight(imp, node, name: str, what: str) -> np.ndarray:
    from mrq.onnx_import_islands import float_constant
    return np.ascontiguousarray(float_constant(imp, name, node, what), np.float32)


def _conv(imp, node) -> None:
    """A float Conv (2-D). ORT's NchwcTransformer gives one whose weight is a float initializer
    its NCHWc kernel (simulator/kernels/ort_nchwc.py) where the host's channel block allows (the
    order is ``nchwc`` if some host's does; lowering decides); a DequantizeLinear weight is computed at
    run time, so the Conv stays MLAS's im2col + SGEMM (simulator/kernels/ort_conv.py). Between
    DequantizeLinear and QuantizeLinear a float weight is ORT's WeightBiasQuantization's first:
    the integer Conv where ORT fuses the group, else a float Conv of its dequantized constants."""
    from mrq import onnx_import_islands as islands
    attrs = _attrs(node)
    weight = _conv_weight(imp, node, node.input[1], "weight")
    if weight.ndim != 4:
        raise UnsupportedOpError("Conv", _where(node), f"only 2-D convolution is supported (weight "
                                 f"rank {weight.ndim})")
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = _conv_weight(imp, node, node.input[2], "bias").reshape(-1)
    geom = imp._conv_attrs(node, attrs, node.input[0], weight.shape)
    if geom.pop("layout") != "NCHW":
        raise UnsupportedOpError("Conv", _where(node), "channels_last")
    in_shape = static_shape(imp, node.input[0], node)
    from mrq.shapes import pool_out
    dims = [pool_out(in_shape[2 + i], weight.shape[2 + i], geom["strides"][i], geom["pads"][i],
                     geom["pads"][2 + i], geom["dilations"][i], 0) for i in range(2)]
    if min(dims) < 1 or in_shape[1] != weight.shape[1] * geom["group"]:
        raise ModelError(f"node {_where(node)!r} (Conv): weight {list(weight.shape)} and group "
                         f"{geom['group']} do not fit input {list(in_shape)}")
    constant = node.input[1] in imp.init and node.input[1] not in imp.consts and \
        (bias is None or node.input[2] in imp.init)
    native = constant and nchwc_variant(in_shape[1], weight.shape[0], weight.shape[2:], geom["pads"],
                                        geom["group"], NCHWC_BLOCK) is not None
    source = imp.tensors[imp.alias[node.input[0]]].qparams if node.input[0] in imp.alias else None
    # WeightBiasQuantization (a level-1 QDQ transform) does not depend on the NCHWc kernels
    # (level 3): a grouped Conv without them has its weight quantized too. A blocked
    # DequantizeLinear's output is held as a float constant, but it is no float initializer to
    # ORT: WeightBiasQuantization leaves a blocked weight alone
    blocked = _blocked_weight(imp, node.input[1])
    if constant and not blocked and source is not None and not source.per_channel \
            and islands.ort_quantizes_weights(imp, node):
        # DQ -> float-weight Conv -> Q: ORT's WeightBiasQuantization gives the weight and bias a
        # DequantizeLinear of its own int8/int32 quantization
        codes = islands.ort_weight_bias_codes(weight, bias, float(source.scale[0]))
        if _ort_fuses_group(imp, node, source):
            # ... and its QDQ fusion makes that group a QLinearConv: the importer's integer
            # Conv, whose sums follow the profile (accumulator.pair_sums)
            imp._float_op(_with_dequantized_constants(imp, node, _wbq_constants(codes)))
            return
        # ... left unfused, the weight is dequantized at run time: a float Conv, no NCHWc
        weight, bias = codes.dequantized()
        native = False
    x = _float_input(imp, node, node.input[0])
    out = imp._add_tensor(node.output[0], (None, weight.shape[0], *dims), "float32")
    imp._emit("FloatConv", imp._name(node), [x], [out], weight=weight, bias=bias,
              order="nchwc" if native else "mlas", **geom)


def _with_dequantized_constants(imp, node, constants: dict):
    """A copy of ``node`` whose inputs ``{index: (codes, QParams)}`` are DequantizeLinear
    constants of those codes, as ORT's WeightBiasQuantization rewrites the graph: the codes join
    the importer's dequantized constants under fresh names."""
    import onnx
    base = node.name or node.output[0]
    rewritten = onnx.NodeProto()
    rewritten.CopyFrom(node)
    for index, (codes, qp) in sorted(constants.items()):
        name = f"{base}__ort_{('weight', 'bias')[index - 1]}_dq"
        while name in imp.onnx_names or name in imp.consts or name in imp.init:
            name += "_"
        imp.onnx_names.add(name)
        imp.consts[name] = (codes, qp)
        rewritten.input[index] = name
    return rewritten


def _blocked_weight(imp, name: str) -> bool:
    """Whether ``name`` is a blocked DequantizeLinear's output: the importer holds it as a float
    constant, but to ORT it is no float initializer (WeightBiasQuantization leaves it alone)."""
    return any(n.op_type == "DequantizeLinear" and name in n.output for n in imp.model.graph.node)


def _wbq_constants(codes) -> dict:
    """``{input index: (codes, QParams)}`` of WeightBiasQuantization's int8 weight and (if any)
    int32 bias (:func:`mrq.onnx_import_islands.ort_weight_bias_codes`)."""
    from mrq.ir import QParams
    constants = {1: (codes.weight_codes, QParams([codes.weight_scale], [codes.weight_zp], "int8"))}
    if codes.bias_codes is not None:
        constants[2] = (codes.bias_codes, QParams([codes.bias_scale], [0], "int32"))
    return constants


def _bias_constant(bias, source, w_qp) -> tuple:
    """WeightBiasQuantization's int32 codes of a float ``bias`` beside a quantized weight, on
    ``f32(x_scale * w_scale)`` (one scale per output channel with a per-channel weight), with
    their QParams."""
    from mrq.ir import QParams
    from mrq.onnx_import_islands import ort_bias_codes
    scale = (np.float32(source.scale[0]) * w_qp.scale.astype(np.float32)).astype(np.float32)
    return ort_bias_codes(bias, scale), QParams(scale, np.zeros(scale.size, np.int64), "int32",
                                                axis=0 if scale.size > 1 else None)


def _ort_quantized_bias(imp, node) -> bool:
    """DQ -> Conv (DequantizeLinear weight, float initializer bias) -> Q, as ORT's quantizer
    writes with ``QuantizeBias: False``: WeightBiasQuantization quantizes the bias alone on
    ``f32(x_scale * w_scale)`` (per output channel with a per-channel weight on axis 0), then
    the group is the QDQ Conv that graph is (a QLinearConv where ORT fuses it, else a float Conv
    of the dequantized constants). False (the importer's refusal of a float bias) otherwise."""
    from mrq.onnx_import_islands import ort_quantizes_weights
    if len(node.input) < 3 or not node.input[2] or node.input[1] not in imp.consts \
            or node.input[2] not in imp.init or node.input[0] not in imp.alias:
        return False
    bias = np.asarray(imp.init[node.input[2]])
    codes, w_qp = imp.consts[node.input[1]]
    source = imp.tensors[imp.alias[node.input[0]]].qparams
    if bias.dtype != np.float32 or bias.ndim != 1 or source is None or source.per_channel \
            or w_qp.dtype not in ("int8", "uint8") or not ort_quantizes_weights(imp, node):
        return False
    if w_qp.per_channel and (w_qp.axis % codes.ndim != 0 or w_qp.scale.size != bias.size):
        return False   # WeightBiasQuantization wants a per-channel scale on axis 0, one per bias
    rewritten = _with_dequantized_constants(imp, node, {2: _bias_constant(bias, source, w_qp)})
    if _ort_fuses_group(imp, node, source, w_qp.dtype):
        imp._float_op(rewritten)
    else:
        _conv(imp, rewritten)
    return True


def _ort_quantized_gemm(imp, node) -> bool:
    """DQ -> Gemm (float initializer weight, or a DequantizeLinear weight with a float bias)
    -> Q: WeightBiasQuantization quantizes the float constants as for a Conv (a per-channel
    weight on the output axis: 1, or 0 with ``transB``) and ORT's QDQ fusion makes a QGemm of
    the group when its types and clamps allow (as for a Conv; ORT's Gemm selector asks no more
    here); that group is imported as the QDQ Gemm it is. False (the importer's refusal of a
    float Gemm) otherwise: mrq has no float Gemm."""
    from mrq.onnx_import_islands import (
        ort_quantizes_weights,
        ort_weight_bias_codes,
    )
    if len(node.input) < 2 or node.input[0] not in imp.alias or not ort_quantizes_weights(imp, node):
        return False
    source = imp.tensors[imp.alias[node.input[0]]].qparams
    if source is None or source.per_channel:
        return False
    weight = node.input[1]
    # ort_quantizes_weights: no bias, or a 1-D initializer
    bias = np.asarray(imp.init[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias.dtype != np.float32:
        return False
    if weight in imp.init and weight not in imp.consts and not _blocked_weight(imp, weight):
        value = np.asarray(imp.init[weight])
        if value.dtype != np.float32:
            return False
        constants = _wbq_constants(ort_weight_bias_codes(value, bias, float(source.scale[0])))
        w_dtype = "int8"
    elif weight in imp.consts and bias is not None:
        codes, w_qp = imp.consts[weight]
        out_axis = 0 if _attrs(node).get("transB", 0) else 1
        if w_qp.dtype not in ("int8", "uint8") or codes.ndim != 2 or \
                (w_qp.per_channel and (w_qp.axis % 2 != out_axis or w_qp.scale.size != bias.size)):
            return False
        constants = {2: _bias_constant(bias, source, w_qp)}
        w_dtype = w_qp.dtype
    else:
        return False
    if not _ort_fuses_group(imp, node, source, w_dtype):
        return False
    imp._float_op(_with_dequantized_constants(imp, node, constants))
    return True


def _ort_fuses_group(imp, node, source, weight_dtype: str = "int8") -> bool:
    """Whether ORT's QDQ transformer (ConvNodeGroupSelector / GemmNodeGroupSelector,
    qdq_selectors.cc) fuses the DQ -> Conv/Gemm -> [Relu/Clip ...] -> Q that
    WeightBiasQuantization made into a QLinearConv/QGemm: the input and output types the same
    8-bit one (int8 activations, with int8 weights, as the session option
    ``session.qdqisint8allowed`` allows, which mrq's ORT sessions set), a per-tensor output
    grid, and Relu/Clip nodes in between that ORT removes or lets stay
    (:func:`mrq.ort_qdq_fusion.ort_fuses_clamps`). Otherwise ORT runs the float op (FusedConv,
    Gemm)."""
    quant, _, chain = imp._follow_to_quantize(node)
    if quant is None:
        return False
    has_zp = len(quant.input) > 2 and bool(quant.input[2])
    qp = imp._qparams(quant, quant.input[1], quant.input[2] if has_zp else "", axis=_attrs(quant).get("axis", 1))
    if qp.per_channel or qp.dtype != source.dtype or qp.dtype not in ("int8", "uint8"):
        return False
    if source.dtype == "int8" and weight_dtype != "int8":
        return False   # int8 activations need int8 weights
    return ort_fuses_clamps(clamp_chain(chain, imp._clamp_bounds), qp.scale[0], int(qp.zero_point[0]),
                            qp.qmin, qp.qmax, has_zp)


HANDLERS.update({"MatMul": _matmul, "Conv": _conv})
