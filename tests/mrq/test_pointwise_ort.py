"""The table ops of mrq/pointwise.py against ONNX Runtime's CPU provider, code for code.

ORT fuses ``DQ -> Sigmoid/LeakyRelu -> Q`` into com.microsoft ``QLinearSigmoid`` /
``QLinearLeakyRelu`` (a 256-entry table built with its float kernel) and runs the other ops as
``DQ -> float kernel -> Q`` (``Tanh``, ``Gelu``: MLAS approximations; ``HardSigmoid``: Eigen;
``HardSwish``: its function body). Either way every input code has one output code; each model
here feeds all 256 codes through several (scale, zero point) pairs at once and the simulator,
with the ``onnxruntime-cpu`` profile, must give ORT's codes exactly, in the QDQ and (where ORT
has one) the QOperator form. The float32 replicas are compared with ORT's float ops on 100k
inputs here; bench/ort_pointwise_parity.py runs the long sweeps (every 37th float32 bit pattern
in [-40, 40], hundreds of random grids)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.ort_host import ORT_PROFILE

ort = pytest.importorskip("onnxruntime")

F32 = np.float32
_MS = "com.microsoft"

# (x scale, x zero point, y scale, y zero point) for int8; uint8 shifts both zero points by 128.
# Tiny and large input scales saturate most codes; y scales from 1/256 (the usual grid of a
# sigmoid) down to 1e-5 (most outputs clamp) and up to 0.5 (a few codes in use).
SCALE_PAIRS = [
    (0.05, 3, 1 / 256, -128),
    (0.1, 0, 0.02, 5),
    (1e-4, 100, 1e-5, -100),
    (3.0, -128, 0.5, 127),
    (0.0078125, 0, 0.0078125, 0),
    (0.0371, -17, 0.0113, 40),
    (0.6, 90, 0.004, -61),
]

# Pairs where a table of the op's true function, evaluated in float32 and quantized as ORT does,
# differs from ORT's in at least one code (found by a search; the test re-checks it): ORT's own
# kernel (mrq/ort_float.py) is needed there. Sigmoid's first pair reaches MLAS's clamp at -18.
ADVERSARIAL = {
    "Sigmoid": [(0.0791, 115, 7.6e-09, -36), (0.11552135646343231, 36, 0.042543936520814896, 0)],
    "Tanh": [(0.010208243504166603, -1, 0.028409700840711594, 0),
             (0.2264738380908966, -77, 0.020698487758636475, 0)],
    "HardSwish": [(0.027119288221001625, 98, 0.01625537872314453, 0),
                  (0.07206626981496811, 16, 0.016764044761657715, 0)],
    "Gelu": [(0.11421014368534088, -32, 0.14221228659152985, 0),
             (0.02322869375348091, 69, 0.0032141634728759527, 0)],
    "Gelu-tanh": [(0.0225, 120, 9.61e-08, 8), (0.011498904787003994, -72, 0.04225844517350197, 0)],
}

# ONNX op -> (attributes, opset, QOperator op or None, IR op)
OPS = {
    "Sigmoid": ({}, 13, "QLinearSigmoid", "Logistic"),
    "LeakyRelu": ({"alpha": 0.137}, 16, "QLinearLeakyRelu", "LeakyRelu"),
    "Tanh": ({}, 13, None, "Tanh"),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, 13, None, "HardSigmoid"),
    "HardSwish": ({}, 14, None, "HardSwish"),
    "Gelu": ({}, 20, None, "Gelu"),
    "Gelu-tanh": ({"approximate": "tanh"}, 20, None, "Gelu"),
}


def _pairs(op_key, dtype):
    shift = 128 if dtype == "uint8" else 0
    return [(xs, xz + shift, ys, yz + shift)
            for xs, xz, ys, yz in SCALE_PAIRS + ADVERSARIAL.get(op_key, [])]


def _true_table(op_key, dtype, pair):
    """The codes of the op's true function on every input code, quantized as ORT quantizes."""
    from mrq.pointwise import POINTWISE, ir_attrs
    attrs, _, _, ir_op = OPS[op_key]
    xs, xz, ys, yz = pair
    info = np.iinfo(dtype)
    real = (np.arange(info.min, info.max + 1) - xz).astype(F32) * F32(xs)
    with np.errstate(over="ignore"):
        y = POINTWISE[ir_op].real(real, ir_attrs(ir_op, attrs)).astype(F32)
    return np.clip(np.rint(y / F32(ys)).astype(np.int64) + yz, info.min, info.max)


