"""Importing the simulator has no side effects; the kernel paths sit behind one gate.

- Import: in a subprocess, importing each entry point (``simulator``, ``simulator.run``,
  ``simulator.steps``, ``simulator.compiled``, every ``simulator.kernels`` module, ``mrq``,
  ``mrq.api``, ``mrq.cli``) leaves ``os.environ`` as it was, creates or deletes no file in a copy
  of the package tree or in the numba cache directory (listing and mtimes before/after), and
  makes no ``ctypes`` library load or ``find_library`` call from simulator or mrq code (the way
  ``arch_prctl`` and ``mallopt`` are reached). The numba threading layer is not started either,
  and ``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT`` are set on the first run, keeping an explicit value.
- JIT cache (simulator/kernels/jitcache.py): in a copy of the package, a probe kernel that inlines
  a function of ``simulator/primitives.py`` and uses ``simd.vmadd16_i32`` (code generation reads
  the gate) compiles once per kernel path, is served from the cache on the next run, compiles
  again after ``primitives.py`` changes (numba alone would keep serving the old code, because the
  probe's own file did not change), and is not served the VNNI code on the portable path.
- Paths: ``SIMULATOR_KERNELS=portable|vnni|amx`` each run a dense conv (int8 and uint8 inputs,
  fp32 and fixed-point requantization), a depthwise conv and two gemms in a subprocess; the
  outputs and saturation counts must be identical, and each process must have run its own
  kernels. The hardware paths are skipped on hosts without them (AVX-512 VNNI for ``vnni``,
  AMX-INT8 for ``amx``).
- The gate's decision table (environment x host) in-process, with fake host answers.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from simulator import capabilities as caps_mod  # noqa: E402
from simulator.errors import SimulatorError  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SWITCHES = ("SIMULATOR_KERNELS", "SIMULATOR_SIMD", "SIMULATOR_AMX", "OMP_WAIT_POLICY",
             "GOMP_SPINCOUNT", "NUMBA_CACHE_DIR")


def _env(**extra):
    """The test process's environment without the switches under test, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # Python's own .pyc files are not the simulator's
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def _run(args, env, cwd):
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def _copy_packages(dest, names=("simulator", "mrq")):
    for name in names:
        shutil.copytree(ROOT / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _snapshot(*roots):
    """``{path: (mtime_ns, size)}`` of every file and directory under ``roots``."""
    snap = {}
    for root in roots:
        st = os.lstat(root)
        snap[str(root)] = (st.st_mtime_ns, 0)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                snap[path] = (st.st_mtime_ns, st.st_size if name in filenames else 0)
    return snap


# --------------------------------------------------------------------------------------------
# import has no side effects
# --------------------------------------------------------------------------------------------
_IMPORT_PROBE = textwrap.dedent("""
    import ctypes, ctypes.util, importlib, json, os, sys
    # third-party libraries load their own shared objects; only calls made from our code count
    import numpy, numba, llvmlite.binding  # noqa: F401
    ours = tuple(os.path.join(os.path.dirname(os.path.abspath(__file__)), p) + os.sep
                 for p in ("simulator", "mrq"))
    calls = []

    ctypes_dir = os.path.dirname(ctypes.__file__) + os.sep

    def _caller_is_ours():
        # the first frame outside ctypes itself (ctypes.cdll.LoadLibrary constructs a CDLL)
        f = sys._getframe(2)
        while f is not None and f.f_code.co_filename.startswith(ctypes_dir):
            f = f.f_back
        where = f.f_code.co_filename if f is not None else "?"
        return where.startswith(ours), where

    def _wrap(fn, what):
        def wrapper(*a, **k):
            mine, where = _caller_is_ours()
            if mine:
                calls.append(f"{what}{a[1:2] if what == 'CDLL' else a[:1]} from {where}")
            return fn(*a, **k)
        return wrapper

    ctypes.CDLL.__init__ = _wrap(ctypes.CDLL.__init__, "CDLL")
    ctypes.util.find_library = _wrap(ctypes.util.find_library, "find_library")
    env_before = dict(os.environ)
    for name in sys.argv[1:]:
        importlib.import_module(name)
    changed = sorted(k for k in set(env_before) | set(os.environ)
                     if env_before.get(k) != os.environ.get(k))
    from numba.np.ufunc import parallel
    gate = sys.modules.get("simulator.capabilities")
    print(json.dumps({"calls": calls, "env_changed": changed,
                      "threads_started": bool(parallel._is_initialized),
                      # on AMX hosts the first answer makes the arch_prctl call
                      "gate_asked": gate is not None and "caps" in gate._ONCE,
                      "files": [m.__file__ for n, m in sys.modules.items()
                                if n.split(".")[0] in ("simulator", "mrq") and m is not None
                                and getattr(m, "__file__", None)]}))
""")

_KERNEL_MODULES = sorted("simulator.kernels." + p.stem
                         for p in (ROOT / "simulator" / "kernels").glob("*.py")
                         if p.stem != "__init__")
_ENTRY_POINTS = [["simulator"], ["simulator.run"], ["simulator.steps"], ["simulator.compiled"],
                 ["simulator.capabilities"], ["simulator.kernels"] + _KERNEL_MODULES,
                 ["mrq"], ["mrq.api"], ["mrq.cli"]]
# mrq.api imports mrq/float_kernels.py, whose cached kernels use numba's own locator: numba makes
# their cache directory when it defines them (once per cache directory)
_NUMBA_MAKES_A_DIRECTORY = {"mrq.api"}


def _tree(tmp_path):
    """A private copy of the packages: nobody else edits it while we compare snapshots."""
    root = _copy_packages(tmp_path / "tree")
    (root / "import_probe.py").write_text(_IMPORT_PROBE)
    return root


def _import_in(tree, modules, cache_dir):
    env = _env(NUMBA_CACHE_DIR=str(cache_dir) if cache_dir else None)
    res = json.loads(_run(["import_probe.py", *modules], env, tree).strip().splitlines()[-1])
    # the probe must have imported the copy, or the snapshots prove nothing
    assert res["files"] and all(f.startswith(str(tree)) for f in res["files"]), res["files"]
    assert res["calls"] == []
    assert res["env_changed"] == []
    assert not res["threads_started"]
    assert not res["gate_asked"]


@pytest.mark.parametrize("modules", _ENTRY_POINTS, ids=lambda m: m[0])
def test_import_is_inert(tmp_path, modules):
    tree = _tree(tmp_path)
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    pristine = _snapshot(tree / "simulator", tree / "mrq")
    if modules[0] in _NUMBA_MAKES_A_DIRECTORY:
        _import_in(tree, modules, cache)
        assert all(p.name.startswith("mrq_") for p in cache.iterdir())
    before = _snapshot(cache)
    _import_in(tree, modules, cache)
    assert _snapshot(cache) == before
    assert _snapshot(tree / "simulator", tree / "mrq") == pristine
    if modules[0] not in _NUMBA_MAKES_A_DIRECTORY:
        assert not list(cache.iterdir())


@pytest.mark.parametrize("modules", [["simulator.run"], ["simulator.compiled"],
                                     ["simulator.kernels"] + _KERNEL_MODULES], ids=lambda m: m[0])
def test_import_is_inert_without_numba_cache_dir(tmp_path, modules):
    """With the cache in the package tree (simulator/__pycache__/jit): not even a directory is
    made before the first compilation."""
    tree = _tree(tmp_path)
    pristine = _snapshot(tree / "simulator", tree / "mrq")
    _import_in(tree, modules, None)
    assert _snapshot(tree / "simulator", tree / "mrq") == pristine


_OMP_PROBE = textwrap.dedent("""
    import os, sys
    import simulator.run
    assert "OMP_WAIT_POLICY" not in os.environ or os.environ["OMP_WAIT_POLICY"] == sys.argv[1]
    simulator.run.set_threads(1)
    print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
""")


@pytest.mark.parametrize("preset,want", [
    (None, " ".join(caps_mod.OMP_IDLE[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))),
    ("ACTIVE", "ACTIVE None")])     # a user's policy gets no spin count of ours
def test_wait_policy_set_on_first_use_and_explicit_value_kept(preset, want):
    env = _env(OMP_WAIT_POLICY=preset)
    out = _run(["-c", _OMP_PROBE, preset or "-"], env, ROOT)
    assert out.strip() == want


# --------------------------------------------------------------------------------------------
# JIT cache: keyed by every simulator source and by the kernel path
# --------------------------------------------------------------------------------------------
_PROBE_PRIMITIVE = textwrap.dedent("""


    @njit(cache=True)
    def gate_probe_value():
        return 1
""")

_PROBE_KERNEL = textwrap.dedent("""
    from numba import njit

    from simulator.kernels.simd import vget, vload_i32, vmadd16_i32
    from simulator.primitives import gate_probe_value


    @njit(cache=True)
    def gate_probe(acc, a, b):
        v = vmadd16_i32(vload_i32(acc, 0), vload_i32(a, 0), vload_i32(b, 0))
        s = 0
        for j in range(16):
            s += vget(v, j)
        return s * 10 + gate_probe_value()
""")

_PROBE_RUN = textwrap.dedent("""
    import json, warnings
    import numpy as np
    import simulator.primitives  # first, on its own: its kernels are defined before the hook
    from simulator.capabilities import capabilities
    from simulator.kernels import _gate_probe, jitcache

    acc = np.arange(16, dtype=np.int32)
    a = np.arange(16, dtype=np.int32) * 3
    b = np.arange(16, dtype=np.int32) - 8
    value = int(_gate_probe.gate_probe(acc, a, b))
    d = _gate_probe.gate_probe
    misses = sum(d.stats.cache_misses.values())
    asm = ""
    if misses:
        warnings.simplefilter("ignore")
        asm = next(iter(d.inspect_asm().values()))
    locator = simulator.primitives.gate_probe_value._cache._impl.locator
    print(json.dumps({"value": value, "hits": sum(d.stats.cache_hits.values()),
                      "misses": misses, "vpdpwssd": "vpdpwssd" in asm,
                      "kernels": capabilities().kernels, "root": jitcache.cache_root(),
                      "key": jitcache.jit_key(),
                      "primitives_locator": type(locator).__name__}))
""")


@pytest.fixture(scope="module")
def host():
    """Which hardware paths this host runs, as the gate decides with no switch set (asked in a
    subprocess: the gate is per process)."""
    code = "from simulator.capabilities import capabilities as c; x = c(); print(x.vnni, x.amx)"
    vnni, amx = _run(["-c", code], _env(), ROOT).split()
    return {"vnni": vnni == "True", "amx": amx == "True"}


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "in-tree"])
def test_jit_cache_follows_sources_and_kernel_path(tmp_path, host, where):
    tree = _copy_packages(tmp_path / "tree", ("simulator",))
    with open(tree / "simulator" / "primitives.py", "a") as fh:
        fh.write(_PROBE_PRIMITIVE)
    (tree / "simulator" / "kernels" / "_gate_probe.py").write_text(_PROBE_KERNEL)
    (tree / "probe_run.py").write_text(_PROBE_RUN)
    cache = tmp_path / "numba-cache"

    def probe(path):
        env = _env(SIMULATOR_KERNELS=path,
                   NUMBA_CACHE_DIR=str(cache) if where == "NUMBA_CACHE_DIR" else None)
        return json.loads(_run(["probe_run.py"], env, tree).strip().splitlines()[-1])

    acc = np.arange(16)
    want = int((acc + (acc * 3) * (acc - 8)).sum()) * 10
    fast = "vnni" if host["vnni"] else "portable"

    first = probe(fast)
    root = pathlib.Path(first["root"])
    assert root == (cache / "simulator-jit" if where == "NUMBA_CACHE_DIR"
                    else tree / "simulator" / "__pycache__" / "jit")
    assert first["primitives_locator"] == "_SimulatorLocator"
    assert (first["value"], first["misses"], first["kernels"]) == (want + 1, 1, fast)
    assert first["vpdpwssd"] == host["vnni"]
    assert probe(fast)["hits"] == 1

    if host["vnni"]:
        # same sources, other path: the VNNI code must not be served to the portable path
        port = probe("portable")
        assert (port["value"], port["misses"], port["vpdpwssd"]) == (want + 1, 1, False)
        assert port["key"] != first["key"]
        assert probe("portable")["hits"] == 1 and probe("vnni")["hits"] == 1

    # a directory of other sources untouched for 2 hours goes at the first compile; a recent
    # one (maybe a running process's) stays
    old, recent = root / ("0" * 24 + "-vnni"), root / ("1" * 24 + "-vnni")
    for d in (old, recent):
        (d / "simulator").mkdir(parents=True)
    stale = time.time() - 7200
    os.utime(old, (stale, stale))

    # only primitives.py changes: the probe kernel's own file does not
    src = (tree / "simulator" / "primitives.py").read_text()
    (tree / "simulator" / "primitives.py").write_text(src.replace("return 1\n", "return 2\n"))
    edited = probe(fast)
    assert (edited["value"], edited["misses"]) == (want + 2, 1)
    assert edited["key"] != first["key"]
    assert not old.exists() and recent.exists()
    assert (root / first["key"]).exists()  # within the hour: kept for processes still on it


