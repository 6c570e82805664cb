"""The AMX tile conv/gemm kernel (simulator.kernels.amx_conv) against tests/reference.

Every case asserts that the AMX kernel really ran (the launch calls ``amx_range``/``amx_par``),
then compares codes and the saturation count with the integer reference: uint8 inputs
(``tdpbusd``) and int8 inputs read as they are (``tdpbssd``), all input zero points, extreme
codes (every product -128 * -128 or 255 * -128), accumulators next to the int32 limit, output
rows narrower than, equal to and wider than a 16-row tile (the overlapping last unit must store
and count its positions once), K split into several chunks, one or two channel tiles, threads.
Skipped on hosts without AMX-INT8 (there the VNNI kernels run, tested elsewhere).
"""
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simulator.capabilities import capabilities  # noqa: E402
from simulator.kernels import amx, amx_conv  # noqa: E402
from simulator.kernels.conv import prepare_conv  # noqa: E402
from simulator.kernels.gemm import prepare_gemm  # noqa: E402
from tests.reference import conv_ref, gemm_ref, quant_ref  # noqa: E402
from tests.simulator.test_sim_conv_fast import _input  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
needs_amx = pytest.mark.skipif(not capabilities().amx,
                               reason=f"no AMX kernels here: {capabilities().amx_off}")


def _requant(rng, m_out):
    return {"rq_mode": "fp32", "rq_rounding": "half_even",
            "rq_multiplier": rng.uniform(1e-5, 2e-3, m_out).astype(np.float32),
            "out_zero_point": int(rng.integers(-128, 128)), "out_dtype": "int8"}


def _used_amx(fast, x):
    launch = fast.launch(x.shape, x.dtype)[0]
    return any(c.fn.py_func.__name__ in ("amx_range", "amx_par") for c in launch.calls)


def _conv_case(rng, x, w, xzp, strides, pads, dilations, bias=None):
    m_out = w.shape[0]
    rq = _requant(rng, m_out)
    if bias is None:
        bias = rng.integers(-3000, 3000, m_out).astype(np.int64)
    fast = prepare_conv(w, weight_zero_point=0, bias=bias, input_zero_point=xzp,
                        strides=strides, pads=pads, dilations=dilations, group=1,
                        layout="NHWC", acc_bits=32, acc_overflow="wrap", requant=rq,
                        channel_axis=3)
    assert fast is not None
    assert _used_amx(fast, x)
    got, got_sat = fast.run(x)
    acc, ovf = conv_ref.conv2d_acc(x, w, np.zeros(m_out, dtype=np.int64), bias, xzp, strides,
                                   pads, dilations, 1, "NHWC", 32, "wrap")
    assert ovf == 0
    want, want_sat = quant_ref.requantize(acc, "fp32", rq["rq_multiplier"], None, "half_even",
                                          rq["out_zero_point"], -128, 127, "int8", 3)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat
    return fast


@needs_amx
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), xdt=st.sampled_from(["int8", "uint8"]),
       m_out=st.sampled_from([1, 16, 17, 32, 48, 70]), cin=st.sampled_from([1, 3, 16, 24, 64, 100]),
       kernel=st.sampled_from([(1, 1), (3, 3), (2, 5), (5, 1)]), stride=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), dil=st.sampled_from([1, 2]),
       hw=st.sampled_from([(1, 1), (5, 7), (8, 16), (6, 21), (3, 33)]), batch=st.sampled_from([1, 2]),
       fill=st.sampled_from(["random", "random", "min", "max"]))
def test_amx_conv_matches_reference(seed, xdt, m_out, cin, kernel, stride, pad, dil, hw, batch,
                                    fill):
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    height, width = hw
    if (height + 2 * pad - dil * (kh - 1) - 1) < 0 or (width + 2 * pad - dil * (kw - 1) - 1) < 0:
        return
    x = _input(rng, xdt, (batch, height, width, cin), fill)
    w = _input(rng, np.int8, (m_out, cin, kh, kw), "min" if fill != "random" else "random")
    info = np.iinfo(xdt)
    xzp = int(rng.integers(info.min, info.max + 1))
    fast = prepare_conv(w, weight_zero_point=0, bias=np.zeros(m_out, dtype=np.int64),
                        input_zero_point=xzp, strides=(stride, stride), pads=(pad,) * 4,
                        dilations=(dil, dil), group=1, layout="NHWC", acc_bits=32,
                        acc_overflow="wrap", requant=_requant(rng, m_out), channel_axis=3)
    assert fast is not None
    if not _used_amx(fast, x):
        # a tile product of < 8 bytes of K goes to the VNNI kernel (ConvFast._amx_pays)
        assert fast.amx is None or fast.amx[1] < 2
        return
    _conv_case(rng, x, w, xzp, (stride, stride), (pad,) * 4, (dil, dil))


@needs_amx
@pytest.mark.parametrize("rows,kernel", [(20, "amx_range"), (3, "gemv_rows")])
@pytest.mark.parametrize("xdt,fill_x,fill_w", [("uint8", "max", "min"), ("int8", "min", "min"),
                                               ("int8", "max", "min")])
