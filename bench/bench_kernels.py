"""Per-kernel throughput (GMAC/s) of the simulator's integer conv / depthwise / 1x1 / gemm kernels
for each requantization arithmetic the profiles use, against ONNX Runtime's QLinearConv /
QLinearMatMul (1 thread) and a plain numpy int64 reference, measured in the same run:

    python -m pytest bench/bench_kernels.py --benchmark-json=/tmp/kernels.json -q
    python bench/ratios.py /tmp/kernels.json

``acc20_saturate`` is a 20-bit saturating accumulator whose partial sums can overflow on these
random inputs: the static bound cannot prove them safe, so the simulator takes its exact
sequential path (every addition checked), which is measured here too.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper

from simulator.program import Program, Step, TensorSpec
from simulator.run import run

BATCH = 16
KERNELS = {  # name: (C_in, M, K, group, H); gemm: (K, N, -, -, rows)
    "conv3x3": (32, 32, 3, 1, 28),
    "depthwise3x3": (96, 96, 3, 96, 28),
    "conv1x1": (96, 96, 1, 1, 28),
    "gemm": (256, 256, 0, 0, 4096),
}
# the same convs in NHWC (the layout the simulator runs integer models in): dense ones take the
# AMX tile kernel on hosts with AMX-INT8; simulator only (ORT's QLinearConv is NCHW)
NHWC = {"conv3x3_nhwc": "conv3x3", "conv1x1_nhwc": "conv1x1", "depthwise3x3_nhwc": "depthwise3x3"}
RQ = {
    "fp32": dict(rq_mode="fp32", rq_multiplier=np.full(1, 0.0123, np.float32),
                 rq_rounding="half_even"),
    "fixed16": dict(rq_mode="fixed", rq_multiplier=np.full(1, 51539, np.int64),
                    rq_shift=np.full(1, 22, np.int64), rq_rounding="half_up"),
    "double_q31": dict(rq_mode="double_q31", rq_multiplier=np.full(1, 1717986918, np.int64),
                       rq_shift=np.full(1, 37, np.int64), rq_rounding="half_away"),
    "shift": dict(rq_mode="shift", rq_multiplier=np.ones(1, np.int64),
                  rq_shift=np.full(1, 9, np.int64), rq_rounding="half_up"),
    "acc20_saturate": dict(rq_mode="shift", rq_multiplier=np.ones(1, np.int64),
                           rq_shift=np.full(1, 9, np.int64), rq_rounding="half_up",
                           acc_bits=20, acc_overflow="saturate"),
}


def _operands(kernel):
    c, m, k, group, h = KERNELS[kernel]
    rng = np.random.default_rng(0)
    if kernel == "gemm":
        x = rng.integers(-128, 128, (h, c)).astype(np.int8)
        w = rng.integers(-127, 128, (c, m)).astype(np.int8)
        macs = h * c * m
    else:
        x = rng.integers(-128, 128, (BATCH, c, h, h)).astype(np.int8)
        w = rng.integers(-127, 128, (m, c // group, k, k)).astype(np.int8)
        macs = BATCH * m * h * h * (c // group) * k * k
    bias = rng.integers(-1000, 1000, m).astype(np.int64)
    return x, w, bias, macs


def _program(kernel, rq):
    nhwc = kernel in NHWC
    kernel = NHWC.get(kernel, kernel)
    c, m, k, group, h = KERNELS[kernel]
    x, w, bias, macs = _operands(kernel)
    params = dict(weight=w, weight_zero_point=np.zeros(m, np.int64), bias=bias,
                  input_zero_point=0, acc_bits=32, acc_overflow="wrap",
                  rq_shift=np.zeros(1, np.int64), out_zero_point=0, out_min=-128, out_max=127,
                  out_dtype="int8", channel_axis=1 if kernel != "gemm" else -1)
    if kernel == "gemm":
        in_spec, out_spec = TensorSpec("x", "int8", (None, c)), TensorSpec("y", "int8", (None, m))
    else:
        params.update(strides=(1, 1), pads=(k // 2,) * 4, dilations=(1, 1), group=group,
                      layout="NHWC" if nhwc else "NCHW", channel_axis=3 if nhwc else 1)
        if nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            in_spec = TensorSpec("x", "int8", (None, h, h, c))
            out_spec = TensorSpec("y", "int8", (None, h, h, m))
        else:
            in_spec = TensorSpec("x", "int8", (None, c, h, h))
            out_spec = TensorSpec("y", "int8", (None, m, h, h))
    params.update(RQ[rq])
    kind = "gemm" if kernel == "gemm" else "conv"
    return Program((in_spec,), (out_spec,), (Step(kind, kernel, ("x",), ("y",), params),)), x, macs


@pytest.mark.parametrize("rq", list(RQ))
@pytest.mark.parametrize("kernel", list(KERNELS) + list(NHWC))
def test_mrq(benchmark, kernel, rq):
    program, x, macs = _program(kernel, rq)
    run(program, {"x": x}, threads=1)
    benchmark.group = f"kernel {kernel}"
    benchmark.extra_info.update(engine="mrq", rq=rq, macs=macs)
    slow = rq == "acc20_saturate"
    if slow:
        benchmark.pedantic(run, args=(program, {"x": x}), kwargs={"threads": 1}, rounds=3)
    else:
        benchmark(run, program, {"x": x}, threads=1)


def _ort_model(kernel):
    c, m, k, group, h = KERNELS[kernel]
    x, w, bias, macs = _operands(kernel)
    init = [
        helper.make_tensor("xs", TensorProto.FLOAT, [], [0.05]),
        helper.make_tensor("xz", TensorProto.INT8, [], [0]),
        helper.make_tensor("ws", TensorProto.FLOAT, [], [0.01]),
        helper.make_tensor("wz", TensorProto.INT8, [], [0]),
        helper.make_tensor("ys", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("yz", TensorProto.INT8, [], [0]),
        helper.make_tensor("w", TensorProto.INT8, list(w.shape), w.reshape(-1).tolist()),
    ]
    if kernel == "gemm":
        node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                                ["y"])
        shape_in, shape_out = [h, c], [h, m]
    else:
        init.append(helper.make_tensor("b", TensorProto.INT32, [m], bias.tolist()))
        node = helper.make_node("QLinearConv",
                                ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                                pads=[k // 2] * 4, group=group)
        shape_in, shape_out = [BATCH, c, h, h], [BATCH, m, h, h]
    graph = helper.make_graph([node], kernel,
                              [helper.make_tensor_value_info("x", TensorProto.INT8, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, shape_out)],
                              init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), x, macs


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_ort(benchmark, kernel):
    ort = pytest.importorskip("onnxruntime")
    model, x, macs = _ort_model(kernel)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    benchmark.group = f"kernel {kernel}"
    benchmark.extra_info.update(engine="ort", rq="fp32", macs=macs)
    benchmark(session.run, None, {"x": x})


def numpy_reference(kernel, x, w, bias, multiplier=np.float32(0.0123)):
    """Plain numpy: int64 im2col product (grouped), fp32 requantization, RNE, int8 clamp."""
    c, m, k, group, h = KERNELS[kernel]
    if kernel == "gemm":
        acc = x.astype(np.int64) @ w.astype(np.int64) + bias
    else:
        pad = k // 2
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
        n, _, oh, ow = win.shape[:4]
        win = win.reshape(n, group, c // group, oh, ow, k, k)
        wg = w.astype(np.int64).reshape(group, m // group, c // group, k, k)
        acc = np.einsum("ngchwij,gmcij->ngmhw", win, wg).reshape(n, m, oh, ow)
        acc = acc + bias[:, None, None]
    scaled = acc.astype(np.float32) * multiplier
    return np.clip(np.rint(scaled), -128, 127).astype(np.int8)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_numpy_reference(benchmark, kernel):
    x, w, bias, macs = _operands(kernel)
    benchmark.group = f"kernel {kernel}"
    benchmark.extra_info.update(engine="numpy", rq="fp32", macs=macs)
    want = benchmark.pedantic(numpy_reference, args=(kernel, x, w, bias), rounds=2)
    program, x_sim, _ = _program(kernel, "fp32")
    got = run(program, {"x": x_sim}, threads=1).outputs["y"]
    assert np.array_equal(got, want), "the simulator and the numpy reference disagree"