# --------------------------------------------------------------------------------------------
# every forced kernel path computes the same bits
# --------------------------------------------------------------------------------------------
_PATHS_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from simulator.capabilities import capabilities
    from simulator.kernels.conv import conv2d_acc, prepare_conv
    from simulator.kernels.gemm import gemm_acc, prepare_gemm
    from simulator.kernels.quant import requantize

    rng = np.random.default_rng(0)
    results, used = {}, {}

    def rq_fp32(n):
        return {"rq_mode": "fp32", "rq_rounding": "half_even", "out_dtype": "int8",
                "rq_multiplier": rng.uniform(1e-4, 3e-3, n).astype(np.float32),
                "out_zero_point": int(rng.integers(-20, 20))}

    def rq_fixed(n):
        return {"rq_mode": "fixed", "rq_rounding": "half_away", "out_dtype": "uint8",
                "rq_multiplier": rng.integers(1, 2**15, n).astype(np.int64),
                "rq_shift": rng.integers(16, 24, n).astype(np.int64),
                "out_zero_point": int(rng.integers(100, 150))}

    def names(launch):
        return sorted({c.fn.py_func.__name__ for c in launch.calls})

    def finish(name, fast, x, fallback):
        # what the conv/gemm steps do: the fused kernels when they apply, else the general ones
        res = None if fast is None else fast.run(x)
        if res is None:
            res, used[name] = fallback(), ["general"]
        else:
            used[name] = names(fast.launch(x.shape, x.dtype)[0])
        results[name], results[name + "_sat"] = res[0], np.int64(res[1])

    def conv(name, x, w, group, rq):
        m = w.shape[0]
        kw = dict(weight_zero_point=0, bias=rng.integers(-3000, 3000, m).astype(np.int64),
                  input_zero_point=int(rng.integers(-5, 5)) + (128 if x.dtype == np.uint8 else 0),
                  strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=group,
                  layout="NHWC", acc_bits=32, acc_overflow="wrap")
        fast = prepare_conv(w, requant=rq, channel_axis=3, **kw)
        finish(name, fast, x, lambda: requantize(conv2d_acc(x, w, **kw)[0], channel_axis=3, **rq))

    def gemm(name, x, w, rq):
        b = rng.integers(-3000, 3000, w.shape[1]).astype(np.int64)
        fast = prepare_gemm(w, bias=b, input_zero_point=3, requant=rq)
        finish(name, fast, x, lambda: requantize(gemm_acc(x, w, bias=b, input_zero_point=3)[0],
                                                 channel_axis=-1, **rq))

    i8 = lambda shape: rng.integers(-128, 128, shape, dtype=np.int8)
    u8 = lambda shape: rng.integers(0, 256, shape, dtype=np.uint8)
    conv("conv_dense", i8((2, 12, 12, 32)), i8((48, 32, 3, 3)), 1, rq_fp32(48))
    conv("conv_dense_u8", u8((1, 9, 11, 24)), i8((20, 24, 3, 3)), 1, rq_fixed(20))
    conv("conv_depthwise", u8((2, 10, 10, 32)), i8((32, 1, 3, 3)), 32, rq_fp32(32))
    gemm("gemm", i8((20, 96)), i8((96, 40)), rq_fp32(40))
    gemm("gemm_rows3", u8((3, 64)), i8((64, 16)), rq_fixed(16))
    np.savez(sys.argv[1], **results)
    print(json.dumps({"kernels": capabilities().kernels, "used": used}))
