"""Checks at import that every size a model declares and every shape relation between a node's
operands is possible, so that a corrupt or hostile model ends in one error naming the file and
the node, not in a numpy traceback, a ZeroDivisionError, a 10^12-element allocation or a
simulation of something the model never meant.

Two levels:

* :func:`check_onnx_model`, on the ONNX protobuf before anything is converted: versions the
  installed ``onnx`` package knows, a graph with outputs, unique tensor names, graph input
  dimensions, every initializer's declared element count against the bytes it really holds and
  a cap, external data confined to regular files next to the model, the spatial attributes of
  convolutions and pools, Reshape/Expand targets and quantization parameter lengths.
* :func:`check_graph`, on the IR every importer (ONNX, TFLite) produces: the relations between
  a node's operands (channels, groups, kernel against padded input, per-channel parameter and
  bias lengths, axes and permutations within the rank, element counts of reshapes).
"""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import TensorProto

from mrq.errors import ModelError
from mrq.fileio import FileProblem, check_regular_file
from mrq.shapes import pool_out

# A protobuf cannot be larger, and neither can a constant stored in one.
MAX_MODEL_BYTES = 2 << 30
# Elements of one constant (external data included) and of one activation sample: far above
# any model an NPU runs, far below what a corrupt header can claim.
MAX_ELEMENTS = 1 << 31

_SPATIAL_OPS = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool",
                "QLinearAveragePool", "LpPool", "ConvTranspose"}
_POOL_OPS = {"MaxPool", "AveragePool", "QLinearAveragePool", "LpPool"}
# (scale index, zero point index) of each quantization parameter pair an op reads
_QPARAM_PAIRS = {
    "QuantizeLinear": ((1, 2),), "DequantizeLinear": ((1, 2),),
    "QLinearConv": ((1, 2), (4, 5), (6, 7)), "QLinearMatMul": ((1, 2), (4, 5), (6, 7)),
    "QLinearAdd": ((1, 2), (4, 5), (6, 7)), "QLinearMul": ((1, 2), (4, 5), (6, 7)),
    "QLinearAveragePool": ((1, 2), (3, 4)), "QLinearGlobalAveragePool": ((1, 2), (3, 4)),
    "QGemm": ((1, 2), (4, 5), (7, 8)),
}
# TensorProto field that holds each element type's values when raw_data is not used
_TYPED_FIELD = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data",
    TensorProto.INT64: "int64_data", TensorProto.UINT64: "uint64_data",
    TensorProto.UINT32: "uint64_data", TensorProto.STRING: "string_data",
    TensorProto.COMPLEX64: "float_data", TensorProto.COMPLEX128: "double_data",
}
_PACKED_4BIT = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


# the highest opset of each domain the installed onnx package has schemas for
_KNOWN_OPSETS = {"": onnx.defs.onnx_opset_version(), "ai.onnx": onnx.defs.onnx_opset_version(),
                 "ai.onnx.ml": max(row[3] for row in onnx.helper.VERSION_TABLE)}


class _Where:
    """Formats errors as ``<source>: node '<name>' (<op>): <problem>``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, problem: str, node=None, op: str | None = None) -> ModelError:
        if node is None:
            return ModelError(f"{self.source}: {problem}")
        return ModelError(f"{self.source}: node {node!r}" + (f" ({op})" if op else "") + f": {problem}")


# ============================================================================ ONNX protobuf

def check_onnx_file(path: str) -> None:
    """A model path that is a regular file of at most :data:`MAX_MODEL_BYTES` (stat only: a
    FIFO is never opened, ``/dev/zero`` never read)."""
    try:
        check_regular_file(path, MAX_MODEL_BYTES, "model file")
    except FileProblem as exc:
        raise ModelError(str(exc)) from None


def check_external_data(model: onnx.ModelProto, path: str) -> None:
    """Every initializer stored outside the model names a regular file inside the model's
    folder whose bytes cover the declared offset and length, and that length is the one the
    initializer's dims declare."""
    where = _Where(path)
    base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for t in _all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        what = f"initializer {t.name!r}: external data"
        loc = info.get("location", "")
        if not loc or os.path.isabs(loc) or "\0" in loc:
            raise where.fail(f"{what}: location {loc!r} must be a file name relative to the model")
        full = os.path.realpath(os.path.join(base, loc))
        if not full.startswith(base + os.sep):
            raise where.fail(f"{what}: {loc!r} lies outside the model's folder {base}")
        try:
            size = check_regular_file(full)
        except FileProblem as exc:
            raise where.fail(f"{what}: {exc}") from None
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise where.fail(f"{what}: offset/length are not integers") from None
        need = _declared_bytes(t, where)
        if offset < 0 or length < 0 or offset + length > size:
            raise where.fail(f"{what}: bytes {offset}..{offset + length} of {loc!r}, which holds {size}")
        if need is not None and length != need:
            raise where.fail(f"{what}: {length} bytes, the dims {list(t.dims)} declare {need}")


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _itemsize(data_type: int) -> int | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, ValueError, TypeError):  # no numpy dtype for it: its reader refuses it
        return None


