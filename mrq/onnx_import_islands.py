"""ONNX ops that ONNX Runtime runs as float kernels between DequantizeLinear and QuantizeLinear,
in QDQ and QOperator models alike: LayerNormalization (no integer kernel exists) and a
ConvTranspose whose weights the quantizer left in float (QOperator ``quantize_static``).

Each becomes one IR node that reads the integer codes behind the DequantizeLinear and writes a
*float* tensor: the QuantizeLinear that ends the island (directly, or after data movement such as
the Reshape QOperator graphs put before a QGemm) becomes the IR ``Quantize`` node as for any
float tensor. Lowering (mrq/lower_islands.py) dequantizes and runs ORT's float kernel; scale,
bias and weight constants are the float32 values ORT's DequantizeLinear gives them.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from mrq.errors import ModelError, UnsupportedOpError
from mrq.ir import QParams
from mrq.onnx_import_movement import static_shape
from mrq.onnx_nodes import node_attrs as _attrs


def _name(node) -> str:
    return node.name or node.output[0]


def ort_dequantize_constant(codes: np.ndarray, qp) -> np.ndarray:
    """ORT's DequantizeLinear of constant codes: ``f32(f32(int32(q - zp)) * scale)`` (the
    difference is converted to float first, then one float32 product), per tensor or per axis."""
    codes = np.asarray(codes)
    scale, zp = qp.scale.astype(np.float32), qp.zero_point.astype(np.int64)
    if qp.axis is not None and scale.size > 1:
        shape = [1] * codes.ndim
        shape[qp.axis % codes.ndim] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    diff = (codes.astype(np.int64) - zp).astype(np.int32)   # ORT subtracts in int32
    return (diff.astype(np.float32) * scale).astype(np.float32)


def float_constant(imp, name: str, node, what: str) -> np.ndarray:
    """A float constant input: a float initializer (QOperator) or a DequantizeLinear of constant
    codes (QDQ), as ORT computes it."""
    if name in imp.consts:
        return ort_dequantize_constant(*imp.consts[name])
    if name in imp.init:
        value = np.asarray(imp.init[name])
        if value.dtype.kind != "f":
            raise UnsupportedOpError(node.op_type, _name(node), f"{what} {name!r} is {value.dtype}, "
                                     f"not float")
        return value.astype(np.float32)
    raise UnsupportedOpError(node.op_type, _name(node), f"{what} {name!r} must be a constant")


def _float_output(imp, node, shape: tuple) -> str:
    out = node.output[0]
    if out in imp.graph_outputs:
        raise ModelError(f"node {_name(node)!r} ({node.op_type}): its float output {out!r} is a "
                         f"graph output; mrq simulates integer graphs (quantize it)")
    return imp._add_tensor(out, shape, "float32")


def _integer_input(imp, node) -> str:
    x = imp._int_input(node.input[0], node)
    qp = imp.tensors[x].qparams
    if qp is None:
        raise UnsupportedOpError(node.op_type, _name(node), "its input needs a quantized grid")
    if qp.per_channel:
        raise UnsupportedOpError(node.op_type, _name(node), "per-channel quantized input")
    return x


def _number(node, attrs: dict, name: str, default, kind):
    """Attribute ``name`` as ``kind`` (int or float), a one-line error when it is not a number."""
    value = attrs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ModelError(f"node {_name(node)!r} ({node.op_type}): attribute {name!r} must be a "
                         f"number, got {value!r}")
    return kind(value)


def _layer_norm(imp, node) -> bool:
    attrs = _attrs(node)
    if len(node.input) < 2 or not node.input[1]:
        raise ModelError(f"node {_name(node)!r} (LayerNormalization): the scale input is missing")
    if len(node.output) > 1 and any(node.output[1:]):
        raise UnsupportedOpError(node.op_type, _name(node), "the Mean/InvStdDev outputs")
    if _number(node, attrs, "stash_type", 1, int) != 1:
        raise UnsupportedOpError(node.op_type, _name(node), f"stash_type={attrs['stash_type']} "
                                 f"(ORT computes in float32, stash_type 1)")
    shape = static_shape(imp, node.input[0], node)
    rank = len(shape)
    axis = _number(node, attrs, "axis", -1, int)
    if not -rank <= axis < rank:
        raise ModelError(f"node {_name(node)!r} (LayerNormalization): axis {axis} for a rank-{rank} input")
    axis %= rank
    if axis == 0:
        raise UnsupportedOpError(node.op_type, _name(node), "normalising over the batch dimension")
    norm_shape = tuple(shape[axis:])
    size = int(np.prod(norm_shape))
    scale = float_constant(imp, node.input[1], node, "scale")
    bias = (float_constant(imp, node.input[2], node, "bias")
            if len(node.input) > 2 and node.input[2] else None)
    for what, value in (("scale", scale), ("bias", bias)):
        # ORT takes another (float64) path when scale/bias broadcast over the normalised shape
        if value is not None and value.size != size:
            raise UnsupportedOpError(node.op_type, _name(node), f"{what} of shape {list(value.shape)} "
                                     f"broadcast over the normalised shape {list(norm_shape)}")
    x = _integer_input(imp, node)
    epsilon = float(np.float32(_number(node, attrs, "epsilon", 1e-5, float)))
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ModelError(f"node {_name(node)!r} (LayerNormalization): epsilon {epsilon} must be "
                         f"finite and >= 0")
    out = _float_output(imp, node, (None,) + tuple(shape[1:]))
    imp._emit("LayerNormalization", imp._name(node), [x], [out], axis=axis,
              epsilon=epsilon, scale=scale.reshape(-1),
              bias=None if bias is None else bias.reshape(-1))
    return True


def squeeze_shape(imp, node, attrs: dict) -> tuple:
    """The output shape of a Squeeze/Unsqueeze from its input's static shape and its axes
    (attribute, or constant second input from opset 13), for graphs whose shape inference
    stopped at a contrib op."""
    shape = list(static_shape(imp, node.input[0], node))
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in np.asarray(imp._const(node.input[1], node, "axes")).reshape(-1)]
    if node.op_type == "Squeeze":
        rank = len(shape)
        drop = ({int(a) % rank for a in axes} if axes is not None
                else {i for i, d in enumerate(shape) if d == 1 and i > 0})
        if 0 in drop or any(shape[i] != 1 for i in drop):
            raise UnsupportedOpError(node.op_type, _name(node), f"axes {sorted(drop)} of {shape}")
        return tuple(d for i, d in enumerate(shape) if i not in drop)
    if axes is None:
        raise ModelError(f"node {_name(node)!r} (Unsqueeze): no axes")
    rank = len(shape) + len(axes)
    for a in sorted(int(a) % rank for a in axes):
        if a == 0:
            raise UnsupportedOpError(node.op_type, _name(node), "a new axis before the batch dimension")
        shape.insert(a, 1)
    return tuple(shape)


def _round_half_even(v):
    return np.rint(np.float32(v)).astype(np.float32)


def ort_cast_to_int32(values) -> np.ndarray:
    """ORT's Cast of float32 values to int32 on x86-64 (``cvttps2dq``): truncation, and the
    "integer indefinite" -2**31 for NaN and for every value outside the int32 range, large
    positive ones included (measured: a bias quotient of 1e14 folds to -2147483648)."""
    v = np.asarray(values, np.float32)
    inside = np.isfinite(v) & (v >= np.float32(-2.0 ** 31)) & (v < np.float32(2.0 ** 31))
    return np.where(inside, np.trunc(np.where(inside, v, 0)).astype(np.int64), -2 ** 31).astype(np.int32)


class OrtWeightBias(NamedTuple):
    """The constants ORT's ``WeightBiasQuantization`` makes: an int8 weight on a per-tensor
    grid (``weight_scale``, ``weight_zp``) and an int32 bias on ``bias_scale`` (zero point 0),
    None without a bias."""
    weight_codes: np.ndarray
    weight_scale: np.float32
    weight_zp: int
    bias_codes: Optional[np.ndarray]
    bias_scale: np.float32

    def dequantized(self) -> tuple:
        """(weight, bias or None) as ORT's DequantizeLinear gives them to a float kernel."""
        w = ort_dequantize_constant(self.weight_codes, QParams([self.weight_scale], [self.weight_zp], "int8"))
        if self.bias_codes is None:
            return w, None
        return w, ort_dequantize_constant(self.bias_codes, QParams([self.bias_scale], [0], "int32"))


