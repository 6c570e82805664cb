"""`mrq verify`: a verifier that cannot fail is worthless. Single-element mutations of copies of
golden sets must each be caught, at the right layer and coordinates, in every file format; layout
and rounding mistakes must be diagnosed as such."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import DEMO_MODEL, demo_feeds, run_cli
from mrq.golden import hex_words, load_golden, make_golden
from mrq.verify import verify_dirs

FORMATS = ("npy", "hex", "bin")


def manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)


def flipped_value(v, bits, signed, bit, is_float):
    if is_float:
        return np.array([np.float32(v)]).view(np.uint32)[0] ^ np.uint32(1 << bit)
    mask = (1 << bits) - 1
    u = (int(v) & mask) ^ (1 << bit)
    if signed and u >= 1 << (bits - 1):
        u -= 1 << bits
    return u


def flip(dump, meta, fmt, flat, bit):
    """Flip one bit of element ``flat`` of a tensor's file in format ``fmt`` (in place).
    Returns (old value, new value)."""
    path = os.path.join(dump, meta["files"][fmt])
    is_float = meta["encoding"] == "ieee754-binary32"
    if fmt == "hex":
        lines = open(path).read().splitlines()
        word = lines[1 + flat]
        old = int(word, 16)
        new = old ^ (1 << bit)
        lines[1 + flat] = format(new, f"0{len(word)}x")
        open(path, "w").write("\n".join(lines) + "\n")
        return old, new
    if fmt == "npy":
        arr = np.load(path)
    else:
        arr = np.fromfile(path, dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
    flat_arr = arr.reshape(-1)
    old = flat_arr[flat].item()
    new = flipped_value(old, meta["bits"], meta["signed"], bit, is_float)
    if is_float:
        flat_arr.view(np.uint32)[flat] = new
    else:
        flat_arr[flat] = new
    if fmt == "npy":
        np.save(path, arr)
    else:
        arr.tofile(path)
    return old, new


def _restore(src_dir, dump, meta, fmt):
    rel = meta["files"][fmt]
    shutil.copyfile(os.path.join(src_dir, rel), os.path.join(dump, rel))


def _pick_bit(meta, rng):
    if meta["encoding"] == "ieee754-binary32":
        return int(rng.integers(0, 23))
    return int(rng.integers(0, meta["bits"]))


def test_full_copy_matches_exit_0(demo_golden, tmp_path):
    dump = shutil.copytree(demo_golden, tmp_path / "dump")
    r = run_cli("verify", demo_golden, "--actual", dump, "--json", tmp_path / "rep.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: MATCH" in r.stdout
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["ok"] is True and rep["first_mismatch"] is None
    assert len(rep["checks"]) == 3 * len(manifest(demo_golden)["tensors"])


def test_every_tensor_single_flip_is_caught_with_its_coordinates(demo_golden, tmp_path):
    """For every tensor of the golden set (inputs, weights, biases, zero points, multipliers,
    shifts, accumulators, activations, outputs), flip one bit of one random element in one file
    format (rotating npy/hex/bin) of a copy: verify must fail, name that tensor's layer as the
    first differing layer, give the element's coordinates, the old and new values, and count
    exactly one differing element."""
    dump = shutil.copytree(demo_golden, tmp_path / "dump")
    metas = manifest(demo_golden)["tensors"]
    rng = np.random.default_rng(2024)
    caught = 0
    for k, meta in enumerate(metas):
        fmt = FORMATS[k % 3]
        size = int(np.prod(meta["shape"]))
        flat = int(rng.integers(0, size))
        bit = _pick_bit(meta, rng)
        flip(dump, meta, fmt, flat, bit)
        report = verify_dirs(str(demo_golden), str(dump))
        assert not report.ok, meta["name"]
        fm = report.first_mismatch
        assert fm.name == meta["name"] and fm.layer == meta["layer"] and fm.fmt == fmt
        assert fm.first_index == tuple(int(c) for c in np.unravel_index(flat, meta["shape"]))
        assert fm.n_diff == 1
        golden = np.load(os.path.join(demo_golden, meta["files"]["npy"])).reshape(-1)[flat].item()
        assert fm.expected == golden and fm.actual != golden
        assert [c.name for c in report.checks if not c.ok] == [meta["name"]]
        _restore(demo_golden, dump, meta, fmt)
        caught += 1
    assert caught == len(metas) >= 45
    assert verify_dirs(str(demo_golden), str(dump)).ok


@settings(max_examples=25, deadline=None)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_random_flips_in_an_accumulator(demo_golden, tmp_path_factory, fmt, data):
    meta = next(m for m in manifest(demo_golden)["tensors"] if m["name"] == "down_conv.acc")
    size = int(np.prod(meta["shape"]))
    flat = data.draw(st.integers(0, size - 1))
    bit = data.draw(st.integers(0, meta["bits"] - 1))
    dump = tmp_path_factory.mktemp("dump")
    os.makedirs(dump / "tensors")
    shutil.copyfile(demo_golden / meta["files"][fmt], dump / meta["files"][fmt])
    flip(dump, meta, fmt, flat, bit)
    report = verify_dirs(str(demo_golden), str(dump))
    fm = report.first_mismatch
    assert fm is not None and fm.name == "down_conv.acc" and fm.n_diff == 1
    assert fm.first_index == tuple(int(c) for c in np.unravel_index(flat, meta["shape"]))
    assert abs(fm.actual - fm.expected) == 1 << bit


def test_cli_reports_first_layer_and_coordinates(demo_golden, tmp_path):
    dump = shutil.copytree(demo_golden, tmp_path / "dump")
    metas = {m["name"]: m for m in manifest(demo_golden)["tensors"]}
    # two mutations: a later layer (classifier output, npy) and an earlier one (dw_conv acc, hex)
    flip(dump, metas["logits_QuantizeLinear_Output"], "npy", 3, 2)
    flip(dump, metas["dw_conv.acc"], "hex", 1 * 16 * 16 + 5 * 16 + 7, 4)   # n=0, c=1, h=5, w=7
    r = run_cli("verify", demo_golden, "--actual", dump)
    assert r.returncode == 1
    assert "first differing layer #3 dw_conv" in r.stdout
    assert "(0, 1, 5, 7) in NCHW (n=0, c=1, h=5, w=7)" in r.stdout
    assert "downstream" in r.stdout and "logits_QuantizeLinear_Output" in r.stdout
    assert "histogram (LSB)" in r.stdout
    assert "+9..+16: 1" in r.stdout or "-16..-9: 1" in r.stdout


def test_flip_in_a_transposed_golden_set_reports_both_coordinate_systems(gen_golden_nhwc, tmp_path):
    dump = shutil.copytree(gen_golden_nhwc, tmp_path / "dump")
    meta = next(m for m in manifest(gen_golden_nhwc)["tensors"] if m["name"] == "a1")
    assert meta["layout"] == "NHWC" and meta["shape"] == [2, 8, 8, 8]
    flat = int(np.ravel_multi_index((1, 2, 5, 3), meta["shape"]))     # n=1, h=2, w=5, c=3
    flip(dump, meta, "hex", flat, 0)
    report = verify_dirs(str(gen_golden_nhwc), str(dump))
    fm = report.first_mismatch
    assert fm.first_index == (1, 2, 5, 3) and fm.first_model_index == (1, 3, 2, 5)
    text = report.format()
    assert "n=1, h=2, w=5, c=3" in text and "(1, 3, 2, 5) in NCHW" in text


# ------------------------------------------------------------------ diagnoses


def _dump_with(tmp_path, golden_dir, name, array=None, fmt="npy", text=None):
    meta = next(m for m in manifest(golden_dir)["tensors"] if m["name"] == name)
    d = tmp_path / "dump"
    d.mkdir(exist_ok=True)
    stem = meta["file"]
    if fmt == "npy":
        np.save(d / f"{stem}.npy", array)
    elif fmt == "bin":
        np.ascontiguousarray(array).astype(np.dtype(meta["dtype"]).newbyteorder("<")).tofile(d / f"{stem}.bin")
    else:
        (d / f"{stem}.hex").write_text(text)
    return d, meta


def test_layout_mistake_nhwc_dump_of_nchw_golden(demo_golden, tmp_path):
    gs = load_golden(str(demo_golden))
    a = gs.tensors["r2_QuantizeLinear_Output"].array           # NCHW (2, 16, 16, 16)
    d, _ = _dump_with(tmp_path, demo_golden, "r2_QuantizeLinear_Output", a.transpose(0, 2, 3, 1), "bin")
    r = run_cli("verify", demo_golden, "--actual", d)
    assert r.returncode == 1
    assert "layout: the dump equals the golden tensor transposed" in r.stdout
    assert "the golden set is NCHW, the dump is in NHWC order" in r.stdout
    # an .npy that carries the NHWC shape (maxpool output, NCHW (2, 16, 8, 8))
    p = gs.tensors["a1_QuantizeLinear_Output__p1"]
    d2 = tmp_path / "d2"
    d2.mkdir()
    np.save(d2 / (p.file + ".npy"), p.array.transpose(0, 2, 3, 1))
    fm = verify_dirs(str(demo_golden), str(d2)).first_mismatch
    assert fm.name == p.name
    assert any("the .npy has shape [2, 8, 8, 16], the golden tensor [2, 16, 8, 8]" in x for x in fm.diagnosis)
    assert any("the golden set is NCHW, the dump is in NHWC order" in x for x in fm.diagnosis)


def test_layout_mistake_nchw_dump_of_nhwc_golden_and_transposed_weights(gen_golden_nhwc, tmp_path):
    gs = load_golden(str(gen_golden_nhwc))
    a = gs.tensors["a2"].array                                  # NHWC
    d, _ = _dump_with(tmp_path, gen_golden_nhwc, "a2", a.transpose(0, 3, 1, 2), "bin")
    fm = verify_dirs(str(gen_golden_nhwc), str(d)).first_mismatch
    assert fm.name == "a2" and "the golden set is NHWC, the dump is in NCHW order" in fm.diagnosis[0]
    w = gs.tensors["fc.weight"].array                           # [K, N]
    d2 = tmp_path / "d2"
    d2.mkdir()
    np.save(d2 / (gs.tensors["fc.weight"].file + ".npy"), np.ascontiguousarray(w.T))
    fm = verify_dirs(str(gen_golden_nhwc), str(d2)).first_mismatch
    assert "the golden set is KN, the dump is in NK order" in fm.diagnosis[-1]


def test_rounding_mismatch_is_diagnosed_as_ties(tmp_path):
    """Hardware that rounds ties to even where the profile rounds half up: every difference is
    +-1 at an exact tie, and the diagnosis names the dump's rounding."""
    from mrq.hw_profile import load_profile
    prof = load_profile("nna-sym8-pow2")
    variant = dataclasses.replace(prof, requant=dataclasses.replace(prof.requant, rounding="half_even"))
    feeds = demo_feeds(2)
    make_golden(DEMO_MODEL, prof, feeds, str(tmp_path / "g"))
    make_golden(DEMO_MODEL, variant, feeds, str(tmp_path / "rtl"))
    r = run_cli("verify", tmp_path / "g", "--actual", tmp_path / "rtl")
    assert r.returncode == 1
    assert "first differing layer #2 stem_conv" in r.stdout
    assert "rounding: all" in r.stdout and "every one is at a tie" in r.stdout
    assert "rounds ties with half_up" in r.stdout and "rounding half_even" in r.stdout
    assert "arithmetic:" not in r.stdout.split("per layer")[0]


