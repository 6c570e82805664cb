"""Suite-wide scheduling for ``python -m pytest -n 2`` (pytest-xdist).

A few tests take 20-60 s each (marked ``slow``). Collected in path order, some of them came last
and one worker ran them alone while the other sat idle. So the modules that hold a ``slow`` test
are collected first (whole modules, in their own order, so that module-scoped fixtures are still
built once per worker), and xdist hands tests out a few at a time instead of in quarters of the
suite: both workers start on the long ones and the run ends with short tests on both.
"""
import pytest

# tests per hand-out under xdist's load scheduling: small enough that a worker held up by a long
# test does not keep a queue of others waiting, large enough that the hand-outs cost nothing
SCHED_CHUNK = 4


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # only when xdist is installed and the user left the option alone
    if getattr(config.option, "maxschedchunk", False) is None:
        config.option.maxschedchunk = SCHED_CHUNK


def _module_name(item) -> str:
    module = getattr(item, "module", None)
    return module.__name__ if module is not None else ""


def pytest_collection_modifyitems(config, items):
    slow_modules = {_module_name(item) for item in items if item.get_closest_marker("slow")}
    # stable: each module keeps its order, and so do the modules within each group
    items.sort(key=lambda item: _module_name(item) not in slow_modules)
