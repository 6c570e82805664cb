"""Float math of mixed ONNX graphs -> :mod:`mrq.ir`: the ops a transformer exported from
PyTorch spells out between its dynamically quantized MatMuls (T5's RMSNorm ``x * 1/sqrt(mean(
x^2) + eps)``, the tanh GELU's ``x^3``): Pow by 2 or 3, Sqrt, Neg, Abs and ReduceMean over the
last axis, on run-time float32 tensors. Each is one IR ``FloatMath`` (``float_op``) or
``FloatReduceMean`` node, lowered (mrq/lower_ml.py) to ORT's Eigen kernels bit for bit
(simulator/kernels/ort_math.py) under a profile whose runtime is ORT only.

On constants these ops fold at import (mrq/onnx_import_movement.py); Pow by another exponent is
``std::pow`` in ORT, whose libm result mrq does not model: refused in one line.
"""
from __future__ import annotations

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError

_UNARY = ("Sqrt", "Neg", "Abs")
_POWERS = {2.0: "Square", 3.0: "Cube"}


def _where(node) -> str:
    return node.name or node.output[0]


def handle(imp, node) -> bool:
    from mrq.onnx_import_float import is_float_tensor
    if node.domain not in ("", "ai.onnx") or not node.input:
        return False
    if node.op_type in _SCALAR_OPS and _scalar_op(imp, node):
        return True
    if node.op_type in ("Div", "Mul") and _div_mul(imp, node):
        return True
    if node.op_type == "Mul" and _fast_gelu(imp, node):
        return True
    if node.op_type not in HANDLERS or not (is_float_tensor(imp, node.input[0])
                                            or node.input[0] in imp.alias):
        return False
    users = imp.consumers.get(node.output[0], [])
    if node.input[0] in imp.alias and users and node.output[0] not in imp.graph_outputs \
            and all(u.op_type == "QuantizeLinear" for u in users):
        return False   # DQ -> op -> Q: the importer's quantized op (a table, an integer mean)
    if node.op_type == "Pow" and _rms_norm(imp, node):
        return True
    HANDLERS[node.op_type](imp, node)
    return True


# ---------------------------------------------------------------- ORT's graph fusions
# ORT's optimizer (level 1-2, on by default) rewrites these float patterns before it runs them,
# and the rewritten graph rounds differently: mrq imports the pattern as what ORT executes.

def _single_user(imp, name: str, op: str):
    users = imp.consumers.get(name, [])
    if len(users) != 1 or name in imp.graph_outputs or users[0].op_type != op:
        return None
    return users[0]


def _producer(imp, name: str):
    table = imp.__dict__.get("_onnx_producers")
    if table is None:
        table = imp.__dict__["_onnx_producers"] = {o: n for n in imp.model.graph.node for o in n.output}
    return table.get(name)


def _scalar(imp, name: str):
    if name not in imp.init:
        return None
    value = np.asarray(imp.init[name])
    return float(value.reshape(-1)[0]) if value.size == 1 and value.dtype.kind == "f" else None


def _other(node, name: str):
    """The other input of a binary node one of whose inputs is ``name`` (None if both are)."""
    a, b = node.input[0], node.input[1]
    return None if a == b else (b if a == name else a if b == name else None)


def _close(value, want: float) -> bool:
    return value is not None and abs(value - want) <= 1e-6 * max(1.0, abs(want))


