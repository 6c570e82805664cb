"""The quantized node tests of the ONNX backend test suite, regenerated from the installed onnx
package (its ``expect`` cases: model, inputs, expected outputs), run through mrq's importer and
the simulator under ``onnxruntime-cpu``.

Every case ends one of two ways: the simulator's outputs equal the expected ones exactly, or the
import refuses the model with a one-line user error (float8/float4/2-bit types). No case may
crash, and the set that must pass only grows. Blocked quantization and the float graph of the
``_expanded`` DynamicQuantizeLinear cases are also checked against ONNX Runtime below, on inputs
the node tests do not cover (partial blocks, INT4 weights, ties, empty and huge ranges).

The node tests give scales and zero points (and weights) as graph *inputs*; the simulator needs
them fixed, so the test freezes them with ``import_onnx(..., constants=...)``. Left as inputs they
are a clear error naming the node (``test_parameter_inputs_need_values``)."""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mrq.errors import MrqError
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from tests.ort_host import ORT_PROFILE

_MODULES = ("quantizelinear", "dequantizelinear", "qlinearconv", "qlinearmatmul", "convinteger",
            "matmulinteger", "dynamicquantizelinear")

# input slots that hold quantization parameters or weights (frozen as constants)
_CONST_SLOTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2),
                "QLinearConv": (1, 2, 3, 4, 5, 6, 7, 8), "QLinearMatMul": (1, 2, 3, 4, 5, 6, 7),
                "ConvInteger": (1, 2, 3), "MatMulInteger": (1, 2, 3)}

# Exact today (none of these may regress): 33 of the 45.
MUST_PASS = {
    "test_quantizelinear", "test_quantizelinear_axis", "test_quantizelinear_uint16",
    "test_quantizelinear_int16", "test_quantizelinear_int4", "test_quantizelinear_uint4",
    "test_dequantizelinear", "test_dequantizelinear_uint16",
    "test_dequantizelinear_int16", "test_dequantizelinear_int4", "test_dequantizelinear_uint4",
    "test_qlinearconv", "test_qlinearmatmul_2D_uint8_float32", "test_qlinearmatmul_2D_uint8_float16",
    "test_qlinearmatmul_2D_int8_float32", "test_qlinearmatmul_2D_int8_float16",
    "test_convinteger_without_padding", "test_convinteger_with_padding", "test_matmulinteger",
    "test_dequantizelinear_axis", "test_qlinearmatmul_3D_uint8_float32",
    "test_qlinearmatmul_3D_uint8_float16", "test_qlinearmatmul_3D_int8_float32",
    "test_qlinearmatmul_3D_int8_float16", "test_dynamicquantizelinear",
    "test_dynamicquantizelinear_max_adjusted", "test_dynamicquantizelinear_min_adjusted",
    "test_dequantizelinear_blocked", "test_quantizelinear_blocked_asymmetric",
    "test_quantizelinear_blocked_symmetric", "test_dynamicquantizelinear_expanded",
    "test_dynamicquantizelinear_max_adjusted_expanded",
    "test_dynamicquantizelinear_min_adjusted_expanded",
}


def _cases():
    import onnx.backend.test.case.node as node_cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _MODULES:
            importlib.import_module(f"onnx.backend.test.case.node.{name}")
    prefixes = tuple(f"test_{m}" for m in _MODULES)
    return {c.name: c for c in node_cases._NodeTestCases if c.name.startswith(prefixes)}


CASES = _cases()


def _array(value):
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def _codes(a: np.ndarray) -> np.ndarray:
    """4-bit arrays (ml_dtypes) as the int8/uint8 codes the simulator is fed with."""
    return {"int4": a.astype(np.int8), "uint4": a.astype(np.uint8)}.get(a.dtype.name, a)


def _run(case):
    (inputs, expected), = case.data_sets
    graph = case.model.graph
    node = graph.node[0]
    values = dict(zip([i.name for i in graph.input], map(_array, inputs)))
    frozen = {node.input[k]: values[node.input[k]] for k in _CONST_SLOTS.get(node.op_type, ())
              if k < len(node.input) and node.input[k] in values}
    feeds = {k: _codes(v) for k, v in values.items() if k not in frozen}
    ir = import_onnx(case.model, case.name, constants=frozen)
    outputs = Pipeline(ir, ORT_PROFILE, "native").run(feeds).outputs
    return [outputs[o.name] for o in graph.output], [_codes(_array(e)) for e in expected]


@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_node_case(name):
    assert len(CASES) >= 45, "the onnx package ships fewer quantized node tests than expected"
    try:
        got, want = _run(CASES[name])
    except MrqError as err:
        assert name not in MUST_PASS, f"{name} regressed: {err}"
        msg = str(err)
        assert msg and "\n" not in msg and "Traceback" not in msg
        return
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (name, g.shape, g.dtype, w.shape, w.dtype)
        assert np.array_equal(g, w), f"{name}: {int(np.sum(g != w))} of {w.size} elements differ"
    # a newly passing case belongs in MUST_PASS so it cannot silently regress
    assert name in MUST_PASS, f"{name} now passes: add it to MUST_PASS"