def _count(t: TensorProto, where: _Where) -> int:
    if any(d < 0 for d in t.dims):
        raise where.fail(f"initializer {t.name!r}: negative dimension in {list(t.dims)}")
    count = math.prod(t.dims)
    if count > MAX_ELEMENTS:
        raise where.fail(f"initializer {t.name!r}: dims {list(t.dims)} declare {count} elements "
                         f"(at most {MAX_ELEMENTS})")
    return count


def _declared_bytes(t: TensorProto, where: _Where) -> int | None:
    count = _count(t, where)
    if t.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    size = _itemsize(t.data_type)
    return None if size is None else count * size


def _check_initializer(t: TensorProto, where: _Where) -> None:
    """The declared element count against the values the tensor holds, before numpy reads it."""
    count = _count(t, where)
    if t.data_location == TensorProto.EXTERNAL:
        return   # checked against its file by check_external_data
    if t.HasField("raw_data"):
        need = _declared_bytes(t, where)
        if need is not None and len(t.raw_data) != need:
            raise where.fail(f"initializer {t.name!r}: dims {list(t.dims)} declare {need} bytes, "
                             f"the tensor holds {len(t.raw_data)}")
        return
    name = _TYPED_FIELD.get(t.data_type, "int32_data")
    held = len(getattr(t, name))
    if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        held //= 2
    if t.data_type in _PACKED_4BIT:
        count = (count + 1) // 2
    if held != count:
        raise where.fail(f"initializer {t.name!r}: dims {list(t.dims)} declare {count} values, "
                         f"the tensor holds {held}")


def _ints(node: onnx.NodeProto, name: str) -> list | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints or a.type == onnx.AttributeProto.INTS else [a.i]
    return None


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def check_onnx_model(model: onnx.ModelProto, source: str) -> None:
    """The protobuf-level checks (see the module docstring); raises :class:`ModelError`."""
    where = _Where(source)
    ir_max = onnx.IR_VERSION
    if not 3 <= model.ir_version <= ir_max:
        raise where.fail(f"ir_version {model.ir_version}: the installed onnx {onnx.__version__} "
                         f"reads 3 to {ir_max}")
    for op in model.opset_import:
        top = _KNOWN_OPSETS.get(op.domain)
        if top is not None and not 1 <= op.version <= top:
            raise where.fail(f"opset {op.version} of domain {op.domain or 'ai.onnx'!r}: the installed "
                             f"onnx {onnx.__version__} knows opsets 1 to {top}")
    g = model.graph
    if not g.output:
        raise where.fail("the graph declares no outputs")
    _check_names(g, where)
    for vi in g.input:
        dims = vi.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and (d.dim_value < 0 or (d.dim_value == 0 and i > 0)):
                raise where.fail(f"graph input {vi.name!r}: dimension {i} is {d.dim_value}")
    init = {}
    for t in g.initializer:
        _check_initializer(t, where)
        init[t.name] = t
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                _check_initializer(a.t, where)
    for node in g.node:
        _check_onnx_node(node, init, where)


def _check_names(g: onnx.GraphProto, where: _Where) -> None:
    seen: dict[str, str] = {}

    def claim(name: str, what: str):
        if not name:
            return
        if name in seen:
            raise where.fail(f"tensor name {name!r} is both {seen[name]} and {what}; every tensor "
                             f"needs its own name")
        seen[name] = what

    for vi in g.input:
        claim(vi.name, "a graph input")
    inputs = set(seen)
    for t in g.initializer:
        if t.name in inputs:   # an initializer may give a graph input its default value
            continue
        claim(t.name, "an initializer")
    for node in g.node:
        for out in node.output:
            claim(out, f"an output of node {node.name or node.op_type!r}")


def _const_array(name: str, init: dict) -> np.ndarray | None:
    t = init.get(name)
    if t is None:
        return None
    try:
        return onnx.numpy_helper.to_array(t)
    except Exception:  # noqa: BLE001 - unreadable: the importer says so, naming the initializer
        return None