def ort_weight_bias_codes(weight: np.ndarray, bias, x_scale: float) -> OrtWeightBias:
    """The int8 weight and int32 bias ORT's ``WeightBiasQuantization`` graph transform
    (onnxruntime/core/optimizer/qdq_transformer/weight_bias_quantization.cc) gives a float-weight
    Conv/ConvTranspose/Gemm between a per-tensor DequantizeLinear and a QuantizeLinear, as its
    constant folding computes them (all float32): the weight with ``GetQuantizationParameter``
    (core/util/qmath.h: range widened to include 0, ``scale = (max - min) / 255``,
    ``zp = RNE(clamp(-128 - min / scale))``) and QuantizeLinear (``RNE(w / scale) + zp``,
    saturated); the bias ``Cast<int32>(Round(b / f32(x_scale * w_scale)))``."""
    f32 = np.float32
    w = np.asarray(weight, f32)
    lo, hi = min(f32(w.min()), f32(0.0)), max(f32(w.max()), f32(0.0))
    scale = f32(1.0) if hi == lo else f32(f32(hi - lo) / f32(255.0))
    zp_real = f32(f32(-128.0) - f32(lo / scale))
    zp = int(_round_half_even(min(f32(127.0), max(f32(-128.0), zp_real))))
    q = np.clip(np.rint((w / scale).astype(f32)).astype(np.int64) + zp, -128, 127).astype(np.int8)
    b_scale = f32(f32(x_scale) * scale)
    return OrtWeightBias(q, scale, zp, None if bias is None else ort_bias_codes(bias, b_scale), b_scale)


