"""Kernels get the arrays they only read as read-only arrays from every caller (the interpreter's
launches, compiled programs through ``portable_glue.read_only``, direct wrappers), so that a
kernel has one specialisation per dtype whether an operand is an activation (writable) or a
constant (read-only): each extra flag combination was another cold compile of seconds."""
import numba
import numpy as np
import pytest
from numba import njit

from simulator.kernels import eltwise
from simulator.kernels.portable_glue import read_only
from simulator.launch import Call, In, Launch, Tmp


def test_read_only_is_a_view_and_leaves_the_array_writable():
    a = np.arange(6, dtype=np.int16)
    v = read_only(a)
    assert not v.flags.writeable and a.flags.writeable
    assert np.shares_memory(v, a) and np.array_equal(v, a)
    assert read_only(v) is v   # already read-only: no new view


@njit
def _through(a):
    return read_only(a)


@njit
def _sum_through(a):
    b = read_only(a)
    return b.sum()


def test_compiled_read_only_is_the_same_array_typed_read_only():
    a = np.arange(10, dtype=np.int8)
    got = _through(a)
    assert got.ctypes.data == a.ctypes.data   # no copy (boxed back, it is the caller's array)
    (sig,) = _through.nopython_signatures
    assert sig.args[0].mutable and not sig.return_type.mutable
    assert _sum_through(a) == a.sum()

    @njit
    def write(a):
        b = read_only(a)
        b[0] = 1
    with pytest.raises(numba.core.errors.TypingError):
        write(a)


@njit
def _copy_kernel(x, out):
    for i in range(x.shape[0]):
        out[i] = x[i] + 1


def test_launch_passes_its_inputs_read_only_and_returns_outputs_as_they_are():
    launch = Launch(temps=(((4,), "int32"),), calls=(Call(_copy_kernel, (In(0), Tmp(0))),),
                    outputs=(Tmp(0), In(0)))
    x = np.arange(4, dtype=np.int32)
    (y, passthrough), _ = launch.execute((x,))
    assert np.array_equal(y, x + 1)
    # the kernel saw a read-only input and a writable scratch buffer
    (sig,) = _copy_kernel.nopython_signatures
    assert not sig.args[0].mutable and sig.args[1].mutable
    # an output that is the input itself keeps the caller's flags
    assert passthrough.flags.writeable


def test_an_add_compiles_once_per_dtype_whichever_operand_is_a_constant():
    rng = np.random.default_rng(0)
    act = rng.integers(0, 60000, (2, 3, 4, 4)).astype(np.uint16)
    const = read_only(rng.integers(0, 60000, (2, 3, 4, 4)).astype(np.uint16))
    kw = dict(scale_a=0.5, scale_b=0.25, scale_out=1.0, zero_point_a=3, zero_point_b=0,
              zero_point_out=7, out_min=0, out_max=65535, out_dtype="uint16")

    def uint16_signatures():
        return {sig for sig in eltwise._add_float_kernel.nopython_signatures
                if sig.args[0].dtype == numba.uint16}

    for a, b in ((act, const), (const, act), (act, act.copy())):
        eltwise.add_float(a, b, **kw)
    assert len(uint16_signatures()) == 1, uint16_signatures()
