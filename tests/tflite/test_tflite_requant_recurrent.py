"""Integer LSTMs and SVDFs re-quantized to a profile without recurrent arithmetic (nna-sym8):
the pass ``unroll_recurrent`` (mrq/passes/unroll_recurrent.py) writes the recurrence as per-step
ops the profile runs. Tiny IR models (as the importer emits them for
UNIDIRECTIONAL_SEQUENCE_LSTM and SVDF): the unrolled float graph is the recurrent op's float
reference, the re-quantized model passes ``mrq check`` and stays close to the input model, and
every step's state is a tensor of the trace."""
from types import SimpleNamespace

import numpy as np
import pytest

from mrq.float_ref import FloatReference
from mrq.ir import Graph, Node, QParams, Tensor

T, N_IN, N_CELL = 3, 4, 3


def _qp(scale, dtype, zp=0):
    return QParams(np.array([scale], np.float32), np.array([zp], np.int64), dtype)


def _tiny_lstm(seed=0, cifg=False, peephole=False, projection=False, cell_clip=0.0) -> Graph:
    """x int8 [N, 3, 4] -> LSTM (3 cells) -> y int8 [N, 3, n_out], with LiteRT's grids: int16
    cell state on 2**-11, the output state and the hidden value on 1/128."""
    rng = np.random.default_rng(seed)
    n_out = 2 if projection else N_CELL
    # weights small enough that no gate leaves LiteRT's Q3.12 range [-8, 8) (the unrolled graph
    # saturates there as the kernel does; the float reference does not)
    s_x, s_h = 0.02, 1 / 128
    tensors = {"x": Tensor("x", (None, T, N_IN), "int8", _qp(s_x, "int8", 3))}
    roles, names = [], []

    def const(role, codes, qp):
        tensors[role] = Tensor(role, codes.shape, qp.dtype, qp, codes)
        roles.append(role)
        names.append(role)

    gates = ("forget", "cell", "output") if cifg else ("input", "forget", "cell", "output")
    w_scale = {g: 0.004 + 0.001 * k for k, g in enumerate(gates)}
    for g in gates:
        const(f"input_to_{g}", rng.integers(-127, 128, (N_CELL, N_IN)).astype(np.int8), _qp(w_scale[g], "int8"))
    for g in gates:
        const(f"recurrent_to_{g}", rng.integers(-127, 128, (N_CELL, n_out)).astype(np.int8), _qp(0.004, "int8"))
    if peephole:
        for g in ("forget", "output") if cifg else ("input", "forget", "output"):
            const(f"cell_to_{g}", rng.integers(-300, 300, N_CELL).astype(np.int16), _qp(0.002, "int16"))
    for g in gates:
        b_qp = _qp(np.float32(s_x) * np.float32(w_scale[g]), "int32")
        const(f"{g}_bias", np.rint(rng.uniform(-0.5, 0.5, N_CELL) / float(b_qp.scale[0])).astype(np.int32), b_qp)
    if projection:
        const("projection", rng.integers(-127, 128, (n_out, N_CELL)).astype(np.int8), _qp(0.02, "int8"))
        b_qp = _qp(np.float32(s_h) * np.float32(0.02), "int32")
        const("projection_bias", rng.integers(-200, 200, n_out).astype(np.int32), b_qp)
    # TFLite's input order (mrq.tflite_import_recurrent.LSTM_ROLES)
    from mrq.tflite_import_recurrent import LSTM_ROLES
    order = sorted(range(len(roles)), key=lambda k: LSTM_ROLES.index(roles[k]))
    roles, names = [roles[k] for k in order], [names[k] for k in order]
    tensors["y"] = Tensor("y", (None, T, n_out), "int8", _qp(s_h, "int8"))
    tensors["h_state"] = Tensor("h_state", (None, n_out), "int8", _qp(s_h, "int8"))
    tensors["c_state"] = Tensor("c_state", (None, N_CELL), "int16", _qp(2.0 ** -11, "int16"))
    node = Node("LSTM", "lstm", ["x"] + names, ["y", "h_state", "c_state"],
                {"roles": tuple(roles), "cell_clip": cell_clip, "proj_clip": 0.0, "hidden_scale": s_h,
                 "hidden_zero_point": 0, "time_major": False})
    return Graph(tensors, [node], ["x"], ["y"], name="tiny_lstm")


