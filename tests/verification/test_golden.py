"""`mrq golden`: every tensor of the integer execution, in .npy / $readmemh hex / .bin / C headers,
with a manifest a testbench can read."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import DEMO_MODEL, cnn_inputs, demo_feeds, make_cnn, run_cli
from mrq.golden import (GoldenError, compute_golden, golden_feeds, hex_words, load_golden,
                        make_golden, parse_hex, write_golden)
from mrq.errors import MrqError


def _manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)


def test_manifest_lists_every_tensor_with_files_and_hashes(demo_golden):
    m = _manifest(demo_golden)
    assert m["format"] == "mrq-golden" and m["profile"] == "nna-sym8" and m["batch"] == 2
    roles = {t["role"] for t in m["tensors"]}
    assert {"input", "weight", "bias", "weight_zero_point", "rq_multiplier", "rq_shift", "accumulator",
            "activation", "output"} <= roles
    for t in m["tensors"]:
        assert set(t["files"]) == {"npy", "hex", "bin", "c"}
        for kind, rel in t["files"].items():
            data = open(os.path.join(demo_golden, rel), "rb").read()
            assert hashlib.sha256(data).hexdigest() == t["sha256"][kind]
        arr = np.load(os.path.join(demo_golden, t["files"]["npy"]))
        assert list(arr.shape) == t["shape"] and arr.dtype.name == t["dtype"]
    # layer order: inputs first, then every program step in execution order
    names = [entry["name"] for entry in m["layers"]]
    assert names[0] == "" and names[1:] == ["input_QuantizeLinear", "stem_conv", "dw_conv", "pw_conv",
                                            "residual_add", "maxpool", "down_conv", "gap", "flatten",
                                            "classifier", "dequantize_logits"]
    conv = next(e for e in m["layers"] if e["name"] == "stem_conv")
    for key in ("rq_mode", "rq_rounding", "out_zero_point", "input_zero_point", "acc_bits", "out_min", "out_max"):
        assert key in conv["params"]
    assert conv["params"]["rq_multiplier"]["tensor"] == "stem_conv.rq_multiplier"
    assert conv["accumulator"] == "stem_conv.acc"
    assert conv["accumulator_analysis"]["safe_bits"] <= 32
    # scales and zero points of activations and per-channel weights
    act = next(t for t in m["tensors"] if t["name"] == "r1_QuantizeLinear_Output")
    assert act["zero_point"] == [-128] and act["scale"][0] > 0 and act["layout"] == "NCHW"
    w = next(t for t in m["tensors"] if t["name"] == "stem_conv.weight")
    assert len(w["scale"]) == 16 and w["quant_axis"] == 0 and w["layout"] == "OIHW"


def test_hex_files_are_readmemh_at_the_profile_width(demo_golden):
    m = _manifest(demo_golden)
    for t in m["tensors"]:
        lines = open(os.path.join(demo_golden, t["files"]["hex"])).read().splitlines()
        assert lines[0].startswith("//")
        body = lines[1:]
        assert len(body) == int(np.prod(t["shape"]))
        assert all(len(w) == t["hex_digits"] for w in body)
        arr = np.load(os.path.join(demo_golden, t["files"]["npy"]))
        values, unknown = parse_hex("\n".join(lines), t["bits"], t["signed"], t["encoding"] == "ieee754-binary32")
        assert not unknown.any()
        if arr.dtype.kind == "f":
            assert np.array_equal(values.view(np.uint32), arr.reshape(-1).astype(np.float32).view(np.uint32))
        else:
            assert np.array_equal(values, arr.reshape(-1).astype(np.int64))
    by = {t["name"]: t for t in m["tensors"]}
    assert by["stem_conv.weight"]["bits"] == 8 and by["stem_conv.weight"]["hex_digits"] == 2
    assert by["stem_conv.acc"]["bits"] == 32 and by["stem_conv.bias"]["bits"] == 32
    assert by["r1_QuantizeLinear_Output"]["bits"] == 8
    # -1 as 8-bit two's complement
    assert hex_words(np.array([-1, 127, -128], np.int8), 8) == ["ff", "7f", "80"]
    assert hex_words(np.array([-1], np.int32), 20) == ["fffff"]


def test_bin_files_are_raw_little_endian(demo_golden):
    m = _manifest(demo_golden)
    for t in m["tensors"]:
        arr = np.load(os.path.join(demo_golden, t["files"]["npy"]))
        raw = np.fromfile(os.path.join(demo_golden, t["files"]["bin"]), dtype=np.dtype(t["dtype"]).newbyteorder("<"))
        assert np.array_equal(raw, arr.reshape(-1))


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([4, 8, 12, 16, 20, 24, 32, 48, 64]), signed=st.booleans(), data=st.data())
def test_hex_round_trip(bits, signed, data):
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        bits = min(bits, 63)
        lo, hi = 0, (1 << bits) - 1
    vals = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=20))
    arr = np.array(vals, np.int64)
    text = "// header\n" + "\n".join(hex_words(arr, bits))
    back, unknown = parse_hex(text, bits, signed)
    assert not unknown.any() and np.array_equal(back, arr)


def test_parse_hex_accepts_comments_underscores_and_marks_x():
    vals, unk = parse_hex("// c\nff_ff /* blk */ 0001\n\nxx  // tail\n", 16, True)
    assert vals.tolist()[:2] == [-1, 1] and unk.tolist() == [False, False, True]
    # a wider word (hardware writing 32-bit words for 8-bit data) is read at its own width
    vals, _ = parse_hex("ffffffff\n0000007f\n", 8, True)
    assert vals.tolist() == [-1, 127]


def _parsed(parse, *args):
    try:
        values, unknown = parse(*args)
    except MrqError as err:
        return str(err)
    return values.dtype, values.tobytes(), unknown.tolist()


# words as an RTL dump writes them, and the ways a hand-edited or corrupted one goes wrong
_HEX_WORD = st.one_of(
    st.text("0123456789abcdefABCDEF", min_size=1, max_size=17),
    st.text("0123456789abcdef_", min_size=1, max_size=8),
    st.text("0123456789abcdefxzXZ?_g-+", min_size=1, max_size=18),
    st.sampled_from(["ffffffffffffffff", "8000000000000000", "7fffffffffffffff", "_", "é1"]))


@settings(max_examples=300, deadline=None)
@given(words=st.lists(_HEX_WORD, max_size=12), bits=st.sampled_from([4, 8, 16, 24, 32, 48, 64]),
       signed=st.booleans(), is_float=st.booleans())
def test_parse_hex_equals_its_word_by_word_reference(words, bits, signed, is_float):
    from mrq.golden import hex_file_words, parse_hex_words
    text = "// dump\n" + "\n".join(" ".join(words[i:i + 3]) for i in range(0, len(words), 3))
    if is_float:
        bits = 32
    assert hex_file_words(text) == words
    assert _parsed(parse_hex, text, bits, signed, is_float) == \
        _parsed(lambda *a: parse_hex_words(words, *a), bits, signed, is_float)


def test_accumulators_are_the_values_before_requantization(demo_golden):
    """Requantizing each golden accumulator with the golden parameters gives the golden output,
    and the accumulator equals an independent integer convolution of the golden input."""
    from simulator.kernels.quant import requantize
    from mrq.float_ref import conv2d_nchw
    gs = load_golden(str(demo_golden))
    for entry in gs.layers():
        if entry.get("kind") not in ("conv", "gemm"):
            continue
        p = {k: (gs.tensors[v["tensor"]].array if isinstance(v, dict) else v) for k, v in entry["params"].items()}
        acc = gs.tensors[entry["accumulator"]].array
        out = gs.tensors[entry["outputs"][0]].array
        q, _ = requantize(acc.astype(np.int64), rq_mode=p["rq_mode"], rq_multiplier=p["rq_multiplier"],
                          rq_shift=p["rq_shift"], rq_rounding=p["rq_rounding"], out_zero_point=p["out_zero_point"],
                          out_min=p["out_min"], out_max=p["out_max"], out_dtype=p["out_dtype"],
                          channel_axis=p["channel_axis"])
        assert np.array_equal(q, out), entry["name"]
        x = gs.tensors[entry["inputs"][0]].array.astype(np.float64) - p["input_zero_point"]
        w = p["weight"].astype(np.float64) - p["weight_zero_point"].reshape((-1,) + (1,) * (p["weight"].ndim - 1)) \
            if entry["kind"] == "conv" else p["weight"].astype(np.float64) - p["weight_zero_point"][None, :]
        if entry["kind"] == "conv":
            ref = conv2d_nchw(x, w, p["bias"].astype(np.float64), p["strides"], p["pads"], p["dilations"], p["group"])
        else:
            ref = x @ w + p["bias"]
        assert np.array_equal(acc.astype(np.int64), ref.astype(np.int64)), entry["name"]


def test_cli_golden_writes_a_set_and_prints_the_accumulator_table(tmp_path):
    np.savez(tmp_path / "in.npz", **demo_feeds(1))
    out = tmp_path / "g"
    r = run_cli("golden", DEMO_MODEL, "--profile", "tflite-int8", "--inputs", tmp_path / "in.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "accumulators" in r.stdout and "stem_conv" in r.stdout
    assert (out / "manifest.json").is_file() and not (out / "c").exists()
    # a second run refuses to overwrite, --force replaces
    r = run_cli("golden", DEMO_MODEL, "--profile", "tflite-int8", "--inputs", tmp_path / "in.npz", "-o", out)
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("golden", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", tmp_path / "in.npz", "-o", out,
                "--force", "-q")
    assert r.returncode == 0 and _manifest(out)["profile"] == "nna-sym8"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".mrq-golden")]


def test_cli_golden_user_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", wrong=np.zeros((1, 3, 16, 16), np.float32))
    r = run_cli("golden", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", tmp_path / "bad.npz", "-o", tmp_path / "g")
    assert r.returncode == 2 and "input" in r.stderr and not (tmp_path / "g").exists()
    r = run_cli("golden", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", tmp_path / "bad.npz",
                "-o", tmp_path / "g", "--weight-layout", "OIXW")
    assert r.returncode == 2 and "OIHW" in r.stderr


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    g = make_cnn(0)
    gs = compute_golden(g, "nna-sym8", cnn_inputs(g))
    import mrq.golden as golden_mod

    def boom(t, shape):
        raise OSError("disk full")
    monkeypatch.setattr(golden_mod, "_c_prefix", boom)
    with pytest.raises(OSError):
        write_golden(gs, str(tmp_path / "g"), c_headers=True)
    assert os.listdir(tmp_path) == []


def test_layout_option_transposes_activations_and_records_it(gen_golden_nhwc):
    gs = load_golden(str(gen_golden_nhwc))
    a1 = gs.tensors["a1"]
    assert a1.layout == "NHWC" and a1.model_layout == "NCHW" and tuple(a1.perm) == (0, 2, 3, 1)
    assert a1.array.shape == (2, 8, 8, 8)
    w = gs.tensors["conv1.weight"]
    assert w.layout == "OHWI" and w.array.shape == (8, 3, 3, 3)
    acc = gs.tensors["conv1.acc"]
    assert acc.layout == "NHWC"
    # the same execution in the model's own layout, transposed, gives the same values
    g = make_cnn(1)
    plain = compute_golden(g, "tflite-int8", cnn_inputs(g))
    assert np.array_equal(plain.tensors["a1"].array.transpose(0, 2, 3, 1), a1.array)
    assert np.array_equal(plain.tensors["conv1.weight"].array.transpose(0, 2, 3, 1), w.array)
    # the stored inputs feed the model back in its own layout
    assert np.array_equal(golden_feeds(gs)["x"], cnn_inputs(g)["x"])


def test_generated_nhwc_model_and_uint8(tmp_path):
    g = make_cnn(2, layout="NHWC", act_dtype="uint8")
    gs = make_golden(g, "onnxruntime-cpu", cnn_inputs(g), str(tmp_path / "g"))
    assert gs.tensors["a1"].layout == "NHWC" and gs.tensors["a1"].perm is None
    assert gs.tensors["a1"].signed is False and gs.tensors["a1"].bits == 8
    text = open(tmp_path / "g" / "tensors" / (gs.tensors["a1"].file + ".hex")).read()
    assert "8-bit unsigned" in text.splitlines()[0]


def test_integer_inputs_are_fed_as_codes(tmp_path):
    g = make_cnn(3)
    codes = np.random.default_rng(0).integers(-128, 128, (2, 3, 8, 8)).astype(np.int8)
    gs = make_golden(g, "nna-sym8", {"x": codes}, str(tmp_path / "g"))
    assert gs.manifest["feeds"] == {"x": "xq"}
    assert np.array_equal(golden_feeds(load_golden(str(tmp_path / "g")))["x"], codes)


def test_corrupted_golden_set_is_detected(demo_golden, tmp_path):
    d = shutil.copytree(demo_golden, tmp_path / "g")
    t = _manifest(d)["tensors"][5]
    arr = np.load(d / t["files"]["npy"])
    arr.reshape(-1)[0] ^= 1
    np.save(d / t["files"]["npy"], arr)
    with pytest.raises(GoldenError, match="sha256"):
        load_golden(str(d))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_headers_compile_and_hold_the_values(demo_golden, tmp_path):
    src = tmp_path / "t.c"
    src.write_text('#include <stdio.h>\n#include "mrq_golden.h"\n'
                   "int main(void){long long s=0; for(int i=0;i<MRQ_02_STEM_CONV_ACC_SIZE;i++) s+=mrq_02_stem_conv_acc[i];"
                   'printf("%lld %d\\n", s, (int)MRQ_L02_STEM_CONV_OUT_ZERO_POINT); return 0;}\n')
    exe = tmp_path / "t"
    r = subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-I", str(demo_golden / "c"), str(src), "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()
    gs = load_golden(str(demo_golden))
    assert int(out[0]) == int(gs.tensors["stem_conv.acc"].array.astype(np.int64).sum())
    assert int(out[1]) == -128


def test_write_refuses_a_non_empty_directory(tmp_path):
    g = make_cnn(0)
    gs = compute_golden(g, "nna-sym8", cnn_inputs(g))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "keep.txt").write_text("x")
    with pytest.raises(MrqError, match="not empty"):
        write_golden(gs, str(tmp_path / "g"))
    assert (tmp_path / "g" / "keep.txt").exists()


@pytest.mark.parametrize("bits", [1, 4, 7, 8, 16, 20, 32, 48, 63, 64])
def test_hex_lines_equal_hex_words(bits):
    """The array-arithmetic hex writer (golden sets of whole data sets) gives hex_words' words."""
    from mrq.golden import hex_lines
    rng = np.random.default_rng(bits)
    lo, hi = -(2 ** 63), 2 ** 63 - 1
    extremes = np.array([0, 1, -1, lo, hi, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 2 ** bits - 1
                         if bits < 64 else hi], np.int64)
    values = np.concatenate([extremes, rng.integers(lo, hi, 200, dtype=np.int64, endpoint=True)])
    assert hex_lines(values, bits).decode("ascii") == "".join(w + "\n" for w in hex_words(values, bits))
    floats = np.concatenate([np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38], np.float32),
                             rng.standard_normal(50).astype(np.float32)])
    assert hex_lines(floats, bits, is_float=True).decode("ascii") == \
        "".join(w + "\n" for w in hex_words(floats, bits, is_float=True))
    assert hex_lines(values[:0], bits) == b""
