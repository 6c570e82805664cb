"""The newest version of each builtin operator that LiteRT can execute.

A TFLite operator code carries a version; the converter raises it when an op gains a feature
(a new tensor type, per-channel quantization, int16 activations, ...). LiteRT refuses a model
whose op version its resolver does not register ("Didn't find op for builtin opcode ...");
mrq refuses the same models, so that it never claims to reproduce an operator variant its
peer cannot run and nobody has compared it with.

The figures are those of ai-edge-litert 2.3.0's default resolver (``BuiltinOpResolver``); its
reference resolver stops earlier for some ops (e.g. STRIDED_SLICE 4) but executes no variant
mrq imports differently. ``tests/tflite/test_tflite_op_versions.py`` probes the installed
LiteRT for every op mrq imports and fails when this table and LiteRT disagree.
"""
from __future__ import annotations

LITERT_MAX_OP_VERSION: dict[str, int] = {
    "ADD": 6, "ARG_MAX": 3, "ARG_MIN": 3, "AVERAGE_POOL_2D": 3, "CAST": 9, "CONCATENATION": 7,
    "CONV_2D": 8, "DEPTHWISE_CONV_2D": 7, "DEPTH_TO_SPACE": 2, "DEQUANTIZE": 9, "EXPAND_DIMS": 1,
    "FULLY_CONNECTED": 14, "GATHER": 8, "HARD_SWISH": 1, "LEAKY_RELU": 2, "LOGISTIC": 3,
    "MAXIMUM": 4, "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MUL": 8, "PACK": 5, "PAD": 6,
    "PADV2": 6, "PRELU": 1, "QUANTIZE": 6, "REDUCE_MAX": 3, "REDUCE_MIN": 3, "RELU": 3, "RELU6": 3,
    "RELU_0_TO_1": 1, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4,
    "RESIZE_NEAREST_NEIGHBOR": 4, "SHAPE": 1, "SLICE": 8, "SOFTMAX": 4, "SPACE_TO_DEPTH": 2,
    "SPLIT": 5, "SPLIT_V": 3, "SQUEEZE": 2, "STRIDED_SLICE": 8, "SUB": 5, "SVDF": 4, "TANH": 3,
    "TILE": 3, "TRANSPOSE": 9, "TRANSPOSE_CONV": 5, "UNIDIRECTIONAL_SEQUENCE_LSTM": 4, "UNPACK": 6,
}


def op_version_problem(name: str, version: int) -> str | None:
    """Why an operator code of this version cannot be imported, or None."""
    newest = LITERT_MAX_OP_VERSION.get(name)
    if newest is None:
        return None
    if version < 1:
        return f"op version {version} is not a valid version (versions start at 1)"
    if version > newest:
        return (f"op version {version} is newer than any LiteRT runs "
                f"(LiteRT 2.3 executes {name} versions 1-{newest}); mrq cannot compare it with a peer")
    return None
