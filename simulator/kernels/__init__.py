"""Integer kernels of the simulator, one op family per module.

Each module has private ``@njit(cache=True)`` kernels (no fastmath, explicit casts) and thin
public Python wrappers that check dtypes and shapes and raise
:class:`simulator.errors.KernelInputError`. All rounding and saturation goes through
:mod:`simulator.primitives`.
"""
