"""The simulator's on-disk JIT cache: where numba's cache files go and what keys them.

numba's ``cache=True`` on its own is not enough for these kernels, for two reasons:

- numba treats a cached function as stale only when *its own* source file changes, but the
  kernels inline code from other files (``simulator/primitives.py``, ``simulator/rounding.py``,
  the intrinsics of ``simd.py``, ``epilogue.py``) and link in the code of the kernels they call.
  After an edit to ``primitives.py``, numba would keep serving every kernel that inlines it.
- Part of the generated code depends on the kernel path (:mod:`simulator.capabilities`):
  ``simd.vmadd16_i32`` is a ``vpdpwssd`` on the ``vnni`` path and a multiply and add on the
  ``portable`` path, inside depthwise kernels that both paths run. numba's key (signature, CPU,
  bytecode) is the same for both.

So every cached function defined in a simulator source file is stored under
``<root>/<digest>-<variant>/<its package directory>/``: ``digest`` covers every ``*.py`` of the
simulator package (:func:`sources_digest`), ``variant`` is
:func:`simulator.capabilities.jit_variant`. Any edit or a different path gives other
directories; nothing is deleted to invalidate, so concurrent processes never see a half-deleted
cache. ``<root>`` is ``$NUMBA_CACHE_DIR/simulator-jit`` when the user set ``NUMBA_CACHE_DIR``,
else ``simulator/__pycache__/jit`` when that is writable, else numba's user-wide cache directory
``/simulator-jit``. At a process's first cache write, directories of other digests that nobody
wrote to for an hour are removed, and so are all but the :data:`KEEP_DIGESTS` most recent
digests (the current one included), which bounds the leftovers of past edits. ``mrq cache
info`` lists the entries, ``mrq cache clear`` removes the root.

Both halves of the key are computed when numba defines the first cached simulator kernel (numba
asks for a function's cache directory then), i.e. from the sources as this process imported
them: a file edited after that belongs to another digest. Nothing is written before the first
compilation.

Wiring: :class:`_SimulatorLocator` is a numba cache locator that answers only for functions in
simulator source files; :func:`install` (run when :mod:`simulator.kernels` is imported) puts it
first in numba's list of locators, in memory. ``NUMBA_CACHE_LOCATOR_CLASSES``, numba's own
override of that list, bypasses it (and with it the protection above).

Concurrent misses: processes that start on a cold cache together (a sweep's workers on one
machine, ``mrq``'s cold-start child and its command, test workers) used to compile the same
kernel signature side by side. On a miss, a process now takes that signature's lock file
(``locks/`` beside the index files, ``flock``) before compiling and keeps it until the result is
saved; a process that finds it held waits, then loads what was saved (or compiles after
:data:`COMPILE_WAIT_S`). Kernels call other kernels but never their callers, so lock waits
cannot form a cycle.

Closure kernels: numba keys a closure's cache entry on a pickle of its closure cells. A cell
holding another jitted function pickles with that dispatcher's per-process UUID, so the key
changes in every process and such kernels (all the ``*_par`` drivers that call a specialised
``*_range`` kernel) were recompiled by every new process: ~10 s before the first large-batch
run. :func:`stable_cache` keys them on a stable description instead: a captured dispatcher is
described by its module, qualified name, bytecode and (recursively) its own closure values.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import shutil
import sys
import time

try:
    import fcntl
except ImportError:  # not POSIX: no compile locks, concurrent processes may compile twice
    fcntl = None
import numba
import numba.core.event
import numpy as np
from numba.core import caching
from numba.core.caching import Cache, FunctionCache
from numba.core.dispatcher import Dispatcher
from numba.core.extending import _Intrinsic

from simulator import capabilities as _caps

_PKG = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # .../simulator
_PKG_PARENT = os.path.dirname(_PKG)
_ROOT_NAME = "simulator-jit"
_KEY_RE = re.compile(r"^[0-9a-f]{24}-[a-z]+$")
# a directory of another digest written to within this time may belong to a running process
_PRUNE_AFTER_S = 3600.0
# at most this many digests are kept, however recent (the current one included): switching
# between a few checkouts stays warm, while a session of edits (a digest per save) cannot fill
# the disk
KEEP_DIGESTS = 3

# numba < 0.61 calls it _CacheImpl
_CacheImplBase = getattr(caching, "CacheImpl", None) or caching._CacheImpl

_PLAIN = (bool, int, float, str, bytes, type(None), np.integer, np.floating, np.bool_)


@functools.cache
def sources_digest() -> str:
    """sha256 over the relative path and bytes of every ``*.py`` under the simulator package;
    computed once per process."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(_PKG):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, _PKG).encode() + b"\0")
            try:
                with open(path, "rb") as fh:
                    digest.update(fh.read())
            except OSError:  # removed while we walked (an editor's rename): still a change
                digest.update(b"\0unreadable\0")
    return digest.hexdigest()


