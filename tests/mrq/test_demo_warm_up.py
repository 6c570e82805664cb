"""``mrq demo`` on a cold kernel cache compiles the later profiles' kernels in a child process
while it simulates the first profile (mrq/demo.py); what it prints never depends on that."""
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


def test_cold_cache_warms_the_later_profiles_in_a_child_and_prints_the_same(monkeypatch, capsys):
    code, out, children = _run(monkeypatch, capsys, cold=True)
    assert code == 0
    assert len(children) == 1
    child = children[0]
    assert child.args[-1:] == ["tflite-int8"]   # the first profile is this process's own work
    assert child.returncode == 0                # reaped before the second profile ran
    warm_code, warm_out, none = _run(monkeypatch, capsys, cold=False)
    assert (warm_code, none) == (0, [])
    assert out == warm_out and "0 of 80 output elements differ" in out


def test_nothing_to_warm_starts_no_child(monkeypatch):
    monkeypatch.setattr(jitcache, "is_cold", lambda: True)
    assert demo._start_warm_up([]) is None
