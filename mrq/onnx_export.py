"""IR -> standard ONNX QDQ model.

Every integer tensor becomes a QuantizeLinear output; ops compute in float between
DequantizeLinear and QuantizeLinear, exactly as ONNX Runtime's quantization tool writes them, so
the result loads in any ONNX runtime and re-imports into the same IR. Clamps (fused Relu/Clip,
including clamps that the old grid only implied) are written as explicit Clip nodes, so a
runtime that ignores the grid still sees them.

Code widths: a grid of at most 4 bits is written as ONNX INT4/UINT4 (opset 21), so ONNX
Runtime clamps to it too; graph inputs and outputs keep int8/uint8, which numpy callers can
feed and fetch. What the ONNX type cannot say (a width other than 4/8/16 bits, a narrow range,
a 4-bit grid at a graph input or output) travels in the model property
:data:`mrq.onnx_import.CODE_GRIDS_KEY`, keyed by the zero-point initializer of each Quantize/
DequantizeLinear, so a written model re-imports with the grids it was simulated with.
ONNX Runtime (1.32) runs INT4 activations with ``graph_optimization_level`` at most
``ORT_ENABLE_BASIC``: its extended QDQ rewrites (ClipQuantFusion, integer MaxPool) reject them.
"""
from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mrq.errors import ModelError, UnsupportedOpError
from mrq.ir import Graph, Node, QParams, dtype_range, storage_dtype
from mrq.onnx_export_islands import FloatIslandExport
from mrq.onnx_import import CODE_GRIDS_KEY
from mrq.pointwise import POINTWISE

_ELEM = {"float32": TensorProto.FLOAT, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
         "int16": TensorProto.INT16, "uint16": TensorProto.UINT16, "int32": TensorProto.INT32,
         "int64": TensorProto.INT64, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}
# numpy types that onnx.numpy_helper writes as INT4/UINT4 (packed two codes a byte)
_NUMPY_CODES = {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4}
LOW_BIT_OPSET = 21   # the first opset with INT4/UINT4 QuantizeLinear/DequantizeLinear
MEAN_OPSET = 18      # ReduceMean's axes as an input (one form to write)


def grid_bits(qp: QParams) -> int:
    """The code width of a grid (4-bit codes held in int8 have 4)."""
    if qp.bits is not None:
        return qp.bits
    lo, hi = dtype_range(qp.dtype)
    return int(hi - lo).bit_length()


