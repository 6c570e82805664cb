"""A CI-sized part of the zoo of third-party TFLite models (/work/shared/models/tflite_zoo, see its
README): models that use the shape, movement and selection ops (int8 and int16), simulated under
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
    rows = litert_run(path, feeds, profile, preserve_all=True)
    counts = compare_rows({k: v for k, v in trace.items() if np.ndim(v) and len(v) == INPUTS}, rows)
    assert set(graph.outputs) <= set(counts)
    assert len(counts) >= 2, "the intermediates were not compared"
    bad = {k: v for k, v in counts.items() if v[0]}
    assert not bad, f"mismatching elements (tensor: [mismatches, elements]): {bad}"
