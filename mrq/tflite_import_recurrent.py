"""TFLite recurrent operators -> :mod:`mrq.ir`: UNIDIRECTIONAL_SEQUENCE_LSTM and SVDF (fully
integer models only; the float and hybrid kernels are not simulated).

``LSTM`` IR node (one per UNIDIRECTIONAL_SEQUENCE_LSTM):

* inputs: the int8 sequence ``x`` [batch, time, n_input] (batch-major), then the constant weight,
  bias, peephole and projection tensors the operator has, in TFLite's order; ``attrs['roles']``
  names each of them (``input_to_forget``, ``forget_bias``, ``cell_to_output``, ...), so an
  absent optional tensor (CIFG, no peephole, no projection) is simply not listed.
* outputs: the output sequence, then the final output (hidden) state and cell state, named as the
  model's variable tensors: a trace shows the recurrent state LiteRT keeps after the sequence.
* attrs: ``cell_clip``, ``proj_clip`` (real values, 0 = none), ``hidden_scale`` /
  ``hidden_zero_point`` (the operator's fifth intermediate tensor, the grid of
  ``output_gate * tanh(cell)`` before the projection), ``time_major`` (always False here).

``Svdf`` IR node: inputs ``x`` [batch, n_input], feature weights int8 [units*rank, n_input], time
weights int16 [units*rank, memory], optional bias int32 [units]; outputs ``y`` [batch, units] and
the final activation state [batch, units*rank*memory] (named as the model's state tensor); attrs
``rank``, ``clamp`` (fused RELU/RELU6/RELU_N1_TO_1 as in :mod:`mrq.tflite_import`),
``state_scale``/``state_zero_point``.
"""
from __future__ import annotations

import numpy as np

from mrq.errors import ModelError, UnsupportedOpError

# TFLite's input slots of the full LSTM kernel (lstm_shared.h), by role
LSTM_ROLES = ("input", "input_to_input", "input_to_forget", "input_to_cell", "input_to_output",
              "recurrent_to_input", "recurrent_to_forget", "recurrent_to_cell",
              "recurrent_to_output", "cell_to_input", "cell_to_forget", "cell_to_output",
              "input_bias", "forget_bias", "cell_bias", "output_bias", "projection",
              "projection_bias", "output_state", "cell_state", "input_layer_norm",
              "forget_layer_norm", "cell_layer_norm", "output_layer_norm")
_REQUIRED = ("input_to_forget", "input_to_cell", "input_to_output", "recurrent_to_forget",
             "recurrent_to_cell", "recurrent_to_output", "forget_bias", "cell_bias", "output_bias")
_WEIGHT_TYPES = {"input_to": ("int8",), "recurrent_to": ("int8",), "cell_to": ("int16",),
                 "projection": ("int8",)}


def _fail(index: int, op: str, problem: str) -> ModelError:
    return ModelError(f"operator {index} ({op}): {problem}")


def _const_of(imp, idx: int, role: str, op: str, index: int, dtypes: tuple) -> str:
    raw = imp._raw[idx]
    if not isinstance(raw["data"], np.ndarray):
        raise UnsupportedOpError(op, f"operator {index}", f"{role} {raw['name']!r} must be a constant")
    if raw["dtype"] not in dtypes:
        raise UnsupportedOpError(op, f"operator {index}",
                                 f"{role} {raw['name']!r} has type {raw['dtype']} ({' or '.join(dtypes)} "
                                 f"expected; float and hybrid recurrent models are not simulated)")
    if raw["scale"] is None and dtypes != ("int32",):
        raise _fail(index, op, f"{role} {raw['name']!r} has no quantization parameters")
    if raw["scale"] is not None and raw["scale"].size > 1:
        raise UnsupportedOpError(op, f"operator {index}", f"per-channel quantized {role} {raw['name']!r}")
    return imp._constant(idx, op, index)