def _check_onnx_node(node: onnx.NodeProto, init: dict, where: _Where) -> None:
    name, op = node.name or (node.output[0] if node.output else node.op_type), node.op_type
    ins = list(node.input)
    if op in _SPATIAL_OPS:
        _check_spatial(node, name, init, where)
    for s_idx, z_idx in _QPARAM_PAIRS.get(op, ()):
        scale = _const_array(ins[s_idx], init) if len(ins) > s_idx and ins[s_idx] else None
        zp = _const_array(ins[z_idx], init) if len(ins) > z_idx and ins[z_idx] else None
        if scale is not None and zp is not None and zp.size not in (1, scale.size):
            raise where.fail(f"{scale.size} scale(s) ({ins[s_idx]!r}) but {zp.size} zero point(s) "
                             f"({ins[z_idx]!r})", name, op)
    if op in ("QuantizeLinear", "DequantizeLinear") and len(ins) > 1:
        scale = _const_array(ins[1], init)
        data = _const_array(ins[0], init)
        # (blocked scales: mrq/onnx_import_blocked.py checks their shape)
        if scale is not None and scale.size > 1 and data is not None and not _int(node, "block_size", 0):
            axis = _int(node, "axis", 1)
            if not -data.ndim <= axis < data.ndim:
                raise where.fail(f"axis {axis} is outside the {data.ndim} axes of {ins[0]!r}", name, op)
            if scale.size != data.shape[axis]:
                raise where.fail(f"{scale.size} scales for the {data.shape[axis]} channels of "
                                 f"{ins[0]!r} along axis {axis}", name, op)
    if op == "QLinearConv" and len(ins) > 4:
        w, w_scale = _const_array(ins[3], init), _const_array(ins[4], init)
        if w is not None and w.ndim >= 1:
            if w_scale is not None and w_scale.size not in (1, w.shape[0]):
                raise where.fail(f"{w_scale.size} weight scales for {w.shape[0]} output channels", name, op)
            bias = _const_array(ins[8], init) if len(ins) > 8 and ins[8] else None
            if bias is not None and bias.size != w.shape[0]:
                raise where.fail(f"bias has {bias.size} values for {w.shape[0]} output channels", name, op)
    if op == "Reshape" and len(ins) > 1:
        target = _const_array(ins[1], init)
        if target is not None:
            _check_target(target.reshape(-1).tolist(), name, op, where, minus_one=True)
    if op in ("Expand", "ConstantOfShape", "Tile") and ins:
        target = _const_array(ins[0] if op == "ConstantOfShape" else ins[1] if len(ins) > 1 else "", init)
        if target is not None:
            _check_target(target.reshape(-1).tolist(), name, op, where, minus_one=False)


def _check_target(dims: list, name, op, where: _Where, minus_one: bool) -> None:
    if minus_one and dims.count(-1) > 1:
        raise where.fail(f"target shape {dims} has more than one -1", name, op)
    low = -1 if minus_one else 0
    if any(d < low for d in dims):
        raise where.fail(f"target shape {dims} has a negative dimension", name, op)
    count = math.prod(d for d in dims if d > 0)
    if count > MAX_ELEMENTS:
        raise where.fail(f"target shape {dims} declares {count} elements (at most {MAX_ELEMENTS})", name, op)


def _check_spatial(node: onnx.NodeProto, name, init: dict, where: _Where) -> None:
    op = node.op_type
    kernel = _ints(node, "kernel_shape")
    if kernel is None and op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w_idx = 3 if op == "QLinearConv" else 1
        w = init.get(node.input[w_idx]) if len(node.input) > w_idx else None
        if w is not None and len(w.dims) >= 3:
            kernel = list(w.dims[2:])
    rank = len(kernel) if kernel else None
    if op in _POOL_OPS and not kernel:
        raise where.fail("kernel_shape is required", name, op)
    if kernel is not None and any(k < 1 for k in kernel):
        raise where.fail(f"kernel_shape {kernel} must be positive", name, op)
    for attr in ("strides", "dilations"):
        vals = _ints(node, attr)
        if vals is None:
            continue
        if any(v < 1 for v in vals):
            raise where.fail(f"{attr} {vals} must be positive", name, op)
        if rank is not None and len(vals) != rank:
            raise where.fail(f"{attr} {vals} has {len(vals)} values for a {rank}-D kernel", name, op)
    pads = _ints(node, "pads")
    if pads is not None:
        if any(p < 0 for p in pads):
            raise where.fail(f"pads {pads} must not be negative", name, op)
        if rank is not None and len(pads) != 2 * rank:
            raise where.fail(f"pads {pads} has {len(pads)} values for a {rank}-D kernel (need {2 * rank})",
                             name, op)
        if op in _POOL_OPS and kernel and len(pads) == 2 * len(kernel):
            dil = _ints(node, "dilations") or [1] * len(kernel)
            for i, k in enumerate(kernel):
                eff = (k - 1) * (dil[i] if i < len(dil) else 1) + 1
                if pads[i] >= eff or pads[i + len(kernel)] >= eff:
                    raise where.fail(f"pads {pads} must be smaller than the kernel {kernel}", name, op)
    group = _int(node, "group", 1)
    if group < 1:
        raise where.fail(f"group {group} must be positive", name, op)


