"""The float islands ONNX Runtime runs between DequantizeLinear and QuantizeLinear
(mrq/onnx_import_islands.py): LayerNormalization, ConvTranspose with float weights and chains of
Erf/scalar arithmetic. The kernels against a plain numpy transcription of ORT's float32
arithmetic, then single-node QDQ/QOperator models against ONNX Runtime itself (random, extreme
and zero-variance inputs), then the profile gate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from mrq.api import simulate
from mrq.errors import UnsupportedOpError
from mrq.ort_float import fma
from simulator.kernels.ort_convtranspose import convtranspose_ort
from simulator.kernels.ort_layernorm import layernorm_ort
from tests.ort_host import ORT_PROFILE
from tests.parity.ort_runner import run_ort

F32 = np.float32
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ numpy transcription of ORT
def _ref_row(x, scale, bias, eps):
    """One row as ORT 1.32 computes it (simulator/kernels/ort_layernorm.py names the sources),
    written with numpy float32 scalars and mrq.ort_float.fma, element by element."""
    n = x.size
    if n >= 8:
        lanes = [0.0] * 4
        for k in range(0, n - n % 4, 4):
            for j in range(4):
                lanes[j] += float(x[k + j])
        total = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
        for i in range(n - n % 4, n):
            total += float(x[i])
        mean = F32(total / n)
        d = (x - mean).astype(F32)
        acc = [F32(0)] * 8
        n8 = n - n % 8
        for k in range(0, n8, 8):
            for j in range(8):
                acc[j] = fma(d[k + j], d[k + j], acc[j])[()]
        var = F32(F32(F32(acc[0] + acc[4]) + F32(acc[2] + acc[6]))
                  + F32(F32(acc[1] + acc[5]) + F32(acc[3] + acc[7])))
        rest = list(range(n8, n))
        if len(rest) >= 4:
            for i in rest[:4]:
                var = F32(var + F32(d[i] * d[i]))
            rest = rest[4:]
        for i in rest:
            var = fma(d[i], d[i], var)[()]
        inv = F32(F32(1) / np.sqrt(F32(F32(var / F32(n)) + eps)))
        t = (d * inv).astype(F32)
        return fma(t, scale, bias) if bias is not None else (t * scale).astype(F32)
    mean, m2 = F32(0), F32(0)
    for i in range(n):
        delta = F32(x[i] - mean)
        mean = F32(mean + F32(delta / F32(i + 1)))
        m2 = F32(m2 + F32(F32(x[i] - mean) * delta))
    std = np.sqrt(F32(F32(m2 / F32(n)) + eps))
    y = (((x - mean).astype(F32) / std).astype(F32) * scale).astype(F32)
    return y if bias is None else (y + bias).astype(F32)


def _rows(kind, rows, n, rng):
    if kind == "random":
        return (rng.standard_normal((rows, n)) * 3).astype(F32)
    if kind == "offset":     # large mean, small spread: cancellation in the variance
        return (rng.standard_normal((rows, n)) * 0.01 + 1000).astype(F32)
    if kind == "constant":   # zero variance: (x - mean) is 0, the output is the bias
        return np.full((rows, n), -2.75, F32)
    return np.where(rng.random((rows, n)) < 0.5, F32(-3.0e4), F32(2.5e4)).astype(F32)   # extreme


@pytest.mark.parametrize("n", [1, 2, 5, 7, 8, 9, 12, 15, 16, 19, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_kernel_matches_numpy_transcription(n, bias):
    rng = np.random.default_rng(n)
    scale = rng.standard_normal(n).astype(F32)
    b = rng.standard_normal(n).astype(F32) if bias else None
    for kind in ("random", "offset", "constant", "extreme"):
        x = _rows(kind, 3, n, rng)
        got = layernorm_ort(x.reshape(3, 1, n), scale=scale, bias=b, epsilon=1e-5, axis=-1)
        want = np.stack([_ref_row(r, scale, b, F32(1e-5)) for r in x])
        assert np.array_equal(got.reshape(3, n).view(np.int32), want.view(np.int32)), (kind, n)


def _convtranspose_ref(x, w, b, stride, pad, out_hw):
    """SGEMM as one FMA chain per column element (K <= 128 here: one K slice), col2im in ORT's
    loop order, then the bias: plain Python over numpy float32 scalars."""
    c, m, kh, kw = w.shape
    h, wd = x.shape[2:]
    y = np.zeros((m, *out_hw), F32)
    for mo in range(m):
        for ky in range(kh):
            for kx in range(kw):
                for iy in range(h):
                    for ix in range(wd):
                        acc = F32(0)
                        for k in range(c):
                            acc = fma(w[k, mo, ky, kx], x[0, k, iy, ix], acc)[()]
                        oy, ox = iy * stride - pad + ky, ix * stride - pad + kx
                        if 0 <= oy < out_hw[0] and 0 <= ox < out_hw[1]:
                            y[mo, oy, ox] = F32(y[mo, oy, ox] + acc)
    return (y + b.reshape(-1, 1, 1)).astype(F32)[None]


def test_convtranspose_kernel_matches_numpy_transcription():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 5, 4, 3)).astype(F32)
    w = (rng.standard_normal((5, 3, 3, 3)) * 0.5).astype(F32)
    b = rng.standard_normal(3).astype(F32)
    got = convtranspose_ort(x, weight=w, bias=b, strides=(2, 2), pads=(1, 1, 1, 1), output_size=(8, 6))
    want = _convtranspose_ref(x, w, b, 2, 1, (8, 6))
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


# ------------------------------------------------------------------ single-node models vs ORT
def _c(value, name):
    return numpy_helper.from_array(np.asarray(value), name)


def _island_model(body, x_shape, inits, out_name="f", dtype=TP.UINT8, zp=(120, 131), qdq_const=False):
    """codes -DQ-> body -> f -Q-> y: the graph input holds integer codes, so every code
    pattern (all equal, saturated) can be fed directly."""
    npd = np.uint8 if dtype == TP.UINT8 else np.int8
    z_in, z_out = (np.array(v, npd) if dtype == TP.UINT8 else np.array(v - 128, npd) for v in zp)
    inits = [_c(F32(0.037), "s_in"), _c(z_in, "z_in"), _c(F32(0.021), "s_out"), _c(z_out, "z_out"), *inits]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s_in", "z_in"], ["xd"]), *body,
             helper.make_node("QuantizeLinear", [out_name, "s_out", "z_out"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, list(x_shape))],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _code_feeds(shape, dtype, rng):
    info = np.iinfo(dtype)
    yield rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)            # random
    yield np.full(shape, info.min + 77, dtype)                                       # zero variance
    yield np.where(rng.random(shape) < 0.5, info.min, info.max).astype(dtype)       # extreme


def _assert_matches_ort(tmp_path, model, dtype=np.uint8, seed=0, extra=()):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    for x in [*_code_feeds(shape, dtype, rng), *extra]:
        want = run_ort(path, {"x": x})["y"]
        got = simulate(str(path), ORT_PROFILE, {"x": x}, fidelity=False).outputs["y"]
        assert got.dtype == want.dtype and got.shape == want.shape
        bad = int((got != want).sum())
        assert bad == 0, f"{bad}/{want.size} codes differ from ORT"


def _layernorm_body(shape, axis, bias, quantized_params, rng):
    norm = shape[axis:]
    scale = (rng.standard_normal(norm) + 1).astype(F32)
    b = rng.standard_normal(norm).astype(F32)
    inits, ins, body = [], ["xd"], []
    if quantized_params:   # QDQ: int8 scale and int32 bias through DequantizeLinear, as quantize_static
        inits += [_c(np.clip(np.rint(scale / 0.02), -127, 127).astype(np.int8), "sq"),
                  _c(F32(0.02), "ss"), _c(np.int8(0), "sz"),
                  _c(np.rint(b / 0.001).astype(np.int32), "bq"), _c(F32(0.001), "bs"), _c(np.int32(0), "bz")]
        body += [helper.make_node("DequantizeLinear", ["sq", "ss", "sz"], ["scale"]),
                 helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bias"])]
    else:                  # QOperator: float initializers
        inits += [_c(scale, "scale"), _c(b, "bias")]
    ins += ["scale"] + (["bias"] if bias else [])
    body.append(helper.make_node("LayerNormalization", ins, ["f"], axis=axis, epsilon=1e-5, name="ln"))
    return body, inits


@pytest.mark.parametrize("shape,axis,bias,quantized,dtype", [
    ((1, 7, 32), -1, True, True, TP.UINT8),      # ViT token rows, MLAS path
    ((1, 6, 5), -1, False, False, TP.INT8),      # short rows: ORT's scalar Welford loop
    ((1, 3, 4, 6), -2, True, False, TP.UINT8),   # two normalised axes (24 per row)
    ((1, 4, 3, 3), -2, False, True, TP.INT8),    # 9 per row, no bias
])
def test_layernorm_node_matches_ort(tmp_path, shape, axis, bias, quantized, dtype):
    rng = np.random.default_rng(len(shape) + shape[-1])
    body, inits = _layernorm_body(shape, axis, bias, quantized, rng)
    model = _island_model(body, shape, inits, dtype=dtype)
    _assert_matches_ort(tmp_path, model, np.uint8 if dtype == TP.UINT8 else np.int8)


@pytest.mark.parametrize("branch", [False, True])
def test_float_weight_convtranspose_matches_ort(tmp_path, branch):
    """QOperator's float-weight ConvTranspose. With one QuantizeLinear after it ORT's
    WeightBiasQuantization re-quantizes weight and bias first; with a branch it does not."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((6, 4, 3, 3)) * 0.2).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    body = [helper.make_node("ConvTranspose", ["xd", "w", "b"], ["f"], strides=[2, 2], pads=[1, 1, 1, 1],
                             output_padding=[1, 1], kernel_shape=[3, 3], name="up")]
    model = _island_model(body, (1, 6, 5, 5), [_c(w, "w"), _c(b, "b")])
    if branch:   # a second QuantizeLinear reads the float output: ORT keeps the float weights
        g = model.graph
        g.node.append(helper.make_node("QuantizeLinear", ["f", "s_in", "z_in"], ["y2"]))
        g.output.append(helper.make_tensor_value_info("y2", TP.UINT8, None))
    _assert_matches_ort(tmp_path, model)


