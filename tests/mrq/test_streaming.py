"""Data sets of any size in bounded memory: lazy inputs (.npz, .npy, shard directories), fidelity
accumulated batch by batch with the numbers of one in-memory run, outputs streamed to disk."""
import json
import math
import os
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from mrq.datasets import open_inputs, open_labels
from mrq.demo import DEMO_MODEL, demo_inputs
from mrq.errors import InputDataError
from mrq.fileio import stream_npz
from mrq.metrics import ExactSum


def mrq(*args):
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], capture_output=True, text=True, check=False)


def cli(*args):
    """In this process (tests/cli_in_process.py): what a subprocess would return."""
    from cli_in_process import mrq_in_process
    return mrq_in_process(*args)


def _assert_user_error(r, out, *needles):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".mrq-tmp-")]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stored", "deflated", "fortran", "npy", "shards"])
def test_every_format_reads_the_same_rows(tmp_path, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((13, 3, 5)).astype(np.float32)
    y = rng.integers(-128, 127, (13, 2), dtype=np.int8)
    path = tmp_path / "in.npz"
    if kind == "stored":
        np.savez(path, x=x, y=y)
    elif kind == "deflated":
        np.savez_compressed(path, x=x, y=y)
    elif kind == "fortran":
        np.savez(path, x=np.asfortranarray(x), y=y)
    elif kind == "npy":
        path = tmp_path / "in.npy"
        np.save(path, x)
    else:
        path = tmp_path / "shards"
        path.mkdir()
        for i, (lo, hi) in enumerate([(0, 4), (4, 5), (5, 13)]):
            np.savez(path / f"s{i}.npz", x=x[lo:hi], y=y[lo:hi])
        (path / "README.txt").write_text("not a shard")
    src = open_inputs(str(path))
    want = {"x": x, "y": y} if kind != "npy" else {None: x}
    assert src.names == tuple(want) and src.num_samples == 13
    for batch_size in (1, 3, 7, 13, 20):
        batches = list(src.batches(batch_size))
        assert [len(next(iter(b.values()))) for b in batches] == \
            [min(batch_size, 13 - lo) for lo in range(0, 13, batch_size)]
        for name, arr in want.items():
            np.testing.assert_array_equal(np.concatenate([b[name] for b in batches]), arr)
    # a window that starts and ends inside shards, read after the stream went past it
    for name, arr in want.items():
        np.testing.assert_array_equal(np.concatenate([b[name] for b in src.batches(2, 3, 11)]), arr[3:11])
    src.close()


def test_a_large_stored_member_is_read_a_batch_at_a_time(tmp_path):
    """Streaming a 200 MB uncompressed member allocates about one batch, not the member, and
    keeps no map of it (mapped pages would count in the resident memory)."""
    path = tmp_path / "big.npz"
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                    shape=(50_000, 1000))
    big[::997] = 1.5
    big.flush()
    del big
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.write(tmp_path / "big.npy", "input.npy")
    (tmp_path / "big.npy").unlink()
    src = open_inputs(str(path))
    tracemalloc.start()
    try:
        ones = 0
        for batch in src.batches(500):
            ones += int(np.count_nonzero(batch["input"][:, 0] == 1.5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ones == len(range(0, 50_000, 997))
    assert peak < 8 << 20, peak            # one batch is 2 MB; the member is 200 MB
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            assert str(path) not in maps.read()


def test_a_deflated_member_is_decompressed_as_a_stream(tmp_path):
    path = tmp_path / "big.npz"
    x = np.zeros((4000, 4000), np.float32)  # 64 MB, compresses to almost nothing
    x[::7, 3] = 2.0
    np.savez_compressed(path, input=x)
    del x
    src = open_inputs(str(path))
    tracemalloc.start()
    try:
        twos = sum(int(np.count_nonzero(b["input"] == 2.0)) for b in src.batches(100))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert twos == len(range(0, 4000, 7))
    assert peak < 24 << 20, peak           # a 1.6 MB batch and the 16 MB skip buffer at most


@pytest.mark.parametrize("change,needle", [
    ({"x": np.zeros((2, 3), np.float32), "z": np.zeros((2, 1), np.int8)}, "'z'"),
    ({"x": np.zeros((2, 4), np.float32), "y": np.zeros((2, 1), np.int8)}, "float32[4]"),
    ({"x": np.zeros((2, 3), np.float64), "y": np.zeros((2, 1), np.int8)}, "float64[3]"),
])
def test_shards_must_agree(tmp_path, change, needle):
    d = tmp_path / "shards"
    d.mkdir()
    np.savez(d / "a.npz", x=np.zeros((2, 3), np.float32), y=np.zeros((2, 1), np.int8))
    np.savez(d / "b.npz", **change)
    with pytest.raises(InputDataError) as err:
        open_inputs(str(d))
    msg = str(err.value)
    assert "b.npz" in msg and "a.npz" in msg and needle in msg and "\n" not in msg


def test_declared_sizes_are_checked_before_reading(tmp_path):
    def npy(name, shape, data_bytes):
        path = tmp_path / name
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": shape})
            f.write(b"\0" * data_bytes)
        return path
    assert open_inputs(str(npy("ok.npy", (10, 4), 160))).num_samples == 10
    for path, needle in ((npy("lying.npy", (99, 4), 160), "declares"),
                         (npy("huge.npy", (10**15, 4), 160), "cap")):
        with pytest.raises(InputDataError, match=needle):
            open_inputs(str(path))
    npz = tmp_path / "trunc.npz"
    np.savez(npz, x=np.zeros((1000, 10), np.float32))
    npz.write_bytes(npz.read_bytes()[:20_000])
    with pytest.raises(InputDataError, match="trunc.npz"):
        open_inputs(str(npz))
    objects = tmp_path / "obj.npz"
    np.savez(objects, x=np.array([object()] * 2, dtype=object))
    with pytest.raises(InputDataError, match="object"):
        open_inputs(str(objects))


def test_labels(tmp_path):
    np.save(tmp_path / "l.npy", np.arange(5, dtype=np.uint8).reshape(5, 1))
    np.testing.assert_array_equal(open_labels(str(tmp_path / "l.npy"), 5), np.arange(5))
    with pytest.raises(InputDataError, match="5 labels for 6 input samples"):
        open_labels(str(tmp_path / "l.npy"), 6)
    np.save(tmp_path / "f.npy", np.zeros(5, np.float32))
    with pytest.raises(InputDataError, match="integer"):
        open_labels(str(tmp_path / "f.npy"), 5)


# --------------------------------------------------------------------------------------------
# Accumulating and writing
# --------------------------------------------------------------------------------------------


def test_exact_sum_is_independent_of_grouping():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(3000) * 10.0 ** rng.integers(-12, 12, 3000)
    want = math.fsum(values.tolist())
    for size in (1, 7, 500):
        acc = ExactSum()
        for lo in range(0, len(values), size):
            acc.add(values[lo:lo + size])
        assert acc.value == want


def test_stream_npz_writes_what_savez_writes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"b": rng.standard_normal((9, 2, 3)).astype(np.float32),
              "a": rng.integers(0, 255, (9, 4), dtype=np.uint8)}
    with stream_npz(str(tmp_path / "s.npz")) as writer:
        for lo in range(0, 9, 4):
            writer.append({k: v[lo:lo + 4] for k, v in arrays.items()})
    np.savez(tmp_path / "r.npz", **arrays)
    with np.load(tmp_path / "s.npz") as got, np.load(tmp_path / "r.npz") as ref:
        assert got.files == ref.files == ["b", "a"]
        for k in ref.files:
            assert got[k].dtype == ref[k].dtype
            np.testing.assert_array_equal(got[k], ref[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz", "s.npz"]


def test_streamed_fidelity_equals_one_in_memory_run(tmp_path):
    """Batch sizes 1/3/7 on 11 samples: the same outputs, counters and per-layer numbers as
    one batch of all 11 (SQNR and LSB errors to the last bits the float reference's matrix
    products allow; their blocking depends on the batch size)."""
    from mrq.api import simulate
    from mrq.pipeline import Pipeline

    feeds = demo_inputs(11, seed=5)
    np.savez(tmp_path / "in.npz", **feeds)
    whole = simulate(DEMO_MODEL, "nna-sym8-acc20", feeds, fidelity=True)
    assert sum(r.out_saturated for r in whole.layers) > 0      # the counters are exercised
    pipe = Pipeline(DEMO_MODEL, "nna-sym8-acc20", layout="native")
    for batch_size in (1, 3, 7):
        outputs = []
        res = pipe.stream(open_inputs(str(tmp_path / "in.npz")), batch_size,
                          sink=lambda out, trace, into=outputs: into.append(out))
        for name, arr in whole.outputs.items():
            np.testing.assert_array_equal(np.concatenate([o[name] for o in outputs]), arr)
        assert len(res.layers) == len(whole.layers)
        for got, want in zip(res.layers, whole.layers):
            g, w = got.as_dict(), want.as_dict()
            for key in ("sqnr_db", "max_err_lsb"):
                assert g.pop(key) == pytest.approx(w.pop(key), rel=1e-12), (batch_size, got.layer, key)
            assert g == w, batch_size
        for step, counters in whole.stats.items():
            for key, value in counters.items():
                assert res.stats[step][key] == value


def test_cli_shards_npy_and_labels(tmp_path):
    """`mrq sim` on a shard directory (batch 3) and on the same samples as one .npz: identical
    output files (every intermediate) and fidelity reports; a bare .npy, outputs only: the same
    outputs; labels give the accuracy, and labels of the wrong length are one line, exit 2."""
    feeds = demo_inputs(7, seed=8)
    x = feeds["input"]
    np.savez(tmp_path / "all.npz", **feeds)
    np.save(tmp_path / "all.npy", x)
    shards = tmp_path / "shards"
    shards.mkdir()
    np.savez(shards / "p0.npz", input=x[:4])
    np.save(shards / "p1.npy", x[4:])          # a bare .npy among named shards is refused below
    labels = np.arange(7) % 10
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "o.npz"
    _assert_user_error(mrq("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(shards),
                           "-o", str(out)), out, "p1.npy", "p0.npz")
    np.savez(shards / "p1.npz", input=x[4:])
    (shards / "p1.npy").unlink()
    reports = {}
    for name, inputs, extra in (("npz", tmp_path / "all.npz", []),
                                ("shards", shards, ["--batch-size", "3"])):
        r = cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(inputs),
                "-o", str(tmp_path / f"{name}.npz"), "--json", str(tmp_path / f"{name}.json"),
                "--labels", str(tmp_path / "labels.npy"), "--dump-all", *extra)
        assert r.returncode == 0, r.stderr
        assert "top-1 accuracy on 7 labelled inputs" in r.stdout
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    r = cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(tmp_path / "all.npy"),
            "-o", str(tmp_path / "npy.npz"), "--labels", str(tmp_path / "labels.npy"),
            "--no-fidelity", "--batch-size", "2")
    assert r.returncode == 0 and "top-1 accuracy on 7 labelled inputs" in r.stdout, r.stderr
    with np.load(tmp_path / "npz.npz") as a, np.load(tmp_path / "shards.npz") as b, \
            np.load(tmp_path / "npy.npz") as c:
        assert a.files == b.files and len(a.files) > 5 and c.files == ["logits"]
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a["logits"], c["logits"])
        logits = a["logits"]
    want_acc = float(np.mean(np.argmax(logits, axis=1) == labels))
    floats = ("sqnr_db", "max_err_lsb")
    for rep in reports.values():
        assert rep["accuracy"] == pytest.approx(want_acc) and rep["samples"] == 7
        assert len(rep["layers"]) == len(reports["npz"]["layers"])
        for got, want in zip(rep["layers"], reports["npz"]["layers"]):
            for key in floats:
                assert got[key] == pytest.approx(want[key], rel=1e-12)
            assert {k: v for k, v in got.items() if k not in floats} == \
                {k: v for k, v in want.items() if k not in floats}
    np.save(tmp_path / "short.npy", labels[:6])
    _assert_user_error(cli("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", str(shards),
                           "-o", str(out), "--labels", str(tmp_path / "short.npy")),
                       out, "6 labels for 7 input samples")