# ==================================================================================== IR

def _rank_axis(axis, rank: int) -> int | None:
    return axis % rank if isinstance(axis, (int, np.integer)) and -rank <= axis < rank else None


def check_graph(graph, source: str) -> None:
    """The operand relations of every IR node whose shapes are known (see the module
    docstring); unknown dimensions are skipped, so this can run before and after shape
    inference."""
    where = _Where(source)
    tensors = graph.tensors
    for node in graph.nodes:
        check = _IR_CHECKS.get(node.op)
        if check is not None:
            check(node, tensors, where)
    for t in tensors.values():
        shape = tuple(t.shape or ())
        if any(d is not None and d < 0 for d in shape):
            raise where.fail(f"tensor {t.name!r}: negative dimension in shape {list(shape)}")
        known = [d for d in shape[1:] if d is not None]
        if t.data is None and math.prod(known) > MAX_ELEMENTS:
            raise where.fail(f"tensor {t.name!r}: shape {list(shape)} has more than {MAX_ELEMENTS} "
                             f"elements per sample")
        qp = t.qparams
        if qp is not None and qp.scale.size > 1 and shape:
            axis = _rank_axis(qp.axis, len(shape))
            if axis is None:
                raise where.fail(f"tensor {t.name!r}: quantization axis {qp.axis} is outside its "
                                 f"{len(shape)} axes")
            if shape[axis] is not None and shape[axis] != qp.scale.size:
                raise where.fail(f"tensor {t.name!r}: {qp.scale.size} scales for its {shape[axis]} "
                                 f"channels along axis {axis}")


def _shape(tensors, name) -> tuple:
    t = tensors.get(name)
    return tuple(t.shape or ()) if t is not None else ()


def _fail(where, node, problem):
    return where.fail(problem, node.name, node.op)


def _check_window(node, tensors, where, x_shape, layout, kernel, strides, pads, dilations):
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise _fail(where, node, f"kernel {list(kernel)}, strides {list(strides)}, dilations "
                                 f"{list(dilations)} and pads {list(pads)} do not describe a 2-D window")
    if any(k < 1 for k in kernel):
        raise _fail(where, node, f"kernel {list(kernel)} must be positive")
    if any(s < 1 for s in strides):
        raise _fail(where, node, f"strides {list(strides)} must be positive")
    if any(d < 1 for d in dilations):
        raise _fail(where, node, f"dilations {list(dilations)} must be positive")
    if any(p < 0 for p in pads):
        raise _fail(where, node, f"pads {list(pads)} must not be negative")
    if len(x_shape) != 4:
        if x_shape:
            raise _fail(where, node, f"input of shape {list(x_shape)}: a 2-D window needs a 4-D input")
        return
    spatial = (x_shape[2], x_shape[3]) if layout == "NCHW" else (x_shape[1], x_shape[2])
    y_shape = _shape(tensors, node.outputs[0])
    y_spatial = None
    if len(y_shape) == 4:
        y_spatial = (y_shape[2], y_shape[3]) if layout == "NCHW" else (y_shape[1], y_shape[2])
    for i, size in enumerate(spatial):
        if size is None:
            continue
        eff = (kernel[i] - 1) * dilations[i] + 1
        padded = size + pads[i] + pads[i + 2]
        if eff > padded:
            raise _fail(where, node, f"the {'x'.join(map(str, kernel))} kernel (dilation "
                                     f"{dilations[i]}) spans {eff} but the padded input is {padded} "
                                     f"along axis {'HW'[i]}")
        out = pool_out(size, kernel[i], strides[i], pads[i], pads[i + 2], dilations[i],
                       int(node.attrs.get("ceil_mode", 0)))
        if y_spatial is not None and y_spatial[i] is not None and y_spatial[i] != out:
            raise _fail(where, node, f"the output {node.outputs[0]!r} is declared {list(y_shape)}, but "
                                     f"the window over the input {list(x_shape)} gives {out} along "
                                     f"axis {'HW'[i]}")


