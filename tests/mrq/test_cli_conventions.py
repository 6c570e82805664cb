"""The conventions every `mrq` command shares (mrq/cli.py, mrq/commands/common.py): --version,
-o/--output, --json FILE, -q/-v through logging, examples in --help, hidden former spellings, a
quiet end on a closed pipe, the report extra checked before any work; and the wheel carrying
the profiles, the schema and the demo model."""
import email
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_in_process import mrq_in_process

import mrq
from mrq.cli import build_parser
from mrq.demo import DEMO_MODEL, demo_inputs

REPO = Path(__file__).resolve().parents[2]

# command -> (writes a file or directory with -o/--output, writes JSON with --json)
COMMANDS = {
    "sim": (True, True),
    "requant": (True, True),
    "golden": (True, False),
    "compare": (True, True),
    "check": (False, True),
    "verify": (False, True),
    "profiles": (False, False),
    "demo": (False, False),
    "cache": (False, False),
    "sweep": (True, True),
}


def mrq_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mrq", *map(str, args)], capture_output=True,
                          text=True, check=False, **kw)


def subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


@pytest.fixture(scope="module")
def commands():
    return subparsers(build_parser())


@pytest.fixture()
def inputs(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, **demo_inputs(2))
    return path


def test_version():
    r = mrq_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"mrq {mrq.__version__}"


def test_every_command_is_covered(commands):
    # a new command has to state here what it writes, so the tests below cover it
    assert set(commands) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_shared_options_and_an_example(commands, name):
    writes, writes_json = COMMANDS[name]
    parsers = [commands[name]]
    if name in ("profiles", "cache"):
        parsers += subparsers(commands[name]).values()
    for p in parsers:
        text = p.format_help()
        assert "-q, --quiet" in text and "-v, --verbose" in text, p.prog
        assert "\nexamples:\n  mrq " + name in text, p.prog
    text = parsers[0].format_help()
    assert ("-o OUT" in text or "-o DIR" in text or "-o FILE" in text or "-o REPORT" in text) \
        == writes, text
    assert (", --output " in text) == writes
    assert ("--json FILE" in text) == writes_json
    # the former spellings are accepted but not advertised
    assert "--out " not in text and "--report" not in text


@pytest.mark.parametrize("argv,output,json_path", [
    (["sim", "m.onnx", "--profile", "p", "--inputs", "i.npz", "--out", "o.npz", "--report", "r.json"],
     "o.npz", "r.json"),
    (["sim", "m.onnx", "--profile", "p", "--inputs", "i.npz", "-o", "o.npz", "--json", "r.json"],
     "o.npz", "r.json"),
    (["requant", "m.onnx", "--profile", "p", "-o", "o.onnx", "--report", "r.json"], "o.onnx", "r.json"),
    (["golden", "m.onnx", "--profile", "p", "--inputs", "i.npz", "--out", "g"], "g", None),
    (["compare", "m.onnx", "--profiles", "a", "b", "--inputs", "i.npz", "--out", "r.html"], "r.html", None),
])
def test_former_spellings_still_parse(argv, output, json_path):
    args = build_parser().parse_args(argv)
    assert args.output == output and getattr(args, "json", None) == json_path


def test_output_is_required_under_its_new_name(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["sim", "m.onnx", "--profile", "p", "--inputs", "i.npz"])
    assert exc.value.code == 2
    assert "-o/--output is required" in capsys.readouterr().err


def test_quiet_given_before_a_profiles_subcommand_is_kept():
    args = build_parser().parse_args(["profiles", "-q", "show", "nna-sym8"])
    assert args.quiet is True and args.verbose is False
    args = build_parser().parse_args(["profiles", "show", "nna-sym8", "-v"])
    assert args.quiet is False and args.verbose is True


def test_former_spellings_write_the_same_files(tmp_path, inputs):
    out, report = tmp_path / "o.npz", tmp_path / "r.json"
    r = mrq_in_process("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", inputs, "--out", out,
                "--report", report, "-q")
    assert r.returncode == 0, r.stderr
    assert out.is_file() and report.is_file()


