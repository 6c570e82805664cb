"""The hostile-input corpus: generated cases, each one CLI call on one damaged input.

Every case is built from a few valid bases (tiny ONNX and TFLite models from
:mod:`tests.hostile.models`, the shipped demo model, a valid profile, a valid npz, a golden set
made once per session) by one mutation from a class named in the case id
(``<class>-<what>-<variant>``). A case says which command it runs, the argv, and the text the
one-line error must contain (the offending file or node). :mod:`test_hostile` runs them all.

To grow the corpus: add a mutation to one of the ``_cases_*`` generators; the id must stay
unique (checked on import).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.hostile import models as M

VALID_PROFILE = "onnxruntime-cpu"


@dataclass
class Assets:
    """The valid bases, made once per session."""
    root: Path
    conv: str          # tiny QDQ conv model
    conv_inputs: str   # valid --inputs for it
    profile: str       # a valid profile YAML (a copy of onnxruntime-cpu)
    tflite: str        # tiny int8 conv .tflite
    golden: str        # golden set of `conv` on `conv_inputs`


@dataclass
class Ctx:
    """What a case builds in: its own folder, an empty output folder, and the bases."""
    tmp: Path
    out: Path
    assets: Assets

    def path(self, name: str) -> str:
        return str(self.tmp / name)

    def write(self, name: str, data) -> str:
        p = self.tmp / name
        if isinstance(data, str):
            data = data.encode("utf-8")
        p.write_bytes(data)
        return str(p)

    def fifo(self, name: str) -> str:
        p = self.path(name)
        os.mkfifo(p)
        return p


@dataclass(frozen=True)
class Case:
    id: str
    # ctx -> (argv, the substrings the error line must contain)
    build: Callable[[Ctx], tuple]
    # could hang or allocate without the fix: run in a child process with a deadline and an
    # address-space cap, so a regression fails instead of stalling the run
    isolated: bool = False
    # a damaged dump given to `mrq verify` may also be a verdict (exit 1, a report on stdout
    # naming the file) instead of a refusal
    verdict: bool = False


def _names(line: str, want) -> bool:
    """``want``: a text the line must contain, or a tuple of texts one of which it must."""
    return any(str(w) in line for w in want) if isinstance(want, tuple) else str(want) in line


def problems(case: Case, expect, code, err: str, stdout: str, leftovers: list) -> list:
    """What is wrong with the end of one case: [] when it ended as a hostile input must."""
    lines = err.splitlines()
    if case.verdict and code == 1:
        wrong = [f"stderr holds {len(lines)} line(s)"] if lines else []
        return wrong + [f"the report does not name {w!r}" for w in expect if not _names(stdout, w)]
    if code != 2 or "Traceback" in err:
        return [f"exit {code}" + (" with a traceback" if "Traceback" in err else "")]
    if len(lines) != 1:
        return [f"{len(lines)} lines on stderr"]
    wrong = [f"the error line has {len(lines[0])} characters"] if len(lines[0]) > 2000 else []
    wrong += [f"the error does not name {w!r}: {lines[0][:500]}" for w in expect if not _names(lines[0], w)]
    return wrong + ([f"left behind: {leftovers}"] if leftovers else [])


# ------------------------------------------------------------------------------- commands
# Each builds the argv of one command with one hostile argument; outputs go to ctx.out.

def cmd_check(ctx, model=None, profile=None, inputs=None):
    argv = ["check", model or ctx.assets.conv, "--profile", profile or VALID_PROFILE]
    return argv + (["--inputs", inputs] if inputs else [])


def cmd_sim(ctx, model=None, profile=None, inputs=None):
    return ["sim", model or ctx.assets.conv, "--profile", profile or VALID_PROFILE,
            "--inputs", inputs or ctx.assets.conv_inputs, "-o", str(ctx.out / "out.npz"),
            "--json", str(ctx.out / "r.json")]


def cmd_golden(ctx, model=None, profile=None, inputs=None):
    return ["golden", model or ctx.assets.conv, "--profile", profile or VALID_PROFILE,
            "--inputs", inputs or ctx.assets.conv_inputs, "-o", str(ctx.out / "golden")]


def cmd_requant(ctx, model=None, profile=None, calib=None):
    argv = ["requant", model or ctx.assets.conv, "--profile", profile or VALID_PROFILE,
            "-o", str(ctx.out / "out.onnx"), "--json", str(ctx.out / "r.json")]
    return argv + (["--calib", calib] if calib else [])


def cmd_compare(ctx, model=None, inputs=None, labels=None, calib=None):
    argv = ["compare", model or ctx.assets.conv, "--profiles", VALID_PROFILE,
            "--inputs", inputs or ctx.assets.conv_inputs, "-o", str(ctx.out / "r.html"),
            "--no-progress"]
    return argv + (["--labels", labels] if labels else []) + (["--calib", calib] if calib else [])


def cmd_validate(ctx, profile):
    return ["profiles", "validate", profile]


def cmd_verify(ctx, golden=None, actual=None):
    return ["verify", golden or ctx.assets.golden, "--actual", actual or ctx.assets.golden,
            "--json", str(ctx.out / "v.json")]


MODEL_COMMANDS = {"check": cmd_check, "sim": cmd_sim, "golden": cmd_golden, "requant": cmd_requant}
PROFILE_COMMANDS = {"check": cmd_check, "sim": cmd_sim,
                    "validate": lambda ctx, profile: cmd_validate(ctx, profile)}
INPUT_COMMANDS = {"check": cmd_check, "sim": cmd_sim, "golden": cmd_golden, "compare": cmd_compare}


# ------------------------------------------------------------------------------- file makers

def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_header_only(shape, dtype="<f4", payload=b"\0" * 64) -> bytes:
    """An .npy whose header declares ``shape`` but which holds only ``payload`` after it."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def _zip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npz(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_claiming(members: dict, claimed: int) -> bytes:
    """A deflated zip whose directory says each member unpacks to ``claimed`` bytes."""
    data = bytearray(_zip(members, zipfile.ZIP_DEFLATED))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := data.find(sig, start)) >= 0:
            data[at + off:at + off + 4] = struct.pack("<I", claimed)
            start = at + 4
    return bytes(data)