def test_off_by_one_not_at_ties(demo_golden, tmp_path):
    gs = load_golden(str(demo_golden))
    a = gs.tensors["r1_QuantizeLinear_Output"].array.copy()
    acc = gs.tensors["stem_conv.acc"].array
    # +1 on a few unclamped elements: not ties (the requantized value was not x.5)
    idx = np.argwhere((a > -120) & (a < 120))[:5]
    for i in idx:
        a[tuple(i)] += 1
    d, _ = _dump_with(tmp_path, demo_golden, "r1_QuantizeLinear_Output", a)
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert fm.n_diff == 5 and "off-by-one" in fm.diagnosis[0] and "ties" in fm.diagnosis[0]
    assert acc.shape == a.shape


def test_garbage_offset_extension_unknown_and_size(demo_golden, tmp_path):
    gs = load_golden(str(demo_golden))
    t = gs.tensors["c3_QuantizeLinear_Output"]
    rng = np.random.default_rng(0)
    garbage = rng.integers(-128, 128, t.array.shape).astype(np.int8)
    (tmp_path / "a").mkdir()
    d, _ = _dump_with(tmp_path / "a", demo_golden, t.name, garbage)
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert fm.diagnosis[-1].startswith("arithmetic:")
    (tmp_path / "b").mkdir()
    d, _ = _dump_with(tmp_path / "b", demo_golden, "stem_conv.bias", gs.tensors["stem_conv.bias"].array + 3)
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert fm.diagnosis[0].startswith("offset: every element is off by +3")
    # hardware writing 32-bit zero-extended words for int8 data
    (tmp_path / "c").mkdir()
    words = [format(int(v) & 0xFF, "08x") for v in t.array.reshape(-1)]
    d, _ = _dump_with(tmp_path / "c", demo_golden, t.name, fmt="hex", text="\n".join(words))
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert fm.diagnosis[0].startswith("extension:")
    # never-written elements
    (tmp_path / "e").mkdir()
    words = hex_words(t.array, 8)
    words[10] = "xx"
    d, _ = _dump_with(tmp_path / "e", demo_golden, t.name, fmt="hex", text="\n".join(words))
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert fm.actual == "x" and fm.first_index == tuple(np.unravel_index(10, t.array.shape))
    assert any(x.startswith("unknown:") for x in fm.diagnosis)
    # a truncated dump
    (tmp_path / "f").mkdir()
    d, _ = _dump_with(tmp_path / "f", demo_golden, t.name, t.array.reshape(-1)[:100], "bin")
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert fm.status == "size" and "100 elements" in fm.diagnosis[0]