def _tiny_svdf(seed=0, rank=2) -> Graph:
    """x int8 [N, 5] -> SVDF (4 filters of memory 3, rank 2: 2 units) -> y int8 [N, 2]."""
    rng = np.random.default_rng(seed)
    n_filter, n_mem, n_in = 4, 3, 5
    s_x, s_f, s_state, s_t = 0.05, 0.01, 0.002, 0.001
    tensors = {
        "x": Tensor("x", (None, n_in), "int8", _qp(s_x, "int8", -2)),
        "wf": Tensor("wf", (n_filter, n_in), "int8", _qp(s_f, "int8"),
                     rng.integers(-127, 128, (n_filter, n_in)).astype(np.int8)),
        "wt": Tensor("wt", (n_filter, n_mem), "int16", _qp(s_t, "int16"),
                     rng.integers(-2000, 2000, (n_filter, n_mem)).astype(np.int16)),
        "b": Tensor("b", (n_filter // rank,), "int32", _qp(np.float32(s_state) * np.float32(s_t), "int32"),
                    rng.integers(-50000, 50000, n_filter // rank).astype(np.int32)),
        "y": Tensor("y", (None, n_filter // rank), "int8", _qp(0.04, "int8", -128)),
        "state": Tensor("state", (None, n_filter * n_mem), "int16", _qp(s_state, "int16")),
    }
    node = Node("Svdf", "svdf", ["x", "wf", "wt", "b"], ["y", "state"], {"rank": rank})
    return Graph(tensors, [node], ["x"], ["y"], name="tiny_svdf")


def _codes(graph, n, seed):
    rng = np.random.default_rng(seed)
    t = graph.tensors[graph.inputs[0]]
    shape = (n,) + tuple(t.shape[1:])
    return {graph.inputs[0]: np.clip(np.rint(rng.normal(0, 30, shape)), -128, 127).astype(np.int8)}


def _profile(*extra):
    from mrq.api import resolve_profile
    return SimpleNamespace(supported_ops=tuple(resolve_profile("nna-sym8").supported_ops) + extra)


LSTM_VARIANTS = {"plain": {}, "clip": {"cell_clip": 0.5},
                 "cifg_peephole_projection": {"cifg": True, "peephole": True, "projection": True}}


@pytest.mark.parametrize("tanh", (False, True), ids=("sigmoid_tanh", "tanh_op"))
@pytest.mark.parametrize("variant", LSTM_VARIANTS)
def test_unrolled_lstm_is_the_float_lstm(variant, tanh):
    from mrq.passes.unroll_recurrent import unroll_graph
    graph = _tiny_lstm(**LSTM_VARIANTS[variant])
    unrolled, names = unroll_graph(graph, _profile(*(("Tanh",) if tanh else ())))
    assert names == ["lstm"]
    ops = {n.op for n in unrolled.nodes}
    assert "LSTM" not in ops and ("Tanh" in ops) == tanh
    feeds = _codes(graph, 16, seed=1)
    want = FloatReference(graph).run(feeds)["y"]
    got = FloatReference(unrolled).run(feeds)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got["y"], want, rtol=0, atol=1e-9)
    # every step's state is a tensor; the last one is the node's state outputs
    assert {f"lstm_t{t}_c" for t in range(T - 1)} <= set(got) and {"h_state", "c_state"} <= set(got)
    np.testing.assert_allclose(got["h_state"], want[:, -1], rtol=0, atol=1e-9)


def test_unrolled_svdf_is_the_float_svdf():
    from mrq.passes.unroll_recurrent import unroll_graph
    graph = _tiny_svdf()
    unrolled, _ = unroll_graph(graph, _profile())
    feeds = _codes(graph, 32, seed=1)
    want = FloatReference(graph).run(feeds)["y"]
    got = FloatReference(unrolled).run(feeds)
    assert np.count_nonzero(want) > 8
    np.testing.assert_allclose(got["y"], want, rtol=0, atol=1e-9)
    # the state buffer: each filter's newest slot holds its feature value, the older ones 0
    state = got["state"].reshape(32, 4, 3)
    assert not state[:, :, :2].any() and state[:, :, 2].any()


def _requant_check_sqnr(graph, tmp_path, profile="nna-sym8", calibrate=True):
    """Re-quantize, write the ONNX QDQ, read it back and check it as ``mrq check`` does; return
    (output SQNR of the written model on held-out inputs vs the recurrent op's float reference,
    the simulator's trace)."""
    import onnx

    from mrq.api import simulate
    from mrq.commands.check import check_model
    from mrq.metrics import sqnr_db
    from mrq.onnx_export import export_onnx
    from mrq.onnx_import import load_model
    from mrq.passes.base import feeds_for_new_graph
    from mrq.requant import requantize
    new, report = requantize(graph, profile, _codes(graph, 64, seed=3) if calibrate else None)
    assert "unroll_recurrent" in report.passes_run
    onnx.save(export_onnx(new), tmp_path / "m.onnx")
    written = load_model(str(tmp_path / "m.onnx"))
    violations, _, _ = check_model(written, profile)
    assert violations == []
    feeds = _codes(graph, 32, seed=4)
    y = graph.outputs[0]
    ref = FloatReference(graph).run(feeds)[y]
    sim = simulate(written, profile, feeds_for_new_graph(graph, written, feeds), fidelity=False, trace=True)
    got = written.tensors[y].qparams.dequantize(sim.outputs[y])
    return float(sqnr_db(ref, got.reshape(ref.shape))), sim.trace


@pytest.mark.parametrize("variant", ("plain", "cifg_peephole_projection"))
def test_tiny_lstm_requantizes_to_nna_sym8_and_passes_check(tmp_path, variant):
    sqnr, trace = _requant_check_sqnr(_tiny_lstm(**LSTM_VARIANTS[variant]), tmp_path)
    # 8-bit gates, cell and hidden state through 3 steps (measured 25.0 / 24.2 dB; LiteRT's
    # 16-bit kernel: 35.8 / 32.2 dB)
    assert sqnr > 20, sqnr
    steps = [f"lstm_t{t}_{s}" for t in range(T - 1) for s in ("c", "h")]
    assert set(steps) <= set(trace), sorted(trace)[:20]
    assert {"h_state", "c_state"} <= set(trace)


def test_data_free_unrolling_keeps_litert_grids_and_passes_check(tmp_path):
    """Without calibration data the new tensors keep the kernel's own grids (gates Q3.12, the
    cell state's 2**-11: wide for this model's values, so the SQNR is low but the model valid)."""
    from mrq.api import resolve_profile
    from mrq.passes.unroll_recurrent import unroll_graph
    unrolled, _ = unroll_graph(_tiny_lstm(), resolve_profile("nna-sym8"))
    assert float(unrolled.tensors["lstm_t0_forget_x"].qparams.scale[0]) == 2.0 ** -12
    assert float(unrolled.tensors["lstm_t0_c"].qparams.scale[0]) == 2.0 ** -11
    sqnr, _ = _requant_check_sqnr(_tiny_lstm(), tmp_path, calibrate=False)
    assert sqnr > 10, sqnr     # 15.4 dB measured (25.0 with calibration data)


def test_tiny_svdf_requantizes_to_nna_sym8_and_passes_check(tmp_path):
    sqnr, trace = _requant_check_sqnr(_tiny_svdf(), tmp_path)
    assert sqnr > 28, sqnr     # 35.3 dB measured
    # the state buffer (written to ONNX, its final Reshape reads back under another name): the
    # newest slot of each filter, the older ones the reset state's zeros
    memory = trace["svdf_memory"]
    assert memory.shape == (32, 4, 3) and not memory[:, :, :2].any() and memory[:, :, 2].any()


def test_malformed_lstm_is_still_a_one_line_error(tmp_path):
    from cli_in_process import mrq_in_process as mrq
    from test_tflite_lstm import _lstm_model
    path = tmp_path / "bad.tflite"
    path.write_bytes(_lstm_model(18))
    r = mrq("requant", path, "--profile", "nna-sym8", "-o", tmp_path / "out.onnx")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "operator 0 (UNIDIRECTIONAL_SEQUENCE_LSTM): 18 inputs" in lines[0], r.stderr
