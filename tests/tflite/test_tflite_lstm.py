"""LiteRT's integer recurrent kernels: UNIDIRECTIONAL_SEQUENCE_LSTM (``lstm_int8x8_16``) and SVDF
(``svdf_int8``). The kernels against the line-by-line Python references of tests/reference/
lstm_ref.py on random and extreme parameters; the zoo's LSTM and SVDF models against LiteRT
(both resolvers) in every tensor, the final recurrent states included."""
from __future__ import annotations

import math
import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tflite_helpers import compare_rows, litert, litert_run

from simulator.errors import ProgramError
from simulator.kernels import recurrent as rk
from simulator.steps import execute_step, make_step
from tests.reference import lstm_ref as ref

ZOO = os.environ.get("MRQ_TFLITE_ZOO", "/work/shared/models/tflite_zoo")
EDGES = (-32768, -32767, -16385, -16384, -4097, -4096, -2048, -1, 0, 1, 2047, 2048, 4095, 4096,
         16383, 16384, 32766, 32767)


def _codes(seed: int, n: int = 600) -> list:
    rng = np.random.default_rng(seed)
    return list(EDGES) + [int(v) for v in rng.integers(-32768, 32768, n)]


@pytest.mark.parametrize("integer_bits", (0, 3, 4, 6))
def test_fixed_point_tanh_matches_reference_and_tanh(integer_bits):
    for a in _codes(integer_bits):
        got = int(rk.tanh16(a, integer_bits))
        assert got == ref.tanh16(a, integer_bits), (a, integer_bits)
        # and it is tanh: a wrong constant in both would not pass this
        real = math.tanh(a / 2.0 ** (15 - integer_bits))
        assert abs(got / 32768.0 - real) < 2e-3, (a, got, real)


def test_fixed_point_logistic_matches_reference_and_sigmoid():
    for a in _codes(7):
        got = int(rk.logistic16(a, 3))
        assert got == ref.logistic16(a, 3), a
        real = 1.0 / (1.0 + math.exp(-a / 4096.0))
        assert abs(got / 32768.0 - real) < 2e-3, (a, got, real)
    # logistic(0) is exactly one half; logistic(+-8) = 0.99966 / 0.00034, in Q0.15 codes
    assert rk.logistic16(0, 3) == 16384
    assert (rk.logistic16(32767, 3), rk.logistic16(-32767, 3)) == (32756, 11)


def _lstm_params(rng, n_in, n_cell, n_out, *, cifg=False, peephole=False, projection=False,
                 extreme=False):
    def w(*shape):
        if extreme:
            return rng.choice(np.array([-128, 127], np.int8), size=shape)
        return rng.integers(-128, 128, size=shape).astype(np.int8)

    big = 2 ** 30 if extreme else 2 ** 14
    p = {"w_x": w(4, n_cell, n_in), "w_h": w(4, n_cell, n_out),
             "b_x": rng.integers(-big, big, size=(4, n_cell)).astype(np.int32),
             "b_h": rng.integers(-big, big, size=(4, n_cell)).astype(np.int32),
             "m_x": tuple(int(v) for v in rng.integers(2 ** 30, 2 ** 31 - 1, 4)),
             "e_x": tuple(int(v) for v in rng.integers(-8, 6 if extreme else 2, 4)),
             "m_h": tuple(int(v) for v in rng.integers(2 ** 30, 2 ** 31 - 1, 4)),
             "e_h": tuple(int(v) for v in rng.integers(-8, 2, 4)),
             "use_cifg": cifg, "cell_scale": int(rng.integers(-15, -8)),
             "m_hidden": int(rng.integers(2 ** 30, 2 ** 31 - 1)), "e_hidden": int(rng.integers(-22, -14)),
             "hidden_zero_point": int(rng.integers(-5, 5)), "output_zero_point": int(rng.integers(-5, 5)),
             "h0": rng.integers(-128, 128, n_out).astype(np.int8),
             "c0": rng.integers(-32768, 32768, n_cell).astype(np.int16),
             "cell_clip": int(rng.choice([0, 3000]))}
    if peephole:
        p.update(peephole=rng.integers(-32768, 32768, (3, n_cell)).astype(np.int16),
                 m_peephole=tuple(int(v) for v in rng.integers(2 ** 30, 2 ** 31 - 1, 3)),
                 e_peephole=tuple(int(v) for v in rng.integers(-14, -4, 3)))
    if projection:
        p.update(w_proj=w(n_out, n_cell), b_proj=rng.integers(-big, big, n_out).astype(np.int32),
                 m_proj=int(rng.integers(2 ** 30, 2 ** 31 - 1)), e_proj=int(rng.integers(-10, 0)),
                 proj_clip=int(rng.choice([0, 90])))
    return p


