"""Blocked quantization of ONNX (QuantizeLinear / DequantizeLinear with ``block_size``, opset 21)
-> :mod:`mrq.ir`.

The scale (and zero point) have the input's shape except along ``axis``, where they hold
ceil(dim / block_size) entries: element i on that axis uses entry i // block_size, the last block
possibly partial (the onnx reference implementation). A DequantizeLinear of constant codes folds
to a float32 constant at import; on run-time tensors each node becomes one IR ``BlockQuantize``
(float32 -> codes) or ``BlockDequantize`` (codes -> float32) holding the blocked parameters,
lowered (mrq/lower_blocked.py) to the per-element arithmetic of QuantizeLinear/DequantizeLinear.
The codes a BlockQuantize gives carry no single grid: a quantized op reading them is refused by
the importer, a blocked DequantizeLinear or a graph output takes them.
"""
from __future__ import annotations

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError
from mrq.onnx_nodes import node_attrs as _attrs
from mrq.onnx_nodes import node_where as _where

# code type -> (storage dtype, lowest code, highest code)
_CODE_TYPES = {"int4": ("int8", -8, 7), "uint4": ("uint8", 0, 15), "int8": ("int8", -128, 127),
               "uint8": ("uint8", 0, 255), "int16": ("int16", -32768, 32767),
               "uint16": ("uint16", 0, 65535)}
_ONNX_CODE_TYPES = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4",
                    onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                    onnx.TensorProto.INT16: "int16", onnx.TensorProto.UINT16: "uint16"}


def block_size(node) -> int:
    return int(_attrs(node).get("block_size", 0) or 0)


def expand(value: np.ndarray, shape: tuple, axis: int, block: int) -> np.ndarray:
    """Blocked parameters replicated to one per element of ``shape``."""
    full = np.repeat(value, block, axis=axis)
    return full.take(np.arange(shape[axis]), axis=axis)


def _code_type(imp, node, zp_name: str, zp) -> str:
    if zp_name and zp_name in imp.narrow:
        return imp.narrow[zp_name]
    if zp is not None:
        name = np.dtype(zp.dtype).name
    else:
        out_type = int(_attrs(node).get("output_dtype", 0) or 0)
        name = _ONNX_CODE_TYPES.get(out_type, "uint8") if out_type else "uint8"
        if out_type and out_type not in _ONNX_CODE_TYPES:
            raise UnsupportedOpError(node.op_type, _where(node), f"output_dtype "
                                     f"{onnx.TensorProto.DataType.Name(out_type)}")
    if name not in _CODE_TYPES:
        raise UnsupportedOpError(node.op_type, _where(node), f"codes of type {name} (blocked "
                                 f"quantization of 4- to 16-bit integers only)")
    return name


def _params(imp, node, x_shape: tuple, code_type: str | None = None):
    """(scale float32, zero point int64 — both blocked, x's rank —, axis, block, code type)."""
    block = block_size(node)
    if block < 0:
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): block_size {block} is negative")
    scale = np.asarray(imp._const(node.input[1], node, "scale"), np.float32)
    zp_name = node.input[2] if len(node.input) > 2 else ""
    zp = np.asarray(imp._const(zp_name, node, "zero point")) if zp_name else None
    ctype = code_type if code_type is not None and not zp_name else _code_type(imp, node, zp_name, zp)
    rank = len(x_shape)
    axis = int(_attrs(node).get("axis", 1))
    if not -rank <= axis < rank:
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): axis {axis} of a rank-{rank} input")
    axis %= rank
    dim = x_shape[axis]
    want = [d for d in x_shape]
    if dim is not None:
        want[axis] = -(-dim // block)
    if scale.ndim != rank or any(w is not None and s != w for s, w in zip(scale.shape, want)):
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): blocked scale of shape "
                         f"{list(scale.shape)} does not fit an input of shape "
                         f"{['?' if d is None else d for d in x_shape]} with block_size={block} "
                         f"along axis {axis} (expected "
                         f"{['?' if w is None else w for w in want]})")
    if zp is not None and zp.shape != scale.shape:
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): zero point of shape "
                         f"{list(zp.shape)}, scale of shape {list(scale.shape)}")
    if np.any(~(scale > 0)) or not np.all(np.isfinite(scale)):
        raise ModelError(f"node {_where(node)!r}: scale {node.input[1]!r} must be finite and positive")
    zp = np.zeros(scale.shape, np.int64) if zp is None else zp.astype(np.int64)
    _, lo, hi = _CODE_TYPES[ctype]
    if np.any(zp < lo) or np.any(zp > hi):
        raise ModelError(f"node {_where(node)!r}: zero point outside the {ctype} range")
    return scale, zp, axis, block, ctype


def _shape_of(imp, name: str) -> tuple:
    """The ONNX shape of a run-time tensor (its leading size included, when the model gives
    one: blocked parameters may vary along it)."""
    shape = imp.shapes.get(name)
    if shape:
        return tuple(shape)
    return tuple(imp.tensors[name].shape)


def dequantize(imp, node) -> None:
    q, out = node.input[0], node.output[0]
    if q in imp.init:   # constant codes: folded, as ORT's constant folding does
        codes = np.asarray(imp.init[q])
        if codes.dtype.kind not in "iu":
            raise ModelError(f"node {_where(node)!r}: DequantizeLinear of a {codes.dtype} constant")
        ctype = imp.narrow.get(q) or codes.dtype.name
        scale, zp, axis, block, _ = _params(imp, node, codes.shape, ctype)
        diff = (codes.astype(np.int64) - expand(zp, codes.shape, axis, block)).astype(np.float32)
        imp.init[out] = (diff * expand(scale, codes.shape, axis, block)).astype(np.float32)
        return
    t = imp.tensors.get(q)
    if q in imp.alias or t is None or t.dtype not in _CODE_TYPES:
        raise ModelError(f"node {_where(node)!r}: DequantizeLinear input {q!r} is not an integer tensor")
    scale, zp, axis, block, ctype = _params(imp, node, _shape_of(imp, q), t.dtype)
    if ctype != t.dtype:
        raise ModelError(f"node {_where(node)!r}: DequantizeLinear zero point is {ctype} but its "
                         f"input {q!r} is {t.dtype}")
    imp._add_tensor(out, tuple(t.shape), "float32")
    imp._emit("BlockDequantize", imp._name(node), [q], [out], scale=scale, zero_point=zp,
              axis=axis, block_size=block)


def quantize(imp, node) -> None:
    from mrq.onnx_import_float import _float_input
    x, out = node.input[0], node.output[0]
    if x in imp.init or x in imp.consts:
        raise UnsupportedOpError(node.op_type, _where(node), "blocked quantization of a constant "
                                 "(quantize the weights offline: a blocked DequantizeLinear of "
                                 "constant codes is supported)")
    if not (x in imp.alias or (x in imp.tensors and imp.tensors[x].dtype == "float32")):
        raise ModelError(f"node {_where(node)!r}: QuantizeLinear input {x!r} is not a float tensor")
    shape = _shape_of(imp, x)
    x = _float_input(imp, node, x)
    scale, zp, axis, block, ctype = _params(imp, node, shape)
    storage, lo, hi = _CODE_TYPES[ctype]
    imp._add_tensor(out, tuple(imp.tensors[x].shape), ctype)
    imp._emit("BlockQuantize", imp._name(node), [x], [out], scale=scale, zero_point=zp,
              axis=axis, block_size=block, out_dtype=storage, out_min=lo, out_max=hi)