def test_qdq_convtranspose_matches_ort(tmp_path):
    """A QDQ ConvTranspose (per-channel int8 weights, int32 bias, a Relu before the Q): ORT has
    no integer kernel and runs the float one on the dequantized weights; so does mrq under
    onnxruntime-cpu."""
    rng = np.random.default_rng(6)
    wq = rng.integers(-127, 128, (16, 6, 3, 3)).astype(np.int8)
    ws = (rng.random(6) * 0.02 + 0.005).astype(F32)
    bs = (F32(0.037) * ws).astype(F32)
    body = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
            helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0),
            helper.make_node("ConvTranspose", ["xd", "w", "b"], ["c"], strides=[2, 2], pads=[0, 1, 1, 0],
                             kernel_shape=[3, 3], name="up"),
            helper.make_node("Relu", ["c"], ["f"])]
    inits = [_c(wq, "wq"), _c(ws, "ws"), _c(np.zeros(6, np.int8), "wz"),
             _c(rng.integers(-3000, 3000, 6).astype(np.int32), "bq"), _c(bs, "bs")]
    _assert_matches_ort(tmp_path, _island_model(body, (1, 16, 8, 8), inits))


def test_gelu_erf_chain_matches_ort(tmp_path):
    """``x / sqrt(2)`` then Erf between DQ and Q (torch's GELU at opset 17), and a scalar Sub with
    the constant first."""
    body = [helper.make_node("Div", ["xd", "c"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
            helper.make_node("Sub", ["one", "e"], ["f"])]
    model = _island_model(body, (1, 4, 64), [_c(F32(1.4142135), "c"), _c(F32(1.0), "one")], dtype=TP.INT8)
    every_code = np.arange(-128, 128, dtype=np.int8).reshape(1, 4, 64)
    _assert_matches_ort(tmp_path, model, np.int8, extra=[every_code])


def test_islands_written_back_to_onnx_run_the_same_in_ort(tmp_path):
    """``mrq requant``'s writer: LayerNormalization, a float-weight ConvTranspose and an Erf
    chain imported, exported again (mrq.onnx_export), and the file still equals ORT under mrq."""
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import import_onnx
    rng = np.random.default_rng(4)
    body, inits = _layernorm_body((1, 6, 16), -1, True, True, rng)
    body += [helper.make_node("QuantizeLinear", ["f", "s_out", "z_out"], ["lq"]),
             helper.make_node("DequantizeLinear", ["lq", "s_out", "z_out"], ["ld"]),
             helper.make_node("Reshape", ["ld", "shape4"], ["l4"]),
             helper.make_node("ConvTranspose", ["l4", "w", "b"], ["ct"], strides=[2, 2], kernel_shape=[2, 2]),
             helper.make_node("QuantizeLinear", ["ct", "s_out", "z_out"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s_out", "z_out"], ["cd"]),
             helper.make_node("Div", ["cd", "c"], ["u"]), helper.make_node("Erf", ["u"], ["f2"])]
    inits += [_c(np.array([1, 6, 4, 4], np.int64), "shape4"), _c(F32(1.4142135), "c"),
              _c((rng.standard_normal((6, 3, 2, 2)) * 0.3).astype(F32), "w"),
              _c(rng.standard_normal(3).astype(F32), "b")]
    model = _island_model(body, (1, 6, 16), inits, out_name="f2")
    again = export_onnx(import_onnx(model))
    assert {"LayerNormalization", "ConvTranspose", "Erf"} <= {n.op_type for n in again.graph.node}
    _assert_matches_ort(tmp_path, again)


# ------------------------------------------------------------------ profile gate
def test_npu_profiles_refuse_ort_float_islands(tmp_path):
    rng = np.random.default_rng(1)
    body, inits = _layernorm_body((1, 4, 16), -1, True, False, rng)
    path = tmp_path / "ln.onnx"
    onnx.save(_island_model(body, (1, 4, 16), inits, dtype=TP.INT8, zp=(128, 128)), str(path))
    x = np.zeros((1, 4, 16), np.int8)
    with pytest.raises(UnsupportedOpError, match="LayerNormalization.*'ln'.*nna-sym8"):
        simulate(str(path), "nna-sym8", {"x": x}, fidelity=False)
    # an NPU profile that runs it on the host with ORT's arithmetic gets ORT's codes
    text = (REPO / "hw_profiles" / "nna-sym8.yaml").read_text().replace("name: nna-sym8", "name: nna-host-ln")
    prof = tmp_path / "nna-host-ln.yaml"
    prof.write_text(text + f"\nhost_ops:\n  LayerNormalization: {ORT_PROFILE}\n")
    x = np.random.default_rng(2).integers(-128, 128, (1, 4, 16)).astype(np.int8)
    got = simulate(str(path), str(prof), {"x": x}, fidelity=False)
    assert np.array_equal(got.outputs["y"], run_ort(path, {"x": x})["y"])
    low = got.lowered
    assert {low.placement[s.name] for s in low.program.steps if s.kind == "layernorm_ort"} == {"host"}
    # the op is known to the profile vocabulary: the ORT profile lists it
    from mrq.hw_profile import KNOWN_OPS, load_profile
    assert "LayerNormalization" in KNOWN_OPS
    assert "LayerNormalization" in load_profile(ORT_PROFILE).supported_ops
