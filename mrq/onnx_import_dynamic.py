"""ONNX dynamic quantization (ONNX Runtime's ``quantize_dynamic``) -> :mod:`mrq.ir`.

``quantize_dynamic`` leaves a float graph in which every quantized MatMul reads

    x --DynamicQuantizeLinear--> (x_q, x_scale, x_zp)
    MatMulInteger(x_q, W_q, x_zp, W_zp) --Cast(float)--> Mul(., Mul(x_scale, W_scale)) [--Add(bias)]

and ORT fuses that chain into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``: the same
arithmetic (one float32 multiply, then one add). The chain becomes one IR op ``DynamicMatMul``
(float in, float out, constant or dynamically quantized B, optional float bias, a following
float Relu/Clip fused as its clamp: max/min are exact in float). Anything else built from these
ops becomes the IR ops ``DynamicQuantize`` (float -> uint8 codes, scale, zero point) and
``MatMulInteger`` (codes and zero points of any origin -> int32), which also carry N-D batched
MatMulInteger and one whose B is not a constant. ORT's fused com.microsoft forms (a model saved
after its graph optimizations) import as ``DynamicMatMul`` too; quantize_dynamic's conv chain
(``ConvInteger`` -> Cast -> Mul -> Add, which ORT leaves unfused) as ``DynamicConv``. A constant
batched B of ``QLinearMatMul`` (rank 3 or more) is here as well: it is the IR ``MatMul``."""
from __future__ import annotations

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError
from mrq.ir import QParams
from mrq.onnx_nodes import node_attrs as _attrs
from mrq.onnx_nodes import node_where as _where

_INT8 = {np.dtype("int8"): "int8", np.dtype("uint8"): "uint8"}
_INTEGER_OPS = ("MatMulInteger", "ConvInteger")


# ORT's dynamically quantized ops with float kernels inside (gate nonlinearities) that
# mrq does not simulate: refused up front, naming the op, rather than at the float op before it
_UNSIMULATED = {
    "DynamicQuantizeLSTM": "ORT's dynamically quantized LSTM (float gates around MatMulInteger)",
}


def refuse_unsimulated(node) -> None:
    if node.op_type in _UNSIMULATED:
        raise UnsupportedOpError(node.op_type, _where(node), f"{_UNSIMULATED[node.op_type]} is not "
                                 f"simulated")


def _users(imp, name: str) -> list:
    return imp.consumers.get(name, [])


def _only_user(imp, name: str, op_type: str):
    users = _users(imp, name)
    if len(users) == 1 and users[0].op_type == op_type and name not in imp.graph_outputs:
        return users[0]
    return None


class _Dynamic:
    """What one model's DynamicQuantizeLinear nodes produce, and the MatMulInteger/ConvInteger
    chains folded into one DynamicMatMul/DynamicConv."""

    def __init__(self):
        self.sources: dict = {}     # codes / scale / zero-point output -> (float x, role)
        self.chains: dict = {}      # id(integer op node) -> (end tensor, bias, clamps, B scale)
        self.nodes: dict = {}       # DynamicQuantizeLinear output -> its node
        self.emitted: set = set()   # ids of DynamicQuantizeLinear nodes emitted as IR ops


def _state(imp) -> _Dynamic:
    if not hasattr(imp, "dynamic"):
        imp.dynamic = _Dynamic()
    return imp.dynamic


def _float_source(imp, node, name: str) -> None:
    """A DynamicQuantizeLinear input must be a float tensor the IR holds."""
    t = imp.tensors.get(name)
    if name in imp.alias or t is None or t.dtype != "float32" or t.is_quantized:
        raise UnsupportedOpError(node.op_type, _where(node),
                                 f"input {name!r} must be a float graph input or the float output "
                                 f"of a dynamically quantized MatMul")


