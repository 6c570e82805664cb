"""Integer kernels of the simulator, one op family per module.

Each module has private ``@njit(cache=True)`` kernels (no fastmath, explicit casts) and thin
public Python wrappers that check dtypes and shapes and raise
:class:`simulator.errors.KernelInputError`. All rounding and saturation goes through
:mod:`simulator.primitives`.

JIT cache: numba's ``cache=True`` invalidates a cached kernel only when *its own* source file
changes, but kernels inline code from other modules (``simulator/primitives.py``, ``simd.py``,
``epilogue.py``). So on import this package hashes every ``simulator/*.py`` and
``simulator/kernels/*.py`` source and, when the hash differs from the one stored next to the
cache files, deletes the simulator's cache files (``__pycache__/*.nbi``, ``*.nbc``) first: after
any edit everything is recompiled once, never partly stale. (With ``NUMBA_CACHE_DIR`` set the
cache lives elsewhere; delete it by hand after editing.)
"""
import glob
import hashlib
import os

# GNU OpenMP (numba's default threading layer here) keeps idle worker threads spinning for a
# while after each parallel region. On a shared machine the spinning thread competes with the
# one doing the work and a parallel step can take 10-50 ms instead of microseconds (measured).
# Passive waiting only costs a futex wake-up per region. Read by libgomp when numba loads its
# threading layer (at the first parallel kernel); an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_SOURCES_DIGEST = []


def sources_digest() -> str:
    """sha256 over every ``simulator/*.py`` and ``simulator/kernels/*.py`` source ('' if one
    cannot be read); computed once per process."""
    if not _SOURCES_DIGEST:
        here = os.path.dirname(os.path.abspath(__file__))
        pkg = os.path.dirname(here)
        digest = hashlib.sha256()
        paths = glob.glob(os.path.join(pkg, "*.py")) + glob.glob(os.path.join(here, "*.py"))
        for path in sorted(paths):
            digest.update(os.path.basename(path).encode())
            try:
                with open(path, "rb") as fh:
                    digest.update(fh.read())
            except OSError:
                _SOURCES_DIGEST.append("")
                return ""
        _SOURCES_DIGEST.append(digest.hexdigest())
    return _SOURCES_DIGEST[0]


def _drop_stale_jit_cache():
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.dirname(here)
    stamp = sources_digest()
    if not stamp:
        return
    stamp_path = os.path.join(here, "__pycache__", "jit_sources.sha256")
    try:
        with open(stamp_path) as fh:
            if fh.read().strip() == stamp:
                return
    except OSError:
        pass
    for cache_dir in (os.path.join(pkg, "__pycache__"), os.path.join(here, "__pycache__")):
        for path in glob.glob(os.path.join(cache_dir, "*.nb[ic]")):
            try:
                os.remove(path)
            except OSError:
                pass
    try:
        os.makedirs(os.path.dirname(stamp_path), exist_ok=True)
        with open(stamp_path, "w") as fh:
            fh.write(stamp + "\n")
    except OSError:
        pass


if not os.environ.get("NUMBA_CACHE_DIR"):
    _drop_stale_jit_cache()