def test_accumulator_off_by_one_is_not_called_rounding(demo_golden, tmp_path):
    gs = load_golden(str(demo_golden))
    acc = gs.tensors["pw_conv.acc"].array.copy()
    acc[0, 0, 0, 0] -= 1
    d, _ = _dump_with(tmp_path, demo_golden, "pw_conv.acc", acc)
    fm = verify_dirs(str(demo_golden), str(d)).first_mismatch
    assert "does not round" in fm.diagnosis[0] and "rounding:" not in fm.diagnosis[0]


def test_partial_dumps_names_and_require_all(demo_golden, tmp_path):
    gs = load_golden(str(demo_golden))
    d = tmp_path / "dump"
    d.mkdir()
    # a dump file may be named after the tensor itself
    np.save(d / "logits_QuantizeLinear_Output.npy", gs.tensors["logits_QuantizeLinear_Output"].array)
    (d / "notes.hex").write_text("00\n")
    r = run_cli("verify", demo_golden, "--actual", d)
    assert r.returncode == 0 and "covering 1 of" in r.stdout and "matching no golden tensor (1)" in r.stdout
    r = run_cli("verify", demo_golden, "--actual", d, "--require-all", "-q")
    assert r.returncode == 1 and r.stdout.startswith("RESULT: FAIL")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("verify", demo_golden, "--actual", empty)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("verify", tmp_path / "nope", "--actual", d)
    assert r.returncode == 2 and "manifest.json" in r.stderr


