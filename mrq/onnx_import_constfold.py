"""Quantized ops whose every input is a constant: evaluated at import, in ONNX Runtime's integer
arithmetic, into constant codes.

Detector heads build their anchor grids from the input's shape (``Shape -> Gather -> Range``) and
a QDQ quantizer wraps the arithmetic on them (``Range + 0.5``, ``* stride``) in QuantizeLinear /
DequantizeLinear like any other tensor. Once the input size is fixed those are constants, but
ORT still runs the QLinearAdd/QLinearMul its QDQ fusion makes of them (it never constant-folds a
DequantizeLinear). mrq runs the same IR op once, here, through the simulator under the
``onnxruntime-cpu`` arithmetic, and the QuantizeLinear output becomes a constant initializer:
later Shape, Reshape and Expand nodes then see a static shape and fold too.
"""
from __future__ import annotations

import numpy as np

from mrq.ir import Graph, Tensor

# the arithmetic ORT computes the folded op in, whatever profile the model is later lowered for
_PROFILE = "onnxruntime-cpu"
_FOLDABLE = ("Add", "Mul", "Sub", "Concat")
_arith_cache: list = []


def _ort_arithmetic():
    if not _arith_cache:
        from mrq.lower import arithmetic_from_profile
        from mrq.pipeline import resolve_profile
        _arith_cache.append(arithmetic_from_profile(resolve_profile(_PROFILE)))
    return _arith_cache[0]


def fold_last(imp, out: str) -> bool:
    """If the IR node just emitted for ``out`` reads only constants, replace it by its value:
    ``imp.init[out]`` holds the codes (the DequantizeLinear after it then sees a constant)."""
    if not imp.nodes or imp.nodes[-1].outputs != [out]:
        return False
    node = imp.nodes[-1]
    if node.op not in _FOLDABLE or not node.inputs or \
            not all(imp.tensors[n].is_const for n in node.inputs):
        return False
    codes = evaluate(imp, node)
    imp.nodes.pop()
    del imp.tensors[out]
    imp.init[out] = codes
    imp.shapes[out] = tuple(codes.shape)
    return True


def evaluate(imp, node) -> np.ndarray:
    """The output codes of IR ``node`` on its constant inputs: a one-node program (every input
    a graph input of batch 1) lowered for ORT and run by the simulator."""
    from mrq.lower import lower
    from simulator.run import run
    tensors, feeds = {}, {}
    for name in dict.fromkeys(node.inputs):
        t = imp.tensors[name]
        data = np.asarray(t.data)
        tensors[name] = Tensor(name, (None,) + tuple(data.shape), t.dtype, t.qparams)
        feeds[name] = data[None]
    y = imp.tensors[node.outputs[0]]
    shape = np.broadcast_shapes(*(np.shape(imp.tensors[n].data) for n in node.inputs)) \
        if node.op != "Concat" else None
    tensors[y.name] = Tensor(y.name, (None,) + tuple(shape) if shape is not None else (None,),
                             y.dtype, y.qparams)
    if node.op == "Concat":   # the axis of the batch-1 copies is one further
        node = type(node)(node.op, node.name, list(node.inputs), list(node.outputs),
                          {**node.attrs, "axis": _concat_axis(imp, node) + 1})
        tensors[y.name] = Tensor(y.name, _concat_shape(imp, node), y.dtype, y.qparams)
    graph = Graph(tensors, [node], list(feeds), [y.name], name="fold", meta={})
    lowered = lower(graph, _ort_arithmetic())
    result = run(lowered.program, feeds, compile="no")
    return np.asarray(result.outputs[y.name])[0]


def _concat_axis(imp, node) -> int:
    rank = np.ndim(imp.tensors[node.inputs[0]].data)
    return int(node.attrs["axis"]) % rank


def _concat_shape(imp, node) -> tuple:
    axis = int(node.attrs["axis"]) - 1
    arrays = [np.asarray(imp.tensors[n].data) for n in node.inputs]
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    return (None,) + tuple(shape)


def constant_output(imp, out: str) -> str:
    """A graph output that is a constant (an SSD head's anchor boxes, tiled over a batch of the
    one sample the input size was fixed with): its codes as a constant tensor and the
    DequantizeLinear ORT runs on them, or a float constant as is. Its leading axis is the batch,
    so the model then runs one sample at a time (``imp.batch_fixed``)."""
    from mrq.errors import ModelError
    if out in imp.consts:
        codes, qp = imp.consts[out]
        value = np.asarray(codes)
    else:
        value, qp = np.asarray(imp.init[out]), None
        if value.dtype != np.float32:
            raise ModelError(f"graph output {out!r} is a constant {value.dtype} tensor; mrq "
                             f"simulates quantized codes and float32 outputs")
    if value.ndim == 0 or value.shape[0] != 1:
        raise ModelError(f"graph output {out!r} is a constant of shape {list(value.shape)}: its "
                         f"leading axis is not a batch of one")
    imp.batch_fixed = f"graph output {out!r} is a constant computed for a batch of one"
    src = imp._const_tensor(out + "__const", value, qp)
    imp._add_tensor(out, (None,) + value.shape[1:], "float32")
    imp._emit("Dequantize" if qp is not None else "Reshape", "constant_" + out, [src], [out],
              **({} if qp is not None else {"shape": None}))
    return out


_FLOAT_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def fold_float_constants(imp, node) -> bool:
    """A float Add/Sub/Mul/Div of constants one of which is a dequantized constant (T5's
    relative-position bias plus its causal mask, both fixed once the sequence length is): ORT
    dequantizes at run time and computes one float32 operation, as here. Pure-initializer ops
    are folded by mrq/onnx_import_movement.py."""
    if node.op_type not in _FLOAT_BINARY or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return False
    ins = list(node.input)
    if not any(i in imp.consts for i in ins) or \
            not all(i in imp.consts or (i in imp.init and np.asarray(imp.init[i]).dtype == np.float32)
                    for i in ins):
        return False
    from mrq.onnx_import_islands import ort_dequantize_constant
    a, b = (ort_dequantize_constant(*imp.consts[i]) if i in imp.consts else np.asarray(imp.init[i])
            for i in ins)
    with np.errstate(all="ignore"):
        imp.init[node.output[0]] = np.asarray(_FLOAT_BINARY[node.op_type](a, b), np.float32)
    return True
