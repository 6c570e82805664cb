"""``mrq demo`` on a cold kernel cache starts a child process that compiles the kernels of every
profile's program from the last one back while the demo runs them in order (mrq/demo.py,
mrq/warm_up.py); what it prints never depends on that."""
import json

from mrq import demo
from simulator.kernels import jitcache
from tests.ort_host import ORT_PROFILE

PROFILES = (ORT_PROFILE, "tflite-int8")


def _run(monkeypatch, capsys, cold):
    children = []
    start = demo._start_warm_up

    def spy(profiles):
        child = start(profiles)
        if child is not None:
            children.append(child)
        return child

    monkeypatch.setattr(jitcache, "is_cold", lambda: cold)
    monkeypatch.setattr(demo, "_start_warm_up", spy)
    code = demo.run_demo(PROFILES)
    return code, capsys.readouterr().out, children


def test_cold_cache_starts_a_child_for_every_profile_and_prints_the_same(monkeypatch, capsys):
    code, out, children = _run(monkeypatch, capsys, cold=True)
    assert code == 0
    assert len(children) == 1
    child = children[0]
    jobs = json.loads(child.args[-2])
    assert [(job[1], job[2]) for job in jobs] == [(p, "native") for p in PROFILES]
    assert child.returncode is not None        # ended (or ended by the demo) before it returned
    warm_code, warm_out, none = _run(monkeypatch, capsys, cold=False)
    assert (warm_code, none) == (0, [])
    assert out == warm_out and "0 of 80 output elements differ" in out


def test_nothing_to_warm_starts_no_child(monkeypatch):
    monkeypatch.setattr(jitcache, "is_cold", lambda: True)
    assert demo._start_warm_up([]) is None
