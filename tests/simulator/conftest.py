"""Tests marked ``portable_child`` check the portable kernels, and the kernel path is fixed per
process: where this process runs another path they are deselected here (not skipped: they do
run, in the child process that ``test_portable.py::test_forced_portable_process`` starts with
``SIMULATOR_KERNELS=portable``, which fails if any of them is skipped or deselected there)."""


def pytest_collection_modifyitems(config, items):
    from simulator.capabilities import capabilities
    if capabilities().kernels == "portable":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("portable_child") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
