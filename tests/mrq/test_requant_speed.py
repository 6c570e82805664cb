"""The re-quantizer's fast paths compute what the plain numpy versions compute: the fused
clamp + fake-quant kernel, the depthwise kernel, the float32 calibration sweeps, the layer-error
shortcut for bias changes; and re-quantization with calibration data is deterministic."""
import numpy as np
import pytest

from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.float_kernels import (
    depthwise_conv_nchw,
    depthwise_conv_nchw_jit,
    depthwise_conv_nchw_numpy,
    quant_sq_errors,
)
from mrq.float_ref import FloatReference, _apply_clamp, _grid_round
from mrq.ir import QParams
from mrq.onnx_import import load_model
from mrq.passes.activation_grids import quant_mse, quant_mses
from mrq.passes.layer_data import batch_mean, layer_output_mse, pre_activation, real_weights
from mrq.requant import requantize


@pytest.fixture(scope="module")
def demo_graph():
    return load_model(DEMO_MODEL)


def _naive_depthwise(x, w, strides, pads, dilations, oh, ow):
    n, c, h, wd = x.shape
    kh, kw = w.shape[1:]
    out = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            for y in range(oh):
                iy = y * strides[0] + i * dilations[0] - pads[0]
                if not 0 <= iy < h:
                    continue
                for xx in range(ow):
                    ix = xx * strides[1] + j * dilations[1] - pads[1]
                    if 0 <= ix < wd:
                        out[:, :, y, xx] += w[None, :, i, j] * x[:, :, iy, ix]
    return out


@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 0, 1), (3, 1, 2, 2), (3, 3, 2, 1),
                                              (5, 1, 2, 1), (5, 2, 1, 1), (1, 2, 0, 1)])
def test_depthwise_kernel_matches_naive_loops_bit_exactly(k, stride, pad, dil):
    rng = np.random.default_rng(k * 100 + stride * 10 + pad)
    x = rng.standard_normal((3, 5, 9, 10))
    w = rng.standard_normal((5, k, k))
    oh = (9 + 2 * pad - (k - 1) * dil - 1) // stride + 1
    ow = (10 + 2 * pad - (k - 1) * dil - 1) // stride + 1
    args = (stride, stride), (pad, pad), (dil, dil), oh, ow
    want = _naive_depthwise(x, w, *args)
    # the jitted kernel (large inputs) and the numpy form (small ones): the same bits
    for form in (depthwise_conv_nchw_jit, depthwise_conv_nchw_numpy, depthwise_conv_nchw):
        np.testing.assert_array_equal(form(x, w, *args), want)
    got32 = depthwise_conv_nchw_jit(x.astype(np.float32), w.astype(np.float32), *args)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(depthwise_conv_nchw_numpy(x.astype(np.float32), w.astype(np.float32), *args),
                                  got32)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("clamp", [None, (0.0, None), (0.0, 6.0)])
def test_fused_fake_quant_equals_clamp_then_round(per_channel, clamp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 6)) * 4
    x[0, 0, 0, :3] = [0.5 * 0.05, 1.5 * 0.05, -2.5 * 0.05]      # exact ties round half to even
    if per_channel:
        qp = QParams(np.array([0.05, 0.1, 0.02], np.float32), np.array([3, -2, 0]), "int8", axis=1)
    else:
        qp = QParams(np.array([0.05], np.float32), np.array([0]), "int8")

    class Probe(FloatReference):
        pass

    ref = FloatReference.__new__(Probe)
    FloatReference.__init__(ref, None, fake_quant=True)
    got = ref._finish_output(x.copy(), qp, clamp)
    want = _grid_round(_apply_clamp(x, clamp), qp)
    np.testing.assert_array_equal(got, want)


def test_quant_mses_match_the_numpy_version():
    v = np.random.default_rng(1).standard_normal(10000)
    grids = [QParams(np.array([s], np.float32), np.array([z]), "int8") for s, z in [(0.01, 0), (0.03, 5), (0.1, -7)]]
    np.testing.assert_allclose(quant_mses(v, grids), [quant_mse(v, g) for g in grids], rtol=1e-12)
    assert quant_sq_errors(v, np.array([0.01]), np.array([0.0]), np.array([-128.0]), np.array([127.0])).shape == (1,)


def test_batch_mean_float32_close_to_float64():
    x = np.random.default_rng(2).random((300, 4, 7, 7), dtype=np.float32)
    np.testing.assert_allclose(batch_mean(x), x.astype(np.float64).mean(axis=0), rtol=1e-6)


