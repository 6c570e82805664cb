"""Operator versions: mrq imports exactly the op versions LiteRT executes.

The table in mrq/tflite_op_versions.py is checked against the installed LiteRT by probing: a
model whose operator-code list holds the op at version v loads in LiteRT iff v <= the table's
figure. A newer version is a one-line error naming the operator index and op (exit 2).
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from tflite.BuiltinOperator import BuiltinOperator
from tflite_builder import ModelBuilder
from tflite_helpers import litert

from mrq import tflite_import, tflite_import_recurrent, tflite_import_shape
from mrq.tflite_op_versions import LITERT_MAX_OP_VERSION

I8 = {"scale": 0.05, "zero_point": -3}


def _relu_model(extra_op: str | None = None, extra_version: int = 1, relu_version: int = 1) -> bytes:
    """One RELU; ``extra_op`` adds an operator code (at ``extra_version``) used by no operator,
    which LiteRT still resolves when it builds the interpreter."""
    b = ModelBuilder()
    x = b.tensor("x", [1, 6], "int8", **I8)
    y = b.tensor("y", [1, 6], "int8", **I8)
    b.op("RELU", [x], [y], version=relu_version)
    if extra_op is not None:
        b.opcodes.append((getattr(BuiltinOperator, extra_op), None, extra_version))
    return b.finish([x], [y])


def _litert_loads(data: bytes) -> bool:
    interpreter = litert()
    try:
        interpreter.Interpreter(model_content=data)
    except (RuntimeError, ValueError):
        return False
    return True


def test_every_imported_op_has_a_version_bound():
    imported = set(tflite_import.SUPPORTED_OPS) | set(tflite_import_shape.HANDLERS)
    assert imported <= set(LITERT_MAX_OP_VERSION), sorted(imported - set(LITERT_MAX_OP_VERSION))
    assert {"UNIDIRECTIONAL_SEQUENCE_LSTM", "SVDF"} <= imported, tflite_import_recurrent.__name__


@pytest.mark.skipif(litert() is None, reason="ai-edge-litert not installed")
def test_table_matches_the_installed_litert():
    wrong = {}
    for op, newest in sorted(LITERT_MAX_OP_VERSION.items()):
        loads_newest = _litert_loads(_relu_model(op, newest))
        loads_next = _litert_loads(_relu_model(op, newest + 1))
        if not loads_newest or loads_next:
            wrong[op] = (newest, loads_newest, loads_next)
    assert not wrong, f"op: (table, LiteRT loads that version, LiteRT loads the next): {wrong}"


@pytest.mark.parametrize("version", [LITERT_MAX_OP_VERSION["RELU"] + 1, 1000])
def test_newer_op_version_is_a_one_line_error(tmp_path, capfd, version):
    from mrq.cli import main
    from mrq.errors import UnsupportedOpError
    path = tmp_path / "relu.tflite"
    path.write_bytes(_relu_model(relu_version=version))
    if litert() is not None:
        assert not _litert_loads(path.read_bytes())
    with pytest.raises(UnsupportedOpError, match=rf"'RELU' at node 'operator 0'.*op version {version} .*RELU versions 1-3"):
        tflite_import.import_tflite(str(path))
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 6), np.int8))
    capfd.readouterr()
    code = main(["sim", str(path), "--profile", "tflite-int8", "--inputs", str(tmp_path / "in.npz"),
                 "-o", str(tmp_path / "out.npz"), "--no-fidelity", "-q"])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"op version {version}" in err, err
    assert not (tmp_path / "out.npz").exists()


def test_supported_versions_still_import():
    graph = tflite_import.import_tflite_bytes(_relu_model(relu_version=LITERT_MAX_OP_VERSION["RELU"]))
    assert graph.outputs