def _check_conv(node, tensors, where):
    at = node.attrs
    w_t = tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if w_t is None or w_t.data is None:
        return
    w = w_t.data.shape
    if len(w) != 4:
        raise _fail(where, node, f"weight of shape {list(w)}: a 2-D convolution needs a 4-D weight")
    layout = at.get("layout", "NCHW")
    x = _shape(tensors, node.inputs[0])
    group = int(at.get("group", 1))
    if group < 1:
        raise _fail(where, node, f"group {group} must be positive")
    if w[0] % group:
        raise _fail(where, node, f"{w[0]} output channels do not divide into {group} groups")
    if len(x) == 4:
        c_in = x[1] if layout == "NCHW" else x[3]
        if c_in is not None and c_in != w[1] * group:
            raise _fail(where, node, f"the input has {c_in} channels, the weight {list(w)} with group "
                                     f"{group} reads {w[1] * group}")
    _check_window(node, tensors, where, x, layout, tuple(w[2:]), tuple(at.get("strides", (1, 1))),
                  tuple(at.get("pads", (0, 0, 0, 0))), tuple(at.get("dilations", (1, 1))))
    _check_channels(node, tensors, where, w_t, w[0])


def _check_channels(node, tensors, where, w_t, n_out):
    """Per-channel weight parameters and the bias: one per output channel."""
    qp = w_t.qparams
    if qp is not None and qp.scale.size not in (1, n_out):
        raise _fail(where, node, f"{qp.scale.size} weight scales for {n_out} output channels")
    if len(node.inputs) > 2 and node.inputs[2]:
        b = tensors.get(node.inputs[2])
        if b is not None and b.data is not None:
            if b.data.size != n_out:
                raise _fail(where, node, f"bias has {b.data.size} values for {n_out} output channels")
            if b.qparams is not None and b.qparams.scale.size not in (1, n_out):
                raise _fail(where, node, f"{b.qparams.scale.size} bias scales for {n_out} output channels")


def _check_pool(node, tensors, where):
    at = node.attrs
    _check_window(node, tensors, where, _shape(tensors, node.inputs[0]), at.get("layout", "NCHW"),
                  tuple(at.get("kernel", ())), tuple(at.get("strides", (1, 1))),
                  tuple(at.get("pads", (0, 0, 0, 0))), tuple(at.get("dilations", (1, 1))))


def _check_gemm(node, tensors, where):
    w_t = tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if w_t is None or w_t.data is None:
        return
    w = w_t.data.shape
    if len(w) != 2:
        raise _fail(where, node, f"weight of shape {list(w)}: a matrix product needs a 2-D weight")
    x = _shape(tensors, node.inputs[0])
    if x and x[-1] is not None and x[-1] != w[0]:
        raise _fail(where, node, f"the input has {x[-1]} features, the weight {list(w)} reads {w[0]}")
    _check_channels(node, tensors, where, w_t, w[1])


def _check_concat(node, tensors, where):
    shapes = [_shape(tensors, n) for n in node.inputs]
    ranks = {len(s) for s in shapes if s}
    if len(ranks) > 1:
        raise _fail(where, node, f"inputs of different ranks {[list(s) for s in shapes]}")
    if not ranks:
        return
    rank = ranks.pop()
    axis = _rank_axis(node.attrs.get("axis"), rank)
    if axis is None:
        raise _fail(where, node, f"axis {node.attrs.get('axis')} is outside the inputs' {rank} axes")
    for i in range(1, rank):
        sizes = {s[i] for s in shapes if s and s[i] is not None}
        if i != axis and len(sizes) > 1:
            raise _fail(where, node, f"inputs {[list(s) for s in shapes]} differ along axis {i}, "
                                     f"which is not the concatenation axis {axis}")


def _check_axis_attr(node, tensors, where):
    x = _shape(tensors, node.inputs[0])
    if x and _rank_axis(node.attrs.get("axis", -1), len(x)) is None:
        raise _fail(where, node, f"axis {node.attrs.get('axis')} is outside the input's {len(x)} axes")