def _conv_x(batch=2, dtype=np.float32, shape=(4, 6, 6)):
    return np.random.default_rng(3).standard_normal((batch,) + shape).astype(dtype)


def _hostile_path(ctx: Ctx, kind: str, suffix: str) -> str:
    """A path that is not a readable regular file of the expected kind."""
    if kind == "missing":
        return ctx.path("missing" + suffix)
    if kind == "directory":
        p = ctx.tmp / ("dir" + suffix)
        p.mkdir()
        return str(p)
    if kind == "symlink-loop":
        a, b = ctx.tmp / ("loop_a" + suffix), ctx.tmp / ("loop_b" + suffix)
        os.symlink(b, a)
        os.symlink(a, b)
        return str(a)
    if kind == "fifo":
        return ctx.fifo("pipe" + suffix)
    if kind == "dev-zero":
        return "/dev/zero"
    if kind == "empty":
        return ctx.write("empty" + suffix, b"")
    if kind == "random":
        return ctx.write("random" + suffix, np.random.default_rng(7).bytes(4096))
    if kind == "text":
        return ctx.write("text" + suffix, "hello, this is not a model\n" * 10)
    if kind == "sparse-huge":
        # 8 GiB of holes: costs no disk, but a reader that trusts the size reads 8 GiB
        p = ctx.path("huge" + suffix)
        with open(p, "wb") as f:
            f.truncate(8 << 30)
        return p
    raise ValueError(kind)


PATH_KINDS = ("missing", "directory", "symlink-loop", "fifo", "dev-zero", "empty", "random", "text",
              "sparse-huge")
ISOLATED_KINDS = {"fifo", "dev-zero", "sparse-huge"}


# ----------------------------------------------------------------------- ONNX node relations

def _node_case(cid, make, node, isolated=False):
    """The error must name the node, or the model file (errors about a tensor or about a
    parameter node that feeds the node, e.g. a DequantizeLinear of its weight, name the
    file and that node)."""
    def build(ctx):
        return cmd_check(ctx, model=M.write_onnx(make(), ctx.path("m.onnx"))), ((node, "m.onnx"),)
    return Case(cid, build, isolated)


