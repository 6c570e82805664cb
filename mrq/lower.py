"""IR + hardware arithmetic -> :class:`simulator.program.Program` (integers and arrays only).

All float work (multipliers, clamp bounds) happens here, once; the simulator only sees integers,
float32 constants where the hardware itself computes in float32 (ORT, XNNPACK), and strings that
name the rounding and overflow behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from mrq.pointwise import POINTWISE
from mrq import multipliers as mul
from mrq.errors import UnsupportedOpError, ModelError
from simulator.errors import SimulatorError
from mrq.ir import Graph, Node, QParams, Tensor, storage_dtype
from mrq.lower_extra import ExtraOpsLowering
from mrq.lower_movement import MovementOpsLowering
from mrq.lower_matmul import MatMulLowering
from mrq.lower_dynamic import DynamicLowering
from mrq.lower_islands import FloatIslandLowering
from mrq.lower_float import FloatOpsLowering, island_op_name
from mrq.lower_ml import ML_OP_NAMES, MlOpsLowering
from mrq.lower_blocked import BlockedLowering
from mrq.lower_runtime_quant import RuntimeQuantLowering
from simulator.program import Program, TensorSpec
from simulator.rounding import round_array
from simulator.steps import make_step


@dataclass(frozen=True)
class Arithmetic:
    """The arithmetic facts of a hardware profile that lowering needs, read from the profile in
    one place (:func:`arithmetic_from_profile`); no field has a default of its own."""

    name: str
    requant: str                  # float32 | fixed_point | double_q31 | shift
    multiplier_bits: Optional[int]  # fixed_point only
    shift_min: Optional[int]      # None: float32 (no shift)
    shift_max: Optional[int]
    rounding: str                 # rounding of the requantization
    zero_point: str               # after_rounding | before_rounding
    multiplier_precision: Optional[str]   # float32 | float64 | None (shift: exact powers of 2)
    acc_bits: int
    acc_overflow: str
    add: Optional[str]            # None: the profile does not support Add
    mul: Optional[str]            # requant | fp32_zp_in | None
    avgpool: Optional[str]        # ort_float | tflite_raw | fixed | None
    global_avgpool: Optional[str]  # requant | avgpool | None
    divider: bool                 # False: pooling folds 1/N into the multiplier
    rescale: str                  # float_dq_q | requant
    quantize_method: str          # divide | multiply
    quantize_rounding: str
    supported_ops: Optional[frozenset]
    # ((op type, 'float' | profile name, that profile's Arithmetic or None), ...)
    host_ops: tuple = ()
    runtime: str = "generic"      # generic | tflite-reference | xnnpack
    # runtime onnxruntime: the MLAS float kernel set (simulator.kernels.ort_eltwise.ORT_ISAS)
    runtime_isa: str = ""
    # accumulator.pair_sums: exact | saturate_int16 (u8 x s8 pair sums saturated to int16)
    pair_sums: str = "exact"

    def host_arithmetic(self, op_type: str) -> Optional[tuple]:
        """``(how, arithmetic)`` for a host op (``arithmetic`` None for ``float``), else None."""
        for op, how, arith in self.host_ops:
            # host_ops holds profile (ONNX) names: the IR op's names say which one covers it
            if op in IR_OP_NAMES.get(op_type, {op_type}) or op_type in IR_OP_NAMES.get(op, {op}):
                return how, arith
        return None


def arithmetic_from_profile(profile) -> Arithmetic:
    """Adapter from :class:`mrq.hw_profile.HwProfile` to :class:`Arithmetic`."""
    rq = profile.requant
    ops = profile.ops
    host = getattr(profile, "host_ops", None) or {}
    return Arithmetic(
        name=profile.name,
        requant=rq.arithmetic,
        multiplier_bits=rq.multiplier_bits,
        shift_min=rq.shift_min,
        shift_max=rq.shift_max,
        rounding=rq.rounding,
        zero_point=rq.zero_point,
        multiplier_precision=rq.multiplier_precision,
        acc_bits=profile.accumulator.bits,
        acc_overflow=profile.accumulator.overflow,
        add=ops.add, mul=ops.mul, avgpool=ops.avgpool, global_avgpool=ops.global_avgpool,
        divider=getattr(ops, "divider", True),
        rescale=ops.rescale,
        quantize_method=ops.quantize.method, quantize_rounding=ops.quantize.rounding,
        supported_ops=frozenset(profile.supported_ops) if profile.supported_ops else None,
        # a named host profile was loaded with this one: lower with that copy, never a re-read
        host_ops=tuple((op, how, _host_arithmetic(profile, op))
                       for op, how in sorted(dict(host).items())),
        runtime=getattr(profile, "runtime", "generic"),
        runtime_isa=getattr(profile, "runtime_isa", ""),
        pair_sums=getattr(profile.accumulator, "pair_sums", "exact"),
    )


def _host_arithmetic(profile, op: str) -> Optional[Arithmetic]:
    ref = profile.host_profile(op)
    return None if ref is None else replace(arithmetic_from_profile(ref), host_ops=())


# IR ops whose step kinds have a float variant, for host_ops entries with float arithmetic.
HOST_FLOAT_OPS = frozenset({"Softmax", "Add", "AveragePool", "GlobalAveragePool", "Logistic",
                            "Rescale", "Concat", "Reshape", "Transpose", "MaxPool", "Clamp"})

# Which IR op a supported-ops list entry covers (ONNX names users write in profiles).
IR_OP_NAMES = {
    "Conv": {"Conv"}, "Gemm": {"Gemm", "MatMul"}, "Add": {"Add"}, "Mul": {"Mul"},
    "Clamp": {"Relu", "Clip"}, "MaxPool": {"MaxPool"}, "AveragePool": {"AveragePool"},
    "GlobalAveragePool": {"GlobalAveragePool"}, "Concat": {"Concat"},
    "Reshape": {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}, "Transpose": {"Transpose"},
    "Softmax": {"Softmax"}, "Rescale": set(), "Quantize": set(), "Dequantize": set(),
    "Pad": {"Pad"}, "Mean": {"Mean"}, "Logistic": {"Logistic"}, "Sub": {"Sub"},
    "TransposeConv": {"ConvTranspose"},
    # mrq/tflite_import_shape.py (ArgMax, ReduceMax, Cast, PRelu: their own names): a Take is
    # any pure data movement
    "Take": {"Gather", "Slice", "Split", "Tile", "DepthToSpace", "SpaceToDepth", "Resize"},
    "ResizeBilinear": {"Resize"}, "Maximum": {"Max", "Min"}, "Svdf": {"SVDF"},
    "Resize": {"Resize"},   # ONNX linear Resize (mrq/onnx_import_movement.py)
    "MatMul": {"MatMul"},   # two activations (mrq/lower_matmul.py)
    # ONNX Runtime's dynamic quantization (mrq/lower_dynamic.py): quantized MatMuls
    "DynamicMatMul": {"MatMul", "Gemm"}, "MatMulInteger": {"MatMul", "Gemm"},
    "DynamicConv": {"Conv"},
    "DynamicQuantize": set(),
    "BlockQuantize": set(), "BlockDequantize": set(),   # mrq/onnx_import_blocked.py
    "QuantizeRuntime": set(), "FloatReduceMinMax": {"ReduceMin", "ReduceMax"},
    # float islands of ONNX Runtime (mrq/onnx_import_islands.py): a chain of Erf and scalar
    # Div/Mul/Add/Sub; LayerNormalization and a float-weight ConvTranspose use their ONNX names
    "ElementwiseChain": {"Div", "Mul", "Add", "Sub", "Erf"},
    # float islands of mixed graphs (mrq/onnx_import_float.py)
    "FloatBinary": {"Add", "Sub", "Mul", "Div", "PRelu"}, "FloatConcat": {"Concat"}, "FloatMaxPool": {"MaxPool"},
    "FloatSoftmax": {"Softmax"}, "FloatGlobalAveragePool": {"GlobalAveragePool"},
    "FloatReduceL2": {"ReduceL2"}, "FloatMatMul": {"MatMul"}, "FloatConv": {"Conv"},
    "FloatUnary": {"Sigmoid", "Tanh", "Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish"},
    **ML_OP_NAMES,   # ai.onnx.ml ops and casts of plain numbers (mrq/onnx_import_ml.py)
}


@dataclass
class LoweredModel:
    program: Program
    graph: Graph
    arithmetic: Arithmetic
    # Step name -> IR node name (several steps may implement one node, e.g. Concat rescales).
    step_node: dict
    # Step name -> 'npu' or 'host' (the profile's host_ops); golden sets cover the NPU part.
    placement: dict = field(default_factory=dict)
    # Parameters the model needed outside the profile's limits (mrq.limits.Violation): the
    # program holds the closest legal value instead, so it is not the model's arithmetic.
    limit_violations: list = field(default_factory=list)

    def host_steps(self) -> list:
        return [name for name, where in self.placement.items() if where == "host"]


class _Lowerer(ExtraOpsLowering, MovementOpsLowering, MatMulLowering, DynamicLowering,
               FloatIslandLowering, FloatOpsLowering, MlOpsLowering, BlockedLowering,
               RuntimeQuantLowering):
    def __init__(self, graph: Graph, arith: Arithmetic):
        self.g = graph
        self.a = arith
        self.steps: list[Step] = []
        self.step_node: dict = {}
        # (index of the step about to be emitted, [mrq.multipliers.Clip]) per clipped block
        self._clips: list = []

    # ------------------------------------------------------------------ shared blocks
    def acc_block(self) -> dict:
        return {"acc_bits": self.a.acc_bits, "acc_overflow": self.a.acc_overflow}

    def pair_sums(self, a_dtype: str, b_dtype: str, depthwise: bool = False,
                  float_op: bool = False) -> str:
        """The step's ``pair_sums`` for a product of ``a_dtype`` activations and ``b_dtype``
        weights: the profile's, for uint8 x int8, else ``exact``. ONNX Runtime runs a
        depthwise QLinearConv (one input and one output channel per group, one weight zero
        point) with kernels that widen to int16 first (MlasConvDepthwise, ConvSym's depthwise
        kernel), and a ``float_op`` (:meth:`ort_keeps_float`) in float32: exact there."""
        if (a_dtype, b_dtype) != ("uint8", "int8") or depthwise or float_op:
            return "exact"
        return self.a.pair_sums

    def ort_keeps_float(self, node) -> bool:
        """Whether ONNX Runtime runs this op in float (FusedConv, MLAS SGEMM: float32 sums,
        never pair-saturated) with its Relu/Clip after it, instead of fusing an integer kernel:
        the importer's mark (:mod:`mrq.ort_qdq_fusion`)."""
        return bool(node.attrs.get("ort_float", False))

    def quantize_real(self, value: float, qp: QParams) -> int:
        """The code the profile's quantizer gives a real value (clamp bounds of Relu/Clip)."""
        return int(self.quantize_reals(value, qp))

    def quantize_reals(self, values, qp: QParams) -> np.ndarray:
        """:meth:`quantize_real` of float32 ``values``, unclamped, as float64 (+-inf where the
        quotient overflows)."""
        s = np.float32(qp.scale[0])
        v = np.asarray(values, np.float32)
        with np.errstate(over="ignore"):
            if self.a.quantize_method == "divide":
                q = v / s
            else:
                q = v * np.float32(np.float32(1.0) / s)
        return round_array(q, self.a.quantize_rounding) + int(qp.zero_point[0])

    xnn_bounds = False   # set while lowering a node whose fused bounds XNNPACK quantizes

    def out_range(self, qp: QParams, clamp: Optional[tuple]) -> tuple[int, int]:
        if self.xnn_bounds and clamp is not None:
            return self._xnn_range(qp, clamp)
        lo, hi = qp.qmin, qp.qmax
        if clamp is not None:
            c_lo, c_hi = clamp
            if c_lo is not None:
                lo = max(lo, min(hi, self.quantize_real(c_lo, qp)))
            if c_hi is not None:
                hi = min(hi, max(lo, self.quantize_real(c_hi, qp)))
        return lo, hi

    def requant_block(self, real: np.ndarray, out_qp: QParams, clamp, channel_axis: int,
                      ort_multiplier: Optional[np.ndarray] = None, zp_inside: bool = False) -> dict:
        """Requantization parameters for ``out = real * acc`` on the output grid ``out_qp``.

        ``real`` is the float64 real multiplier per channel; ``ort_multiplier`` is the float32
        multiplier exactly as ONNX Runtime computes it (operation order matters bit for bit)."""
        lo, hi = self.out_range(out_qp, clamp)
        block = {"out_zero_point": int(out_qp.zero_point[0]), "out_min": lo, "out_max": hi,
                 "out_dtype": storage_dtype(out_qp.dtype), "channel_axis": channel_axis,
                 "rq_rounding": self.a.rounding}
        mode = self.a.requant
        real = np.atleast_1d(np.asarray(real, np.float64))
        if self.a.multiplier_precision == "float32":
            # the profile evaluates the real multiplier step by step in float32 (ORT's operation
            # order where the caller gives it), then encodes that value
            f32 = real.astype(np.float32) if ort_multiplier is None else ort_multiplier
            real = np.atleast_1d(np.asarray(f32, np.float32)).astype(np.float64)
        zp_inside = zp_inside or self.a.zero_point == "before_rounding"
        if mode == "float32":
            m = real.astype(np.float32)
            block.update(rq_mode="fp32_zp_in" if zp_inside else "fp32",
                         rq_multiplier=np.atleast_1d(m).astype(np.float32),
                         rq_shift=np.zeros(len(np.atleast_1d(m)), np.int64))
        elif mode in ("double_q31", "fixed_point", "shift"):
            # Never emit a parameter the hardware cannot hold: out-of-range values become the
            # closest legal one, and the record says what the model needed instead.
            m, s, clips = mul.encode(real, mode, self.a.multiplier_bits, self.a.shift_min,
                                     self.a.shift_max)
            self._note_clips(clips)
            block.update(rq_mode={"double_q31": "double_q31", "fixed_point": "fixed", "shift": "shift"}[mode],
                         rq_multiplier=m, rq_shift=s)
        else:
            raise ValueError(f"unknown requant arithmetic {mode!r}")
        return block

    def _note_clips(self, clips: list) -> None:
        """Clipped multipliers of the parameters being built: every caller emits the step that
        uses them next, so they belong to the next requantizing step."""
        if clips:
            self._clips.append((len(self.steps), clips))

    def _limit_violations(self) -> list:
        from mrq.limits import clip_violations
        out = []
        for index, clips in self._clips:
            step = next((s for s in self.steps[index:] if "rq_mode" in s.params), None)
            if step is None or self.placement.get(step.name) == "host":
                continue   # host steps run the host's arithmetic, not the NPU's registers
            out += clip_violations(step.name, step.kind, self.step_node.get(step.name), clips)
        return out

    def emit(self, kind, node: Node, inputs, outputs, suffix="", **params):
        name = node.name + suffix
        try:
            self.steps.append(make_step(kind, name, inputs, outputs, **params))
        except SimulatorError as err:
            raise ModelError(f"node {node.name!r}: cannot lower it: {err}") from None
        self.step_node[name] = node.name

    def t(self, name) -> Tensor:
        return self.g.tensors[name]

    def ensure_buffer(self, name: str, node: Node) -> str:
        """Constants used as activations (QLinearAdd with a constant operand) become steps."""
        t = self.t(name)
        if t.is_const and name not in self.const_emitted:
            self.const_emitted.add(name)
            self.steps.append(make_step("constant", f"const_{name}", (), (name,),
                                        value=np.asarray(t.data).astype(storage_dtype(t.dtype))))
            self.step_node[f"const_{name}"] = node.name
        return name

    # ------------------------------------------------------------------ ops
    def lower(self) -> LoweredModel:
        self.const_emitted: set = set()
        self.placement: dict = {}
        for node in self.g.nodes:
            host = None if node.attrs.get("layout_boundary") else \
                self.a.host_arithmetic(island_op_name(node))
            if host is not None:
                self._lower_on_host(node, *host)
                continue
            if self.a.supported_ops is not None and not node.attrs.get("layout_boundary"):
                # (the Transposes mrq.layout adds are the simulator's, not the model's)
                names = IR_OP_NAMES.get(node.op, {node.op})
                if names and not (names & self.a.supported_ops):
                    raise UnsupportedOpError(island_op_name(node), node.name,
                                             f"profile {self.a.name!r} does not support it "
                                             f"(supported: {', '.join(sorted(self.a.supported_ops))})")
            if not self.lower_override(node):   # peer-runtime quirks (mrq/lower_extra.py)
                self._dispatch(node)
        g = self.g
        inputs = tuple(TensorSpec(n, storage_dtype(g.tensors[n].dtype), tuple(g.tensors[n].shape)) for n in g.inputs)
        outputs = tuple(TensorSpec(n, storage_dtype(g.tensors[n].dtype), tuple(g.tensors[n].shape)) for n in g.outputs)
        program = Program(inputs, outputs, tuple(self.steps))
        placement = {s.name: self.placement.get(s.name, "npu") for s in self.steps}
        return LoweredModel(program, g, self.a, self.step_node, placement, self._limit_violations())

    def _lower_on_host(self, node, how: str, host_arith: Optional[Arithmetic]) -> None:
        """Lower a ``host_ops`` node with the host's arithmetic: ``float`` (the float variants
        of the step kinds) or a named runtime profile's."""
        start = len(self.steps)
        saved = self.a
        try:
            if how == "float":
                self.a = replace(self.a, name=f"{saved.name} (host)", add="float",
                                 avgpool="ort_float", rescale="float_dq_q", requant="float32",
                                 multiplier_precision="float32", rounding="half_even",
                                 zero_point="after_rounding", global_avgpool="requant",
                                 shift_min=None, shift_max=None, multiplier_bits=None,
                                 quantize_method="divide", quantize_rounding="half_even",
                                 supported_ops=None, host_ops=(), runtime="generic")
                if node.op not in HOST_FLOAT_OPS:
                    raise UnsupportedOpError(
                        node.op, node.name, f"host_ops lists it with float arithmetic, which "
                        f"exists for {', '.join(sorted(HOST_FLOAT_OPS))}; name a runtime "
                        f"profile instead (e.g. {node.op}: tflite-int8)")
            else:
                self.a = host_arith
            if not self.lower_override(node):
                self._dispatch(node)
        finally:
            self.a = saved
        for step in self.steps[start:]:
            self.placement[step.name] = "host"


    def _mode(self, field: str, node):
        """The profile's ``ops.<field>``; a profile without it does not support the op."""
        mode = getattr(self.a, field)
        if mode is None:
            raise UnsupportedOpError(node.op, node.name, f"profile {self.a.name!r} has no "
                                                         f"ops.{field}: it does not support it")
        return mode

    def _dispatch(self, node) -> None:
        if self.ort_float_island(node):   # 16-bit QDQ under ORT (mrq/lower_islands.py)
            return
        op = POINTWISE.get(node.op)
        # an op with its own lowering (a TFLite runtime's table arithmetic) keeps it, unless the
        # profile's runtime has its own kernel for the op in the registry
        if op is not None and (self.a.runtime in op.runtime or not hasattr(self, "_" + node.op)):
            self._pointwise(node)
        else:
            getattr(self, "_" + node.op)(node)

    def _pointwise(self, node):
        """A pointwise op as a 256-entry table: every 8-bit input code's real value through the
        op's float semantics, quantized with the profile's own quantizer, clamped."""
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        if x_qp is None or y_qp is None or x_qp.dtype not in ("int8", "uint8") \
                or y_qp.dtype not in ("int8", "uint8") or x_qp.scale.size != 1:
            raise UnsupportedOpError(node.op, node.name, "a table op needs 8-bit per-tensor "
                                                         "quantized input and output")
        self.emit("lut", node, node.inputs, node.outputs,
                  table=self.pointwise_table(node.op, node.attrs, x_qp, y_qp, node.attrs.get("clamp")),
                  out_dtype=storage_dtype(y_qp.dtype))

    def pointwise_table(self, op: str, attrs: dict, x_qp: QParams, y_qp: QParams,
                        clamp=None) -> np.ndarray:
        """The 256 output codes of table op ``op`` (mrq/pointwise.py), indexed by input code -
        minimum: the profile runtime's function of each code's float32 value, quantized with the
        profile's quantizer, clamped."""
        info = np.iinfo(np.dtype(storage_dtype(x_qp.dtype)))
        codes = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
        # dequantized and evaluated in float32, as runtimes build their tables
        real = (codes - int(x_qp.zero_point[0])).astype(np.float32) * np.float32(x_qp.scale[0])
        with np.errstate(over="ignore"):
            y = POINTWISE[op].table_function(self.a.runtime)(real, attrs)
        lo, hi = self.out_range(y_qp, clamp)
        return np.clip(self.quantize_reals(y, y_qp), lo, hi).astype(storage_dtype(y_qp.dtype))

    def _Quantize(self, node):
        qp = self.t(node.outputs[0]).qparams
        lo, hi = self.out_range(qp, node.attrs.get("clamp"))
        self.emit("quantize", node, node.inputs, node.outputs,
                  scale=qp.scale.astype(np.float32), zero_point=qp.zero_point.astype(np.int64),
                  axis=qp.axis if qp.axis is not None else 1,
                  rounding=self.a.quantize_rounding, method=self.a.quantize_method,
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(qp.dtype))

    def _Dequantize(self, node):
        qp = self.t(node.inputs[0]).qparams
        self.emit("dequantize", node, [self.ensure_buffer(n, node) for n in node.inputs], node.outputs,
                  scale=qp.scale.astype(np.float32), zero_point=qp.zero_point.astype(np.int64),
                  axis=qp.axis if qp.axis is not None else 1)

    def _bias_codes(self, node, x_qp, w_qp, n_out) -> np.ndarray:
        if len(node.inputs) < 3:
            return np.zeros(n_out, np.int64)
        b = self.t(node.inputs[2])
        codes = np.asarray(b.data, np.int64).reshape(-1)
        if codes.size == 1 and n_out > 1:
            codes = np.full(n_out, codes[0], np.int64)
        expected = (np.float32(x_qp.scale[0]) * w_qp.scale.astype(np.float32)).astype(np.float32)
        if b.qparams is not None:
            bs = np.broadcast_to(b.qparams.scale, (n_out,)).astype(np.float64)
            ex = np.broadcast_to(expected, (n_out,)).astype(np.float64)
            if np.any(np.abs(bs - ex) > 1e-6 * ex):
                # The bias lives on another grid than the accumulator: the hardware must
                # pre-scale it, which we do here with the profile's rounding.
                real = (codes - b.qparams.zero_point) * bs
                codes = round_array(real / ex, self.a.rounding).astype(np.int64)
        return codes

    def _conv_like(self, node, kind, **requant_choice):
        x, w, y = self.t(node.inputs[0]), self.t(node.inputs[1]), self.t(node.outputs[0])
        x_qp, w_qp = x.qparams, w.qparams
        n_out = w.data.shape[0] if kind == "conv" else w.data.shape[1]
        wzp = np.broadcast_to(w_qp.zero_point, (n_out,)).astype(np.int64)
        params = dict(weight=np.ascontiguousarray(w.data.astype(storage_dtype(w_qp.dtype))),
                      weight_zero_point=np.ascontiguousarray(wzp),
                      bias=np.ascontiguousarray(self._bias_codes(node, x_qp, w_qp, n_out)),
                      input_zero_point=int(x_qp.zero_point[0]), **self.acc_block())
        dtypes = (str(x_qp.dtype), str(w_qp.dtype))
        if kind == "conv":
            params.update(strides=node.attrs["strides"], pads=node.attrs["pads"],
                          dilations=node.attrs["dilations"], group=node.attrs["group"],
                          layout=node.attrs.get("layout", "NCHW"))
            channel_axis = 1 if params["layout"] == "NCHW" else 3
            # ORT's depthwise kernels take one weight zero point: with per-channel ones that
            # differ, ORT 1.32 runs the groups through QGEMM instead (measured)
            depthwise = (w.data.shape[1] == 1 and w.data.shape[0] == int(node.attrs["group"])
                         and bool(np.all(wzp == wzp[0])))
            # ONNX ConvInteger (integer_output) multiplies with the weight as MLAS's A operand,
            # an s8 x u8 kernel that widens first: exact (measured, tests/mrq/test_pair_sums_ort.py)
            params.update(pair_sums="exact" if node.attrs.get("integer_output")
                          else self.pair_sums(*dtypes, depthwise=depthwise,
                                              float_op=self.ort_keeps_float(node)))
        else:
            channel_axis = -1
            params.update(pair_sums=self.pair_sums(*dtypes, float_op=self.ort_keeps_float(node)))
        if node.attrs.get("integer_output"):
            params.update(rq_mode="none", out_dtype="int32", channel_axis=channel_axis,
                          out_min=-(2**31), out_max=2**31 - 1, out_zero_point=0,
                          rq_multiplier=np.ones(1, np.int64), rq_shift=np.zeros(1, np.int64),
                          rq_rounding=self.a.rounding)
        else:
            w_scale = np.broadcast_to(w_qp.scale, (n_out,)).astype(np.float32)
            real = self.conv_real_multiplier(kind, x_qp, w_qp, w_scale, y.qparams)
            ort = mul.ort_multiplier(x_qp.scale[0], w_scale, y.qparams.scale[0])
            params.update(self.requant_block(real, y.qparams, node.attrs.get("clamp"), channel_axis, ort))
            params.update(requant_choice)
        self.emit(kind, node, node.inputs[:1], node.outputs, **params)

    def _Conv(self, node):
        self._conv_like(node, "conv")

    def _Gemm(self, node):
        self._conv_like(node, "gemm")

    def _Add(self, node):
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        lo, hi = self.out_range(qy, node.attrs.get("clamp"))
        common = dict(zero_point_a=int(qa.zero_point[0]), zero_point_b=int(qb.zero_point[0]),
                      out_zero_point=int(qy.zero_point[0]), out_min=lo, out_max=hi,
                      out_dtype=storage_dtype(qy.dtype))
        sa, sb, sy = (np.float32(q.scale[0]) for q in (qa, qb, qy))
        mode = self._mode("add", node)
        if node.op == "Sub" and mode != "fixed":
            raise UnsupportedOpError("Sub", node.name, f"add arithmetic {mode!r} has no subtraction")
        if mode in ("ort_fma", "float"):
            extra = {"rounding": self.a.quantize_rounding} if mode == "float" else {}
            self.emit("add", node, [a, b], node.outputs, mode=mode, scale_a=sa, scale_b=sb, scale_out=sy,
                      **extra, **common)
        elif mode == "tflite":
            left_shift = 20
            twice_max = 2.0 * max(float(sa), float(sb))
            ma, ea = mul.tflite_quantize_multiplier(float(sa) / twice_max)
            mb, eb = mul.tflite_quantize_multiplier(float(sb) / twice_max)
            mo, eo = mul.tflite_quantize_multiplier(twice_max / ((1 << left_shift) * float(sy)))
            self.emit("add", node, [a, b], node.outputs, mode="tflite", left_shift=left_shift,
                      multiplier_a=ma, shift_a=ea, multiplier_b=mb, shift_b=eb,
                      multiplier_out=mo, shift_out=eo, **common)
        elif mode == "fixed":
            ra, rb = float(sa) / float(sy), float(sb) / float(sy)
            if self.a.requant == "shift":
                m_a, m_b, shift, clips = mul.pow2_add_multipliers(ra, rb, self.a.shift_min, self.a.shift_max)
            else:
                m_a, m_b, shift, clips = mul.fixed_add_multipliers(
                    ra, rb, self.a.multiplier_bits, self.a.shift_min, self.a.shift_max)
            self._note_clips(clips)
            if node.op == "Sub":
                m_b = -m_b   # a - b: the same datapath, the second product negated
            self.emit("add", node, [a, b], node.outputs, mode="fixed", multiplier_a=m_a, multiplier_b=m_b,
                      rq_mode="shift", rq_multiplier=np.ones(1, np.int64),
                      rq_shift=np.array([shift], np.int64), rq_rounding=self.a.rounding, **common)
        else:
            raise ValueError(f"unknown add arithmetic {mode!r}")

    def _Mul(self, node):
        self._mode("mul", node)
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        real = np.array([float(qa.scale[0]) * float(qb.scale[0]) / float(qy.scale[0])])
        ort = np.array([np.float32(np.float32(qa.scale[0]) * np.float32(qb.scale[0])) / np.float32(qy.scale[0])],
                       np.float32)
        block = self.requant_block(real, qy, node.attrs.get("clamp"), -1, ort,
                                   zp_inside=(self.a.mul == "fp32_zp_in"))
        self.emit("mul", node, [a, b], node.outputs, zero_point_a=int(qa.zero_point[0]),
                  zero_point_b=int(qb.zero_point[0]), **block)

    def _rescale_params(self, x_qp: QParams, y_qp: QParams, clamp) -> dict:
        if self.a.rescale == "float_dq_q":
            lo, hi = self.out_range(y_qp, clamp)
            return dict(input_zero_point=int(x_qp.zero_point[0]), rq_mode="float_dq_q",
                        scale_in=np.float32(x_qp.scale[0]), scale_out=np.float32(y_qp.scale[0]),
                        out_zero_point=int(y_qp.zero_point[0]), out_min=lo, out_max=hi,
                        out_dtype=storage_dtype(y_qp.dtype), rq_rounding=self.a.quantize_rounding,
                        channel_axis=-1)
        real = np.array([float(x_qp.scale[0]) / float(y_qp.scale[0])])
        return dict(input_zero_point=int(x_qp.zero_point[0]), **self.requant_block(real, y_qp, clamp, -1))

    def _Rescale(self, node):
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        self.emit("rescale", node, node.inputs, node.outputs,
                  **self._rescale_params(x_qp, y_qp, node.attrs.get("clamp")))

    def _Clamp(self, node):
        if self.tflite_relu(node):   # LiteRT's standalone RELU* between two grids
            return
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        clamp = (node.attrs.get("lo"), node.attrs.get("hi"))
        if x_qp.same_grid(y_qp):
            lo, hi = self.out_range(y_qp, clamp)
            self.emit("clamp", node, node.inputs, node.outputs, out_min=lo, out_max=hi)
        else:
            self.emit("rescale", node, node.inputs, node.outputs, **self._rescale_params(x_qp, y_qp, clamp))

    def _MaxPool(self, node):
        at = node.attrs
        self.emit("maxpool", node, node.inputs, node.outputs, layout=at.get("layout", "NCHW"),
                  kernel=at["kernel"], strides=at["strides"], pads=at["pads"],
                  dilations=at.get("dilations", (1, 1)), ceil_mode=at.get("ceil_mode", 0))

    def _AveragePool(self, node):
        at = node.attrs
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        geom = dict(layout=at.get("layout", "NCHW"), kernel=at["kernel"], strides=at["strides"],
                    pads=at["pads"], ceil_mode=at.get("ceil_mode", 0),
                    count_include_pad=at.get("count_include_pad", 0))
        x_shape = self.t(node.inputs[0]).shape
        spatial = (x_shape[2:4] if geom["layout"] == "NCHW" else x_shape[1:3]) if len(x_shape) == 4 else ()
        if self.a.avgpool == "ort_float" and tuple(spatial) == tuple(geom["kernel"]) and not any(geom["pads"]):
            # ONNX Runtime runs an average pool over the whole image with its global-pool kernel.
            self._GlobalAveragePool(node)
            return
        lo, hi = self.out_range(y_qp, at.get("clamp"))
        if self.a.avgpool == "tflite_raw" and not x_qp.same_grid(y_qp):
            raise UnsupportedOpError("AveragePool", node.name,
                                     "TFLite-style average pooling needs equal input and output scale/zero point")
        self._emit_avgpool(node, geom, x_qp, y_qp, lo, hi, at.get("clamp"))

    def _emit_avgpool(self, node, geom, x_qp, y_qp, lo, hi, clamp):
        mode = self._mode("avgpool", node)
        if mode == "ort_float":
            self.emit("avgpool", node, node.inputs, node.outputs, mode=mode, **geom,
                      scale_in=np.float32(x_qp.scale[0]), input_zero_point=int(x_qp.zero_point[0]),
                      scale_out=np.float32(y_qp.scale[0]), out_zero_point=int(y_qp.zero_point[0]),
                      out_min=lo, out_max=hi, out_dtype=storage_dtype(y_qp.dtype))
        elif mode == "tflite_raw":
            self.emit("avgpool", node, node.inputs, node.outputs, mode=mode, **geom,
                      out_min=lo, out_max=hi, out_dtype=storage_dtype(y_qp.dtype))
        elif not self.a.divider:
            self._avgpool_without_divider(node, geom, x_qp, y_qp, clamp)
        else:
            real = np.array([float(x_qp.scale[0]) / float(y_qp.scale[0])])
            self.emit("avgpool", node, node.inputs, node.outputs, mode="fixed", **geom,
                      input_zero_point=int(x_qp.zero_point[0]),
                      **self.requant_block(real, y_qp, clamp, -1))

    def _avgpool_without_divider(self, node, geom, x_qp, y_qp, clamp):
        """Hardware without a divider (``ops.divider: false``): the window sums come from the
        MAC array (a depthwise conv with weights 1 and the profile's accumulator), and 1/count
        is folded into the requantization multiplier, so every window must have one count."""
        x = self.t(node.inputs[0])
        layout = geom["layout"]
        kh, kw = (int(k) for k in geom["kernel"])
        pads = tuple(int(p) for p in geom["pads"])
        if any(pads) and not geom["count_include_pad"]:
            raise UnsupportedOpError(
                "AveragePool", node.name, "padded windows have different counts, and profile "
                f"{self.a.name!r} has no divider (ops.divider: false) to divide by each")
        if geom["ceil_mode"]:
            raise UnsupportedOpError("AveragePool", node.name, "ceil_mode windows have "
                                     "different counts and the profile has no divider")
        channels = x.shape[1] if layout == "NCHW" else x.shape[-1]
        if channels is None:
            raise ModelError(f"node {node.name!r}: AveragePool needs a static channel count")
        count = kh * kw
        real = np.array([float(x_qp.scale[0]) / (float(y_qp.scale[0]) * count)])
        channel_axis = 1 if layout == "NCHW" else 3
        self.emit("conv", node, node.inputs, node.outputs, suffix="/window_sum",
                  weight=np.ones((int(channels), 1, kh, kw), np.int8),
                  weight_zero_point=np.zeros(int(channels), np.int64),
                  bias=np.zeros(int(channels), np.int64), input_zero_point=int(x_qp.zero_point[0]),
                  strides=tuple(geom["strides"]), pads=pads, dilations=(1, 1),
                  group=int(channels), layout=layout, **self.acc_block(),
                  **self.requant_block(np.full(int(channels), real[0]), y_qp, clamp, channel_axis))

    def _GlobalAveragePool(self, node):
        self._mode("global_avgpool", node)
        x = self.t(node.inputs[0])
        x_qp, y_qp = x.qparams, self.t(node.outputs[0]).qparams
        layout = node.attrs.get("layout", "NCHW")
        spatial = x.shape[2:4] if layout == "NCHW" else x.shape[1:3]
        if len(spatial) != 2 or any(d is None for d in spatial):
            raise ModelError(f"node {node.name!r}: GlobalAveragePool needs a static spatial input shape")
        count = int(spatial[0]) * int(spatial[1])
        if self.a.global_avgpool == "avgpool":
            # Hardware without a 1/N multiplier: an average pool over the whole plane.
            geom = dict(layout=layout, kernel=tuple(int(d) for d in spatial), strides=(1, 1),
                        pads=(0, 0, 0, 0), ceil_mode=0, count_include_pad=0)
            lo, hi = self.out_range(y_qp, node.attrs.get("clamp"))
            self._emit_avgpool(node, geom, x_qp, y_qp, lo, hi, node.attrs.get("clamp"))
            return
        real = np.array([float(x_qp.scale[0]) / (float(y_qp.scale[0]) * count)])
        ort = np.array([np.float32(x_qp.scale[0]) / np.float32(np.float32(y_qp.scale[0]) * np.float32(count))],
                       np.float32)
        self.emit("global_avgpool", node, node.inputs, node.outputs, layout=layout,
                  input_zero_point=int(x_qp.zero_point[0]),
                  **self.requant_block(real, y_qp, node.attrs.get("clamp"), -1, ort))

    def _Concat(self, node):
        y_qp = self.t(node.outputs[0]).qparams
        inputs = []
        for i, name in enumerate(node.inputs):
            name = self.ensure_buffer(name, node)
            x_qp = self.t(name).qparams
            if x_qp.same_grid(y_qp):
                inputs.append(name)
                continue
            tmp = f"{node.outputs[0]}__in{i}"
            self.emit("rescale", node, [name], [tmp], suffix=f"/rescale{i}",
                      **self._rescale_params(x_qp, y_qp, None))
            inputs.append(tmp)
        self.emit("concat", node, inputs, node.outputs, axis=node.attrs["axis"])
        if node.attrs.get("clamp") is not None:
            raise UnsupportedOpError("Concat", node.name, "a clamp fused after Concat")

    def _Reshape(self, node):
        shape = node.attrs.get("shape")
        if shape is None:   # an identity kept because it names a graph output: 0 copies each dim
            shape = (0,) * len(self.t(node.inputs[0]).shape)
        self.emit("reshape", node, node.inputs, node.outputs, shape=tuple(shape))

    def _Transpose(self, node):
        self.emit("transpose", node, node.inputs, node.outputs, perm=tuple(node.attrs["perm"]))


def lower(graph: Graph, arithmetic: Arithmetic) -> LoweredModel:
    return _Lowerer(graph, arithmetic).lower()