def _from_dequantize(imp, name: str) -> bool:
    """Whether ``name`` is (through Casts) a DequantizeLinear output: ORT gives each consumer
    of one its own copy (EnsureUniqueDQForNodeUnit), which breaks the fusions below."""
    node = _producer(imp, name)
    while node is not None and node.op_type == "Cast":
        node = _producer(imp, node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def _div_mul(imp, node) -> bool:
    """ORT's DivMulFusion: ``Div(1, y)`` read only by Muls becomes ``Div(a, y)`` in each Mul."""
    from mrq.onnx_import_float import HANDLERS as FLOAT
    pending = imp.__dict__.setdefault("_div_mul", {})
    if node.op_type == "Div":
        out = node.output[0]
        users = imp.consumers.get(out, [])
        if not _close(_scalar(imp, node.input[0]), 1.0) or out in imp.graph_outputs or not users \
                or any(u.op_type != "Mul" for u in users) or node.input[1] not in imp.tensors \
                or imp.tensors[node.input[1]].dtype != "float32":
            return False
        pending[out] = node.input[1]
        return True
    div_out = next((i for i in node.input if i in pending), None)
    if div_out is None:
        return False
    other = _other(node, div_out)
    if other is None:
        return False
    FLOAT["Div"](imp, onnx.helper.make_node("Div", [other, pending[div_out]], list(node.output),
                                            name=node.name or node.output[0]))
    return True


def _rms_norm(imp, pow_node) -> bool:
    """ORT's SimplifiedLayerNormFusion of T5's RMSNorm: ``x * (1 / sqrt(mean(x^2) + eps)) * w``
    (Pow -> ReduceMean -> Add -> Sqrt -> Div(1, .) -> Mul(x, .) -> Mul(w, .)) becomes one
    SimplifiedLayerNormalization; not when x comes from a DequantizeLinear (module helper)."""
    x = pow_node.input[0]
    if not _close(_scalar(imp, pow_node.input[1]), 2.0) or _from_dequantize(imp, x) \
            or x not in imp.tensors:
        return False
    mean = _single_user(imp, pow_node.output[0], "ReduceMean")
    add = mean and _single_user(imp, mean.output[0], "Add")
    eps = add and _scalar(imp, _other(add, mean.output[0]) or "")
    sqrt = add and _single_user(imp, add.output[0], "Sqrt")
    div = sqrt and _single_user(imp, sqrt.output[0], "Div")
    if eps is None or div is None or div.input[1] != sqrt.output[0] \
            or not _close(_scalar(imp, div.input[0]), 1.0):
        return False
    mul = _single_user(imp, div.output[0], "Mul")
    scale_mul = mul and _other(mul, div.output[0]) == x and _single_user(imp, mul.output[0], "Mul")
    if not scale_mul:
        return False
    weight_name = _other(scale_mul, mul.output[0])
    shape = tuple(imp.tensors[x].shape)
    weight = np.asarray(imp.init[weight_name]) if weight_name in imp.init else None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in mean.attribute}
    axes = attrs.get("axes")
    if axes is None and len(mean.input) > 1 and mean.input[1] in imp.init:
        axes = [int(a) for a in np.asarray(imp.init[mean.input[1]]).reshape(-1)]
    if weight is None or weight.dtype != np.float32 or shape[-1] is None \
            or weight.size != shape[-1] or weight.ndim != 1 or not attrs.get("keepdims", 1) \
            or not axes or [int(a) % len(shape) for a in axes] != [len(shape) - 1]:
        return False
    for n in (mean, add, sqrt, div, mul, scale_mul):
        imp.done.add(id(n))
    out = imp._add_tensor(scale_mul.output[0], shape, "float32")
    imp._emit("FloatRmsNorm", imp._name(scale_mul), [x], [out], scale=weight.copy(),
              epsilon=float(np.float32(eps)))
    return True


def _fast_gelu(imp, half) -> bool:
    """ORT's FastGeluFusion of the tanh GELU ``(x * 0.5) * (1 + tanh(sqrt(2/pi) * (x + 0.044715
    * x^3)))``, spelled with Pow, recognised at its ``x * 0.5``: one FastGelu."""
    from mrq.onnx_import_float import is_float_tensor
    x = next((i for i in half.input if _close(_scalar(imp, _other(half, i) or ""), 0.5)), None)
    if x is None or not is_float_tensor(imp, x):
        return False
    final = _single_user(imp, half.output[0], "Mul")
    if final is None or final.output[0] in imp.graph_outputs:   # ORT does not fuse then
        return False
    g = _other(final, half.output[0])
    add1 = g and _producer(imp, g)
    if add1 is None or add1.op_type != "Add" or len(imp.consumers.get(g, [])) != 1:
        return False
    t = next((i for i in add1.input if _close(_scalar(imp, _other(add1, i) or ""), 1.0)), None)
    tanh = t and _producer(imp, t)
    if tanh is None or tanh.op_type != "Tanh" or len(imp.consumers.get(t, [])) != 1:
        return False
    mul2 = _producer(imp, tanh.input[0])
    if mul2 is None or mul2.op_type != "Mul" or len(imp.consumers.get(tanh.input[0], [])) != 1:
        return False
    a = next((i for i in mul2.input if _close(_scalar(imp, _other(mul2, i) or ""),
                                               0.7978845608028654)), None)
    add = a and _producer(imp, a)
    if add is None or add.op_type != "Add" or x not in add.input or len(imp.consumers.get(a, [])) != 1:
        return False
    m1 = _other(add, x)
    mul1 = m1 and _producer(imp, m1)
    p = mul1 and mul1.op_type == "Mul" and next(
        (i for i in mul1.input if _close(_scalar(imp, _other(mul1, i) or ""), 0.044715)), None)
    pw = p and _producer(imp, p)
    if not pw or pw.op_type != "Pow" or pw.input[0] != x or not _close(_scalar(imp, pw.input[1]), 3.0) \
            or any(len(imp.consumers.get(n, [])) != 1 for n in (m1, p)):
        return False
    for n in (pw, mul1, add, mul2, tanh, add1, final):
        imp.done.add(id(n))
    out = imp._add_tensor(final.output[0], tuple(imp.tensors[x].shape), "float32")
    imp._emit("FloatMath", imp._name(final), [x], [out], float_op="FastGelu")
    return True


