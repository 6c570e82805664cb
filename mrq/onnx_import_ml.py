"""Plain-number tensors of mixed ONNX graphs -> :mod:`mrq.ir`: scikit-learn preprocessing
(ai.onnx.ml Imputer, Scaler, OneHotEncoder, ArrayFeatureExtractor, ZipMap) in front of or behind
a quantized model, the Casts between float32 and integer tensors that carry numbers rather than
quantized codes (category ids, class labels), and ArgMax over float scores.

Each becomes an IR ``FloatML`` (``float_op``: the ONNX op) or ``FloatCast`` node that
mrq/lower_ml.py lowers to the ``float_ml`` / ``cast`` step kinds, ORT's CPU kernels bit for bit,
under a profile whose runtime is ORT only. Movement of integer plain tensors (a Reshape of class
labels) reuses the float islands' index maps.

ZipMap's output, a sequence of maps in ONNX, is simulated as the ``[N, classes]`` float32 array
it is made of: row ``n`` holds the values of map ``n`` in ``classlabels`` order.
"""
from __future__ import annotations

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError
from mrq.onnx_nodes import node_attrs as _attrs
from mrq.onnx_nodes import node_where as _where

ML_DOMAIN = "ai.onnx.ml"
_PLAIN_INT = ("int64", "int32")
_MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose")


def is_plain(imp, name: str) -> bool:
    """A run-time tensor of numbers: float32 or int64/int32, no grid, not a view, not constant."""
    t = imp.tensors.get(name)
    return (t is not None and name not in imp.alias and not t.is_quantized and not t.is_const
            and t.dtype in ("float32",) + _PLAIN_INT)


def handle(imp, node) -> bool:
    """Import ``node`` if it is one of this module's ops on a plain tensor; False leaves it to
    the importer."""
    op = node.op_type
    if node.domain == ML_DOMAIN:
        if op not in ML_HANDLERS:
            return False
        ML_HANDLERS[op](imp, node)
        return True
    if op == "Gather" and node.domain in ("", "ai.onnx") and len(node.input) > 1 \
            and is_plain(imp, node.input[1]) and imp.tensors[node.input[1]].dtype in _PLAIN_INT:
        _gather_rows(imp, node)
        return True
    from mrq import onnx_import_math
    from mrq.onnx_import_constfold import fold_float_constants
    if fold_float_constants(imp, node):   # float arithmetic on dequantized constants
        return True
    if onnx_import_math.handle(imp, node):   # Pow, Sqrt, ReduceMean, ... of float tensors
        return True
    if node.domain not in ("", "ai.onnx") or not node.input or not is_plain(imp, node.input[0]):
        return False
    dtype = imp.tensors[node.input[0]].dtype
    if op == "Cast":
        _cast(imp, node)
        return True
    if op == "ArgMax" and dtype == "float32":
        _argmax(imp, node)
        return True
    if op in _MOVEMENT and dtype in _PLAIN_INT:
        from mrq.onnx_import_float import HANDLERS
        HANDLERS[op](imp, node)   # the float islands' index maps keep the input's dtype
        return True
    return False


def _plain_input(imp, node, dtypes: tuple) -> str:
    x = node.input[0]
    if not is_plain(imp, x) or imp.tensors[x].dtype not in dtypes:
        have = imp.tensors[x].dtype if x in imp.tensors else "a constant or quantized tensor"
        raise UnsupportedOpError(node.op_type, _where(node), f"input {x!r} is {have}; only a "
                                 f"run-time {' or '.join(dtypes)} tensor is supported")
    return x


def _shape(imp, name: str) -> tuple:
    return tuple(imp.tensors[name].shape)


def _floats(node, attrs: dict, name: str) -> np.ndarray:
    values = np.asarray(attrs.get(name, []), np.float32).reshape(-1)
    if values.size == 0:
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): attribute {name!r} is missing "
                         f"or empty")
    return values