def _cases_onnx_shapes():
    C = M.conv_qdq
    cases = []
    conv = {
        "w-scale-len-2": {"w_scale_len": 2}, "w-scale-len-4": {"w_scale_len": 4},
        "w-scale-len-7": {"w_scale_len": 7},
        "w-zp-len-2": {"w_zp_len": 2}, "w-zp-len-5": {"w_zp_len": 5},
        "bias-len-2": {"bias_len": 2}, "bias-len-5": {"bias_len": 5}, "bias-len-1": {"bias_len": 1},
        "bias-scale-len-2": {"bias_scale_len": 2},
        "stride-0-h": {"strides": (0, 1)}, "stride-0-w": {"strides": (1, 0)},
        "stride-0-both": {"strides": (0, 0)}, "stride-negative": {"strides": (-1, 1)},
        "stride-len-1": {"strides": (1,)},
        "dilation-0-h": {"dilations": (0, 1)}, "dilation-0-w": {"dilations": (1, 0)},
        "dilation-negative": {"dilations": (-2, 1)},
        "pad-negative-top": {"pads": (-1, 0, 0, 0)}, "pad-negative-left": {"pads": (0, -1, 0, 0)},
        "pad-negative-bottom": {"pads": (0, 0, -1, 0)}, "pad-negative-right": {"pads": (0, 0, 0, -3)},
        "pad-len-3": {"pads": (1, 1, 1)},
        "kernel-7-over-6": {"k": (7, 7), "pads": (0, 0, 0, 0)},
        "kernel-9x3-over-6": {"k": (9, 3), "pads": (0, 0, 0, 0)},
        "kernel-dilated-over-input": {"dilations": (4, 4), "pads": (0, 0, 0, 0)},
        "group-0": {"group": 0, "w_in": 4}, "group-3-of-4": {"group": 3, "w_in": 1},
        "group-2-wrong-w": {"group": 2, "w_in": 4},
        "w-in-5-vs-4": {"w_in": 5}, "w-in-1-vs-4": {"w_in": 1},
        "w-rank-3": {"w_rank": 3},
        "w-axis-5": {"w_axis": 5}, "w-axis-minus-5": {"w_axis": -5}, "w-axis-1": {"w_axis": 1},
        "x-scale-0": {"x_scale": 0.0}, "x-scale-negative": {"x_scale": -0.5},
        "x-scale-nan": {"x_scale": float("nan")}, "x-scale-inf": {"x_scale": float("inf")},
        "x-scale-len-3": {"x_scale_len": 3}, "y-scale-len-2": {"y_scale_len": 2},
        "input-dim-negative": {"in_shape": ["N", 4, -6, 6]},
        "input-dim-zero": {"in_shape": ["N", 4, 0, 6]},
        "input-channels-0": {"in_shape": ["N", 0, 6, 6]},
        "input-rank-3": {"in_shape": ["N", 4, 6]},
        "input-channels-5": {"in_shape": ["N", 5, 6, 6]},
    }
    for name, kw in conv.items():
        # a bad input scale is the input QuantizeLinear's
        node = "quant_x" if name in ("x-scale-0", "x-scale-negative", "x-scale-nan", "x-scale-inf") else "conv0"
        cases.append(_node_case(f"onnx-shape-conv-{name}", lambda kw=kw: C(**kw), node))
    Q = M.qlinear_conv
    qconv = {
        "w-scale-len-2": {"w_scale_len": 2}, "w-scale-len-4": {"w_scale_len": 4},
        "w-zp-len-2": {"w_zp_len": 2}, "bias-len-2": {"bias_len": 2}, "bias-len-5": {"bias_len": 5},
        "stride-0": {"strides": (0, 1)}, "dilation-0": {"dilations": (1, 0)},
        "pad-negative": {"pads": (0, -2, 0, 0)}, "kernel-over-input": {"k": (6, 6)},
        "group-0": {"group": 0},
    }
    for name, kw in qconv.items():
        cases.append(_node_case(f"onnx-shape-qlinearconv-{name}", lambda kw=kw: Q(**kw), "qconv0"))
    G = M.gemm_qdq
    gemm = {
        "w-scale-len-4": {"w_scale_len": 4}, "w-scale-len-6": {"w_scale_len": 6},
        "w-zp-len-3": {"w_zp_len": 3}, "bias-len-4": {"bias_len": 4}, "bias-len-9": {"bias_len": 9},
        "k-7-vs-8": {"k_in": 7}, "k-16-vs-8": {"k_in": 16}, "w-rank-3": {"w_rank": 3},
        "w-axis-2": {"w_axis": 2}, "transb-scale-len": {"trans_b": 1, "w_axis": 0, "w_scale_len": 4},
    }
    for name, kw in gemm.items():
        cases.append(_node_case(f"onnx-shape-gemm-{name}", lambda kw=kw: G(**kw), "gemm0"))
    U = M.unary_qdq
    pools = {
        "kernel-0": {"kernel_shape": [0, 2]}, "kernel-7-over-6": {"kernel_shape": [7, 7]},
        "kernel-negative": {"kernel_shape": [-2, 2]},
        "stride-0": {"kernel_shape": [2, 2], "strides": [0, 2]},
        "pad-negative": {"kernel_shape": [2, 2], "pads": [0, 0, -1, 0]},
        "pad-ge-kernel": {"kernel_shape": [2, 2], "pads": [5, 5, 5, 5]},
        "kernel-rank-3": {"kernel_shape": [2, 2, 2]},
    }
    for op in ("MaxPool", "AveragePool"):
        for name, kw in pools.items():
            cases.append(_node_case(f"onnx-shape-{op.lower()}-{name}", lambda op=op, kw=kw: U(op, **kw), "op0"))
    reshape = {
        "count-mismatch": [1, 5], "two-minus-one": [1, -1, -1], "negative-dim": [1, -3, 8],
        "copies-missing-axis": [0, 0, 0, 0, 0, 0], "declares-1e12": [1, 10**12], "declares-2e18": [1, 2**31, 2**31],
    }
    for name, target in reshape.items():
        cases.append(_node_case(
            f"onnx-shape-reshape-{name}",
            lambda t=target: U("Reshape", inits=[("shape", np.array(t, np.int64))], extra_inputs=["shape"]),
            "op0", isolated="declares" in name))
    for name, axis in (("axis-4", 4), ("axis-minus-5", -5), ("axis-99", 99)):
        cases.append(_node_case(f"onnx-shape-concat-{name}", lambda a=axis: M.concat_qdq(a), "op0"))
    for name, axis in (("axis-4", 4), ("axis-minus-9", -9)):
        cases.append(_node_case(f"onnx-shape-softmax-{name}", lambda a=axis: U("Softmax", axis=a), "op0"))
    for name, perm in (("perm-repeated", [0, 1, 1, 2]), ("perm-short", [0, 2, 1]),
                       ("perm-out-of-rank", [0, 1, 2, 7])):
        cases.append(_node_case(f"onnx-shape-transpose-{name}", lambda p=perm: U("Transpose", perm=p), "op0"))
    for name, axis in (("axis-9", 9), ("axis-minus-9", -9)):
        cases.append(_node_case(f"onnx-shape-flatten-{name}", lambda a=axis: U("Flatten", axis=a), "op0"))
    return cases


# --------------------------------------------------------------- ONNX declared sizes (initializers)

def _with_weight(raw: bytes | None, dims, data_type=TensorProto.INT8, external=None):
    """The tiny conv with its weight initializer replaced by a hand-made TensorProto."""
    def make():
        model = M.conv_qdq()
        for i, t in enumerate(model.graph.initializer):
            if t.name == "w":
                new = onnx.TensorProto(name="w", data_type=data_type, dims=list(dims))
                if raw is not None:
                    new.raw_data = raw
                if external is not None:
                    new.data_location = TensorProto.EXTERNAL
                    for k, v in external.items():
                        new.external_data.add(key=k, value=str(v))
                model.graph.initializer[i].CopyFrom(new)
        return model
    return make


