"""ONNX (QDQ and QOperator) -> :mod:`mrq.ir`.

QDQ graphs carry integer tensors between QuantizeLinear/DequantizeLinear pairs and compute in
float in between. We read them as integer programs: a DequantizeLinear of an activation is only a
*view* of the integer tensor (an alias), a float op whose inputs are such views and whose output
(through any Relu/Clip) feeds a QuantizeLinear becomes one quantized IR op, and the clamps on the
way are kept as the op's fused clamp. QOperator nodes (QLinearConv, ...) map to the same IR ops.
Data-movement ops (Reshape, Transpose, MaxPool, Relu/Clip on one grid, ...) propagate the grid.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from mrq import onnx_import_blocked as blocked
from mrq import onnx_import_dynamic as dynamic
from mrq import onnx_import_float as float_islands
from mrq import onnx_import_ml as ml_ops
from mrq import onnx_import_runtime_quant as runtime_quant
from mrq.errors import ModelError, UnsupportedOpError
from mrq.import_checks import (
    check_external_data,
    check_graph,
    check_onnx_file,
    check_onnx_model,
)
from mrq.ir import Graph, Node, QParams, Tensor, dtype_range, storage_dtype
from mrq.onnx_import_constfold import constant_output, fold_last
from mrq.onnx_import_islands import HANDLERS as ISLAND_HANDLERS
from mrq.onnx_import_islands import ort_dequantize_constant
from mrq.onnx_import_movement import HANDLERS as MOVEMENT_HANDLERS
from mrq.onnx_import_movement import (
    fold_constants,
    one_d_as_two_d,
    resize_linear_attrs,
    static_shape,
)
from mrq.onnx_nodes import node_attrs as _attrs
from mrq.ort_qdq_fusion import clamp_chain, ort_fuses_clamps
from mrq.pointwise import BY_ONNX, ir_attrs
from mrq.shapes import infer_shapes

MS_DOMAIN = "com.microsoft"

QUANT_MARKERS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
                 "QLinearGlobalAveragePool", "QGemm", "QLinearConcat", "QLinearSigmoid",
                 "QLinearLeakyRelu", "QLinearSoftmax",
                 # dynamic quantization (mrq/onnx_import_dynamic.py), ORT's fused forms too
                 "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                 "DynamicQuantizeLSTM"}
# Float ops that compute new values: they need a QuantizeLinear after them.
COMPUTE_FLOAT_OPS = {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "AveragePool", "GlobalAveragePool",
                     "Concat", "Softmax", "ConvTranspose", "ReduceMean"} | set(BY_ONNX)
# Ops that only move or select values, so their output lives on their input's grid.
GRID_PRESERVING_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool",
                       "Identity", "Relu", "Clip"}
CLAMP_OPS = {"Relu", "Clip"}

_ONNX_INT_DTYPES = {np.dtype(k): k for k in ("int8", "uint8", "int16", "uint16", "int32", "int64")}


_NARROW_TYPES = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4"}
# Element types with no integer grid the simulator could hold (float8, float4, 2-bit).
_UNSUPPORTED_TYPES = {getattr(onnx.TensorProto, n): n for n in (
    "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "FLOAT4E2M1",
    "INT2", "UINT2") if hasattr(onnx.TensorProto, n)}


def _check_elem_type(elem: int, what: str) -> None:
    if elem in _UNSUPPORTED_TYPES:
        raise ModelError(f"{what} has type {_UNSUPPORTED_TYPES[elem]}, which mrq does not support "
                         f"(integer codes of 4 to 16 bits and float32 only)")


def load_onnx(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    check_onnx_file(path)
    try:
        # external data only once its files and sizes are checked
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types on garbage
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    check_external_data(model, path)
    try:
        load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except Exception as exc:  # noqa: BLE001 - protobuf and file errors of many types
        raise ModelError(f"{path}: unreadable external data ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: the ONNX graph has no nodes")
    return model


def import_onnx(model: onnx.ModelProto, source: str = "model", constants: dict | None = None) -> Graph:
    """The IR of a quantized ONNX model. ``constants``: values for graph inputs that hold
    quantization parameters (scales, zero points: ONNX allows them as inputs, the simulator
    needs them fixed); they become initializers."""
    check_onnx_model(model, source)
    return _Importer(freeze_inputs(model, constants) if constants else model, source).run()


def freeze_inputs(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    """A copy of ``model`` in which the named graph inputs are initializers holding ``values``."""
    names = {i.name for i in model.graph.input}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ModelError(f"no graph input named {', '.join(map(repr, unknown))} to hold a constant "
                         f"(inputs: {', '.join(sorted(names))})")
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    inputs = [i for i in frozen.graph.input if i.name not in values]
    del frozen.graph.input[:]
    frozen.graph.input.extend(inputs)
    kept = [t for t in frozen.graph.initializer if t.name not in values]
    del frozen.graph.initializer[:]
    frozen.graph.initializer.extend(kept)
    for name, value in values.items():
        frozen.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return frozen


def load_model(path: str) -> Graph:
    """Load a quantized ONNX or TFLite model file into the IR."""
    if path.lower().endswith(".tflite"):
        from mrq.tflite_import import import_tflite  # optional dependency: tflite
        return import_tflite(path)
    return import_onnx(load_onnx(path), source=path)


REGRIDDED_INPUTS_KEY = "mrq.regridded_inputs"


def _regridded_inputs(model: onnx.ModelProto) -> dict:
    """Inputs that `mrq requant` moved off their original grid: name -> the old grid."""
    import json
    for prop in model.metadata_props:
        if prop.key == REGRIDDED_INPUTS_KEY:
            try:
                value = json.loads(prop.value)
            except ValueError:
                return {}
            if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in value.items()):
                return value
    return {}


CODE_GRIDS_KEY = "mrq.code_grids"
# graph.meta: why the model takes one sample at a time (see mrq.pipeline.check_batch)
BATCH_FIXED_KEY = "batch_fixed_by"


def _code_grids(model: onnx.ModelProto) -> dict:
    """What an ONNX code type cannot say about a grid (written by :mod:`mrq.onnx_export`): zero-
    point initializer name -> (code bits, narrow range)."""
    import json
    for prop in model.metadata_props:
        if prop.key != CODE_GRIDS_KEY:
            continue
        try:
            value = json.loads(prop.value)
        except ValueError:
            value = None
        ok = isinstance(value, dict) and all(
            isinstance(v, dict) and set(v) == {"bits", "narrow_range"}
            and type(v["bits"]) is int and 2 <= v["bits"] <= 16
            and isinstance(v["narrow_range"], bool) for v in value.values())
        if not ok:
            raise ModelError(f"model property {CODE_GRIDS_KEY!r} must map zero-point names to "
                             f"{{\"bits\": 2..16, \"narrow_range\": true|false}}")
        return {k: (v["bits"], v["narrow_range"]) for k, v in value.items()}
    return {}


def _quantize_constant(x: np.ndarray, qp: QParams, node: onnx.NodeProto) -> np.ndarray:
    """The codes ORT's QuantizeLinear kernel gives a float constant (when it folds the node or
    runs it): ``RNE(clamp(f32(x / scale), qmin - zp, qmax - zp)) + zp`` with the type's own
    range (peer_arithmetic.md section 1.6); exporters quantize weights this way at run time."""
    if x.dtype != np.float32 or not np.all(np.isfinite(x)):
        raise UnsupportedOpError("QuantizeLinear", node.name or node.output[0],
                                 f"quantizing a constant of type {x.dtype} (finite float32 only)")
    shape = qp.broadcast_shape(x.ndim) if x.ndim else ()
    scale = qp.scale.reshape(shape) if shape else qp.scale[0]
    zp = qp.zero_point.reshape(shape) if shape else qp.zero_point[0]
    lo, hi = dtype_range(qp.dtype)
    with np.errstate(over="ignore"):   # |x / scale| beyond float32 saturates, as in ORT
        q = np.rint(np.clip(x / scale, (lo - zp).astype(np.float32), (hi - zp).astype(np.float32)))
    return (q.astype(np.int64) + zp).astype(storage_dtype(qp.dtype))


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ONNX shape inference's value_info. Data propagation first: it follows
    Shape -> Gather -> Concat -> Reshape chains (exporters' flatten/attention reshapes) to static
    shapes; without it, what plain inference finds. Shapes are only needed for auto_pad/Flatten/
    Squeeze and movement ops, which fail with a clear message if one is missing."""
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
        except Exception:  # noqa: BLE001, S112 - inference raises many types; the model stays usable
            continue
    return model


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str):
        self.source = source
        model = _with_inferred_shapes(one_d_as_two_d(model))
        self.model = model
        g = model.graph
        # INT4/UINT4 constants are held as int8/uint8 codes; their grids say 4 bits
        self.narrow: dict[str, str] = {}
        self.code_grids = _code_grids(model)
        self.init = {t.name: self._initializer(t) for t in g.initializer}
        for node in g.node:
            if node.op_type == "Constant":
                attrs = _attrs(node)
                if "value" not in attrs:
                    raise UnsupportedOpError("Constant", node.name, "only 'value' constants are supported")
                self.init[node.output[0]] = numpy_helper.to_array(attrs["value"])
        self.shapes = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                             for d in t.shape.dim)
        self.onnx_names = {n for node in g.node for n in list(node.input) + list(node.output)}
        self.consumers = {}
        for node in g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = [o.name for o in g.output]
        self.graph_inputs = [i.name for i in g.input if i.name not in self.init]
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.alias: dict[str, str] = {}      # float view name -> integer tensor name
        self.consts: dict[str, tuple] = {}   # dequantized-constant name -> (codes, QParams)
        self.done: set[int] = set()          # ids of ONNX nodes already folded into an IR node
        self.names: set[str] = set()

    # -------------------------------------------------------------------------------- helpers
    def _initializer(self, t: onnx.TensorProto) -> np.ndarray:
        _check_elem_type(t.data_type, f"initializer {t.name!r}")
        try:
            arr = numpy_helper.to_array(t)
        except Exception as exc:  # noqa: BLE001 - a payload that does not match its dims, a packing error
            raise ModelError(f"initializer {t.name!r}: unreadable data ({type(exc).__name__}: "
                             f"{exc})") from None
        if t.data_type in _NARROW_TYPES:
            self.narrow[t.name] = _NARROW_TYPES[t.data_type]
            arr = arr.astype(np.int8 if t.data_type == onnx.TensorProto.INT4 else np.uint8)
        return arr

    def _name(self, node: onnx.NodeProto) -> str:
        base = node.name or f"{node.op_type}_{node.output[0]}"
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def _shape(self, name: str) -> tuple:
        shape = self.shapes.get(name)
        if shape is None:
            return ()
        return (None,) + tuple(shape[1:]) if shape else shape

    def _const(self, name: str, node: onnx.NodeProto, what: str) -> np.ndarray:
        if name not in self.init and name in self.graph_inputs:
            raise ModelError(f"node {node.name or node.output[0]!r} ({node.op_type}): its {what} is the "
                             f"graph input {name!r}; the simulator needs it constant: make it an "
                             f"initializer (or give its value with import_onnx(..., constants=...))")
        if name not in self.init:
            raise UnsupportedOpError(node.op_type, node.name or node.output[0],
                                     f"{what} ({name!r}) must be a constant initializer")
        return self.init[name]

    def _qparams(self, node, scale_name, zp_name, axis=None, like: np.ndarray | None = None) -> QParams:
        scale = np.asarray(self._const(scale_name, node, "scale"), np.float32)
        if zp_name:
            zp_arr = self._const(zp_name, node, "zero point")
            dtype = _ONNX_INT_DTYPES.get(zp_arr.dtype)
        else:
            zp_arr = np.zeros(scale.shape, np.int64)
            dtype = _ONNX_INT_DTYPES.get(like.dtype) if like is not None else "uint8"
        if zp_name in self.narrow:
            dtype = self.narrow[zp_name]
        if dtype is None:
            raise UnsupportedOpError(node.op_type, node.name, f"zero point dtype {zp_arr.dtype} is not supported")
        if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
            raise ModelError(f"node {node.name!r}: scale {scale_name!r} must be finite and positive")
        if scale.size > 1 and axis is None:
            raise ModelError(f"node {node.name!r}: per-axis scale without an axis")
        qp = QParams(scale.reshape(-1), np.asarray(zp_arr).reshape(-1), dtype,
                     axis=axis if scale.size > 1 else None)
        if zp_name in self.code_grids:   # a grid narrower than its ONNX type (mrq.onnx_export)
            bits, narrow = self.code_grids[zp_name]
            width = qp.qmax.bit_length() + (dtype[0] == "i")
            if bits > width:
                raise ModelError(f"node {node.name!r}: {CODE_GRIDS_KEY} gives {zp_name!r} "
                                 f"{bits} bits, more than its {dtype} type holds")
            qp = qp.with_(bits=None if bits == width else bits, narrow_range=narrow)
        return qp

    def _add_tensor(self, name, shape, dtype, qparams=None, data=None) -> str:
        self.tensors[name] = Tensor(name, tuple(shape), dtype, qparams, data)
        return name

    def _const_tensor(self, base: str, codes: np.ndarray, qp: QParams | None) -> str:
        name = base
        i = 1
        while name in self.tensors:
            name, i = f"{base}_{i}", i + 1
        dtype = qp.dtype if qp is not None else str(codes.dtype)
        return self._add_tensor(name, codes.shape, dtype, qp, codes)

    def _emit(self, op, name, inputs, outputs, **attrs) -> Node:
        node = Node(op, name, list(inputs), list(outputs), dict(attrs))
        self.nodes.append(node)
        return node

    def _int_input(self, name: str, node) -> str:
        """The integer tensor behind an input: an alias (DQ view), an integer tensor, or a const."""
        if name in self.alias:
            return self.alias[name]
        if name in self.tensors and self.tensors[name].is_quantized:
            return name
        if self._integer_graph_input(name):
            return name   # codes given directly; the reading node states their grid
        if name in self.consts:
            codes, qp = self.consts[name]
            return self._const_tensor(name + "_q", codes, qp)
        if name in self.init:
            raise UnsupportedOpError(node.op_type, node.name,
                                     f"input {name!r} is a float constant; quantize it (QDQ) first")
        raise self._not_quantized(node, name)

    def _not_quantized(self, node, name: str) -> ModelError:
        dtype = self.tensors[name].dtype if name in self.tensors else "float32"
        kind = "a float tensor that is not quantized" if dtype.startswith("float") else \
            f"an unquantized {dtype} tensor"   # an int64 mask or token id input
        return ModelError(f"node {node.name!r} ({node.op_type}): input {name!r} is {kind}; mrq "
                          f"simulates quantized integer graphs only")

    def _integer_graph_input(self, name: str) -> bool:
        t = self.tensors.get(name)
        return (name in self.graph_inputs and t is not None
                and t.dtype in ("int4", "uint4", "int8", "uint8", "int16", "uint16"))

    # ------------------------------------------------------------------------------- main loop
    def run(self) -> Graph:
        g = self.model.graph
        if not any(n.op_type in QUANT_MARKERS for n in g.node):
            raise ModelError(f"{self.source}: the model is not quantized (no QuantizeLinear/DequantizeLinear "
                             f"or QLinear* ops); quantize it first, e.g. with "
                             f"onnxruntime.quantization.quantize_static")
        for node in g.node:
            dynamic.refuse_unsimulated(node)   # before the float ops that lead to it
        for inp in g.input:
            if inp.name in self.init:
                continue
            elem = inp.type.tensor_type.elem_type
            _check_elem_type(elem, f"graph input {inp.name!r}")
            if elem in _NARROW_TYPES:   # 4-bit codes, fed as int8/uint8 arrays
                self._add_tensor(inp.name, self._shape(inp.name), _NARROW_TYPES[elem])
                continue
            np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            self._add_tensor(inp.name, self._shape(inp.name), str(np_dtype))
        for node in g.node:
            if id(node) in self.done or node.op_type == "Constant":
                continue
            if fold_constants(self, node):   # shape arithmetic on constants
                continue
            if ml_ops.handle(self, node):   # ai.onnx.ml preprocessing, casts of plain numbers
                continue
            if float_islands.handle(self, node):   # ORT float kernels on float tensors
                continue
            handler = getattr(self, "_op_" + node.op_type, None)
            if handler is None and node.op_type in MOVEMENT_HANDLERS:
                MOVEMENT_HANDLERS[node.op_type](self, node)
                continue
            # float kernels of ORT between DQ and Q; a handler may decline (QDQ ConvTranspose)
            if handler is None and node.op_type in ISLAND_HANDLERS and \
                    ISLAND_HANDLERS[node.op_type](self, node):
                continue
            if handler is None:
                if node.op_type in COMPUTE_FLOAT_OPS or node.op_type in GRID_PRESERVING_OPS:
                    handler = self._float_op
                else:
                    raise UnsupportedOpError(node.op_type, node.name or node.output[0])
            handler(node)
        outputs = []
        for out in self.graph_outputs:
            if out in self.tensors:
                outputs.append(out)
            elif out in self.alias:
                # A float graph output that is only a view of an integer tensor.
                src = self.alias[out]
                self._add_tensor(out, self.tensors[src].shape, "float32")
                self._emit("Dequantize", "dequantize_" + out, [src], [out])
                outputs.append(out)
            elif out in self.consts or out in self.init:
                outputs.append(constant_output(self, out))
            else:
                raise ModelError(f"graph output {out!r} is computed in float outside any quantized op")
        if not outputs:
            raise ModelError(f"{self.source}: the graph has no outputs")
        meta = {"source": self.source, "format": "onnx"}
        regridded = _regridded_inputs(self.model)
        if regridded:
            meta["regridded_inputs"] = regridded
        # a Reshape whose constant target keeps a leading size other than "copy" bakes the
        # export-time batch in (ORT's quantizer writes [16, 32] for a batch-1 [1, 16, 32]); such a
        # model runs one sample at a time, as ONNX Runtime runs it (its input is declared batch 1)
        fixed = next((n for n in self.nodes if n.op == "Reshape" and n.attrs.get("shape")
                      and int(n.attrs["shape"][0]) > 0), None)
        if getattr(self, "batch_fixed", None):
            meta[BATCH_FIXED_KEY] = self.batch_fixed
        if fixed is not None:
            meta[BATCH_FIXED_KEY] = (f"Reshape node {fixed.name!r} has the constant target shape "
                                     f"{[int(d) for d in fixed.attrs['shape']]}")
        graph = Graph(self.tensors, self.nodes, list(self.graph_inputs), outputs,
                      name=g.name or "graph", meta=meta)
        _check_inputs_used(graph)
        check_graph(graph, self.source)   # before shape inference, which divides by strides
        graph = remove_identities(infer_shapes(graph))
        check_graph(graph, self.source)
        from mrq.tflite_import import check_batch_broadcast
        check_batch_broadcast(graph)
        return graph

    # ------------------------------------------------------------------------- Q / DQ
    def _op_QuantizeLinear(self, node):
        if blocked.block_size(node):
            return blocked.quantize(self, node)
        if runtime_quant.handles(self, node):   # a scale computed by float ops
            return None
        x, out = node.input[0], node.output[0]
        axis = _attrs(node).get("axis", 1)
        qp = self._qparams(node, node.input[1], node.input[2] if len(node.input) > 2 else "", axis=axis)
        if x in self.alias:
            src = self.alias[x]
            src_qp = self.tensors[src].qparams
            self._add_tensor(out, self.tensors[src].shape, qp.dtype, qp)
            if src_qp.same_grid(qp):
                self._emit("Reshape", self._name(node), [src], [out], shape=None)
            else:
                self._emit("Rescale", self._name(node), [src], [out])
        elif x in self.init:
            self.init[out] = _quantize_constant(np.asarray(self.init[x]), qp, node)
        elif x in self.consts:   # a dequantized constant moved around: ORT's DQ, then this Q
            codes, src_qp = self.consts[x]
            self.init[out] = codes if src_qp.same_grid(qp) else _quantize_constant(
                ort_dequantize_constant(codes, src_qp), qp, node)
        elif x in self.tensors and not self.tensors[x].is_quantized:
            self._add_tensor(out, self.tensors[x].shape, qp.dtype, qp)
            self._emit("Quantize", self._name(node), [x], [out])
        else:
            raise ModelError(f"node {node.name!r}: QuantizeLinear input {x!r} comes from a float op "
                             f"that mrq could not attach to a quantized op")

    def _op_DequantizeLinear(self, node):
        if blocked.block_size(node):
            return blocked.dequantize(self, node)
        q, out = node.input[0], node.output[0]
        axis = _attrs(node).get("axis", 1)
        if q in self.init:
            codes = self.init[q]
            if codes.dtype == np.float32:
                raise ModelError(f"node {node.name!r}: DequantizeLinear of a float constant")
            qp = self._qparams(node, node.input[1], node.input[2] if len(node.input) > 2 else "",
                               axis=axis, like=codes)
            if q in self.narrow and len(node.input) <= 2:
                qp = qp.with_(dtype=self.narrow[q])   # no zero point to say it: the codes do
            self.consts[out] = (codes, qp)
        elif q in self.alias:  # DQ of a DQ output is not valid ONNX; treat defensively
            raise ModelError(f"node {node.name!r}: DequantizeLinear of a float tensor")
        elif q in self.tensors and self.tensors[q].is_quantized:
            # Only a view: the integer tensor stays the truth.
            self.alias[out] = q
        elif self._integer_graph_input(q):
            # an integer graph input (the codes are given): this DQ states their grid
            t = self.tensors[q]
            qp = self._qparams(node, node.input[1], node.input[2] if len(node.input) > 2 else "",
                               axis=axis, like=np.zeros(1, np.dtype(t.dtype)))
            if qp.dtype != t.dtype:
                raise ModelError(f"node {node.name or out!r}: DequantizeLinear zero point is "
                                 f"{qp.dtype} but its input {q!r} is {t.dtype}")
            if t.qparams is None:
                t.qparams = qp
            elif not t.qparams.same_grid(qp):
                raise UnsupportedOpError("DequantizeLinear", node.name or out,
                                         f"graph input {q!r} is read on two different grids")
            self.alias[out] = q
        else:
            raise ModelError(f"node {node.name!r}: DequantizeLinear input {q!r} is not an integer tensor")

    # ------------------------------------------------------------------- QDQ float islands
    def _follow_to_quantize(self, node) -> tuple[onnx.NodeProto | None, list, list]:
        """From a float op, walk single-consumer Relu/Clip nodes to the QuantizeLinear that ends
        the float island. Returns (quantize node or None, clamp bounds, nodes folded)."""
        out = node.output[0]
        clamps, folded = [], []
        while True:
            if out in self.graph_outputs:
                return None, clamps, folded
            users = self.consumers.get(out, [])
            if len(users) != 1:
                if users and all(u.op_type == "QuantizeLinear" for u in users):
                    first = users[0]
                    if all(list(u.input[1:]) == list(first.input[1:]) for u in users):
                        return first, clamps, folded + users[1:]
                return None, clamps, folded
            user = users[0]
            if user.op_type == "QuantizeLinear":
                return user, clamps, folded
            if user.op_type in CLAMP_OPS:
                clamps.append(self._clamp_bounds(user))
                folded.append(user)
                out = user.output[0]
                continue
            return None, clamps, folded

    def _clamp_bounds(self, node) -> tuple:
        if node.op_type == "Relu":
            return (0.0, None)
        attrs = _attrs(node)
        lo, hi = attrs.get("min"), attrs.get("max")
        if len(node.input) > 1 and node.input[1]:
            lo = float(self._const(node.input[1], node, "Clip min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(self._const(node.input[2], node, "Clip max"))
        return (None if lo is None else float(lo), None if hi is None else float(hi))

    def _float_op(self, node):
        op = node.op_type
        if op in GRID_PRESERVING_OPS:
            return self._grid_preserving(node)
        if op == "Concat" and self._concat_of_codes(node):
            return None
        bias_add = self._matmul_bias_add(node)
        quant, clamps, folded = self._follow_to_quantize(bias_add[0] if bias_add else node)
        if quant is None:
            raise ModelError(f"node {node.name!r} ({op}): its float output is not followed by "
                             f"QuantizeLinear, so it is not quantized; mrq simulates integer graphs only")
        out = quant.output[0]
        axis = _attrs(quant).get("axis", 1)
        qp = self._qparams(quant, quant.input[1], quant.input[2] if len(quant.input) > 2 else "", axis=axis)
        if bias_add:
            folded = [bias_add[0]] + folded
        for n in folded + [quant]:
            self.done.add(id(n))
        clamp = _merge_clamps(clamps)
        ort_float = op in ("Conv", "MatMul", "Gemm") and not ort_fuses_clamps(
            clamp_chain(folded, self._clamp_bounds), qp.scale[0], int(qp.zero_point[0]), qp.qmin,
            qp.qmax, len(quant.input) > 2 and bool(quant.input[2]))
        for extra in folded:
            if extra.op_type == "QuantizeLinear":   # duplicate Q nodes of the same tensor
                self._add_tensor(extra.output[0], self._shape(out), qp.dtype, qp)
                self._emit("Reshape", self._name(extra), [out], [extra.output[0]], shape=None)
        self._quantized_compute(node, out, qp, clamp,
                                inputs=list(node.input[:2]) + [bias_add[1]] if bias_add else None,
                                ort_float=ort_float)
        if not any(n.op_type == "QuantizeLinear" for n in folded):
            fold_last(self, out)   # an op on constants only (a detector's anchor grid)

    def _matmul_bias_add(self, node):
        """(Add node, bias name) when a MatMul of a constant weight feeds only an Add of an int32
        quantized constant: the bias of a Gemm over tokens (rank 3), as mrq's exporter writes it
        (ONNX Gemm is 2-D only); else None."""
        if node.op_type != "MatMul" or node.input[1] not in self.consts or \
                node.output[0] in self.graph_outputs:
            return None
        users = self.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        others = [i for i in users[0].input if i != node.output[0]]
        if len(others) != 1 or others[0] not in self.consts or \
                self.consts[others[0]][0].dtype != np.int32:
            return None
        return users[0], others[0]

    def _quantized_compute(self, node, out, qp, clamp, inputs=None, ort_float=False):
        """Emit the IR op for a float compute op (QDQ) with integer inputs and output grid qp.
        ``ort_float``: ONNX Runtime runs the op in float with its clamps after it instead of
        fusing an integer kernel (:mod:`mrq.ort_qdq_fusion`; lowering reads the mark)."""
        op = node.op_type
        attrs = _attrs(node)
        name = self._name(node)
        ins = list(node.input) if inputs is None else inputs
        extra = {"clamp": clamp} if clamp is not None else {}
        if ort_float:
            extra["ort_float"] = True
        out_shape = self._shape(node.output[0]) or self._shape(out)
        self._add_tensor(out, out_shape, qp.dtype, qp)
        if op == "Conv":
            x = self._int_input(ins[0], node)
            w = self._weight(ins[1], node)
            b = self._bias(ins[2], node) if len(ins) > 2 and ins[2] else None
            self._emit("Conv", name, [x, w] + ([b] if b else []), [out],
                       **self._conv_attrs(node, attrs, ins[0], self.tensors[w].data.shape), **extra)
        elif op == "MatMul" and ins[1] not in self.consts:   # two activations (attention)
            a, b = (self._int_input(i, node) for i in ins[:2])
            self.tensors[out].shape = self._matmul_shape(node, ins[0], ins[1])
            self._emit("MatMul", name, [a, b], [out], **extra)
        elif op in ("Gemm", "MatMul"):
            x = self._int_input(ins[0], node)
            w, b = self._gemm_weight(node, attrs, ins)
            if op == "Gemm" and attrs.get("transB", 0):
                extra = {**extra, "ort_trans_b": True}   # ORT's one-row SGEMM kernel depends on it
            elif op == "MatMul":   # ORT turns a 16-bit QDQ one into MatMulNBits, not SGEMM
                extra = {**extra, "onnx_matmul": True}
            self._emit("Gemm", name, [x, w] + ([b] if b else []), [out], **extra)
        elif op in ("Add", "Sub", "Mul"):
            a, b = (self._int_input(i, node) for i in ins[:2])
            self._emit(op, name, [a, b], [out], **extra)
        elif op == "AveragePool":
            x = self._int_input(ins[0], node)
            self._emit("AveragePool", name, [x], [out], **self._pool_attrs(node, attrs, ins[0]), **extra)
        elif op == "GlobalAveragePool":
            x = self._int_input(ins[0], node)
            self._emit("GlobalAveragePool", name, [x], [out], layout="NCHW", **extra)
        elif op == "Concat":
            xs = [self._int_input(i, node) for i in ins]
            self._emit("Concat", name, xs, [out], axis=int(attrs["axis"]), **extra)
        elif op == "Softmax":
            x = self._int_input(ins[0], node)
            self._emit("Softmax", name, [x], [out], axis=int(attrs.get("axis", -1)), **extra)
        elif op == "ConvTranspose":
            self._conv_transpose(node, attrs, ins, name, out, extra)
        elif op == "ReduceMean":
            self._reduce_mean(node, attrs, ins, name, out, extra)
        elif op in BY_ONNX:
            x = self._int_input(ins[0], node)
            self._emit(BY_ONNX[op], name, [x], [out], **ir_attrs(BY_ONNX[op], attrs, name), **extra)
        else:
            raise UnsupportedOpError(op, node.name)

    def _matmul_shape(self, node, a_name, b_name) -> tuple:
        """numpy matmul's output shape of two activations (batch dimension open)."""
        a, b = static_shape(self, a_name, node), static_shape(self, b_name, node)
        if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
            raise ModelError(f"node {node.name!r} ({node.op_type}): cannot multiply {list(a)} by {list(b)}")
        try:
            lead = np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            raise ModelError(f"node {node.name!r} ({node.op_type}): the leading dimensions of "
                             f"{list(a)} and {list(b)} do not broadcast") from None
        if len(a) != len(b) or not lead or lead[0] != 1:
            raise UnsupportedOpError(node.op_type, node.name, f"{list(a)} @ {list(b)}: both operands "
                                     f"need the batch dimension first")
        return (None,) + tuple(lead[1:]) + (a[-2], b[-1])

    def _conv_transpose(self, node, attrs, ins, name, out, extra):
        """ONNX weight [C_in, C_out, kH, kW] (per-channel along axis 1) -> IR TransposeConv's
        [C_out, C_in, kH, kW]; ONNX's output_padding extends the output at the bottom/right."""
        x = self._int_input(ins[0], node)
        if ins[1] not in self.consts:
            raise UnsupportedOpError(node.op_type, node.name, f"weight {ins[1]!r} must be a quantized constant")
        codes, qp = self.consts[ins[1]]
        if codes.ndim != 4:
            raise UnsupportedOpError(node.op_type, node.name, f"only 2-D transposed convolution (weight rank {codes.ndim})")
        if int(attrs.get("group", 1)) != 1 or any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
            raise UnsupportedOpError(node.op_type, node.name, "group or dilation other than 1")
        if _decode(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID") or "output_shape" in attrs:
            raise UnsupportedOpError(node.op_type, node.name, "auto_pad/output_shape (give explicit pads)")
        if qp.per_channel:
            if qp.axis % 4 != 1:
                raise UnsupportedOpError(node.op_type, node.name, "per-channel weights must use axis 1")
            qp = qp.with_(axis=0)
        w = self._const_tensor(ins[1] + "_q", np.ascontiguousarray(codes.transpose(1, 0, 2, 3)), qp)
        b = self._bias(ins[2], node) if len(ins) > 2 and ins[2] else None
        spatial = self._spatial(ins[0])
        if spatial is None or None in spatial:
            raise UnsupportedOpError(node.op_type, node.name, "needs a static input height and width")
        strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        pads = [int(p) for p in attrs.get("pads", (0, 0, 0, 0))]
        extra_out = [int(p) for p in attrs.get("output_padding", (0, 0))]
        kernel = codes.shape[2:]
        size = tuple((n - 1) * s + k - pb - pe + op for n, s, k, pb, pe, op
                     in zip(spatial, strides, kernel, pads[:2], pads[2:], extra_out))
        if any(d < 1 for d in size):
            raise ModelError(f"node {node.name!r} (ConvTranspose): output size {list(size)} from input "
                             f"{list(spatial)}, kernel {list(kernel)}, strides {list(strides)}, pads {pads}")
        self.tensors[out].shape = (None, codes.shape[1]) + size
        self._emit("TransposeConv", name, [x, w] + ([b] if b else []), [out], strides=strides,
                   pads=tuple(pads[:2]), output_size=size, layout="NCHW", **extra)

    def _reduce_mean(self, node, attrs, ins, name, out, extra):
        x = self._int_input(ins[0], node)
        shape = static_shape(self, ins[0], node)
        rank = len(shape)
        axes = attrs.get("axes")
        if axes is None and len(ins) > 1 and ins[1]:
            axes = [int(a) for a in np.asarray(self._const(ins[1], node, "axes")).reshape(-1)]
        axes = sorted({int(a) % rank for a in (axes if axes else range(rank))})
        if 0 in axes:
            raise UnsupportedOpError(node.op_type, node.name, "reducing the batch dimension")
        keep = bool(attrs.get("keepdims", 1))
        self.tensors[x].shape = (None,) + tuple(shape[1:])
        self.tensors[out].shape = tuple(1 if d in axes else n for d, n in enumerate((None,) + tuple(shape[1:]))
                                        if keep or d not in axes)
        self._emit("Mean", name, [x], [out], axes=tuple(axes), keep_dims=keep, **extra)

    def _resize_linear(self, node, sizes, scales, coord):
        """ORT resizes linearly in float32 between a DQ and a Q: the IR op holds its float32
        positions and weights and the output grid of the Q that follows."""
        x_in = node.input[0]
        if x_in not in self.alias and x_in in self.tensors and self.tensors[x_in].is_quantized:
            # QOperator graph: ORT's uint8/int8 kernel interpolates the codes themselves
            t = self.tensors[x_in]
            if t.dtype not in ("int8", "uint8") or t.qparams.per_channel:
                raise UnsupportedOpError(node.op_type, node.name, "linear resize of 8-bit per-tensor codes only")
            in_shape = (1,) + tuple(t.shape[1:])
            out = node.output[0]
            self._add_tensor(out, (None, in_shape[1], int(sizes[2]), int(sizes[3])), t.dtype, t.qparams)
            self._emit("Resize", self._name(node), [x_in], [out], on_codes=True,
                       **resize_linear_attrs(in_shape, sizes, scales, coord))
            return
        quant, clamps, folded = self._follow_to_quantize(node)
        if quant is None or clamps or folded:
            raise UnsupportedOpError(node.op_type, node.name, "a linear Resize must be followed by one "
                                     "QuantizeLinear (ORT resizes in float32)")
        qp = self._qparams(quant, quant.input[1], quant.input[2] if len(quant.input) > 2 else "",
                           axis=_attrs(quant).get("axis", 1))
        self.done.add(id(quant))
        x = self._int_input(node.input[0], node)
        if self.tensors[x].qparams.per_channel or qp.per_channel:
            raise UnsupportedOpError(node.op_type, node.name, "per-channel quantized input or output")
        in_shape = (1,) + tuple(self.tensors[x].shape[1:])
        out = quant.output[0]
        self._add_tensor(out, (None, in_shape[1], int(sizes[2]), int(sizes[3])), qp.dtype, qp)
        self._emit("Resize", self._name(node), [x], [out], **resize_linear_attrs(in_shape, sizes, scales, coord))

    def _grid_preserving(self, node):
        """Ops whose output is on the input's grid. With a float (DQ view) input, the output is a
        view too; with an integer input, it is an integer tensor of the same grid."""
        op = node.op_type
        x_in = node.input[0]
        if x_in in self.tensors and not self.tensors[x_in].is_quantized and x_in not in self.alias:
            return self._quantize_first(node)
        is_view = x_in in self.alias
        src = self._int_input(x_in, node)
        src_t = self.tensors[src]
        out_name = node.output[0]
        int_out = (src + "__" + out_name) if is_view else out_name
        # a made-up name must not be one the file uses later (a re-exported model holds it)
        while int_out in self.tensors or (is_view and int_out in self.onnx_names):
            int_out = int_out + "_1"
        shape = self._shape(out_name)
        self._add_tensor(int_out, shape, src_t.dtype, src_t.qparams)
        name = self._name(node)
        attrs = _attrs(node)
        if op in CLAMP_OPS:
            lo, hi = self._clamp_bounds(node)
            self._emit("Clamp", name, [src], [int_out], lo=lo, hi=hi)
        elif op == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise UnsupportedOpError("MaxPool", node.name, "the Indices output is not supported")
            if attrs.get("storage_order", 0):
                raise UnsupportedOpError("MaxPool", node.name, "storage_order=1 is not supported")
            self._emit("MaxPool", name, [src], [int_out], **self._pool_attrs(node, attrs, x_in))
        elif op == "Transpose":
            perm = attrs.get("perm")
            if perm is None:
                perm = list(range(len(src_t.shape)))[::-1]
            if perm[0] != 0:
                raise UnsupportedOpError("Transpose", node.name, "transposing the batch dimension")
            self._emit("Transpose", name, [src], [int_out], perm=tuple(int(p) for p in perm))
        elif op == "Identity":
            self._emit("Reshape", name, [src], [int_out], shape=None)
        else:  # Reshape, Flatten, Squeeze, Unsqueeze
            self._emit("Reshape", name, [src], [int_out], shape=self._reshape_target(node, attrs, x_in))
        if src_t.qparams is not None and src_t.qparams.per_channel and op != "Clamp":
            raise UnsupportedOpError(op, node.name, "per-channel quantized activations through data movement")
        if is_view:
            self.alias[out_name] = int_out

    def _quantize_first(self, node):
        """A float op that only moves or orders values (MaxPool, Reshape, Relu, ...), on a float
        tensor, followed by QuantizeLinear: quantizing commutes with it (quantization is
        monotone, MaxPool pads with -inf), so quantize first and run the op on integers, as
        ONNX Runtime's optimizer does."""
        users = self.consumers.get(node.output[0], [])
        if not users or node.output[0] in self.graph_outputs or \
                not all(u.op_type == "QuantizeLinear" and list(u.input[1:]) == list(users[0].input[1:]) for u in users):
            raise self._not_quantized(node, node.input[0])
        quant = users[0]
        qp = self._qparams(quant, quant.input[1], quant.input[2] if len(quant.input) > 2 else "",
                           axis=_attrs(quant).get("axis", 1))
        x_in = node.input[0]
        q_in = x_in + "__quantized"
        self._add_tensor(q_in, self.tensors[x_in].shape, qp.dtype, qp)
        self._emit("Quantize", self._name(quant) + "_before_" + (node.name or node.op_type), [x_in], [q_in])
        self.alias[x_in + "__view"] = q_in
        for name in (x_in, node.output[0]):
            if name in self.shapes:
                self.shapes[name + "__view"] = self.shapes[name]
        for u in users:
            self.done.add(id(u))
        proxy = onnx.helper.make_node(node.op_type, [x_in + "__view"] + list(node.input[1:]), [node.output[0] + "__view"],
                                      name=node.name, **_attrs(node))
        self._grid_preserving(proxy)
        src = self.alias[node.output[0] + "__view"]
        for u in users:
            self._add_tensor(u.output[0], self.tensors[src].shape, qp.dtype, qp)
            self._emit("Reshape", self._name(u), [src], [u.output[0]], shape=None)

    def _reshape_target(self, node, attrs, x_in) -> tuple:
        op = node.op_type
        in_shape = self.shapes.get(x_in) or self.shapes.get(self.alias.get(x_in, ""), None)
        out_shape = self.shapes.get(node.output[0])
        if op == "Flatten":
            axis = attrs.get("axis", 1)
            rank = len(in_shape) if in_shape else None
            if axis == 1 or (rank is not None and axis == 1 - rank):
                return (0, -1)
            raise UnsupportedOpError(op, node.name, f"Flatten with axis={axis} merges the batch "
                                     f"dimension with others (axis 1 only)")
        if op == "Reshape":
            target = [int(v) for v in self._const(node.input[1], node, "shape")]
            if attrs.get("allowzero", 0) and 0 in target:   # without a 0 it changes nothing
                raise UnsupportedOpError(op, node.name, "allowzero=1 with a 0 in the target shape")
            if in_shape and len(target) >= 1 and target[0] != 0:
                rest = target[1:]
                in_rest = in_shape[1:]
                if all(d is not None for d in in_rest) and -1 not in rest and \
                        int(np.prod(rest)) == int(np.prod(in_rest)):
                    target[0] = 0   # the first dim was the export-time batch size
                elif -1 in rest and target[0] != -1 or target[0] == -1 and -1 not in rest:
                    target[0] = 0
            return tuple(target)
        # Squeeze / Unsqueeze: use the inferred output shape, keeping the batch dimension.
        if out_shape is None or any(d is None for d in out_shape[1:]):
            # after a contrib op ONNX infers no shapes: derive it from the input's and the axes
            from mrq.onnx_import_islands import squeeze_shape
            out_shape = squeeze_shape(self, node, attrs)
        return (0,) + tuple(int(d) for d in out_shape[1:])

    # ---------------------------------------------------------------------- op attributes
    def _spatial(self, name: str) -> tuple | None:
        shape = self.shapes.get(name)
        if shape is None and name in self.alias:
            shape = self.shapes.get(self.alias[name])
        if shape is None or len(shape) != 4:
            return None
        return shape[2], shape[3]

    def _auto_pads(self, node, attrs, x_name, kernel, strides, dilations) -> list:
        auto = _decode(attrs.get("auto_pad", "NOTSET"))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if auto in ("NOTSET", "VALID"):
            return [0, 0, 0, 0] if auto == "VALID" else pads
        spatial = self._spatial(x_name)
        if spatial is None or None in spatial:
            raise UnsupportedOpError(node.op_type, node.name, f"auto_pad={auto} needs static input shapes")
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end

    def _conv_attrs(self, node, attrs, x_name, w_shape) -> dict:
        if len(w_shape) != 4:
            raise UnsupportedOpError(node.op_type, node.name, f"only 2-D convolution is supported (weight rank {len(w_shape)})")
        kernel = tuple(int(k) for k in w_shape[2:])
        strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
        pads = self._auto_pads(node, attrs, x_name, kernel, strides, dilations)
        layout = "NHWC" if attrs.get("channels_last", 0) else "NCHW"
        return {"strides": strides, "pads": tuple(int(p) for p in pads), "dilations": dilations,
                "group": int(attrs.get("group", 1)), "layout": layout}

    def _pool_attrs(self, node, attrs, x_name) -> dict:
        kernel = tuple(int(k) for k in attrs["kernel_shape"])
        if len(kernel) != 2:
            raise UnsupportedOpError(node.op_type, node.name, "only 2-D pooling is supported")
        strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
        dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
        pads = self._auto_pads(node, attrs, x_name, kernel, strides, dilations)
        return {"kernel": kernel, "strides": strides, "pads": tuple(int(p) for p in pads),
                "dilations": dilations, "ceil_mode": int(attrs.get("ceil_mode", 0)),
                "count_include_pad": int(attrs.get("count_include_pad", 0)),
                "layout": "NHWC" if attrs.get("channels_last", 0) else "NCHW"}

    # ---------------------------------------------------------------------- constants
    def _weight(self, name, node) -> str:
        if name not in self.consts:
            raise UnsupportedOpError(node.op_type, node.name,
                                     f"weight {name!r} must be a quantized constant (DequantizeLinear of an initializer)")
        codes, qp = self.consts[name]
        if qp.per_channel and qp.axis % codes.ndim != 0:
            raise UnsupportedOpError(node.op_type, node.name, "per-channel weights must use axis 0")
        if qp.per_channel:
            qp = qp.with_(axis=0)
        return self._const_tensor(name + "_q", codes, qp)

    def _bias(self, name, node) -> str:
        if name in self.consts:
            codes, qp = self.consts[name]
            return self._const_tensor(name + "_q", codes.astype(np.int64).reshape(-1), qp.with_(axis=0 if qp.per_channel else None))
        if name in self.init:
            raise UnsupportedOpError(node.op_type, node.name, f"bias {name!r} is float; it must be quantized to int32")
        raise UnsupportedOpError(node.op_type, node.name, f"bias {name!r} must be a constant")

    def _gemm_weight(self, node, attrs, ins) -> tuple:
        if node.op_type == "Gemm":
            if attrs.get("transA", 0):
                raise UnsupportedOpError("Gemm", node.name, "transA=1 is not supported")
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise UnsupportedOpError("Gemm", node.name, "alpha/beta other than 1 are not supported")
        trans_b = bool(attrs.get("transB", 0)) if node.op_type in ("Gemm", "QGemm") else False
        if ins[1] not in self.consts:
            raise UnsupportedOpError(node.op_type, node.name,
                                     "the second operand must be a quantized constant weight")
        codes, qp = self.consts[ins[1]]
        if codes.ndim != 2:
            raise UnsupportedOpError(node.op_type, node.name, "weight must be 2-D")
        if trans_b:
            codes = codes.T
            if qp.per_channel:
                if qp.axis % 2 != 0:
                    raise UnsupportedOpError(node.op_type, node.name, "per-channel weight must be per output column")
                qp = qp.with_(axis=1)
        elif qp.per_channel and qp.axis % 2 != 1:
            raise UnsupportedOpError(node.op_type, node.name, "per-channel weight must be per output column")
        w = self._const_tensor(ins[1] + "_q", np.ascontiguousarray(codes), qp)
        b = None
        if len(ins) > 2 and ins[2]:
            b = self._bias(ins[2], node)
        return w, b

    # -------------------------------------------------------------------- QOperator ops
    def _qop_out(self, node, out, scale_idx, zp_idx, like=None) -> QParams:
        qp = self._qparams(node, node.input[scale_idx], node.input[zp_idx] if len(node.input) > zp_idx else "",
                           like=like)
        return qp

    def _view_int(self, name, node) -> str:
        if name in self.tensors and self.tensors[name].is_quantized:
            return name
        return self._int_input(name, node)

    def _set_input_qparams(self, node, tname, scale_idx, zp_idx):
        """QOperator nodes restate their input's grid; check it agrees with what produced it."""
        t = self.tensors[tname]
        qp = self._qparams(node, node.input[scale_idx], node.input[zp_idx] if node.input[zp_idx] else "",
                           axis=1, like=np.zeros(1, np.dtype(t.dtype)) if t.dtype != "float32" else None)
        if t.qparams is None:
            t.qparams = qp
        elif not t.qparams.same_grid(qp):
            raise ModelError(f"node {node.name!r}: input {tname!r} is read with scale/zero point "
                             f"{qp.scale.tolist()}/{qp.zero_point.tolist()} but was produced with "
                             f"{t.qparams.scale.tolist()}/{t.qparams.zero_point.tolist()}")

    def _op_QLinearConv(self, node):
        ins = node.input
        x = self._view_int(ins[0], node)
        self._set_input_qparams(node, x, 1, 2)
        codes = self._const(ins[3], node, "weight")
        w_scale = np.asarray(self._const(ins[4], node, "weight scale"), np.float32).reshape(-1)
        w_zp = np.asarray(self._const(ins[5], node, "weight zero point")).reshape(-1)
        w_qp = QParams(w_scale, w_zp.astype(np.int64), _ONNX_INT_DTYPES[codes.dtype],
                       axis=0 if w_scale.size > 1 else None)
        w = self._const_tensor(ins[3] + "_q", codes, w_qp)
        y_qp = self._qop_out(node, node.output[0], 6, 7, like=self.init.get(ins[7]))
        b = None
        if len(ins) > 8 and ins[8]:
            bias = self._const(ins[8], node, "bias").astype(np.int64).reshape(-1)
            x_scale = self.tensors[x].qparams.scale[0]
            b_qp = QParams((np.float32(x_scale) * w_scale).astype(np.float32), np.zeros(w_scale.size, np.int64),
                           "int32", axis=0 if w_scale.size > 1 else None)
            b = self._const_tensor(ins[8] + "_q", bias, b_qp)
        attrs = _attrs(node)
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        self._emit("Conv", self._name(node), [x, w] + ([b] if b else []), [node.output[0]],
                   **self._conv_attrs(node, attrs, ins[0], codes.shape))

    def _op_QLinearMatMul(self, node):
        ins = node.input
        x = self._view_int(ins[0], node)
        self._set_input_qparams(node, x, 1, 2)
        if ins[3] not in self.init:   # B is an activation too (attention)
            b = self._view_int(ins[3], node)
            self._set_input_qparams(node, b, 4, 5)
            y_qp = self._qop_out(node, node.output[0], 6, 7, like=self.init.get(ins[7]))
            self._add_tensor(node.output[0], self._matmul_shape(node, ins[0], ins[3]), y_qp.dtype, y_qp)
            self._emit("MatMul", self._name(node), [x, b], [node.output[0]])
            return
        if np.ndim(self.init[ins[3]]) > 2:   # batched B
            return dynamic.qlinear_matmul_nd(self, node)
        codes = self._const(ins[3], node, "B")
        b_scale = np.asarray(self._const(ins[4], node, "B scale"), np.float32).reshape(-1)
        b_zp = np.asarray(self._const(ins[5], node, "B zero point")).reshape(-1)
        if codes.ndim != 2:
            raise UnsupportedOpError("QLinearMatMul", node.name, "B must be a constant of rank 2 or more")
        qp = QParams(b_scale, b_zp.astype(np.int64), _ONNX_INT_DTYPES[codes.dtype], axis=1 if b_scale.size > 1 else None)
        w = self._const_tensor(ins[3] + "_q", codes, qp)
        y_qp = self._qop_out(node, node.output[0], 6, 7, like=self.init.get(ins[7]))
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        self._emit("Gemm", self._name(node), [x, w], [node.output[0]])

    def _op_QGemm(self, node):
        ins = list(node.input)
        attrs = _attrs(node)
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            raise UnsupportedOpError("QGemm", node.name, "transA=1 or alpha != 1 is not supported")
        if len(ins) < 8 or not ins[7]:
            raise UnsupportedOpError("QGemm", node.name, "QGemm with a float output is not supported")
        x = self._view_int(ins[0], node)
        self._set_input_qparams(node, x, 1, 2)
        codes = self._const(ins[3], node, "B")
        b_scale = np.asarray(self._const(ins[4], node, "B scale"), np.float32).reshape(-1)
        b_zp = np.asarray(self._const(ins[5], node, "B zero point")).reshape(-1).astype(np.int64)
        if attrs.get("transB", 0):
            codes = codes.T
        qp = QParams(b_scale, b_zp, _ONNX_INT_DTYPES[codes.dtype], axis=1 if b_scale.size > 1 else None)
        w = self._const_tensor(ins[3] + "_q", np.ascontiguousarray(codes), qp)
        b = None
        if ins[6]:
            bias = self._const(ins[6], node, "C").astype(np.int64).reshape(-1)
            x_scale = self.tensors[x].qparams.scale[0]
            b_qp = QParams((np.float32(x_scale) * b_scale).astype(np.float32), np.zeros(b_scale.size, np.int64),
                           "int32", axis=0 if b_scale.size > 1 else None)
            b = self._const_tensor(ins[6] + "_q", bias, b_qp)
        y_qp = self._qop_out(node, node.output[0], 7, 8, like=self.init.get(ins[8]) if len(ins) > 8 else None)
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        self._emit("Gemm", self._name(node), [x, w] + ([b] if b else []), [node.output[0]])

    def _integer_op(self, node, kind):
        ins = list(node.input) + [""] * 4
        x = self._view_int(ins[0], node) if ins[0] in self.alias else ins[0]
        t = self.tensors.get(x)
        if t is None:
            raise ModelError(f"node {node.name!r}: input {ins[0]!r} is unknown")
        x_zp = (np.asarray(self._const(ins[2], node, "input zero point")).reshape(-1) if ins[2]
                else np.zeros(1, t.dtype))
        if t.qparams is None:
            t.qparams = QParams(np.ones(1, np.float32), x_zp.astype(np.int64), t.dtype)
        codes = self._const(ins[1], node, "weight")
        w_zp = (np.asarray(self._const(ins[3], node, "weight zero point")).reshape(-1) if ins[3]
                else np.zeros(1, codes.dtype))
        axis = None
        if w_zp.size > 1:
            axis = 0 if kind == "Conv" else 1
        w_qp = QParams(np.ones(w_zp.size, np.float32), w_zp.astype(np.int64), _ONNX_INT_DTYPES[codes.dtype], axis=axis)
        w = self._const_tensor(ins[1] + "_q", codes, w_qp)
        out = node.output[0]
        self._add_tensor(out, self._shape(out), "int32")
        attrs = _attrs(node)
        extra = self._conv_attrs(node, attrs, ins[0], codes.shape) if kind == "Conv" else {}
        self._emit(kind, self._name(node), [x, w], [out], integer_output=True, **extra)

    def _op_ConvInteger(self, node):
        if not dynamic.conv_integer(self, node):   # run-time zero point (quantize_dynamic)
            self._integer_op(node, "Conv")

    def _op_MatMulInteger(self, node):
        if not dynamic.matmul_integer(self, node):   # run-time zero points, N-D, non-constant B
            self._integer_op(node, "Gemm")

    def _op_DynamicQuantizeLinear(self, node):
        dynamic.dynamic_quantize_linear(self, node)

    def _op_DynamicQuantizeMatMul(self, node):   # com.microsoft, ORT's fused form
        dynamic.fused_dynamic_matmul(self, node)

    def _op_MatMulIntegerToFloat(self, node):   # com.microsoft, ORT's fused form
        dynamic.fused_dynamic_matmul(self, node)

    def _qbinary(self, node, op):
        ins = node.input
        inputs = []
        for idx, (s, z) in ((0, (1, 2)), (3, (4, 5))):
            name = ins[idx]
            if name in self.init:
                codes = self.init[name]
                qp = self._qparams(node, ins[s], ins[z] if ins[z] else "", like=codes)
                inputs.append(self._const_tensor(name + "_q", codes, qp))
            else:
                t = self._view_int(name, node)
                self._set_input_qparams(node, t, s, z)
                inputs.append(t)
        y_qp = self._qop_out(node, node.output[0], 6, 7, like=self.init.get(ins[7]) if len(ins) > 7 and ins[7] else None)
        if len(ins) <= 7 or not ins[7]:
            y_qp = y_qp.with_(dtype=self.tensors[inputs[0]].dtype)
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        self._emit(op, self._name(node), inputs, [node.output[0]])

    def _op_QLinearAdd(self, node):
        self._qbinary(node, "Add")

    def _op_QLinearMul(self, node):
        self._qbinary(node, "Mul")

    def _op_QLinearAveragePool(self, node):
        x = self._view_int(node.input[0], node)
        self._set_input_qparams(node, x, 1, 2)
        y_qp = self._qop_out(node, node.output[0], 3, 4, like=self.init.get(node.input[4]) if len(node.input) > 4 else None)
        if len(node.input) <= 4 or not node.input[4]:
            y_qp = y_qp.with_(dtype=self.tensors[x].dtype)
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        self._emit("AveragePool", self._name(node), [x], [node.output[0]],
                   **self._pool_attrs(node, _attrs(node), node.input[0]))

    def _op_QLinearGlobalAveragePool(self, node):
        x = self._view_int(node.input[0], node)
        self._set_input_qparams(node, x, 1, 2)
        y_qp = self._qop_out(node, node.output[0], 3, 4, like=self.init.get(node.input[4]))
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        layout = "NHWC" if _attrs(node).get("channels_last", 0) else "NCHW"
        self._emit("GlobalAveragePool", self._name(node), [x], [node.output[0]], layout=layout)

    def _qlinear_unary(self, node) -> str:
        """com.microsoft ``QLinear<op>(X, X_scale, X_zp, Y_scale, Y_zp)``: the integer input
        (its grid checked) with the output tensor added; returns the input."""
        x = self._view_int(node.input[0], node)
        self._set_input_qparams(node, x, 1, 2)
        ins = node.input
        y_zp = ins[4] if len(ins) > 4 and ins[4] else ""
        y_qp = self._qop_out(node, node.output[0], 3, 4, like=self.init.get(y_zp) if y_zp else None)
        if not y_zp:
            y_qp = y_qp.with_(dtype=self.tensors[x].dtype)
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        return x

    def _qlinear_pointwise(self, node, onnx_op):
        """ORT's table of the float op: the same IR op as its QDQ form."""
        x = self._qlinear_unary(node)
        name = self._name(node)
        self._emit(BY_ONNX[onnx_op], name, [x], [node.output[0]],
                   **ir_attrs(BY_ONNX[onnx_op], _attrs(node), name))

    def _op_QLinearSigmoid(self, node):
        self._qlinear_pointwise(node, "Sigmoid")

    def _op_QLinearLeakyRelu(self, node):
        self._qlinear_pointwise(node, "LeakyRelu")

    def _op_QLinearSoftmax(self, node):
        """ORT's fused ``DQ -> Softmax -> Q``, the same IR op. ``opset`` < 13 softmax flattens
        the axes from ``axis`` on: the same as opset 13 only when ``axis`` is the last one."""
        attrs = _attrs(node)
        x = self._qlinear_unary(node)
        rank = len(self.tensors[x].shape)
        axis = int(attrs.get("axis", -1 if int(attrs.get("opset", 13)) >= 13 else 1))
        if int(attrs.get("opset", 13)) < 13 and axis not in (-1, rank - 1):
            raise UnsupportedOpError(node.op_type, node.name, f"opset {attrs['opset']} softmax over "
                                     f"the flattened axes {axis}.. of a rank-{rank} tensor")
        self._emit("Softmax", self._name(node), [x], [node.output[0]], axis=axis)

    def _concat_of_codes(self, node) -> bool:
        """A Concat of integer tensors on one per-tensor grid (tf2onnx writes them between the
        QuantizeLinear and the DequantizeLinear) joins codes: its output is on that grid."""
        ts = [self.tensors.get(i) for i in node.input]
        if not ts or any(t is None or not t.is_quantized for t in ts):   # DQ views are not
            return False                                                   # in self.tensors
        grid = ts[0].qparams
        if grid.per_channel or not all(t.qparams.same_grid(grid) for t in ts):
            return False
        self._add_tensor(node.output[0], self._shape(node.output[0]), grid.dtype, grid)
        self._emit("Concat", self._name(node), [t.name for t in ts], [node.output[0]],
                   axis=int(_attrs(node)["axis"]))
        return True

    def _op_QLinearConcat(self, node):
        ins = node.input
        y_qp = self._qparams(node, ins[0], ins[1], like=None)
        xs = []
        for i in range(2, len(ins), 3):
            name = ins[i]
            if name in self.init:
                codes = self.init[name]
                qp = self._qparams(node, ins[i + 1], ins[i + 2], like=codes)
                xs.append(self._const_tensor(name + "_q", codes, qp))
            else:
                t = self._view_int(name, node)
                self._set_input_qparams(node, t, i + 1, i + 2)
                xs.append(t)
        self._add_tensor(node.output[0], self._shape(node.output[0]), y_qp.dtype, y_qp)
        self._emit("Concat", self._name(node), xs, [node.output[0]], axis=int(_attrs(node)["axis"]))


def _merge_clamps(clamps: list) -> tuple | None:
    if not clamps:
        return None
    lo, hi = None, None
    for c_lo, c_hi in clamps:
        if c_lo is not None:
            lo = c_lo if lo is None else max(lo, c_lo)
            if hi is not None:
                lo = min(lo, hi)
        if c_hi is not None:
            hi = c_hi if hi is None else min(hi, c_hi)
            if lo is not None:
                hi = max(hi, lo)
    return (lo, hi)


def _check_inputs_used(graph: Graph) -> None:
    used = {name for node in graph.nodes for name in node.inputs}
    for name in graph.inputs:
        if name not in used and name not in graph.outputs:
            raise ModelError(f"graph input {name!r} is not used by any quantized op")


def remove_identities(graph: Graph) -> Graph:
    """Drop identity Reshape nodes (QDQ pairs on one grid, Identity ops) by rewiring their
    consumers, except where the identity produces a graph output (its name is the contract)."""
    rename = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [rename.get(n, n) for n in node.inputs]
        if node.op == "Reshape" and node.attrs.get("shape") is None and node.outputs[0] not in graph.outputs:
            rename[node.outputs[0]] = node.inputs[0]
            graph.tensors.pop(node.outputs[0], None)
            continue
        kept.append(node)
    graph.nodes = kept
    return graph
