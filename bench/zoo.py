"""The benchmark models and the engines that run them, shared by the benchmark files.

Each model has a profile that makes the simulator bit-exact with its peer runtime
(``onnxruntime-cpu`` for the ONNX models, ``litert-default`` for the TFLite ones) and a batch of
real or random inputs. Engines: ``mrq`` (the simulator, 1 or 2 threads), ``mrq_compiled`` (the whole program as one
jitted function, batch 1), ``ort`` (ONNX Runtime
CPU provider), ``litert`` (LiteRT's default interpreter = XNNPACK) and ``litert_ref`` (LiteRT's
``BUILTIN_REF`` reference kernels). Each engine function returns a zero-argument callable that
runs one inference of the whole batch, after one warm-up call.
"""
from __future__ import annotations

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# The MLPerf Tiny models are not shipped in the repository (licence): the shared copy on this
# machine, or wherever MRQ_MLPERF_TINY points (the tests use the same variable).
SHARED = os.environ.get("MRQ_MLPERF_TINY", "/work/shared/models/mlperf_tiny")
FMNIST = os.path.join(HERE, "..", "tests", "data", "fmnist_test_1000.npz")

MODELS = {
    # name: (path, profile)
    "mnv2-qat": (os.path.join(HERE, "models", "fmnist_mnv2_qat_qdq.onnx"), "onnxruntime-cpu"),
    "mnv2-ort": (os.path.join(HERE, "models", "fmnist_mnv2_ort_qdq.onnx"), "onnxruntime-cpu"),
    "resnet8": (os.path.join(SHARED, "pretrainedResnet_quant.tflite"), "litert-default"),
    "kws": (os.path.join(SHARED, "kws_ref_model.tflite"), "litert-default"),
    "ad01": (os.path.join(SHARED, "ad01_int8.tflite"), "litert-default"),
}


def available(name: str) -> bool:
    return os.path.exists(MODELS[name][0])


def is_tflite(name: str) -> bool:
    return MODELS[name][0].endswith(".tflite")


def inputs(name: str, batch: int) -> dict:
    """``{input name: array}`` for ``batch`` inputs: Fashion-MNIST test images (tiled past the
    1000 stored) for the ONNX models, random int8 codes for the TFLite models."""
    path = MODELS[name][0]
    if not is_tflite(name):
        import onnx

        model = onnx.load(path, load_external_data=False)
        input_name = model.graph.input[0].name
        with np.load(FMNIST, allow_pickle=False) as d:
            images = d["images"]
        idx = np.arange(batch) % len(images)
        return {input_name: (images[idx].astype(np.float32) / 255.0).reshape(batch, 1, 28, 28)}
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=path).get_input_details()[0]
    shape = [batch] + [int(d) for d in detail["shape"][1:]]
    info = np.iinfo(detail["dtype"])
    codes = np.random.default_rng(0).integers(info.min, info.max + 1, shape)
    return {detail["name"]: codes.astype(detail["dtype"])}


def _warm(fn):
    fn()
    return fn


def mrq(name: str, batch: int, threads: int = 1):
    from mrq.api import bind_inputs, prepare
    from simulator.run import run

    path, profile = MODELS[name]
    program, bound = bind_inputs(prepare(path, profile), inputs(name, batch))
    return _warm(lambda: run(program, bound, threads=threads))


def mrq_compiled(name: str, batch: int):
    """The simulator with the whole program compiled into one jitted function
    (:mod:`simulator.compiled`), on 1 thread."""
    import numba

    from mrq.api import bind_inputs, prepare
    from simulator.compiled import compile_program, last_reason

    path, profile = MODELS[name]
    program, bound = bind_inputs(prepare(path, profile), inputs(name, batch))
    numba.set_num_threads(1)
    compiled = compile_program(program, bound)
    if compiled is None:
        raise RuntimeError(f"{name} does not compile: {last_reason()}")
    return _warm(lambda: compiled.run(bound))


def ort(name: str, batch: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(MODELS[name][0], options,
                                           providers=["CPUExecutionProvider"])
    feeds = inputs(name, batch)
    return _warm(lambda: session.run(None, feeds))


def litert(name: str, batch: int, reference: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF} if reference else {}
    interpreter = Interpreter(model_path=MODELS[name][0], num_threads=1, **kwargs)
    detail = interpreter.get_input_details()[0]
    (array,) = inputs(name, batch).values()
    interpreter.resize_tensor_input(detail["index"], list(array.shape))
    interpreter.allocate_tensors()

    def invoke():
        interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()

    return _warm(invoke)
