"""`mrq verify` diagnoses, mutation-tested: a golden set's own tensors are mutated the way a
faulty design would get them wrong (one flipped bit, a stuck data line, a wrong product in the
MAC array, a wrong requantization), and the diagnosis must name the fault; the inputs that feed
the first bad element must be the layer's real receptive field. Golden manifests carry the
provenance block."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from cli_in_process import mrq_in_process

from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.golden import load_golden, make_golden
from mrq.verify import (
    ActualTensor,
    _to_model,
    bit_flip_diagnosis,
    requantize_accumulator,
    verify_arrays,
)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """A golden set of the demo model under nna-sym8 (fixed-point multiplier + shift)."""
    out = tmp_path_factory.mktemp("golden") / "nna"
    make_golden(DEMO_MODEL, "nna-sym8", demo_inputs(1), str(out))
    return str(out), load_golden(str(out))


def _entry(gs, layer):
    return next(e for e in gs.layers() if e.get("name") == layer)


def _dump(gs, changed: dict, names=None) -> dict:
    """golden tensor name -> ActualTensor: golden copies with ``changed`` substituted; only
    ``names`` when given (a partial dump)."""
    out = {}
    for name, t in gs.tensors.items():
        if names is not None and name not in names:
            continue
        arr = changed.get(name, t.array)
        out[name] = ActualTensor(np.array(arr, copy=True), None, f"<{name}>", "npy")
    return out


def _flip(t, flat_index: int, bit: int) -> np.ndarray:
    """``t``'s stored array with ``bit`` of element ``flat_index`` flipped at the tensor's width."""
    arr = t.array.copy()
    v = int(arr.reshape(-1)[flat_index])
    u = (v & ((1 << t.bits) - 1)) ^ (1 << bit)
    if t.signed and u >= 1 << (t.bits - 1):
        u -= 1 << t.bits
    arr.reshape(-1)[flat_index] = u
    return arr


# --- the requantization stage is reproduced exactly from the manifest -----------------------


def test_requantize_accumulator_reproduces_every_golden_output(golden):
    """The MAC-vs-requantization split rests on recomputing the epilogue from the manifest: it
    must give every conv/gemm output of the golden set bit for bit."""
    _, gs = golden
    n = 0
    for e in gs.layers():
        if not e.get("accumulator"):
            continue
        acc_t, out_t = gs.tensors[e["accumulator"]], gs.tensors[e["outputs"][0]]
        got = requantize_accumulator(gs, e, _to_model(acc_t.array, acc_t))
        np.testing.assert_array_equal(got, _to_model(out_t.array, out_t))
        n += 1
    assert n == 5


# --- bit flips ------------------------------------------------------------------------------


@pytest.mark.parametrize(("tensor", "flat", "bit"), [
    ("r2_QuantizeLinear_Output", 77, 7),    # the sign bit of an int8 activation
    ("r2_QuantizeLinear_Output", 300, 3),
    ("pw_conv.acc", 123, 19),               # a 32-bit accumulator
    ("pw_conv.acc", 5, 31),
])
def test_single_bit_flip_is_named_with_its_bit(golden, tensor, flat, bit):
    _, gs = golden
    t = gs.tensors[tensor]
    report = verify_arrays(gs, _dump(gs, {tensor: _flip(t, flat, bit)}))
    fm = report.first_mismatch
    assert fm.name == tensor and fm.n_diff == 1
    assert fm.first_index == tuple(int(i) for i in np.unravel_index(flat, t.array.shape))
    text = " ".join(fm.diagnosis)
    assert f"exactly one bit, bit {bit} of the {t.bits}-bit word" in text, text


def test_same_bit_in_many_elements_and_stuck_at_one(golden):
    _, gs = golden
    name = "r2_QuantizeLinear_Output"
    t = gs.tensors[name]
    g = t.array
    words = g.astype(np.int64) & 0xFF
    # bit 4 stuck at 1: every element whose bit 4 should be 0 reads 1
    stuck = ((words | 0x10) ^ 0x80) - 0x80
    fm = verify_arrays(gs, _dump(gs, {name: stuck.astype(g.dtype)})).first_mismatch
    text = " ".join(fm.diagnosis)
    assert fm.n_diff == int(np.count_nonzero((words & 0x10) == 0)) > 1
    assert "same bit 4" in text and "stuck at 1" in text, text
    # the same bit flipped in only some of those elements: not called stuck
    some = g.copy()
    idx = np.flatnonzero((words.reshape(-1) & 0x10) == 0)[:5]
    some.reshape(-1)[idx] = (((words.reshape(-1)[idx] | 0x10) ^ 0x80) - 0x80).astype(g.dtype)
    text = " ".join(verify_arrays(gs, _dump(gs, {name: some})).first_mismatch.diagnosis)
    assert "same bit 4" in text and "stuck at" not in text and "intermittent" in text, text


def test_scattered_flips_and_a_non_flip_control(golden):
    _, gs = golden
    name = "down_conv.acc"
    t = gs.tensors[name]
    arr = _flip(t, 3, 2)
    arr = _flip(type(t)(**{**t.__dict__, "array": arr}), 40, 11)
    text = " ".join(verify_arrays(gs, _dump(gs, {name: arr})).first_mismatch.diagnosis)
    assert "each of the 2 differing elements differs in exactly one bit (bits 2, 11)" in text, text
    # +3 in one element: the XOR has more than one bit set, so it is no flip
    bad = t.array.copy()
    bad.reshape(-1)[7] += 3
    x = (int(bad.reshape(-1)[7]) ^ int(t.array.reshape(-1)[7])) & 0xFFFFFFFF
    assert x & (x - 1)                        # the control really is not a power of two
    text = " ".join(verify_arrays(gs, _dump(gs, {name: bad})).first_mismatch.diagnosis)
    assert "bit flip" not in text, text


def test_bit_flip_diagnosis_in_a_float_output(golden):
    _, gs = golden
    t = gs.tensors["logits"]
    a = t.array.copy()
    a.view(np.uint32).reshape(-1)[2] ^= np.uint32(1 << 30)
    differ = a.view(np.uint32) != t.array.view(np.uint32)
    assert "bit 30 of the IEEE-754 binary32 word" in bit_flip_diagnosis(t, a, differ)


# --- MAC fault vs requantization fault ------------------------------------------------------


def _pick(gs, layer):
    """An output element of ``layer`` whose value is not at the clamp (so +-1 changes show)."""
    e = _entry(gs, layer)
    out = gs.tensors[e["outputs"][0]].array.reshape(-1)
    lo, hi = e["params"]["out_min"], e["params"]["out_max"]
    return int(np.flatnonzero((out > lo + 2) & (out < hi - 2))[0])


def test_requantization_fault_when_the_accumulator_matches(golden):
    _, gs = golden
    e = _entry(gs, "dw_conv")
    out_name = e["outputs"][0]
    out = gs.tensors[out_name].array.copy()
    k = _pick(gs, "dw_conv")
    out.reshape(-1)[k] += 2
    report = verify_arrays(gs, _dump(gs, {out_name: out}))
    assert report.first_mismatch.name == out_name
    assert report.layer_diagnosis and report.layer_diagnosis[0].startswith("requantization fault"), \
        report.layer_diagnosis
    assert "requantization fault" in report.format()


def test_mac_fault_with_a_consistent_epilogue(golden):
    """A wrong product in the MAC array: the accumulator is off, and the hardware requantizes
    the wrong accumulator correctly."""
    _, gs = golden
    e = _entry(gs, "dw_conv")
    acc_t, out_t = gs.tensors[e["accumulator"]], gs.tensors[e["outputs"][0]]
    k = _pick(gs, "dw_conv")
    acc = acc_t.array.copy()
    acc.reshape(-1)[k] += 5000                       # one product of a weight and an input gone wrong
    out = requantize_accumulator(gs, e, _to_model(acc, acc_t)).astype(out_t.array.dtype)
    assert not np.array_equal(out, out_t.array)      # the fault does reach the output
    report = verify_arrays(gs, _dump(gs, {acc_t.name: acc, out_t.name: out}))
    assert report.first_mismatch.layer == "dw_conv"
    msg = report.layer_diagnosis[0]
    assert msg.startswith("MAC fault") and "1 of" in msg
    assert "exactly the requantization of the dumped accumulator" in msg, msg


def test_mac_fault_with_a_wrong_epilogue_too(golden):
    _, gs = golden
    e = _entry(gs, "classifier")
    acc_t, out_t = gs.tensors[e["accumulator"]], gs.tensors[e["outputs"][0]]
    acc = acc_t.array.copy()
    acc.reshape(-1)[0] -= 40000
    # the output kept at the golden values: not what the dumped accumulator requantizes to
    assert not np.array_equal(requantize_accumulator(gs, e, _to_model(acc, acc_t)), out_t.array)
    msg = verify_arrays(gs, _dump(gs, {acc_t.name: acc})).layer_diagnosis[0]
    assert msg.startswith("MAC fault") and "not the requantization of the dumped accumulator" in msg, msg


def test_no_accumulator_in_the_dump_says_what_to_dump(golden):
    _, gs = golden
    e = _entry(gs, "pw_conv")
    out_name = e["outputs"][0]
    out = gs.tensors[out_name].array.copy()
    out.reshape(-1)[_pick(gs, "pw_conv")] -= 1
    names = {n for n in gs.tensors if n != e["accumulator"]}
    msg = verify_arrays(gs, _dump(gs, {out_name: out}, names)).layer_diagnosis[0]
    assert "no accumulator" in msg and gs.tensors[e["accumulator"]].file in msg


# --- the inputs that feed the first bad element ---------------------------------------------


def _window(o, stride, pad, dil, k, size):
    taps = [o * stride - pad + j * dil for j in range(k)]
    inside = [x for x in taps if 0 <= x < size]
    return min(inside), max(inside), len(taps) - len(inside)


@pytest.mark.parametrize(("layer", "flat"), [("stem_conv", 0), ("stem_conv", 1234), ("dw_conv", 517),
                                             ("down_conv", 101), ("pw_conv", 999)])
def test_fed_by_names_the_receptive_field(golden, layer, flat):
    _, gs = golden
    e = _entry(gs, layer)
    p = e["params"]
    out_t = gs.tensors[e["outputs"][0]]
    out = out_t.array.copy()
    out.reshape(-1)[flat] = out.reshape(-1)[flat] ^ 1
    report = verify_arrays(gs, _dump(gs, {out_t.name: out}))
    n, c, h, w = np.unravel_index(flat, out.shape)
    x_name = e["inputs"][0]
    x_shape = gs.tensors[x_name].array.shape
    o_ch, i_g, kh, kw = gs.tensors[f"{layer}.weight"].array.shape
    g = c // (o_ch // p["group"])
    h0, h1, pad_h = _window(h, p["strides"][0], p["pads"][0], p["dilations"][0], kh, x_shape[2])
    w0, w1, pad_w = _window(w, p["strides"][1], p["pads"][1], p["dilations"][1], kw, x_shape[3])
    span = (lambda a, b: str(a) if a == b else f"{a}..{b}")
    want = (f"input {x_name!r}: n={n}, c={span(g * i_g, g * i_g + i_g - 1)}, h={span(h0, h1)}, "
            f"w={span(w0, w1)} in NCHW")
    assert report.fed_by[0].startswith(want), (report.fed_by, want)
    assert "matches in the dump" in report.fed_by[0]
    assert (f"{pad_h} row(s) and {pad_w} column(s) of it in the padding" in report.fed_by[0]) == bool(pad_h or pad_w)
    assert report.fed_by[1].startswith(f"weights {layer}.weight[{c}, :, :, :]")
    assert report.fed_by[2].startswith(f"bias {layer}.bias[{c}]")


def test_fed_by_for_gemm_and_elementwise(golden):
    _, gs = golden
    e = _entry(gs, "classifier")
    out_t = gs.tensors[e["outputs"][0]]
    out = out_t.array.copy()
    out[0, 7] ^= 1
    fed = verify_arrays(gs, _dump(gs, {out_t.name: out})).fed_by
    assert fed[0] == f"input {e['inputs'][0]!r}: row n=0, every k (matches in the dump)"
    assert fed[1].startswith("weights classifier.weight[:, 7]")
    e = _entry(gs, "residual_add")
    out_t = gs.tensors[e["outputs"][0]]
    out = out_t.array.copy()
    out[0, 3, 4, 5] ^= 2
    fed = verify_arrays(gs, _dump(gs, {out_t.name: out})).fed_by
    assert fed == [f"input {e['inputs'][0]!r}[0, 3, 4, 5] (matches in the dump)",
                   f"input {e['inputs'][1]!r}[0, 3, 4, 5] (matches in the dump)"]


def test_a_bad_weight_is_named_among_the_inputs(golden):
    """A weight dumped wrong: the first bad tensor of the layer is that parameter, and the
    inputs of the layer's first bad output element name it as differing."""
    _, gs = golden
    e = _entry(gs, "dw_conv")
    w_t, out_t = gs.tensors["dw_conv.weight"], gs.tensors[e["outputs"][0]]
    w = w_t.array.copy()
    w[5, 0, 1, 1] ^= 8
    out = out_t.array.copy()
    k = int(np.ravel_multi_index((0, 5, 7, 7), out.shape))
    out.reshape(-1)[k] ^= 1
    report = verify_arrays(gs, _dump(gs, {w_t.name: w, out_t.name: out}))
    assert report.first_mismatch.name == "dw_conv.weight"
    assert report.fed_by[0].startswith(f"input {e['inputs'][0]!r}: n=0, c=5, h=6..8, w=6..8 in NCHW")
    assert report.fed_by[1] == "weights dw_conv.weight[5, :, :, :] (OIHW) (that tensor differs in the dump too)"


