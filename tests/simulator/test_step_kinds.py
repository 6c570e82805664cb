"""The step-kind registry: typed parameters are the contract, docs/PROGRAM.md is generated from
them, and a parameter that is unknown, missing or outside its mode is an error naming the step."""
import pathlib
from dataclasses import fields

import numpy as np
import pytest

from simulator.errors import ProgramError
from simulator.program import Step
from simulator.steps import KINDS, make_step, params_of
from simulator.steps.base import Params
from simulator.steps.contract import BEGIN, END, contract_markdown

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_program_md_is_generated_from_the_parameter_classes():
    text = (ROOT / "docs" / "PROGRAM.md").read_text()
    begin = text.index("<!-- kinds:begin")
    end = text.index(END) + len(END)
    assert text[begin:end] + "\n" == contract_markdown(), (
        "docs/PROGRAM.md is out of date: run `python -m simulator.steps` and paste its output "
        "between the kinds markers")
    assert BEGIN in contract_markdown()


def test_every_kind_is_one_module_with_frozen_keyword_only_params():
    for name, kind in KINDS.items():
        assert kind.execute.__module__ == f"simulator.steps.{name}"
        assert issubclass(kind.params, Params)
        assert kind.params.__dataclass_params__.frozen
        assert all(f.kw_only for f in fields(kind.params))
        assert kind.params.__doc__ and kind.params.__doc__ != Params.__doc__


def test_moded_fields_exist():
    for kind in KINDS.values():
        cls = kind.params
        names = set(cls.field_names())
        for table in (cls.MODE_FIELDS, cls.MODE_OPTIONAL):
            for mode, moded in table.items():
                assert moded <= names, (kind.name, mode, moded - names)


def test_make_step_checks_names_and_modes():
    with pytest.raises(ProgramError, match=r"step 'c' \(clamp\): unknown parameter 'out_mx' "
                                           r"\(did you mean 'out_max'\?\)"):
        make_step("clamp", "c", ("x",), ("y",), out_min=0, out_mx=3)
    with pytest.raises(ProgramError, match="missing parameter 'out_max'"):
        make_step("clamp", "c", ("x",), ("y",), out_min=0)
    with pytest.raises(ProgramError, match="unknown step kind 'nope'"):
        make_step("nope", "n", (), ())
    with pytest.raises(ProgramError, match="'scale_in' does not apply to mode 'tflite_raw'"):
        make_step("avgpool", "p", ("x",), ("y",), kernel=(2, 2), mode="tflite_raw",
                  scale_in=np.float32(1), out_dtype="int8")
    with pytest.raises(ProgramError, match="missing parameter 'rq_multiplier'"):
        make_step("conv", "k", ("x",), ("y",), weight=np.ones((1, 1, 1, 1), np.int8),
                  rq_mode="fixed", out_dtype="int8")
    with pytest.raises(ProgramError, match="unknown rq_mode 'fixd'"):
        make_step("gemm", "g", ("x",), ("y",), weight=np.ones((1, 1), np.int8),
                  rq_mode="fixd", rq_multiplier=np.ones(1, np.int64), out_dtype="int8")
    with pytest.raises(ProgramError, match="layout must be 'NCHW' or 'NHWC'"):
        make_step("maxpool", "m", ("x",), ("y",), kernel=(2, 2), layout="NCWH")


def test_defaults_live_in_the_parameter_class():
    step = make_step("conv", "k", ("x",), ("y",), weight=np.ones((2, 1, 1, 1), np.int8),
                     rq_mode="shift", out_dtype="int8")
    p = params_of(step)
    assert (p.acc_bits, p.acc_overflow, p.rq_rounding, p.layout) == (32, "wrap", "half_even",
                                                                      "NCHW")
    rq = p.requant_kwargs("k")
    assert rq["channel_axis"] == 1 and rq["out_min"] == -128 and rq["out_max"] == 127
    assert list(rq["rq_multiplier"]) == [1]
    # mapping view: only the fields that are set
    assert "bias" not in p and p.get("bias", "x") == "x" and p["acc_bits"] == 32
    assert dict(p)["rq_mode"] == "shift"


def test_dict_params_are_converted_once_and_checked_at_run():
    step = Step("clamp", "c", ("x",), ("y",), {"out_min": -1, "out_max": 1})
    first = params_of(step)
    assert params_of(step) is first and first.out_max == 1
    bad = Step("clamp", "c", ("x",), ("y",), {"out_min": -1, "out_max": 1, "lo": 0})
    with pytest.raises(ProgramError, match="unknown parameter 'lo'"):
        params_of(bad)


def test_replace_is_checked():
    p = params_of(make_step("clamp", "c", ("x",), ("y",), out_min=0, out_max=3))
    assert p.replace(out_max=5).out_max == 5
    with pytest.raises(ProgramError, match="unknown parameter"):
        p.replace(out_maxx=5)
