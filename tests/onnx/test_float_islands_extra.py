"""Plain-number ops and constant subgraphs of third-party mixed ONNX graphs, against ONNX Runtime
(mismatch count 0) and a plain numpy reference:

- ai.onnx.ml Imputer, Scaler, OneHotEncoder, ArrayFeatureExtractor, ZipMap and ArgMax/Cast of
  plain numbers (mrq/onnx_import_ml.py, simulator/steps/float_ml.py and cast.py);
- quantized ops whose inputs are all constants, folded in ORT's arithmetic (a YOLO head's anchor
  grid: Range -> Q -> DQ -> Add 0.5 -> Q -> DQ -> Shape), data movement of dequantized
  constants, and a constant graph output (an SSD head's anchors) (mrq/onnx_import_constfold.py);
- the NPU profiles' one-line refusal and one-line errors for what is not supported.
Each model carries a QuantizeLinear so that mrq takes it as a quantized model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.api import simulate
from mrq.errors import MrqError
from tests.ort_host import ORT_PROFILE
from tests.parity.compare import diff_outputs
from tests.parity.ort_runner import session_options

RNG = np.random.default_rng(20261207)
F32 = np.float32
ML = helper.make_opsetid("ai.onnx.ml", 1)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), ML])


def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _quantized(y: str):
    """A QuantizeLinear of float ``y`` as a second output: the model counts as quantized."""
    return (helper.make_node("QuantizeLinear", [y, "qs", "qz"], ["yq"]),
            [numpy_helper.from_array(np.array(0.05, F32), "qs"),
             numpy_helper.from_array(np.array(3, np.int8), "qz")],
            _vi("yq", TensorProto.INT8))


def _ort(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _mrq(model, feeds, tmp_path, profile=ORT_PROFILE):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return simulate(str(path), profile, feeds, fidelity=False).outputs


def _check(model, feeds, tmp_path, want: dict):
    """mrq == ORT bit for bit on every output, and == the numpy reference ``want``."""
    got = _mrq(model, feeds, tmp_path)
    diffs = diff_outputs(_ort(model, feeds), got)
    assert all(d.n_mismatch == 0 and not d.problem for d in diffs), \
        [(d.name, d.n_mismatch, d.problem, d.examples) for d in diffs if d.n_mismatch or d.problem]
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value)


def _features(n, f):
    """Random rows, NaNs, the replaced value 7, zeros, infinities, huge and tiny values."""
    x = (RNG.standard_normal((n, f)) * 1000).astype(F32)
    x.flat[::5] = np.nan
    x.flat[1::7] = 7.0
    x.flat[2::11] = np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -1e-45], F32)[
        np.arange(x.flat[2::11].size) % 6]
    return x


def _imputer_ref(x, values, replaced):
    fill = values if values.size == x.shape[1] else np.full(x.shape[1], values[0], F32)
    hit = np.isnan(x) if np.isnan(replaced) else x == F32(replaced)
    return np.where(hit, fill[None, :], x).astype(F32)


@pytest.mark.parametrize("n_values,replaced", [(6, np.nan), (1, 7.0), (4, np.nan)])
def test_imputer_then_scaler(tmp_path, n_values, replaced):
    """Imputer (per feature, one value, and a count ORT answers with the first value) then a
    per-feature Scaler, as ORT: ``f32(f32(x - offset) * scale)``."""
    f = 6
    values = (RNG.standard_normal(n_values) * 50).astype(F32)
    offset = (RNG.standard_normal(f) * 100).astype(F32)
    scale = (RNG.random(f) * 0.01 + 1e-4).astype(F32)
    q, inits, qout = _quantized("s")
    nodes = [helper.make_node("Imputer", ["x"], ["i"], domain="ai.onnx.ml",
                              imputed_value_floats=values.tolist(), replaced_value_float=replaced),
             helper.make_node("Scaler", ["i"], ["s"], domain="ai.onnx.ml",
                              offset=offset.tolist(), scale=scale.tolist()), q]
    model = _model(nodes, [_vi("x", shape=["N", f])], [_vi("i"), _vi("s"), qout], inits)
    x = _features(9, f)
    imputed = _imputer_ref(x, values, replaced)
    with np.errstate(all="ignore"):
        scaled = ((imputed - offset) * scale).astype(F32)
    _check(model, {"x": x}, tmp_path, {"i": imputed, "s": scaled})


def test_cast_one_hot_concat(tmp_path):
    """Float -> int64 Cast (truncation toward zero) -> OneHotEncoder (negative categories, an
    unknown one gives zeros) -> Concat, and int64 -> float32 Cast back."""
    cats = np.array([-2, -1, 0, 2, 5], np.int64)
    q, inits, qout = _quantized("oh")
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.INT64),
             helper.make_node("OneHotEncoder", ["c"], ["oh3"], domain="ai.onnx.ml",
                              cats_int64s=cats.tolist(), zeros=1),
             helper.make_node("Reshape", ["oh3", "shape"], ["oh"]),
             helper.make_node("Cast", ["c"], ["back"], to=TensorProto.FLOAT), q]
    inits = inits + [numpy_helper.from_array(np.array([-1, 3 * cats.size], np.int64), "shape")]
    model = _model(nodes, [_vi("x", shape=["N", 3])],
                   [_vi("c", TensorProto.INT64), _vi("oh"), _vi("back"), qout], inits)
    x = np.array([[-2.9, -1.0, -0.5], [0.7, 2.0, 5.99], [1.0, 3.0, -3.0], [6.0, -2.0, 2.5]], F32)
    c = np.trunc(x).astype(np.int64)
    one_hot = (c[..., None] == cats).astype(F32).reshape(len(x), -1)
    _check(model, {"x": x}, tmp_path, {"c": c, "oh": one_hot, "back": c.astype(F32)})


def test_cast_extremes_follow_x86():
    """A float out of int64's range, infinities and NaN give INT64_MIN (``cvttss2si``), as ORT's
    Cast does on x86-64; -0.5 and 2**62 are exact."""
    from simulator.steps.cast import cast
    x = np.array([-0.5, 2.0 ** 62, 1e30, -1e30, np.inf, -np.inf, np.nan, -2.0 ** 63], F32)
    lo = np.iinfo(np.int64).min
    want = np.array([0, 2 ** 62, lo, lo, lo, lo, lo, lo], np.int64)
    np.testing.assert_array_equal(cast(x, "int64"), want)
    np.testing.assert_array_equal(cast(np.array([2 ** 24 + 1, -7], np.int64), "float32"),
                                  np.array([2 ** 24, -7], F32))   # round to nearest even


def test_argmax_label_lookup_zipmap(tmp_path):
    """A classifier's tail (skl2onnx): ArgMax of float scores, ArrayFeatureExtractor of the
    int32 class labels, Reshape, Cast to int64; ZipMap of the scores (ORT's list of maps is
    compared as mrq's [N, classes] array)."""
    classes = np.array([10, 20, 30], np.int32)
    q, inits, qout = _quantized("p")
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=1),
             helper.make_node("ArgMax", ["p"], ["am"], axis=1),
             helper.make_node("ArrayFeatureExtractor", ["classes", "am"], ["lab"], domain="ai.onnx.ml"),
             helper.make_node("Reshape", ["lab", "flat"], ["lab1"]),
             helper.make_node("Cast", ["lab1"], ["label"], to=TensorProto.INT64),
             helper.make_node("ZipMap", ["p"], ["probs"], domain="ai.onnx.ml",
                              classlabels_int64s=[0, 1, 2]), q]
    inits = inits + [numpy_helper.from_array(classes, "classes"),
                     numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    probs_type = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    model = _model(nodes, [_vi("x", shape=[1, 3])],
                   [_vi("label", TensorProto.INT64), helper.make_value_info("probs", probs_type),
                    qout], inits)
    for row in ([0.1, 2.0, -1.0], [3.0, 3.0, 1.0], [-1.0, -2.0, 5.0]):
        x = np.array([row], F32)
        _check(model, {"x": x}, tmp_path,
               {"label": classes[np.argmax(x, axis=1)].astype(np.int64)})


def _anchor_model():
    """Range over a static dimension, quantized, + 0.5 (QDQ Add of constants), then its Shape
    feeds a Reshape, and the anchors are added to the input (a YOLO head, reduced)."""
    def q_dq(name, scale, zp):
        return ([helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
                 helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_d"])],
                [numpy_helper.from_array(np.array(scale, F32), f"{name}_s"),
                 numpy_helper.from_array(np.array(zp, np.uint8), f"{name}_z")])
    nodes, inits = [helper.make_node("Shape", ["x"], ["shp"]),
                    helper.make_node("Gather", ["shp", "one"], ["w"], axis=0),
                    helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
                    helper.make_node("Range", ["zero", "wf", "step"], ["r"])], []
    inits += [numpy_helper.from_array(np.array(1, np.int64), "one"),
              numpy_helper.from_array(np.array(0.0, F32), "zero"),
              numpy_helper.from_array(np.array(1.0, F32), "step"),
              numpy_helper.from_array(np.array(0.5, F32), "half")]
    for name, scale, zp in (("r", 0.03, 0), ("half", 0.004, 0), ("x", 0.05, 128), ("a", 0.031, 0),
                            ("y", 0.06, 100)):
        n, i = q_dq(name, scale, zp)
        if name == "a":
            nodes.append(helper.make_node("Add", ["r_d", "half_d"], ["a"]))
        nodes += n if name != "y" else []
        inits += i
        y_nodes = n
    nodes += [helper.make_node("Shape", ["a_d"], ["ashape"]),
              helper.make_node("Reshape", ["a_d", "ashape"], ["a2"]),
              helper.make_node("Unsqueeze", ["a2", "axes0"], ["a3"]),
              helper.make_node("QuantizeLinear", ["a3", "a_s", "a_z"], ["a3_q"]),
              helper.make_node("DequantizeLinear", ["a3_q", "a_s", "a_z"], ["a3_d"]),
              helper.make_node("Add", ["x_d", "a3_d"], ["y"])] + y_nodes
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes0"))
    return _model(nodes, [_vi("x", shape=[1, 6])], [_vi("y_d")], inits), nodes


def test_constant_anchor_grid_folds_as_ort_computes(tmp_path):
    model, _ = _anchor_model()
    x = (RNG.standard_normal((1, 6)) * 3).astype(F32)
    # numpy reference: ORT's QLinearAdd (docs/PROGRAM.md, add / ort_fma) of the constants,
    # then of the input and the anchors
    from simulator.kernels.ort_eltwise import fma

    def q(v, s, z):
        return np.clip(np.rint((np.asarray(v, F32) / F32(s)).astype(F32)) + z, 0, 255).astype(F32)

    def qladd(a, sa, za, b, sb, zb, sc, zc):
        ra, rb = F32(F32(sa) / F32(sc)), F32(F32(sb) / F32(sc))
        k = F32(F32(zc) - fma(ra, F32(za), F32(rb * F32(zb))))
        return np.clip(np.rint(fma(a, ra, fma(b, rb, k))), 0, 255)

    r = q(np.arange(6), 0.03, 0)
    anchors = qladd(r, 0.03, 0, q(0.5, 0.004, 0), 0.004, 0, 0.031, 0)
    y = qladd(q(x, 0.05, 128), 0.05, 128, anchors[None, :], 0.031, 0, 0.06, 100)
    want = ((y.astype(np.int32) - 100).astype(F32) * F32(0.06)).astype(F32)
    _check(model, {"x": x}, tmp_path, {"y_d": want})
    _check(model, {"x": x}, tmp_path, {})


def test_constant_graph_output(tmp_path):
    """An output that is a dequantized constant tiled to the batch (an SSD head's anchors)."""
    codes = RNG.integers(-128, 128, (1, 5, 4)).astype(np.int8)
    q, inits, qout = _quantized("x")
    nodes = [helper.make_node("Tile", ["codes", "reps"], ["tiled"]),
             helper.make_node("DequantizeLinear", ["tiled", "as", "az"], ["anchors"]), q]
    inits = inits + [numpy_helper.from_array(codes, "codes"),
                     numpy_helper.from_array(np.array([1, 1, 1], np.int64), "reps"),
                     numpy_helper.from_array(np.array(0.02, F32), "as"),
                     numpy_helper.from_array(np.array(-3, np.int8), "az")]
    model = _model(nodes, [_vi("x", shape=[1, 4])], [_vi("anchors"), qout], inits)
    want = ((codes.astype(np.int32) + 3).astype(F32) * F32(0.02)).astype(F32)
    _check(model, {"x": RNG.standard_normal((1, 4)).astype(F32)}, tmp_path, {"anchors": want})


def _imputer_model(attrs, x_type=TensorProto.FLOAT):
    q, inits, qout = _quantized("x")
    nodes = [helper.make_node("Imputer", ["x"], ["i"], domain="ai.onnx.ml", **attrs), q]
    return _model(nodes, [_vi("x", x_type, [1, 2])], [_vi("i", x_type), qout], inits)


@pytest.mark.parametrize("build,words", [
    (lambda: _imputer_model({"imputed_value_floats": [1.0, 2.0]}), ("Imputer", "'Imputer'")),
    (lambda: _model([helper.make_node("ArrayFeatureExtractor", ["x", "idx"], ["z"], domain="ai.onnx.ml"),
                     helper.make_node("QuantizeLinear", ["x", "qs"], ["yq"])],
                    [_vi("x", shape=[1, 3]), _vi("idx", TensorProto.INT64, [1, 1])],
                    [_vi("z"), _vi("yq", TensorProto.UINT8)],
                    [numpy_helper.from_array(np.array(0.1, F32), "qs")]),
     ("ArrayFeatureExtractor", "constant 1-D X")),
    (lambda: _model([helper.make_node("OneHotEncoder", ["x"], ["z"], domain="ai.onnx.ml",
                                      cats_strings=["a", "b"]),
                     helper.make_node("QuantizeLinear", ["x", "qs"], ["yq"])],
                    [_vi("x", shape=[1, 3])], [_vi("z"), _vi("yq", TensorProto.UINT8)],
                    [numpy_helper.from_array(np.array(0.1, F32), "qs")]),
     ("OneHotEncoder", "string categories")),
])
def test_unsupported_forms_are_one_line_errors(tmp_path, build, words):
    path = tmp_path / "bad.onnx"
    onnx.save(build(), str(path))
    from tests.cli_in_process import mrq_in_process
    res = mrq_in_process("sim", path, "--profile", "nna-sym8" if words[0] == "Imputer" else
                         ORT_PROFILE, "--inputs", _feeds_file(tmp_path), "-o",
                         tmp_path / "o.npz")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert all(w in lines[0] for w in words), lines[0]


def _feeds_file(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((1, 3), F32), idx=np.zeros((1, 1), np.int64))
    return path


def test_npu_profile_refuses_ml_ops(tmp_path):
    """An NPU profile refuses a plain-number op naming the node and its op."""
    model = _imputer_model({"imputed_value_floats": [1.0], "replaced_value_float": 0.0})
    with pytest.raises(MrqError, match=r"'Imputer'.*Imputer|Imputer.*'Imputer'"):
        _mrq(model, {"x": np.zeros((1, 2), F32)}, tmp_path, profile="nna-sym8")


def _eigen_sum_ref(row, head=0):
    """Eigen's SSE2 ``sum()`` of a row whose first 16-byte boundary is ``head`` elements in (a
    plain restatement of its linear-vectorized redux: packets of 4 from ``head`` in two
    alternating accumulators, one more packet, the 4 lanes, then the unaligned head in order,
    then the tail in order; no whole packet fits: every element in order)."""
    body = row[head:]
    full = body.size // 4
    if full == 0:
        s = row[0]
        for v in row[1:]:
            s = F32(s + v)
        return s
    acc = [body[0:4].copy(), body[4:8].copy() if full >= 2 else None]
    for k in range(2, full - (full % 2), 2):
        acc[0] = (acc[0] + body[4 * k:4 * k + 4]).astype(F32)
        acc[1] = (acc[1] + body[4 * k + 4:4 * k + 8]).astype(F32)
    p = acc[0] if acc[1] is None else (acc[0] + acc[1]).astype(F32)
    if full % 2 and full > 1:
        p = (p + body[4 * (full - 1):4 * full]).astype(F32)
    s = F32(F32(p[0] + p[2]) + F32(p[1] + p[3]))
    for v in np.concatenate([row[:head], body[4 * full:]]):
        s = F32(s + v)
    return s


@pytest.mark.parametrize("width", [3, 8, 13, 512])
def test_transformer_float_math(tmp_path, width):
    """T5's RMSNorm and tanh GELU pieces on float tensors: Pow by 2 and 3, ReduceMean over the
    last axis (Eigen's SSE2 order, rows of any alignment), Sqrt, Neg, Abs; and a Gather of
    rows of dequantized int8 embeddings by run-time token ids."""
    q, inits, qout = _quantized("x")
    nodes = [helper.make_node("Pow", ["x", "two"], ["p2"]),
             helper.make_node("Pow", ["x", "three"], ["p3"]),
             helper.make_node("ReduceMean", ["p2", "axes"], ["ms"], keepdims=1),
             helper.make_node("Sqrt", ["x"], ["sq"]),
             helper.make_node("Neg", ["x"], ["ng"]),
             helper.make_node("Abs", ["x"], ["ab"]), q]
    inits = inits + [numpy_helper.from_array(np.array(2.0, F32), "two"),
                     numpy_helper.from_array(np.array(3.0, F32), "three"),
                     numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    model = _model(nodes, [_vi("x", shape=[1, 3, width])],
                   [_vi(n) for n in ("p2", "p3", "ms", "sq", "ng", "ab")] + [qout], inits, opset=18)
    # its own generator: the rounding order only shows on some data, and a test must not pass or
    # fail by which tests ran before it in the same worker (seed 46 tells a head-last order apart)
    rng = np.random.default_rng(46)
    x = (rng.standard_normal((1, 3, width)) * rng.choice([0.01, 1.0, 300.0], (1, 3, width))).astype(F32)
    rows = (x * x).astype(F32).reshape(-1, width)
    # row k starts at element k * width, so its first aligned packet is (-k * width) % 4 in
    means = [F32(_eigen_sum_ref(r, (-(k * width)) % 4) / F32(width)) for k, r in enumerate(rows)]
    with np.errstate(invalid="ignore"):
        want = {"p2": (x * x).astype(F32), "p3": ((x * x) * x).astype(F32), "sq": np.sqrt(x),
                "ng": -x, "ab": np.abs(x), "ms": np.array(means, F32).reshape(1, 3, 1)}
    _check(model, {"x": x}, tmp_path, want)


def test_gather_token_embeddings(tmp_path):
    table = RNG.integers(0, 256, (50, 6)).astype(np.uint8)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows_q"]),
             helper.make_node("DequantizeLinear", ["rows_q", "ts", "tz"], ["rows"]),
             helper.make_node("QuantizeLinear", ["rows", "qs", "qz"], ["yq"])]
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.array(0.013, F32), "ts"),
             numpy_helper.from_array(np.array(131, np.uint8), "tz"),
             numpy_helper.from_array(np.array(0.05, F32), "qs"),
             numpy_helper.from_array(np.array(3, np.int8), "qz")]
    model = _model(nodes, [_vi("ids", TensorProto.INT64, [1, 7])],
                   [_vi("rows"), _vi("yq", TensorProto.INT8)], inits)
    ids = np.array([[0, 49, 7, 7, -1, 13, -50]], np.int64)
    want = ((table[ids].astype(np.int32) - 131).astype(F32) * F32(0.013)).astype(F32)
    _check(model, {"ids": ids}, tmp_path, {"rows": want})


