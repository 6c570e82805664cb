"""Shared helpers of the TFLite tests: run a model with LiteRT, with mrq, and compare traces."""
from __future__ import annotations

import os
import warnings

import numpy as np

MODELS_DIR = os.environ.get("MRQ_MLPERF_TINY", "/work/shared/models/mlperf_tiny")
MLPERF = {
    "ad01": "ad01_int8.tflite",
    "kws": "kws_ref_model.tflite",
    "resnet8": "pretrainedResnet_quant.tflite",
}
AD01_FEATURES = "normal_id_01_00000000_hist_librosa.bin"

# profile -> LiteRT op resolver it reproduces
PROFILE_RESOLVER = {"tflite-int8": "BUILTIN_REF", "litert-default": "AUTO"}
# profile -> flavour of tests/reference/tflite_ref.Interpreter
PROFILE_FLAVOUR = {"tflite-int8": "ref", "litert-default": "xnnpack"}


def litert():
    """The ai_edge_litert interpreter module, or None."""
    try:
        from ai_edge_litert import interpreter
    except Exception:  # pragma: no cover - optional dependency
        return None
    return interpreter


def model_path(key: str) -> str:
    return os.path.join(MODELS_DIR, MLPERF[key])


def litert_run(model, inputs: dict, profile: str, preserve_all: bool = True,
               fixed: dict | None = None) -> list[dict]:
    """Run ``model`` (path or bytes) once per batch row (LiteRT runs batch 1). Returns one dict
    per row: every readable tensor by name (all tensors with ``preserve_all``, else outputs).
    ``fixed``: inputs set to the same value for every row (a TRANSPOSE_CONV output shape)."""
    lib = litert()
    resolver = getattr(lib.OpResolverType, PROFILE_RESOLVER[profile])
    kw = dict(model_path=model) if isinstance(model, str) else dict(model_content=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = lib.Interpreter(experimental_op_resolver_type=resolver,
                             experimental_preserve_all_tensors=preserve_all, **kw)
    it.allocate_tensors()

    def name_of(d):   # an unnamed tensor is "tensor_<index>" in mrq's importer
        return d["name"] or f"tensor_{d['index']}"

    details = it.get_tensor_details()
    in_idx = {name_of(d): d["index"] for d in it.get_input_details()}
    in_shape = {name_of(d): tuple(d["shape"]) for d in it.get_input_details()}
    out_names = [name_of(d) for d in it.get_output_details()]
    n = len(next(iter(inputs.values())))
    rows = []
    for i in range(n):
        # every row is an independent sequence: recurrent state (LSTM/SVDF variable tensors)
        # starts from its reset value, as in mrq, not from the previous row's final state
        it.reset_all_variables()
        for name, arr in inputs.items():
            row_in = np.ascontiguousarray(arr[i:i + 1])
            if row_in.size == int(np.prod(in_shape[name])):
                row_in = row_in.reshape(in_shape[name])   # an input without a batch dimension
            it.set_tensor(in_idx[name], row_in)
        for name, value in (fixed or {}).items():
            it.set_tensor(in_idx[name], np.asarray(value, np.int32))
        it.invoke()
        row = {}
        for d in details:
            if not preserve_all and name_of(d) not in out_names:
                continue
            try:
                row[name_of(d)] = it.get_tensor(d["index"]).copy()
            except ValueError:
                pass
        rows.append(row)
    return rows


def mrq_run(model, profile, inputs: dict):
    """Import (path, bytes or Graph), lower with the TFLite-exact lowering, run with a trace.
    Returns ``(graph, outputs, trace)``."""
    from mrq.api import bind_inputs, resolve_profile
    from mrq.ir import Graph
    from mrq.lower import arithmetic_from_profile
    from mrq.lower import lower as lower_tflite
    from mrq.tflite_import import import_tflite, import_tflite_bytes
    from simulator.run import run

    if isinstance(model, Graph):
        graph = model
    elif isinstance(model, (bytes, bytearray)):
        graph = import_tflite_bytes(bytes(model))
    else:
        graph = import_tflite(model)
    prof = resolve_profile(profile) if isinstance(profile, str) else profile
    lowered = lower_tflite(graph, arithmetic_from_profile(prof))
    program, bound = bind_inputs(lowered, inputs)
    result = run(program, bound, trace=True)
    trace = dict(result.trace)
    trace.update(bound)
    return graph, result.outputs, trace


def compare_rows(trace: dict, rows: list[dict]) -> dict:
    """Per tensor name present in both: (mismatching elements, elements) over all rows."""
    counts = {}
    for i, row in enumerate(rows):
        for name, ref in row.items():
            if name not in trace:
                continue
            mine = trace[name][i:i + 1]
            if mine.size != ref.size:
                continue
            bad = int(np.count_nonzero(mine.reshape(ref.shape) != ref))
            c = counts.setdefault(name, [0, 0])
            c[0] += bad
            c[1] += ref.size
    return counts


def ad01_windows(n: int | None = None) -> np.ndarray:
    """The real AD01 features as float32 windows [N, 640]: 200 frames x 128 mel bins, a window
    of 5 frames sliding by one frame."""
    feats = np.fromfile(os.path.join(MODELS_DIR, AD01_FEATURES), dtype="<f4").reshape(-1, 128)
    wins = np.stack([feats[i:i + 5].reshape(-1) for i in range(len(feats) - 4)])
    return wins[:n] if n else wins


def quantize_tflite(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """TFLite reference QUANTIZE: ``round_half_away(f32(x / s)) + zp``, saturated to int8."""
    q = (np.asarray(x, np.float32) / np.float32(scale)).astype(np.float32).astype(np.float64)
    q = np.sign(q) * np.floor(np.abs(q) + 0.5) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)