def _check_transpose(node, tensors, where):
    perm = list(node.attrs.get("perm") or ())
    x = _shape(tensors, node.inputs[0])
    if x and sorted(perm) != list(range(len(x))):
        raise _fail(where, node, f"perm {perm} is not a permutation of the input's {len(x)} axes")


def _check_reshape(node, tensors, where):
    target = node.attrs.get("shape")
    if target is None:
        return
    target = [int(d) for d in target]
    _check_target(target, node.name, node.op, where, minus_one=True)
    x = _shape(tensors, node.inputs[0])
    if not x or any(d is None for d in x[1:]) or not target:
        return
    if any(d == 0 and i >= len(x) for i, d in enumerate(target)):
        raise _fail(where, node, f"target {target} copies (0) an axis the input {list(x)} does not have")
    total = math.prod(x[1:])
    rest = [target[i] if target[i] != 0 else x[i] for i in range(1, len(target))]
    if target[0] > 0 and -1 not in rest:
        # a fixed leading dimension: some batch size must make the element counts agree
        if math.prod(target) % max(total, 1):
            raise _fail(where, node, f"cannot reshape {list(x)} to {target} for any batch size: "
                                     f"{total} elements per sample")
        return
    if target[0] != 0:
        return
    if -1 in rest:
        known = math.prod(d for d in rest if d != -1)
        if known == 0 or total % known:
            raise _fail(where, node, f"cannot reshape {list(x)} to {target}: {total} elements per sample")
    elif math.prod(rest) != total:
        raise _fail(where, node, f"cannot reshape {list(x)} to {target}: {total} elements per sample, "
                                 f"the target holds {math.prod(rest)}")


def _check_take(node, tensors, where):
    """Every copied element exists in one input sample; the output shape holds the copies."""
    index = np.asarray(node.attrs.get("source", ()))
    shape = tuple(node.attrs.get("shape", ()))
    if math.prod(int(d) for d in shape) != index.size:
        raise _fail(where, node, f"{index.size} copied elements for the output shape {list(shape)}")
    x = _shape(tensors, node.inputs[0])
    if x and all(d is not None for d in x[1:]) and index.size and \
            (index.min() < 0 or index.max() >= math.prod(x[1:])):
        raise _fail(where, node, f"copies element {int(index.max())} of an input sample of "
                                 f"{math.prod(x[1:])} elements ({list(x)})")


def _check_pad(node, tensors, where):
    pads = [tuple(p) for p in node.attrs.get("pads", ())]
    x = _shape(tensors, node.inputs[0])
    if x and len(pads) != len(x):
        raise _fail(where, node, f"{len(pads)} (before, after) pads for a rank-{len(x)} input")
    if any(len(p) != 2 or min(p) < 0 for p in pads):
        raise _fail(where, node, f"pads {pads} must be non-negative (before, after) pairs")
    y = _shape(tensors, node.outputs[0])
    if x and y and len(y) == len(x):
        for i, ((b, e), n, m) in enumerate(zip(pads, x, y)):
            if i and n is not None and m is not None and n + b + e != m:
                raise _fail(where, node, f"axis {i}: {n} + {b} + {e} padded elements, the output has {m}")


def _check_resize(node, tensors, where):
    """The source rows/columns of a linear Resize lie in the input and match the output size."""
    x, y = _shape(tensors, node.inputs[0]), _shape(tensors, node.outputs[0])
    size = tuple(node.attrs.get("size", ()))
    for axis, key in ((2, "y"), (3, "x")):
        lo, hi = np.asarray(node.attrs[f"{key}_lo"]), np.asarray(node.attrs[f"{key}_hi"])
        if lo.size != size[axis - 2] or hi.size != lo.size:
            raise _fail(where, node, f"{lo.size} source positions for an output size {list(size)}")
        if x and len(x) == 4 and x[axis] is not None and lo.size and \
                (min(lo.min(), hi.min()) < 0 or max(lo.max(), hi.max()) >= x[axis]):
            raise _fail(where, node, f"reads outside the input {list(x)} along axis {axis}")
    if y and len(y) == 4 and tuple(y[2:]) != size:
        raise _fail(where, node, f"output {list(y)} is not of size {list(size)}")


_IR_CHECKS = {
    "Conv": _check_conv, "MaxPool": _check_pool, "AveragePool": _check_pool, "Gemm": _check_gemm,
    "Concat": _check_concat, "Softmax": _check_axis_attr, "Transpose": _check_transpose,
    "Reshape": _check_reshape, "Take": _check_take, "Pad": _check_pad, "Resize": _check_resize,
}
