"""Parity sweep of mrq's float MatMul and float Conv islands (`float_matmul`, `float_conv`) with
ONNX Runtime's CPU provider (1 thread, the parity session options): single-op models over a grid
of shapes, transposes, scalar scales, conv geometries and weight kinds, each run by
`mrq` under `onnxruntime-cpu` and by ORT on random inputs, every float output element compared
bit for bit. The unit tests (tests/onnx/test_float_matmul_conv.py) hold a few of these cases;
this is the exhaustive version.

    python bench/ort_float_matmul_conv_parity.py [--seed 0] [--quick]

Prints one line per case (mismatching elements / elements, which MLAS path ORT took) and a
total; exit code 1 if any element differs.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mrq.errors import MrqError
from mrq.onnx_import import import_onnx
from mrq.pipeline import Pipeline
from tests.parity.ort_runner import make_session

F32 = np.float32
MATMUL_SHAPES = [((1, 5, 9), (1, 9, 7)), ((1, 3, 32, 40), (1, 3, 40, 50)), ((1, 1, 4, 300), (1, 3, 300, 6)),
                 ((1, 7), (7, 9)), ((1, 300), (300, 5)), ((1, 8, 200), (200, 260)), ((1, 9, 1), (1, 1, 9)),
                 ((1, 2, 1, 64), (1, 2, 64, 1)), ((4, 9), (9,)), ((1, 130, 20), (20, 1))]
CONV_GEOMETRY = list(itertools.product((3, 8, 16, 20, 48, 160), (8, 16, 32), (1, 3), (1, 2), (0, 1), (1, 2)))


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _side_quantize(nodes, inits, name):
    """A QuantizeLinear of ``name`` on a side branch: the importer takes quantized models only."""
    inits += [numpy_helper.from_array(F32(0.05), "qs"), numpy_helper.from_array(np.uint8(128), "qz")]
    nodes.append(helper.make_node("QuantizeLinear", [name, "qs", "qz"], ["yq"]))


def _compare(model, feeds) -> tuple[int, int, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        src, opt = Path(tmp) / "m.onnx", Path(tmp) / "opt.onnx"
        onnx.save(model, src)
        sess = make_session(src, opt)
        ops = [n.op_type for n in onnx.load(str(opt)).graph.node if n.op_type != "QuantizeLinear"]
        names = [o.name for o in sess.get_outputs()]
        want = dict(zip(names, sess.run(names, feeds)))
    got = Pipeline(import_onnx(model), "onnxruntime-cpu", "native").run(feeds).outputs
    bad = sum(int(np.sum(np.asarray(got[k]).view(np.uint8).reshape(want[k].shape + (-1,))
                         != want[k].view(np.uint8).reshape(want[k].shape + (-1,)))
                  .any(axis=-1).sum()) for k in want)
    return bad, sum(v.size for v in want.values()), ops


def matmul_cases(rng, quick):
    shapes = MATMUL_SHAPES[:4] if quick else MATMUL_SHAPES
    for (sa, sb), ta, tb, scale in itertools.product(shapes, (False, True), (False, True),
                                                     (None, ("Mul", 0.17677669), ("Div", 3.0))):
        if (ta and len(sa) < 2) or (tb and len(sb) < 2) or (ta and len(sb) == 1):
            continue
        ga = sa[:-2] + (sa[-1], sa[-2]) if ta else sa
        gb = sb[:-2] + (sb[-1], sb[-2]) if tb else sb
        nodes, inits, ia, ib = [], [], "a", "b"
        for flag, name, shape in ((ta, "a", ga), (tb, "b", gb)):
            if flag:
                perm = list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2]
                nodes.append(helper.make_node("Transpose", [name], [name + "t"], perm=perm))
        ia, ib = ("at" if ta else "a"), ("bt" if tb else "b")
        nodes.append(helper.make_node("MatMul", [ia, ib], ["m" if scale else "y"]))
        if scale:
            inits.append(numpy_helper.from_array(F32(scale[1]), "s"))
            nodes.append(helper.make_node(scale[0], ["m", "s"], ["y"]))
        _side_quantize(nodes, inits, "y")
        model = _model(nodes, [_vi("a", TensorProto.FLOAT, list(ga)), _vi("b", TensorProto.FLOAT, list(gb))],
                       [_vi("y", TensorProto.FLOAT, None), _vi("yq", TensorProto.UINT8, None)], inits)
        feeds = {"a": (rng.standard_normal(ga) * 2).astype(F32), "b": (rng.standard_normal(gb) * 2).astype(F32)}
        yield f"MatMul {sa}@{sb} transA={int(ta)} transB={int(tb)} scale={scale}", model, feeds
    for (sa, sb), scale in itertools.product([s for s in shapes if len(s[1]) == 2],
                                             (None, ("Mul", 0.17677669))):
        # a float initializer as B: ORT packs it ahead (MLAS's packed SGEMM)
        inits = [numpy_helper.from_array((rng.standard_normal(sb) * 2).astype(F32), "b")]
        nodes = [helper.make_node("MatMul", ["a", "b"], ["m" if scale else "y"])]
        if scale:
            inits.append(numpy_helper.from_array(F32(scale[1]), "s"))
            nodes.append(helper.make_node(scale[0], ["m", "s"], ["y"]))
        _side_quantize(nodes, inits, "y")
        model = _model(nodes, [_vi("a", TensorProto.FLOAT, list(sa))],
                       [_vi("y", TensorProto.FLOAT, None), _vi("yq", TensorProto.UINT8, None)], inits)
        yield (f"MatMul {sa}@const{sb} scale={scale}", model,
               {"a": (rng.standard_normal(sa) * 2).astype(F32)})


def conv_cases(rng, quick):
    geometry = CONV_GEOMETRY[::7] if quick else CONV_GEOMETRY
    for (c, m, k, stride, pad, dil), weight_kind in itertools.product(geometry, ("float", "dq")):
        for group in sorted({1, c} if c == m else {1}):
            w = rng.standard_normal((m, c // group, k, k)).astype(F32)
            inits = [numpy_helper.from_array(F32(0.05), "xs"), numpy_helper.from_array(np.uint8(128), "xz"),
                     numpy_helper.from_array(rng.standard_normal(m).astype(F32), "bias")]
            nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])]
            if weight_kind == "float":
                inits.append(numpy_helper.from_array(w, "w"))
            else:
                inits += [numpy_helper.from_array(np.clip(np.rint(w * 40), -127, 127).astype(np.int8), "wq"),
                          numpy_helper.from_array(F32(0.025), "ws")]
                nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]))
            nodes.append(helper.make_node("Conv", ["xf", "w", "bias"], ["y"], kernel_shape=[k, k],
                                          strides=[stride] * 2, pads=[pad] * 4, dilations=[dil] * 2, group=group))
            model = _model(nodes, [_vi("x", TensorProto.UINT8, [1, c, 13, 11])], [_vi("y", TensorProto.FLOAT, None)],
                           inits)
            feeds = {"x": rng.integers(0, 256, (1, c, 13, 11), dtype=np.uint8)}
            yield (f"Conv C={c} M={m} k={k} s={stride} p={pad} d={dil} g={group} weight={weight_kind}",
                   model, feeds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a subset of the grid")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    total_bad = total = cases = refused = 0
    for what, model, feeds in itertools.chain(matmul_cases(rng, a.quick), conv_cases(rng, a.quick)):
        try:
            bad, size, ops = _compare(model, feeds)
        except MrqError as err:   # a one-line refusal is a result, not a failure of the sweep
            refused += 1
            print(f"{'-':>6} / {'-':>7}  {what}  unsupported: {err}")
            continue
        total_bad, total, cases = total_bad + bad, total + size, cases + 1
        print(f"{bad:6d} / {size:7d}  {what}  (ORT: {', '.join(ops)})")
    print(f"{cases} cases: {total_bad} mismatching of {total} elements; {refused} refused")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