def import_lstm(imp, op, name: str, index: int, ins: list, outs: list) -> None:
    """UNIDIRECTIONAL_SEQUENCE_LSTM, fully integer (int8 x/h, int16 cell, int8 weights)."""
    if len(ins) not in (20, 24):
        raise _fail(index, name, f"{len(ins)} inputs; an LSTM has 20 or 24 (input, 4 gates x "
                                 f"(input, recurrent, peephole) weights, 4 biases, projection, "
                                 f"2 states, 4 layer norms)")
    if len(outs) != 1:
        raise _fail(index, name, f"{len(outs)} outputs; UNIDIRECTIONAL_SEQUENCE_LSTM has 1")
    slots = {role: (ins[i] if i < len(ins) and ins[i] >= 0 else None) for i, role in enumerate(LSTM_ROLES)}
    missing = [r for r in _REQUIRED + ("output_state", "cell_state") if slots[r] is None]
    if missing:
        raise _fail(index, name, f"missing {', '.join(missing)} (every LSTM has the forget, cell and "
                                 f"output gates)")
    o = imp._options(op, "UnidirectionalSequenceLSTMOptions")
    if o is not None and o.TimeMajor():
        raise UnsupportedOpError(name, f"operator {index}", "time-major input (the batch must lead)")
    if any(slots[r] is not None for r in LSTM_ROLES[20:]):
        raise UnsupportedOpError(name, f"operator {index}", "layer-normalised integer LSTM")
    cifg = slots["input_to_input"] is None
    if cifg != (slots["recurrent_to_input"] is None) or cifg != (slots["input_bias"] is None):
        raise _fail(index, name, "the input gate's weights and bias must be all present or all absent")
    peep = [slots[r] is not None for r in ("cell_to_forget", "cell_to_output")]
    if any(peep) and not all(peep) or (not cifg and any(peep) and slots["cell_to_input"] is None):
        raise _fail(index, name, "peephole weights must be all present or all absent")
    if slots["projection_bias"] is not None and slots["projection"] is None:
        raise _fail(index, name, "a projection bias without projection weights")

    x = imp._activation(slots["input"], name, index)
    xt = imp.tensors[x]
    if xt.dtype != "int8" or not xt.is_quantized:
        raise UnsupportedOpError(name, f"operator {index}",
                                 f"input {x!r} is {xt.dtype}; only the int8 x int8 -> int16 integer LSTM "
                                 f"is simulated")
    if len(xt.shape) != 3:
        raise UnsupportedOpError(name, f"operator {index}", f"input must be [batch, time, features], got "
                                                            f"{list(xt.shape)}")
    inputs, roles = [x], []
    for role in LSTM_ROLES[1:18]:
        idx = slots[role]
        if idx is None:
            continue
        if role.endswith("bias"):
            dtypes = ("int32",)
        else:
            dtypes = next(v for k, v in _WEIGHT_TYPES.items() if role.startswith(k))
        inputs.append(_const_of(imp, idx, role, name, index, dtypes))
        roles.append(role)
    shapes = {r: tuple(imp.tensors[t].shape) for r, t in zip(roles, inputs[1:])}
    n_cell, n_input = shapes["input_to_output"]
    n_output = shapes["recurrent_to_output"][1]
    for r, s in shapes.items():
        want = {"input_to": (n_cell, n_input), "recurrent_to": (n_cell, n_output),
                "cell_to": (n_cell,), "projection": (n_output, n_cell)}
        expect = (n_output,) if r == "projection_bias" else (n_cell,) if r.endswith("bias") else \
            next(v for k, v in want.items() if r.startswith(k))
        if s != expect:
            raise _fail(index, name, f"{r} has shape {list(s)}, expected {list(expect)}")
    if xt.shape[2] != n_input:
        raise _fail(index, name, f"input has {xt.shape[2]} features, the weights take {n_input}")
    if slots["projection"] is None and n_output != n_cell:
        raise _fail(index, name, f"{n_output} outputs for {n_cell} cells without a projection")

    op_inter = [int(v) for v in op.IntermediatesAsNumpy()] if op.IntermediatesLength() else []
    if len(op_inter) != 5:
        raise UnsupportedOpError(name, f"operator {index}",
                                 f"{len(op_inter)} intermediate tensors; the integer LSTM needs 5 "
                                 f"(LiteRT refuses it otherwise)")
    hidden = imp._raw[op_inter[4]]
    if hidden["scale"] is None:
        raise _fail(index, name, f"intermediate {hidden['name']!r} (the hidden grid) has no quantization")

    y = imp._output(outs[0], name, index)
    h_state = imp._output(slots["output_state"], name, index)
    c_state = imp._output(slots["cell_state"], name, index)
    for t, dt in ((y, "int8"), (h_state, "int8"), (c_state, "int16")):
        tt = imp.tensors[t]
        if tt.dtype != dt or not tt.is_quantized:
            raise UnsupportedOpError(name, f"operator {index}", f"{t!r} is {tt.dtype}, {dt} expected")
    for t, n in ((h_state, n_output), (c_state, n_cell)):
        shape = imp.tensors[t].shape
        if int(np.prod([d for d in shape[1:]] or [1])) != n:
            raise _fail(index, name, f"state {t!r} has shape {list(shape)}, expected {n} values per row")
        imp.tensors[t].shape = (None, n)
    clip = (float(o.CellClip()), float(o.ProjClip())) if o is not None else (0.0, 0.0)
    if clip[0] < 0 or clip[1] < 0:
        raise _fail(index, name, "negative cell or projection clip")
    imp._emit("LSTM", name, index, inputs, [y, h_state, c_state], roles=tuple(roles),
              cell_clip=clip[0], proj_clip=clip[1], hidden_scale=float(hidden["scale"][0]),
              hidden_zero_point=int(hidden["zp"][0]), time_major=False)


