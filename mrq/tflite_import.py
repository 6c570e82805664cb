"""TFLite flatbuffers (int8/uint8 "full integer" and int16x8 models) -> :mod:`mrq.ir`.

The file is parsed with the ``tflite`` package (generated flatbuffer readers; no TensorFlow).
Only the first subgraph is imported. Conventions, shared with :mod:`mrq.onnx_import`:

* IR tensor names are the TFLite tensor names, so a simulator trace can be compared with LiteRT's
  intermediate tensors (``experimental_preserve_all_tensors=True``). Tensors the importer adds
  (the flattened input of a FULLY_CONNECTED, the pre-clamp output of a MAX_POOL_2D with a fused
  activation) get names derived from the TFLite ones with a ``__`` suffix.
* Layout is kept as the model has it: activations are NHWC and 4-D ops carry
  ``attrs['layout'] = 'NHWC'``. The leading dimension of every activation is the batch (``None``).
* Weights are converted to the IR layouts: CONV_2D ``[O, KH, KW, I]`` -> ``[O, I, KH, KW]``;
  DEPTHWISE_CONV_2D ``[1, KH, KW, C*dm]`` -> ``[C*dm, 1, KH, KW]`` with ``group = C`` (output
  channel ``c*dm + m`` reads input channel ``c``, as in TFLite); FULLY_CONNECTED ``[N, K]`` ->
  ``[K, N]`` (per-channel axis 0 becomes axis 1).
* Biases: TFLite adds the int32 bias codes to the accumulator whatever scale the bias tensor
  declares, so the IR bias carries the accumulator grid ``f32(s_in * s_w[c])`` exactly.
* Fused activations become ``attrs['clamp'] = (lo, hi)`` in real values (RELU ``(0, None)``,
  RELU6 ``(0, 6)``, RELU_N1_TO_1 ``(-1, 1)``); TANH and SIGN_BIT are rejected.
* Every node has ``attrs['tflite_op']`` (builtin name) and ``attrs['tflite_index']`` (operator
  index), which the TFLite-aware lowering (:mod:`mrq.lower_extra`) uses to pick the arithmetic
  of the runtime a profile describes.

Operators and the IR they become:

==================  ==========================================================================
CONV_2D             Conv (NHWC, group = C_in / filter channels)
DEPTHWISE_CONV_2D   Conv (NHWC, group = C_in)
FULLY_CONNECTED     [Reshape to (-1, K)] + Gemm [+ Reshape back for keep_num_dims]
ADD, MUL            Add, Mul
SUB                 Sub (new IR op)
TRANSPOSE_CONV      TransposeConv (new IR op): attrs strides, pads (top, left), output_size
LEAKY_RELU          LeakyRelu (attrs alpha)
AVERAGE_POOL_2D     AveragePool (NHWC, padding excluded from the count)
MAX_POOL_2D         MaxPool (NHWC) [+ Clamp for a fused activation]
MEAN                Mean (new IR op): attrs axes (positive, sorted), keep_dims
RESHAPE             Reshape (0 keeps the batch dimension)
PAD, PADV2          Pad (new IR op): attrs pads ((before, after) per dim), value (real value)
CONCATENATION       Concat
SOFTMAX             Softmax (axis -1; attrs beta)
LOGISTIC            Logistic (new IR op)
QUANTIZE            Quantize (float input) or Rescale (integer input)
DEQUANTIZE          Dequantize
UNIDIRECTIONAL_     LSTM (int8 x int8 -> int16 integer LSTM; :mod:`mrq.tflite_import_recurrent`)
 SEQUENCE_LSTM
SVDF                Svdf (int8 input, int16 time weights and state)
(movement, shape,   :mod:`mrq.tflite_import_shape` (STRIDED_SLICE, SLICE, SPLIT(_V), PACK, UNPACK,
 selection)         SHAPE, TRANSPOSE, TILE, GATHER, SQUEEZE, EXPAND_DIMS, DEPTH/SPACE, RESIZE_*,
                    ARG_MAX/MIN, REDUCE_MAX/MIN, MAXIMUM/MINIMUM, RELU*, HARD_SWISH, TANH, CAST,
                    PRELU; CUSTOM ops are refused by index and code, ``stop_before`` cuts before)
==================  ==========================================================================

New IR ops (float semantics in :mod:`mrq.float_ref_extra`, lowering in :mod:`mrq.lower_extra`):

* ``Pad``: x; ``attrs['pads']`` tuple of (before, after) for every dimension (the batch entry is
  (0, 0)); ``attrs['value']`` the real value written into the border (TFLite PAD: 0.0, i.e. the
  output zero point).
* ``Mean``: x; ``attrs['axes']`` (positive, sorted, never 0), ``attrs['keep_dims']``.
* ``Logistic``: x -> 1 / (1 + exp(-x)).
* ``Sub``: a - b (numpy broadcasting).
* ``TransposeConv``: x (NHWC), w [O, I, KH, KW], optional bias; every input pixel adds x * w to
  the output window at ``stride * position - pad``; taps outside ``attrs['output_size']`` are
  dropped. A TRANSPOSE_CONV output shape fed at run time (a graph input) is taken from the
  output tensor's declared shape, and that input is left out of the IR graph.

int16 activations (LiteRT's 16x8 mode: int8 weights, int64 bias) must have zero point 0, as
LiteRT requires; otherwise a ``ModelError`` names the operator index and op. QUANTIZE also takes
quantized int32 tensors to or from int16; SOFTMAX int8 -> int16 has LiteRT's output zero point
-32768.

A graph input of lower rank than the other operand of ADD/SUB/MUL (a bias vector fed at run
time, as in tflite-micro's extracted SEANet layers) has no batch dimension in the file: the IR
input is ``[batch] + shape``, reshaped to ``[batch, 1, ..., 1] + shape`` before the op. The
values of run-time TRANSPOSE_CONV output shapes are in ``graph.meta['tflite_fixed_inputs']``
(tensor name -> shape) for whoever runs the model in LiteRT.

Errors: a missing or unreadable file -> :class:`~mrq.errors.ModelError`; a model without
quantized tensors -> ``ModelError`` saying it is not quantized; an operator outside the list ->
:class:`~mrq.errors.UnsupportedOpError` naming the operator index and its builtin name.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Optional

import numpy as np

from mrq import tflite_import_recurrent, tflite_import_shape
from mrq.errors import ModelError, UnsupportedOpError
from mrq.fileio import FileProblem, read_regular_file
from mrq.import_checks import MAX_MODEL_BYTES, check_graph
from mrq.ir import Graph, Node, QParams, Tensor
from mrq.tflite_op_versions import op_version_problem

_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
          7: "int16", 9: "int8", 10: "float64", 17: "int4"}
_QUANT_TYPES = ("int8", "uint8", "int16")
_ACTIVATIONS = {0: None, 1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}
_ACTIVATION_NAMES = {4: "TANH", 5: "SIGN_BIT"}

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "AVERAGE_POOL_2D",
                 "MAX_POOL_2D", "MEAN", "RESHAPE", "PAD", "PADV2", "CONCATENATION", "SOFTMAX",
                 "LOGISTIC", "QUANTIZE", "DEQUANTIZE", "SUB", "LEAKY_RELU", "TRANSPOSE_CONV",
                 "UNIDIRECTIONAL_SEQUENCE_LSTM", "SVDF")


def _module(name: str):
    """The generated module ``tflite.<name>`` (the package re-exports the class of that name)."""
    return importlib.import_module(f"tflite.{name}")


def _builtin_names() -> dict:
    ops = _module("BuiltinOperator").BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_")}


def import_tflite(path: str, stop_before: int | None = None) -> Graph:
    """Read a quantized ``.tflite`` file into the IR; ``stop_before``: import only the operators
    before that index, whose inputs become the graph outputs (to simulate up to a CUSTOM op)."""
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    try:
        # a regular file of at most 2 GiB (a flatbuffer cannot be larger): never a FIFO or /dev/zero
        data = read_regular_file(path, MAX_MODEL_BYTES, "model file")
    except FileProblem as exc:
        raise ModelError(str(exc)) from None
    return import_tflite_bytes(data, source=path, stop_before=stop_before)


def import_tflite_bytes(data: bytes, source: str = "model.tflite",
                        stop_before: int | None = None) -> Graph:
    """Like :func:`import_tflite`, from the flatbuffer bytes."""
    try:
        import tflite  # noqa: F401  (the flatbuffer readers)
    except ImportError:  # pragma: no cover - the package is a dependency
        raise ModelError("reading .tflite files needs the 'tflite' package (pip install tflite)") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{source}: not a TFLite flatbuffer (no 'TFL3' file identifier)")
    try:
        model = _module("Model").Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1:
            raise ModelError(f"{source}: the TFLite model has no subgraph")
        graph = _Importer(model, source, stop_before).run()
        check_graph(graph, source)
    except (ModelError, UnsupportedOpError):
        raise
    except Exception as exc:  # corrupt flatbuffers surface as arbitrary decode errors
        raise ModelError(f"{source}: not a readable TFLite model ({type(exc).__name__}: {exc})") from None
    return graph


def _axis(axis: int, rank: int, op: str, index: int) -> int:
    """``axis`` in ``[-rank, rank)`` as a positive axis; anything else is a corrupt model, not an
    axis to wrap modulo the rank."""
    if not -rank <= axis < rank:
        raise ModelError(f"operator {index} ({op}): axis {axis} is outside the input's {rank} axes")
    return axis % rank


def check_batch_broadcast(graph: Graph) -> None:
    """Refuse an Add/Mul whose constant operand would broadcast over the batch axis: a constant
    with a leading dimension other than 1 at the batch position (or more axes than the
    activation) turns a batch of N into N*k rows or a shape error at run time."""
    for node in graph.nodes:
        if node.op not in ("Add", "Mul"):
            continue
        operands = [graph.tensors[n] for n in node.inputs if n in graph.tensors]
        act_ranks = [len(t.shape) for t in operands if not t.is_const]
        if not act_ranks:
            continue
        rank = max(act_ranks)
        for t in operands:
            shape = tuple(np.shape(t.data)) if t.is_const else ()
            if t.is_const and (len(shape) > rank or (len(shape) == rank and rank > 0 and shape[0] != 1)):
                raise ModelError(f"node {node.name!r} ({node.op}): constant {t.name!r} of shape "
                                 f"{list(shape)} would broadcast over the batch dimension of a "
                                 f"{rank}-D activation; its leading dimension must be 1")


class _Importer:
    def __init__(self, model, source: str, stop_before: int | None = None):
        self.model = model
        self.source = source
        self.stop_before = stop_before
        self.g = model.Subgraphs(0)
        self.op_names = _builtin_names()
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.names: dict[int, str] = {}      # TFLite tensor index -> IR name
        self.node_names: set[str] = set()
        self._raw = [self._read_tensor(i) for i in range(self.g.TensorsLength())]
        # graph inputs that only carry a shape the model also declares statically (the output
        # shape of a TRANSPOSE_CONV fed at run time): not inputs of the IR graph
        self.shape_operands: set = set()
        self.shape_values: dict = {}         # those inputs' values, for a runtime to be fed
        self.unbatched: dict = {}            # graph inputs without a batch dim -> batched view

    # ----------------------------------------------------------------------------- tensors
    def _read_tensor(self, i: int) -> dict:
        t = self.g.Tensors(i)
        ttype = t.Type()
        dtype = _TYPES.get(ttype, f"type{ttype}")
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        if any(d < 0 for d in shape):
            # a constant reshaped to a negative dim silently becomes some other shape
            raise ModelError(f"{self.source}: tensor {i} ({t.Name().decode(errors='replace') if t.Name() else '?'}): "
                             f"negative dimension in shape {list(shape)}")
        q = t.Quantization()
        scale = zp = None
        qdim = 0
        if q is not None and q.ScaleLength() > 0:
            scale = np.asarray(q.ScaleAsNumpy(), np.float32).reshape(-1)
            zp = (np.asarray(q.ZeroPointAsNumpy(), np.int64).reshape(-1) if q.ZeroPointLength()
                  else np.zeros(scale.size, np.int64))
            qdim = int(q.QuantizedDimension())
        data = None
        buf = self.model.Buffers(t.Buffer()) if t.Buffer() < self.model.BuffersLength() else None
        if buf is not None and buf.DataLength() > 0:
            if dtype not in ("float32", "int32", "uint8", "int64", "int16", "int8"):
                data = "unsupported"
            else:
                raw = buf.DataAsNumpy().tobytes()
                data = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        name = t.Name().decode("utf-8", "replace") if t.Name() is not None else f"tensor_{i}"
        return dict(index=i, name=name, dtype=dtype, shape=shape, scale=scale, zp=zp, qdim=qdim,
                    data=data)

    def _ir_name(self, idx: int) -> str:
        if idx in self.names:
            return self.names[idx]
        base = self._raw[idx]["name"]
        name, k = base, 1
        while name in self.tensors or name in self.names.values():
            name, k = f"{base}__{idx}" if k == 1 else f"{base}__{idx}_{k}", k + 1
        self.names[idx] = name
        return name

    def _qparams(self, raw: dict, axis: Optional[int] = None) -> Optional[QParams]:
        if raw["scale"] is None:
            return None
        if raw["dtype"] not in _QUANT_TYPES + ("int32",):
            return None
        scale, zp = raw["scale"], raw["zp"]
        if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            raise ModelError(f"tensor {raw['name']!r}: quantization scale must be finite and positive")
        if scale.size > 1:
            return QParams(scale, zp, raw["dtype"], axis=raw["qdim"] if axis is None else axis)
        return QParams(scale[:1], zp[:1], raw["dtype"])

    def _activation(self, idx: int, op: str, index: int, allow_int32: bool = False,
                    int16_offset_ok: bool = False) -> str:
        """The IR tensor of a (non-constant) activation, creating it on first use; quantized
        int32 activations only where ``allow_int32`` (QUANTIZE from/to int32); an int16 zero
        point other than 0 only where ``int16_offset_ok`` (SOFTMAX int8 -> int16)."""
        raw = self._raw[idx]
        name = self._ir_name(idx)
        if name in self.tensors:
            return name
        if isinstance(raw["data"], np.ndarray) or raw["data"] == "unsupported":
            return self._constant(idx, op, index)
        int32_ok = allow_int32 and raw["dtype"] == "int32" and raw["scale"] is not None
        if raw["dtype"] not in _QUANT_TYPES + ("float32",) and not int32_ok:
            raise UnsupportedOpError(op, f"operator {index}", f"tensor {raw['name']!r} has type {raw['dtype']}")
        qp = self._qparams(raw)
        if raw["dtype"] == "int16" and qp is not None and np.any(qp.zero_point != 0) \
                and not int16_offset_ok:
            # LiteRT's 16x8 kernels have no input/output offsets: they refuse such a model
            raise ModelError(f"operator {index} ({op}): int16 tensor {raw['name']!r} has zero point "
                             f"{int(qp.zero_point[0])}; int16 activations must have zero point 0")
        if raw["dtype"] in _QUANT_TYPES and qp is None:
            raise ModelError(f"tensor {raw['name']!r} is {raw['dtype']} without quantization parameters")
        if qp is not None and qp.per_channel:
            raise UnsupportedOpError(op, f"operator {index}",
                                     f"per-channel quantized activation {raw['name']!r}")
        shape = (None,) + tuple(raw["shape"][1:]) if raw["shape"] else ()
        self.tensors[name] = Tensor(name, shape, raw["dtype"], qp)
        return name

    def _constant(self, idx: int, op: str, index: int, data=None, qp=None, suffix="") -> str:
        raw = self._raw[idx]
        if data is None:
            data = raw["data"]
        if isinstance(data, str):
            raise UnsupportedOpError(op, f"operator {index}",
                                     f"constant {raw['name']!r} has unsupported type {raw['dtype']}")
        if qp is None:
            qp = self._qparams(raw)
        base = self._ir_name(idx) + suffix
        name, k = base, 1
        while name in self.tensors:
            name, k = f"{base}_{k}", k + 1
        dtype = qp.dtype if qp is not None else str(np.asarray(data).dtype)
        self.tensors[name] = Tensor(name, tuple(np.shape(data)), dtype, qp, np.asarray(data))
        return name

    def _new_tensor(self, base: str, shape, like: Tensor) -> str:
        name, k = base, 1
        while name in self.tensors:
            name, k = f"{base}_{k}", k + 1
        self.tensors[name] = Tensor(name, tuple(shape), like.dtype, like.qparams)
        return name

    def _output(self, idx: int, op: str, index: int, allow_int32: bool = False) -> str:
        raw = self._raw[idx]
        name = self._ir_name(idx)
        if name in self.tensors:
            raise ModelError(f"operator {index} ({op}): tensor {raw['name']!r} is written twice")
        return self._activation(idx, op, index, allow_int32)

    # ----------------------------------------------------------------------------- helpers
    def _emit(self, op: str, tfl_op: str, index: int, inputs, outputs, **attrs) -> Node:
        base = f"{tfl_op.lower()}_{index}"
        name, k = base, 1
        while name in self.node_names:
            name, k = f"{base}_{k}", k + 1
        self.node_names.add(name)
        attrs = dict(attrs)
        attrs.setdefault("tflite_op", tfl_op)
        attrs.setdefault("tflite_index", index)
        node = Node(op, name, list(inputs), list(outputs), attrs)
        self.nodes.append(node)
        return node

    def _options(self, op, kind: str):
        table = op.BuiltinOptions()
        if table is None:
            return None
        cls = getattr(_module(kind), kind)
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def _clamp(self, act: int, op: str, index: int):
        if act in _ACTIVATION_NAMES:
            raise UnsupportedOpError(op, f"operator {index}",
                                     f"fused activation {_ACTIVATION_NAMES[act]} is not supported")
        if act not in _ACTIVATIONS:
            raise UnsupportedOpError(op, f"operator {index}", f"unknown fused activation {act}")
        return _ACTIVATIONS[act]

    def _require_quantized(self, names, op: str, index: int):
        for n in names:
            t = self.tensors[n]
            if not t.is_quantized:
                raise UnsupportedOpError(op, f"operator {index}",
                                         f"float tensor {n!r}: mrq simulates integer graphs only")

    @staticmethod
    def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    def _pads(self, padding: int, in_shape, kernel, strides, dilations, op: str, index: int) -> tuple:
        if padding == 1:  # VALID
            return (0, 0, 0, 0)
        if padding != 0:
            raise UnsupportedOpError(op, f"operator {index}", f"padding type {padding}")
        if len(in_shape) != 4 or any(d is None for d in in_shape[1:3]):
            raise UnsupportedOpError(op, f"operator {index}", "SAME padding needs a static 4-D input shape")
        top, bottom = self._same_pads(in_shape[1], kernel[0], strides[0], dilations[0])
        left, right = self._same_pads(in_shape[2], kernel[1], strides[1], dilations[1])
        return (top, left, bottom, right)

    # ----------------------------------------------------------------------------- main
    def run(self) -> Graph:
        def quantized(r):
            return r["dtype"] in _QUANT_TYPES and r["scale"] is not None

        if not any(quantized(r) and r["data"] is None for r in self._raw):
            what = ("only its weights are quantized (a dynamic-range/hybrid model)"
                    if any(quantized(r) for r in self._raw) else
                    "it has no int8/uint8/int16 tensors with quantization parameters")
            raise ModelError(f"{self.source}: the model is not quantized: {what}; convert it with "
                             f"full-integer quantization (int8 activations) first")
        input_idx = [int(i) for i in self.g.InputsAsNumpy()]
        n_ops = self.g.OperatorsLength()
        if self.stop_before is not None:
            n_ops = tflite_import_shape.check_stop_before(self, self.stop_before)
        for index in range(n_ops):
            op = self.g.Operators(index)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = self.op_names.get(builtin, f"BUILTIN_{builtin}")
            if name == "CUSTOM" or builtin == 32:
                custom = code.CustomCode()
                name = f"CUSTOM({custom.decode() if custom else '?'})"
            version_problem = op_version_problem(name, int(code.Version()))
            if version_problem is not None:
                raise UnsupportedOpError(name, f"operator {index}", version_problem)
            handler = getattr(self, "_op_" + name, None)
            if handler is None and tflite_import_shape.handler_for(name) is not None:
                handler = functools.partial(tflite_import_shape.handler_for(name), self)
            if handler is None:
                raise UnsupportedOpError(name, f"operator {index}",
                                         f"mrq imports {', '.join(SUPPORTED_OPS + tuple(tflite_import_shape.HANDLERS))}")
            ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
            handler(op, name, index, ins, outs)
        # Graph inputs are created by their first consumer (so errors name that operator).
        inputs = [self._activation(idx, "input", -1) for idx in input_idx
                  if idx not in self.shape_operands]
        outputs = []
        output_idx = (self.g.OutputsAsNumpy() if self.stop_before is None
                      else tflite_import_shape.stop_outputs(self, self.stop_before))
        for idx in output_idx:
            name = self._ir_name(int(idx))
            if name not in self.tensors:
                raise ModelError(f"graph output {self._raw[int(idx)]['name']!r} is not computed by any operator")
            outputs.append(name)
        if not outputs:
            raise ModelError(f"{self.source}: the graph has no outputs")
        graph_name = self.g.Name().decode() if self.g.Name() else "main"
        meta = {"source": self.source, "format": "tflite"}
        if self.shape_values:
            meta["tflite_fixed_inputs"] = dict(self.shape_values)
        graph = Graph(self.tensors, self.nodes, inputs, outputs, name=graph_name, meta=meta)
        check_batch_broadcast(graph)
        return graph

    # ----------------------------------------------------------------------------- convolution
    def _bias(self, idx: int, x: Tensor, w_qp: QParams, n_out: int, op: str, index: int) -> Optional[str]:
        if idx < 0:
            return None
        raw = self._raw[idx]
        if not isinstance(raw["data"], np.ndarray):
            raise UnsupportedOpError(op, f"operator {index}", f"bias {raw['name']!r} must be a constant")
        # 16x8 kernels accumulate in int64 and take an int64 bias (LiteRT 2.3 runs an int32 bias
        # with int16 input too, but its results match no reading of that bias we tried)
        allowed = ("int64",) if x.dtype == "int16" else ("int32",)
        if raw["dtype"] not in allowed:
            raise UnsupportedOpError(op, f"operator {index}",
                                     f"bias {raw['name']!r} has type {raw['dtype']} "
                                     f"({' or '.join(allowed)} expected)")
        codes = raw["data"].astype(np.int64).reshape(-1)
        if codes.size != n_out:
            raise ModelError(f"operator {index} ({op}): bias has {codes.size} values for {n_out} outputs")
        grid = (np.float32(x.qparams.scale[0]) * w_qp.scale.astype(np.float32)).astype(np.float32)
        qp = QParams(grid, np.zeros(grid.size, np.int64), raw["dtype"], axis=0 if grid.size > 1 else None)
        return self._constant(idx, op, index, data=codes, qp=qp)

    def _weight(self, idx: int, op: str, index: int, layout_fn, axis_map, n_out: int) -> tuple[str, QParams]:
        raw = self._raw[idx]
        if not isinstance(raw["data"], np.ndarray):
            raise UnsupportedOpError(op, f"operator {index}", f"weights {raw['name']!r} must be constant")
        if raw["dtype"] not in ("int8", "uint8") or raw["scale"] is None:
            raise UnsupportedOpError(op, f"operator {index}",
                                     f"weights {raw['name']!r} must be int8/uint8 quantized "
                                     f"(got {raw['dtype']}; hybrid/float models are not supported)")
        qp = self._qparams(raw)
        if qp.per_channel:
            if raw["qdim"] not in axis_map:
                raise UnsupportedOpError(op, f"operator {index}",
                                         f"per-channel weights quantized along dimension {raw['qdim']}")
            if qp.scale.size != n_out:
                raise ModelError(f"operator {index} ({op}): {qp.scale.size} weight scales for {n_out} outputs")
            qp = qp.with_(axis=axis_map[raw["qdim"]])
        data = np.ascontiguousarray(layout_fn(raw["data"]))
        return self._constant(idx, op, index, data=data, qp=qp), qp

    def _conv(self, op, name, index, ins, outs, depthwise: bool):
        kind = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"
        o = self._options(op, kind)
        x = self._activation(ins[0], name, index)
        self._require_quantized([x], name, index)
        xt = self.tensors[x]
        if len(xt.shape) != 4:
            raise UnsupportedOpError(name, f"operator {index}", f"input must be 4-D NHWC, got {xt.shape}")
        fshape = self._raw[ins[1]]["shape"]
        if len(fshape) != 4:
            raise UnsupportedOpError(name, f"operator {index}", f"filter must be 4-D, got {fshape}")
        c_in = xt.shape[3]
        if depthwise:
            _, kh, kw, m = fshape
            if c_in is None or m % c_in:
                raise UnsupportedOpError(name, f"operator {index}",
                                         f"depthwise filter has {m} channels for {c_in} input channels")
            group = c_in
            w, w_qp = self._weight(ins[1], name, index, lambda a: a.transpose(3, 0, 1, 2), {3: 0}, m)
        else:
            m, kh, kw, ci = fshape
            if c_in is None or c_in % ci:
                raise UnsupportedOpError(name, f"operator {index}",
                                         f"filter has {ci} input channels for a {c_in}-channel input")
            group = c_in // ci
            w, w_qp = self._weight(ins[1], name, index, lambda a: a.transpose(0, 3, 1, 2), {0: 0}, m)
        strides = (int(o.StrideH()), int(o.StrideW())) if o else (1, 1)
        dilations = (int(o.DilationHFactor()), int(o.DilationWFactor())) if o else (1, 1)
        pads = self._pads(o.Padding() if o else 1, xt.shape, (kh, kw), strides, dilations, name, index)
        clamp = self._clamp(o.FusedActivationFunction() if o else 0, name, index)
        b = self._bias(ins[2] if len(ins) > 2 else -1, xt, w_qp, m, name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        attrs = dict(strides=strides, pads=pads, dilations=dilations, group=group, layout="NHWC")
        if depthwise and o is not None:
            attrs["depth_multiplier"] = int(o.DepthMultiplier())
        if clamp is not None:
            attrs["clamp"] = clamp
        self._emit("Conv", name, index, [x, w] + ([b] if b else []), [y], **attrs)

    def _op_TRANSPOSE_CONV(self, op, name, index, ins, outs):
        o = self._options(op, "TransposeConvOptions")
        x = self._activation(ins[2], name, index)
        self._require_quantized([x], name, index)
        xt = self.tensors[x]
        shape_raw = self._raw[ins[0]]["data"]
        if isinstance(shape_raw, np.ndarray):
            out_shape = tuple(int(d) for d in shape_raw.reshape(-1))
        elif ins[0] in {int(i) for i in self.g.InputsAsNumpy()} and len(self._raw[outs[0]]["shape"]) == 4:
            # fed at run time: the output tensor's declared shape is the one the model runs with
            out_shape = tuple(int(d) for d in self._raw[outs[0]]["shape"])
            self.shape_operands.add(ins[0])
            self.shape_values[self._raw[ins[0]]["name"]] = list(out_shape)
        else:
            raise UnsupportedOpError(name, f"operator {index}", "the output shape must be a constant")
        fshape = self._raw[ins[1]]["shape"]
        if len(xt.shape) != 4 or len(fshape) != 4 or len(out_shape) != 4:
            raise UnsupportedOpError(name, f"operator {index}", "input, filter and output must be 4-D")
        m, kh, kw, ci = fshape
        if xt.shape[3] != ci or out_shape[3] != m:
            raise ModelError(f"operator {index} ({name}): filter {list(fshape)} does not match input "
                             f"{list(xt.shape[1:])} and output {list(out_shape)}")
        w, w_qp = self._weight(ins[1], name, index, lambda a: a.transpose(0, 3, 1, 2), {0: 0}, m)
        strides = (int(o.StrideH()), int(o.StrideW())) if o else (1, 1)
        # TFLite pads as the conv from the output back to the input would (the offset is dropped)
        pads = self._pads(o.Padding() if o else 1, (None,) + out_shape[1:], (kh, kw), strides,
                          (1, 1), name, index)
        clamp = self._clamp(o.FusedActivationFunction() if o else 0, name, index)
        b = self._bias(ins[3] if len(ins) > 3 else -1, xt, w_qp, m, name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        attrs = {"strides": strides, "pads": pads[:2], "output_size": out_shape[1:3], "layout": "NHWC"}
        if clamp is not None:
            attrs["clamp"] = clamp
        self._emit("TransposeConv", name, index, [x, w] + ([b] if b else []), [y], **attrs)

    def _op_CONV_2D(self, op, name, index, ins, outs):
        self._conv(op, name, index, ins, outs, depthwise=False)

    def _op_DEPTHWISE_CONV_2D(self, op, name, index, ins, outs):
        self._conv(op, name, index, ins, outs, depthwise=True)

    def _op_FULLY_CONNECTED(self, op, name, index, ins, outs):
        o = self._options(op, "FullyConnectedOptions")
        if o is not None and o.WeightsFormat() != 0:
            raise UnsupportedOpError(name, f"operator {index}", "shuffled weights format")
        x = self._activation(ins[0], name, index)
        self._require_quantized([x], name, index)
        xt = self.tensors[x]
        wshape = self._raw[ins[1]]["shape"]
        if len(wshape) != 2:
            raise UnsupportedOpError(name, f"operator {index}", f"weights must be 2-D, got {wshape}")
        n, k = wshape
        w, w_qp = self._weight(ins[1], name, index, lambda a: a.T, {0: 1}, n)
        b = self._bias(ins[2] if len(ins) > 2 else -1, xt, w_qp, n, name, index)
        clamp = self._clamp(o.FusedActivationFunction() if o else 0, name, index)
        keep = bool(o.KeepNumDims()) if o is not None else False
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        a = x
        if len(xt.shape) != 2 or xt.shape[-1] != k:
            # TFLite flattens the input to [-1, K] (whatever its rank and batch).
            a = self._new_tensor(f"{x}__flat", (None, k), xt)
            self._emit("Reshape", name, index, [x], [a], shape=(-1, k), tflite_part="flatten")
        attrs = {"clamp": clamp} if clamp is not None else {}
        if keep and len(xt.shape) > 2:
            yt = self.tensors[y]
            g_out = self._new_tensor(f"{y}__2d", (None, n), yt)
            self._emit("Gemm", name, index, [a, w] + ([b] if b else []), [g_out], **attrs)
            self._emit("Reshape", name, index, [g_out], [y],
                       shape=(-1,) + tuple(xt.shape[1:-1]) + (n,), tflite_part="keep_num_dims")
        else:
            self._emit("Gemm", name, index, [a, w] + ([b] if b else []), [y], **attrs)

    # ----------------------------------------------------------------------------- elementwise
    def _unbatched_input(self, idx: int, rank: int, op: str, index: int) -> str | None:
        """A graph input of lower rank than the other operand of a broadcasting op has no
        batch dimension in the file (a bias vector fed at run time): it becomes an IR input
        ``[batch] + shape`` reshaped to ``[batch, 1, ..., 1] + shape`` (rank ``rank``), so every
        batch row broadcasts as LiteRT's batch-1 run does. None for any other operand."""
        raw = self._raw[idx]
        if idx in self.unbatched:
            return self.unbatched[idx]
        if idx not in {int(i) for i in self.g.InputsAsNumpy()} or raw["data"] is not None \
                or not 0 < len(raw["shape"]) < rank or self._ir_name(idx) in self.tensors:
            return None
        x = self._activation(idx, op, index)
        xt = self.tensors[x]
        xt.shape = (None,) + tuple(raw["shape"])
        view = (1,) * (rank - 1 - len(raw["shape"])) + tuple(raw["shape"])
        y = self._new_tensor(f"{x}__batched", (None,) + view, xt)
        self._emit("Reshape", op, index, [x], [y], shape=(0,) + view, tflite_part="batch_broadcast")
        self.unbatched[idx] = y
        return y

    def _binary(self, op, name, index, ins, outs, ir_op, kind):
        o = self._options(op, kind)
        rank = max(len(self._raw[i]["shape"]) for i in ins[:2])
        a = self._unbatched_input(ins[0], rank, name, index) or self._activation(ins[0], name, index)
        b = self._unbatched_input(ins[1], rank, name, index) or self._activation(ins[1], name, index)
        self._require_quantized([a, b], name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        for t in (a, b):
            if self.tensors[t].qparams.per_channel:
                raise UnsupportedOpError(name, f"operator {index}", f"per-channel operand {t!r}")
        clamp = self._clamp(o.FusedActivationFunction() if o else 0, name, index)
        attrs = {"clamp": clamp} if clamp is not None else {}
        if ir_op in ("Add", "Sub") and o is not None and o.PotScaleInt16():
            attrs["pot_scale_int16"] = True   # LiteRT's power-of-two int16 path, if scales allow
        self._emit(ir_op, name, index, [a, b], [y], **attrs)

    def _op_ADD(self, op, name, index, ins, outs):
        self._binary(op, name, index, ins, outs, "Add", "AddOptions")

    def _op_SUB(self, op, name, index, ins, outs):
        self._binary(op, name, index, ins, outs, "Sub", "SubOptions")

    def _op_LEAKY_RELU(self, op, name, index, ins, outs):
        o = self._options(op, "LeakyReluOptions")
        x = self._activation(ins[0], name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([x, y], name, index)
        self._emit("LeakyRelu", name, index, [x], [y], alpha=float(o.Alpha()) if o else 0.0)

    def _op_MUL(self, op, name, index, ins, outs):
        self._binary(op, name, index, ins, outs, "Mul", "MulOptions")

    # ----------------------------------------------------------------------------- pooling
    def _pool(self, op, name, index, ins, outs, ir_op):
        o = self._options(op, "Pool2DOptions")
        x = self._activation(ins[0], name, index)
        self._require_quantized([x], name, index)
        xt = self.tensors[x]
        if len(xt.shape) != 4:
            raise UnsupportedOpError(name, f"operator {index}", f"input must be 4-D NHWC, got {xt.shape}")
        kernel = (int(o.FilterHeight()), int(o.FilterWidth()))
        strides = (int(o.StrideH()), int(o.StrideW()))
        pads = self._pads(o.Padding(), xt.shape, kernel, strides, (1, 1), name, index)
        clamp = self._clamp(o.FusedActivationFunction(), name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        attrs = dict(kernel=kernel, strides=strides, pads=pads, dilations=(1, 1), ceil_mode=0,
                     count_include_pad=0, layout="NHWC")
        if ir_op == "AveragePool":
            if clamp is not None:
                attrs["clamp"] = clamp
            self._emit(ir_op, name, index, [x], [y], **attrs)
        elif clamp is None:
            self._emit(ir_op, name, index, [x], [y], **attrs)
        else:
            pre = self._new_tensor(f"{y}__pool", self.tensors[y].shape, self.tensors[y])
            self.tensors[pre].qparams = xt.qparams
            self._emit(ir_op, name, index, [x], [pre], **attrs)
            self._emit("Clamp", name, index, [pre], [y], lo=clamp[0], hi=clamp[1],
                       tflite_part="fused_activation")

    def _op_AVERAGE_POOL_2D(self, op, name, index, ins, outs):
        self._pool(op, name, index, ins, outs, "AveragePool")

    def _op_MAX_POOL_2D(self, op, name, index, ins, outs):
        self._pool(op, name, index, ins, outs, "MaxPool")

    def _op_MEAN(self, op, name, index, ins, outs):
        o = self._options(op, "ReducerOptions")
        x = self._activation(ins[0], name, index)
        self._require_quantized([x], name, index)
        rank = len(self.tensors[x].shape)
        axes_raw = self._raw[ins[1]]["data"]
        if not isinstance(axes_raw, np.ndarray):
            raise UnsupportedOpError(name, f"operator {index}", "the reduction axes must be a constant")
        axes = sorted({_axis(int(a), rank, name, index) for a in axes_raw.reshape(-1)})
        if 0 in axes:
            raise UnsupportedOpError(name, f"operator {index}", "reducing the batch dimension")
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        self._emit("Mean", name, index, [x], [y], axes=tuple(axes),
                   keep_dims=bool(o.KeepDims()) if o is not None else False)

    def _op_SOFTMAX(self, op, name, index, ins, outs):
        o = self._options(op, "SoftmaxOptions")
        x = self._activation(ins[0], name, index)
        out = self._raw[outs[0]]
        # LiteRT's int8 -> int16 SOFTMAX writes codes offset by -32768 (scale 1/65536)
        offset_ok = (self.tensors[x].dtype == "int8" and out["dtype"] == "int16"
                     and out["zp"] is not None and int(out["zp"][0]) == -32768)
        if self._ir_name(outs[0]) in self.tensors:
            raise ModelError(f"operator {index} ({name}): tensor {out['name']!r} is written twice")
        y = self._activation(outs[0], name, index, int16_offset_ok=offset_ok)
        self._require_quantized([x, y], name, index)
        self._emit("Softmax", name, index, [x], [y], axis=-1, beta=float(o.Beta()) if o else 1.0)

    def _op_LOGISTIC(self, op, name, index, ins, outs):
        x = self._activation(ins[0], name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([x, y], name, index)
        self._emit("Logistic", name, index, [x], [y])

    # ----------------------------------------------------------------------------- data movement
    def _op_RESHAPE(self, op, name, index, ins, outs):
        x = self._activation(ins[0], name, index)
        y = self._output(outs[0], name, index)
        xt, yt = self.tensors[x], self.tensors[y]
        out_shape = self._raw[outs[0]]["shape"]
        in_shape = self._raw[ins[0]]["shape"]
        if out_shape and in_shape and out_shape[0] == in_shape[0]:
            target = (0,) + tuple(int(d) for d in out_shape[1:])
        elif out_shape:
            target = (-1,) + tuple(int(d) for d in out_shape[1:])
        else:
            raise UnsupportedOpError(name, f"operator {index}", "reshape to a scalar")
        if xt.qparams is not None and yt.qparams is not None and not xt.qparams.same_grid(yt.qparams):
            raise UnsupportedOpError(name, f"operator {index}", "RESHAPE that changes the quantization")
        self._emit("Reshape", name, index, [x], [y], shape=target)

    def _pad(self, op, name, index, ins, outs):
        x = self._activation(ins[0], name, index)
        self._require_quantized([x], name, index)
        paddings = self._raw[ins[1]]["data"]
        if not isinstance(paddings, np.ndarray):
            raise UnsupportedOpError(name, f"operator {index}", "the paddings must be a constant")
        pads = tuple((int(a), int(b)) for a, b in paddings.reshape(-1, 2))
        if len(pads) != len(self.tensors[x].shape):
            raise ModelError(f"operator {index} ({name}): {len(pads)} paddings for a rank-"
                             f"{len(self.tensors[x].shape)} input")
        if pads and pads[0] != (0, 0):
            raise UnsupportedOpError(name, f"operator {index}", "padding the batch dimension")
        if any(a < 0 or b < 0 for a, b in pads):
            raise UnsupportedOpError(name, f"operator {index}", "negative paddings")
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        value = 0.0
        if len(ins) > 2 and ins[2] >= 0:
            raw = self._raw[ins[2]]
            if not isinstance(raw["data"], np.ndarray):
                raise UnsupportedOpError(name, f"operator {index}", "the pad value must be a constant")
            code = int(raw["data"].reshape(-1)[0])
            qp = self._qparams(raw) or self.tensors[x].qparams
            value = float((code - int(qp.zero_point[0])) * np.float64(qp.scale[0]))
        self._emit("Pad", name, index, [x], [y], pads=pads, value=value)

    def _op_PAD(self, op, name, index, ins, outs):
        self._pad(op, name, index, ins, outs)

    def _op_PADV2(self, op, name, index, ins, outs):
        self._pad(op, name, index, ins, outs)

    def _op_CONCATENATION(self, op, name, index, ins, outs):
        o = self._options(op, "ConcatenationOptions")
        xs = [self._activation(i, name, index) for i in ins]
        self._require_quantized(xs, name, index)
        y = self._output(outs[0], name, index)
        self._require_quantized([y], name, index)
        rank = len(self.tensors[y].shape)
        axis = _axis(int(o.Axis()), rank, name, index) if o is not None else 0
        if axis == 0:
            raise UnsupportedOpError(name, f"operator {index}", "concatenation along the batch dimension")
        if o is not None and o.FusedActivationFunction() != 0:
            raise UnsupportedOpError(name, f"operator {index}", "a fused activation on CONCATENATION")
        self._emit("Concat", name, index, xs, [y], axis=axis)

    def _op_QUANTIZE(self, op, name, index, ins, outs):
        x = self._activation(ins[0], name, index, allow_int32=True)
        y = self._output(outs[0], name, index, allow_int32=True)
        if "int32" in (self.tensors[x].dtype, self.tensors[y].dtype) and \
                "int16" not in (self.tensors[x].dtype, self.tensors[y].dtype):
            raise UnsupportedOpError(name, f"operator {index}", "int32 QUANTIZE other than to/from int16")
        yt = self.tensors[y]
        if not yt.is_quantized:
            raise ModelError(f"operator {index} (QUANTIZE): output {y!r} has no quantization parameters")
        if self.tensors[x].is_quantized:
            self._emit("Rescale", name, index, [x], [y])
        else:
            self._emit("Quantize", name, index, [x], [y])

    def _op_UNIDIRECTIONAL_SEQUENCE_LSTM(self, op, name, index, ins, outs):
        tflite_import_recurrent.import_lstm(self, op, name, index, ins, outs)

    def _op_SVDF(self, op, name, index, ins, outs):
        tflite_import_recurrent.import_svdf(self, op, name, index, ins, outs)

    def _op_DEQUANTIZE(self, op, name, index, ins, outs):
        x = self._activation(ins[0], name, index)
        if self.tensors[x].is_const:
            raise UnsupportedOpError(name, f"operator {index}", "dequantizing a constant (float16/sparse weights)")
        self._require_quantized([x], name, index)
        y = self._output(outs[0], name, index)
        if self.tensors[y].dtype != "float32":
            raise UnsupportedOpError(name, f"operator {index}", f"output type {self.tensors[y].dtype}")
        self._emit("Dequantize", name, index, [x], [y])