def _cases_onnx_sizes():
    cases = []
    sizes = {
        "dims-1e12": ([10**6, 10**6], b"\0" * 108, False),
        "dims-2e18-overflow": ([2**31, 2**31, 2, 2], b"\0" * 108, False),
        "dims-3x4x3x3-short-raw": ([3, 4, 3, 3], b"\0" * 10, False),
        "dims-negative": ([3, -4, 3, 3], b"\0" * 108, False),
        "raw-longer-than-dims": ([3, 4, 3, 3], b"\0" * 1000, False),
    }
    for name, (dims, raw, iso) in sizes.items():
        cases.append(Case(f"onnx-size-initializer-{name}",
                          lambda ctx, d=dims, r=raw: (cmd_check(ctx, model=M.write_onnx(
                              _with_weight(r, d)(), ctx.path("m.onnx"))), ("m.onnx",)), iso))

    def external(location, length, isolated, make_target=None):
        def build(ctx):
            if make_target:
                make_target(ctx)
            model = _with_weight(None, [3, 4, 3, 3], external={"location": location, "length": length})()
            return cmd_check(ctx, model=M.write_onnx(model, ctx.path("m.onnx"))), ("m.onnx",)
        return build
    cases += [
        Case("onnx-size-external-dev-zero", external("/dev/zero", 10**12, True), True),
        Case("onnx-size-external-parent-dir", external("../../etc/passwd", 108, False)),
        Case("onnx-size-external-missing", external("nope.bin", 108, False)),
        Case("onnx-size-external-fifo", external("w.bin", 108, True, lambda ctx: ctx.fifo("w.bin")), True),
        Case("onnx-size-external-short", external("w.bin", 10**12, True,
                                                  lambda ctx: ctx.write("w.bin", b"\0" * 108)), True),
    ]

    def const_of_shape(dims):
        def make():
            model = M.unary_qdq("Expand", inits=[("shape", np.array(dims, np.int64))], extra_inputs=["shape"])
            return model
        return make
    for name, dims in (("1e12", [1, 2, 10**6, 10**6]), ("negative", [1, 2, -6, 6])):
        cases.append(_node_case(f"onnx-size-expand-{name}", const_of_shape(dims), "op0", isolated=True))

    def cos_model():
        model = M.conv_qdq()
        node = helper.make_node("ConstantOfShape", ["big_shape"], ["big"], name="cos0")
        model.graph.initializer.append(numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "big_shape"))
        model.graph.node.insert(0, node)
        return model
    cases.append(_node_case("onnx-size-constantofshape-1e12", cos_model, "cos0", isolated=True))
    return cases


# ------------------------------------------------------------------- model files and metadata

def _model_meta_mutations():
    def opset(v):
        def make():
            m = M.conv_qdq()
            m.opset_import[0].version = v
            return m
        return make

    def ir(v):
        def make():
            m = M.conv_qdq()
            m.ir_version = v
            return m
        return make

    def no_outputs():
        m = M.conv_qdq()
        del m.graph.output[:]
        return m

    def dup_output_tensor():
        m = M.conv_qdq()
        m.graph.node[1].output[0] = "xq"   # dequant_x now also writes xq
        return m

    def dup_input_name():
        m = M.conv_qdq()
        m.graph.input.append(m.graph.input[0])
        return m

    def dup_initializer():
        m = M.conv_qdq()
        extra = numpy_helper.from_array(np.zeros((3, 4, 3, 3), np.int8), "w")
        m.graph.initializer.append(extra)
        return m

    def dup_node_output_later():
        m = M.conv_qdq()
        m.graph.node[5].output[0] = "yf"   # quant_y writes the tensor the conv wrote
        return m

    def unknown_domain():
        m = M.conv_qdq()
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 10000))
        return m
    return {"opset-10000": opset(10000), "opset-0": opset(0), "ir-version-99": ir(99),
            "ir-version-0": ir(0), "no-outputs": no_outputs, "duplicate-tensor": dup_output_tensor,
            "duplicate-input": dup_input_name, "duplicate-initializer": dup_initializer,
            "duplicate-conv-output": dup_node_output_later, "ml-opset-10000": unknown_domain}


def _cases_model_files():
    cases = []
    metas = _model_meta_mutations()
    for cmd_name, cmd in MODEL_COMMANDS.items():
        for kind in PATH_KINDS:
            def build(ctx, kind=kind, cmd=cmd):
                p = _hostile_path(ctx, kind, ".onnx")
                return cmd(ctx, model=p), (p,)
            cases.append(Case(f"model-file-{cmd_name}-{kind}", build, kind in ISOLATED_KINDS))
        for name, make in metas.items():
            cases.append(Case(f"model-meta-{cmd_name}-{name}",
                              lambda ctx, make=make, cmd=cmd: (cmd(ctx, model=M.write_onnx(
                                  make(), ctx.path("m.onnx"))), ("m.onnx",))))
        for frac in (0.1, 0.5, 0.97):
            def build(ctx, frac=frac, cmd=cmd):
                data = M.conv_qdq().SerializeToString()
                return cmd(ctx, model=ctx.write("cut.onnx", data[:int(len(data) * frac)])), ("cut.onnx",)
            cases.append(Case(f"model-truncated-{cmd_name}-{int(frac * 100)}pct", build))
        tfl = {
            "wrong-magic": lambda b: b[:4] + b"XXXX" + b[8:],
            "truncated-half": lambda b: b[:len(b) // 2],
            "truncated-16": lambda b: b[:16],
            "buffer-past-eof": M.tflite_weight_len_past_eof,
            "root-offset-past-eof": lambda b: struct.pack("<I", len(b) + 1000) + b[4:],
            "empty": lambda b: b"",
        }
        for name, mutate in tfl.items():
            cases.append(Case(f"tflite-{cmd_name}-{name}",
                              lambda ctx, mutate=mutate, cmd=cmd: (cmd(ctx, model=ctx.write(
                                  "m.tflite", mutate(M.conv_tflite()))), ("m.tflite",))))
    return cases


def _cases_tflite_shapes():
    T = M.conv_tflite
    muts = {
        "w-scale-len-3": {"w_scale_len": 3}, "bias-len-3": {"bias_len": 3},
        "stride-0": {"stride": (0, 1)}, "dilation-0": {"dilation": (1, 0)},
        "kernel-over-input": {"w_shape": (2, 9, 9, 3), "y_shape": (1, 1, 1, 2)},
        "w-channels-4-vs-3": {"w_shape": (2, 3, 3, 4)},
        "negative-dim": {"x_shape": (1, -5, 7, 3)},
        "output-shape-wrong": {"y_shape": (1, 9, 9, 2)},
    }
    # the error names the file or the operator
    return [Case(f"tflite-shape-conv-{name}",
                 lambda ctx, kw=kw: (cmd_check(ctx, model=ctx.write("m.tflite", T(**kw))),
                                     (("m.tflite", "operator 0"),)))
            for name, kw in muts.items()]


# ------------------------------------------------------------------------------------ YAML

def _profile_text(ctx) -> str:
    return Path(ctx.assets.profile).read_text()


def _yaml_mutations():
    def alias_bomb(ctx):
        lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
        for i in range(1, 10):
            lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
        return _profile_text(ctx) + "\n".join(lines) + "\n"   # 10^10 leaves

    def alias_bomb_keyed(ctx):
        text = _profile_text(ctx)
        bomb = "\n".join(["base: &b0 {k: v}"] + [
            f"l{i}: &b{i} {{" + ", ".join(f"k{j}: *b{i - 1}" for j in range(12)) + "}" for i in range(1, 9)])
        return text + bomb + "\n"

    def deep_list(ctx):
        return "name: x\ndescription: " + "[" * 100_000 + "]" * 100_000 + "\n"

    # under the 256 KiB a profile may have, so the depth bound is what refuses them
    def deep_map(ctx):
        return "name: x\nops: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n"

    def deep_block(ctx):
        return "name: x\n" + "".join(" " * i + "k:\n" for i in range(600)) + " " * 600 + "k: 1\n"

    def big_int(field):
        def make(ctx):
            text = _profile_text(ctx)
            return "\n".join(f"{line.split(':')[0]}: {'9' * 5000}" if line.strip().startswith(field + ":")
                             else line for line in text.splitlines()) + "\n"
        return make

    def big_int_key(ctx):
        return _profile_text(ctx) + f"{'7' * 5000}: 1\n"


    def wrong_type(old, new):
        def make(ctx):
            text = _profile_text(ctx)
            assert old in text, old
            return text.replace(old, new, 1)
        return make

    def python_tag(ctx):
        return _profile_text(ctx) + "evil: !!python/object/apply:os.system ['true']\n"

    def top_list(ctx):
        return "- 1\n- 2\n"

    def merge_bomb(ctx):
        return _profile_text(ctx) + "m0: &m0 {a: 1}\n" + "".join(
            f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], b{i}: 1}}\n" for i in range(1, 25))

    def tabs(ctx):
        return "name:\tx\n\t- broken\n"

    return {
        "alias-bomb": alias_bomb, "alias-bomb-mapping": alias_bomb_keyed, "merge-key-bomb": merge_bomb,
        "nested-list-100000": deep_list, "nested-map-50000": deep_map, "nested-block-600": deep_block,
        "int-5000-digits": big_int("bits"), "int-5000-digit-key": big_int_key,
        "float-overflow": wrong_type("bits: 8", "bits: 1e99999"),
        "name-is-int": wrong_type("name: onnxruntime-cpu", "name: 5"),
        "bits-is-string": wrong_type("bits: 8", 'bits: "eight"'),
        "bits-is-list": wrong_type("bits: 8", "bits: [8]"),
        "python-tag": python_tag, "top-level-list": top_list, "tabs": tabs,
    }


