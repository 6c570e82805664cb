"""Executors of the TFLite-specific step kinds; merged into ``simulator.executors.EXECUTORS``.

Same signature as :mod:`simulator.executors`: ``execute_<kind>(step, *arrays) ->
(tuple_of_outputs, stats_dict)``. Step kinds and parameters (see docs/PROGRAM.md conventions):

==================  ===========================================================================
``softmax_tflite``  int8/uint8 x, softmax along the last axis (``axis`` must be -1 or the last
                    axis). ``mode='gemmlowp'`` (LiteRT reference kernel): ``input_multiplier``,
                    ``input_left_shift``, ``diff_min``, ``out_dtype`` (the output offset is its
                    lowest code), optional ``out_min``/``out_max``. ``mode='lut'`` (LiteRT
                    optimized kernel): ``table`` float32[256], ``scale_out``,
                    ``zero_point_out``, ``out_min``, ``out_max``, ``out_dtype``, ``rounding``
                    ('half_away', or 'add_half_truncate' = ``int(f32(p + 0.5f))``).
``lut``             8-bit x: ``table`` [256] of ``out_dtype`` indexed by ``x - min(dtype(x))``.
``mean``            x; ``axes``, ``keep_dims``; ``mode='tflite'``: ``input_zero_point``,
                    ``multiplier``, ``shift`` (TFLite sign, includes 1/n), ``out_zero_point``;
                    ``mode='xnnpack'``: ``scale`` and ``zero_point`` (float32, see
                    :func:`simulator.kernels.tflite_ops.mean_xnnpack`); ``mode='requant'``:
                    ``input_zero_point`` and the requantization block on ``sum(x - z_in)``
                    (``channel_axis`` -1). All with ``out_min``, ``out_max``, ``out_dtype``.
``pad``             x; ``pads`` ((before, after) per dimension), ``value`` (integer code).
==================  ===========================================================================
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simulator.errors import ProgramError
from simulator.kernels import quant as quant_k
from simulator.kernels import tflite_ops as tfl_k

_REQUIRED = object()


def _param(step, name, default=_REQUIRED):
    params = step.params or {}
    if name in params:
        return params[name]
    if default is _REQUIRED:
        raise ProgramError(f"step {step.name!r} ({step.kind}): missing parameter {name!r}")
    return default


def _stats(acc_overflow=0, out_saturated=0) -> dict:
    return {"acc_overflow": int(acc_overflow), "out_saturated": int(out_saturated)}


def _one_input(step, arrays):
    if len(arrays) != 1:
        raise ProgramError(f"step {step.name!r} ({step.kind}): expected 1 input, got {len(arrays)}")
    return arrays[0]


def _out_block(step):
    dt = np.dtype(_param(step, "out_dtype"))
    lo, hi = quant_k.dtype_range(dt)
    return _param(step, "out_min", lo), _param(step, "out_max", hi), dt


def execute_softmax_tflite(step, *arrays):
    """TFLite int8/uint8 softmax along the last axis (``mode`` 'gemmlowp' or 'lut')."""
    x = _one_input(step, arrays)
    fn, kwargs = softmax_tflite_call(step, x.ndim)
    out, n_sat = fn(x, **kwargs)
    return (out,), _stats(0, n_sat)


def softmax_tflite_call(step, ndim, launch=False):
    """``(kernel function, keyword arguments)`` of a softmax_tflite step for a rank-``ndim``
    input; with ``launch=True`` the function returns the :class:`simulator.launch.Launch`."""
    axis = int(_param(step, "axis", -1))
    if axis not in (-1, ndim - 1):
        raise ProgramError(f"step {step.name!r} (softmax_tflite): only the last axis is supported, got {axis}")
    mode = _param(step, "mode")
    out_min, out_max, dt = _out_block(step)
    if mode == "gemmlowp":
        fn = tfl_k.softmax_gemmlowp_launch if launch else tfl_k.softmax_gemmlowp
        return fn, {"input_multiplier": _param(step, "input_multiplier"),
                    "input_left_shift": _param(step, "input_left_shift"),
                    "diff_min": _param(step, "diff_min"), "out_dtype": dt, "out_min": out_min,
                    "out_max": out_max}
    if mode == "lut":
        fn = tfl_k.softmax_lut_launch if launch else tfl_k.softmax_lut
        return fn, {"table": _param(step, "table"), "scale_out": _param(step, "scale_out"),
                    "zero_point_out": _param(step, "zero_point_out"), "out_min": out_min,
                    "out_max": out_max, "out_dtype": dt,
                    "rounding": _param(step, "rounding", "half_away")}
    raise ProgramError(f"step {step.name!r} (softmax_tflite): unknown mode {mode!r}; "
                       f"expected 'gemmlowp' or 'lut'")


def execute_lut(step, *arrays):
    """256-entry table lookup of an 8-bit tensor."""
    x = _one_input(step, arrays)
    return (tfl_k.lut8(x, table=_param(step, "table"), out_dtype=_param(step, "out_dtype")),), _stats()


def execute_mean(step, *arrays):
    """Quantized mean over ``axes`` (``mode`` 'tflite', 'xnnpack' or 'requant')."""
    x = _one_input(step, arrays)
    axes, keep = _param(step, "axes"), bool(_param(step, "keep_dims"))
    mode = _param(step, "mode")
    if mode == "tflite":
        out_min, out_max, dt = _out_block(step)
        out, n_sat = tfl_k.mean_tflite(
            x, axes=axes, keep_dims=keep, input_zero_point=_param(step, "input_zero_point"),
            multiplier=_param(step, "multiplier"), shift=_param(step, "shift"),
            out_zero_point=_param(step, "out_zero_point"), out_min=out_min, out_max=out_max,
            out_dtype=dt)
    elif mode == "xnnpack":
        out_min, out_max, dt = _out_block(step)
        out, n_sat = tfl_k.mean_xnnpack(
            x, axes=axes, keep_dims=keep, scale=_param(step, "scale"),
            zero_point=_param(step, "zero_point"), out_min=out_min, out_max=out_max, out_dtype=dt)
    elif mode == "requant":
        sums, _ = tfl_k.reduce_sum(x, axes=axes, keep_dims=keep,
                                   input_zero_point=_param(step, "input_zero_point", 0))
        out_min, out_max, dt = _out_block(step)
        rq_mode = _param(step, "rq_mode")
        out, n_sat = quant_k.requantize(
            np.ascontiguousarray(sums), rq_mode=rq_mode,
            rq_multiplier=None if rq_mode == "none" else _param(step, "rq_multiplier"),
            rq_shift=_param(step, "rq_shift", None), rq_rounding=_param(step, "rq_rounding", "half_even"),
            out_zero_point=_param(step, "out_zero_point", 0), out_min=out_min, out_max=out_max,
            out_dtype=dt, channel_axis=int(_param(step, "channel_axis", -1)))
    else:
        raise ProgramError(f"step {step.name!r} (mean): unknown mode {mode!r}; expected 'tflite', "
                           f"'xnnpack' or 'requant'")
    return (out,), _stats(0, n_sat)


def execute_pad(step, *arrays):
    """Constant padding with an integer code."""
    x = _one_input(step, arrays)
    return (tfl_k.pad(x, pads=_param(step, "pads"), value=_param(step, "value")),), _stats()


EXECUTORS_EXTRA: dict[str, Callable] = {
    "softmax_tflite": execute_softmax_tflite,
    "lut": execute_lut,
    "mean": execute_mean,
    "pad": execute_pad,
}

__all__ = ["EXECUTORS_EXTRA"] + [f.__name__ for f in EXECUTORS_EXTRA.values()]