@pytest.mark.parametrize("variant", [
    {}, {"cifg": True}, {"peephole": True}, {"projection": True},
    {"cifg": True, "peephole": True, "projection": True}, {"extreme": True},
    {"extreme": True, "projection": True, "peephole": True}])
def test_lstm_kernel_matches_reference(variant):
    rng = np.random.default_rng(len(str(variant)))
    n_in, n_cell = 5, 4
    n_out = 3 if variant.get("projection") else n_cell
    p = _lstm_params(rng, n_in, n_cell, n_out, **variant)
    x = rng.integers(-128, 128, size=(3, 4, n_in)).astype(np.int8)
    x[0] = 127 if variant.get("extreme") else x[0]
    step = make_step("lstm_int8x8_16", "lstm", ("x",), ("y", "h", "c"), **p)
    (y, h, c), _ = execute_step(step, x)
    y_ref, h_ref, c_ref = ref.lstm_ref(x, p)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(c, c_ref)
    assert y.dtype == np.int8 and c.dtype == np.int16


def test_lstm_params_are_checked():
    rng = np.random.default_rng(0)
    p = _lstm_params(rng, 5, 4, 4)
    with pytest.raises(ProgramError, match="cell_scale must lie in"):
        make_step("lstm_int8x8_16", "l", ("x",), ("y", "h", "c"), **dict(p, cell_scale=-8))
    with pytest.raises(ProgramError, match="without a projection n_output must equal n_cell"):
        make_step("lstm_int8x8_16", "l", ("x",), ("y", "h", "c"),
                  **dict(p, w_h=np.zeros((4, 4, 3), np.int8), h0=np.zeros(3, np.int8)))


@pytest.mark.parametrize("extreme", (False, True))
def test_svdf_kernel_matches_reference(extreme):
    rng = np.random.default_rng(int(extreme))
    n_in, rank, units, mem = 6, 2, 3, 5
    wf = (rng.choice(np.array([-128, 127], np.int8), (units * rank, n_in)) if extreme
          else rng.integers(-128, 128, (units * rank, n_in)).astype(np.int8))
    wt = (rng.choice(np.array([-32768, 32767], np.int16), (units * rank, mem)) if extreme
          else rng.integers(-32768, 32768, (units * rank, mem)).astype(np.int16))
    p = {"w_feature": wf, "w_time": wt, "bias": rng.integers(-2 ** 20, 2 ** 20, units).astype(np.int32),
             "rank": rank, "m1": int(rng.integers(2 ** 30, 2 ** 31 - 1)), "e1": int(rng.integers(-8, 4)),
             "m2": int(rng.integers(2 ** 30, 2 ** 31 - 1)), "e2": int(rng.integers(-20, -10)),
             "input_zero_point": -3, "output_zero_point": 5,
             "state0": rng.integers(-32768, 32768, units * rank * mem).astype(np.int16)}
    x = rng.integers(-128, 128, (4, n_in)).astype(np.int8)
    x[0] = -128
    step = make_step("svdf_int8", "s", ("x",), ("y", "state"), **p)
    (y, state), _ = execute_step(step, x)
    y_ref, state_ref = ref.svdf_ref(x, p)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(state, state_ref)


# ------------------------------------------------------------------------------------- LiteRT
ZOO_CASES = (("tfmicro/mnist_lstm_int8.tflite", None),        # LSTM: 28 steps of 28 -> 20 cells
             ("tfmicro/keyword_scrambled.tflite", None))      # 7 SVDFs, SOFTMAX int8 -> int16


@pytest.mark.skipif(not os.path.isdir(ZOO), reason=f"no model zoo at {ZOO}")
@pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")
@pytest.mark.parametrize("profile", ("tflite-int8", "litert-default"))
@pytest.mark.parametrize("model,stop", ZOO_CASES)
def test_zoo_recurrent_model_is_bit_exact(model, stop, profile):
    import tflite_zoo_parity as zoo

    from mrq.tflite_import import import_tflite
    path = os.path.join(ZOO, model)
    graph = import_tflite(path, stop_before=stop)
    feeds = zoo.make_inputs(graph, 2)
    trace = zoo.simulate(graph, profile, feeds)
    rows = litert_run(path, feeds, profile, preserve_all=True)
    counts = compare_rows({k: v for k, v in trace.items() if np.ndim(v) and len(v) == 2}, rows)
    states = [n for node in graph.nodes if node.op in ("LSTM", "Svdf") for n in node.outputs[1:]]
    assert states and set(states) <= set(counts), "the recurrent states were not compared"
    assert set(graph.outputs) <= set(counts)
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"
    if model.startswith("tfmicro/mnist_lstm") and profile == "tflite-int8":
        # the float semantics (mrq.float_ref_recurrent) are what the integer kernel approximates
        from mrq.float_ref import FloatReference
        node = next(n for n in graph.nodes if n.op == "LSTM")
        env = FloatReference(graph).run(feeds)
        y_qp = graph.tensors[node.outputs[0]].qparams
        sim = y_qp.dequantize(trace[node.outputs[0]])
        ref_y = env[node.outputs[0]]
        sqnr = 10 * np.log10(np.sum(ref_y ** 2) / np.sum((ref_y - sim) ** 2))
        assert sqnr > 30, sqnr