@pytest.mark.slow
def test_quiet_silences_notes_but_not_results(tmp_path, inputs):
    # in this process, as test_verbose_adds_debug_lines_and_quiet_does_not: -q is the logging
    # set-up of mrq.cli, and what a process adds to stderr is tested by the subprocess runs here
    out = tmp_path / "o.npz"
    base = ("sim", DEMO_MODEL, "--profile", "nna-sym8", "--inputs", inputs, "-o", out,
            "--no-fidelity", "--batch-size", "1", "--compile", "yes")
    loud = mrq_in_process(*base)
    assert loud.returncode == 0, loud.stderr
    assert "compiled the program for batch 1" in loud.stderr       # a note (INFO)
    assert "warning: the model does not satisfy profile" in loud.stderr
    quiet = mrq_in_process(*base, "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert "compiled the program" not in quiet.stderr
    assert "compiling kernels" not in quiet.stderr
    # warnings stay: -q hides what is informational, not what is wrong
    assert "warning: the model does not satisfy profile" in quiet.stderr


def _closed_pipe_run(*args):
    """Run mrq with stdout a pipe whose reading end is already closed: every write fails with
    EPIPE, whatever the size of the output (with `| head -1`, a short output can fit in the pipe
    buffer before head exits, and the test would prove nothing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "mrq", *map(str, args)], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=600, check=False)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args,code", [
    (("profiles",), 0),
    (("profiles", "show", "nna-sym8"), 0),
    (("check", DEMO_MODEL, "--profile", "nna-sym8"), 1),  # the demo model is asymmetric
    (("check", DEMO_MODEL, "--profile", "nna-sym8", "-q", "--json", "-"), 1),
])
def test_closed_pipe_ends_quietly_with_the_commands_exit_code(args, code):
    r = _closed_pipe_run(*args)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    assert r.returncode == code, r.stderr


@pytest.mark.parametrize("cmd,first", [
    ("profiles", "search path"),
    (f"check {DEMO_MODEL} --profile nna-sym8", "r1_QuantizeLinear_Output"),
])
def test_head_pipeline(cmd, first):
    """The pipeline as a user types it."""
    r = subprocess.run(f"'{sys.executable}' -m mrq {cmd} | head -1", shell=True,
                       capture_output=True, text=True, check=False)
    assert r.stdout.startswith(first) and r.stdout.count("\n") == 1, r.stdout
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_compare_without_matplotlib_refuses_before_any_work(tmp_path, inputs):
    report = tmp_path / "r.html"
    code = ("import sys; sys.modules['matplotlib'] = None; from mrq.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, "compare", DEMO_MODEL, "--profiles",
                        "nna-sym8", "onnxruntime-cpu", "--inputs", str(inputs), "-o", str(report)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "mrq-nna[report]"' in lines[0], r.stderr
    assert "compiling" not in r.stderr and not report.exists()
    assert time.perf_counter() - t0 < 30   # refused at the start, not after simulating


def test_wheel_carries_profiles_schema_and_demo_model(tmp_path):
    # built from a copy, so the build leaves nothing in the checkout (build/, egg-info)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mrq", "simulator", "hw_profiles"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w",
                        str(tmp_path / "dist")], capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("mrq_nna-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = email.message_from_bytes(
            zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    for needed in ("mrq/hw_profiles/nna-sym8.yaml", "mrq/hw_profiles/schema.json",
                   "mrq/data/demo_cnn.onnx", "mrq/py.typed"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    profiles = {f"mrq/hw_profiles/{p.name}" for p in (REPO / "hw_profiles").glob("*.yaml")}
    assert profiles <= names, sorted(profiles - names)
    # every module of the checkout is in the wheel: a package the list in pyproject.toml
    # forgets (mrq/passes has no __init__.py) fails here, not on a user's machine
    sources = {p.relative_to(REPO).as_posix() for top in ("mrq", "simulator")
               for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert any(req.startswith("tqdm") for req in meta.get_all("Requires-Dist"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Version"] == mrq.__version__


def test_verbose_adds_debug_lines_and_quiet_does_not():
    # in this process: the log lines are what the command writes, not what an interpreter adds
    r = mrq_in_process("profiles", "show", "nna-sym8", "-v")
    assert r.returncode == 0, r.stderr
    assert "debug: mrq profiles finished in" in r.stderr
    r = mrq_in_process("profiles", "show", "nna-sym8")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def _compile_something_new():
    import numba
    # a fresh function each call: nothing in memory or on disk, so numba compiles it
    numba.njit(lambda x: x * 3 + 1)(2)


@pytest.mark.parametrize("cold,quiet,announced", [(True, False, True), (False, False, False),
                                                   (True, True, False)])
def test_compile_notice(monkeypatch, capsys, cold, quiet, announced):
    from mrq import cli
    monkeypatch.setattr(cli, "_kernel_cache_is_cold", lambda: cold)
    # the logger is process-wide: give it back as it was
    for attr in ("handlers", "propagate", "level"):
        monkeypatch.setattr(cli.log, attr, list(cli.log.handlers) if attr == "handlers"
                            else getattr(cli.log, attr))
    cli.configure_logging("sim", quiet=quiet)
    notice = cli._watch_compilation()
    try:
        _compile_something_new()
    finally:
        notice.unregister()
        notice.done()
    err = capsys.readouterr().err
    # a warm cache with a quick compile (under LATE_S) stays silent: no "first run" claim
    # on every run
    assert (cli.COMPILE_NOTICE in err) == announced, err
    assert ("compiled 1 kernel(s)" in err) == announced, err
    assert notice.count == 1


def test_kernel_cache_is_cold_follows_the_cache_directory(monkeypatch, tmp_path):
    from mrq import cli
    from simulator.kernels import jitcache
    monkeypatch.setattr(jitcache, "cache_root", lambda: str(tmp_path))
    assert cli._kernel_cache_is_cold()                      # missing
    key_dir = tmp_path / jitcache.jit_key()
    key_dir.mkdir()
    assert cli._kernel_cache_is_cold()                      # empty
    (key_dir / "simulator").mkdir()
    assert not cli._kernel_cache_is_cold()


def test_json_to_a_closed_pipe_keeps_the_files_and_the_exit_code(tmp_path, inputs):
    out = tmp_path / "o.npz"
    r = _closed_pipe_run("sim", DEMO_MODEL, "--profile", "onnxruntime-cpu", "--inputs", inputs,
                         "-o", out, "--json", "-", "-q")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert out.is_file()
    model = tmp_path / "r.onnx"
    r = _closed_pipe_run("requant", DEMO_MODEL, "--profile", "nna-sym8", "-o", model, "--json", "-")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert model.is_file()