def test_parameter_inputs_need_values():
    case = CASES["test_qlinearconv"]
    with pytest.raises(MrqError, match=r"graph input 'x_scale'.*constant"):
        import_onnx(case.model, case.name)
    with pytest.raises(MrqError, match="no graph input named 'nope'"):
        import_onnx(case.model, case.name, constants={"nope": np.float32(1)})


def test_integer_graph_input_takes_the_grid_of_its_dequantize():
    """An int8 graph input read by DequantizeLinear is fed as codes, and the float output equals
    ONNX Runtime's."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.INT8, [None, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])
    inits = [numpy_helper.from_array(np.float32(0.037), "s"), numpy_helper.from_array(np.int8(-3), "z")]
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="dq")],
                              "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    codes = np.array([[-128, -3, 0, 1, 127], [5, -7, 64, -64, 2]], np.int8)
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run({"x": codes}).outputs["y"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": codes})[0]
    assert got.dtype == np.float32 and np.array_equal(got, want)


def _ort(model, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in model.graph.output], sess.run(None, feeds)))


def _blocked_model(w_scale_shape=(1, 4, 2), scale_input=False):
    """Q -> DQ of an activation blocked by 3 along a 7-long axis (a partial last block), and a
    constant INT4 weight blocked by 4 along a 6-long axis (folded at import) added to a float
    input."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.01, 0.2, (1, 4, 3)).astype(np.float32)
    zp = rng.integers(0, 256, (1, 4, 3)).astype(np.uint8)
    w_codes = rng.integers(-8, 8, (1, 4, 6))
    w_scale = rng.uniform(0.01, 0.2, w_scale_shape).astype(np.float32)
    w_zp = rng.integers(-8, 8, w_scale_shape)
    inits = [numpy_helper.from_array(zp, "z"),
             helper.make_tensor("w", TensorProto.INT4, [1, 4, 6], w_codes.reshape(-1).tolist()),
             numpy_helper.from_array(w_scale, "ws"),
             helper.make_tensor("wz", TensorProto.INT4, list(w_scale_shape), w_zp.reshape(-1).tolist())]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 7]),
              helper.make_tensor_value_info("x2", TensorProto.FLOAT, [None, 4, 6])]
    if scale_input:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4, 3]))
    else:
        inits.append(numpy_helper.from_array(scale, "s"))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=2, block_size=3),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=-1, block_size=3),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=2, block_size=4),
             helper.make_node("Add", ["x2", "wd"], ["wf"])]
    outputs = [helper.make_tensor_value_info("q", TensorProto.UINT8, [None, 4, 7]),
               helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 7]),
               helper.make_tensor_value_info("wf", TensorProto.FLOAT, [None, 4, 6])]
    graph = helper.make_graph(nodes, "blocked", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), scale, zp


def test_blocked_quantization_equals_onnxruntime():
    model, scale, zp = _blocked_model()
    rng = np.random.default_rng(1)
    # (batch 1: a blocked scale has the input's full shape, batch included, in ORT as in ONNX)
    x = (rng.standard_normal((1, 4, 7)) * 20).astype(np.float32)   # beyond the range too
    x[0, 0, :3] = (np.arange(3) + 0.5 - zp[0, 0, 0]) * scale[0, 0, 0]   # ties
    x[0, 3, 6] = np.nan
    feeds = {"x": x, "x2": rng.standard_normal((1, 4, 6)).astype(np.float32)}
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run(feeds).outputs
    want = _ort(model, feeds)
    for name in ("q", "y", "wf"):
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name


def test_blocked_quantization_refusals_are_one_line():
    model, _, _ = _blocked_model(w_scale_shape=(1, 4, 3))   # 6 / 4 needs 2 blocks, not 3
    with pytest.raises(MrqError, match=r"blocked scale of shape \[1, 4, 3\].*block_size=4"):
        import_onnx(model)
    model, _, _ = _blocked_model(scale_input=True)   # a run-time scale
    with pytest.raises(MrqError, match=r"graph input 's'.*constant"):
        import_onnx(model)


def test_expanded_dynamic_quantize_equals_onnxruntime():
    """The float graph of the expanded DynamicQuantizeLinear (ReduceMin/ReduceMax, Min/Max with
    0, Sub, Div, Clip, Round, Cast, QuantizeLinear with run-time parameters), including an
    all-zero input (scale 0: IEEE 0/0 through Clip, Round and Cast) and one-signed ranges."""
    model = CASES["test_dynamicquantizelinear_min_adjusted_expanded"].model
    pipe = Pipeline(import_onnx(model), ORT_PROFILE, "native")
    rng = np.random.default_rng(2)
    for x in (rng.standard_normal((3, 4)), np.zeros((3, 4)), rng.uniform(1, 5, (3, 4)),
              -rng.uniform(1, 5, (3, 4)), np.full((3, 4), 2.5), rng.standard_normal((3, 4)) * 1e30,
              rng.standard_normal((3, 4)) * 1e-38):
        feeds = {"x": x.astype(np.float32)}
        got, want = pipe.run(feeds).outputs, _ort(model, feeds)
        for name, w in want.items():
            assert got[name].shape == w.shape and got[name].dtype == w.dtype
            assert np.array_equal(got[name], w, equal_nan=True), (name, x.reshape(-1)[:3])
