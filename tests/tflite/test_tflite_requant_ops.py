"""`mrq requant` of the TFLite ops the NNA profiles run since issue 13 (SUB, LOGISTIC, HARD_SWISH,
channels-last TRANSPOSE_CONV, RESIZE_BILINEAR), each as a one-op model: the written ONNX QDQ
file passes `mrq check`, stays close to the input model, and reads back as the program that was
re-quantized in memory, output for output (bilinear resize: see its test)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tflite_builder import ModelBuilder

N_CALIB, N_TEST = 16, 8


def _q(b, name, shape, scale, zp=0, dtype="int8", data=None, qdim=0):
    scale = np.atleast_1d(np.asarray(scale, np.float32))
    zps = [zp] * scale.size if np.isscalar(zp) else zp
    return b.tensor(name, shape, dtype, scale=scale, zero_point=zps, quantized_dimension=qdim, data=data)


def sub(dtype="int8", broadcast=False):
    """a - b on different grids (int16: symmetric, as LiteRT requires)."""
    b = ModelBuilder()
    i16 = dtype == "int16"
    a = _q(b, "a", [1, 4, 5, 6], 0.0009 if i16 else 0.05, 0 if i16 else 4, dtype)
    c = _q(b, "b", [1, 1, 1, 6] if broadcast else [1, 4, 5, 6], 0.0006 if i16 else 0.03, 0 if i16 else -9, dtype)
    y = _q(b, "y", [1, 4, 5, 6], 0.0013 if i16 else 0.07, 0 if i16 else 2, dtype)
    opts = {"fused_activation_function": "NONE"}
    if i16:
        opts["pot_scale_int16"] = False
    b.op("SUB", [a, c], [y], options=("SubOptions", opts))
    return b.finish([a, c], [y])


def logistic():
    b = ModelBuilder()
    x = _q(b, "x", [1, 8, 32], 0.06, -5)
    y = _q(b, "y", [1, 8, 32], 1 / 256, -128)
    b.op("LOGISTIC", [x], [y])
    return b.finish([x], [y])


def hard_swish():
    b = ModelBuilder()
    x = _q(b, "x", [1, 4, 4, 16], 0.045, 7)
    y = _q(b, "y", [1, 4, 4, 16], 0.027, -110)
    b.op("HARD_SWISH", [x], [y])
    return b.finish([x], [y])


def transpose_conv(stride=2, padding="SAME", seed=3):
    """NHWC, per-channel int8 weights [C_out, kH, kW, C_in], int32 bias."""
    r = np.random.default_rng(seed)
    b = ModelBuilder()
    cin, cout, k, hw = 3, 5, 3, (3, 4)
    s_in = 0.04
    out_hw = [d * stride if padding == "SAME" else (d - 1) * stride + k for d in hw]
    shape = b.tensor("shape", [4], "int32", data=[1, *out_hw, cout])
    w_scale = r.uniform(0.004, 0.02, cout).astype(np.float32)
    w = _q(b, "w", [cout, k, k, cin], w_scale, [0] * cout, data=r.integers(-127, 128, (cout, k, k, cin)))
    x = _q(b, "x", [1, *hw, cin], s_in, 3)
    bias = _q(b, "bias", [cout], np.float32(s_in) * w_scale, [0] * cout, "int32", r.integers(-400, 400, cout))
    y = _q(b, "y", [1, *out_hw, cout], 0.05, -4)
    b.op("TRANSPOSE_CONV", [shape, w, x, bias], [y], options=("TransposeConvOptions", {
        "padding": padding, "stride_w": stride, "stride_h": stride}))
    return b.finish([x], [y])


def resize_bilinear(in_hw, out_hw, align=False, half=False):
    b = ModelBuilder()
    x = _q(b, "x", [1, *in_hw, 3], 0.05, -3)
    size = b.tensor("size", [2], "int32", data=list(out_hw))
    y = _q(b, "y", [1, *out_hw, 3], 0.05, -3)
    b.op("RESIZE_BILINEAR", [x, size], [y], options=("ResizeBilinearOptions", {
        "align_corners": align, "half_pixel_centers": half}))
    return b.finish([x], [y])


def _inputs(graph, n, seed):
    """Codes around each input's zero point (sigma = 1/8 of the range), the first sample's first
    elements at the extremes of the code range."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        info = np.iinfo(np.dtype(t.dtype))
        zp = float(t.qparams.zero_point[0])
        codes = np.clip(np.rint(rng.normal(zp, (float(info.max) - info.min + 1) / 8,
                                           (n,) + tuple(t.shape[1:]))), info.min, info.max)
        codes.reshape(n, -1)[0, :2] = (info.min, info.max)
        feeds[name] = codes.astype(t.dtype)
    return feeds


