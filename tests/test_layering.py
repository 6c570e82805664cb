"""The simulator must never depend on the re-quantizer: ``mrq`` -> ``simulator``, never back."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_simulator_imports_without_mrq():
    code = ("import sys; sys.modules['mrq'] = None\n"
            "import simulator, simulator.run, simulator.steps, simulator.primitives\n"
            "assert not any(m == 'mrq' or m.startswith('mrq.') for m in sys.modules if sys.modules[m] is not None)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_simulator_sources_do_not_mention_mrq_imports():
    for path in (ROOT / "simulator").rglob("*.py"):
        text = path.read_text()
        assert "import mrq" not in text and "from mrq" not in text, path