# ------------------------------------------------------------------------------------- errors
def _lstm_model(n_inputs: int) -> bytes:
    from tflite_builder import ModelBuilder
    b = ModelBuilder()
    x = b.tensor("x", [1, 3, 4], "int8", scale=0.05, zero_point=0)
    consts = [b.tensor(f"w{i}", [2, 4], "int8", scale=0.01, zero_point=0,
                       data=np.ones((2, 4), np.int8)) for i in range(n_inputs - 1)]
    y = b.tensor("y", [1, 3, 2], "int8", scale=0.05, zero_point=0)
    b.op("UNIDIRECTIONAL_SEQUENCE_LSTM", [x] + consts, [y])
    return b.finish(inputs=[x], outputs=[y])


def test_malformed_lstm_is_a_one_line_model_error():
    from mrq.errors import ModelError
    from mrq.tflite_import import import_tflite_bytes
    with pytest.raises(ModelError, match=r"^operator 0 \(UNIDIRECTIONAL_SEQUENCE_LSTM\): 18 inputs; "
                                         r"an LSTM has 20 or 24") as info:
        import_tflite_bytes(_lstm_model(18))
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not os.path.isdir(ZOO), reason=f"no model zoo at {ZOO}")
def test_int8_state_svdf_is_refused_with_the_reason():
    # tflite-micro's 8-bit SVDF: LiteRT's kernel reads its int8 time weights and state as int16
    from mrq.errors import UnsupportedOpError
    from mrq.tflite_import import import_tflite
    with pytest.raises(UnsupportedOpError, match=r"operator 1.*SVDF|SVDF.*operator 1") as info:
        import_tflite(os.path.join(ZOO, "tfmicro/keyword_scrambled_8bit.tflite"))
    assert "reads both as int16" in str(info.value)


def _lstm_variant(path: str, slots: dict) -> bytes:
    """The model with some of its LSTM's input slots re-pointed (-1: absent), patched in place
    in the flatbuffer's int32 operator-input vector."""
    import struct

    import tflite
    with open(path, "rb") as f:
        data = bytearray(f.read())
    op = tflite.Model.GetRootAsModel(bytes(data), 0).Subgraphs(0).Operators(0)
    start = op._tab.Vector(op._tab.Offset(6))          # Operator.inputs (field 1)
    for slot, value in slots.items():
        struct.pack_into("<i", data, start + 4 * slot, value)
    return bytes(data)


@pytest.mark.skipif(not os.path.isdir(ZOO), reason=f"no model zoo at {ZOO}")
@pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")
@pytest.mark.parametrize("profile", ("tflite-int8", "litert-default"))
def test_cifg_lstm_with_projection_is_bit_exact(profile):
    # mnist_lstm_int8 turned into a CIFG LSTM (no input gate) with a projection (its
    # recurrent_to_cell weights) and a projection bias (its forget bias): LiteRT runs it as such
    import tflite
    import tflite_zoo_parity as zoo

    from mrq.tflite_import import import_tflite_bytes
    path = os.path.join(ZOO, "tfmicro/mnist_lstm_int8.tflite")
    with open(path, "rb") as f:
        ins = tflite.Model.GetRootAsModel(f.read(), 0).Subgraphs(0).Operators(0).InputsAsNumpy()
    model = _lstm_variant(path, {1: -1, 5: -1, 12: -1, 16: int(ins[7]), 17: int(ins[13])})
    graph = import_tflite_bytes(model)
    node = next(n for n in graph.nodes if n.op == "LSTM")
    assert "projection" in node.attrs["roles"] and "input_to_input" not in node.attrs["roles"]
    feeds = zoo.make_inputs(graph, 2)
    trace = zoo.simulate(graph, profile, feeds)
    counts = compare_rows({k: v for k, v in trace.items() if np.ndim(v) and len(v) == 2},
                          litert_run(model, feeds, profile))
    assert set(node.outputs) <= set(counts)
    assert not any(v[0] for v in counts.values()), counts
