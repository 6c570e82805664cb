"""QuantizeLinear whose scale (and zero point) are computed at run time by float ops of the graph
-> the IR op ``QuantizeRuntime`` (float32 x, scale, zero point -> codes), lowered to the step
``quantize_runtime``: per-tensor only, with the arithmetic of the profile's quantize. This is the
end of the expanded DynamicQuantizeLinear function (ReduceMin/ReduceMax -> ... -> Cast -> Q)."""
from __future__ import annotations

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError

_CODE_TYPES = ("int8", "uint8", "int16", "uint16")


def _where(node) -> str:
    return node.name or node.output[0]


def _runtime(imp, name: str) -> bool:
    """Computed by the graph's float ops (a graph input scale is the importer's clear error: the
    simulator wants it frozen, import_onnx(..., constants=...))."""
    t = imp.tensors.get(name)
    return bool(name) and name not in imp.init and t is not None and not t.is_const \
        and name not in imp.alias and name not in imp.graph_inputs


def handles(imp, node) -> bool:
    """Import a QuantizeLinear with a run-time scale or zero point; False for constant ones."""
    from mrq.onnx_import_float import _float_input
    scale = node.input[1]
    zp = node.input[2] if len(node.input) > 2 else ""
    if not (_runtime(imp, scale) or _runtime(imp, zp)):
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size", 0):
        raise UnsupportedOpError("QuantizeLinear", _where(node), "blocked quantization with a "
                                 "run-time scale")
    for name, what in ((scale, "scale"), (zp, "zero point")):
        if name and name not in imp.tensors and name not in imp.init:
            raise ModelError(f"node {_where(node)!r} (QuantizeLinear): its {what} {name!r} is "
                             f"no tensor mrq holds")
        shape = imp.tensors[name].shape if name in imp.tensors else np.shape(imp.init[name])
        if name and (len(shape) > 1 or (len(shape) == 1 and shape[0] != 1)):
            raise UnsupportedOpError("QuantizeLinear", _where(node), f"a run-time {what} of shape "
                                     f"{list(shape)} (per-tensor run-time parameters only)")
    scale_t = scale if scale in imp.tensors else _float_input(imp, node, scale)
    if imp.tensors[scale_t].dtype != "float32":
        raise ModelError(f"node {_where(node)!r}: scale {scale!r} is {imp.tensors[scale_t].dtype}")
    if not zp:
        code = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(attrs.get("output_dtype", 0) or 2))).name
        zp_t = imp._const_tensor(f"{_where(node)}_zero_point", np.zeros((), code), None)
    elif zp in imp.tensors:
        zp_t = zp
    else:
        zp_t = imp._const_tensor(zp + "_zp", np.asarray(imp.init[zp]), None)
    code = imp.tensors[zp_t].dtype
    if code not in _CODE_TYPES:
        raise UnsupportedOpError("QuantizeLinear", _where(node), f"{code} codes with a run-time "
                                 f"scale (8- and 16-bit integers only)")
    x = _float_input(imp, node, node.input[0])
    info = np.iinfo(np.dtype(code))
    out = imp._add_tensor(node.output[0], tuple(imp.tensors[x].shape), code)
    imp._emit("QuantizeRuntime", imp._name(node), [x, scale_t, zp_t], [out], out_dtype=code,
              out_min=int(info.min), out_max=int(info.max))
    return True