def _requant_and_check(tmp_path, model_bytes, profile):
    """(input graph, re-quantized graph in memory, written graph, test feeds): `mrq requant`
    and `mrq check` through the CLI, in this process."""
    from cli_in_process import mrq_in_process as mrq

    from mrq.onnx_import import load_model
    from mrq.passes.base import Options
    from mrq.requant import requantize
    from mrq.tflite_import import import_tflite
    path = tmp_path / "m.tflite"
    path.write_bytes(model_bytes)
    graph = import_tflite(str(path))
    calib = _inputs(graph, N_CALIB, seed=1)
    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / f"m.{profile}.onnx"
    r = mrq("requant", path, "--profile", profile, "-o", out, "--calib", tmp_path / "calib.npz")
    assert r.returncode == 0, r.stderr
    r = mrq("check", out, "--profile", profile, "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    new, _ = requantize(graph, profile, calib, Options())
    return graph, new, load_model(str(out)), _inputs(graph, N_TEST, seed=2)


def _outputs(graph, profile, feeds):
    from mrq.api import simulate
    sim = simulate(graph, profile, feeds, fidelity=False)
    return {n: sim.outputs[n] for n in graph.outputs}


def _sqnr(graph, ref, new_graph, got) -> float:
    from mrq.metrics import sqnr_db
    name = graph.outputs[0]
    want = graph.tensors[name].qparams.dequantize(ref[name])
    have = new_graph.tensors[name].qparams.dequantize(got[name]).reshape(want.shape)
    return float(sqnr_db(want, have))


# case -> (model, {profile: SQNR floor in dB of the written model vs the tflite-int8 input model
# on held-out codes}); each floor sits about 4 dB under the figure measured on this host
CASES = {
    "sub8": (lambda: sub(), {"nna-sym8": 32.0, "nna-sym8-pow2": 30.0, "nna-w4a8": 32.0}),
    "sub8_broadcast": (lambda: sub(broadcast=True), {"nna-sym8": 30.0}),
    "sub16": (lambda: sub("int16"), {"nna-sym8": 34.0}),
    "logistic": (logistic, {"nna-sym8": 40.0, "nna-sym8-pow2": 38.0}),
    "hard_swish": (hard_swish, {"nna-sym8": 32.0, "nna-sym8-pow2": 27.0}),
    "transpose_conv_same_s2": (transpose_conv, {"nna-sym8": 27.0, "nna-sym8-pow2": 15.0, "nna-w4a8": 18.0}),
    "transpose_conv_valid_s1": (lambda: transpose_conv(1, "VALID", 4), {"nna-sym8": 25.0}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_model_passes_check_and_reads_back_as_the_requantized_program(tmp_path, case):
    build, floors = CASES[case]
    model = build()
    for profile, floor in floors.items():
        graph, new, written, feeds = _requant_and_check(tmp_path, model, profile)
        from mrq.passes.base import feeds_for_new_graph
        ref = _outputs(graph, "tflite-int8", feeds)
        in_memory = _outputs(new, profile, feeds_for_new_graph(graph, new, feeds))
        read_back = _outputs(written, profile, feeds_for_new_graph(graph, written, feeds))
        for name in graph.outputs:
            np.testing.assert_array_equal(read_back[name], in_memory[name], err_msg=f"{case} {profile}")
        assert _sqnr(graph, ref, written, read_back) > floor, (case, profile)


@pytest.mark.parametrize("profile", ["nna-sym8", "nna-sym8-pow2"])
def test_sub_is_the_add_datapath_with_the_second_product_negated(profile):
    """The lowered Sub against a plain numpy reference: ``acc = (a - za) * ma - (b - zb) * |mb|``
    in int64, one rounding shift half up, output zero point, clamp; on every pair of extreme
    codes and on random codes, broadcast over the second input."""
    import tempfile

    from mrq.passes.base import Options
    from mrq.pipeline import Pipeline
    from mrq.requant import requantize
    from mrq.tflite_import import import_tflite
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sub.tflite")
        with open(path, "wb") as f:
            f.write(sub(broadcast=True))
        graph = import_tflite(path)
    new, _ = requantize(graph, profile, _inputs(graph, N_CALIB, seed=1), Options())
    pipe = Pipeline(new, profile, "native")
    (step,) = [s for s in pipe.program.steps if s.kind == "add"]
    p = step.params
    assert p.mode == "fixed" and int(p.multiplier_b) < 0 < int(p.multiplier_a)
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (6, 4, 5, 6))
    b = rng.integers(-128, 128, (6, 1, 1, 6))
    a[0, 0, 0, :4], b[0, 0, 0, :4] = (-128, -128, 127, 127), (-128, 127, -128, 127)
    feeds = dict(zip(step.inputs, (a.astype(np.int8), b.astype(np.int8))))
    from simulator.program import Program, TensorSpec
    from simulator.run import run
    prog = Program(tuple(TensorSpec(n, "int8", (None,) + v.shape[1:]) for n, v in feeds.items()),
                   (TensorSpec(step.outputs[0], "int8", (None, 4, 5, 6)),), (step,))
    got = run(prog, feeds).outputs[step.outputs[0]]
    acc = (a - p.zero_point_a) * int(p.multiplier_a) + (b - p.zero_point_b) * int(p.multiplier_b)
    shift = int(np.asarray(p.rq_shift).reshape(-1)[0])
    rounded = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << -shift
    want = np.clip(rounded + p.out_zero_point, p.out_min, p.out_max)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("in_hw, out_hw, align, half", [
    ((3, 4), (6, 8), False, True), ((3, 4), (7, 5), True, False), ((4, 5), (9, 7), False, False)])
def test_resize_bilinear_is_written_with_its_coordinate_mode(tmp_path, in_hw, out_hw, align, half):
    """RESIZE_BILINEAR becomes ONNX linear Resize with TFLite's coordinate mode. On the NNA the
    TFLite op interpolates the codes with 10-bit weights (LiteRT's integer kernel), while an ONNX
    Resize reads back as ORT's float interpolation: the two differ by rounding only, so the
    read-back is held to one code of the in-memory program, and to the input model's output."""
    graph, new, written, feeds = _requant_and_check(tmp_path, resize_bilinear(in_hw, out_hw, align, half),
                                                    "nna-sym8")
    from mrq.passes.base import feeds_for_new_graph
    (node,) = [n for n in written.nodes if n.op == "Resize"]
    assert tuple(node.attrs["size"]) == tuple(out_hw)
    in_memory = _outputs(new, "nna-sym8", feeds_for_new_graph(graph, new, feeds))["y"]
    read_back = _outputs(written, "nna-sym8", feeds_for_new_graph(graph, written, feeds))["y"]
    diff = np.abs(read_back.astype(np.int64) - in_memory.reshape(read_back.shape))
    assert diff.max() <= 1 and np.mean(diff) < 0.2
    assert _sqnr(graph, _outputs(graph, "tflite-int8", feeds), written, {"y": read_back}) > 30.0


def test_resize_then_argmax_keeps_the_class_map(tmp_path):
    """deeplabv3's head: RESIZE_BILINEAR then ARG_MAX over channels (int64 indices) on every
    profile; the class map of the written model agrees with the input model's nearly everywhere."""
    b = ModelBuilder()
    x = _q(b, "x", [1, 3, 4, 6], 0.05, -3)
    size = b.tensor("size", [2], "int32", data=[6, 8])
    r = _q(b, "r", [1, 6, 8, 6], 0.05, -3)
    b.op("RESIZE_BILINEAR", [x, size], [r], options=("ResizeBilinearOptions", {
        "align_corners": False, "half_pixel_centers": True}))
    axis = b.tensor("axis", [1], "int32", data=[3])
    y = b.tensor("y", [1, 6, 8], "int64")
    b.op("ARG_MAX", [r, axis], [y], options=("ArgMaxOptions", {"output_type": 4}))
    model = b.finish([x], [y])
    from mrq.passes.base import feeds_for_new_graph
    for profile in ("nna-sym8", "nna-sym8-pow2", "nna-w4a8"):
        graph, _, written, feeds = _requant_and_check(tmp_path, model, profile)
        want = _outputs(graph, "tflite-int8", feeds)["y"]
        got = _outputs(written, profile, feeds_for_new_graph(graph, written, feeds))["y"]
        assert np.mean(got == want.reshape(got.shape)) > 0.97, profile


def test_onnx_runtime_runs_the_written_models(tmp_path):
    """The written QDQ files load in ONNX Runtime (the standard form, not an mrq dialect)."""
    ort = pytest.importorskip("onnxruntime")
    from cli_in_process import mrq_in_process as mrq
    # 7 / 3 in float32 times 3 is 6.99999976: the written scale must still give 7 rows
    for i, model in enumerate((sub(), transpose_conv(), resize_bilinear((3, 4), (7, 5), align=True))):
        path, out = tmp_path / f"m{i}.tflite", tmp_path / f"m{i}.onnx"
        path.write_bytes(model)
        assert mrq("requant", path, "--profile", "nna-sym8", "-o", out).returncode == 0
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in sess.get_inputs():
            # a batch of 2 where the batch is free (a Resize's ``sizes`` would have fixed it)
            shape = [2 if not isinstance(d, int) else d for d in inp.shape]
            feeds[inp.name] = np.zeros(shape, np.float32 if "float" in inp.type else np.int8)
        (y,) = sess.run(None, feeds)
        assert y.shape == (shape[0],) + tuple(sess.get_outputs()[0].shape[1:])
