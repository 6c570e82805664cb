"""Accumulator-aware re-quantization (pass accumulator_budget, profile field
accumulator.guarantee): the partial-sum model against the simulator, the L1 budget inside the
sequential rounding, the overflow-free guarantee on random layers, the end-to-end bound on the
committed demo model, and the one-line refusal of an accumulator narrower than one product."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import yaml
from cli_in_process import mrq_in_process
from onnx import TensorProto, helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mrq.accumulators import bound_from_sums, weight_sums
from mrq.passes.accumulator_budget import saturating_sums
from mrq.passes.weight_correction import gptq_round


def _profile(tmp_path, name="acc", bits=16, overflow="saturate", guarantee="proof", act_bits=None):
    data = yaml.safe_load((ROOT / "hw_profiles" / "nna-sym8-acc16.yaml").read_text())
    data["name"] = name
    data["accumulator"].update(bits=bits, overflow=overflow, guarantee=guarantee)
    data["bias"]["bits"] = bits
    if act_bits is not None:
        data["activations"]["bits"] = act_bits
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


# --------------------------------------------------------------------------------------------
# The pass's saturating accumulation is the simulator's, bit for bit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saturating_sums_equal_the_simulator(seed):
    from simulator.kernels.conv import conv2d_acc
    rng = np.random.default_rng(seed)
    n, c, h, w, m, kh, kw = 2, 5, 6, 7, 4, 3, 2
    # extreme inputs (every code at a limit) in one sample, random in the other; weights large
    x = rng.integers(-128, 128, (n, c, h, w)).astype(np.int8)
    x[0] = rng.choice(np.array([-128, 127], np.int8), (c, h, w))
    wts = rng.integers(-127, 128, (m, c, kh, kw)).astype(np.int8)
    bias = rng.integers(-30000, 30000, m)
    pads, stride = (1, 0, 1, 1), 2
    acc, n_ovf = conv2d_acc(x, wts, bias=bias, strides=(stride, stride), pads=pads, acc_bits=16,
                            acc_overflow="saturate")
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh, ow = acc.shape[2:]
    rows, chans, want = [], [], []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = xp[b, :, i * stride:i * stride + kh, j * stride:j * stride + kw].reshape(-1)
                for ch in range(m):
                    rows.append(patch)
                    chans.append(ch)
                    want.append(acc[b, ch, i, j])
    chans = np.array(chans)
    got, left = saturating_sums(np.array(rows), wts.reshape(m, -1)[chans].astype(np.int64), bias[chans],
                                -2 ** 15, 2 ** 15 - 1)
    np.testing.assert_array_equal(got, np.array(want))
    assert int(left.sum()) == n_ovf > 0


# --------------------------------------------------------------------------------------------
# The L1 budget inside sequential rounding
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_range", [(0, 127), (-128, 127), (-100, 0)])
def test_gptq_round_keeps_the_budget(x_range):
    rng = np.random.default_rng(3)
    g, m, k = 2, 6, 40
    target = rng.standard_normal((g, m, k))
    a = rng.standard_normal((g, 200, k))
    hessian = np.einsum("grk,grl->gkl", a, a) / 200
    scale = np.full((g, m), 0.02)
    zp = np.zeros((g, m), np.int64)
    bias = rng.integers(-3000, 3000, (g, m))
    free = gptq_round(target, hessian, scale, zp, -127, 127)
    lo_free, hi_free = bound_from_sums(*weight_sums(free.reshape(g * m, k)), bias.reshape(-1), *x_range)
    acc_lo, acc_hi = np.full((g, m), -2 ** 15), np.full((g, m), 2 ** 15 - 1)
    assert (hi_free > 2 ** 15 - 1).any() or (lo_free < -2 ** 15).any()   # the budget binds
    codes = gptq_round(target, hessian, scale, zp, -127, 127, (*x_range, bias, acc_lo, acc_hi))
    lo, hi = bound_from_sums(*weight_sums(codes.reshape(g * m, k)), bias.reshape(-1), *x_range)
    assert (lo >= -2 ** 15).all() and (hi <= 2 ** 15 - 1).all()
    assert np.abs(codes).max() <= 127


# --------------------------------------------------------------------------------------------
# Property: random layers and calibration data, proof profiles never overflow
# --------------------------------------------------------------------------------------------
def _random_model(tmp_path, seed):
    """A random quantized CNN: 1-2 convs (dense, grouped or depthwise, with or without ReLU),
    a global pool or a flatten, and a gemm; ORT quantize_static (uint8 activations)."""
    from tests.parity import zoo
    rng = np.random.default_rng(seed)
    b = zoo._Builder(rng)
    c = int(rng.integers(3, 9))
    x = zoo.FM(zoo.INPUT_NAME, c, 10, 10)
    for _ in range(int(rng.integers(1, 3))):
        x = b.conv(x, cout=int(rng.integers(8, 24)))
    outs = b.head(x)
    graph = helper.make_graph(b.nodes, f"acc_{seed}",
                              [helper.make_tensor_value_info(zoo.INPUT_NAME, TensorProto.FLOAT, ["N", c, 10, 10])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outs[:1]],
                              initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", zoo.OPSET)])
    model.ir_version = 8
    path = tmp_path / f"m{seed}.onnx"
    batches = zoo.calibration_batches((c, 10, 10), 2.0, seed)
    zoo.quantize(model, path, zoo.QuantConfig("QDQ", "QUInt8", "QInt8", bool(seed % 2), False, True), batches)
    return str(path), np.concatenate(batches)


@pytest.mark.parametrize("seed,bits,overflow", [(1, 16, "saturate"), (2, 16, "wrap"), (3, 17, "error"),
                                                (4, 16, "saturate")])
def test_proof_never_overflows(tmp_path, seed, bits, overflow):
    from mrq.api import simulate
    from mrq.commands.check import check_model
    from mrq.onnx_import import load_model
    from mrq.requant import requantize
    path, calib = _random_model(tmp_path, seed)
    graph = load_model(path)
    profile = _profile(tmp_path, bits=bits, overflow=overflow)
    naive_lines = [line for line in check_model(graph, profile)[0] if "accumulator can overflow" in line]
    new, report = requantize(graph, profile, {graph.inputs[0]: calib})
    assert report.accumulators, "no layer needed the budget: the case proves nothing"
    assert naive_lines or any(r["bits_before"] > bits for r in report.accumulators.values())
    lines, rows, _ = check_model(new, profile)
    assert not [line for line in lines if "accumulator" in line], lines
    assert all(r.safe_bits <= bits for r in rows)
    # inputs spanning the calibration range, its extremes included, in the bit-exact simulator
    rng = np.random.default_rng(seed)
    lo, hi = float(calib.min()), float(calib.max())
    probe = np.concatenate([calib, rng.uniform(lo, hi, (8, *calib.shape[1:])),
                            rng.choice([lo, hi], (8, *calib.shape[1:]))]).astype(np.float32)
    sim = simulate(new, profile, {graph.inputs[0]: probe}, fidelity=False)
    assert sum(int(s.get("acc_overflow", 0)) for s in sim.stats.values()) == 0


def test_measured_guarantee_is_listed_not_counted(tmp_path):
    from mrq.commands.check import check_model
    from mrq.onnx_import import load_model
    from mrq.requant import requantize
    path, calib = _random_model(tmp_path, 5)
    graph = load_model(path)
    proof, measured = _profile(tmp_path, "p"), _profile(tmp_path, "m", guarantee="measured")
    new, report = requantize(graph, measured, {graph.inputs[0]: calib})
    rows = [r for r in report.accumulators.values() if "guarantee" in r]
    assert rows and all(r["guarantee"] == "measured" and r["sampled"] > 0 for r in rows)
    # never worse than the unchanged scale on the sampled rows it scored
    assert all(r["sqnr_after_db"] >= r["sqnr_before_db"] - 1e-9 for r in rows)
    m_lines, m_rows, _ = check_model(new, measured)
    p_lines, _, _ = check_model(new, proof)
    assert not [line for line in m_lines if "accumulator" in line]
    if any(r.can_overflow for r in m_rows):
        assert [line for line in p_lines if "accumulator can overflow" in line]


# --------------------------------------------------------------------------------------------
# End to end on the committed demo model
# --------------------------------------------------------------------------------------------
def test_demo_model_at_16_bits(tmp_path):
    from mrq.api import simulate
    from mrq.commands.check import check_model
    from mrq.demo import DEMO_MODEL, demo_inputs
    from mrq.metrics import sqnr_db
    from mrq.onnx_import import load_model
    from mrq.passes.base import Options
    from mrq.requant import requantize
    graph = load_model(DEMO_MODEL)
    calib = demo_inputs(32, seed=1)
    test = demo_inputs(32, seed=2)
    ref = simulate(graph, "onnxruntime-cpu", test, fidelity=False)
    out = graph.outputs[0]
    scores = {}
    for name, options in (("full", Options()), ("without", Options(disabled=frozenset({"accumulator_budget"})))):
        new, _ = requantize(graph, "nna-sym8-acc16", calib, options)
        sim = simulate(new, "nna-sym8-acc16", test, fidelity=False)
        got, want = (np.asarray(r.outputs[out], np.float64) if g.tensors[out].qparams is None
                     else g.tensors[out].qparams.dequantize(r.outputs[out]) for g, r in ((new, sim), (graph, ref)))
        scores[name] = (sqnr_db(want, got), sum(int(s.get("acc_overflow", 0)) for s in sim.stats.values()),
                        check_model(new, "nna-sym8-acc16")[0])
    sqnr, overflow, lines = scores["full"]
    assert overflow == 0 and not lines, lines
    assert sqnr >= 24.0 and sqnr > scores["without"][0] + 10, scores   # measured 28.3 dB vs 13.2 dB
    assert scores["without"][1] > 0      # without the pass the 16-bit accumulator saturates


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
def test_accumulator_narrower_than_one_product_is_refused(tmp_path):
    from mrq.demo import DEMO_MODEL
    bad = _profile(tmp_path, "narrow", bits=16, act_bits=16)
    r = mrq_in_process("requant", DEMO_MODEL, "--profile", bad, "-o", str(tmp_path / "out.onnx"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "accumulator.bits" in lines[0] and "one product" in lines[0], r.stderr
    assert "need 23 bits" in lines[0]   # 2**15 * 127: a 23-bit product
    assert not (tmp_path / "out.onnx").exists()