def _cli(capsys, *args):
    """``mrq ARGS`` in this process (no interpreter start-up): (exit code, stderr lines)."""
    from mrq.cli import main
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def _tree(root) -> dict:
    """Every file under ``root`` by relative path: bytes, and the manifest without the
    provenance (its date and command line differ from run to run)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name == "manifest.json":
                with open(path) as f:
                    data = json.load(f)
                data.pop("provenance")
                out[rel] = data
            else:
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def test_golden_from_shards_in_batches_equals_one_batch_of_an_npz(tmp_path, capsys):
    """`mrq golden` writes batch by batch (hex, C arrays split across batches, .npy headers for
    the whole set, merged statistics), and the folder is byte for byte the one-batch folder."""
    x = demo_inputs(5, seed=1)["input"]
    np.savez(tmp_path / "x.npz", input=x)
    shards = tmp_path / "d"
    shards.mkdir()
    np.save(shards / "a.npy", x[:2])
    np.save(shards / "b.npy", x[2:])
    common = ["--profile", "nna-sym8", "--layout", "NHWC", "--c-headers", "--bin", "-q"]
    assert _cli(capsys, "golden", DEMO_MODEL, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "one",
                "--batch-size", 5, *common)[0] == 0
    assert _cli(capsys, "golden", DEMO_MODEL, "--inputs", shards, "-o", tmp_path / "many",
                "--batch-size", 2, *common)[0] == 0
    one, many = _tree(tmp_path / "one"), _tree(tmp_path / "many")
    assert sorted(one) == sorted(many)
    for rel in one:
        assert one[rel] == many[rel], rel
    manifest = one["manifest.json"]
    assert manifest["batch"] == 5
    # the streamed .npy files hold the whole set
    first = next(t for t in manifest["tensors"] if t["role"] == "input")
    got = np.load(tmp_path / "many" / first["files"]["npy"], allow_pickle=False)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2).astype(np.float32), x)


def test_calibration_from_shards_equals_the_npz_and_is_limited(tmp_path, capsys):
    """`mrq requant --calib` reads shards like the .npz, and --calib-limit N reads only the
    first N samples (the model equals the one calibrated on those N)."""
    x = demo_inputs(6, seed=2)["input"]
    np.savez(tmp_path / "first4.npz", input=x[:4])
    shards = tmp_path / "d"
    shards.mkdir()
    for i, (lo, hi) in enumerate([(0, 3), (3, 6)]):
        np.savez(shards / f"s{i}.npz", input=x[lo:hi])
    outs = {}
    for name, calib, extra in (("npz", tmp_path / "first4.npz", []),
                               ("shards", shards, ["--calib-limit", 4])):
        out = tmp_path / f"{name}.onnx"
        code, err = _cli(capsys, "requant", DEMO_MODEL, "--profile", "nna-sym8-pow2", "-o", out,
                         "--calib", calib, *extra)
        assert code == 0, err
        outs[name] = out.read_bytes()
        if name == "shards":
            assert any("first 4 of its 6 samples" in line for line in err), err
    assert outs["npz"] == outs["shards"]
    code, err = _cli(capsys, "requant", DEMO_MODEL, "--profile", "nna-sym8", "-o", tmp_path / "z.onnx",
                     "--calib", shards, "--calib-limit", 0)
    assert code == 2 and len(err) == 1 and "--calib-limit" in err[0]


def test_check_inputs_in_batches_equals_one_batch(tmp_path, capsys):
    """`mrq check --inputs` reads shards a batch at a time; the observed accumulator columns
    (extremes, element and overflow counts) equal one batch of every sample."""
    from mrq.commands.check import check_model
    feeds = demo_inputs(5, seed=3)
    shards = tmp_path / "d"
    shards.mkdir()
    np.savez(shards / "a.npz", input=feeds["input"][:3])
    np.savez(shards / "b.npz", input=feeds["input"][3:])
    code, err = _cli(capsys, "check", DEMO_MODEL, "--profile", "nna-sym8-acc20", "--inputs", shards,
                     "--batch-size", 2, "--json", tmp_path / "c.json", "-q")
    assert code in (0, 1), err
    with open(tmp_path / "c.json") as f:
        streamed = json.load(f)["accumulators"]
    _, rows, _ = check_model(DEMO_MODEL, "nna-sym8-acc20", feeds)
    assert streamed == json.loads(json.dumps([r.as_dict() for r in rows]))
    assert all(r["observed_max"] is not None and r["n_elements"] > 0 for r in streamed)


@pytest.mark.parametrize("command", ["golden", "check", "requant"])
def test_shards_with_other_input_names_are_one_line_errors(tmp_path, capsys, command):
    x = demo_inputs(2, seed=4)["input"]
    shards = tmp_path / "d"
    shards.mkdir()
    np.savez(shards / "a.npz", input=x[:1])
    np.savez(shards / "b.npz", other=x[1:])
    out = tmp_path / "out"
    args = {"golden": ["--inputs", shards, "-o", out], "check": ["--inputs", shards],
            "requant": ["--calib", shards, "-o", out]}[command]
    code, err = _cli(capsys, command, DEMO_MODEL, "--profile", "nna-sym8", *args)
    assert code == 2 and len(err) == 1 and "every shard needs the same names" in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["d"]
