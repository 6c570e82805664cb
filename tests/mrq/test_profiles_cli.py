"""`mrq profiles` (list), `mrq profiles validate` and `mrq profiles show`: exit codes, one line
per problem on stderr, no tracebacks, and a shown profile that loads back to the same profile."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mrq import hw_profile as H
from mrq.cli import main
from mrq.hw_profile import load_profile

REPO = Path(__file__).resolve().parents[2]
PROFILE_DIR = REPO / "hw_profiles"


@pytest.fixture(autouse=True)
def _isolated_search_path(tmp_path_factory, monkeypatch):
    monkeypatch.delenv(H.PROFILE_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def mrq(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _write(path: Path, base: str = "nna-sym8", **changes) -> Path:
    data = yaml.safe_load((PROFILE_DIR / f"{base}.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        d = data
        for k in parents:
            d = d[k]
        d[last] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _three_problems(path: Path) -> Path:
    return _write(path, accumulator__overflow="wrapp", requant__shift_max=0,
                  requant__multiplier_bits=1, ops__mul="fixed")


def test_list_shows_every_shipped_profile_with_its_source(capsys):
    rc, out, err = mrq(capsys, "profiles")
    assert rc == 0 and err == ""
    for name in ("onnxruntime-cpu", "tflite-int8", "nna-sym8", "nna-sym8-pow2"):
        line = next(s for s in out.splitlines() if s.startswith(name + " "))
        assert f"[shipped: {PROFILE_DIR / (name + '.yaml')}]" in line
    assert "search path" in out and "MRQ_PROFILE_PATH" not in out


def test_list_marks_shadowed_names_and_reports_invalid_ones(capsys, monkeypatch, tmp_path):
    mine = tmp_path / "mine"
    _write(mine / "nna-sym8.yaml", description="my own nna-sym8")
    _three_problems(mine / "broken.yaml")
    monkeypatch.setenv(H.PROFILE_PATH_ENV, str(mine))
    rc, out, err = mrq(capsys, "profiles", "list")
    assert rc == 2
    lines = out.splitlines()
    winner = [s for s in lines if s.startswith("nna-sym8 ")]
    assert len(winner) == 2
    assert "my own nna-sym8" in winner[0] and f"[MRQ_PROFILE_PATH: {mine / 'nna-sym8.yaml'}]" in winner[0]
    assert f"(shadowed by {mine / 'nna-sym8.yaml'})" in winner[1] and "[shipped: " in winner[1]
    assert any(s.startswith("broken ") and "INVALID (3 problems" in s for s in lines)
    assert f"1. {mine}  [MRQ_PROFILE_PATH]" in out
    errs = err.splitlines()
    assert len(errs) == 3 and all(s.startswith(f"mrq profiles: error: {mine / 'broken.yaml'}: field '")
                                  for s in errs)


def test_validate_ok(capsys, tmp_path):
    good = _write(tmp_path / "good.yaml")
    rc, out, err = mrq(capsys, "profiles", "validate", good, PROFILE_DIR / "tflite-int8.yaml")
    assert rc == 0 and err == ""
    assert out.splitlines() == [f"{good}: ok", f"{PROFILE_DIR / 'tflite-int8.yaml'}: ok"]


def test_validate_reports_three_problems_of_one_file_at_once(capsys, tmp_path):
    bad = _three_problems(tmp_path / "bad.yaml")
    good = _write(tmp_path / "good.yaml")
    rc, out, err = mrq(capsys, "profiles", "validate", bad, good)
    assert rc == 2
    assert out.splitlines() == [f"{good}: ok"]
    lines = err.splitlines()
    assert len(lines) == 3
    fields = ["accumulator.overflow", "requant.shift_max", "ops.mul"]
    for line, field in zip(lines, fields):
        assert line.startswith(f"{bad}: field '{field}': ") and "(line " in line
    assert "got 'wrapp'" in lines[0]
    assert "no multiplier below 1 is representable" in lines[1] and "got 0" in lines[1]
    assert "got 'fixed'" in lines[2]


def test_validate_every_file_and_missing_ones(capsys, tmp_path):
    bad1 = _write(tmp_path / "b1.yaml", accumulator__bias="last")
    bad2 = _write(tmp_path / "b2.yaml", host_ops=["Sofmax"])
    missing = tmp_path / "missing.yaml"
    rc, out, err = mrq(capsys, "profiles", "validate", bad1, missing, bad2)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad1}: field 'accumulator.bias': must be first")
    assert lines[1] == f"{missing}: field '<file>': file not found"
    assert lines[2].startswith(f"{bad2}: field 'host_ops[0]': ") and "did you mean 'Softmax'" in lines[2]


@pytest.mark.parametrize("target", ["nna-sym8-pow2", "onnxruntime-cpu", "FILE"])
def test_show_round_trips(capsys, tmp_path, target):
    if target == "FILE":
        src = _write(tmp_path / "src" / "x.yaml", host_ops={"Softmax": "tflite-int8"},
                     supported_ops=[op for op in yaml.safe_load(
                         (PROFILE_DIR / "nna-sym8.yaml").read_text())["supported_ops"]
                         if op != "Softmax"], ops__divider=False)
        data = yaml.safe_load(src.read_text())
        del data["ops"]["softmax"]
        src.write_text(yaml.safe_dump(data, sort_keys=False))
        target = str(src)
    original = load_profile(target)
    rc, out, err = mrq(capsys, "profiles", "show", target)
    assert rc == 0 and err == ""
    first = out.splitlines()[0]
    assert first == (f"# hardware profile {original.name!r} from {original.source} "
                     f"(every default filled in)")
    shown = yaml.safe_load(out)
    assert shown["accumulator"]["bias"] == "first" and "divider" in shown["ops"]
    assert "zero_point_granularity" in shown["activations"]
    path = tmp_path / "shown.yaml"
    path.write_text(out)
    assert load_profile(path) == dataclasses.replace(original, source=str(path))


def test_show_output_validates_against_the_schema(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    import json
    validator = jsonschema.Draft202012Validator(json.loads((PROFILE_DIR / "schema.json").read_text()))
    for name in ("tflite-int8", "nna-a16w8"):
        rc, out, _ = mrq(capsys, "profiles", "show", name)
        assert rc == 0
        assert [e.message for e in validator.iter_errors(yaml.safe_load(out))] == []


def test_show_errors_are_one_line_each(capsys, tmp_path):
    rc, out, err = mrq(capsys, "profiles", "show", "nna-sym9")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("mrq profiles: error: nna-sym9: field '<file>': no hardware profile named")
    assert "did you mean 'nna-sym8'" in err
    bad = _three_problems(tmp_path / "bad.yaml")
    rc, out, err = mrq(capsys, "profiles", "show", bad)
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 3 and all(s.startswith(f"mrq profiles: error: {bad}: field '") for s in lines)


@pytest.mark.parametrize("sub", [[], ["list"], ["validate"], ["show"]])
def test_help_has_examples(capsys, sub):
    with pytest.raises(SystemExit) as ei:
        main(["profiles", *sub, "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "mrq profiles" in out


def test_subprocess_exit_codes_and_no_traceback(tmp_path):
    bad = _three_problems(tmp_path / "bad.yaml")
    env = {**os.environ, H.PROFILE_PATH_ENV: str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "mrq", "profiles", "validate", str(bad)],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.splitlines()) == 3 and "Traceback" not in r.stderr
    # a profile used by another command: the same lines, each with the command's prefix
    from mrq.demo import DEMO_MODEL, demo_inputs
    np.savez(tmp_path / "x.npz", **demo_inputs(1))
    r = subprocess.run([sys.executable, "-m", "mrq", "sim", DEMO_MODEL, "--profile", "bad",
                        "--inputs", "x.npz", "--out", "y.npz"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "y.npz").exists()
    lines = r.stderr.splitlines()
    assert len(lines) == 3 and all(s.startswith(f"mrq sim: error: {bad}: field '") for s in lines)
    r = subprocess.run([sys.executable, "-m", "mrq", "profiles", "validate"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr
