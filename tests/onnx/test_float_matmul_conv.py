"""Float MatMul and float Conv islands (issue 14) as ONNX Runtime 1.32's CPU provider computes
them: MLAS SGEMM per output matrix (with the Transpose and scalar-scale fusions ORT's optimizer
makes into ``FusedMatMul``), and a Conv in ORT's NCHWc kernels (float weight) or MLAS im2col
(DequantizeLinear weight). Every case counts mismatching bits against ORT (target 0)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from mrq.errors import MrqError
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from simulator.kernels.ort_matmul import matmul_ort
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import session_options

RNG = np.random.default_rng(20261207)
F32 = np.float32


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _ort(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(),
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _mismatches(got, want) -> int:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == F32:
        return int(np.sum(got.view(np.int32) != want.view(np.int32)))
    return int(np.sum(got != want))


def _run_both(model, feeds):
    got = Pipeline(import_onnx(model), ORT_PROFILE, "native").run(feeds).outputs
    want = _ort(model, feeds)
    return {k: _mismatches(got[k], want[k]) for k in want}


# ------------------------------------------------------------------ MatMul
def _perm_last_two(rank):
    return list(range(rank - 2)) + [rank - 1, rank - 2]


@pytest.mark.parametrize("sa,sb,ta,tb,scale", [
    ((1, 3, 32, 40), (1, 3, 32, 50), True, False, ("Mul", 0.17677669)),   # attention scores
    ((1, 2, 24, 90), (1, 2, 90, 90), False, True, None),                  # attention @ V^T
    ((1, 1, 4, 300), (1, 3, 300, 6), False, False, ("Div", 8.0)),          # broadcast, K slices
    ((1, 2, 5, 300), (1, 2, 300, 4), False, False, ("Mul", 0.3)),          # K slices fused by alpha
    ((1, 300, 5), (1, 300, 4), True, False, ("Mul", 0.3)),                 # slices of 128 fused by alpha
    ((1, 5, 9), (9, 7), False, False, None),                               # folded into one SGEMM
    ((1, 300, 4), (1, 300, 6), True, False, None),                         # transposed A, N < K
    ((1, 1, 9), (1, 9, 1), False, False, None),                            # one row / one column
    ((3, 9), (9,), False, False, None),                                    # a vector on the right
])
def test_float_matmul_equals_ort(sa, sb, ta, tb, scale):
    """Float MatMul of two activations, with the Transpose and the scalar Mul/Div ORT fuses:
    the float product itself and its quantization after (a QDQ island) match ORT bit for bit."""
    nodes, ia, ib = [], "a", "b"
    if ta:
        nodes.append(helper.make_node("Transpose", ["a"], ["at"], perm=_perm_last_two(len(sa))))
        ia = "at"
    if tb:
        nodes.append(helper.make_node("Transpose", ["b"], ["bt"], perm=_perm_last_two(len(sb))))
        ib = "bt"
    inits = [numpy_helper.from_array(F32(0.05), "qs"), numpy_helper.from_array(np.uint8(128), "qz")]
    nodes.append(helper.make_node("MatMul", [ia, ib], ["m" if scale else "y"]))
    if scale:
        inits.append(numpy_helper.from_array(F32(scale[1]), "s"))
        nodes.append(helper.make_node(scale[0], ["m", "s"], ["y"]))
    nodes += [helper.make_node("QuantizeLinear", ["y", "qs", "qz"], ["q"]),
              helper.make_node("DequantizeLinear", ["q", "qs", "qz"], ["d"])]
    # the float product is an output too: no quantization hides a last-bit difference
    model = _model(nodes, [_vi("a", TensorProto.FLOAT, list(sa)), _vi("b", TensorProto.FLOAT, list(sb))],
                   [_vi("y", TensorProto.FLOAT, None), _vi("d", TensorProto.FLOAT, None)], inits)
    feeds = {"a": (RNG.standard_normal(sa) * 2).astype(F32), "b": (RNG.standard_normal(sb) * 2).astype(F32)}
    assert _run_both(model, feeds) == {"y": 0, "d": 0}


def test_attention_block_in_a_qdq_island_equals_ort():
    """DQ -> Reshape -> Split -> Transpose -> MatMul -> Mul -> Softmax -> Transpose -> MatMul ->
    Q: a YOLO C2PSA attention (two heads) between quantized tensors."""
    heads, kd, hd, n = 2, 8, 16, 36
    c = heads * (2 * kd + hd)
    inits = [numpy_helper.from_array(F32(0.04), "xs"), numpy_helper.from_array(np.uint8(120), "xz"),
             numpy_helper.from_array(np.array([1, heads, 2 * kd + hd, n], np.int64), "shape"),
             numpy_helper.from_array(np.array([kd, kd, hd], np.int64), "split"),
             numpy_helper.from_array(F32(kd ** -0.5), "scale"),
             numpy_helper.from_array(F32(0.02), "ys"), numpy_helper.from_array(np.uint8(128), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("Reshape", ["xf", "shape"], ["r"]),
             helper.make_node("Split", ["r", "split"], ["q", "k", "v"], axis=2),
             helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["qt", "k"], ["att"]),
             helper.make_node("Mul", ["att", "scale"], ["atts"]),
             helper.make_node("Softmax", ["atts"], ["p"], axis=-1),
             helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["v", "pt"], ["o"]),
             helper.make_node("QuantizeLinear", ["o", "ys", "yz"], ["oq"])]
    model = _model(nodes, [_vi("x", TensorProto.UINT8, [1, c, 6, 6])], [_vi("oq", TensorProto.UINT8, None)],
                   inits)
    ops = {n.op for n in import_onnx(model).nodes}
    assert {"FloatMatMul", "FloatSoftmax"} <= ops and "FloatBinary" not in ops   # the Mul is alpha
    feeds = {"x": RNG.integers(0, 256, (1, c, 6, 6), dtype=np.uint8)}
    assert _run_both(model, feeds) == {"oq": 0}


def _round_f32(exact: Fraction) -> F32:
    """The float32 nearest ``exact`` (ties to even), decided on exact rationals."""
    f = F32(float(exact))
    toward = F32(np.inf) if Fraction(float(f)) < exact else F32(-np.inf)
    g = np.nextafter(f, toward)
    df, dg = abs(Fraction(float(f)) - exact), abs(Fraction(float(g)) - exact)
    if df != dg:
        return f if df < dg else g
    return f if int(np.array(f).view(np.int32)) % 2 == 0 else g


def _fma(a, b, c) -> F32:
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def _sgemm_reference(a, b, alpha, stride_k):
    """MLAS's multi-row SGEMM order, written out: per element an FMA chain from 0 over each K
    slice; the first slice's chain times alpha is the value, each later one is fused in as
    fma(chain, alpha, value)."""
    m, k = a.shape
    out = np.zeros((m, b.shape[1]), F32)
    for i in range(m):
        for j in range(b.shape[1]):
            total = None
            for k0 in range(0, k, stride_k):
                acc = F32(0.0)
                for t in range(k0, min(k, k0 + stride_k)):
                    acc = _fma(a[i, t], b[t, j], acc)
                total = _round_f32(Fraction(float(acc)) * Fraction(float(alpha))) if total is None \
                    else _fma(acc, alpha, total)
            out[i, j] = total
    return out


@pytest.mark.parametrize("trans_a,stride_k", [(False, 300), (True, 128)])
def test_sgemm_order_against_a_plain_reference(trans_a, stride_k):
    """[3, 300] @ [300, 5] with alpha: MLAS widens its K slice to the whole depth when N < K,
    except where A is transposed through its panel (slices of 128); the replica equals the
    order written out with exact rationals, and both differ from a plain float32 dot product
    (each product rounded, summed in order, then times alpha). Not ``a @ b``: numpy's BLAS picks
    its own kernel by host, and on an AVX2 host OpenBLAS's is the same FMA chain as MLAS's."""
    a = (RNG.standard_normal((3, 300)) * 4).astype(F32)
    b = (RNG.standard_normal((300, 5)) * 4).astype(F32)
    alpha = F32(0.3)
    given = np.ascontiguousarray(a.T) if trans_a else a
    got = matmul_ort(given, b, trans_a=trans_a, alpha=alpha)
    want = _sgemm_reference(a, b, alpha, stride_k)
    assert _mismatches(got, want) == 0
    plain = np.zeros((3, 5), F32)
    for t in range(300):
        plain = plain + a[:, t:t + 1] * b[t:t + 1, :]
    assert _mismatches(got, plain * alpha) > 0


# ------------------------------------------------------------------ Conv
@pytest.mark.parametrize("c,m,k,stride,pad,dil,group", [
    (3, 8, 3, 1, 1, 1, 1),      # NCHW input kernel (fewer than 16 channels)
    (20, 16, 3, 2, 1, 1, 1),    # NCHWc, channels padded to 32
    (32, 32, 3, 1, 2, 2, 2),    # NCHWc, two groups, dilation
    (16, 16, 3, 1, 1, 1, 16),   # depthwise
    (144, 16, 1, 1, 0, 1, 1),   # pointwise, two channel batches
])
def test_float_conv_with_float_weight_equals_ort(c, m, k, stride, pad, dil, group):
    """DQ -> Conv (float initializer weight and bias) -> Q: ORT quantizes the weight and bias
    itself (WeightBiasQuantization) and runs a QLinearConv, whose u8 x s8 sums the profile's
    accumulator.pair_sums describes (tests/onnx/test_weight_bias_quantization.py: both profiles
    against integer references); DQ -> Conv as a float output: its NCHWc kernels on the float
    weight."""
    w = RNG.standard_normal((m, c // group, k, k)).astype(F32)
    inits = [numpy_helper.from_array(F32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(RNG.standard_normal(m).astype(F32), "b"),
             numpy_helper.from_array(F32(0.03), "ys"), numpy_helper.from_array(np.uint8(128), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("Conv", ["xf", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride] * 2,
                              pads=[pad] * 4, dilations=[dil] * 2, group=group),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["q"])]
    x = _vi("x", TensorProto.UINT8, [1, c, 11, 9])
    feeds = {"x": RNG.integers(0, 256, (1, c, 11, 9), dtype=np.uint8)}
    model = _model(nodes, [x], [_vi("q", TensorProto.UINT8, None)], inits)
    assert [n.op for n in import_onnx(model).nodes] == ["Conv"]   # the integer conv ORT runs
    assert _run_both(model, feeds) == {"q": 0}
    plain = _model(nodes[:2], [x], [_vi("y", TensorProto.FLOAT, None)], inits)
    assert _conv_order(plain) == "nchwc"
    assert _run_both(plain, feeds) == {"y": 0}


def _conv_order(model) -> str:
    return next(n for n in import_onnx(model).nodes if n.op == "FloatConv").attrs["order"]


def test_float_conv_with_dequantized_weight_equals_ort():
    """A Conv of dequantized values and a DequantizeLinear weight whose output goes to a float
    Sigmoid (no Q after it): ORT's MLAS im2col + SGEMM order (no NCHWc: the weight is computed)."""
    w = RNG.integers(-127, 128, (12, 6, 3, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(F32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(F32(0.01), "ws"),
             numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(F32(1 / 256), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"]),
             helper.make_node("Conv", ["xf", "wf"], ["y"], kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 1, 2]),
             helper.make_node("Sigmoid", ["y"], ["s"]),
             helper.make_node("QuantizeLinear", ["s", "ys", "yz"], ["q"])]
    model = _model(nodes, [_vi("x", TensorProto.UINT8, [1, 6, 10, 10])], [_vi("q", TensorProto.UINT8, None)],
                   inits)
    assert _conv_order(model) == "mlas"
    feeds = {"x": RNG.integers(0, 256, (1, 6, 10, 10), dtype=np.uint8)}
    assert _run_both(model, feeds) == {"q": 0}


@pytest.mark.parametrize("rows,depth", [(1, 300), (4, 600)])
def test_float_matmul_with_a_float_weight_equals_ort(rows, depth):
    """A float initializer as B: ORT packs it ahead (PrePack) and runs MLAS's packed SGEMM (K
    slices of 256, no one-row kernel), which the unpacked order would miss; between DQ and Q
    too (ORT has no QDQ group for a float weight)."""
    w = RNG.standard_normal((depth, 7)).astype(F32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(F32(0.05), "qs")]
    model = _model([helper.make_node("MatMul", ["a", "w"], ["y"]),
                    helper.make_node("QuantizeLinear", ["y", "qs"], ["q"])],
                   [_vi("a", TensorProto.FLOAT, [rows, depth])],
                   [_vi("y", TensorProto.FLOAT, None), _vi("q", TensorProto.UINT8, None)], inits)
    feeds = {"a": (RNG.standard_normal((rows, depth)) * 2).astype(F32)}
    assert _run_both(model, feeds) == {"y": 0, "q": 0}
    assert _mismatches(matmul_ort(feeds["a"], w), _ort(model, feeds)["y"]) > 0   # unpacked order
    island = _model([helper.make_node("DequantizeLinear", ["x", "qs"], ["a"])] + list(model.graph.node),
                    [_vi("x", TensorProto.UINT8, [rows, depth])], [_vi("q", TensorProto.UINT8, None)], inits)
    assert _run_both(island, {"x": RNG.integers(0, 256, (rows, depth), dtype=np.uint8)}) == {"q": 0}


# ------------------------------------------------------------------ NCHWc channel blocks
NCHWC_CASES = [   # c, m, k, stride, pad, dil, group
    (3, 8, 3, 1, 1, 1, 1),      # NCHW input kernel on both hosts
    (12, 24, 3, 1, 1, 1, 1),    # NCHW with blocks of 16, NCHWc (padded to 16) with blocks of 8
    (20, 16, 3, 2, 1, 1, 1),    # NCHWc, channels padded to the block
    (16, 16, 3, 1, 1, 1, 2),    # two groups of 8: NCHWc only with blocks of 8 (else im2col)
    (48, 24, 3, 2, 0, 1, 3),    # three groups of 16 in, 8 out: NCHWc only with blocks of 8
    (16, 16, 3, 1, 1, 1, 16),   # depthwise
    (24, 16, 1, 1, 0, 1, 1),    # pointwise
]


def _float_conv_model(c, m, k, stride, pad, dil, group, rng):
    w = rng.standard_normal((m, c // group, k, k)).astype(F32)
    inits = [numpy_helper.from_array(F32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(m).astype(F32), "b")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("Conv", ["xf", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride] * 2,
                              pads=[pad] * 4, dilations=[dil] * 2, group=group)]
    return _model(nodes, [_vi("x", TensorProto.UINT8, [1, c, 11, 9])], [_vi("y", TensorProto.FLOAT, None)],
                  inits)


@pytest.mark.parametrize("c,m,k,stride,pad,dil,group", NCHWC_CASES)
def test_float_conv_nchwc_equals_ort(c, m, k, stride, pad, dil, group):
    """A float-weight Conv after ORT's NchwcTransformer, whose channel block is the host's (16
    with AVX-512F, 8 with AVX2/FMA3): under this host's profile, bit for bit."""
    model = _float_conv_model(c, m, k, stride, pad, dil, group, RNG)
    assert _conv_order(model) == "nchwc"   # on some host; lowering decides for the profile
    feeds = {"x": RNG.integers(0, 256, (1, c, 11, 9), dtype=np.uint8)}
    assert _run_both(model, feeds) == {"y": 0}


def test_nchwc_order_and_block_follow_the_profile():
    """The profile's runtime_isa picks the block: two groups of 8 channels are NCHWc with
    blocks of 8 (onnxruntime-cpu-avx2) and im2col + SGEMM with blocks of 16 (onnxruntime-cpu)."""
    from mrq.api import prepare
    for case, want in (((16, 16, 3, 1, 1, 1, 2), {"onnxruntime-cpu": ("mlas", "avx512f"),
                                                   "onnxruntime-cpu-avx2": ("nchwc", "fma3")}),
                       ((12, 24, 3, 1, 1, 1, 1), {"onnxruntime-cpu": ("nchwc", "avx512f"),
                                                   "onnxruntime-cpu-avx2": ("nchwc", "fma3")})):
        model = _float_conv_model(*case, np.random.default_rng(0))
        for profile, (order, isa) in want.items():
            (step,) = [s for s in prepare(import_onnx(model), profile, layout="native").program.steps
                       if s.kind == "float_conv"]
            assert (step.params["order"], step.params["isa"]) == (order, isa), (case, profile)


@pytest.mark.parametrize("c,m,group", [(12, 12, 3), (16, 16, 2), (6, 4, 2)])
def test_grouped_float_weight_conv_before_q_has_orts_quantized_weight(c, m, group):
    """ORT's WeightBiasQuantization (a QDQ transform) quantizes the float weight and bias of a
    DQ -> Conv -> Q whether or not a NCHWc kernel exists for the grouping (ORT runs a
    QLinearConv): the imported integer Conv carries the int8 weight and int32 bias."""
    from mrq.onnx_import_islands import ort_weight_bias_codes
    rng = np.random.default_rng(c)
    w = rng.standard_normal((m, c // group, 3, 3)).astype(F32)
    b = rng.standard_normal(m).astype(F32)
    inits = [numpy_helper.from_array(F32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(F32(0.03), "ys"), numpy_helper.from_array(np.uint8(128), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("Conv", ["xf", "w", "b"], ["y"], kernel_shape=[3, 3], pads=[1] * 4, group=group),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["q"])]
    model = _model(nodes, [_vi("x", TensorProto.UINT8, [1, c, 11, 9])], [_vi("q", TensorProto.UINT8, None)], inits)
    graph = import_onnx(model)
    (conv,) = [n for n in graph.nodes if n.op == "Conv"]
    assert conv.attrs["group"] == group
    want = ort_weight_bias_codes(w, b, 0.05)
    weight, bias = (graph.tensors[t] for t in conv.inputs[1:])
    assert np.array_equal(weight.data, want.weight_codes) and np.array_equal(bias.data, want.bias_codes)
    assert weight.qparams.scale[0] == want.weight_scale and bias.qparams.scale[0] == want.bias_scale
    feeds = {"x": rng.integers(0, 256, (1, c, 11, 9), dtype=np.uint8)}
    assert _run_both(model, feeds) == {"q": 0}


@pytest.mark.parametrize("block", [16, 8])
def test_nchwc_kernel_against_scalar_reference(block):
    """conv_nchwc against the segment order written out with exact-rational FMAs, for both
    channel blocks: random values, huge ones (products near the float32 top) and tiny ones
    (subnormal products)."""
    from simulator.kernels.ort_nchwc import conv_nchwc, nchwc_variant
    from tests.reference import float_island_ref as ref
    rng = np.random.default_rng(block)
    for c, m, k, stride, pad, dil, group in NCHWC_CASES[1:]:
        if nchwc_variant(c, m, (k, k), (pad,) * 4, group, block) is None:
            continue
        m = min(m, 8 if group == 1 else m)
        for scale in (1.0, 1e15, 1e-21):
            x = (rng.standard_normal((1, c, 4, 3)) * scale).astype(F32)
            w = (rng.standard_normal((m, c // group, k, k)) * scale).astype(F32)
            b = rng.standard_normal(m).astype(F32)
            geo = dict(strides=(stride,) * 2, pads=(pad,) * 4, dilations=(dil,) * 2, group=group)
            got = conv_nchwc(x, weight=w, bias=b, block=block, **geo)
            want = ref.conv_nchwc(x, w, b, geo["strides"], geo["pads"], geo["dilations"], group, block)
            assert _mismatches(got, want) == 0, (c, m, k, group, scale)


# ------------------------------------------------------------------ errors
def test_float_matmul_refusals_are_one_line():
    """A constant left operand is refused at import; an integer profile refuses the float
    MatMul naming node and op."""
    inits = [numpy_helper.from_array(RNG.standard_normal((3, 4)).astype(F32), "w")]
    model = _model([helper.make_node("MatMul", ["w", "a"], ["y"], name="mm")],
                   [_vi("a", TensorProto.FLOAT, [4, 2])], [_vi("y", TensorProto.FLOAT, None)], inits)
    # a quantization marker, so the importer takes the model at all
    model.graph.node.append(helper.make_node("QuantizeLinear", ["y", "qs"], ["yq"]))
    model.graph.initializer.append(numpy_helper.from_array(F32(0.1), "qs"))
    with pytest.raises(MrqError) as err:
        import_onnx(model)
    assert "'mm'" in str(err.value) and "MatMul" in str(err.value) and "\n" not in str(err.value)
    two = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm2"),
                  helper.make_node("QuantizeLinear", ["y", "qs"], ["yq"])],
                 [_vi("a", TensorProto.FLOAT, [1, 2, 4]), _vi("b", TensorProto.FLOAT, [1, 4, 3])],
                 [_vi("yq", TensorProto.UINT8, None)], [numpy_helper.from_array(F32(0.1), "qs")])
    feeds = {"a": RNG.standard_normal((1, 2, 4)).astype(F32), "b": RNG.standard_normal((1, 4, 3)).astype(F32)}
    with pytest.raises(MrqError) as err:
        Pipeline(import_onnx(two), "nna-sym8", "native").run(feeds)
    assert "mm2" in str(err.value) and "MatMul" in str(err.value) and "\n" not in str(err.value)
