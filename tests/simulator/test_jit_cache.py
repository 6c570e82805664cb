"""The simulator's on-disk JIT cache (simulator/kernels/jitcache.py) and ``mrq cache``:

- every kernel the demo and a compiled ``mrq sim`` need has a process-independent cache key: with
  an empty cache, a second process compiles nothing and adds no file (a closure whose cache key
  pickles something per-process, such as a factory-made intrinsic, recompiles in every process
  and writes a new index entry each time);
- old source digests are pruned to the most recent few, never the current one;
- processes that start together on an empty cache all succeed with identical outputs, and
  what they left is a cache the next process compiles nothing from (numba writes its index and
  object files by rename, so concurrent writers race to the same content, never to a torn file):
  two in the default run, one per core of the 2-core CI host, so that their writes of each
  kernel truly overlap; four in the long run (``pytest -m long``), each of them a cold compile
  of ~12 s of CPU; both checks share one cold cache (one test), since a cold compile is most
  of their cost;
- ``mrq cache info`` lists the entries and ``mrq cache clear`` removes only what mrq owns.
"""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from simulator.kernels import jitcache

_COUNT = re.compile(r"compiled (\d+) kernel\(s\)")
_NAMED = re.compile(r"debug: compiled (\S+) in")


def _env(tmp_path):
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "nb")
    env["MRQ_CACHE_DIR"] = str(tmp_path / "mrq")
    return env