def dynamic_quantize_linear(imp, node) -> None:
    """``DynamicQuantizeLinear(x) -> (y, y_scale, y_zero_point)``: folded into the MatMul chains
    that read it; an IR ``DynamicQuantize`` for any other reader (emitted here, or by the
    MatMulInteger that needs it when it reads a second DynamicQuantizeLinear not seen yet)."""
    st = _state(imp)
    x = node.input[0]
    _float_source(imp, node, x)
    y, y_scale, y_zp = (list(node.output) + ["", ""])[:3]
    for role, name in (("codes", y), ("scale", y_scale), ("zero_point", y_zp)):
        if name:
            st.sources[name] = (x, role)
            st.nodes[name] = node
    for user in _users(imp, y):
        if user.op_type in _INTEGER_OPS and id(user) not in st.chains:
            _fold_chain(imp, user)
    # (ORT's fused MatMulIntegerToFloat reads x itself too)
    others = [u for name in (y, y_scale, y_zp) if name for u in _users(imp, name)
              if u.op_type not in _INTEGER_OPS + ("MatMulIntegerToFloat",)
              and id(u) not in imp.done]
    if others or any(n in imp.graph_outputs for n in (y, y_scale, y_zp) if n):
        _emit_dynamic_quantize(imp, node)


def _emit_dynamic_quantize(imp, node) -> None:
    st = _state(imp)
    if id(node) in st.emitted:
        return
    st.emitted.add(id(node))
    y, y_scale, y_zp = (list(node.output) + ["", ""])[:3]
    outs = []
    x_shape = imp._shape(node.input[0]) or imp.tensors[node.input[0]].shape
    for name, dtype, shape in ((y, "uint8", x_shape), (y_scale, "float32", ()), (y_zp, "uint8", ())):
        name = name or f"{_where(node)}_unused_{len(outs)}"
        imp._add_tensor(name, shape, dtype)
        outs.append(name)
    imp._emit("DynamicQuantize", imp._name(node), [node.input[0]], outs)


def _const_value(imp, name: str):
    """A constant, also one a later node computes from constants (quantize_dynamic reshapes each
    conv bias to [1, C, 1, 1] with a Reshape it places after the chain's first node)."""
    if not name:
        return None
    if name not in imp.init:
        producer = _producer(imp, name)
        if producer is not None and producer.op_type == "Reshape" and \
                all(n in imp.init for n in producer.input[:2]):
            from mrq.onnx_import_movement import fold_constants
            fold_constants(imp, producer)
            imp.done.add(id(producer))
    return imp.init.get(name)


def _fold_chain(imp, mm) -> bool:
    """Match ``MatMulInteger -> Cast(float) -> Mul(., scale product) [-> Add(const bias)]
    [-> Relu/Clip ...]`` from a MatMulInteger whose A is dynamically quantized; on a match,
    mark the float nodes folded and remember the chain for :func:`matmul_integer`."""
    st = _state(imp)
    ins = list(mm.input) + [""] * 4
    a, b, a_zp, b_zp = ins[:4]
    if st.sources.get(a, (None, ""))[1] != "codes" or st.sources.get(a_zp, (None, ""))[1] != "zero_point":
        return False
    if st.sources[a][0] != st.sources[a_zp][0]:
        return False
    b_dynamic = b in st.sources or (b not in imp.init)
    if mm.op_type == "ConvInteger" and b_dynamic:
        return False
    cast = _only_user(imp, mm.output[0], "Cast")
    if cast is None or _attrs(cast).get("to") != onnx.TensorProto.FLOAT:
        return False
    mul = _only_user(imp, cast.output[0], "Mul")
    if mul is None:
        return False
    scale_name = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    scale_mul = _producer(imp, scale_name)
    if scale_mul is None or scale_mul.op_type != "Mul":
        return False
    a_scale = next((n for n in scale_mul.input if st.sources.get(n) == (st.sources[a][0], "scale")), None)
    if a_scale is None:
        return False
    b_scale = scale_mul.input[1] if scale_mul.input[0] == a_scale else scale_mul.input[0]
    if b_dynamic:
        if st.sources.get(b, (None, ""))[1] != "codes" or \
                st.sources.get(b_scale) != (st.sources[b][0], "scale") or \
                st.sources.get(b_zp) != (st.sources[b][0], "zero_point"):
            return False
    elif b_scale not in imp.init or (b_zp and b_zp not in imp.init):
        return False
    end, bias, folded = mul.output[0], None, [cast, mul]
    add = _only_user(imp, end, "Add")
    if add is not None:
        other = add.input[1] if add.input[0] == end else add.input[0]
        value = _const_value(imp, other)
        # a MatMul's bias per column; a conv's per channel ([1, C, 1, 1], as the quantizer
        # reshapes it)
        per_channel = value is not None and (value.ndim <= 1 if mm.op_type == "MatMulInteger" else
                                             value.ndim == 4 and value.shape[0] == value.shape[2]
                                             == value.shape[3] == 1)
        if per_channel and value.dtype == np.float32:
            bias, end = other, add.output[0]
            folded.append(add)
    end, clamps, relus = _clamp_chain(imp, end)
    folded += relus
    if len(_users(imp, scale_name)) == 1 and scale_name not in imp.graph_outputs:
        folded.append(scale_mul)
    for n in folded:
        imp.done.add(id(n))
    st.chains[id(mm)] = (end, bias, clamps, b_scale)
    return True