def _imputer(imp, node) -> None:
    attrs = _attrs(node)
    if "imputed_value_int64s" in attrs:
        raise UnsupportedOpError("Imputer", _where(node), "int64 imputation (float only)")
    x = _plain_input(imp, node, ("float32",))
    values = _floats(node, attrs, "imputed_value_floats")
    out = imp._add_tensor(node.output[0], _shape(imp, x), "float32")
    imp._emit("FloatML", imp._name(node), [x], [out], float_op="Imputer", values=values,
              replaced=float(np.float32(attrs.get("replaced_value_float", 0.0))))


def _scaler(imp, node) -> None:
    attrs = _attrs(node)
    x = _plain_input(imp, node, ("float32",))
    scale, offset = _floats(node, attrs, "scale"), _floats(node, attrs, "offset")
    if scale.size != offset.size:
        raise ModelError(f"node {_where(node)!r} (Scaler): {scale.size} scales for "
                         f"{offset.size} offsets")
    shape = _shape(imp, x)
    features = shape[0] if len(shape) == 1 else shape[1]
    if scale.size != 1 and features is not None and scale.size != features:
        raise ModelError(f"node {_where(node)!r} (Scaler): {scale.size} scales for {features} "
                         f"features (ORT needs one or one per feature)")
    out = imp._add_tensor(node.output[0], shape, "float32")
    imp._emit("FloatML", imp._name(node), [x], [out], float_op="Scaler", offset=offset, scale=scale)


def _one_hot(imp, node) -> None:
    attrs = _attrs(node)
    if attrs.get("cats_strings"):
        raise UnsupportedOpError("OneHotEncoder", _where(node), "string categories")
    cats = np.asarray(attrs.get("cats_int64s", []), np.int64).reshape(-1)
    if cats.size == 0:
        raise ModelError(f"node {_where(node)!r} (OneHotEncoder): no cats_int64s")
    x = _plain_input(imp, node, ("int64", "int32", "float32"))
    shape = _shape(imp, x)
    if len(shape) > 2:
        raise ModelError(f"node {_where(node)!r} (OneHotEncoder): input of rank {len(shape)} "
                         f"(ORT takes rank 2 at most)")
    if imp.tensors[x].dtype != "int64":   # ORT's static_cast<int64_t> of each element
        x = _emit_cast(imp, node, x, "int64", f"{x}__int64")
    out = imp._add_tensor(node.output[0], shape + (cats.size,), "float32")
    imp._emit("FloatML", imp._name(node), [x], [out], float_op="OneHotEncoder", cats=cats,
              zeros=int(attrs.get("zeros", 1)))


def _array_feature_extractor(imp, node) -> None:
    table_name, index = node.input[0], node.input[1]
    if table_name not in imp.init or np.asarray(imp.init[table_name]).ndim != 1:
        raise UnsupportedOpError("ArrayFeatureExtractor", _where(node), "only a constant 1-D X "
                                 "(a table of class labels) is supported")
    if not is_plain(imp, index) or imp.tensors[index].dtype != "int64":
        raise UnsupportedOpError("ArrayFeatureExtractor", _where(node), f"indices {index!r} must "
                                 f"be a run-time int64 tensor")
    table = np.ascontiguousarray(imp.init[table_name])
    if table.dtype.name not in ("float32",) + _PLAIN_INT:
        raise UnsupportedOpError("ArrayFeatureExtractor", _where(node), f"a {table.dtype} table")
    shape = _shape(imp, index)
    out = node.output[0]
    # ORT's output is [1, indices.size]: the same elements in the same order as the indices'
    # own shape, which is all a following Reshape(-1) sees; as a graph output the shapes differ
    if out in imp.graph_outputs:
        raise UnsupportedOpError("ArrayFeatureExtractor", _where(node), "as a graph output (ORT "
                                 "shapes it [1, indices]; reshape it first)")
    imp._add_tensor(out, shape, table.dtype.name)
    imp._emit("FloatML", imp._name(node), [index], [out], float_op="Lookup", table=table)


