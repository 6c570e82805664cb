"""No command destroys or silently corrupts a user's file (issue 19, issue 17 item 3).

Every case runs the CLI on real files in ``tmp_path`` and checks what is on disk afterwards: the
inputs unchanged, no partial target, no stranded temporary, modes, links and device nodes as they
were. Each refused case is one line on stderr with exit code 2. Refusals run ``mrq.cli.main`` in
this process; umask, file-size limits, signals, stdout and device outputs a real subprocess."""
import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from cli_in_process import mrq_in_process

from mrq.demo import DEMO_MODEL, demo_inputs

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tflite"))
from tflite_builder import ModelBuilder


def cli(*args):
    """In this process (see cli_in_process.py); what depends on the process itself (umask,
    resource limits, signals, stdout, device files) runs in a real one through :func:`mrq`."""
    return mrq_in_process(*args)


def mrq(*args, umask=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "mrq.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def refused(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def temporaries(folder):
    return sorted(p.name for p in pathlib.Path(folder).iterdir() if p.name.startswith(".mrq-tmp-"))


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(DEMO_MODEL, model)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, **demo_inputs(4))
    calib = tmp_path / "calib.npz"
    np.savez(calib, **demo_inputs(8))
    return dict(model=model, inputs=inputs, calib=calib, dir=tmp_path)


