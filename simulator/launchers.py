"""Per step kind: the step's :class:`simulator.launch.Launch` for given input shapes and dtypes.

``LAUNCHERS[kind](step, *specs) -> Launch | None``; ``specs`` are arrays with the inputs' shapes
and dtypes (their values are never read). ``None`` means the step has no launch for these inputs:
it needs Python between kernels (a broadcast copy, a fallback to the general kernels) or a look
at the input values (an accumulator bound that the dtype range alone does not prove). The
launchers use the same parameter parsing and the same kernel-level launch builders as the
executors, so a launch runs exactly the calls the interpreter runs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simulator import executors as ex
from simulator.executors_extra import softmax_tflite_call
from simulator.kernels import eltwise as elt_k
from simulator.kernels import movement as mov_k
from simulator.kernels import pool as pool_k
from simulator.launch import In, Launch


def _fast_launch(fast, spec):
    if fast is None:
        return None
    got = fast.launch(spec.shape, spec.dtype)
    if got is None or not got[1]:
        return None
    return got[0]


def launch_conv(step, *specs):
    if len(specs) != 1:
        return None
    return _fast_launch(ex._prepared(step, ex._build_conv), specs[0])


def launch_gemm(step, *specs):
    if len(specs) != 1:
        return None
    return _fast_launch(ex._prepared(step, ex._build_gemm), specs[0])


def launch_add(step, *specs):
    if len(specs) != 2 or specs[0].shape != specs[1].shape:
        return None
    a, b = specs
    mode = ex._param(step, "mode")
    if mode == "fixed":
        prepared = ex._prepared(step, ex._build_add_fixed)
        if prepared is None or a.dtype.name not in elt_k.ELTWISE_DTYPES \
                or b.dtype.name not in elt_k.ELTWISE_DTYPES:
            return None
        return prepared.launch(a.shape, a.dtype, b.dtype)
    if mode == "ort_fma":
        out_min, out_max, dt = ex._out_block(step)
        return elt_k.add_ort_fma_launch(
            a, b, scale_a=ex._param(step, "scale_a"), scale_b=ex._param(step, "scale_b"),
            scale_out=ex._param(step, "scale_out"),
            zero_point_a=ex._param(step, "zero_point_a"),
            zero_point_b=ex._param(step, "zero_point_b"),
            zero_point_out=ex._param(step, "zero_point_out"), out_min=out_min, out_max=out_max,
            out_dtype=dt)
    if mode == "tflite":
        out_min, out_max, dt = ex._out_block(step)
        return elt_k.add_tflite_launch(a, b, **ex.add_tflite_kwargs(step), out_min=out_min,
                                       out_max=out_max, out_dtype=dt)
    return None


def launch_avgpool(step, *specs):
    if len(specs) != 1 or ex._param(step, "mode") == "fixed":
        return None
    return pool_k.avgpool_launch(specs[0], **ex.avgpool_codes_kwargs(step))


def launch_reshape(step, *specs):
    if len(specs) != 1:
        return None
    target = mov_k.reshape_target(specs[0].shape, ex._param(step, "shape"))
    return Launch((), (), (In(0, target),))


def launch_softmax_tflite(step, *specs):
    if len(specs) != 1:
        return None
    fn, kwargs = softmax_tflite_call(step, specs[0].ndim, launch=True)
    return fn(specs[0], **kwargs)


LAUNCHERS: dict[str, Callable] = {
    "conv": launch_conv,
    "gemm": launch_gemm,
    "add": launch_add,
    "avgpool": launch_avgpool,
    "reshape": launch_reshape,
    "softmax_tflite": launch_softmax_tflite,
}


def step_launch(step, specs):
    """The step's launch for inputs like ``specs``, or ``None``."""
    launcher = LAUNCHERS.get(step.kind)
    if launcher is None:
        return None
    return launcher(step, *specs)


def spec(shape, dtype):
    """An array with this shape and dtype whose values are never read (``np.empty`` only
    reserves address space)."""
    return np.empty(tuple(int(d) for d in shape), dtype=dtype)


__all__ = ["LAUNCHERS", "spec", "step_launch"]
