"""Fidelity against a float model (``mrq requant --float-model``).

The float model runs in its own runtime (LiteRT for .tflite, ONNX Runtime for .onnx) on the real
values of the calibration inputs. Every tensor name the quantized and float models share is
compared (TFLite converters keep most tensor names), and always the graph outputs.
"""
from __future__ import annotations

import os

import numpy as np

from mrq.api import simulate
from mrq.errors import ModelError
from mrq.metrics import sqnr_db
from mrq.passes.base import feeds_for_new_graph


def _real_inputs(graph, feeds: dict) -> dict:
    out = {}
    for name, value in feeds.items():
        t = graph.tensors[name]
        out[name] = t.qparams.dequantize(value).astype(np.float32) if value.dtype.kind in "iu" and t.qparams else value
    return out


def _run_float(path: str, real: dict, output_names: list) -> dict:
    if not os.path.exists(path):
        raise ModelError(f"{path}: no such file")
    if path.lower().endswith(".tflite"):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelError("--float-model with a .tflite file needs the LiteRT interpreter: pip install ai-edge-litert") from None
        interp = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
        details = interp.get_input_details()
        if len(details) != len(real):
            raise ModelError(f"{path}: {len(details)} inputs, the quantized model has {len(real)}")
        values = list(real.values())
        rows: dict = {}
        for i in range(len(values[0])):
            for d, v in zip(details, values):
                interp.resize_tensor_input(d["index"], (1,) + v.shape[1:])
            interp.allocate_tensors()
            for d, v in zip(details, values):
                interp.set_tensor(d["index"], v[i:i + 1].astype(d["dtype"]))
            interp.invoke()
            for t in interp.get_tensor_details():
                if t["dtype"] != np.float32:
                    continue
                try:
                    rows.setdefault(t["name"], []).append(interp.get_tensor(t["index"]).copy())
                except ValueError:
                    continue
            outs = interp.get_output_details()
            for name, d in zip(output_names, outs):
                rows.setdefault("__output__" + name, []).append(interp.get_tensor(d["index"]).copy())
        return {k: np.concatenate(v) for k, v in rows.items()}
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {i.name: v for i, v in zip(sess.get_inputs(), real.values())})
    return {"__output__" + q: o for q, o in zip(output_names, outs)}


def float_fidelity(float_path: str, graph, new, profile, calib: dict) -> dict:
    real = _real_inputs(graph, calib)
    reference = _run_float(float_path, real, graph.outputs)
    old = simulate(graph, "tflite-int8" if graph.meta.get("format") == "tflite" else "onnxruntime-cpu", calib,
                   fidelity=False, trace=True)
    fresh = simulate(new, profile, feeds_for_new_graph(graph, new, calib), fidelity=False, trace=True)
    rows = []
    for name in list(graph.tensors) + ["__output__" + o for o in graph.outputs]:
        tname = name.replace("__output__", "")
        ref = reference.get(name)
        if ref is None or tname not in old.trace or tname not in fresh.trace:
            continue
        q_old, q_new = graph.tensors[tname].qparams, new.tensors[tname].qparams
        a, b = old.trace[tname], fresh.trace[tname]
        a = q_old.dequantize(a) if q_old is not None else a.astype(np.float64)
        b = q_new.dequantize(b) if q_new is not None else b.astype(np.float64)
        if a.size != ref.size or b.size != ref.size:
            continue
        rows.append({"tensor": ("output " if name.startswith("__output__") else "") + tname,
                     "input_sqnr_db": sqnr_db(ref.reshape(-1).astype(np.float64), a.reshape(-1)),
                     "requant_sqnr_db": sqnr_db(ref.reshape(-1).astype(np.float64), b.reshape(-1))})
    return {"float_model": float_path, "tensors": rows}