def _model(op_key, dtype, form):
    """One branch per scale pair: ``x_k`` (all codes) -> op -> ``y_k``, as DQ/op/Q or QLinear*."""
    attrs, opset, qop, _ = OPS[op_key]
    onnx_op = op_key.split("-")[0]
    elem = TensorProto.INT8 if dtype == "int8" else TensorProto.UINT8
    nodes, inits, inputs, outputs = [], [], [], []
    for k, (xs, xz, ys, yz) in enumerate(_pairs(op_key, dtype)):
        inits += [numpy_helper.from_array(np.array(xs, F32), f"xs{k}"),
                  numpy_helper.from_array(np.array(xz, dtype), f"xz{k}"),
                  numpy_helper.from_array(np.array(ys, F32), f"ys{k}"),
                  numpy_helper.from_array(np.array(yz, dtype), f"yz{k}")]
        if form == "qop":
            nodes.append(helper.make_node(qop, [f"x{k}", f"xs{k}", f"xz{k}", f"ys{k}", f"yz{k}"],
                                          [f"y{k}"], domain=_MS, **attrs))
        else:
            nodes += [helper.make_node("DequantizeLinear", [f"x{k}", f"xs{k}", f"xz{k}"], [f"xf{k}"]),
                      helper.make_node(onnx_op, [f"xf{k}"], [f"yf{k}"], **attrs),
                      helper.make_node("QuantizeLinear", [f"yf{k}", f"ys{k}", f"yz{k}"], [f"y{k}"])]
        inputs.append(helper.make_tensor_value_info(f"x{k}", elem, [1, 256]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", elem, [1, 256]))
    graph = helper.make_graph(nodes, f"{op_key}_{dtype}_{form}", inputs, outputs, initializer=inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(_MS, 1)] if form == "qop" else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 9
    return model


def _ort_session(path):
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


CASES = [(op, dtype, form) for op, (_, _, qop, _) in OPS.items() for dtype in ("int8", "uint8")
         for form in (("qdq", "qop") if qop else ("qdq",))]


@pytest.mark.parametrize("op_key,dtype,form", CASES, ids=["-".join(c) for c in CASES])
def test_every_code_matches_onnxruntime(op_key, dtype, form, tmp_path):
    from mrq.api import simulate
    path = tmp_path / "m.onnx"
    onnx.save(_model(op_key, dtype, form), str(path))
    info = np.iinfo(dtype)
    codes = np.arange(info.min, info.max + 1).astype(dtype).reshape(1, 256)
    pairs = _pairs(op_key, dtype)
    feeds = {f"x{k}": codes for k in range(len(pairs))}
    session = _ort_session(path)
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    got = simulate(str(path), ORT_PROFILE, feeds, fidelity=False).outputs
    for k, pair in enumerate(pairs):
        assert got[f"y{k}"].dtype == want[f"y{k}"].dtype
        bad = np.flatnonzero(got[f"y{k}"] != want[f"y{k}"])
        assert bad.size == 0, (pair, codes[0, bad[:8]], got[f"y{k}"][0, bad[:8]], want[f"y{k}"][0, bad[:8]])
        if k >= len(SCALE_PAIRS):   # an adversarial pair still tells ORT's kernel from the truth
            assert np.any(_true_table(op_key, dtype, pair) != want[f"y{k}"][0]), pair


def _chain_model():
    """conv -> HardSwish -> conv -> Sigmoid -> conv -> Tanh -> conv -> HardSigmoid, float."""
    rng = np.random.default_rng(11)
    chans = [3, 8, 8, 6, 4]
    inits, nodes, x = [], [], "x"
    acts = [("HardSwish", {}), ("Sigmoid", {}), ("Tanh", {}), ("HardSigmoid", {"alpha": 0.25})]
    for i, (act, attrs) in enumerate(acts):
        k = 3 if i == 0 else 1
        w = rng.normal(0, 0.9 / np.sqrt(chans[i] * k * k), (chans[i + 1], chans[i], k, k))
        inits += [numpy_helper.from_array(w.astype(F32), f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.3, chans[i + 1]).astype(F32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[k // 2] * 4),
                  helper.make_node(act, [f"c{i}"], [f"a{i}"], **attrs)]
        x = f"a{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info(
            x, TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("act_type", ["QUInt8", "QInt8"])
def test_mixed_chain_sim_cli_matches_onnxruntime(act_type, tmp_path):
    """A quantize_static QDQ model mixing the table ops with convolutions, through ``mrq sim``
    (with the float reference's fidelity table) against ORT."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from mrq.cli import main

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{"x": rng.normal(0, 1.5, (4, 3, 8, 8)).astype(F32)}
                                 for _ in range(3)])

        def get_next(self):
            return next(self.batches, None)

    path = tmp_path / "chain_qdq.onnx"
    quantize_static(_chain_model(), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=getattr(QuantType, act_type), weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish"])
    x = np.random.default_rng(5).normal(0, 2.0, (8, 3, 8, 8)).astype(F32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    assert main(["sim", str(path), "--profile", ORT_PROFILE, "--inputs",
                 str(tmp_path / "in.npz"), "-o", str(out), "-q"]) == 0
    session = _ort_session(path)
    (name,) = [o.name for o in session.get_outputs()]
    want = session.run(None, {"x": x})[0]
    with np.load(out, allow_pickle=False) as got:
        assert got[name].shape == want.shape
        assert int(np.count_nonzero(got[name] != want)) == 0
        # not a constant output: the chain's tables are in use
        assert len(np.unique(want)) > 20


def _float_op_model(op, opset, **attrs):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def test_ort_float_kernels_match_onnxruntime():
    """The replicas bit for bit against ORT's float ops on a sweep of float32 inputs (saturated,
    near the split and clamp points, tiny, signed zeros), an odd count so the kernels' tails run."""
    from mrq import ort_float
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 4, 60_000), rng.uniform(-30, 30, 20_000),
                        np.linspace(-20, 20, 20_001), [0.0, -0.0, 1e-30, -1e-40, 0.921875 * np.sqrt(2),
                                                       18.0, -18.0, 9.0, -9.0, 88.0, -100.0]]).astype(F32)
    cases = [("Sigmoid", {}, 13, ort_float.logistic), ("Tanh", {}, 13, ort_float.tanh),
             ("Erf", {}, 13, ort_float.erf),
             ("Gelu", {}, 20, ort_float.gelu),
             ("Gelu", {"approximate": "tanh"}, 20, lambda v: ort_float.gelu(v, "tanh")),
             ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 13,
              lambda v: ort_float.hard_sigmoid(v, 0.3, 0.4)),
             ("HardSwish", {}, 14, ort_float.hard_swish)]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for op, attrs, opset, fn in cases:
        session = ort.InferenceSession(_float_op_model(op, opset, **attrs).SerializeToString(), so,
                                       providers=["CPUExecutionProvider"])
        want = session.run(None, {"x": x})[0]
        got = fn(x)
        assert got.dtype == F32
        bad = np.flatnonzero(want.view(np.int32) != got.view(np.int32))
        assert bad.size == 0, (op, attrs, x[bad[:5]], want[bad[:5]], got[bad[:5]])