@pytest.mark.parametrize("profile,dump_rounding,expect", [
    ("onnxruntime-cpu", "half_away", "rounding: all"),     # fp32 requantization, ties half-even in the golden
    ("nna-sym8", "half_even", "rounding: all"),            # fixed-point, ties half-up in the golden
    ("nna-sym8", "floor", "off-by-one: all"),              # truncation: +-1 at ties and elsewhere
])
def test_rounding_diagnosis_on_a_generated_model_with_ties(tmp_path, profile, dump_rounding, expect):
    """Power-of-two scales put many requantized values exactly on x.5: a dump from hardware with
    another rounding differs by +-1 there, and the diagnosis names the rounding that reproduces it."""
    from conftest import cnn_inputs, make_cnn
    from mrq.hw_profile import load_profile
    g = make_cnn(0, pow2=True)
    prof = load_profile(profile)
    hw = dataclasses.replace(prof, requant=dataclasses.replace(prof.requant, rounding=dump_rounding))
    make_golden(g, prof, cnn_inputs(g), str(tmp_path / "golden"))
    make_golden(g, hw, cnn_inputs(g), str(tmp_path / "rtl"))
    fm = verify_dirs(str(tmp_path / "golden"), str(tmp_path / "rtl")).first_mismatch
    assert fm.name == "a1" and fm.layer == "conv1"
    assert fm.diagnosis[0].startswith(expect)
    assert "rounding " in fm.diagnosis[0] and dump_rounding in fm.diagnosis[0].split("rounding ")[-1]
