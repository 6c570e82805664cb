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
from simulator.kernels import quant as quant_k
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


def launch_quantize(step, *specs):
    if len(specs) != 1 or specs[0].dtype != np.float32:
        return None
    out_min, out_max, dt = ex._out_block(step)
    return quant_k.quantize_launch(
        specs[0], scale=ex._param(step, "scale"), zero_point=ex._param(step, "zero_point"),
        axis=int(ex._param(step, "axis", 1)), rounding=ex._param(step, "rounding", "half_even"),
        method=ex._param(step, "method", "divide"), out_min=out_min, out_max=out_max,
        out_dtype=dt)


def launch_dequantize(step, *specs):
    if len(specs) != 1:
        return None
    return quant_k.dequantize_launch(specs[0], scale=ex._param(step, "scale"),
                                     zero_point=ex._param(step, "zero_point", 0),
                                     axis=int(ex._param(step, "axis", 1)))


def launch_transpose(step, *specs):
    if len(specs) != 1:
        return None
    return mov_k.transpose_launch(specs[0], perm=ex._param(step, "perm"))


def launch_maxpool(step, *specs):
    if len(specs) != 1:
        return None
    return pool_k.maxpool_launch(
        specs[0], layout=ex._layout(step), kernel=ex._param(step, "kernel"),
        strides=ex._param(step, "strides", (1, 1)), pads=ex._param(step, "pads", (0, 0, 0, 0)),
        dilations=ex._param(step, "dilations", (1, 1)), ceil_mode=ex._param(step, "ceil_mode", 0))


def launch_global_avgpool(step, *specs):
    """The sums, then the requantization; the interpreter picks the requantization kernel from
    the sums' values, the launch from their bound ``H * W * max|x - z_in|`` (both exact)."""
    if len(specs) != 1:
        return None
    x = specs[0]
    layout = ex._layout(step)
    zin = int(ex._param(step, "input_zero_point", 0))
    sums = pool_k.global_sum_launch(x, layout=layout, input_zero_point=zin)
    rq = ex._requant_kwargs(step, ex._LAYOUT_CHANNEL_AXIS[layout])
    if rq["rq_mode"] == "none":
        return None
    shape = sums.output_specs([x])[0][0]
    outer, n_ch, inner, _ = quant_k.split_axis(shape, rq.pop("channel_axis"))
    p = quant_k.requant_params(**rq, n_ch=n_ch)
    lo, hi = quant_k.dtype_range(x.dtype)
    count = int(np.prod(x.shape[1:3] if layout == "NHWC" else x.shape[2:4], dtype=np.int64))
    bound = count * max(abs(lo - zin), abs(hi - zin))
    requant = quant_k.requantize_launch(shape, bound, p, outer, n_ch, inner)
    return None if requant is None else sums.then(requant)


LAUNCHERS: dict[str, Callable] = {
    "quantize": launch_quantize,
    "dequantize": launch_dequantize,
    "transpose": launch_transpose,
    "maxpool": launch_maxpool,
    "global_avgpool": launch_global_avgpool,
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