# --- the command line, and provenance in the manifest ----------------------------------------


def test_cli_prints_the_diagnoses_and_manifest_has_provenance(golden, tmp_path):
    path, gs = golden
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    prov = manifest["provenance"]
    assert prov["mrq_version"] and prov["date"].endswith("+00:00") and prov["command"].startswith("mrq")
    assert prov["model_sha256"] == manifest["model_sha256"] and len(prov["model_sha256"]) == 64
    assert [p["name"] for p in prov["profiles"]] == ["nna-sym8"] and len(prov["profiles"][0]["sha256"]) == 64
    dump = shutil.copytree(path, tmp_path / "dump")
    e = _entry(gs, "dw_conv")
    out_t = gs.tensors[e["outputs"][0]]
    out = out_t.array.copy()
    out.reshape(-1)[_pick(gs, "dw_conv")] ^= 1 << 4
    np.save(dump / "tensors" / f"{out_t.file}.npy", out)
    for ext in ("hex", "bin"):
        (dump / "tensors" / f"{out_t.file}.{ext}").unlink(missing_ok=True)
    r = mrq_in_process("verify", path, "--actual", str(dump), "--json", str(tmp_path / "v.json"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "requantization fault" in r.stdout and "bit 4 of the 8-bit word" in r.stdout
    assert "the first differing element is computed from:" in r.stdout
    rep = json.loads((tmp_path / "v.json").read_text())
    assert rep["layer_diagnosis"][0].startswith("requantization fault") and len(rep["fed_by"]) == 3
