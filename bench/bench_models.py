"""Whole-model time: the simulator vs ONNX Runtime (ONNX models) and LiteRT default / reference
kernels (TFLite models), batch 1 and 256, all on 1 thread, plus the simulator on 2 threads at
batch 256 and the compiled program (simulator.compiled) at batch 1. Not part of the test suite (it lives outside ``tests/``):

    python -m pytest bench/bench_models.py --benchmark-json=/tmp/models.json -q
    python bench/ratios.py /tmp/models.json

Every figure of one table comes from the same run. The simulator runs each model with the
profile that makes it bit-exact with that peer (``onnxruntime-cpu`` / ``litert-default``).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import zoo  # noqa: E402

BATCHES = (1, 256)


def _bench(benchmark, fn, batch, slow=False):
    if slow:  # seconds per call: a few rounds are enough for a stable minimum
        benchmark.pedantic(fn, rounds=3, iterations=1)
    else:
        benchmark(fn)


def _need(name):
    if not zoo.available(name):
        pytest.skip(f"{zoo.MODELS[name][0]} is not on this machine")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(zoo.MODELS))
def test_mrq(benchmark, model, batch):
    _need(model)
    benchmark.group = f"model {model} batch {batch}"
    benchmark.extra_info.update(engine="mrq", threads=1, model=model, batch=batch)
    _bench(benchmark, zoo.mrq(model, batch, threads=1), batch)


@pytest.mark.parametrize("model", list(zoo.MODELS))
def test_mrq_compiled(benchmark, model):
    _need(model)
    benchmark.group = f"model {model} batch 1"
    benchmark.extra_info.update(engine="mrq_compiled", threads=1, model=model, batch=1)
    try:
        fn = zoo.mrq_compiled(model, 1)
    except RuntimeError as err:
        pytest.skip(str(err))
    _bench(benchmark, fn, 1)


@pytest.mark.parametrize("model", list(zoo.MODELS))
def test_mrq_2_threads(benchmark, model):
    _need(model)
    benchmark.group = f"model {model} batch 256"
    benchmark.extra_info.update(engine="mrq", threads=2, model=model, batch=256)
    _bench(benchmark, zoo.mrq(model, 256, threads=2), 256)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", [m for m in zoo.MODELS if not zoo.is_tflite(m)])
def test_ort(benchmark, model, batch):
    pytest.importorskip("onnxruntime")
    _need(model)
    benchmark.group = f"model {model} batch {batch}"
    benchmark.extra_info.update(engine="ort", threads=1, model=model, batch=batch)
    _bench(benchmark, zoo.ort(model, batch), batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", [m for m in zoo.MODELS if zoo.is_tflite(m)])
def test_litert(benchmark, model, batch):
    pytest.importorskip("ai_edge_litert")
    _need(model)
    benchmark.group = f"model {model} batch {batch}"
    benchmark.extra_info.update(engine="litert", threads=1, model=model, batch=batch)
    _bench(benchmark, zoo.litert(model, batch), batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", [m for m in zoo.MODELS if zoo.is_tflite(m)])
def test_litert_ref(benchmark, model, batch):
    pytest.importorskip("ai_edge_litert")
    _need(model)
    benchmark.group = f"model {model} batch {batch}"
    benchmark.extra_info.update(engine="litert_ref", threads=1, model=model, batch=batch)
    _bench(benchmark, zoo.litert(model, batch, reference=True), batch, slow=batch > 1)
