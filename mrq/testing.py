"""Helpers for users' own test suites.

    from mrq.testing import assert_matches_golden

    def test_firmware_model_is_unchanged():
        assert_matches_golden("model.onnx", "nna-sym8", "tests/golden/model_nna-sym8")

The golden set (``mrq golden``) holds the inputs it was made from; the model is simulated again
on them and every tensor of the golden set (weights, biases, requantization parameters,
accumulators, activations, outputs) must be equal bit for bit.
"""
from __future__ import annotations

from typing import Union

from mrq.golden import compute_golden, golden_feeds, load_golden
from mrq.verify import ActualTensor, verify_arrays


class GoldenMismatch(AssertionError):
    """Raised by :func:`assert_matches_golden`; ``report`` is the :class:`mrq.verify.VerifyReport`."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def assert_matches_golden(model, profile, golden_dir: str) -> None:
    """Fail (``AssertionError``) unless ``model`` simulated under ``profile`` reproduces the
    golden set in ``golden_dir`` exactly. The message names the first differing layer, the
    tensor, the first differing element's coordinates, the expected and actual values and a
    diagnosis. ``model``: a path or an :class:`mrq.ir.Graph`; ``profile``: a name, YAML path or
    :class:`mrq.hw_profile.HwProfile`."""
    gs = load_golden(golden_dir)
    lay = gs.manifest.get("layout", {})
    layout = lay.get("activations") if lay.get("activations") != lay.get("model_activations") else None
    wl = lay.get("conv_weights")
    fresh = compute_golden(model, profile, golden_feeds(gs), layout=layout,
                           weight_layout=None if wl in (None, "OIHW") else wl)
    actual = {name: ActualTensor(t.array, None, "simulation", "sim") for name, t in fresh.tensors.items()}
    report = verify_arrays(gs, actual, golden_dir, "simulation")
    if report.ok and not report.missing:
        return
    prof_note = ""
    if fresh.manifest["profile"] != gs.manifest.get("profile"):
        prof_note = (f" (note: the golden set was made with profile {gs.manifest.get('profile')!r}, "
                     f"this simulation uses {fresh.manifest['profile']!r})")
    fm = report.first_mismatch
    if fm is None:
        extra = sorted(set(fresh.tensors) - set(gs.tensors))
        raise GoldenMismatch(
            f"the model no longer has the golden set's structure{prof_note}: golden tensor(s) "
            f"{', '.join(report.missing[:5])}{' ...' if len(report.missing) > 5 else ''} are not produced"
            + (f"; new tensor(s): {', '.join(extra[:5])}" if extra else ""), report)
    msg = (f"mismatch with golden set {golden_dir}{prof_note}: first differing layer "
           f"#{fm.layer_index} {fm.layer or '(inputs)'}, tensor {fm.name!r} [{fm.role}]")
    if fm.first_index is not None:
        msg += (f": first differing element {fm.where()}, expected {fm.expected}, got {fm.actual}; "
                f"{fm.n_diff} of {fm.n_elements} element(s) differ (max |diff| {fm.max_abs_diff:g} LSB)")
    if fm.diagnosis:
        msg += "; " + "; ".join(fm.diagnosis)
    raise GoldenMismatch(msg, report)


__all__ = ["assert_matches_golden", "GoldenMismatch"]