def _merged(clamps: list):
    from mrq.onnx_import import _merge_clamps  # (that module imports this one)
    return _merge_clamps(clamps)


def _producer(imp, name: str):
    for n in imp.model.graph.node:
        if name in n.output:
            return n
    return None


def matmul_integer(imp, node) -> bool:
    """``MatMulInteger`` that the plain (constant-B, constant-zero-point, 2-D weight) path does
    not cover; returns False to leave the node to it."""
    st = _state(imp)
    ins = list(node.input) + [""] * 4
    a, b, a_zp, b_zp = ins[:4]
    if id(node) in st.chains:
        _dynamic_matmul(imp, node)
        return True
    plain = (a not in st.sources and b in imp.init and imp.init[b].ndim == 2
             and (not a_zp or a_zp in imp.init) and (not b_zp or b_zp in imp.init))
    if plain:
        return False
    for name in (a, b, a_zp, b_zp):
        if name in st.nodes:
            _emit_dynamic_quantize(imp, st.nodes[name])
    operands = []
    for name in (a, b):
        if name in imp.init:
            codes = imp.init[name]
            if codes.dtype not in _INT8:
                raise UnsupportedOpError(node.op_type, _where(node), f"input {name!r} is {codes.dtype}")
            operands.append(imp._const_tensor(name + "_q", codes, None))
        else:
            operands.append(imp._view_int(name, node) if name in imp.alias else name)
    if any(n not in imp.tensors for n in operands):
        raise ModelError(f"node {_where(node)!r} (MatMulInteger): an input is unknown")
    for i, (zp, codes_name) in enumerate(((a_zp, operands[0]), (b_zp, operands[1]))):
        if not zp:
            dtype = imp.tensors[codes_name].dtype
            operands.append(imp._const_tensor(f"{_where(node)}_zero_point_{i}",
                                              np.zeros((), np.dtype(dtype)), None))
        elif zp in imp.init:
            operands.append(imp._const_tensor(zp + "_q", np.asarray(imp.init[zp]), None))
        elif zp in imp.tensors:
            operands.append(zp)
        else:
            raise UnsupportedOpError(node.op_type, _where(node), f"zero point {zp!r} is neither a "
                                     f"constant nor a DynamicQuantizeLinear output")
    out = node.output[0]
    imp._add_tensor(out, imp._shape(out), "int32")
    imp._emit("MatMulInteger", imp._name(node), operands, [out])
    return True


