"""Integer kernels of the simulator, one op family per module.

Each module has private ``@njit(cache=True)`` kernels (no fastmath, explicit casts) and thin
public Python wrappers that check dtypes and shapes and raise
:class:`simulator.errors.KernelInputError`. All rounding and saturation goes through
:mod:`simulator.primitives`.

Which kernels run (portable, AVX-512 VNNI, AMX) is decided by :mod:`simulator.capabilities`.
Where numba keeps their compiled code, and why an edit to any simulator source (not only the
kernel's own file) makes them compile again, is :mod:`simulator.kernels.jitcache`: importing this
package puts its cache locator first in numba's list. That is the only thing the import does
beyond defining functions: it sets no environment variable, creates or deletes no file and makes
no system call of its own (tests/simulator/test_inert_import.py).
"""
from simulator.kernels import jitcache as _jitcache

_jitcache.install()


def sources_digest() -> str:
    """What the kernels' machine code depends on besides numba and the CPU (which numba keys
    itself): the simulator's sources and the kernel path, as :func:`jitcache.jit_key`. Keys the
    programs of :mod:`simulator.compiled`, which link the kernels' code into theirs."""
    return _jitcache.jit_key()