def test_pow_by_other_exponent_is_refused(tmp_path):
    q, inits, qout = _quantized("x")
    model = _model([helper.make_node("Pow", ["x", "e"], ["y"]), q], [_vi("x", shape=[1, 4])],
                   [_vi("y"), qout], inits + [numpy_helper.from_array(np.array(2.5, F32), "e")])
    with pytest.raises(MrqError, match=r"unsupported op 'Pow'.*exponent 2\.5"):
        _mrq(model, {"x": np.ones((1, 4), F32)}, tmp_path)


def _t5_block(width, x_from_dq: bool, gelu_output: bool):
    """T5's RMSNorm (Pow, ReduceMean, Add eps, Sqrt, Div(1, .), Mul x, Mul w) and tanh GELU
    spelled out as PyTorch exports them, on a float input or on a DequantizeLinear output."""
    w = (RNG.standard_normal(width) * 0.5 + 1).astype(F32)
    consts = {"two": 2.0, "three": 3.0, "eps": 1e-6, "one": 1.0, "half": 0.5, "c1": 0.044715,
              "c2": 0.7978845608028654}
    inits = [numpy_helper.from_array(np.array(v, F32), k) for k, v in consts.items()]
    inits += [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([-1], np.int64), "ax"),
              numpy_helper.from_array(np.array(0.02, F32), "xs"),
              numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = []
    if x_from_dq:   # ORT copies the DequantizeLinear per consumer: no RMSNorm fusion, DivMul
        nodes += [helper.make_node("QuantizeLinear", ["x_in", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x"])]
    else:
        nodes.append(helper.make_node("Identity", ["x_in"], ["x"]))
    nodes += [helper.make_node("Pow", ["x", "two"], ["p2"]),
              helper.make_node("ReduceMean", ["p2", "ax"], ["ms"], keepdims=1),
              helper.make_node("Add", ["ms", "eps"], ["mse"]),
              helper.make_node("Sqrt", ["mse"], ["rt"]),
              helper.make_node("Div", ["one", "rt"], ["inv"]),
              helper.make_node("Mul", ["x", "inv"], ["xn"]),
              helper.make_node("Mul", ["w", "xn"], ["normed"]),
              helper.make_node("Mul", ["normed", "half"], ["h"]),
              helper.make_node("Pow", ["normed", "three"], ["p3"]),
              helper.make_node("Mul", ["p3", "c1"], ["m1"]),
              helper.make_node("Add", ["normed", "m1"], ["a"]),
              helper.make_node("Mul", ["a", "c2"], ["m2"]),
              helper.make_node("Tanh", ["m2"], ["t"]),
              helper.make_node("Add", ["t", "one"], ["t1"]),
              helper.make_node("Mul", ["h", "t1"], ["gelu"]),
              helper.make_node("QuantizeLinear", ["gelu", "xs", "xz"], ["yq"])]
    outputs = ([_vi("gelu")] if gelu_output else []) + [_vi("normed"), _vi("yq", TensorProto.UINT8)]
    return _model(nodes, [_vi("x_in", shape=[1, 4, width])], outputs, inits, opset=18), w


@pytest.mark.parametrize("width,x_from_dq,gelu_output", [(512, False, False), (13, False, True),
                                                        (40, True, False)])
def test_t5_rmsnorm_and_gelu_as_ort_fuses_them(tmp_path, width, x_from_dq, gelu_output):
    """ORT fuses the RMSNorm into SimplifiedLayerNormalization (unless its input is a
    DequantizeLinear output: then ``Div(1, r) * x`` becomes ``x / r``) and the GELU into
    FastGelu (unless its result is a graph output); mrq reproduces what ORT runs, and so does a
    numpy restatement of those kernels."""
    from simulator.kernels.ort_eltwise import fma, tanh
    model, w = _t5_block(width, x_from_dq, gelu_output)
    x = (RNG.standard_normal((1, 4, width)) * 2).astype(F32)
    xs = ((np.clip(np.rint(x / F32(0.02)) + 128, 0, 255) - 128) * F32(0.02)).astype(F32) \
        if x_from_dq else x
    rows = xs.reshape(-1, width)
    with np.errstate(all="ignore"):
        if x_from_dq:   # unfused: Eigen's ReduceMean of the squares, then x / sqrt
            ms = np.array([_eigen_mean(r * r, k) for k, r in enumerate(rows)], F32)[:, None]
            normed = (w * (rows / np.sqrt((ms + F32(1e-6)).astype(F32))).astype(F32)).astype(F32)
        elif width >= 16:   # SimplifiedLayerNormalization, MLAS's 8 FMA lanes
            acc = np.zeros((rows.shape[0], 8), F32)
            for k in range(0, width - width % 8, 8):
                acc = fma(rows[:, k:k + 8], rows[:, k:k + 8], acc)
            tot = (((acc[:, 0] + acc[:, 4]) + (acc[:, 2] + acc[:, 6]))
                   + ((acc[:, 1] + acc[:, 5]) + (acc[:, 3] + acc[:, 7]))).astype(F32)
            for k in range(width - width % 8, width):
                tot = fma(rows[:, k], rows[:, k], tot)
            den = np.sqrt((tot / F32(width)).astype(F32) + F32(1e-6)).astype(F32)[:, None]
            normed = ((rows * (F32(1) / den).astype(F32)).astype(F32) * w).astype(F32)
        else:           # its scalar loop
            tot = np.zeros(rows.shape[0], F32)
            for k in range(width):
                tot = (tot + (rows[:, k] * rows[:, k]).astype(F32)).astype(F32)
            den = np.sqrt((tot / F32(width)).astype(F32) + F32(1e-6)).astype(F32)[:, None]
            normed = ((rows / den).astype(F32) * w).astype(F32)
        if gelu_output:   # unfused: each float op as written
            a = (normed + ((normed * normed * normed).astype(F32) * F32(0.044715)).astype(F32)).astype(F32)
            t = (a * F32(0.7978845608028654)).astype(F32)
            gelu = ((normed * F32(0.5)).astype(F32) * (tanh(t) + F32(1))).astype(F32)
        else:             # FastGelu
            c, b = F32(0.035677408136300125), F32(0.7978845608028654)
            t = (normed * ((c * normed * normed).astype(F32) + b)).astype(F32)
            gelu = ((F32(0.5) * normed).astype(F32) * (tanh(t) + F32(1))).astype(F32)
        yq = np.clip(np.rint((gelu / F32(0.02)).astype(F32)) + 128, 0, 255).astype(np.uint8)
    want = {"normed": normed.reshape(1, 4, width), "yq": yq.reshape(1, 4, width)}
    if gelu_output:
        want["gelu"] = gelu.reshape(1, 4, width)
    _check(model, {"x_in": x}, tmp_path, want)


def _eigen_mean(row, k):
    n = row.size
    return F32(_eigen_sum_ref(row, (-(k * n)) % 4) / F32(n))


def test_float_arithmetic_of_dequantized_constants_folds(tmp_path):
    """A float Add of a dequantized constant and a float constant (T5's position bias plus
    its causal mask) folds to ORT's float32 sum, then adds to the input."""
    codes = RNG.integers(0, 256, (1, 6)).astype(np.uint8)
    q, inits, qout = _quantized("x")
    nodes = [helper.make_node("DequantizeLinear", ["codes", "cs", "cz"], ["bias"]),
             helper.make_node("Add", ["bias", "mask"], ["bm"]),
             helper.make_node("Add", ["x", "bm"], ["y"]), q]
    mask = np.array([[0, -3.4e38, 0, -1e9, 0.25, 0]], F32)
    inits = inits + [numpy_helper.from_array(codes, "codes"),
                     numpy_helper.from_array(np.array(0.07, F32), "cs"),
                     numpy_helper.from_array(np.array(17, np.uint8), "cz"),
                     numpy_helper.from_array(mask, "mask")]
    model = _model(nodes, [_vi("x", shape=[1, 6])], [_vi("y"), qout], inits)
    x = RNG.standard_normal((1, 6)).astype(F32)
    bias = ((codes.astype(np.int32) - 17).astype(F32) * F32(0.07)).astype(F32)
    _check(model, {"x": x}, tmp_path, {"y": (x + (bias + mask).astype(F32)).astype(F32)})


def test_one_hot_of_float_input(tmp_path):
    """OneHotEncoder reads a float input as ORT does: each value cast to int64 (truncated)."""
    q, inits, qout = _quantized("x")
    cats = [-1, 0, 3]
    model = _model([helper.make_node("OneHotEncoder", ["x"], ["oh"], domain="ai.onnx.ml",
                                     cats_int64s=cats, zeros=1), q],
                   [_vi("x", shape=[1, 5])], [_vi("oh"), qout], inits)
    x = np.array([[-1.9, -0.2, 0.0, 3.7, 2.99]], F32)
    want = (np.trunc(x).astype(np.int64)[..., None] == np.array(cats)).astype(F32)
    _check(model, {"x": x}, tmp_path, {"oh": want})


def test_requant_refuses_plain_number_ops_in_one_line(tmp_path):
    """``mrq requant`` writes QDQ ONNX, which has no form for these ops: one line, exit 2."""
    from tests.cli_in_process import mrq_in_process
    path = tmp_path / "m.onnx"
    onnx.save(_imputer_model({"imputed_value_floats": [1.0], "replaced_value_float": 0.0}), str(path))
    res = mrq_in_process("requant", path, "--profile", ORT_PROFILE, "-o", tmp_path / "o.onnx")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "'Imputer" in lines[0], res.stderr