""")


@pytest.fixture(scope="module")
def portable_run(tmp_path_factory):
    return _paths_run(tmp_path_factory.mktemp("paths"), "portable")


def _paths_run(tmp, path):
    out = tmp / f"{path}.npz"
    env = _env(SIMULATOR_KERNELS=path, NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR"))
    info = json.loads(_run(["-c", _PATHS_PROBE, str(out)], env, ROOT).strip().splitlines()[-1])
    assert info["kernels"] == path
    with np.load(out) as data:
        return info["used"], {k: data[k] for k in data.files}


def test_portable_path_runs_no_vnni_kernel(portable_run):
    used, _ = portable_run
    # dense conv and gemm take the int16 kernel of simulator/kernels/portable.py (a gemm of 1-3
    # rows with int8 weights: simulator/kernels/portable_gemv.py); depthwise keeps its fused
    # kernel, generated without VNNI instructions (test_jit_cache_follows_sources_and_kernel_path)
    for name in ("conv_dense", "conv_dense_u8", "gemm"):
        assert {"_blocks", "_blocks_par"} & set(used[name]), (name, used[name])
    assert "rows_int8" in used["gemm_rows3"]
    flat = {k for v in used.values() for k in v}
    assert not {"_vnni_blocks", "_vnni_par", "rows", "rows_par", "gemv_rows", "amx_range",
                "amx_par"} & flat
    assert used["conv_depthwise"] != ["general"]


@pytest.mark.parametrize("path", ["vnni", "amx"])
def test_forced_path_matches_portable(tmp_path, host, portable_run, path):
    if not host[path]:
        pytest.skip({"vnni": "this host has no AVX-512 VNNI",
                     "amx": "this host has no AMX-INT8"}[path])
    used, got = _paths_run(tmp_path, path)
    _, want = portable_run
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    flat = {k for v in used.values() for k in v}
    if path == "vnni":
        # the block kernel or the row kernel (simulator/kernels/vnni_rows.py: a gemm, and a
        # conv whose rows fill its 8-position blocks)
        vnni_kernels = {"_vnni_blocks", "_vnni_par", "rows", "rows_par"}
        assert vnni_kernels & set(used["conv_dense"]) and vnni_kernels & set(used["gemm"])
        assert not {"amx_range", "amx_par"} & flat
    else:
        assert {"amx_range", "amx_par"} & set(used["conv_dense"])


def test_forcing_a_path_the_host_lacks_fails(host):
    missing = [p for p in ("vnni", "amx") if not host[p]]
    if not missing:
        pytest.skip("this host runs every kernel path")
    code = "from simulator.capabilities import capabilities; capabilities()"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=_env(SIMULATOR_KERNELS=missing[0]))
    assert out.returncode != 0
    assert "SimulatorError" in out.stderr and f"SIMULATOR_KERNELS={missing[0]}" in out.stderr


# --------------------------------------------------------------------------------------------
# the decision table, with fake host answers
# --------------------------------------------------------------------------------------------
def _decide(env, host_vnni_off="", host_amx_off=""):
    req = caps_mod._read_request(env)
    asked = []

    def amx_probe():
        asked.append(True)
        return host_amx_off

    caps = caps_mod._decide(req, caps_mod._vnni_choice(req, host_vnni_off), amx_probe)
    return caps, bool(asked)


@pytest.mark.parametrize("env,host_vnni_off,host_amx_off,want,probed", [
    ({}, "", "", "amx", True),
    ({}, "", "no amx", "vnni", True),
    ({}, "no vnni", "", "portable", False),
    ({"SIMULATOR_KERNELS": "auto"}, "", "", "amx", True),
    ({"SIMULATOR_KERNELS": " Portable "}, "", "", "portable", False),
    ({"SIMULATOR_KERNELS": "vnni"}, "", "", "vnni", False),
    ({"SIMULATOR_KERNELS": "amx"}, "", "", "amx", True),
    ({"SIMULATOR_SIMD": "0"}, "", "", "portable", False),
    ({"SIMULATOR_SIMD": "1"}, "", "", "amx", True),
    ({"SIMULATOR_AMX": "0"}, "", "", "vnni", False),
    ({"SIMULATOR_KERNELS": "portable", "SIMULATOR_AMX": "0"}, "", "", "portable", False),
])
def test_decision_table(env, host_vnni_off, host_amx_off, want, probed):
    caps, asked = _decide(env, host_vnni_off, host_amx_off)
    assert caps.kernels == want
    # the tile permission request is made only when AMX is still wanted
    assert asked == probed
    assert (caps.vnni_off == "") == caps.vnni and (caps.amx_off == "") == caps.amx


@pytest.mark.parametrize("env,host_vnni_off,host_amx_off,message", [
    ({"SIMULATOR_KERNELS": "fast"}, "", "", "expected one of"),
    ({"SIMULATOR_KERNELS": "vnni", "SIMULATOR_SIMD": "0"}, "", "", "contradicts"),
    ({"SIMULATOR_KERNELS": "amx", "SIMULATOR_AMX": "0"}, "", "", "contradicts"),
    ({"SIMULATOR_KERNELS": "vnni"}, "lacks avx512vnni", "", "lacks avx512vnni"),
    ({"SIMULATOR_KERNELS": "amx"}, "lacks avx512vnni", "", "lacks avx512vnni"),
    ({"SIMULATOR_KERNELS": "amx"}, "", "lacks amx-tile", "lacks amx-tile"),
])
def test_forced_path_never_falls_back(env, host_vnni_off, host_amx_off, message):
    with pytest.raises(SimulatorError, match=message):
        _decide(env, host_vnni_off, host_amx_off)


def test_reasons_name_the_switch():
    caps, _ = _decide({"SIMULATOR_SIMD": "0"})
    assert caps.vnni_off == "SIMULATOR_SIMD=0" and "VNNI" in caps.amx_off
    caps, _ = _decide({"SIMULATOR_AMX": "0"})
    assert caps.vnni and caps.amx_off == "SIMULATOR_AMX=0"


def test_gate_is_fixed_per_process_and_matches_the_jit_variant():
    c = caps_mod.capabilities()
    assert caps_mod.capabilities() is c
    assert caps_mod.jit_variant() == ("vnni" if c.vnni else "portable")