def _unary(imp, node, op: str) -> None:
    from mrq.onnx_import_float import _float_input
    x = _float_input(imp, node, node.input[0])   # a DequantizeLinear view: as ORT dequantizes
    out = imp._add_tensor(node.output[0], tuple(imp.tensors[x].shape), "float32")
    imp._emit("FloatMath", imp._name(node), [x], [out], float_op=op)


def _elementwise(imp, node) -> None:
    _unary(imp, node, node.op_type)


def _pow(imp, node) -> None:
    exp_name = node.input[1]
    if exp_name not in imp.init or np.asarray(imp.init[exp_name]).size != 1:
        raise UnsupportedOpError("Pow", _where(node), "only a constant scalar exponent")
    exponent = float(np.asarray(imp.init[exp_name]).reshape(-1)[0])
    if exponent not in _POWERS:
        raise UnsupportedOpError("Pow", _where(node), f"exponent {exponent:g} (ORT's std::pow; "
                                 f"2 and 3, which ORT multiplies out, are supported)")
    _unary(imp, node, _POWERS[exponent])


def _reduce_mean(imp, node) -> None:
    from mrq.onnx_import_float import _float_input
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x = _float_input(imp, node, node.input[0])
    shape = tuple(imp.tensors[x].shape)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in np.asarray(imp._const(node.input[1], node, "axes")).reshape(-1)]
    rank = len(shape)
    if not axes or [int(a) % rank for a in axes] != [rank - 1] or rank < 2:
        raise UnsupportedOpError("ReduceMean", _where(node), "only over the last axis (the order "
                                 "ORT's fast path sums in is the one mrq reproduces)")
    if shape[-1] is None:
        raise ModelError(f"node {_where(node)!r} (ReduceMean): the last axis has no static size")
    keep = bool(attrs.get("keepdims", 1))
    out = imp._add_tensor(node.output[0], shape[:-1] + ((1,) if keep else ()), "float32")
    imp._emit("FloatReduceMean", imp._name(node), [x], [out], keepdims=keep)


# ---------------------------------------------------------------- whole-tensor statistics
# The expanded DynamicQuantizeLinear (and hand-written dynamic quantization) computes its scale
# and zero point from ReduceMin/ReduceMax of the whole tensor: run-time scalars (IR shape ()),
# on which Sub, Div, Min, Max, Clip, Round and Identity are single IEEE float32 operations.

_SCALAR_OPS = ("Add", "Sub", "Mul", "Div", "Min", "Max", "Clip", "Round", "Identity", "Cast")


def _runtime_scalar(imp, name: str) -> bool:
    t = imp.tensors.get(name)
    return bool(name) and t is not None and name not in imp.alias and not t.is_const \
        and not t.is_quantized and tuple(t.shape) == ()


def _constant_operand(imp, node, value, what: str) -> str:
    name = f"{_where(node)}_{what}"
    return imp._const_tensor(name, np.asarray(value, np.float32), None)


def _broadcast(imp, node, names) -> tuple:
    """The IR shape of the broadcast of ``names`` (an open batch axis stays open)."""
    shapes = [tuple(imp.tensors[n].shape) for n in names]
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + s for s in shapes]
    out = []
    for dims in zip(*padded):
        known = {d for d in dims if d not in (None, 1)}
        if len(known) > 1:
            raise ModelError(f"node {_where(node)!r} ({node.op_type}): shapes "
                             f"{[list(s) for s in shapes]} do not broadcast")
        out.append(None if None in dims else (known.pop() if known else 1))
    return tuple(out)