class _Exporter(FloatIslandExport):
    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes: list = []
        self.inits: list = []
        self.dq_names: dict = {}
        self.used: set = set(graph.tensors)
        self.wide = any(t.qparams is not None and storage_dtype(t.dtype) in ("int16", "uint16")
                        and not t.is_const for t in graph.tensors.values())
        self.io_names = set(graph.inputs) | set(graph.outputs)
        self.low_bit = any(self.code_dtype(n) in _NUMPY_CODES for n in graph.tensors)
        self.code_grids: dict = {}    # zero-point initializer -> what its ONNX type cannot say

    def code_dtype(self, name: str) -> str:
        """The ONNX code type of integer tensor ``name``: INT4/UINT4 for grids of at most 4
        bits, except at graph inputs and outputs (see the module docstring)."""
        t = self.g.tensors[name]
        storage = storage_dtype(t.dtype)
        if t.qparams is None or name in self.io_names or storage not in ("int8", "uint8"):
            return storage
        return ("int4" if storage == "int8" else "uint4") if grid_bits(t.qparams) <= 4 else storage

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qparam_inits(self, base: str, qp: QParams, code_dtype: str):
        """Scale and zero-point initializers of grid ``qp`` written as ``code_dtype`` codes; the
        grid's width and narrow range go to the model property when the type does not say them."""
        scale = qp.scale.astype(np.float32)
        zp = _codes(qp.zero_point, code_dtype, base + " zero point")
        if qp.scale.size == 1:
            scale, zp = scale.reshape(()), zp.reshape(())
        zp_name = self.init(base + "_zero_point", zp)
        if grid_bits(qp) != grid_bits(QParams(1.0, 0, code_dtype)) or qp.narrow_range:
            self.code_grids[zp_name] = {"bits": grid_bits(qp), "narrow_range": bool(qp.narrow_range)}
        return self.init(base + "_scale", scale), zp_name

    def float_view(self, name: str) -> str:
        """The float (dequantized) name of an integer tensor, emitting its DequantizeLinear once."""
        if name in self.dq_names:
            return self.dq_names[name]
        t = self.g.tensors[name]
        if t.qparams is None:
            return name
        src = name
        dtype = self.code_dtype(name)
        if dtype == "int64":
            # ONNX DequantizeLinear has no int64 input: wide biases travel as int32 when
            # their values fit (the accumulator stays as wide as the profile says).
            dtype = "int32"
        if t.is_const:
            src = self.init(name, _codes(np.asarray(t.data), dtype, f"tensor {name!r}"))
        qp = t.qparams if storage_dtype(t.dtype) != "int64" else t.qparams.with_(dtype="int32")
        s, z = self.qparam_inits(name, qp, dtype)
        out = self.fresh(name + "_dq")
        attrs = {}
        if t.qparams.per_channel:
            attrs["axis"] = int(t.qparams.axis)
        self.nodes.append(helper.make_node("DequantizeLinear", [src, s, z], [out], name=self.fresh("DQ_" + name), **attrs))
        self.dq_names[name] = out
        return out

    def quantize(self, float_name: str, out: str, qp: QParams, tensor: str | None = None):
        """QuantizeLinear onto ``qp`` into ``out``, typed as IR tensor ``tensor`` (default:
        ``out``) is."""
        s, z = self.qparam_inits(out, qp, self.code_dtype(tensor or out))
        self.nodes.append(helper.make_node("QuantizeLinear", [float_name, s, z], [out], name=self.fresh("Q_" + out)))

    def clamp(self, name: str, clamp, base: str) -> str:
        if clamp is None:
            return name
        lo, hi = clamp
        if lo is None and hi is None:
            return name
        out = self.fresh(base + "_clamped")
        if lo == 0.0 and hi is None:
            self.nodes.append(helper.make_node("Relu", [name], [out], name=self.fresh(base + "_relu")))
            return out
        lo_name = self.init(base + "_min", np.array(lo if lo is not None else -np.inf, np.float32))
        hi_name = self.init(base + "_max", np.array(hi if hi is not None else np.inf, np.float32))
        self.nodes.append(helper.make_node("Clip", [name, lo_name, hi_name], [out], name=self.fresh(base + "_clip")))
        return out

    def nchw(self, name: str, layout: str, base: str) -> str:
        if layout != "NHWC":
            return name
        out = self.fresh(base + "_nchw")
        self.nodes.append(helper.make_node("Transpose", [name], [out], perm=[0, 3, 1, 2], name=self.fresh(base + "_transpose")))
        return out

    def finish(self, node: Node, y_float: str, to_nhwc: bool = False):
        """Clamp, quantize onto the output grid; ``to_nhwc``: the op ran in NCHW for a channels-last
        model, so the integer codes are transposed back (an integer Transpose keeps the float
        island Conv -> Clip -> QuantizeLinear that every QDQ importer recognises)."""
        out = node.outputs[0]
        t = self.g.tensors[out]
        y_float = self.clamp(y_float, node.attrs.get("clamp"), node.name)
        if t.qparams is None:
            self.nodes.append(helper.make_node("Identity", [y_float], [out], name=self.fresh(node.name + "_out")))
        elif to_nhwc:
            codes = self.fresh(out + "_nchw")
            self.quantize(y_float, codes, t.qparams, tensor=out)
            self.nodes.append(helper.make_node("Transpose", [codes], [out], perm=[0, 2, 3, 1],
                                               name=self.fresh(node.name + "_to_nhwc")))
        else:
            self.quantize(y_float, out, t.qparams)

    def export(self, opset: int | None = None) -> onnx.ModelProto:
        for node in self.g.nodes:
            if node.op in POINTWISE:
                self._pointwise(node)
            elif hasattr(self, "_" + node.op):
                getattr(self, "_" + node.op)(node)
            else:
                # e.g. TFLite's integer LSTM/SVDF: ONNX QDQ has no form that keeps their arithmetic
                raise UnsupportedOpError(node.op, node.name, "mrq cannot write it as ONNX QDQ "
                                         "(the format `mrq requant` writes)")
        g = self.g
        inputs = [helper.make_tensor_value_info(n, _ELEM[self.code_dtype(n)],
                                                _dims(g.tensors[n].shape)) for n in g.inputs]
        outputs = [helper.make_tensor_value_info(n, _ELEM[self.code_dtype(n)],
                                                 _dims(g.tensors[n].shape)) for n in g.outputs]
        graph = helper.make_graph(self.nodes, g.name or "mrq", inputs, outputs, self.inits)
        # the newest op's opset (Gelu: 20) when no opset is asked for
        needed = max([POINTWISE[n.op].opset for n in self.g.nodes if n.op in POINTWISE], default=1)
        if any(n.op == "Mean" for n in self.g.nodes):
            needed = max(needed, MEAN_OPSET)
        if self.low_bit:
            if opset is not None and opset < LOW_BIT_OPSET:
                raise ModelError(f"opset {opset} cannot hold the model's 4-bit grids (INT4/UINT4 "
                                 f"QuantizeLinear needs opset {LOW_BIT_OPSET})")
            needed = max(needed, LOW_BIT_OPSET)
        opset = opset or max(21 if self.wide else 17, needed)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="mrq")
        model.ir_version = 10 if opset >= 21 else 9 if opset >= 19 else 8
        props = {}
        regridded = g.meta.get("regridded_inputs")
        if regridded:
            from mrq.onnx_import import REGRIDDED_INPUTS_KEY
            props[REGRIDDED_INPUTS_KEY] = json.dumps(regridded)
        if self.code_grids:
            props[CODE_GRIDS_KEY] = json.dumps(self.code_grids, sort_keys=True)
        if props:
            helper.set_model_props(model, props)
        return model

    # ---------------------------------------------------------------------- ops
    def _Quantize(self, node):
        self.quantize(node.inputs[0], node.outputs[0], self.g.tensors[node.outputs[0]].qparams)

    def _Dequantize(self, node):
        src = self.float_view(node.inputs[0])
        self.nodes.append(helper.make_node("Identity", [src], [node.outputs[0]], name=self.fresh(node.name)))

    def _Conv(self, node):
        at = node.attrs
        if at.get("integer_output"):
            raise NotImplementedError("exporting integer-output convolutions")
        layout = at.get("layout", "NCHW")
        x = self.nchw(self.float_view(node.inputs[0]), layout, node.name)
        ins = [x] + [self.float_view(n) for n in node.inputs[1:]]
        y = self.fresh(node.name + "_y")
        w = self.g.tensors[node.inputs[1]].data
        self.nodes.append(helper.make_node(
            "Conv", ins, [y], name=self.fresh(node.name), kernel_shape=list(w.shape[2:]),
            strides=list(at["strides"]), pads=list(at["pads"]), dilations=list(at["dilations"]),
            group=int(at["group"])))
        self.finish(node, y, to_nhwc=layout == "NHWC")

    def _Gemm(self, node):
        a = self.float_view(node.inputs[0])
        w = self.float_view(node.inputs[1])
        if len(node.inputs) > 2:
            # the bias's DequantizeLinear before the MatMul: the importer fuses MatMul -> Add of a
            # constant it has already read (mrq.onnx_import._matmul_bias_add)
            self.float_view(node.inputs[2])
        y = self.fresh(node.name + "_y")
        rank = len(self.g.tensors[node.inputs[0]].shape)
        if rank == 2:
            ins = [a, w] + ([self.float_view(node.inputs[2])] if len(node.inputs) > 2 else [])
            self.nodes.append(helper.make_node("Gemm", ins, [y], name=self.fresh(node.name)))
        else:
            mm = self.fresh(node.name + "_matmul")
            self.nodes.append(helper.make_node("MatMul", [a, w], [mm if len(node.inputs) > 2 else y],
                                               name=self.fresh(node.name)))
            if len(node.inputs) > 2:
                self.nodes.append(helper.make_node("Add", [mm, self.float_view(node.inputs[2])], [y],
                                                   name=self.fresh(node.name + "_bias")))
        self.finish(node, y)

    def _MatMul(self, node):
        """Two activations (attention; or a batched constant B): DQ -> MatMul -> Q, the form ORT's
        QDQ rewrite runs as QLinearMatMul and mrq re-imports as the same IR MatMul."""
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("MatMul", [self.float_view(n) for n in node.inputs], [y],
                                           name=self.fresh(node.name)))
        self.finish(node, y)

    def _TransposeConv(self, node):
        """IR weight [C_out, C_in, kH, kW] (per-channel axis 0) written as ONNX's [C_in, C_out, kH,
        kW] (axis 1); the output size as end pads and output_padding. A channels-last (TFLite)
        one runs in NCHW between Transposes, as an NHWC Conv does."""
        at = node.attrs
        layout = at.get("layout", "NCHW")
        w = self.g.tensors[node.inputs[1]]
        codes = np.ascontiguousarray(np.asarray(w.data).transpose(1, 0, 2, 3))
        dtype = self.code_dtype(node.inputs[1])
        qp = w.qparams.with_(axis=1) if w.qparams.per_channel else w.qparams
        src = self.init(node.inputs[1], _codes(codes, dtype, f"tensor {node.inputs[1]!r}"))
        s, z = self.qparam_inits(node.inputs[1], qp, dtype)
        w_float = self.fresh(node.inputs[1] + "_dq")
        self.nodes.append(helper.make_node("DequantizeLinear", [src, s, z], [w_float],
                                           name=self.fresh("DQ_" + node.inputs[1]),
                                           **({"axis": 1} if qp.per_channel else {})))
        x = self.nchw(self.float_view(node.inputs[0]), layout, node.name)
        ins = [x, w_float] + [self.float_view(n) for n in node.inputs[2:3]]
        in_shape = self.g.tensors[node.inputs[0]].shape
        in_hw = in_shape[1:3] if layout == "NHWC" else in_shape[2:]
        begin = [int(p) for p in at["pads"]]
        full = [(int(n) - 1) * int(st) + int(k) - b for n, st, k, b
                in zip(in_hw, at["strides"], codes.shape[2:], begin)]   # size with no end pad
        end = [max(f - int(o), 0) for f, o in zip(full, at["output_size"])]
        extra = [int(o) - (f - e) for o, f, e in zip(at["output_size"], full, end)]
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node(
            "ConvTranspose", ins, [y], name=self.fresh(node.name), kernel_shape=list(codes.shape[2:]),
            strides=[int(v) for v in at["strides"]], pads=begin + end, output_padding=extra))
        self.finish(node, y, to_nhwc=layout == "NHWC")

    def _ResizeBilinear(self, node):
        """TFLite's RESIZE_BILINEAR as ONNX linear Resize: ``align_corners`` and
        ``half_pixel_centers`` are ONNX's coordinate modes of the same names (TF2 half-pixel
        centres clamp a negative source position to 0, as ONNX's linear interpolation does),
        neither is ``asymmetric``; channels-last runs in NCHW between Transposes."""
        at = node.attrs
        layout = at.get("layout", "NHWC")
        in_shape = tuple(self.g.tensors[node.inputs[0]].shape)
        if len(in_shape) != 4:
            raise UnsupportedOpError("ResizeBilinear", node.name, "only a 4-D resize can be written")
        if at.get("align_corners") and at.get("half_pixel_centers"):
            raise UnsupportedOpError("ResizeBilinear", node.name, "align_corners with "
                                     "half_pixel_centers has no ONNX coordinate mode")
        coord = ("align_corners" if at.get("align_corners") else
                 "half_pixel" if at.get("half_pixel_centers") else "asymmetric")
        in_hw = in_shape[1:3] if layout == "NHWC" else in_shape[2:]
        x = self.nchw(self.float_view(node.inputs[0]), layout, node.name)
        y = self.fresh(node.name + "_y")
        # scales, not sizes: sizes would fix the batch; ONNX derives the positions from
        # f32(out / in) either way and the output size as floor(scale * in), in float32 (ORT's
        # kernel, mrq) or double (ONNX shape inference): the scale is nudged up until both reach
        # the size
        scales = [np.float32(1.0), np.float32(1.0)]
        for n, out in zip(in_hw, at["size"]):
            s = np.float32(np.float32(out) / np.float32(n))
            while min(int(np.float32(s * np.float32(n))), int(float(s) * int(n))) < int(out):
                s = np.nextafter(s, np.float32(np.inf))
            scales.append(s)
        self.nodes.append(helper.make_node(
            "Resize", [x, "", self.init(node.name + "_scales", np.array(scales, np.float32))], [y],
            mode="linear", coordinate_transformation_mode=coord, name=self.fresh(node.name)))
        self.finish(node, y, to_nhwc=layout == "NHWC")

    def _Resize(self, node):
        """Bilinear resize: the IR holds ORT's sample positions and weights, not the ONNX
        coordinate mode, so the mode written is the one whose positions are the node's."""
        from mrq.onnx_import_movement import _COORD_MODES, resize_linear_attrs
        at = node.attrs
        in_shape = tuple(self.g.tensors[node.inputs[0]].shape)
        if at.get("layout", "NCHW") != "NCHW" or len(in_shape) != 4:
            raise UnsupportedOpError("Resize", node.name, "only a 4-D NCHW resize can be written")
        sizes = (1, int(in_shape[1])) + tuple(int(d) for d in at["size"])
        scales = np.array([1.0, 1.0] + [np.float32(o) / np.float32(i) for o, i in zip(sizes[2:], in_shape[2:])],
                          np.float32)
        keys = ("y_lo", "y_hi", "wy_lo", "wy_hi", "x_lo", "x_hi", "wx_lo", "wx_hi")

        def same(coord):
            want = resize_linear_attrs(in_shape, sizes, scales, coord)
            return all(np.array_equal(np.asarray(want[k]), np.asarray(at[k])) for k in keys)
        coord = next((c for c in _COORD_MODES if same(c)), None)
        if coord is None:
            raise UnsupportedOpError("Resize", node.name, "its sample positions match no ONNX "
                                     "coordinate_transformation_mode at these scales")
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node(
            "Resize", [self.float_view(node.inputs[0]), "", self.init(node.name + "_scales", scales)], [y],
            mode="linear", coordinate_transformation_mode=coord, name=self.fresh(node.name)))
        self.finish(node, y)

    def _ArgMax(self, node):
        """Index of the largest (``select`` min: smallest) code; on the dequantized values it is
        the same index (a positive scale keeps the order and the ties)."""
        op = {"max": "ArgMax", "min": "ArgMin"}[node.attrs.get("select", "max")]
        # int64 indices: written straight into the output (an Identity of int64 does not re-import)
        self.nodes.append(helper.make_node(op, [self.float_view(node.inputs[0])], [node.outputs[0]],
                                           keepdims=0, axis=int(node.attrs["axis"]), name=self.fresh(node.name)))

    def _binary(self, node, op):
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node(op, [self.float_view(n) for n in node.inputs], [y], name=self.fresh(node.name)))
        self.finish(node, y)

    def _Add(self, node):
        self._binary(node, "Add")

    def _Mul(self, node):
        self._binary(node, "Mul")

    def _Sub(self, node):
        self._binary(node, "Sub")

    def _Clamp(self, node):
        x = self.float_view(node.inputs[0])
        y = self.clamp(x, (node.attrs.get("lo"), node.attrs.get("hi")), node.name)
        self.finish(node, y)

    def _Rescale(self, node):
        self.finish(node, self.float_view(node.inputs[0]))

    def _pool(self, node, op, **extra):
        at = node.attrs
        layout = at.get("layout", "NCHW")
        x = self.nchw(self.float_view(node.inputs[0]), layout, node.name)
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node(op, [x], [y], name=self.fresh(node.name), **extra))
        self.finish(node, y, to_nhwc=layout == "NHWC")

    def _MaxPool(self, node):
        at = node.attrs
        self._pool(node, "MaxPool", kernel_shape=list(at["kernel"]), strides=list(at["strides"]),
                   pads=list(at["pads"]), dilations=list(at.get("dilations", (1, 1))),
                   ceil_mode=int(at.get("ceil_mode", 0)))

    def _AveragePool(self, node):
        at = node.attrs
        self._pool(node, "AveragePool", kernel_shape=list(at["kernel"]), strides=list(at["strides"]),
                   pads=list(at["pads"]), ceil_mode=int(at.get("ceil_mode", 0)),
                   count_include_pad=int(at.get("count_include_pad", 0)))

    def _GlobalAveragePool(self, node):
        self._pool(node, "GlobalAveragePool")

    def _Concat(self, node):
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("Concat", [self.float_view(n) for n in node.inputs], [y],
                                           axis=int(node.attrs["axis"]), name=self.fresh(node.name)))
        self.finish(node, y)

    def _Reshape(self, node):
        x = self.float_view(node.inputs[0])
        y = self.fresh(node.name + "_y")
        shape = node.attrs.get("shape")
        if shape is None:
            self.nodes.append(helper.make_node("Identity", [x], [y], name=self.fresh(node.name)))
        else:
            s = self.init(node.name + "_shape", np.array(shape, np.int64))
            self.nodes.append(helper.make_node("Reshape", [x, s], [y], name=self.fresh(node.name)))
        self.finish(node, y)

    def _Transpose(self, node):
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("Transpose", [self.float_view(node.inputs[0])], [y],
                                           perm=list(node.attrs["perm"]), name=self.fresh(node.name)))
        self.finish(node, y)

    def _Softmax(self, node):
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("Softmax", [self.float_view(node.inputs[0])], [y],
                                           axis=int(node.attrs.get("axis", -1)), name=self.fresh(node.name)))
        self.finish(node, y)

    def _pointwise(self, node):
        op = POINTWISE[node.op]
        y = self.fresh(node.name + "_y")
        attrs = {k: node.attrs.get(k, d) for k, d in op.attrs.items()}
        self.nodes.append(helper.make_node(op.onnx_op, [self.float_view(node.inputs[0])], [y],
                                           name=self.fresh(node.name), **attrs))
        self.finish(node, y)

    def _Pad(self, node):
        pads = [(int(a), int(b)) for a, b in node.attrs["pads"]]
        begins_ends = self.init(node.name + "_pads", np.array([a for a, _ in pads] + [b for _, b in pads], np.int64))
        value = self.init(node.name + "_value", np.array(float(node.attrs.get("value", 0.0)), np.float32))
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("Pad", [self.float_view(node.inputs[0]), begins_ends, value], [y],
                                           mode="constant", name=self.fresh(node.name)))
        self.finish(node, y)

    def _Mean(self, node):
        axes = self.init(node.name + "_axes", np.array([int(a) for a in node.attrs["axes"]], np.int64))
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("ReduceMean", [self.float_view(node.inputs[0]), axes], [y],
                                           keepdims=int(bool(node.attrs.get("keep_dims", False))),
                                           name=self.fresh(node.name)))
        self.finish(node, y)

    def _Take(self, node):
        """Any pure data movement (TFLite slices, splits, tiles, depth/space): a constant Gather
        on the flattened sample, which re-imports as the same Take."""
        flat = self.fresh(node.name + "_flat")
        self.nodes.append(helper.make_node(
            "Reshape", [self.float_view(node.inputs[0]), self.init(node.name + "_flat_shape", np.array([0, -1], np.int64))],
            [flat], name=self.fresh(node.name + "_flatten")))
        taken = self.fresh(node.name + "_taken")
        self.nodes.append(helper.make_node(
            "Gather", [flat, self.init(node.name + "_source", np.asarray(node.attrs["source"], np.int64))],
            [taken], axis=1, name=self.fresh(node.name)))
        y = self.fresh(node.name + "_y")
        shape = np.array((0,) + tuple(int(d) for d in node.attrs["shape"]), np.int64)
        self.nodes.append(helper.make_node("Reshape", [taken, self.init(node.name + "_shape", shape)], [y],
                                           name=self.fresh(node.name + "_reshape")))
        self.finish(node, y)

    def _Logistic(self, node):
        y = self.fresh(node.name + "_y")
        self.nodes.append(helper.make_node("Sigmoid", [self.float_view(node.inputs[0])], [y], name=self.fresh(node.name)))
        self.finish(node, y)


def _codes(values: np.ndarray, code_dtype: str, what: str) -> np.ndarray:
    """``values`` as an array of ONNX code type ``code_dtype`` (INT4/UINT4 through ml_dtypes),
    refusing values the type cannot hold instead of wrapping them."""
    values = np.asarray(values)
    lo, hi = dtype_range(code_dtype)
    if values.size and (values.min() < lo or values.max() > hi):
        raise ModelError(f"{what} has values in [{values.min()}, {values.max()}], outside the "
                         f"{code_dtype} range [{lo}, {hi}] ONNX would store it in")
    return values.astype(storage_dtype(code_dtype)).astype(_NUMPY_CODES.get(code_dtype, storage_dtype(code_dtype)))


def _dims(shape):
    return [("N" if d is None else int(d)) for d in shape] if shape else None


def export_onnx(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    model = _Exporter(graph).export(opset)
    onnx.checker.check_model(model)
    return model