def test_float32_forward_close_to_float64(demo_graph):
    feeds = demo_inputs(16, seed=2)
    a = FloatReference(demo_graph, fake_quant=True).run(feeds)
    b = FloatReference(demo_graph, fake_quant=True, dtype=np.float32).run(feeds)
    out = demo_graph.outputs[0]
    while demo_graph.tensors[out].qparams is None:          # the last quantized tensor before it
        out = demo_graph.producer(out).inputs[0]
    assert b[out].dtype == np.float32
    step = float(demo_graph.tensors[out].qparams.scale[0])
    # at most an occasional one-step flip where float32 lands on the other side of a rounding tie
    assert np.mean(np.abs(a[out] - b[out]) > step / 2) < 0.02


def test_layer_error_after_a_bias_change_equals_direct_computation(demo_graph):
    feeds = demo_inputs(16, seed=4)
    graph = demo_graph.copy()
    env = FloatReference(demo_graph, fake_quant=True, dtype=np.float32).run(feeds)
    node = next(n for n in graph.nodes if n.op == "Conv")
    x = env[node.inputs[0]]
    cache = {}
    before = layer_output_mse(graph, node, demo_graph, x, x, cache)
    assert before == pytest.approx(0.0, abs=1e-9)
    from mrq.passes.bias_grids import real_bias
    b = real_bias(graph, node) + np.linspace(-0.1, 0.1, real_bias(graph, node).size)
    node.attrs["bias_real"] = b
    shortcut = layer_output_mse(graph, node, demo_graph, x, x, cache)
    y_old = pre_activation(demo_graph, node, x, real_weights(demo_graph, node), real_bias(demo_graph, node))
    y_new = pre_activation(graph, node, x, real_weights(graph, node), b)
    direct = float(np.mean(np.square(y_new.astype(np.float64) - y_old)))
    assert shortcut == pytest.approx(direct, rel=1e-5)


@pytest.mark.parametrize("profile", ["nna-sym8", "nna-w4a8-pow2"])
def test_requantization_with_calibration_is_deterministic(demo_graph, profile):
    calib = demo_inputs(32, seed=1)
    a, _ = requantize(demo_graph, profile, calib)
    b, _ = requantize(demo_graph, profile, calib)
    for name, t in a.tensors.items():
        u = b.tensors[name]
        if t.data is not None:
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(u.data))
        if t.qparams is not None:
            np.testing.assert_array_equal(t.qparams.scale, u.qparams.scale)
            np.testing.assert_array_equal(t.qparams.zero_point, u.qparams.zero_point)


def test_channel_errors_match_numpy_per_channel_mse():
    """The fused per-channel kernel behind consumer-weighted scale selection equals numpy's
    clip(rint(x / s) + z) round trip, channel by channel, including clipped values."""
    from mrq.float_kernels import channel_quant_sq_errors
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((5, 3, 4, 6)) * [[[[1.0]], [[4.0]], [[0.1]]]]).astype(np.float32)
    scales = np.array([0.02, 0.05, 0.25])
    zps = np.array([0.0, 3.0, -2.0])
    qmins = np.array([-128.0, -128.0, 0.0])
    qmaxs = np.array([127.0, 127.0, 255.0])
    got = channel_quant_sq_errors(x, scales, zps, qmins, qmaxs)
    xd = x.astype(np.float64)
    for k in range(3):
        dq = (np.clip(np.rint(xd / scales[k]) + zps[k], qmins[k], qmaxs[k]) - zps[k]) * scales[k]
        np.testing.assert_allclose(got[k], np.square(dq - xd).mean(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("profile", ["nna-sym8", "nna-w4a8-pow2"])
def test_input_model_float_pass_runs_once_per_requant(demo_graph, profile, monkeypatch):
    """Every pass reads the input model's calibration activations from one shared float pass
    (Context.original_env), and the per-layer passes share one sweep of the new model: a pass
    that ran its own forward pass over the calibration set would double the re-quantization
    time. Whole-model runs are counted (a pass may still run a few layers on its own)."""
    runs = []
    real_run = FloatReference.run

    def counting_run(self, feeds, before_node=None, keep=None):
        runs.append((self.g, before_node is not None))
        return real_run(self, feeds, before_node=before_node, keep=keep)

    monkeypatch.setattr(FloatReference, "run", counting_run)
    _, report = requantize(demo_graph, profile, demo_inputs(32, seed=3))
    whole = [(g, sweep) for g, sweep in runs if len(g.nodes) >= len(demo_graph.nodes)]
    assert sum(1 for g, sweep in whole if g is demo_graph and not sweep) == 1, runs
    assert "weight_correction" in report.passes_run
    if profile == "nna-sym8":
        assert [sweep for g, sweep in whole if g is not demo_graph] == [True], runs
    # the shared pass also gives the end-to-end reference, so `mrq requant` runs no other
    assert set(report.reference_outputs) == set(demo_graph.outputs)