@pytest.fixture(scope="module")
def golden_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden")
    np.savez(d / "in.npz", **demo_inputs(2))
    r = cli("golden", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", d / "in.npz", "-o", d / "gs", "-q")
    assert r.returncode == 0, r.stderr
    return d / "gs"


def _snapshot(paths):
    return {p: p.read_bytes() for p in paths}


# ------------------------------------------------------------------ outputs equal to inputs

CASES = {
    "sim --out MODEL": lambda f: ["sim", f["model"], "--profile", "onnxruntime-cpu", "--inputs", f["inputs"],
                                  "--out", f["model"]],
    "sim --report MODEL": lambda f: ["sim", f["model"], "--profile", "onnxruntime-cpu", "--inputs", f["inputs"],
                                     "--out", f["dir"] / "o.npz", "--report", f["model"]],
    "sim --out INPUTS": lambda f: ["sim", f["model"], "--profile", "onnxruntime-cpu", "--inputs", f["inputs"],
                                   "--out", f["inputs"]],
    "sim --out LINK-TO-MODEL": lambda f: ["sim", f["model"], "--profile", "onnxruntime-cpu", "--inputs",
                                          f["inputs"], "--out", f["link"]],
    "check --json MODEL": lambda f: ["check", f["model"], "--profile", "onnxruntime-cpu", "--json", f["model"]],
    "compare -o MODEL": lambda f: ["compare", f["model"], "--profiles", "onnxruntime-cpu", "--inputs",
                                   f["inputs"], "-o", f["model"]],
    "compare --json INPUTS": lambda f: ["compare", f["model"], "--profiles", "onnxruntime-cpu", "--inputs",
                                        f["inputs"], "-o", f["dir"] / "r.html", "--json", f["inputs"]],
    "requant -o CALIB": lambda f: ["requant", f["model"], "--profile", "nna-sym8", "--calib", f["calib"],
                                   "-o", f["calib"]],
    "requant -o MODEL": lambda f: ["requant", f["model"], "--profile", "nna-sym8", "-o", f["model"]],
    "requant --report MODEL": lambda f: ["requant", f["model"], "--profile", "nna-sym8",
                                         "-o", f["dir"] / "new.onnx", "--report", f["model"]],
    "golden -o FOLDER-OF-MODEL --force": lambda f: ["golden", f["model"], "--profile", "onnxruntime-cpu",
                                                    "--inputs", f["inputs"], "-o", f["dir"], "--force"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_output_equal_to_an_input_is_refused(files, case):
    files["link"] = files["dir"] / "link.onnx"
    files["link"].symlink_to(files["model"])
    before = _snapshot([files["model"], files["inputs"], files["calib"]])
    listing = sorted(os.listdir(files["dir"]))
    refused(cli(*CASES[case](files)), "refusing")
    assert _snapshot(before) == before
    assert sorted(os.listdir(files["dir"])) == listing      # nothing written, nothing left behind


def test_two_outputs_on_one_path_are_refused(files):
    out = files["dir"] / "o.npz"
    refused(cli("sim", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"],
                "--out", out, "--report", out), "same output path")
    assert not out.exists()


def test_verify_report_into_the_golden_set_is_refused(golden_set):
    manifest = golden_set / "manifest.json"
    before = manifest.read_bytes()
    refused(cli("verify", golden_set, "--actual", golden_set / "tensors", "--json", manifest), "refusing")
    assert manifest.read_bytes() == before


# ------------------------------------------------------------------ golden --force


def test_golden_force_never_replaces_a_folder_of_user_files(files, tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    user_model = folder / "mine.onnx"
    shutil.copy(DEMO_MODEL, user_model)
    # the model is given from elsewhere: only the marker rule stands between --force and the folder
    refused(cli("golden", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"],
                "-o", folder, "--force"), "not written by mrq golden")
    assert user_model.read_bytes() == pathlib.Path(DEMO_MODEL).read_bytes()
    assert os.listdir(folder) == ["mine.onnx"]


def test_golden_force_replaces_its_own_set_but_not_one_holding_a_user_file(files, tmp_path):
    gs = tmp_path / "gs"
    args = ("golden", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"], "-o", gs, "-q")
    assert cli(*args).returncode == 0
    assert cli(*args, "--force").returncode == 0               # mrq's own set: replaced
    notes = gs / "tensors" / "my_notes.txt"
    notes.write_text("keep me")
    refused(cli(*args, "--force"), "my_notes.txt")
    assert notes.read_text() == "keep me"
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------ links, modes, devices


def test_symlink_output_writes_the_target_and_keeps_the_link(files, tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    r = cli("check", files["model"], "--profile", "onnxruntime-cpu", "--json", link, "-q")
    assert r.returncode in (0, 1), r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["profile"] == "onnxruntime-cpu"


def test_created_files_and_folders_follow_the_umask(files, tmp_path):
    out, report, gs = tmp_path / "o.npz", tmp_path / "r.json", tmp_path / "gs"
    r = mrq("sim", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"], "--out", out,
            "--report", report, "-q", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    r = mrq("golden", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"], "-o", gs,
            "-q", umask=0o022)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(gs.stat().st_mode) == 0o755
    assert stat.S_IMODE((gs / "tensors").stat().st_mode) == 0o755
    assert stat.S_IMODE((gs / "manifest.json").stat().st_mode) == 0o644


def _device(tmp_path):
    """A character device to write to: a private copy of /dev/null when we may mknod, else
    /dev/null itself."""
    path = tmp_path / "null"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return path
    except (PermissionError, OSError):
        return pathlib.Path("/dev/null")


def test_device_output_is_written_in_place_not_replaced(files, tmp_path):
    dev = _device(tmp_path)
    r = mrq("sim", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"], "--out", dev,
            "--report", dev, "-q")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(dev.stat().st_mode)
    assert temporaries(tmp_path) == []


def test_dash_writes_json_to_stdout(files):
    r = mrq("check", files["model"], "--profile", "onnxruntime-cpu", "--json", "-", "-q")
    assert r.returncode in (0, 1), r.stderr
    assert not (files["dir"] / "-").exists()
    assert '"profile": "onnxruntime-cpu"' in r.stdout


@pytest.mark.parametrize("kind", ["folder", "trailing slash", "too long", "missing parent"])
def test_output_path_problems_are_one_line_before_the_work(files, tmp_path, kind):
    out = {"folder": str(tmp_path), "trailing slash": str(tmp_path / "o.npz") + "/",
           "too long": str(tmp_path / ("x" * 300 + ".npz")), "missing parent": str(tmp_path / "no" / "o.npz")}[kind]
    listing = sorted(os.listdir(tmp_path))
    refused(cli("sim", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"], "--out", out))
    assert sorted(os.listdir(tmp_path)) == listing


def test_file_size_limit_is_one_line_and_leaves_nothing(files, tmp_path):
    import resource

    out = tmp_path / "big.npz"
    cmd = [sys.executable, "-m", "mrq.cli", "sim", str(files["model"]), "--profile", "onnxruntime-cpu",
           "--inputs", str(files["inputs"]), "--out", str(out), "--dump-all", "-q"]
    # a first run fills the JIT cache, so under the limit the only large write is the output
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    out.unlink()
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
    refused(subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit), "file too large")
    assert not out.exists() and temporaries(tmp_path) == []


# ------------------------------------------------------------------ interrupts

# The CLI, with np.savez made slow once it has written: the temporary then exists long enough for
# the signal to land inside the write, every time.
_SLOW_WRITE = """
import sys, time
import numpy as np
_savez = np.savez
def slow(file, *a, **k):
    _savez(file, *a, **k)
    file.flush()
    time.sleep(60)
np.savez = slow
from mrq.entry import main
sys.exit(main())
"""


def _start_slow_sim(files, out):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, "sim", str(files["model"]), "--profile",
                             "onnxruntime-cpu", "--inputs", str(files["inputs"]), "--out", str(out),
                             "--dump-all", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not temporaries(out.parent):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the write never started"
        time.sleep(0.02)
    return proc


def test_sigterm_during_a_write_leaves_no_partial_target_and_no_temporary(files, tmp_path):
    out = tmp_path / "big.npz"
    proc = _start_slow_sim(files, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, err
    assert not out.exists()
    assert temporaries(tmp_path) == []


def test_temporary_of_a_killed_run_is_swept_by_the_next_run(files, tmp_path):
    out = tmp_path / "big.npz"
    proc = _start_slow_sim(files, out)
    proc.kill()                                  # SIGKILL: no cleanup can run
    proc.communicate(timeout=60)
    assert not out.exists()
    assert len(temporaries(tmp_path)) == 1       # stranded, as after a crash
    # the next run in this process: the sweep goes by whether the temporary's process is alive
    # (mrq/fileio.py sweep_stale), once per folder and process, and this folder is new here
    r = cli("sim", files["model"], "--profile", "onnxruntime-cpu", "--inputs", files["inputs"],
            "--out", tmp_path / "other.npz", "-q")
    assert r.returncode == 0, r.stderr
    assert temporaries(tmp_path) == []


# ------------------------------------------------------------------ value truth


@pytest.mark.parametrize("bad", ["nan", "inf", "empty"])
def test_requant_refuses_calibration_without_finite_samples(files, tmp_path, bad):
    feeds = demo_inputs(4)
    name = next(iter(feeds))
    arr = feeds[name].astype(np.float32)
    arr = arr[:0] if bad == "empty" else np.full_like(arr, np.nan if bad == "nan" else np.inf)
    calib = tmp_path / "bad.npz"
    np.savez(calib, **{name: arr})
    out = tmp_path / "new.onnx"
    refused(cli("requant", files["model"], "--profile", "nna-sym8", "--calib", calib, "-o", out),
            "calibration input", "no samples" if bad == "empty" else "NaN or infinite")
    assert not out.exists()


def _tamper(golden_set, tmp_path, edit):
    gs = tmp_path / "gs"
    shutil.copytree(golden_set, gs)
    m = json.loads((gs / "manifest.json").read_text())
    edit(m, gs)
    (gs / "manifest.json").write_text(json.dumps(m))
    return gs


def test_verify_refuses_a_manifest_path_outside_the_golden_folder(golden_set, tmp_path):
    def edit(m, gs):
        t = m["tensors"][0]
        # a valid copy outside, with the right hash: only the confinement check can stop it
        shutil.copy(gs / t["files"]["npy"], tmp_path / "outside.npy")
        t["files"]["npy"] = "../outside.npy"
    gs = _tamper(golden_set, tmp_path, edit)
    refused(cli("verify", gs, "--actual", golden_set / "tensors"), "outside the golden folder")


@pytest.mark.parametrize("bits", [10 ** 6, -5, 0, "8", True])
def test_verify_refuses_a_manifest_with_an_impossible_width(golden_set, tmp_path, bits):
    def edit(m, gs):
        m["tensors"][0]["bits"] = bits
    gs = _tamper(golden_set, tmp_path, edit)
    refused(cli("verify", gs, "--actual", golden_set / "tensors"), "bits")


def _first_layer_with_params(m):
    return next(e for e in m["layers"] if e.get("params"))


MISTYPED = {
    "files": lambda m: m["tensors"][0].update(files="tensors/x.npy"),
    "shape": lambda m: m["tensors"][0].update(shape="abc"),
    "tensors": lambda m: m.update(tensors={"a": 1}),
    "layers": lambda m: m.update(layers="x"),
    "params.out_min": lambda m: _first_layer_with_params(m)["params"].update(out_min="low"),
    "params.rq_shift": lambda m: _first_layer_with_params(m)["params"].update(rq_shift={"values": ["x"]}),
}


@pytest.mark.parametrize("key", list(MISTYPED))
def test_verify_refuses_a_manifest_with_a_mistyped_key(golden_set, tmp_path, key):
    gs = _tamper(golden_set, tmp_path, lambda m, gs: MISTYPED[key](m))
    refused(cli("verify", gs, "--actual", golden_set / "tensors"), key.split(".")[-1])


def test_graph_without_outputs_is_refused_at_import(tmp_path):
    m = onnx.load(DEMO_MODEL)
    del m.graph.output[:]
    path = tmp_path / "no_outputs.onnx"
    onnx.save(m, path)
    refused(cli("check", path, "--profile", "onnxruntime-cpu"), "no outputs")


def _q(b, name, shape, data=None):
    return b.tensor(name, shape, "int8", scale=0.05, zero_point=0, data=data)


def _tflite(tmp_path, build):
    b = ModelBuilder()
    ins, outs = build(b)
    path = tmp_path / "m.tflite"
    path.write_bytes(b.finish(ins, outs))
    return path


def test_tflite_concat_axis_outside_the_rank_is_refused(tmp_path):
    def build(b):
        x, y, o = _q(b, "x", [1, 4, 5, 3]), _q(b, "y", [1, 4, 5, 2]), _q(b, "o", [1, 4, 5, 5])
        b.op("CONCATENATION", [x, y], [o], options=("ConcatenationOptions", dict(axis=9)))
        return [x, y], [o]
    refused(cli("check", _tflite(tmp_path, build), "--profile", "tflite-int8"), "axis 9")


def test_tflite_mean_axis_outside_the_rank_is_refused(tmp_path):
    def build(b):
        x = _q(b, "x", [1, 5, 6, 8])
        ax = b.tensor("axes", [1], "int32", data=np.array([7], np.int32))
        y = _q(b, "y", [1, 5, 8])
        b.op("MEAN", [x, ax], [y], options=("ReducerOptions", dict(keep_dims=False)))
        return [x], [y]
    refused(cli("check", _tflite(tmp_path, build), "--profile", "tflite-int8"), "axis 7")


def test_tflite_negative_dimension_is_refused(tmp_path):
    def build(b):
        x, y = _q(b, "x", [1, -2, 4]), _q(b, "y", [1, -2, 4])
        b.op("ADD", [x, x], [y])
        return [x], [y]
    refused(cli("check", _tflite(tmp_path, build), "--profile", "tflite-int8"), "negative dimension")


def test_constant_operand_that_would_change_the_batch_is_refused(tmp_path):
    def build(b):
        x = _q(b, "x", [1, 4])
        c = _q(b, "c", [5, 4], data=np.ones((5, 4), np.int8))
        y = _q(b, "y", [1, 4])
        b.op("ADD", [x, c], [y])
        return [x], [y]
    refused(cli("check", _tflite(tmp_path, build), "--profile", "tflite-int8"), "batch dimension", "'c'")


def test_sweep_takes_old_style_temporaries_only_when_stale(tmp_path):
    """mrq 0.1 named its temporaries ``.mrq-XXXXXXXX.ext`` (no owner pid): they are taken once
    untouched for an hour; a fresh one (an older mrq still writing) and a user's look-alike stay."""
    from mrq import fileio
    old = time.time() - fileio.OLD_TMP_AGE_S - 60
    stale = tmp_path / ".mrq-k3j_x9q2.npz"
    fresh = tmp_path / ".mrq-p0aa7bcd.npz"
    users = [tmp_path / ".mrq-settings.json", tmp_path / ".mrq-golden-set", tmp_path / "model.npz",
             tmp_path / ".mrq-k3j_x9q2.yaml"]
    for f in [stale, fresh, *users]:
        f.write_bytes(b"x")
    for f in [stale, *users]:
        os.utime(f, (old, old))
    fileio.sweep_stale(str(tmp_path))
    assert not stale.exists()
    assert fresh.exists() and all(f.exists() for f in users)