def _scalar_op(imp, node) -> bool:
    """An elementwise op one of whose operands is a run-time scalar: one ``FloatMath``."""
    from mrq.onnx_import_float import _float_input
    op = node.op_type
    # float32 scalars only (an int64 scalar of shape arithmetic is not this module's), and the
    # integer zero point the Cast gives, passed on by Identity
    if not any(_runtime_scalar(imp, n) and (op == "Identity" or imp.tensors[n].dtype == "float32")
               for n in node.input):
        return False
    if op == "Identity":
        x = node.input[0]
        imp._add_tensor(node.output[0], (), imp.tensors[x].dtype)
        imp._emit("FloatMath", imp._name(node), [x], [node.output[0]], float_op="Identity")
        return True
    if op == "Cast":   # the zero point's float -> integer conversion (simulator/steps/cast.py)
        from simulator.steps.cast import DTYPES
        to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
            int(onnx.helper.get_attribute_value(node.attribute[0])))).name
        if to not in DTYPES:
            raise UnsupportedOpError("Cast", _where(node), f"a cast of a run-time scalar to {to}")
        imp._add_tensor(node.output[0], (), to)
        imp._emit("FloatCast", imp._name(node), [node.input[0]], [node.output[0]], to=to)
        return True
    if op == "Clip":
        lo, hi = imp._clamp_bounds(node)
        inputs = [_float_input(imp, node, node.input[0]),
                  _constant_operand(imp, node, -np.inf if lo is None else lo, "min"),
                  _constant_operand(imp, node, np.inf if hi is None else hi, "max")]
    else:   # a float constant keeps its own shape (a scalar stays rank 0)
        inputs = [_constant_operand(imp, node, imp.init[n], f"in{k}")
                  if n in imp.init and n not in imp.consts and np.asarray(imp.init[n]).dtype.kind == "f"
                  else _float_input(imp, node, n) for k, n in enumerate(node.input)]
    for n in inputs:
        if imp.tensors[n].dtype != "float32":
            raise UnsupportedOpError(op, _where(node), f"operand {n!r} is {imp.tensors[n].dtype}")
    out = imp._add_tensor(node.output[0], _broadcast(imp, node, inputs), "float32")
    imp._emit("FloatMath", imp._name(node), inputs, [out], float_op=op)
    return True


def _nary(imp, node) -> None:
    """Min/Max of float tensors (and constants), broadcasting."""
    from mrq.onnx_import_float import _float_input
    inputs = [_float_input(imp, node, n) for n in node.input]
    if len(inputs) == 1:
        inputs = inputs * 2   # Min(x) is x: as a two-input op it is a copy
    out = imp._add_tensor(node.output[0], _broadcast(imp, node, inputs), "float32")
    imp._emit("FloatMath", imp._name(node), inputs, [out], float_op=node.op_type)


def _reduce_min_max(imp, node) -> None:
    """ReduceMin/ReduceMax over any axes, the batch axis included (a whole-tensor statistic):
    min and max are exact in any order."""
    from mrq.onnx_import_float import _float_input
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    x = _float_input(imp, node, node.input[0])
    shape = tuple(imp.tensors[x].shape)
    rank = len(shape)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in np.asarray(imp._const(node.input[1], node, "axes")).reshape(-1)]
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            axes = []
        else:
            axes = list(range(rank))
    if any(not -rank <= int(a) < rank for a in axes):
        raise ModelError(f"node {_where(node)!r} ({node.op_type}): axes {list(axes)} of a "
                         f"rank-{rank} input")
    axes = tuple(sorted({int(a) % rank for a in axes}))
    keep = bool(attrs.get("keepdims", 1))
    out_shape = tuple(1 if d in axes else n for d, n in enumerate(shape) if keep or d not in axes)
    out = imp._add_tensor(node.output[0], out_shape, "float32")
    imp._emit("FloatReduceMinMax", imp._name(node), [x], [out],
              float_op=node.op_type.removeprefix("Reduce"), axes=axes, keepdims=keep)


HANDLERS = {**{op: _elementwise for op in _UNARY}, "Pow": _pow, "ReduceMean": _reduce_mean,
            "Round": _elementwise, "Min": _nary, "Max": _nary,
            "ReduceMin": _reduce_min_max, "ReduceMax": _reduce_min_max}