def import_svdf(imp, op, name: str, index: int, ins: list, outs: list) -> None:
    """SVDF, fully integer (int8 x and feature weights, int16 time weights and state)."""
    if len(ins) != 5 or len(outs) != 1:
        raise _fail(index, name, f"{len(ins)} inputs and {len(outs)} outputs; SVDF has 5 inputs "
                                 f"(input, feature weights, time weights, bias, state) and 1 output")
    o = imp._options(op, "SVDFOptions")
    rank = int(o.Rank()) if o is not None else 0
    act = int(o.FusedActivationFunction()) if o is not None else 0
    x = imp._activation(ins[0], name, index)
    xt = imp.tensors[x]
    if xt.dtype != "int8" or not xt.is_quantized:
        raise UnsupportedOpError(name, f"operator {index}", f"input {x!r} is {xt.dtype}; only the "
                                                            f"integer SVDF (int8 input) is simulated")
    if len(xt.shape) != 2:
        raise UnsupportedOpError(name, f"operator {index}", f"input must be [batch, features], got "
                                                            f"{list(xt.shape)}")
    if act != 1:
        # LiteRT's integer SVDF Eval: TF_LITE_ENSURE_EQ(params->activation, kTfLiteActRelu)
        raise ModelError(f"operator {index} ({name}): fused activation {act}; LiteRT's integer SVDF "
                         f"runs only with RELU (which it then does not apply)")
    time_raw = imp._raw[ins[2]]
    state_raw = imp._raw[ins[4]]
    if time_raw["dtype"] != "int16" or state_raw["dtype"] != "int16":
        raise UnsupportedOpError(name, f"operator {index}",
                                 f"time weights {time_raw['dtype']} and state {state_raw['dtype']}: "
                                 f"LiteRT's integer SVDF reads both as int16 (the int8 variant is "
                                 f"tflite-micro's; LiteRT misreads it)")
    wf = _const_of(imp, ins[1], "feature weights", name, index, ("int8",))
    wt = _const_of(imp, ins[2], "time weights", name, index, ("int16",))
    n_filter, n_input = imp.tensors[wf].shape
    n_memory = imp.tensors[wt].shape[1]
    if rank < 1 or n_filter % rank:
        raise _fail(index, name, f"rank {rank} does not divide the {n_filter} filters")
    if imp.tensors[wt].shape[0] != n_filter or xt.shape[1] != n_input:
        raise _fail(index, name, f"weights {list(imp.tensors[wf].shape)} and "
                                 f"{list(imp.tensors[wt].shape)} do not match input {list(xt.shape)}")
    inputs = [x, wf, wt]
    if ins[3] >= 0:
        b = _const_of(imp, ins[3], "bias", name, index, ("int32",))
        if imp.tensors[b].shape != (n_filter // rank,):
            raise _fail(index, name, f"bias has shape {list(imp.tensors[b].shape)}, expected "
                                     f"[{n_filter // rank}]")
        inputs.append(b)
    y = imp._output(outs[0], name, index)
    state = imp._output(ins[4], name, index)
    st = imp.tensors[state]
    if not st.is_quantized or int(np.prod([d for d in st.shape[1:]] or [1])) != n_filter * n_memory:
        raise _fail(index, name, f"state {state!r} must be quantized with {n_filter * n_memory} "
                                 f"values per row")
    st.shape = (None, n_filter * n_memory)
    if imp.tensors[y].dtype != "int8":
        raise UnsupportedOpError(name, f"operator {index}", f"output {y!r} is {imp.tensors[y].dtype}")
    imp._emit("Svdf", name, index, inputs, [y, state], rank=rank)