def _gather_rows(imp, node) -> None:
    """Gather along axis 0 of a constant (a float initializer, or a DequantizeLinear of
    constant codes, dequantized as ORT does) by run-time indices: token embeddings."""
    table_name, index = node.input[0], node.input[1]
    if int(_attrs(node).get("axis", 0)) != 0 or not (table_name in imp.consts or table_name in imp.init):
        raise UnsupportedOpError("Gather", _where(node), "run-time indices into anything but "
                                 "axis 0 of a constant")
    from mrq.onnx_import_islands import ort_dequantize_constant
    out = node.output[0]
    if table_name in imp.consts:
        table = ort_dequantize_constant(*imp.consts[table_name])
    else:
        table = np.asarray(imp.init[table_name])
        users = imp.consumers.get(out, [])
        if table.dtype.kind in "iu" and len(users) == 1 and out not in imp.graph_outputs \
                and users[0].op_type == "DequantizeLinear":
            # rows of codes, dequantized after the Gather (ORT quantize_dynamic's embeddings):
            # each element's DequantizeLinear is the same before or after the copy
            dq = users[0]
            qp = imp._qparams(dq, dq.input[1], dq.input[2] if len(dq.input) > 2 else "",
                              like=table)
            if qp.per_channel:
                raise UnsupportedOpError("Gather", _where(node), "per-axis dequantized rows")
            table = ort_dequantize_constant(table, qp)
            imp.done.add(id(dq))
            out = dq.output[0]
    if table.ndim == 0 or table.dtype.name not in ("float32",) + _PLAIN_INT:
        raise UnsupportedOpError("Gather", _where(node), f"a {table.dtype} table of rank {table.ndim}")
    if imp.tensors[index].dtype != "int64":
        index = _emit_cast(imp, node, index, "int64", f"{index}__int64")
    imp._add_tensor(out, _shape(imp, index) + table.shape[1:], table.dtype.name)
    imp._emit("FloatML", imp._name(node), [index], [out], float_op="Lookup",
              table=np.ascontiguousarray(table))


def _zipmap(imp, node) -> None:
    x = _plain_input(imp, node, ("float32",))
    shape = _shape(imp, x)
    labels = _attrs(node).get("classlabels_int64s") or _attrs(node).get("classlabels_strings")
    if len(shape) != 2 or (labels is not None and shape[1] is not None and len(labels) != shape[1]):
        raise ModelError(f"node {_where(node)!r} (ZipMap): input of shape {list(shape)} for "
                         f"{len(labels or [])} class labels")
    out = imp._add_tensor(node.output[0], shape, "float32")
    imp._emit("Reshape", imp._name(node), [x], [out], shape=None)


def _emit_cast(imp, node, x: str, to: str, out: str) -> str:
    imp._add_tensor(out, _shape(imp, x), to)
    imp._emit("FloatCast", imp._name(node), [x], [out], to=to)
    return out


def _cast(imp, node) -> None:
    x = node.input[0]
    to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(_attrs(node)["to"]))).name
    if to not in ("float32",) + _PLAIN_INT:
        raise UnsupportedOpError("Cast", _where(node), f"a cast of a plain tensor to {to}")
    if to == imp.tensors[x].dtype:
        from mrq.onnx_import_float import float_movement
        float_movement(imp, node, lambda arr: [arr])
        return
    _emit_cast(imp, node, x, to, node.output[0])


def _argmax(imp, node) -> None:
    attrs = _attrs(node)
    if attrs.get("select_last_index", 0):
        raise UnsupportedOpError("ArgMax", _where(node), "select_last_index=1")
    x = node.input[0]
    shape = _shape(imp, x)
    axis = int(attrs.get("axis", 0))
    if not -len(shape) <= axis < len(shape):
        raise ModelError(f"node {_where(node)!r} (ArgMax): axis {axis} of a rank-{len(shape)} input")
    axis %= len(shape)
    if axis == 0:
        raise UnsupportedOpError("ArgMax", _where(node), "reducing the batch dimension")
    keep = int(attrs.get("keepdims", 1))
    out_shape = tuple(1 if d == axis else n for d, n in enumerate(shape) if keep or d != axis)
    out = imp._add_tensor(node.output[0], out_shape, "int64")
    imp._emit("FloatML", imp._name(node), [x], [out], float_op="ArgMax", axis=axis, keepdims=keep)


ML_HANDLERS = {"Imputer": _imputer, "Scaler": _scaler, "OneHotEncoder": _one_hot,
               "ArrayFeatureExtractor": _array_feature_extractor, "ZipMap": _zipmap}