def _dynamic_matmul(imp, node, x: str | None = None) -> None:
    st = _state(imp)
    end, bias, clamps, b_scale = st.chains[id(node)]
    ins = list(node.input) + [""] * 4
    a, b, _a_zp, b_zp = ins[:4]
    x = st.sources[a][0] if x is None else x
    if b in st.sources:
        b_in = st.sources[b][0]
    else:
        codes = imp.init[b]
        if codes.dtype not in _INT8:
            raise UnsupportedOpError(node.op_type, _where(node), f"B {b!r} is {codes.dtype}")
        scale = np.asarray(imp.init[b_scale], np.float32).reshape(-1)
        zp = (np.asarray(imp.init[b_zp]).reshape(-1) if b_zp else np.zeros(1, codes.dtype))
        if scale.size not in (1, codes.shape[-1]) or zp.size not in (1, codes.shape[-1]) or \
                (codes.ndim != 2 and (scale.size > 1 or zp.size > 1)):
            raise UnsupportedOpError(node.op_type, _where(node), f"B scale/zero point of "
                                     f"{scale.size}/{zp.size} values for B of shape {list(codes.shape)} "
                                     f"(one, or one per column of a 2-D B)")
        n = max(scale.size, zp.size)
        qp = QParams(np.broadcast_to(scale, (n,)).copy(), np.broadcast_to(zp.astype(np.int64), (n,)).copy(),
                     _INT8[codes.dtype], axis=codes.ndim - 1 if n > 1 else None)
        b_in = imp._const_tensor(b + "_q", codes, qp)
    inputs = [x, b_in]
    if bias is not None:
        inputs.append(imp._const_tensor(bias + "_f", np.asarray(imp.init[bias], np.float32), None))
    clamp = _merged(clamps)
    shape = imp._shape(end) or imp._shape(node.output[0])
    imp._add_tensor(end, shape, "float32")
    attrs = {"clamp": clamp} if clamp is not None else {}
    imp._emit("DynamicMatMul", imp._name(node), inputs, [end], **attrs)


def qlinear_matmul_nd(imp, node) -> None:
    """``QLinearMatMul`` with a constant B of rank 3 or more (batched, as ORT broadcasts it): the
    IR ``MatMul`` of two operands with B a constant. When B has A's rank and a leading dimension
    k > 1, sample i of the batch is multiplied by B[i]: the batch must be exactly k, so the step
    is told k (``paired_batch``)."""
    ins = node.input
    x = imp._view_int(ins[0], node)
    imp._set_input_qparams(node, x, 1, 2)
    codes = imp._const(ins[3], node, "B")
    b_scale = np.asarray(imp._const(ins[4], node, "B scale"), np.float32).reshape(-1)
    b_zp = np.asarray(imp._const(ins[5], node, "B zero point")).reshape(-1)
    if b_scale.size != 1 or b_zp.size != 1:
        raise UnsupportedOpError(node.op_type, _where(node), "a batched B needs one scale and zero point")
    if codes.dtype not in _INT8:
        raise UnsupportedOpError(node.op_type, _where(node), f"B is {codes.dtype}")
    b = imp._const_tensor(ins[3] + "_q", codes, QParams(b_scale, b_zp.astype(np.int64), _INT8[codes.dtype]))
    a_shape = tuple(imp.tensors[x].shape)
    if len(a_shape) < 2 or a_shape[-1] != codes.shape[-2]:
        raise ModelError(f"node {_where(node)!r} (QLinearMatMul): cannot multiply {list(a_shape)} "
                         f"by {list(codes.shape)}")
    paired = codes.shape[0] if codes.ndim == len(a_shape) and codes.shape[0] > 1 else 0
    try:
        lead = np.broadcast_shapes(tuple(1 if d is None else d for d in a_shape[1:-2]),
                                   codes.shape[1:-2] if paired or codes.ndim == len(a_shape)
                                   else codes.shape[:-2])
    except ValueError:
        raise ModelError(f"node {_where(node)!r} (QLinearMatMul): the leading dimensions of "
                         f"{list(a_shape)} and {list(codes.shape)} do not broadcast") from None
    if codes.ndim > len(a_shape):
        raise UnsupportedOpError(node.op_type, _where(node), f"B of rank {codes.ndim} would add "
                                 f"dimensions before the batch of A (rank {len(a_shape)})")
    y_qp = imp._qop_out(node, node.output[0], 6, 7, like=imp.init.get(ins[7]))
    imp._add_tensor(node.output[0], (None,) + tuple(lead) + (a_shape[-2], codes.shape[-1]), y_qp.dtype, y_qp)
    attrs = {"paired_batch": int(paired)} if paired else {}
    imp._emit("MatMul", imp._name(node), [x, b], [node.output[0]], **attrs)


