"""Integer kernels of the simulator, one op family per module.

Each module has private ``@njit(cache=True)`` kernels (no fastmath, explicit casts) and thin
public Python wrappers that check dtypes and shapes and raise
:class:`simulator.errors.KernelInputError`. All rounding and saturation goes through
:mod:`simulator.primitives`.

JIT cache caveat: numba's ``cache=True`` invalidates a cached kernel only when *its own* source
file changes. After editing ``simulator/primitives.py`` (or any module whose jitted functions other
modules call), delete the cache files (``find simulator -name '*.nb[ic]' -delete``) so that no
kernel keeps an inlined copy of the old code.
"""
