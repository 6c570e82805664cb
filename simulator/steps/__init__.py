"""The step kinds of the simulator: one module per kind, one registry.

``KINDS[kind]`` is a :class:`simulator.steps.base.StepKind`: the kind's typed parameters (a
frozen dataclass whose fields, defaults and checks are its contract), its executor and its
launch. Importing this package registers every kind; adding a kind is one new module here and
its name in ``_MODULES``.
"""
from importlib import import_module

from simulator.steps.base import (KINDS, Params, StepKind, execute_step, make_step, params_of,
                                  spec, step_launch)

_MODULES = ("constant", "quantize", "dequantize", "conv", "gemm", "add", "mul", "rescale",
            "clamp", "maxpool", "avgpool", "global_avgpool", "concat", "reshape", "transpose",
            "softmax", "softmax_tflite", "lut", "mean", "pad", "lut16", "add_sub_tflite", "transpose_conv", "softmax_int16",
            "take", "arg_reduce", "reduce_select", "select2", "resize_bilinear", "prelu",
            "lstm_int8x8_16", "svdf_int8", "resize_linear", "matmul", "softmax_ort",
            "dynamic_quantize", "matmul_integer", "scale_bias", "conv_integer", "layernorm_ort",
            "convtranspose_ort", "conv_ort", "gemm_ort", "float_binary", "float_unary",
            "float_maxpool", "float_softmax", "float_global_avgpool",
            "float_reduce_l2", "float_matmul", "float_conv", "float_ml", "cast", "float_math", "float_reduce_mean", "float_rms_norm",
            "quantize_blocked", "dequantize_blocked", "quantize_runtime",
            "float_reduce_minmax")

for _name in _MODULES:
    import_module(f"simulator.steps.{_name}")

__all__ = ["KINDS", "Params", "StepKind", "execute_step", "make_step", "params_of", "spec",
           "step_launch"]