def ort_bias_codes(bias, bias_scale) -> np.ndarray:
    """WeightBiasQuantization's int32 bias: ``Cast<int32>(Round(f32(b / bias_scale)))``, float32
    division, rounding half to even; ``bias_scale`` (``f32(x_scale * w_scale)``) one value or
    one per output channel."""
    f32 = np.float32
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quotient = (np.asarray(bias, f32) / np.asarray(bias_scale, f32)).astype(f32)
    return ort_cast_to_int32(np.rint(quotient))


def ort_weight_bias_quantization(weight: np.ndarray, bias, x_scale: float) -> tuple:
    """The float weight and bias that ORT's ``WeightBiasQuantization`` leaves a Conv it does
    not fuse into an integer kernel (and a ConvTranspose): :func:`ort_weight_bias_codes`
    dequantized."""
    return ort_weight_bias_codes(weight, bias, x_scale).dequantized()


def ort_quantizes_weights(imp, node) -> bool:
    """Whether ORT's ``WeightBiasQuantization`` applies: the output reaches a QuantizeLinear
    through single-consumer Relu/Clip nodes only (``IsNoBranchPathToQuantizeLinear``); the bias,
    if any, a 1-D initializer."""
    if len(node.input) > 2 and node.input[2] and (node.input[2] not in imp.init
                                                  or np.asarray(imp.init[node.input[2]]).ndim != 1):
        return False
    out = node.output[0]
    while True:
        users = imp.consumers.get(out, [])
        if len(users) != 1 or out in imp.graph_outputs:
            return False
        if users[0].op_type == "QuantizeLinear":
            return True
        if users[0].op_type not in ("Relu", "Clip"):
            return False
        out = users[0].output[0]


def _conv_transpose(imp, node) -> bool:
    """A ConvTranspose with a float initializer as weight; with quantized (DequantizeLinear)
    weights it is declined: the importer's integer TransposeConv runs it."""
    if len(node.input) < 2 or node.input[1] not in imp.init \
            or np.asarray(imp.init[node.input[1]]).dtype.kind != "f":
        return False
    attrs = _attrs(node)
    weight = float_constant(imp, node.input[1], node, "weight")
    if weight.ndim != 4:
        raise UnsupportedOpError(node.op_type, _name(node), f"only 2-D transposed convolution "
                                 f"(weight rank {weight.ndim})")
    if _number(node, attrs, "group", 1, int) != 1:
        raise UnsupportedOpError(node.op_type, _name(node), f"group={attrs['group']} (one group only)")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID") or "output_shape" in attrs:
        raise UnsupportedOpError(node.op_type, _name(node), "auto_pad/output_shape (give explicit pads)")
    bias = (float_constant(imp, node.input[2], node, "bias")
            if len(node.input) > 2 and node.input[2] else None)
    if bias is not None and bias.size != weight.shape[1]:
        raise ModelError(f"node {_name(node)!r} (ConvTranspose): {bias.size} bias values for "
                         f"{weight.shape[1]} output channels")
    shape = static_shape(imp, node.input[0], node)
    if len(shape) != 4 or shape[1] != weight.shape[0]:
        raise ModelError(f"node {_name(node)!r} (ConvTranspose): input {list(shape)} for weight "
                         f"{list(weight.shape)}")
    kernel = weight.shape[2:]
    strides = tuple(int(v) for v in attrs.get("strides", (1, 1)))
    dilations = tuple(int(v) for v in attrs.get("dilations", (1, 1)))
    pads = tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else (0,) * 4
    extra = tuple(int(v) for v in attrs.get("output_padding", (0, 0)))
    size = tuple((n - 1) * s + d * (k - 1) + 1 - pb - pe + op for n, s, k, d, pb, pe, op
                 in zip(shape[2:], strides, kernel, dilations, pads[:2], pads[2:], extra))
    if any(v < 1 for v in size):
        raise ModelError(f"node {_name(node)!r} (ConvTranspose): output size {list(size)} from input "
                         f"{list(shape[2:])}, kernel {list(kernel)}, strides {list(strides)}, pads {list(pads)}")
    x = _integer_input(imp, node)
    if ort_quantizes_weights(imp, node):
        weight, bias = ort_weight_bias_quantization(weight, bias, float(imp.tensors[x].qparams.scale[0]))
    out = _float_output(imp, node, (None, weight.shape[1]) + size)
    imp._emit("ConvTranspose", imp._name(node), [x], [out], weight=weight, bias=bias,
              strides=strides, pads=pads, dilations=dilations, output_size=size)
    return True


