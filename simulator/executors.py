"""Step executors: ``EXECUTORS[kind](step, *input_arrays) -> (tuple_of_outputs, stats_dict)``.

One executor per step kind of docs/PROGRAM.md. An executor reads the step's params, computes
output shapes from the input shapes (the batch size varies), calls the kernels and returns the
output arrays in their storage dtype plus integer counters:

- ``acc_overflow``: accumulator elements for which some partial sum left the ``acc_bits`` range
  (conv, gemm; 0 elsewhere);
- ``out_saturated``: outputs whose unclamped value lay outside ``[out_min, out_max]``.

Missing or malformed parameters raise :class:`simulator.errors.ProgramError` naming the step.
Parameter names are exactly those of docs/PROGRAM.md; defaults used when a parameter is absent:

- accumulator block: ``acc_bits=32``, ``acc_overflow='wrap'``;
- requant block: ``rq_rounding='half_even'``, ``out_zero_point=0``, ``out_min``/``out_max`` =
  the ``out_dtype`` range, ``channel_axis`` = the layout's channel axis (conv, avgpool,
  global_avgpool) or -1 (gemm, mul, rescale); ``rq_multiplier`` defaults to ``[1]`` only for
  ``rq_mode='shift'``;
- ``input_zero_point=0``, ``weight_zero_point=0``, ``bias`` = zeros, ``strides=(1, 1)``,
  ``pads=(0, 0, 0, 0)``, ``dilations=(1, 1)``, ``group=1``, ``layout='NCHW'``, ``ceil_mode=0``,
  ``count_include_pad=0``, quantize ``axis=1``, ``rounding='half_even'``, ``method='divide'``.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from simulator.errors import ProgramError, SimulatorError
from simulator.executors_extra import EXECUTORS_EXTRA
from simulator.kernels import conv as conv_k
from simulator.kernels import eltwise as elt_k
from simulator.kernels import gemm as gemm_k
from simulator.kernels import movement as mov_k
from simulator.kernels import pool as pool_k
from simulator.kernels import quant as quant_k
from simulator.kernels import softmax as soft_k

_REQUIRED = object()

_LAYOUT_CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3}


def _param(step, name, default: Any = _REQUIRED):
    params = step.params or {}
    if name in params:
        return params[name]
    if default is _REQUIRED:
        raise ProgramError(f"step {step.name!r} ({step.kind}): missing parameter {name!r}")
    return default


def _stats(acc_overflow=0, out_saturated=0) -> dict:
    return {"acc_overflow": int(acc_overflow), "out_saturated": int(out_saturated)}


def _n_inputs(step, arrays, n):
    if n is not None and len(arrays) != n:
        raise ProgramError(
            f"step {step.name!r} ({step.kind}): expected {n} input(s), got {len(arrays)}"
        )


def _out_block(step):
    """(out_min, out_max, out_dtype) with the dtype range as default clamp."""
    out_dtype = _param(step, "out_dtype")
    try:
        dt = np.dtype(out_dtype)
    except TypeError:
        raise ProgramError(f"step {step.name!r}: unknown out_dtype {out_dtype!r}") from None
    if dt.kind in "iu":
        lo, hi = quant_k.dtype_range(dt)
    else:
        lo, hi = None, None
    return _param(step, "out_min", lo), _param(step, "out_max", hi), dt


def _requant_kwargs(step, default_axis):
    rq_mode = _param(step, "rq_mode")
    out_min, out_max, dt = _out_block(step)
    mult_default = np.array([1], dtype=np.int64) if rq_mode == "shift" else _REQUIRED
    return {
        "rq_mode": rq_mode,
        "rq_multiplier": (None if rq_mode == "none"
                          else _param(step, "rq_multiplier", mult_default)),
        "rq_shift": _param(step, "rq_shift", None),
        "rq_rounding": _param(step, "rq_rounding", "half_even"),
        "out_zero_point": _param(step, "out_zero_point", 0),
        "out_min": out_min,
        "out_max": out_max,
        "out_dtype": dt,
        "channel_axis": int(_param(step, "channel_axis", default_axis)),
    }


def _acc_kwargs(step):
    return {
        "acc_bits": _param(step, "acc_bits", 32),
        "acc_overflow": _param(step, "acc_overflow", "wrap"),
    }


def _layout(step):
    layout = _param(step, "layout", "NCHW")
    if layout not in _LAYOUT_CHANNEL_AXIS:
        raise ProgramError(f"step {step.name!r}: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------
def execute_quantize(step, *arrays):
    """float32 x -> integer codes: ``clamp(round(f32(x / s)) + zp)`` (``method='divide'``) or
    ``f32(x * f32(1 / s))`` (``'multiply'``), per-axis along ``axis`` when the parameters have more
    than one element."""
    _n_inputs(step, arrays, 1)
    out_min, out_max, dt = _out_block(step)
    out, n_sat = quant_k.quantize(
        arrays[0], scale=_param(step, "scale"), zero_point=_param(step, "zero_point"),
        axis=int(_param(step, "axis", 1)), rounding=_param(step, "rounding", "half_even"),
        method=_param(step, "method", "divide"), out_min=out_min, out_max=out_max, out_dtype=dt)
    return (out,), _stats(0, n_sat)


def execute_dequantize(step, *arrays):
    """integer x -> float32 ``f32(f32(x - zp) * s)``."""
    _n_inputs(step, arrays, 1)
    out = quant_k.dequantize(arrays[0], scale=_param(step, "scale"),
                             zero_point=_param(step, "zero_point", 0),
                             axis=int(_param(step, "axis", 1)))
    return (out,), _stats()


# Steps prepared for the fused fast kernels (weights packed once), by step identity. Steps are
# frozen; their parameters must not be mutated after a first run.
_PREPARED: dict = {}
_NOT_FAST = object()


def _prepared(step, build):
    """The object ``build(step)`` made for this step (cached), or ``None``. ``build`` returns
    ``None`` (or raises) when the fast path does not apply; the general path then runs and
    reports any parameter error."""
    key = id(step)
    entry = _PREPARED.get(key)
    if entry is not None and entry[0]() is step:
        obj = entry[1]
    else:
        try:
            obj = build(step)
        except (SimulatorError, TypeError, ValueError, KeyError, IndexError, OverflowError):
            obj = None
        if obj is None:
            obj = _NOT_FAST
        try:
            ref = weakref.ref(step, lambda _r, k=key: _PREPARED.pop(k, None))
        except TypeError:
            return None if obj is _NOT_FAST else obj
        _PREPARED[key] = (ref, obj)
    return None if obj is _NOT_FAST else obj


def _rq_block(step, default_axis):
    rq = _requant_kwargs(step, default_axis)
    axis = rq.pop("channel_axis")
    return rq, axis


def _build_conv(step):
    layout = _layout(step)
    rq, axis = _rq_block(step, _LAYOUT_CHANNEL_AXIS[layout])
    return conv_k.prepare_conv(
        _param(step, "weight"), weight_zero_point=_param(step, "weight_zero_point", 0),
        bias=_param(step, "bias", None), input_zero_point=_param(step, "input_zero_point", 0),
        strides=_param(step, "strides", (1, 1)), pads=_param(step, "pads", (0, 0, 0, 0)),
        dilations=_param(step, "dilations", (1, 1)), group=_param(step, "group", 1),
        layout=layout, requant=rq, channel_axis=axis, **_acc_kwargs(step))


def _build_gemm(step):
    rq, axis = _rq_block(step, -1)
    return gemm_k.prepare_gemm(
        _param(step, "weight"), weight_zero_point=_param(step, "weight_zero_point", 0),
        bias=_param(step, "bias", None), input_zero_point=_param(step, "input_zero_point", 0),
        requant=rq, channel_axis=axis, **_acc_kwargs(step))


def execute_conv(step, *arrays):
    """2-D convolution (OIHW weights, NCHW or NHWC activations), accumulator then requant."""
    _n_inputs(step, arrays, 1)
    fast = _prepared(step, _build_conv)
    if fast is not None:
        res = fast.run(arrays[0])
        if res is not None:
            return (res[0],), _stats(0, res[1])
    layout = _layout(step)
    acc, n_ovf = conv_k.conv2d_acc(
        arrays[0], _param(step, "weight"),
        weight_zero_point=_param(step, "weight_zero_point", 0),
        bias=_param(step, "bias", None), input_zero_point=_param(step, "input_zero_point", 0),
        strides=_param(step, "strides", (1, 1)), pads=_param(step, "pads", (0, 0, 0, 0)),
        dilations=_param(step, "dilations", (1, 1)), group=_param(step, "group", 1),
        layout=layout, **_acc_kwargs(step))
    out, n_sat = quant_k.requantize(acc, **_requant_kwargs(step, _LAYOUT_CHANNEL_AXIS[layout]))
    return (out,), _stats(n_ovf, n_sat)


def execute_gemm(step, *arrays):
    """``a[..., K] @ weight[K, N]``, accumulator then requant along the last axis."""
    _n_inputs(step, arrays, 1)
    fast = _prepared(step, _build_gemm)
    if fast is not None:
        res = fast.run(arrays[0])
        if res is not None:
            return (res[0],), _stats(0, res[1])
    acc, n_ovf = gemm_k.gemm_acc(
        arrays[0], _param(step, "weight"),
        weight_zero_point=_param(step, "weight_zero_point", 0), bias=_param(step, "bias", None),
        input_zero_point=_param(step, "input_zero_point", 0), **_acc_kwargs(step))
    out, n_sat = quant_k.requantize(acc, **_requant_kwargs(step, -1))
    return (out,), _stats(n_ovf, n_sat)


def _build_add_fixed(step):
    out_min, out_max, dt = _out_block(step)
    return elt_k.AddFixed(
        zero_point_a=_param(step, "zero_point_a"), zero_point_b=_param(step, "zero_point_b"),
        multiplier_a=_param(step, "multiplier_a"), multiplier_b=_param(step, "multiplier_b"),
        rq_mode=_param(step, "rq_mode"),
        rq_multiplier=_param(step, "rq_multiplier", np.array([1], dtype=np.int64)),
        rq_shift=_param(step, "rq_shift"), rq_rounding=_param(step, "rq_rounding"),
        out_zero_point=_param(step, "out_zero_point"), out_min=out_min, out_max=out_max,
        out_dtype=dt)


def execute_add(step, *arrays):
    """Quantized addition with numpy broadcasting; ``mode`` selects the arithmetic:
    ``ort_fma`` (``scale_a``, ``scale_b``, ``scale_out``, ``zero_point_a/b/out``), ``tflite``
    (``left_shift``, ``multiplier_a``, ``shift_a``, ``multiplier_b``, ``shift_b``,
    ``multiplier_out``, ``shift_out`` in TFLite's sign convention, ``zero_point_a/b/out``,
    optional ``rq_rounding`` 'half_away' (default, gemmlowp) or 'half_up' (ruy)), ``fixed``
    (``zero_point_a/b``, integer ``multiplier_a/b``, then the requant block with ``rq_mode``
    'fixed' or 'shift', ``rq_shift``, ``rq_rounding``, ``out_zero_point``), ``float``
    (``scale_*``, ``zero_point_*``, ``rounding``)."""
    _n_inputs(step, arrays, 2)
    a, b = arrays
    mode = _param(step, "mode")
    out_min, out_max, dt = _out_block(step)
    common = {"out_min": out_min, "out_max": out_max, "out_dtype": dt}
    if mode == "ort_fma":
        out, n_sat = elt_k.add_ort_fma(
            a, b, scale_a=_param(step, "scale_a"), scale_b=_param(step, "scale_b"),
            scale_out=_param(step, "scale_out"), zero_point_a=_param(step, "zero_point_a"),
            zero_point_b=_param(step, "zero_point_b"),
            zero_point_out=_param(step, "zero_point_out"), **common)
    elif mode == "tflite":
        out, n_sat = elt_k.add_tflite(a, b, **add_tflite_kwargs(step), **common)
    elif mode == "fixed":
        prepared = _prepared(step, _build_add_fixed)
        if prepared is not None:
            for name, arr in (("add input a", a), ("add input b", b)):
                quant_k.check_int_array(name, arr, elt_k.ELTWISE_DTYPES)
            out, n_sat = prepared.run(a, b)
            return (out,), _stats(0, n_sat)
        out, n_sat = elt_k.add_fixed(
            a, b, zero_point_a=_param(step, "zero_point_a"),
            zero_point_b=_param(step, "zero_point_b"),
            multiplier_a=_param(step, "multiplier_a"), multiplier_b=_param(step, "multiplier_b"),
            rq_mode=_param(step, "rq_mode"),
            rq_multiplier=_param(step, "rq_multiplier", np.array([1], dtype=np.int64)),
            rq_shift=_param(step, "rq_shift"), rq_rounding=_param(step, "rq_rounding"),
            out_zero_point=_param(step, "out_zero_point"), **common)
    elif mode == "float":
        out, n_sat = elt_k.add_float(
            a, b, scale_a=_param(step, "scale_a"), scale_b=_param(step, "scale_b"),
            scale_out=_param(step, "scale_out"), zero_point_a=_param(step, "zero_point_a"),
            zero_point_b=_param(step, "zero_point_b"),
            zero_point_out=_param(step, "zero_point_out"),
            rounding=_param(step, "rounding", "half_even"), **common)
    else:
        raise ProgramError(
            f"step {step.name!r} (add): unknown mode {mode!r}; expected 'ort_fma', 'tflite',"
            " 'fixed' or 'float'"
        )
    return (out,), _stats(0, n_sat)


def add_tflite_kwargs(step):
    """The parameters of an add step in mode 'tflite' (without the output block)."""
    return {name: _param(step, name) for name in (
        "left_shift", "multiplier_a", "shift_a", "multiplier_b", "shift_b", "multiplier_out",
        "shift_out", "zero_point_a", "zero_point_b", "zero_point_out")} | {
        "rq_rounding": _param(step, "rq_rounding", "half_away")}


def execute_mul(step, *arrays):
    """``acc = (a - zero_point_a) * (b - zero_point_b)`` exact, then the requant block (ORT:
    ``fp32_zp_in``; TFLite: ``double_q31``); ``channel_axis`` defaults to -1."""
    _n_inputs(step, arrays, 2)
    acc = elt_k.mul_acc(arrays[0], arrays[1], zero_point_a=_param(step, "zero_point_a", 0),
                        zero_point_b=_param(step, "zero_point_b", 0))
    out, n_sat = quant_k.requantize(acc, **_requant_kwargs(step, -1))
    return (out,), _stats(0, n_sat)


def execute_rescale(step, *arrays):
    """``acc = x - input_zero_point`` then the requant block, or ``rq_mode='float_dq_q'``:
    ``clamp(round(f32(f32(f32(x - zin) * scale_in) / scale_out), rq_rounding)
    + out_zero_point)``."""
    _n_inputs(step, arrays, 1)
    x = arrays[0]
    zin = _param(step, "input_zero_point", 0)
    if _param(step, "rq_mode") == "float_dq_q":
        out_min, out_max, dt = _out_block(step)
        out, n_sat = elt_k.rescale_float(
            x, input_zero_point=zin, scale_in=_param(step, "scale_in"),
            scale_out=_param(step, "scale_out"), out_zero_point=_param(step, "out_zero_point", 0),
            rq_rounding=_param(step, "rq_rounding", "half_even"), out_min=out_min,
            out_max=out_max, out_dtype=dt)
        return (out,), _stats(0, n_sat)
    quant_k.check_int_array("rescale input", x)
    acc = x.astype(np.int64) - np.int64(zin)
    out, n_sat = quant_k.requantize(acc, **_requant_kwargs(step, -1))
    return (out,), _stats(0, n_sat)


def execute_clamp(step, *arrays):
    """Clamp to ``[out_min, out_max]`` in the input dtype."""
    _n_inputs(step, arrays, 1)
    out, n_sat = elt_k.clamp(arrays[0], out_min=_param(step, "out_min"),
                             out_max=_param(step, "out_max"))
    return (out,), _stats(0, n_sat)


def execute_maxpool(step, *arrays):
    """Max pooling (ONNX geometry, ``ceil_mode``, dilations), same dtype as the input."""
    _n_inputs(step, arrays, 1)
    out = pool_k.maxpool(arrays[0], layout=_layout(step), kernel=_param(step, "kernel"),
                         strides=_param(step, "strides", (1, 1)),
                         pads=_param(step, "pads", (0, 0, 0, 0)),
                         dilations=_param(step, "dilations", (1, 1)),
                         ceil_mode=_param(step, "ceil_mode", 0))
    return (out,), _stats()


def execute_avgpool(step, *arrays):
    """Average pooling; ``mode`` 'ort_float' (``scale_in``, ``zero_point_in``, ``scale_out``,
    ``zero_point_out``), 'tflite_raw', or 'fixed' (``input_zero_point``, ``rq_rounding`` for the
    division by the count, then the requant block)."""
    _n_inputs(step, arrays, 1)
    layout = _layout(step)
    if _param(step, "mode") == "fixed":
        rq = _requant_kwargs(step, _LAYOUT_CHANNEL_AXIS[layout])
        avg, _ = pool_k.avgpool(arrays[0], mode="fixed",
                                zero_point_in=_param(step, "input_zero_point", 0),
                                rq_rounding=rq["rq_rounding"], **_avgpool_geometry(step))
        out, n_sat = quant_k.requantize(avg, **rq)
        return (out,), _stats(0, n_sat)
    out, n_sat = pool_k.avgpool(arrays[0], **avgpool_codes_kwargs(step))
    return (out,), _stats(0, n_sat)


def _avgpool_geometry(step):
    if tuple(_param(step, "dilations", (1, 1))) != (1, 1):
        raise ProgramError(f"step {step.name!r} (avgpool): dilations are not supported")
    return {
        "layout": _layout(step), "kernel": _param(step, "kernel"),
        "strides": _param(step, "strides", (1, 1)), "pads": _param(step, "pads", (0, 0, 0, 0)),
        "ceil_mode": _param(step, "ceil_mode", 0),
        "count_include_pad": _param(step, "count_include_pad", 0),
    }


def avgpool_codes_kwargs(step):
    """The keyword arguments of :func:`simulator.kernels.pool.avgpool` for an avgpool step whose
    mode ('ort_float' or 'tflite_raw') yields the output codes directly."""
    mode = _param(step, "mode")
    out_min, out_max, dt = _out_block(step)
    if mode == "ort_float":
        extra = {"scale_in": _param(step, "scale_in"),
                 "zero_point_in": _param(step, "zero_point_in"),
                 "scale_out": _param(step, "scale_out"),
                 "zero_point_out": _param(step, "zero_point_out")}
    elif mode == "tflite_raw":
        extra = {}
    else:
        raise ProgramError(
            f"step {step.name!r} (avgpool): unknown mode {mode!r}; expected 'ort_float',"
            " 'tflite_raw' or 'fixed'"
        )
    return {"mode": mode, "out_min": out_min, "out_max": out_max, "out_dtype": dt, **extra,
            **_avgpool_geometry(step)}


def execute_global_avgpool(step, *arrays):
    """``acc = sum(x - input_zero_point)`` over H*W (int64), then the requant block; output
    [N, C, 1, 1] (NCHW) or [N, 1, 1, C] (NHWC)."""
    _n_inputs(step, arrays, 1)
    layout = _layout(step)
    acc = pool_k.global_sum(arrays[0], layout=layout,
                            input_zero_point=_param(step, "input_zero_point", 0))
    out, n_sat = quant_k.requantize(acc, **_requant_kwargs(step, _LAYOUT_CHANNEL_AXIS[layout]))
    return (out,), _stats(0, n_sat)


def execute_concat(step, *arrays):
    """Concatenate along ``axis`` (inputs already share dtype and quantization grid)."""
    _n_inputs(step, arrays, None)
    return (mov_k.concat(list(arrays), axis=int(_param(step, "axis"))),), _stats()


def execute_reshape(step, *arrays):
    """ONNX Reshape: ``0`` copies the input dimension at that position, ``-1`` infers."""
    _n_inputs(step, arrays, 1)
    shape = _param(step, "shape")
    if not isinstance(shape, (tuple, list, np.ndarray)):
        raise ProgramError(f"step {step.name!r} (reshape): 'shape' must be a tuple, got {shape!r}")
    return (mov_k.reshape(arrays[0], shape=shape),), _stats()


def execute_transpose(step, *arrays):
    """Permute axes by ``perm``."""
    _n_inputs(step, arrays, 1)
    return (mov_k.transpose(arrays[0], perm=_param(step, "perm")),), _stats()


def execute_softmax(step, *arrays):
    """Softmax along ``axis``; only ``mode='float'`` (``scale_in``, ``zero_point_in``,
    ``scale_out``, ``zero_point_out``, ``rounding``)."""
    _n_inputs(step, arrays, 1)
    mode = _param(step, "mode")
    if mode != "float":
        raise ProgramError(
            f"step {step.name!r} (softmax): mode {mode!r} is not implemented; only 'float'"
        )
    out_min, out_max, dt = _out_block(step)
    out, n_sat = soft_k.softmax_float(
        arrays[0], axis=int(_param(step, "axis")), scale_in=_param(step, "scale_in"),
        zero_point_in=_param(step, "zero_point_in"), scale_out=_param(step, "scale_out"),
        zero_point_out=_param(step, "zero_point_out"),
        rounding=_param(step, "rounding", "half_even"), out_min=out_min, out_max=out_max,
        out_dtype=dt)
    return (out,), _stats(0, n_sat)


def execute_constant(step, *arrays):
    """No inputs; outputs the array ``value`` (a constant operand used as an activation, e.g. a
    constant input of an Add). Not a PROGRAM.md table kind: emitted by ``mrq.lower``."""
    _n_inputs(step, arrays, 0)
    value = _param(step, "value")
    if not isinstance(value, np.ndarray):
        raise ProgramError(f"step {step.name!r} (constant): 'value' must be a numpy array")
    return (value,), _stats()


EXECUTORS: dict[str, Callable] = {
    "constant": execute_constant,
    "quantize": execute_quantize,
    "dequantize": execute_dequantize,
    "conv": execute_conv,
    "gemm": execute_gemm,
    "add": execute_add,
    "mul": execute_mul,
    "rescale": execute_rescale,
    "clamp": execute_clamp,
    "maxpool": execute_maxpool,
    "avgpool": execute_avgpool,
    "global_avgpool": execute_global_avgpool,
    "concat": execute_concat,
    "reshape": execute_reshape,
    "transpose": execute_transpose,
    "softmax": execute_softmax,
}

__all__ = ["EXECUTORS"] + [f.__name__ for f in EXECUTORS.values()]

# The TFLite-specific kinds (softmax_tflite, lut, mean, pad) live in simulator/executors_extra.py.
_CLASH = set(EXECUTORS) & set(EXECUTORS_EXTRA)
if _CLASH:
    raise ImportError(f"step kinds registered twice: {sorted(_CLASH)}")
EXECUTORS.update(EXECUTORS_EXTRA)
