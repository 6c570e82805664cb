"""Sweeps behind tests/mrq/test_pointwise_ort.py, too long for the test suite.

1. ``kernels``: every float32 of a bit-pattern range through ORT's float op and through its
   replica in mrq/ort_float.py (Sigmoid, Tanh, Erf, Gelu none/tanh, HardSigmoid, HardSwish),
   counting results whose bits differ.
2. ``tables``: random (x scale, x zero point, y scale, y zero point) grids, all 256 codes,
   int8 and uint8, QDQ and (Sigmoid, LeakyRelu) QOperator: ORT's codes against the table the
   lowering builds for the ``onnxruntime-cpu`` profile; also how many codes a table of the
   op's true float32 function would get wrong.

    python bench/ort_pointwise_parity.py kernels --stride 7      # every 7th float32 in [-40, 40]
    python bench/ort_pointwise_parity.py tables --grids 300
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

F32 = np.float32
_CHUNK = 1 << 22


def _session(model):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def kernels(stride: int, limit: float) -> None:
    from onnx import TensorProto, helper

    from mrq import ort_float
    cases = [("Sigmoid", {}, 13, ort_float.logistic), ("Tanh", {}, 13, ort_float.tanh),
             ("Erf", {}, 13, ort_float.erf), ("Gelu", {}, 20, ort_float.gelu),
             ("Gelu", {"approximate": "tanh"}, 20, lambda v: ort_float.gelu(v, "tanh")),
             ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 13,
              lambda v: ort_float.hard_sigmoid(v, 0.3, 0.4)),
             ("HardSwish", {}, 14, ort_float.hard_swish)]
    # non-negative float32 bit patterns up to `limit`, then both signs
    top = int(np.array(limit, F32).view(np.int32))
    for op, attrs, opset, fn in cases:
        node = helper.make_node(op, ["x"], ["y"], **attrs)
        graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 9
        session = _session(model)
        t0, tested, bad = time.perf_counter(), 0, 0
        for start in range(0, top + 1, _CHUNK * stride):
            bits = np.arange(start, min(start + _CHUNK * stride, top + 1), stride, dtype=np.int32)
            x = np.concatenate([bits.view(F32), -bits.view(F32)])
            want = session.run(None, {"x": x})[0]
            bad += int(np.count_nonzero(want.view(np.int32) != fn(x).view(np.int32)))
            tested += x.size
        print(f"kernel {op}{attrs or ''}: {bad} of {tested} float32 inputs differ "
              f"(|x| <= {limit}, every {stride}th bit pattern; {time.perf_counter() - t0:.0f} s)")


def tables(grids: int, seed: int) -> None:
    import tempfile

    import onnx
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "mrq"))
    import test_pointwise_ort as T

    from mrq.api import prepare
    rng = np.random.default_rng(seed)
    pairs = [(float(F32(10 ** rng.uniform(-4, 0.7))), int(rng.integers(-128, 128)),
              float(F32(10 ** rng.uniform(-9, 0))), int(rng.integers(-128, 128))) for _ in range(grids)]
    T.SCALE_PAIRS[:] = pairs      # the test's model builder, with these grids
    T.ADVERSARIAL.clear()
    tmp = tempfile.mkdtemp()
    for op_key, dtype, form in T.CASES:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(T._model(op_key, dtype, form), path)
        info = np.iinfo(dtype)
        codes = np.arange(info.min, info.max + 1).astype(dtype).reshape(1, 256)
        want = _session(onnx.load(path)).run(None, {f"x{k}": codes for k in range(grids)})
        luts = [s for s in prepare(path, "onnxruntime-cpu", layout="native").program.steps
                if s.kind == "lut"]
        by_output = {s.outputs[0]: np.asarray(s.params["table"]) for s in luts}
        bad = sum(int(np.count_nonzero(by_output[f"y{k}"] != want[k][0])) for k in range(grids))
        truth = sum(int(np.count_nonzero(T._true_table(op_key, dtype, T._pairs(op_key, dtype)[k])
                                         != want[k][0])) for k in range(grids))
        print(f"table {op_key:12s} {dtype:5s} {form:3s}: {bad} of {256 * grids} codes differ "
              f"(a table of the true function: {truth})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--stride", type=int, default=7, help="test every STRIDE-th float32 bit pattern")
    k.add_argument("--limit", type=float, default=40.0, help="largest |x|")
    t = sub.add_parser("tables")
    t.add_argument("--grids", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.what == "kernels":
        kernels(args.stride, args.limit)
    else:
        tables(args.grids, args.seed)


if __name__ == "__main__":
    main()
