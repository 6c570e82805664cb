"""Write small quantized .tflite flatbuffers for tests (single ops and short chains).

The ``tflite`` package only reads flatbuffers, but its generated modules also hold the builder
functions (``TensorStart``, ``OperatorAddInputs``, ...), so a model can be serialised with the
``flatbuffers`` runtime alone. This is a test helper: it writes what the TFLite converter would
write for int8 models (schema version 3, one subgraph, buffer 0 empty), nothing more.

    b = ModelBuilder()
    x = b.tensor("x", [1, 8, 8, 3], "int8", scale=0.05, zero_point=-3)
    w = b.tensor("w", [4, 3, 3, 3], "int8", scale=[0.01] * 4, zero_point=[0] * 4,
                 quantized_dimension=0, data=codes)
    ...
    b.op("CONV_2D", [x, w, bias], [y], options=("Conv2DOptions", dict(padding="SAME", ...)))
    model_bytes = b.finish(inputs=[x], outputs=[y])
"""
from __future__ import annotations

import importlib

import flatbuffers
import numpy as np
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions

TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int16": 7, "int8": 9}
PADDING = {"SAME": 0, "VALID": 1}
ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}

# option-table field name -> how to add it (value converters)
_ENUM_FIELDS = {"Padding": PADDING, "FusedActivationFunction": ACT}


def _m(name: str):
    """The generated module ``tflite.<name>`` (the package re-exports the class of that name)."""
    return importlib.import_module(f"tflite.{name}")


_Buffer, _Tensor, _Quant, _Operator, _SubGraph, _OperatorCode, _Model = (
    _m(n) for n in ("Buffer", "Tensor", "QuantizationParameters", "Operator", "SubGraph",
                    "OperatorCode", "Model"))


def _camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