def _yaml_bytes_mutations():
    return {
        "binary-junk": lambda ctx: np.random.default_rng(11).bytes(2048),
        "not-utf8": lambda ctx: _profile_text(ctx).encode("utf-8").replace(b"name:", b"n\xe9\xff:", 1),
        "nul-bytes": lambda ctx: b"name: x\0\0\0\ndescription: y\n",
        "utf16": lambda ctx: _profile_text(ctx).encode("utf-16"),
    }


def _cases_yaml():
    cases = []
    for cmd_name, cmd in PROFILE_COMMANDS.items():
        for name, make in _yaml_mutations().items():
            cases.append(Case(f"yaml-{cmd_name}-{name}",
                              lambda ctx, make=make, cmd=cmd: (cmd(ctx, profile=ctx.write("p.yaml", make(ctx))),
                                                               ("p.yaml",)),
                              isolated="bomb" in name))
        for name, make in _yaml_bytes_mutations().items():
            cases.append(Case(f"yaml-{cmd_name}-{name}",
                              lambda ctx, make=make, cmd=cmd: (cmd(ctx, profile=ctx.write("p.yaml", make(ctx))),
                                                               ("p.yaml",))))
        for kind in ("directory", "symlink-loop", "fifo", "dev-zero", "empty", "sparse-huge", "missing"):
            def build(ctx, kind=kind, cmd=cmd):
                p = _hostile_path(ctx, kind, ".yaml")
                return cmd(ctx, profile=p), (p,)
            cases.append(Case(f"yaml-{cmd_name}-path-{kind}", build, kind in ISOLATED_KINDS))
    return cases


# ---------------------------------------------------------------------------------- inputs

def _input_mutations():
    x = _conv_x()
    return {
        "wrong-name": (lambda ctx: ctx.write("in.npz", _npz({"nope": x})), False),
        "extra-name": (lambda ctx: ctx.write("in.npz", _npz({"x": x, "z": x})), False),
        "dtype-complex": (lambda ctx: ctx.write("in.npz", _npz({"x": x.astype(np.complex64)})), False),
        "dtype-bool": (lambda ctx: ctx.write("in.npz", _npz({"x": x > 0})), False),
        "dtype-str": (lambda ctx: ctx.write("in.npz", _npz({"x": np.array(["a", "b"])})), False),
        "dtype-int8-wrong-code-type": (lambda ctx: ctx.write("in.npz", _npz({"x": x.astype(np.int32) * 1000})),
                                       False),
        "object-pickled": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": _npy_bytes(
            np.array([{"a": 1}, None], dtype=object))})), False),
        "rank-3": (lambda ctx: ctx.write("in.npz", _npz({"x": x[0]})), False),
        "rank-5": (lambda ctx: ctx.write("in.npz", _npz({"x": x[:, None]})), False),
        "wrong-channels": (lambda ctx: ctx.write("in.npz", _npz({"x": _conv_x(shape=(3, 6, 6))})), False),
        "wrong-spatial": (lambda ctx: ctx.write("in.npz", _npz({"x": _conv_x(shape=(4, 5, 7))})), False),
        "batch-0": (lambda ctx: ctx.write("in.npz", _npz({"x": _conv_x(batch=0)})), False),
        "scalar": (lambda ctx: ctx.write("in.npz", _npz({"x": np.float32(1)})), False),
        "empty-npz": (lambda ctx: ctx.write("in.npz", _zip({})), False),
        "not-npy-member": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": b"hello"})), False),
        "member-header-1tb": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": _npy_header_only((250_000_000_000,))})),
                              True),
        "member-header-6d-huge": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": _npy_header_only(
            (2, 4, 10**5, 10**5, 1, 1))})), True),
        "member-header-overflow": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": _npy_header_only(
            (2**40, 2**40))})), True),
        "member-header-negative": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": _npy_header_only((-2, 4, 6, 6))})),
                                   False),
        "deflate-header-1tb": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": _npy_header_only(
            (250_000_000_000,), payload=b"\0" * 4096)}, zipfile.ZIP_DEFLATED)), True),
        "deflate-directory-4gb": (lambda ctx: ctx.write("in.npz", _zip_claiming(
            {"x.npy": _npy_bytes(x)}, 0xFFFFFFF0)), True),
        "truncated-npz": (lambda ctx: ctx.write("in.npz", _npz({"x": x})[:300]), False),
        "nan-header": (lambda ctx: ctx.write("in.npz", _zip({"x.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': nan}\n"})),
                       False),
    }


