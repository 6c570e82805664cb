"""On-disk JIT cache for the kernels that factories specialise per arithmetic (closures).

numba keys a closure's cache entry on a pickle of its closure cells. A cell holding another
jitted function pickles with that dispatcher's per-process UUID, so the key changes in every
process and such kernels (all the ``*_par`` drivers that call a specialised ``*_range``
kernel) were recompiled by every new process: ~10 s before the first large-batch run. Here the
key uses a stable description instead: a captured dispatcher is described by its module,
qualified name, bytecode and (recursively) its own closure values. The cache still follows the
sources: ``simulator.kernels`` drops every cache file when any simulator source changes.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
from numba.core.caching import FunctionCache
from numba.core.dispatcher import Dispatcher

_PLAIN = (bool, int, float, str, bytes, type(None), np.integer, np.floating, np.bool_)


def _describe(value):
    """A process-independent description of a closure value, or None if there is none."""
    if isinstance(value, Dispatcher):
        func = value.py_func
        inner = tuple(_describe(c.cell_contents) for c in (func.__closure__ or ()))
        if any(v is None for v in inner):
            return None
        return ("jit", func.__module__, func.__qualname__,
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
        digest = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
        return (sig, codegen.magic_tuple(),
                (digest(func.__code__.co_code), digest(repr(cells).encode())))


def stable_cache(*dispatchers):
    """Give cached closure kernels a process-independent cache key; returns them unchanged
    otherwise (a tuple if several)."""
    for d in dispatchers:
        if isinstance(d, Dispatcher) and getattr(d, "_cache", None) is not None \
                and isinstance(d._cache, FunctionCache) and d.py_func.__closure__:
            d._cache = _StableClosureCache(d.py_func)
    return dispatchers if len(dispatchers) != 1 else dispatchers[0]


@functools.lru_cache(maxsize=None)
def specialised(factory, *key):
    """The kernels ``factory(*key)`` makes (closure constants ``key``), made once per process and
    given process-independent cache keys. ``key``: hashable Python values (ints, bools)."""
    return stable_cache(*factory(*key))
