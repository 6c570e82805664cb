"""mrq sim vs ONNX Runtime (1 thread) on the ORT-quantized MobileNetV2-style model, batch 1 and
256, plus GMAC/s of the integer conv kernel per requantization mode. Not part of the test suite:

    python -m pytest bench/bench_sim_vs_ort.py --benchmark-json=/tmp/bench.json -q
    python bench/ratios.py /tmp/bench.json          # mrq / ORT ratio per group, same run
"""
import os

import numpy as np
import pytest

from mrq.api import bind_inputs, prepare
from simulator.program import Program, Step, TensorSpec
from simulator.run import run

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "models", "fmnist_mnv2_ort_qdq.onnx")
DATA = os.path.join(HERE, "..", "tests", "data", "fmnist_test_1000.npz")


def _images(batch):
    with np.load(DATA) as d:
        return {"input": d["images"][:batch].astype(np.float32) / 255.0}


@pytest.mark.parametrize("batch", [1, 256])
def test_model_mrq(benchmark, batch):
    benchmark.group = f"mobilenetv2-ort-quantized batch {batch}"
    program, bound = bind_inputs(prepare(MODEL, "onnxruntime-cpu"), _images(batch))
    run(program, bound, threads=1)
    benchmark(run, program, bound, threads=1)


@pytest.mark.parametrize("batch", [1, 256])
def test_model_ort(benchmark, batch):
    ort = pytest.importorskip("onnxruntime")
    benchmark.group = f"mobilenetv2-ort-quantized batch {batch}"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    sess = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
    feeds = _images(batch)
    sess.run(None, feeds)
    benchmark(sess.run, None, feeds)


KERNELS = {  # name: (C_in, M, K, group, H)
    "conv3x3": (32, 32, 3, 1, 28), "depthwise3x3": (96, 96, 3, 96, 28), "conv1x1": (96, 96, 1, 1, 28),
}
RQ = {
    "fp32": dict(rq_mode="fp32", rq_multiplier=np.full(1, 0.0123, np.float32), rq_rounding="half_even"),
    "fixed16": dict(rq_mode="fixed", rq_multiplier=np.full(1, 51539, np.int64), rq_shift=np.full(1, 22, np.int64), rq_rounding="half_up"),
    "double_q31": dict(rq_mode="double_q31", rq_multiplier=np.full(1, 1717986918, np.int64), rq_shift=np.full(1, 37, np.int64), rq_rounding="half_away"),
    "shift": dict(rq_mode="shift", rq_multiplier=np.ones(1, np.int64), rq_shift=np.full(1, 9, np.int64), rq_rounding="half_up"),
}


@pytest.mark.parametrize("rq", list(RQ))
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_gmacs(benchmark, kernel, rq):
    c, m, k, group, h = KERNELS[kernel]
    rng = np.random.default_rng(0)
    batch = 16
    x = rng.integers(-128, 128, (batch, c, h, h)).astype(np.int8)
    w = rng.integers(-127, 128, (m, c // group, k, k)).astype(np.int8)
    params = dict(weight=w, weight_zero_point=np.zeros(m, np.int64), bias=rng.integers(-1000, 1000, m).astype(np.int64),
                  input_zero_point=0, strides=(1, 1), pads=(k // 2,) * 4, dilations=(1, 1), group=group, layout="NCHW",
                  acc_bits=32, acc_overflow="wrap", rq_shift=np.zeros(1, np.int64), out_zero_point=0, out_min=-128,
                  out_max=127, out_dtype="int8", channel_axis=1)
    params.update(RQ[rq])
    program = Program((TensorSpec("x", "int8", (None, c, h, h)),), (TensorSpec("y", "int8", (None, m, h, h)),),
                      (Step("conv", kernel, ("x",), ("y",), params),))
    run(program, {"x": x}, threads=1)
    benchmark.group = f"kernel {kernel}"
    benchmark.extra_info["macs"] = batch * m * h * h * (c // group) * k * k
    benchmark(run, program, {"x": x}, threads=1)