def _round_f32(value) -> F32:
    """The float32 nearest to a Fraction, ties to even, decided exactly."""
    from fractions import Fraction
    guess = F32(float(value))
    candidates = [np.nextafter(guess, F32(-np.inf)), guess, np.nextafter(guess, F32(np.inf))]
    def key(c):
        return abs(Fraction(float(c)) - value), int(np.asarray(c).view(np.int32)) & 1
    return min(candidates, key=key)


def test_fma_rounds_once():
    """``fma`` against exact rational arithmetic: random operands, products that cancel the
    addend, and sums that fall on a float32 midpoint (where rounding twice goes wrong)."""
    from fractions import Fraction

    from mrq.ort_float import fma
    rng = np.random.default_rng(9)
    a = (rng.normal(0, 1, 3000) * 10.0 ** rng.integers(-6, 6, 3000)).astype(F32)
    b = (rng.normal(0, 1, 3000) * 10.0 ** rng.integers(-6, 6, 3000)).astype(F32)
    c = (rng.normal(0, 1, 3000) * 10.0 ** rng.integers(-6, 6, 3000)).astype(F32)
    c[:1000] = -(a[:1000] * b[:1000])      # catastrophic cancellation: the low product bits remain
    # a*b = 1.5 + 1.5 ulp, a float32 midpoint; c = -2^-80 puts the sum just below it, which the
    # float64 sum loses (rounding to float64 then float32 would round up: ties to even)
    a[1000], b[1000], c[1000] = F32(1 + 2 ** -23), F32(1.5), F32(-(2.0 ** -80))
    twice = (np.float64(a[1000]) * np.float64(b[1000]) + np.float64(c[1000])).astype(F32)
    a[1001], b[1001], c[1001] = F32(1 + 2 ** -12), F32(1 + 2 ** -12), F32(-(2 ** -11))
    got = fma(a, b, c)
    assert got[1000] == F32(1.5 + 2 ** -23) != twice
    want = np.array([_round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
                     for x, y, z in zip(a, b, c)], F32)
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    # the naive float32 product-then-sum differs somewhere on these operands
    assert not np.array_equal((a * b + c).view(np.int32), want.view(np.int32))