def jit_key() -> str:
    """``<digest>-<variant>``: the name of this process's kernel cache directory; it changes
    with any simulator source and with the VNNI choice."""
    return f"{sources_digest()[:24]}-{_caps.jit_variant()}"


def is_cold() -> bool:
    """Whether this process's cache directory (:func:`jit_key` under :func:`cache_root`) is
    missing or empty, i.e. every kernel a run needs will be compiled; a directory that cannot
    be read counts as warm (nothing to plan around)."""
    try:
        with os.scandir(os.path.join(cache_root(), jit_key())) as found:
            return next(found, None) is None
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _writable(path: str) -> bool:
    """Whether ``path`` exists writable or could be created, judged without creating anything."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


@functools.cache
def cache_root() -> str:
    """The directory holding one subdirectory per :func:`jit_key` (module docstring)."""
    if numba.config.CACHE_DIR:
        return os.path.join(numba.config.CACHE_DIR, _ROOT_NAME)
    in_tree = os.path.join(_PKG, "__pycache__", "jit")
    if _writable(in_tree):
        return in_tree
    from numba.misc.appdirs import AppDirs

    return os.path.join(AppDirs(appname="numba", appauthor=False).user_cache_dir, _ROOT_NAME)


def _in_package(py_file) -> bool:
    try:
        path = os.path.realpath(py_file)
    except (TypeError, ValueError):
        return False
    return path.endswith(".py") and path.startswith(_PKG + os.sep)


_PRUNED = []


def _prune_other_digests(root: str, keep: str, max_digests: int = KEEP_DIGESTS) -> None:
    """Remove ``root``'s cache directories of digests other than ``keep`` that were not written
    to for :data:`_PRUNE_AFTER_S`, and those of all but the ``max_digests - 1`` most recently
    written other digests (every variant of ``keep`` stays; a digest's variants go together)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    now = time.time()
    newest = {}  # other digest -> [its latest mtime, its directories]
    for name in names:
        if not _KEY_RE.match(name) or name.startswith(keep + "-"):
            continue
        path = os.path.join(root, name)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        entry = newest.setdefault(name.split("-", 1)[0], [mtime, []])
        entry[0] = max(entry[0], mtime)
        entry[1].append(path)
    ranked = sorted(newest.values(), key=lambda e: e[0], reverse=True)
    for rank, (mtime, paths) in enumerate(ranked):
        if rank < max_digests - 1 and now - mtime < _PRUNE_AFTER_S:
            continue
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def _tree_size(path: str) -> tuple[int, int]:
    """(number of files, their total bytes) under ``path``; unreadable parts count as empty."""
    files = size = 0
    for dirpath, _dirs, filenames in os.walk(path):
        for name in filenames:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
            files += 1
    return files, size


def entries(root: str | None = None) -> list[dict]:
    """One dict per ``<digest>-<variant>`` directory under ``root`` (default
    :func:`cache_root`), newest first: ``name``, ``path``, ``files``, ``bytes``, ``mtime`` and
    ``current`` (the entry this process's sources and kernel path use)."""
    root = cache_root() if root is None else root
    current = jit_key()
    out = []
    try:
        names = os.listdir(root)
    except OSError:
        return out
    for name in names:
        path = os.path.join(root, name)
        if not _KEY_RE.match(name) or not os.path.isdir(path):
            continue
        files, size = _tree_size(path)
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        out.append({"name": name, "path": path, "files": files, "bytes": size, "mtime": mtime,
                    "current": name == current})
    return sorted(out, key=lambda e: e["mtime"], reverse=True)


def clear(root: str | None = None) -> tuple[int, int]:
    """Remove the kernel cache root (default :func:`cache_root`: only the ``simulator-jit``
    folder of a user's ``NUMBA_CACHE_DIR``, never the rest); returns the (files, bytes) it
    held. A running process that writes afterwards recreates its own entry."""
    root = cache_root() if root is None else root
    files, size = _tree_size(root)
    if os.path.islink(root):  # the link may be the user's: empty what it points to instead
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    elif os.path.isdir(root):
        shutil.rmtree(root)
    return files, size


class _SimulatorLocator(caching._CacheLocator):
    """numba cache locator for functions defined in simulator source files (module docstring)."""

    def __init__(self, py_func, py_file):
        # numba's own locators set it, and numba reads it when a function cannot be cached
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._key = jit_key()
        self._top = os.path.join(cache_root(), self._key)
        rel = os.path.relpath(os.path.dirname(os.path.realpath(py_file)), _PKG_PARENT)
        self._path = os.path.join(self._top, rel)

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        # the directory already names the sources and the variant
        return self._key

    def get_disambiguator(self):
        return str(self._lineno)

    def ensure_cache_path(self):
        # numba calls this before every write, never at definition: the first write of the
        # process is the first moment the simulator touches the disk
        if not _PRUNED:
            _PRUNED.append(True)
            _prune_other_digests(cache_root(), sources_digest()[:24])
        super().ensure_cache_path()
        try:
            os.utime(self._top)  # "written to recently": keeps the pruning of others away
        except OSError:
            pass

    @classmethod
    def from_function(cls, py_func, py_file):
        if not _in_package(py_file):
            return None
        return cls(py_func, py_file)


def _is_simulator_cache(cache) -> bool:
    """Whether numba's ``cache`` of some function stores it under :class:`_SimulatorLocator`."""
    impl = getattr(cache, "_impl", None)
    return isinstance(getattr(impl, "locator", None), _SimulatorLocator)


# How long a process waits for another one's compilation of the same kernel signature before
# compiling it itself (a duplicate, never a wrong result): longer than any kernel's compile on a
# loaded machine, short enough that a stuck holder does not stall a run for long.
COMPILE_WAIT_S = 180.0
_LOCK_POLL_S = 0.02
_HELD = {}   # id(cache) -> {str(signature): lock file descriptor}


def _lock_path(cache, sig, target_context) -> str:
    key = repr(cache._index_key(sig, target_context.codegen())).encode()
    return os.path.join(cache._cache_path, "locks",
                        f"{cache._impl.filename_base}-{hashlib.sha256(key).hexdigest()[:24]}.lock")


def _acquire(cache, sig, target_context):
    """The open, exclusively locked lock file of ``cache``'s signature ``sig``, once no other
    process holds it (or after :data:`COMPILE_WAIT_S`: then ``None``, as when the cache
    directory cannot be written)."""
    try:
        cache._impl.locator.ensure_cache_path()
        path = _lock_path(cache, sig, target_context)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    deadline = time.monotonic() + COMPILE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(_LOCK_POLL_S)
        except OSError:
            break
    os.close(fd)
    return None


def _release(cache, sig=None) -> None:
    """Unlock ``cache``'s lock of ``sig`` (all of its locks when ``sig`` is None)."""
    held = _HELD.get(id(cache))
    if not held:
        return
    for key in ([str(sig)] if sig is not None else list(held)):
        fd = held.pop(key, None)
        if fd is not None:
            os.close(fd)   # closing the descriptor releases its flock
    if not held:
        _HELD.pop(id(cache), None)


def _load_or_lock(load):
    """numba's ``Cache.load_overload``, extended for simulator kernels: on a miss, take the
    signature's lock file before compiling; if another process held it, it was compiling the
    same kernel, so load what it saved instead of compiling a second copy. The lock is kept
    through this process's compilation and released when the result is saved (or the
    compilation fails)."""
    @functools.wraps(load)
    def load_overload(self, sig, target_context):
        got = load(self, sig, target_context)
        if got is not None or not _is_simulator_cache(self):
            return got
        fd = _acquire(self, sig, target_context)
        if fd is None:
            return None
        got = load(self, sig, target_context)
        if got is not None:
            os.close(fd)
            return got
        _HELD.setdefault(id(self), {})[str(sig)] = fd
        return None
    load_overload.mrq_locking = True
    return load_overload


def _save_and_unlock(save):
    @functools.wraps(save)
    def save_overload(self, sig, data):
        try:
            return save(self, sig, data)
        finally:
            _release(self, sig)
    return save_overload


class _CompileFailures(numba.core.event.Listener):
    """Releases a dispatcher's compile locks when its compilation raised (nothing is saved)."""

    def on_start(self, event):
        pass

    def on_end(self, event):
        # numba's Event.is_failed answers the opposite question (numba 0.68): read the details
        if getattr(event, "_exc_details", None) is not None:
            cache = getattr((event.data or {}).get("dispatcher"), "_cache", None)
            if cache is not None:
                _release(cache)


def _install_compile_locks() -> None:
    if fcntl is None or getattr(Cache.load_overload, "mrq_locking", False):
        return
    Cache.load_overload = _load_or_lock(Cache.load_overload)
    Cache.save_overload = _save_and_unlock(Cache.save_overload)
    numba.core.event.register("numba:compile", _CompileFailures())


def install() -> None:
    """Make numba ask :class:`_SimulatorLocator` first (idempotent), and move the caches of
    simulator functions defined before this call (a module such as ``simulator.primitives``
    imported on its own first) to it; processes that miss the same kernel signature at once
    compile it once (:func:`_load_or_lock`). In memory only."""
    classes = _CacheImplBase._locator_classes
    if _SimulatorLocator not in classes:
        classes.insert(0, _SimulatorLocator)
    _install_compile_locks()
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "simulator" or name.startswith("simulator.")):
            continue
        for value in list(vars(module).values()):
            if (isinstance(value, Dispatcher) and isinstance(value._cache, FunctionCache)
                    and not _is_simulator_cache(value._cache) and _in_package(inspect.getfile(value.py_func))):
                value.enable_caching()