def conv_integer(imp, node) -> bool:
    """``ConvInteger`` reading a DynamicQuantizeLinear: the Cast/Mul/Add chain after it becomes
    one IR ``DynamicConv`` (ORT runs the chain unfused, with the same single roundings); returns
    False for a ConvInteger with constant zero points (the plain path)."""
    st = _state(imp)
    ins = list(node.input) + [""] * 4
    x, w, x_zp, w_zp = ins[:4]
    if id(node) not in st.chains:
        if x in st.sources or x_zp in st.sources:
            raise UnsupportedOpError(node.op_type, _where(node), "a ConvInteger of dynamically "
                                     "quantized codes is simulated only as quantize_dynamic writes "
                                     "it (Cast, Mul by the scales, Add of the bias)")
        return False
    end, bias, clamps, w_scale = st.chains[id(node)]
    codes = imp._const(w, node, "weight")
    scale = np.asarray(imp.init[w_scale], np.float32).reshape(-1)
    zp = np.asarray(imp.init[w_zp]).reshape(-1) if w_zp else np.zeros(1, codes.dtype)
    if codes.dtype not in _INT8 or scale.size != 1 or zp.size != 1:
        raise UnsupportedOpError(node.op_type, _where(node), "a dynamically quantized conv needs "
                                 "8-bit weights with one scale and zero point")
    qp = QParams(scale, zp.astype(np.int64), _INT8[codes.dtype])
    inputs = [st.sources[x][0], imp._const_tensor(w + "_q", codes, qp)]
    if bias is not None:
        inputs.append(imp._const_tensor(bias + "_f", np.asarray(imp.init[bias], np.float32).reshape(-1), None))
    clamp = _merged(clamps)
    imp._add_tensor(end, imp._shape(end) or imp._shape(node.output[0]), "float32")
    attrs = imp._conv_attrs(node, _attrs(node), x, codes.shape)
    if clamp is not None:
        attrs["clamp"] = clamp
    imp._emit("DynamicConv", imp._name(node), inputs, [end], **attrs)
    return True


def _clamp_chain(imp, end: str) -> tuple:
    """Follow single-reader float Relu/Clip nodes from ``end``: (last tensor, clamps, nodes)."""
    clamps, folded = [], []
    while end not in imp.graph_outputs and len(_users(imp, end)) == 1 \
            and _users(imp, end)[0].op_type in ("Relu", "Clip"):
        user = _users(imp, end)[0]
        clamps.append(imp._clamp_bounds(user))
        folded.append(user)
        end = user.output[0]
    return end, clamps, folded


def fused_dynamic_matmul(imp, node) -> None:
    """ORT's own fused forms, as a model saved after ORT's graph optimizations holds them:
    com.microsoft ``DynamicQuantizeMatMul(A float, B, B_scale, B_zp, bias)`` and
    ``MatMulIntegerToFloat(A codes, B, A_scale, B_scale, A_zp, B_zp, bias)`` with A from a
    DynamicQuantizeLinear: the IR ``DynamicMatMul`` (a Relu/Clip after it fused)."""
    st = _state(imp)
    ins = list(node.input) + [""] * 7
    if node.op_type == "DynamicQuantizeMatMul":
        x, b, b_scale, b_zp, bias = ins[0], ins[1], ins[2], ins[3], ins[4]
        _float_source(imp, node, x)
    else:
        a, b, a_scale, b_scale, a_zp, b_zp, bias = ins[:7]
        source = st.sources.get(a, (None, ""))
        if source[1] != "codes" or st.sources.get(a_scale) != (source[0], "scale") or \
                st.sources.get(a_zp) != (source[0], "zero_point"):
            raise UnsupportedOpError(node.op_type, _where(node), "A must come from a "
                                     "DynamicQuantizeLinear (its codes, scale and zero point)")
        x = source[0]
    if b not in imp.init or b_scale not in imp.init or (b_zp and b_zp not in imp.init) or \
            (bias and bias not in imp.init):
        raise UnsupportedOpError(node.op_type, _where(node), "B, its scale and zero point and the "
                                 "bias must be constants")
    end, clamps, folded = _clamp_chain(imp, node.output[0])
    for n in folded:
        imp.done.add(id(n))
    st.chains[id(node)] = (end, bias or None, clamps, b_scale)
    # the fused op's inputs in MatMulInteger's order, for _dynamic_matmul
    proxy = onnx.helper.make_node("MatMulInteger", ["", b, "", b_zp], list(node.output),
                                  name=node.name)
    st.chains[id(proxy)] = st.chains.pop(id(node))
    _dynamic_matmul(imp, proxy, x=x)