def _cases_inputs():
    cases = []
    for cmd_name, cmd in INPUT_COMMANDS.items():
        mutations = dict(_input_mutations())
        if cmd_name != "check":
            del mutations["batch-0"]   # the streaming readers' business (mrq/datasets.py)
        for name, (make, iso) in mutations.items():
            def build(ctx, make=make, cmd=cmd):
                p = make(ctx)
                # the file, or the array in it that is wrong
                return cmd(ctx, inputs=p), ((os.path.basename(p), "input 'x'", "input(s) 'x'",
                                             "input(s) 'z'"),)
            cases.append(Case(f"inputs-{cmd_name}-{name}", build, iso))
        for kind in ("directory", "symlink-loop", "fifo", "dev-zero", "random", "missing", "sparse-huge"):
            def build(ctx, kind=kind, cmd=cmd):
                p = _hostile_path(ctx, kind, ".npz")
                return cmd(ctx, inputs=p), (p,)
            cases.append(Case(f"inputs-{cmd_name}-path-{kind}", build, kind in ISOLATED_KINDS))
    return cases


# ----------------------------------------------------------------------------- calibration

def _cases_calib():
    x = _conv_x(batch=4)
    datasets = {
        "all-nan": {"x": np.full_like(x, np.nan)},
        "all-inf": {"x": np.full_like(x, np.inf)},
        "all-minus-inf": {"x": np.full_like(x, -np.inf)},
        "some-nan": {"x": np.where(x > 1, np.nan, x).astype(np.float32)},
        "empty-batch": {"x": x[:0]},
        "wrong-name": {"nope": x},
        "wrong-shape": {"x": x[:, :3]},
        "no-members": {},
    }
    cases = []
    for name, arrays in datasets.items():
        cases.append(Case(f"calib-requant-{name}",
                          lambda ctx, a=arrays: (cmd_requant(ctx, calib=ctx.write("calib.npz", _npz(a) if a
                                                                                   else _zip({}))),
                                                 (("calib.npz", "calibration"),))))
    def calib_object(ctx):
        p = ctx.write("calib.npz", _zip({"x.npy": _npy_bytes(np.array([None], dtype=object))}))
        return cmd_requant(ctx, calib=p), ("calib.npz",)
    cases.append(Case("calib-requant-object", calib_object))
    for kind in ("fifo", "dev-zero", "directory"):
        def build(ctx, kind=kind):
            p = _hostile_path(ctx, kind, ".npz")
            return cmd_requant(ctx, calib=p), (p,)
        cases.append(Case(f"calib-requant-path-{kind}", build, kind in ISOLATED_KINDS))
    for name in ("all-nan", "all-inf", "empty-batch"):
        cases.append(Case(f"calib-compare-{name}",
                          lambda ctx, a=datasets[name]: (cmd_compare(ctx, calib=ctx.write("calib.npz", _npz(a))),
                                                         ("calib.npz",))))
    return cases


# ---------------------------------------------------------------------------------- labels

def _cases_labels():
    labels = {
        "npz-two-arrays": (lambda ctx: ctx.write("labels.npz", _npz({"y": np.arange(2), "z": np.arange(2)})),
                           False),
        "object": (lambda ctx: ctx.write("labels.npy", _npy_bytes(np.array([None, 1], dtype=object))), False),
        "float": (lambda ctx: ctx.write("labels.npy", _npy_bytes(np.array([0.5, 1.5]))), False),
        "header-1tb": (lambda ctx: ctx.write("labels.npy", _npy_header_only((250_000_000_000,), "<i4")), True),
        "truncated": (lambda ctx: ctx.write("labels.npy", _npy_bytes(np.arange(100))[:90]), False),
        "fifo": (lambda ctx: ctx.fifo("labels.npy"), True),
        "dev-zero": (lambda ctx: "/dev/zero", True),
        "directory": (lambda ctx: _hostile_path(ctx, "directory", ".npy"), False),
    }
    cases = []
    for name, (make, iso) in labels.items():
        def build(ctx, make=make):
            p = make(ctx)
            return cmd_compare(ctx, labels=p), (p,)
        cases.append(Case(f"labels-compare-{name}", build, iso))
    return cases


# ------------------------------------------------------------------------- verify manifests

def _golden_copy(ctx) -> Path:
    dst = ctx.tmp / "golden"
    shutil.copytree(ctx.assets.golden, dst, symlinks=True)
    return dst


