"""A CI-sized part of the zoo of third-party TFLite models (/work/shared/models/tflite_zoo, see its
README): models that use the shape, movement and selection ops (int8 and int16), inputs without a
batch dimension, run-time TRANSPOSE_CONV output shapes and unnamed tensors, simulated under
``tflite-int8`` and ``litert-default`` and compared with LiteRT in every tensor. The full table is
``bench/tflite_zoo_parity.py``."""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tflite_helpers import compare_rows, litert, litert_run

ZOO = os.environ.get("MRQ_TFLITE_ZOO", "/work/shared/models/tflite_zoo")
MODELS = (
    "coral/split_concat.tflite",                                   # SPLIT, CONCATENATION (uint8)
    # uint8 per-tensor convolutions: LiteRT's legacy float32 scale product in the multiplier
    # (mrq.multipliers.tflite_product_multiplier; 22,781 elements differed with a float64 one)
    "coral/mobilenet_v1_0.75_192_quant.tflite",
    "tfmicro/custom_model_rf_keras.tflite",                        # SHAPE/STRIDED_SLICE/PACK folded
    "tflm_integration_int16/tfmicro_seanet/strided_slice_strided_slice0.tflite",   # int16
    "tflm_integration_int16/tfmicro_seanet/strided_slice_strided_slice33.tflite",
    "tflm_integration_int16/tfmicro_seanet/sub_sub0.tflite",       # a [64] input without batch dim
    "tflm_integration_int16/tfmicro_seanet/transpose_conv_transpose_conv0.tflite",  # fed out shape
    "tflm_integration_int16/tfmicro_seanet/quantize_quantize0.tflite",   # unnamed tensors
)
INPUTS = 2

pytestmark = [pytest.mark.skipif(not os.path.isdir(ZOO), reason=f"no model zoo at {ZOO}"),
              pytest.mark.skipif(litert() is None, reason="ai_edge_litert is not installed")]


@pytest.mark.parametrize("profile", ("tflite-int8", "litert-default"))
@pytest.mark.parametrize("model", MODELS)
def test_zoo_model_is_bit_exact(model, profile):
    import tflite_zoo_parity as zoo

    from mrq.tflite_import import import_tflite
    path = os.path.join(ZOO, model)
    graph = import_tflite(path)
    feeds = zoo.make_inputs(graph, INPUTS)
    trace = zoo.simulate(graph, profile, feeds)
    rows = litert_run(path, feeds, profile, preserve_all=True,
                      fixed=graph.meta.get("tflite_fixed_inputs"))
    counts = compare_rows({k: v for k, v in trace.items() if np.ndim(v) and len(v) == INPUTS}, rows)
    assert set(graph.outputs) <= set(counts)
    assert len(counts) >= 2, "the intermediates were not compared"
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"


def _mul_model(n: int, dtype: str, out_scale: float) -> bytes:
    from tflite_builder import ModelBuilder
    b = ModelBuilder()
    x = b.tensor("a", [1, n], dtype, scale=0.0235294122248888, zero_point=0)
    y = b.tensor("b", [1, n], dtype, scale=0.00390625, zero_point=0)
    o = b.tensor("o", [1, n], dtype, scale=out_scale, zero_point=0)
    b.op("MUL", [x, y], [o])
    return b.finish(inputs=[x, y], outputs=[o])


@pytest.mark.parametrize("dtype,n,profile", [("uint8", 13, "tflite-int8"), ("int8", 37, "tflite-int8"),
                                             ("uint8", 16, "litert-default"),
                                             ("int8", 32, "litert-default")])
@pytest.mark.parametrize("out_scale", (2.972124106613584e-35, 1e-20, 1e-12))  # 2**102, 2**54, 2**27
def test_mul_with_a_large_multiplier_matches_litert(dtype, n, profile, out_scale):
    # Coral's traffic_model: MUL outputs with scales near 1e-35. LiteRT's reference shifts by the
    # count modulo 32 (x86 shl); the optimized kernel's vector lanes give 0. XNNPACK refuses all
    # three scale ratios (>= 256): litert-default runs LiteRT's own kernel
    from tflite_helpers import mrq_run
    model = _mul_model(n, dtype, out_scale)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(n)
    feeds = {k: rng.integers(info.min, info.max + 1, (3, n)).astype(dtype) for k in "ab"}
    _, outs, _ = mrq_run(model, profile, feeds)
    rows = litert_run(model, feeds, profile, preserve_all=False)
    np.testing.assert_array_equal(outs["o"], np.concatenate([r["o"] for r in rows]))


def test_mul_shift_beyond_30_with_a_scalar_tail_is_refused_on_the_optimized_kernel():
    from tflite_helpers import mrq_run

    from mrq.errors import UnsupportedOpError
    feeds = {k: np.zeros((1, 13), np.uint8) for k in "ab"}
    with pytest.raises(UnsupportedOpError, match="multiple of 8 elements"):
        mrq_run(_mul_model(13, "uint8", 1e-20), "litert-default", feeds)