def _describe(value):
    """A process-independent description of a closure value, or None if there is none."""
    if isinstance(value, Dispatcher):
        func = value.py_func
        inner = tuple(_describe(c.cell_contents) for c in (func.__closure__ or ()))
        if any(v is None for v in inner):
            return None
        return ("jit", func.__module__, func.__qualname__,
                hashlib.sha256(func.__code__.co_code).hexdigest(), inner)
    if isinstance(value, _Intrinsic):
        # an intrinsic made by a factory (``simd.vmbqm`` / ``vmbqm_ruy``): numba would pickle
        # it by identity, which differs per process; its definition's code and closure
        # constants (``ruy``) say what it generates, the sources digest covers the rest
        func = value._defn
        inner = tuple(_describe(c.cell_contents) for c in (func.__closure__ or ()))
        if any(v is None for v in inner):
            return None
        return ("intrinsic", func.__module__, func.__qualname__,
                hashlib.sha256(func.__code__.co_code).hexdigest(), inner)
    if isinstance(value, _PLAIN):
        return (type(value).__name__, repr(value))
    if isinstance(value, tuple):
        inner = tuple(_describe(v) for v in value)
        return None if any(v is None for v in inner) else ("tuple", inner)
    return None


class _StableClosureCache(FunctionCache):
    def _index_key(self, sig, codegen):
        func = self._py_func
        cells = tuple(_describe(c.cell_contents) for c in (func.__closure__ or ()))
        if any(v is None for v in cells):  # something we cannot describe: numba's own key
            return super()._index_key(sig, codegen)
        digest = lambda b: hashlib.sha256(b).hexdigest()
        return (sig, codegen.magic_tuple(),
                (digest(func.__code__.co_code), digest(repr(cells).encode())))