def _manifest_case(cid, mutate):
    """A copy of the session's golden set with its manifest changed by ``mutate(manifest)``;
    the error names the manifest (or, for a declared shape the file does not hold, the file and
    what the manifest says)."""
    def build(ctx):
        g = _golden_copy(ctx)
        mpath = g / "manifest.json"
        manifest = json.loads(mpath.read_text())
        result = mutate(manifest)
        mpath.write_text(json.dumps(manifest if result is None else result))
        return cmd_verify(ctx, golden=str(g), actual=ctx.assets.golden), (("manifest.json", "the manifest says"),)
    return Case(cid, build)


def _del(path):
    def mutate(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        del obj[path[-1]]
    return mutate


def _set(path, value):
    def mutate(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return mutate


def _cases_verify():
    cases = []
    for key in ("format", "tensors"):
        cases.append(_manifest_case(f"verify-missing-{key}", _del([key])))
    for key in ("name", "role", "layer", "file", "dtype", "bits", "signed", "encoding", "shape", "files", "sha256"):
        cases.append(_manifest_case(f"verify-missing-tensor-{key}", _del(["tensors", 0, key])))
    mistyped = {
        "version-string": (["version"], "1"), "version-999": (["version"], 999),
        "tensors-object": (["tensors"], {}), "tensors-empty": (["tensors"], []),
        "bits-string": (["tensors", 0, "bits"], "8"), "bits-1e6": (["tensors", 0, "bits"], 10**6),
        "bits-minus-5": (["tensors", 0, "bits"], -5), "bits-bool": (["tensors", 0, "bits"], True),
        "bits-float": (["tensors", 0, "bits"], 8.5), "signed-string": (["tensors", 0, "signed"], "yes"),
        "shape-negative": (["tensors", 0, "shape"], [-1, 4]), "shape-string": (["tensors", 0, "shape"], "2x4"),
        "shape-huge": (["tensors", 0, "shape"], [10**12, 10**12]),
        "perm-repeated": (["tensors", 0, "perm"], [0, 0, 1, 2]), "quant-axis-9": (["tensors", 0, "quant_axis"], 9),
        "files-npy-int": (["tensors", 0, "files", "npy"], 5), "encoding-bogus": (["tensors", 0, "encoding"], "ebcdic"),
        "layers-string": (["layers"], "x"), "layer-params-shift": (["layers", 1, "params", "rq_shift"], "a"),
        "feeds-unknown": (["feeds"], {"x": "no-such-tensor"}), "inputs-unknown": (["inputs"], ["nope"]),
        "name-long": (["tensors", 0, "name"], "n" * 100_000),
    }
    for name, (path, value) in mistyped.items():
        cases.append(_manifest_case(f"verify-mistyped-{name}", _set(path, value)))
    paths = {
        "npy-parent": "../outside.npy", "npy-absolute": "/etc/passwd", "npy-nul": "tensors/a\0b.npy",
        "npy-deep-parent": "tensors/../../../../etc/hosts", "npy-empty": "",
    }
    for name, rel in paths.items():
        cases.append(_manifest_case(f"verify-path-{name}", _set(["tensors", 0, "files", "npy"], rel)))
    cases.append(_manifest_case("verify-path-hex-parent", _set(["tensors", 0, "files", "hex"], "../../x.hex")))
    cases.append(_manifest_case("verify-manifest-list", lambda m: [m]))
    cases.append(_manifest_case("verify-manifest-string", lambda m: "golden"))

    def raw_manifest(cid, data, isolated=False):
        def build(ctx):
            g = _golden_copy(ctx)
            (g / "manifest.json").unlink()
            if data == "fifo":
                os.mkfifo(g / "manifest.json")
            elif data == "dir":
                (g / "manifest.json").mkdir()
            else:
                (g / "manifest.json").write_bytes(data)
            return cmd_verify(ctx, golden=str(g)), ("manifest.json",)
        return Case(cid, build, isolated)
    cases += [raw_manifest("verify-manifest-not-json", b"{not json"),
              raw_manifest("verify-manifest-deep", b"[" * 100_000 + b"]" * 100_000),
              raw_manifest("verify-manifest-not-utf8", b'{"format": "\xff\xfe"}'),
              raw_manifest("verify-manifest-empty", b""),
              raw_manifest("verify-manifest-big-int", b'{"format": "mrq-golden", "version": ' + b"9" * 5000 + b"}"),
              raw_manifest("verify-manifest-fifo", "fifo", True),
              raw_manifest("verify-manifest-directory", "dir")]

    def dump_case(cid, mutate_dump, expect, isolated=False, verdict=False,
                  pick=lambda t: t["role"] == "output"):
        """The dump folder is a copy of the golden set with one tensor's file replaced.
        ``verdict``: a dump that is readable but differs may also be reported as a mismatch
        (exit 1, the report naming the file)."""
        def build(ctx):
            dump = ctx.tmp / "dump"
            shutil.copytree(ctx.assets.golden, dump)
            manifest = json.loads((dump / "manifest.json").read_text())
            (dump / "manifest.json").unlink()
            t = next(t for t in manifest["tensors"] if pick(t))
            stem = Path(t["files"]["npy"]).stem
            target = mutate_dump(ctx, dump, t, stem)
            return cmd_verify(ctx, actual=str(dump)), (expect(target),)
        return Case(cid, build, isolated, verdict)

    def npy(arr_fn):
        def m(ctx, dump, t, stem):
            for ext in ("npy", "hex", "bin"):
                for f in dump.rglob(f"{stem}.{ext}"):
                    f.unlink()
            p = dump / "tensors" / f"{stem}.npy"
            p.parent.mkdir(exist_ok=True)
            data = arr_fn(t)
            p.write_bytes(data if isinstance(data, bytes) else _npy_bytes(data))
            return p
        return m

    def hexfile(text_fn):
        def m(ctx, dump, t, stem):
            for ext in ("npy", "hex", "bin"):
                for f in dump.rglob(f"{stem}.{ext}"):
                    f.unlink()
            p = dump / "tensors" / f"{stem}.hex"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(text_fn(t))
            return p
        return m

    def name_of(p):
        return os.path.basename(str(p))
    n = lambda t: int(np.prod(t["shape"]))
    cases += [
        dump_case("verify-dump-wrong-shape", npy(lambda t: np.zeros((n(t) + 3,), t["dtype"])), name_of, verdict=True),
        dump_case("verify-dump-wrong-rank", npy(lambda t: np.zeros(t["shape"] + [2], t["dtype"])), name_of, verdict=True),
        dump_case("verify-dump-nan", npy(lambda t: np.full(t["shape"], np.nan, np.float32)), name_of, verdict=True),
        dump_case("verify-dump-inf", npy(lambda t: np.full(t["shape"], np.inf, np.float64)), name_of, verdict=True),
        dump_case("verify-dump-int-nan", npy(lambda t: np.full(t["shape"], np.nan, np.float32)), name_of,
                  pick=lambda t: t["encoding"] != "ieee754-binary32"),
        dump_case("verify-dump-int-inf", npy(lambda t: np.full(t["shape"], -np.inf, np.float64)), name_of,
                  pick=lambda t: t["encoding"] != "ieee754-binary32"),
        dump_case("verify-dump-int-fraction", npy(lambda t: np.full(t["shape"], 0.5, np.float32)), name_of,
                  pick=lambda t: t["encoding"] != "ieee754-binary32"),
        dump_case("verify-dump-complex", npy(lambda t: np.zeros(t["shape"], np.complex64)), name_of),
        dump_case("verify-dump-strings", npy(lambda t: np.full(t["shape"], "a")), name_of),
        dump_case("verify-dump-object", npy(lambda t: np.array([None] * n(t), dtype=object)), name_of),
        dump_case("verify-dump-header-1tb", npy(lambda t: _npy_header_only((250_000_000_000,), "<i1")),
                  name_of, True),
        dump_case("verify-dump-truncated", npy(lambda t: _npy_bytes(np.zeros(t["shape"], t["dtype"]))[:100]),
                  name_of),
        dump_case("verify-hex-overlong-word", hexfile(lambda t: b"f" * 100_000 + b"\n"), name_of),
        dump_case("verify-hex-too-wide", hexfile(lambda t: b"fffff\n" * n(t)), name_of, verdict=True),
        dump_case("verify-hex-not-hex", hexfile(lambda t: b"zzgq\n" * n(t)), name_of, verdict=True),
        dump_case("verify-hex-too-many", hexfile(lambda t: b"00\n" * (n(t) * 5 + 1)), name_of, verdict=True),
        dump_case("verify-hex-binary", hexfile(lambda t: np.random.default_rng(5).bytes(3000)), name_of),
    ]
    for kind in ("missing", "fifo"):
        def build(ctx, kind=kind):
            p = _hostile_path(ctx, kind, "")
            return cmd_verify(ctx, golden=p), (p,)
        cases.append(Case(f"verify-golden-path-{kind}", build, kind in ISOLATED_KINDS))

        def build_actual(ctx, kind=kind):
            p = _hostile_path(ctx, kind, "_dump")
            return cmd_verify(ctx, actual=p), (p,)
        cases.append(Case(f"verify-actual-path-{kind}", build_actual, kind in ISOLATED_KINDS))
    return cases


# ----------------------------------------------------------------------- the shipped demo model

def _demo(mutate):
    """The shipped demo model with one change ``mutate(model)``."""
    def make():
        from mrq.demo import DEMO_MODEL
        model = onnx.load(DEMO_MODEL)
        mutate(model)
        return model
    return make


def _demo_attr(node_name, attr, value):
    def mutate(model):
        node = next(n for n in model.graph.node if n.name == node_name)
        for a in list(node.attribute):
            if a.name == attr:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(attr, value))
    return mutate


def _demo_init(name, change):
    def mutate(model):
        i = next(i for i, t in enumerate(model.graph.initializer) if t.name == name)
        arr = numpy_helper.to_array(model.graph.initializer[i])
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(change(arr), name))
    return mutate