class ModelBuilder:
    def __init__(self, version: int = 3):
        self.version = version
        self.tensors: list[dict] = []
        self.ops: list[dict] = []
        self.opcodes: list[int] = []
        self.buffers: list[bytes] = [b""]

    # ------------------------------------------------------------------ graph description
    def tensor(self, name, shape, dtype, scale=None, zero_point=None, quantized_dimension=0,
               data=None) -> int:
        buf = 0
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data, dtype=np.dtype(dtype)).reshape(shape))
            self.buffers.append(arr.tobytes())
            buf = len(self.buffers) - 1
        else:
            self.buffers.append(b"")
            buf = len(self.buffers) - 1
        q = None
        if scale is not None:
            s = np.atleast_1d(np.asarray(scale, np.float32))
            z = np.atleast_1d(np.asarray(0 if zero_point is None else zero_point, np.int64))
            if z.size == 1 and s.size > 1:
                z = np.full(s.size, z[0], np.int64)
            q = (s, z, int(quantized_dimension))
        self.tensors.append(dict(name=name, shape=[int(d) for d in shape], type=TYPES[dtype],
                                 buffer=buf, quant=q))
        return len(self.tensors) - 1

    def op(self, builtin: str, inputs, outputs, options=None, custom_code=None,
           version: int = 1) -> None:
        """``builtin`` by name; ``CUSTOM`` ops also name their ``custom_code``; ``version`` is the
        operator code's version."""
        code = (getattr(BuiltinOperator, builtin), custom_code, version)
        if code not in self.opcodes:
            self.opcodes.append(code)
        self.ops.append(dict(opcode=self.opcodes.index(code), inputs=list(inputs),
                             outputs=list(outputs), options=options))

    # ------------------------------------------------------------------ serialisation
    def _int_vector(self, b, start_fn, values, dtype="int32"):
        start_fn(b, len(values))
        for v in reversed(values):
            if dtype == "int32":
                b.PrependInt32(int(v))
            elif dtype == "int64":
                b.PrependInt64(int(v))
            elif dtype == "float32":
                b.PrependFloat32(float(v))
        return b.EndVector()

    def _options(self, b, options):
        kind, fields = options
        mod = _m(kind)
        vectors = {}
        for key, value in fields.items():
            if isinstance(value, (list, tuple)):
                start = getattr(mod, f"{kind}Start{_camel(key)}Vector")
                vectors[key] = self._int_vector(b, start, value)
        getattr(mod, f"{kind}Start")(b)
        for key, value in fields.items():
            add = getattr(mod, f"{kind}Add{_camel(key)}")
            camel = _camel(key)
            if key in vectors:
                add(b, vectors[key])
            elif camel in _ENUM_FIELDS:
                add(b, _ENUM_FIELDS[camel][value] if isinstance(value, str) else int(value))
            else:
                add(b, value)
        return getattr(BuiltinOptions, kind), getattr(mod, f"{kind}End")(b)

    def finish(self, inputs, outputs) -> bytes:
        b = flatbuffers.Builder(1024)
        # buffers
        buf_offsets = []
        for data in self.buffers:
            if data:
                # Constant data must be 16-byte aligned for some kernels; align the vector.
                b.StartVector(1, len(data), 16)
                for byte in reversed(data):
                    b.PrependByte(byte)
                vec = b.EndVector()
                _Buffer.BufferStart(b)
                _Buffer.BufferAddData(b, vec)
            else:
                _Buffer.BufferStart(b)
            buf_offsets.append(_Buffer.BufferEnd(b))
        # tensors
        t_offsets = []
        for t in self.tensors:
            name = b.CreateString(t["name"])
            shape = self._int_vector(b, _Tensor.TensorStartShapeVector, t["shape"])
            quant = None
            if t["quant"] is not None:
                s, z, qd = t["quant"]
                sv = self._int_vector(b, _Quant.QuantizationParametersStartScaleVector,
                                      s.tolist(), "float32")
                zv = self._int_vector(b, _Quant.QuantizationParametersStartZeroPointVector,
                                      z.tolist(), "int64")
                _Quant.QuantizationParametersStart(b)
                _Quant.QuantizationParametersAddScale(b, sv)
                _Quant.QuantizationParametersAddZeroPoint(b, zv)
                _Quant.QuantizationParametersAddQuantizedDimension(b, qd)
                quant = _Quant.QuantizationParametersEnd(b)
            _Tensor.TensorStart(b)
            _Tensor.TensorAddShape(b, shape)
            _Tensor.TensorAddType(b, t["type"])
            _Tensor.TensorAddBuffer(b, t["buffer"])
            _Tensor.TensorAddName(b, name)
            if quant is not None:
                _Tensor.TensorAddQuantization(b, quant)
            t_offsets.append(_Tensor.TensorEnd(b))
        # operators
        o_offsets = []
        for op in self.ops:
            ins = self._int_vector(b, _Operator.OperatorStartInputsVector, op["inputs"])
            outs = self._int_vector(b, _Operator.OperatorStartOutputsVector, op["outputs"])
            opt = self._options(b, op["options"]) if op["options"] is not None else None
            _Operator.OperatorStart(b)
            _Operator.OperatorAddOpcodeIndex(b, op["opcode"])
            _Operator.OperatorAddInputs(b, ins)
            _Operator.OperatorAddOutputs(b, outs)
            if opt is not None:
                _Operator.OperatorAddBuiltinOptionsType(b, opt[0])
                _Operator.OperatorAddBuiltinOptions(b, opt[1])
            o_offsets.append(_Operator.OperatorEnd(b))

        def table_vector(start_fn, offsets):
            start_fn(b, len(offsets))
            for off in reversed(offsets):
                b.PrependUOffsetTRelative(off)
            return b.EndVector()

        tensors_vec = table_vector(_SubGraph.SubGraphStartTensorsVector, t_offsets)
        ops_vec = table_vector(_SubGraph.SubGraphStartOperatorsVector, o_offsets)
        in_vec = self._int_vector(b, _SubGraph.SubGraphStartInputsVector, list(inputs))
        out_vec = self._int_vector(b, _SubGraph.SubGraphStartOutputsVector, list(outputs))
        sg_name = b.CreateString("main")
        _SubGraph.SubGraphStart(b)
        _SubGraph.SubGraphAddTensors(b, tensors_vec)
        _SubGraph.SubGraphAddInputs(b, in_vec)
        _SubGraph.SubGraphAddOutputs(b, out_vec)
        _SubGraph.SubGraphAddOperators(b, ops_vec)
        _SubGraph.SubGraphAddName(b, sg_name)
        sg = _SubGraph.SubGraphEnd(b)

        code_offsets = []
        for code, custom_code, version in self.opcodes:
            custom = b.CreateString(custom_code) if custom_code is not None else None
            _OperatorCode.OperatorCodeStart(b)
            if custom is not None:
                _OperatorCode.OperatorCodeAddCustomCode(b, custom)
            _OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            _OperatorCode.OperatorCodeAddBuiltinCode(b, code)
            _OperatorCode.OperatorCodeAddVersion(b, version)
            code_offsets.append(_OperatorCode.OperatorCodeEnd(b))
        codes_vec = table_vector(_Model.ModelStartOperatorCodesVector, code_offsets)
        sgs_vec = table_vector(_Model.ModelStartSubgraphsVector, [sg])
        bufs_vec = table_vector(_Model.ModelStartBuffersVector, buf_offsets)
        desc = b.CreateString("mrq test model")
        _Model.ModelStart(b)
        _Model.ModelAddVersion(b, self.version)
        _Model.ModelAddOperatorCodes(b, codes_vec)
        _Model.ModelAddSubgraphs(b, sgs_vec)
        _Model.ModelAddDescription(b, desc)
        _Model.ModelAddBuffers(b, bufs_vec)
        model = _Model.ModelEnd(b)
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())
