"""The reference convolution's numpy path (taken when no partial sum can overflow) equals its
Python loops, on random geometry, layouts, groups, far zero points and narrow accumulators; and
the loops still run, and count, where a partial sum can leave the accumulator."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numpy as np
import pytest

from tests.reference import conv_ref


def _case(rng, k):
    group, cg, mg = int(rng.choice([1, 2, 3])), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    dh, dw = (int(v) for v in rng.integers(1, 3, 2))
    height = int(rng.integers((kh - 1) * dh + 1, 9))
    width = int(rng.integers((kw - 1) * dw + 1, 9))
    info = np.iinfo([np.uint8, np.int8, np.int16][k % 3])
    x = rng.integers(info.min, info.max, (2, group * cg, height, width), endpoint=True)
    layout = ["NCHW", "NHWC"][k % 2]
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = rng.integers(-128, 256, (group * mg, cg, kh, kw))
    bias = None if k % 5 == 0 else rng.integers(-2**31, 2**31, group * mg)
    return (x.astype(info.dtype), w, rng.integers(-50, 200, group * mg), bias,
            int(rng.integers(-128, 256)), tuple(int(v) for v in rng.integers(1, 4, 2)),
            tuple(int(v) for v in rng.integers(0, 3, 4)), (dh, dw), group, layout,
            int(rng.choice([16, 20, 32, 48])), ["wrap", "saturate", "error"][k % 3])


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_path_equals_the_loops(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    seen = {"in range": 0, "overflowed": 0}
    for k in range(60):
        args = _case(rng, k)
        got, got_ovf = conv_ref.conv2d_acc(*args)
        with monkeypatch.context() as m:
            m.setattr(conv_ref, "_exact_without_overflow", lambda *a: None)
            want, want_ovf = conv_ref.conv2d_acc(*args)
        assert got.dtype == want.dtype == np.int64 and np.array_equal(got, want), k
        assert got_ovf == want_ovf, k
        seen["overflowed" if want_ovf else "in range"] += 1
    # both kinds of case occur (narrow accumulators with int32 biases overflow); an overflowing
    # one taken by the numpy path would have reported no overflow and failed above
    assert seen["in range"] >= 10 and seen["overflowed"] >= 10, seen