def _name_after_closure(func) -> None:
    """Append a digest of the closure values to ``func.__qualname__`` (before its first compile).

    numba names a function's machine code after its module, qualified name, argument types and a
    per-process counter. Two specialisations of one factory share the first three, and the
    counter restarts in every process: specialisation A compiled in one process and B in another
    can get the same symbol. A cached program links in the code of the kernels it calls, so a
    process loading two such programs had one symbol with two bodies and called the wrong one
    (a compiled ResNet-8 whose outputs differed from the interpreter's, depending on which cached
    programs earlier test runs had left). With the closure in the name, different code never
    shares a symbol."""
    if "__k" in func.__qualname__:
        return
    for cell in func.__closure__ or ():
        # kernels the factory made and this one calls without returning them: same hazard
        if isinstance(cell.cell_contents, Dispatcher) and cell.cell_contents.py_func.__closure__:
            _name_after_closure(cell.cell_contents.py_func)
    cells = tuple(_describe(c.cell_contents) for c in (func.__closure__ or ()))
    if any(v is None for v in cells):
        return
    func.__qualname__ += "__k" + hashlib.sha256(repr(cells).encode()).hexdigest()[:16]


def stable_cache(*dispatchers):
    """Give cached closure kernels a process-independent cache key; returns them unchanged
    otherwise (a tuple if several)."""
    for d in dispatchers:
        if isinstance(d, Dispatcher) and getattr(d, "_cache", None) is not None \
                and isinstance(d._cache, FunctionCache) and d.py_func.__closure__:
            _name_after_closure(d.py_func)
            d._cache = _StableClosureCache(d.py_func)
    return dispatchers if len(dispatchers) != 1 else dispatchers[0]


@functools.cache
def specialised(factory, *key):
    """The kernels ``factory(*key)`` makes (closure constants ``key``), made once per process and
    given process-independent cache keys. ``key``: hashable Python values (ints, bools)."""
    return stable_cache(*factory(*key))