def _cases_demo():
    muts = {
        "stem-stride-0": ("stem_conv", _demo_attr("stem_conv", "strides", [0, 1])),
        "dw-group-5": ("dw_conv", _demo_attr("dw_conv", "group", 5)),
        "down-pad-negative": ("down_conv", _demo_attr("down_conv", "pads", [1, 1, -1, 1])),
        "maxpool-kernel-99": ("maxpool", _demo_attr("maxpool", "kernel_shape", [99, 99])),
        "pw-weight-scales-cut": ("w3_DequantizeLinear", _demo_init("w3_scale", lambda a: a[:-1])),
        "fc-bias-cut": ("classifier", _demo_init("bfc_quantized", lambda a: a[:-1])),
        "fc-weight-scales-doubled": ("wfc_DequantizeLinear",
                                     _demo_init("wfc_scale", lambda a: np.concatenate([a, a]))),
        "stem-bias-extra": ("stem_conv", _demo_init("b1_quantized", lambda a: np.concatenate([a, a[:1]]))),
    }
    cases = []
    for name, (node, mutate) in muts.items():
        for cmd_name in ("check", "sim"):
            cmd = MODEL_COMMANDS[cmd_name]
            cases.append(Case(f"demo-{cmd_name}-{name}",
                              lambda ctx, m=mutate, cmd=cmd, node=node: (
                                  cmd(ctx, model=M.write_onnx(_demo(m)(), ctx.path("demo.onnx"))),
                                  ((node, "demo.onnx"),))))
    return cases


def all_cases() -> list:
    cases = (_cases_onnx_shapes() + _cases_onnx_sizes() + _cases_model_files() + _cases_tflite_shapes()
             + _cases_yaml() + _cases_inputs() + _cases_calib() + _cases_labels() + _cases_verify()
             + _cases_demo())
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {sorted(dup)}"
    return cases


CASES = all_cases()