def _mrq(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mrq.cli", *args], check=False, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _files(path):
    return sum(len(names) for _, _, names in os.walk(path))


def _compiles(stderr):
    """(count from the CLI's counter, names from its -v lines): the CLI says nothing when it
    compiled nothing."""
    m = _COUNT.search(stderr)
    return (int(m.group(1)) if m else 0), _NAMED.findall(stderr)


def _small_model(path):
    """A QDQ conv -> relu -> global average pool -> gemm of int8 symmetric codes: a few of the
    demo's kernel families at a fraction of its compile time (the racers compile it twice over,
    the whole-program path once more)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = {"s_in": f32(0.05), "s_c": f32(0.04), "s_g": f32(0.02), "s_y": f32(0.1), "zp": np.int8(0),
             "w": rng.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8),
             "s_w": np.full(8, 0.01, f32), "zp_w": np.zeros(8, np.int8),
             "b": rng.integers(-500, 500, 8).astype(np.int32), "s_b": np.full(8, 0.0005, f32),
             "zp_b": np.zeros(8, np.int32),
             "g": rng.integers(-127, 128, (8, 4)).astype(np.int8), "s_gw": f32(0.01)}
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "s_in", "zp"], ["xq"]),
             node("DequantizeLinear", ["xq", "s_in", "zp"], ["xd"]),
             node("DequantizeLinear", ["w", "s_w", "zp_w"], ["wd"], axis=0),
             node("DequantizeLinear", ["b", "s_b", "zp_b"], ["bd"], axis=0),
             node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"]),
             node("QuantizeLinear", ["r", "s_c", "zp"], ["cq"]),
             node("DequantizeLinear", ["cq", "s_c", "zp"], ["cd"]),
             node("GlobalAveragePool", ["cd"], ["p"]),
             node("QuantizeLinear", ["p", "s_g", "zp"], ["pq"]),
             node("DequantizeLinear", ["pq", "s_g", "zp"], ["pd"]),
             node("Flatten", ["pd"], ["fl"]),
             node("DequantizeLinear", ["g", "s_gw", "zp"], ["gd"]),
             node("MatMul", ["fl", "gd"], ["m"]),
             node("QuantizeLinear", ["m", "s_y", "zp"], ["y"])]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.slow
@pytest.mark.parametrize("racers", [2, pytest.param(4, marks=pytest.mark.long)])
def test_cold_cache_shared_by_concurrent_processes_then_nothing_recompiles(tmp_path, racers):
    """One cold compile serves both cache checks (each cold compile costs tens of seconds of CPU):
    ``racers`` processes start together on the empty cache (a small model: each racer compiles
    all of it), one more compiles nothing from what they left; then the demo under three
    profiles and the whole-program path (the small model) compile what the racers did not need,
    and a second process of each compiles nothing and adds no file."""
    env = _env(tmp_path)
    model = tmp_path / "small.onnx"
    _small_model(model)
    feeds = tmp_path / "in.npz"
    np.savez(feeds, x=np.random.default_rng(5).standard_normal((5, 3, 8, 8)).astype(np.float32))

    def argv(i, *extra):
        return [sys.executable, "-m", "mrq", "sim", str(model), "--profile", "nna-sym8",
                "--inputs", str(feeds), "-o", str(tmp_path / f"out{i}.npz"), "--no-fidelity", *extra]

    procs = [subprocess.Popen(argv(i), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(racers)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all(code == 0 for code, _ in results), results
    outs = []
    for i in range(racers):
        with np.load(tmp_path / f"out{i}.npz", allow_pickle=False) as z:
            outs.append({k: z[k] for k in z.files})
    assert outs[0] and all(o.keys() == outs[0].keys() for o in outs)
    assert all(np.array_equal(o[k], outs[0][k]) for o in outs for k in o)
    r = subprocess.run(argv(racers, "-v"), check=False, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    count, names = _compiles(r.stderr)
    assert count == 0, f"the cache the racers left was not complete or not readable: {names}"
    with np.load(tmp_path / f"out{racers}.npz", allow_pickle=False) as z:
        assert all(np.array_equal(z[k], outs[0][k]) for k in outs[0])

    # other profiles (fp32 and Q31 requantization) and the whole-program path
    # (simulator/compiled.py, its own cache folder): none of it was compiled above
    feeds8 = tmp_path / "in8.npz"
    np.savez(feeds8, x=np.random.default_rng(8).standard_normal((8, 3, 8, 8)).astype(np.float32))
    runs = [("demo", "-v", "--profiles", "onnxruntime-cpu", "nna-sym8", "tflite-int8"),
            ("sim", str(model), "--profile", "tflite-int8", "--inputs", str(feeds8), "-o",
             str(tmp_path / "out.npz"), "--no-fidelity", "--compile", "yes", "-v")]
    counts, files = [], []
    for attempt in range(2):
        n, names = 0, []
        for args in runs:
            r = _mrq(env, *args)
            assert r.returncode == 0, r.stderr
            c, named = _compiles(r.stderr)
            n, names = n + c, names + named
        counts.append((n, names))
        files.append((_files(tmp_path / "nb"), _files(tmp_path / "mrq")))
    assert counts[0][0] > 0, "the first run should have compiled (were its kernels cached?)"
    assert counts[1][0] == 0, f"recompiled in a second process: {counts[1][1]}"
    # a per-process cache key also shows as a new index entry or object file: none may appear
    assert files[1] == files[0], f"cache files grew on the second run: {files}"
    assert files[0][0] > 0 and files[0][1] > 0


def _fake_entry(root, name, age_s, now):
    path = root / name
    (path / "simulator" / "kernels").mkdir(parents=True)
    (path / "simulator" / "kernels" / "k.nbi").write_bytes(b"x" * 10)
    os.utime(path, (now - age_s, now - age_s))
    return path


def test_prune_keeps_the_most_recent_digests(tmp_path):
    now = time.time()
    cur = "a" * 24
    keep = [_fake_entry(tmp_path, f"{cur}-vnni", 7200, now),  # the current digest: whatever age
            _fake_entry(tmp_path, f"{cur}-portable", 7200, now)]
    # other digests, newest first; b has two variants that go together
    others = {d: age for d, age in zip("bcdef", (10, 20, 30, 40, 50))}
    for d, age in others.items():
        _fake_entry(tmp_path, f"{d * 24}-vnni", age, now)
    _fake_entry(tmp_path, f"{'b' * 24}-portable", 15, now)
    old = _fake_entry(tmp_path, f"{'9' * 24}-vnni", 7200, now)  # past the hour: always removed
    stray = tmp_path / "not-an-entry"
    stray.mkdir()
    jitcache._prune_other_digests(str(tmp_path), cur, max_digests=3)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([p.name for p in keep] + [f"{'b' * 24}-vnni", f"{'b' * 24}-portable",
                                                     f"{'c' * 24}-vnni", "not-an-entry"])
    assert not old.exists()


def test_cache_info_and_clear_touch_only_what_mrq_owns(tmp_path):
    env = _env(tmp_path)
    nb, mrq_dir = tmp_path / "nb", tmp_path / "mrq"
    now = time.time()
    entry = _fake_entry(nb / "simulator-jit", f"{'c' * 24}-vnni", 60, now)
    (entry / "simulator" / "more.nbc").write_bytes(b"y" * 2048)
    # what a user keeps in their own NUMBA_CACHE_DIR / MRQ_CACHE_DIR: not ours to remove
    (nb / "mine").mkdir()
    (nb / "mine" / "other.nbi").write_text("user")
    (mrq_dir / "programs").mkdir(parents=True)
    (mrq_dir / "programs" / "_mrq_program_x.py").write_text("def program(): pass\n")
    (mrq_dir / "notes.txt").write_text("user")

    r = _mrq(env, "cache", timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"kernel cache: {nb / 'simulator-jit'}" in r.stdout
    line = next(s for s in r.stdout.splitlines() if "c" * 24 in s)
    assert "2 files" in line and "2.0 KiB" in line and not line.lstrip().startswith("*")
    assert f"compiled programs: {mrq_dir / 'programs'}" in r.stdout
    assert "1 files" in r.stdout
    key = _mrq(env, "cache", "info", timeout=60).stdout
    assert re.search(r"current entry: [0-9a-f]{24}-(vnni|portable)  \(empty", key)

    r = _mrq(env, "cache", "clear", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "2 files" in r.stderr
    assert not (nb / "simulator-jit").exists()
    assert not (mrq_dir / "programs").exists()
    assert (nb / "mine" / "other.nbi").read_text() == "user"
    assert (mrq_dir / "notes.txt").read_text() == "user"
    r = _mrq(env, "cache", "clear", timeout=60)  # nothing left: still fine
    assert r.returncode == 0, r.stderr


_SPECIALISED_NAMES = (
    "from simulator.kernels import quant, gemv;"
    "print('|'.join(k.py_func.__qualname__ for key in ((0, 0), (0, 1), (1, 0))"
    " for k in (*quant._requant_kernels(*key), gemv.kernels(*key))))"
)


def test_specialisations_never_share_a_symbol_name():
    """numba names machine code after the qualified name plus a per-process counter, so two
    specialisations of one factory compiled in different processes could get one symbol, and a
    process loading both cached programs called the wrong code. Each specialisation is named
    after its closure values: different across keys, identical across processes."""
    here = subprocess.run([sys.executable, "-c", _SPECIALISED_NAMES], capture_output=True, text=True,
                          check=True).stdout.strip().split("|")
    again = subprocess.run([sys.executable, "-c", _SPECIALISED_NAMES.replace("((0, 0), (0, 1), (1, 0))",
                                                                              "((1, 0), (0, 1), (0, 0))")],
                           capture_output=True, text=True, check=True).stdout.strip().split("|")
    assert len(set(here)) == len(here), here
    assert sorted(here) == sorted(again)
    assert all("__k" in name for name in here)


_WAITER = """
import sys, time
import numpy as np
from simulator.kernels import eltwise
a = np.arange(64, dtype=np.uint16)
print("calling", flush=True)
t0 = time.perf_counter()
eltwise.add_float(a, a, scale_a=0.5, scale_b=0.25, scale_out=1.0, zero_point_a=3,
                  zero_point_b=0, zero_point_out=7, out_min=0, out_max=65535, out_dtype="uint16")
k = eltwise._add_float_kernel
print(time.perf_counter() - t0, sum(k.stats.cache_hits.values()),
      sum(k.stats.cache_misses.values()), flush=True)
"""


def test_a_process_that_misses_a_kernel_another_is_compiling_waits_and_loads_it(tmp_path,
                                                                                monkeypatch):
    """Two processes missing the same kernel signature compile it once: the second waits on the
    signature's lock file and loads what the first saved (workers of a sweep on one machine,
    the cold-start child and its command, xdist workers all start on the same kernels)."""
    import fcntl

    import numba

    from simulator.kernels import eltwise
    env = _env(tmp_path)
    kernel = eltwise._add_float_kernel
    ro = np.arange(64, dtype=np.uint16)
    ro.flags.writeable = False
    sig = tuple(kernel.typeof_pyval(v) for v in (
        ro, ro, np.float32(0.5), np.int64(3), np.float32(0.25), np.int64(0), np.float32(1.0),
        np.int64(7), np.int64(0), np.int64(0), np.int64(65535), np.empty(64, np.int64)))
    # this process's kernel, pointed at the test's cache directory
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "nb"))
    jitcache.cache_root.cache_clear()
    try:
        from numba.core.caching import FunctionCache
        cache = FunctionCache(kernel.py_func)
        lock = jitcache._lock_path(cache, sig, kernel.targetctx)
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)   # "another process is compiling it"
        child = subprocess.Popen([sys.executable, "-c", _WAITER], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert child.stdout.readline().strip() == "calling"
            time.sleep(3.0)
            assert child.poll() is None
            # compile and save it here, as the holder would (not waiting on our own lock)
            monkeypatch.setattr(jitcache, "COMPILE_WAIT_S", 0.0)
            kernel_here = numba.njit(cache=True)(kernel.py_func)
            kernel_here._cache = cache
            kernel_here.compile(sig)
            assert sum(kernel_here.stats.cache_misses.values()) == 1
        finally:
            os.close(fd)
        out, err = child.communicate(timeout=300)
    finally:
        jitcache.cache_root.cache_clear()
    assert child.returncode == 0, err
    waited, hits, misses = out.split()
    # it waited for the lock, then loaded the kernel instead of compiling a second copy
    assert float(waited) >= 2.5 and (int(hits), int(misses)) == (1, 0), out


def test_a_failed_compilation_releases_its_lock():
    """A compilation that raises saves nothing: its lock must not stay held (another process
    would wait for COMPILE_WAIT_S)."""
    from numba.core.errors import TypingError

    from simulator.kernels import eltwise
    with pytest.raises(TypingError):
        eltwise._add_float_kernel("not", "arrays", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    assert not jitcache._HELD