def test_bad_gelu_approximation_is_a_model_error():
    from mrq.errors import ModelError
    from mrq.pointwise import ir_attrs
    with pytest.raises(ModelError, match="approximate='fast'"):
        ir_attrs("Gelu", {"approximate": b"fast"}, "g1")
    assert ir_attrs("Gelu", {"approximate": b"tanh"}) == {"approximate": "tanh"}


def test_import_export_round_trip_runs_on_onnxruntime(tmp_path):
    """QOperator and QDQ forms import to the same IR op; export writes the float op between Q/DQ
    (Gelu at opset 20) and ORT reproduces the simulator's codes on the exported model."""
    from mrq.api import simulate
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    src = tmp_path / "gelu.onnx"
    onnx.save(_model("Gelu-tanh", "int8", "qdq"), str(src))
    model = export_onnx(load_model(str(src)))
    assert model.opset_import[0].version >= 20
    assert [n.attribute[0].s for n in model.graph.node if n.op_type == "Gelu"] == \
        [b"tanh"] * len(_pairs("Gelu-tanh", "int8"))
    out = tmp_path / "gelu_export.onnx"
    onnx.save(model, str(out))
    codes = np.arange(-128, 128).astype(np.int8).reshape(1, 256)
    feeds = {i.name: codes for i in model.graph.input}
    want = _ort_session(out).run(None, feeds)
    got = simulate(str(src), ORT_PROFILE, feeds, fidelity=False).outputs
    for k, name in enumerate(o.name for o in model.graph.output):
        assert np.array_equal(got[name], want[k])
    for form in ("qdq", "qop"):
        onnx.save(_model("Sigmoid", "uint8", form), str(src))
        assert [n.op for n in load_model(str(src)).nodes] == ["Logistic"] * len(_pairs("Sigmoid", "uint8"))


def _softmax_model(dtype, form, x_grid, y_grid, axis):
    elem = TensorProto.INT8 if dtype == "int8" else TensorProto.UINT8
    inits = [numpy_helper.from_array(np.array(x_grid[0], F32), "xs"),
             numpy_helper.from_array(np.array(x_grid[1], dtype), "xz"),
             numpy_helper.from_array(np.array(y_grid[0], F32), "ys"),
             numpy_helper.from_array(np.array(y_grid[1], dtype), "yz")]
    if form == "qop":
        nodes = [helper.make_node("QLinearSoftmax", ["x", "xs", "xz", "ys", "yz"], ["y"],
                                  domain=_MS, axis=axis, opset=13)]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
                 helper.make_node("Softmax", ["xf"], ["yf"], axis=axis),
                 helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "softmax", [helper.make_tensor_value_info("x", elem, [3, 5, 37])],
                              [helper.make_tensor_value_info("y", elem, [3, 5, 37])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(_MS, 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("form", ["qdq", "qop"])
def test_softmax_matches_onnxruntime(dtype, form, tmp_path):
    """ORT fuses ``DQ -> Softmax -> Q`` into com.microsoft ``QLinearSoftmax``; both forms import
    to the IR's Softmax. Output grid 1/256 at the lowest code only: QLinearSoftmax multiplies by
    ``floor(1 / y_scale)``, which the simulator's float softmax does not model."""
    from mrq.api import simulate
    shift = 128 if dtype == "uint8" else 0
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, (3, 5, 37)).astype(dtype)
    x[0, 0, :] = info.max       # a row of ties
    for x_grid, y_grid, axis in [((0.1, shift), (1 / 256, -128 + shift), -1),
                                 ((0.043, 17 + shift), (1 / 256, -128 + shift), 2),
                                 ((0.25, -3 + shift), (1 / 256, -128 + shift), 1)]:
        path = tmp_path / f"softmax_{axis}.onnx"
        onnx.save(_softmax_model(dtype, form, x_grid, y_grid, axis), str(path))
        want = _ort_session(path).run(None, {"x": x})[0]
        got = simulate(str(path), ORT_PROFILE, {"x": x}, fidelity=False).outputs["y"]
        assert int(np.count_nonzero(got != want)) == 0, (x_grid, y_grid, axis)