# single-input float ops a chain may hold: binary ones take a scalar float constant operand
CHAIN_BINARY = ("Div", "Mul", "Add", "Sub")
CHAIN_UNARY = ("Erf",)


def _chain_step(imp, node, data: str):
    """``(op, constant, constant_first)`` of one chain node reading ``data``, or None."""
    if node.op_type in CHAIN_UNARY:
        return (node.op_type, None, False) if len(node.input) == 1 else None
    if node.op_type not in CHAIN_BINARY or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == data else node.input[0]
    if other == data or other not in imp.init:
        return None
    value = np.asarray(imp.init[other])
    if value.dtype.kind != "f" or value.size != 1:
        return None
    return node.op_type, float(np.float32(value.reshape(-1)[0])), node.input[1] == data


def _elementwise_chain(imp, node) -> bool:
    """A run of single-input float ops (Erf; Div/Mul/Add/Sub by a scalar constant) from an 8-bit
    DequantizeLinear to a QuantizeLinear (a GELU that the exporter spelled out: ``x / sqrt(2)``,
    Erf, ...): one IR ``ElementwiseChain`` node that lowering turns into a 256-entry table of
    ORT's float32 arithmetic. Declined when the input is not such a view."""
    data = node.input[0] if node.op_type in CHAIN_UNARY else next(
        (i for i in node.input if i in imp.alias), None)
    if data is None or data not in imp.alias:
        return False
    src = imp.alias[data]
    qp = imp.tensors[src].qparams
    if qp is None or qp.per_channel or qp.dtype not in ("int8", "uint8"):
        return False
    if _chain_step(imp, node, data) is None:
        return False   # e.g. a QDQ Mul of two activations: the importer's integer op
    steps, chain, current, out = [], [], node, data
    while True:
        step = _chain_step(imp, current, out)
        if step is None:
            raise UnsupportedOpError(current.op_type, _name(current), "in a float chain after a "
                                     "DequantizeLinear only Erf and Div/Mul/Add/Sub by a scalar "
                                     "float constant are supported")
        steps.append(step)
        chain.append(current)
        out = current.output[0]
        users = imp.consumers.get(out, [])
        if out in imp.graph_outputs or len(users) != 1:
            raise ModelError(f"node {_name(current)!r} ({current.op_type}): its float output is "
                             f"not followed by one QuantizeLinear; mrq simulates integer graphs")
        if users[0].op_type == "QuantizeLinear":
            quant = users[0]
            break
        current = users[0]
    out_qp = imp._qparams(quant, quant.input[1], quant.input[2] if len(quant.input) > 2 else "",
                          axis=_attrs(quant).get("axis", 1))
    if out_qp.per_channel or out_qp.dtype not in ("int8", "uint8"):
        raise UnsupportedOpError(node.op_type, _name(node), "a float chain needs an 8-bit "
                                 "per-tensor QuantizeLinear after it")
    for n in chain[1:] + [quant]:
        imp.done.add(id(n))
    out = imp._add_tensor(quant.output[0], imp.tensors[src].shape, out_qp.dtype, out_qp)
    imp._emit("ElementwiseChain", imp._name(node), [src], [out], steps=tuple(steps))
    return True


HANDLERS = {"LayerNormalization": _layer_norm, "ConvTranspose": _conv_transpose,
            **{op: _elementwise_chain for op in CHAIN_BINARY + CHAIN_UNARY}}
