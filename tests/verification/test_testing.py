"""`mrq.testing.assert_matches_golden` for users' own pytest suites."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DEMO_MODEL, cnn_inputs, make_cnn
from mrq.golden import make_golden
from mrq.testing import GoldenMismatch, assert_matches_golden


def test_passes_on_the_model_it_was_made_from(demo_golden, gen_golden_nhwc):
    assert_matches_golden(DEMO_MODEL, "nna-sym8", str(demo_golden))
    assert_matches_golden(make_cnn(1), "tflite-int8", str(gen_golden_nhwc))   # NHWC/OHWI golden set


def test_fails_with_the_first_mismatch_layer_and_coordinates(tmp_path):
    g = make_cnn(4)
    make_golden(g, "nna-sym8", cnn_inputs(g), str(tmp_path / "g"))
    changed = g.copy()
    w = changed.tensors["dwconv_w"].data
    w[5, 0, 1, 2] = np.int8(-w[5, 0, 1, 2] if w[5, 0, 1, 2] != 0 else 9)    # one weight of channel 5
    with pytest.raises(AssertionError) as info:
        assert_matches_golden(changed, "nna-sym8", str(tmp_path / "g"))
    msg = str(info.value)
    assert "first differing layer #3 dwconv" in msg and "'dwconv.weight' [weight]" in msg
    assert "(5, 0, 1, 2) in OIHW (o=5, i=0, h=1, w=2)" in msg
    assert isinstance(info.value, GoldenMismatch) and not info.value.report.ok


def test_fails_for_a_different_profile_arithmetic(demo_golden):
    with pytest.raises(AssertionError, match="made with profile 'nna-sym8'.*tflite-int8"):
        assert_matches_golden(DEMO_MODEL, "tflite-int8", str(demo_golden))


def test_fails_when_the_structure_changed(tmp_path):
    g = make_cnn(5)
    make_golden(g, "nna-sym8", cnn_inputs(g), str(tmp_path / "g"))
    renamed = g.copy()
    renamed.node("fc").name = "classifier"
    with pytest.raises(AssertionError, match="no longer has the golden set's structure"):
        assert_matches_golden(renamed, "nna-sym8", str(tmp_path / "g"))