def test_gemm_accumulator_next_to_int32_limit(xdt, fill_x, fill_w, rows, kernel):
    """K = 65000 products of 255 * -128 (or 130000 of -128 * -128): partial sums reach
    +-2.1e9, within a hair of int32; the tiles' (and, for 3 rows, the row kernel's) wrapping
    int32 lanes must still give the exact sum."""
    rng = np.random.default_rng(7)
    depth, n_cols = 65000 if fill_x == "max" and xdt == "uint8" else 130000, 16
    x = _input(rng, xdt, (rows, depth), fill_x)
    w = _input(rng, np.int8, (depth, n_cols), fill_w)
    xzp = 0
    # |acc| <= 255 * 128 * 65000 = 2.12e9 (uint8) / 128 * 128 * 130000 = 2.13e9 (int8)
    bias = np.zeros(n_cols, dtype=np.int64)
    rq = _requant(rng, n_cols)
    fast = prepare_gemm(w, bias=bias, input_zero_point=xzp, requant=rq)
    assert fast is not None
    launch = fast.launch(x.shape, x.dtype)
    assert launch is not None and launch[1]
    assert any(c.fn.py_func.__name__ == kernel for c in launch[0].calls)
    got, got_sat = fast.run(x)
    acc, ovf = gemm_ref.gemm_acc(x, w, 0, bias, xzp, 32, "wrap")
    assert ovf == 0 and np.abs(acc).max() > 2**31 - 2**27
    want, want_sat = quant_ref.requantize(acc, "fp32", rq["rq_multiplier"], None, "half_even",
                                          rq["out_zero_point"], -128, 127, "int8", -1)
    np.testing.assert_array_equal(got, want)
    assert got_sat == want_sat


@needs_amx
@pytest.mark.parametrize("width", [15, 16, 17, 31, 47])
def test_amx_overlapping_last_unit_counts_once(width):
    """Rows whose width is not a multiple of 16: the last unit recomputes positions of the one
    before; the saturation count must count them once (inputs chosen so every output
    saturates)."""
    rng = np.random.default_rng(width)
    x = np.full((1, 3, width, 32), 127, dtype=np.int8)
    w = np.full((16, 32, 3, 3), 127, dtype=np.int8)
    fast = _conv_case(rng, x, w, -128, (1, 1), (1, 1, 1, 1), (1, 1),
                      bias=np.full(16, 10**8, dtype=np.int64))
    assert fast.run(x)[1] == 3 * width * 16


@needs_amx
def test_amx_threads_agree():
    rng = np.random.default_rng(3)
    x = _input(rng, np.int8, (4, 32, 32, 32), "random")
    w = _input(rng, np.int8, (48, 32, 3, 3), "random")
    rq = _requant(rng, 48)
    outs = []
    before = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            fast = prepare_conv(w, weight_zero_point=0, bias=np.zeros(48, dtype=np.int64),
                                input_zero_point=3, pads=(1, 1, 1, 1), layout="NHWC",
                                acc_bits=32, acc_overflow="wrap", requant=rq, channel_axis=3)
            names = [c.fn.py_func.__name__ for c in fast.launch(x.shape, x.dtype)[0].calls]
            assert "amx_par" in names or "amx_range" in names
            outs.append(fast.run(x))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    assert outs[0][1] == outs[1][1]


def test_chunking_covers_every_group():
    for c4_n in range(1, 200):
        n_chunks, chunk4, c4p = amx_conv.chunking(c4_n)
        assert 1 <= chunk4 <= 16 and c4p == n_chunks * chunk4 and c4p >= c4_n
        assert c4p - c4_n < n_chunks


def test_config_rejects_impossible_tiles():
    with pytest.raises(ValueError):
        amx.config_bytes(17, 64, 16)
    with pytest.raises(ValueError):
        amx.config_bytes(4, 48, 16)
    cfg = amx.config_bytes(5, 48, 12)
    assert cfg[0] == 1 and cfg[48:56].tolist() == [5] * 6 + [12] * 2


@pytest.mark.parametrize("switch", [{"SIMULATOR_AMX": "0"}, {"SIMULATOR_KERNELS": "vnni"}])
def test_amx_switch_off(switch):
    """SIMULATOR_AMX=0 (or forcing the VNNI path) disables the AMX kernels (the VNNI kernels
    compute the same bits); the gate says which switch did it, whatever the host."""
    code = ("from simulator.capabilities import capabilities as c; x = c();"
            " print(x.amx, x.amx_off, sep='|')")
    env = {k: v for k, v in os.environ.items()
           if k not in ("SIMULATOR_KERNELS", "SIMULATOR_SIMD", "SIMULATOR_AMX")}
    env.update(switch)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if "SIMULATOR_KERNELS" in switch and out.returncode:
        assert "cannot run here" in out.stderr  # a host without VNNI cannot be forced to it
        return
    assert out.returncode == 0, out.stderr
    amx_on, why = out.stdout.strip().split("|")
    assert amx_on == "False"
    assert why.endswith(" ".join(f"{k}={v}" for k, v in switch.items())) or "VNNI" in why
