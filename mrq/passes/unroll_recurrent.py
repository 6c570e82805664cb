"""unroll_recurrent: integer LSTMs and SVDFs (:mod:`mrq.tflite_import_recurrent`) as the per-step
ops a profile without recurrent arithmetic runs (the NNA profiles).

The recurrence is unrolled into a graph of the profile's own ops, whose float semantics are the
recurrent op's (:mod:`mrq.float_ref_recurrent`) on the same dequantized weights:

``LSTM``, per time step ``t`` (the sequence sliced by a ``Take``): per gate a ``Gemm`` of ``x_t``
(with the gate bias) and one of ``h_{t-1}`` (none at ``t = 0``: the state starts at 0), their
``Add`` (a peephole is a ``Gemm`` of the cell state with a diagonal weight, then an ``Add``), the
gate's ``Logistic`` (CIFG: ``i = 1 - f = sigmoid(-z_f)``, the forget gate's products with negated
weights); the cell state ``c = f * c + i * g`` (``Mul`` and ``Add``, the cell clip fused into the
``Add``); ``h = o * tanh(c)``, then the projection ``Gemm`` (clip fused). The output sequence is
the ``Concat`` of every step's ``h``; the last step's ``h`` and ``c`` are the node's state outputs,
and every step's state is a tensor of its own (``<lstm>_t<k>_h`` / ``_c``), so a trace shows it.

A profile with ``Tanh`` gets ``gate * Tanh(v)``. One without it (the NNA profiles: ``Logistic`` is
their only table op) gets ``gate * tanh(v) = 2 * (gate * sigmoid(2 v)) - gate`` from ops it has:
the cell gate's ``2 v`` folded into its weights and bias (scales doubled, codes kept: exact), the
cell state's ``Add(c, c)``, then ``Logistic``, ``Mul``, ``Add(m, m)`` and ``Sub`` — no constant
operand (a constant does not read back from ONNX QDQ as an integer op). It costs precision: the
``Sub`` of two nearly equal 8-bit values (measured: mnist_lstm_int8 under nna-sym8, 23.4 dB with
it, 25.8 dB with ``Tanh`` added to the profile).

Grids: without calibration data the new tensors stay on the grids the LiteRT kernel computes on
(gate pre-activations Q3.12 int16, LiteRT saturating there; sigmoid outputs Q0.15; the cell state
on the model's cell-state grid; ``h`` on the output-state grid). With calibration data each one
covers the largest magnitude it takes on it (within that grid). The grid passes then move them
onto the profile's activation grid like every other tensor: the unrolled graph is the input model
the passes see.

``Svdf`` (one step from the reset state, as LiteRT and the simulator run it): the feature ``Gemm``
onto the state grid, the state buffer (each filter's memory: the newest slot that value, the older
ones the reset state's zeros: ``Reshape`` + ``Pad`` + ``Reshape``, the node's state output), then
the time-window ``Gemm`` over the whole buffer (each unit's column holds its ``rank`` filters' time
weights: the dot over the memory and the sum over rank in one product) with the bias and the RELU.
"""
from __future__ import annotations

import numpy as np

from mrq.errors import UnsupportedOpError
from mrq.ir import Graph, Node, QParams, Tensor

RECURRENT_OPS = {"LSTM": "LSTM", "Svdf": "SVDF"}   # IR op -> the supported_ops name that keeps it
_Q3_12 = 2.0 ** -12
_Q0_15 = 2.0 ** -15


def _grid(scale: float, dtype: str = "int16", zero_point: int = 0) -> QParams:
    return QParams(np.array([scale], np.float32), np.array([zero_point], np.int64), dtype)


class _Builder:
    """Emits the nodes that replace one recurrent node, with fresh tensor and node names."""

    def __init__(self, graph: Graph, node: Node, use_tanh: bool):
        self.g, self.node, self.use_tanh = graph, node, use_tanh
        self.nodes: list = []
        self.node_names = {n.name for n in graph.nodes}

    def node_name(self, base: str) -> str:
        name, i = base, 1
        while name in self.node_names:
            name, i = f"{base}_{i}", i + 1
        self.node_names.add(name)
        return name

    def tensor(self, name: str, shape: tuple, qp: QParams, data=None) -> str:
        name = self.g.unique_name(name)
        self.g.tensors[name] = Tensor(name, tuple(shape), qp.dtype, qp, data)
        return name

    def const(self, name: str, codes: np.ndarray, qp: QParams) -> str:
        codes = np.ascontiguousarray(codes)
        return self.tensor(name, codes.shape, qp, codes)

    def op(self, op: str, name: str, inputs: list, out: str, **attrs) -> str:
        # not the recurrent node's tflite_op: lowering reads that to pick LiteRT kernels
        attrs.setdefault("unrolled_from", self.node.name)
        self.nodes.append(Node(op, self.node_name(name), list(inputs), [out], attrs))
        return out

    def new(self, op: str, name: str, inputs: list, dims: tuple, qp: QParams, **attrs) -> str:
        return self.op(op, name, inputs, self.tensor(name, dims, qp), **attrs)

    def sigmoid(self, name: str, pre: str, shape: tuple) -> str:
        return self.new("Logistic", name, [pre], shape, _grid(_Q0_15))

    def gated_tanh(self, name: str, gate: str, pre: str, out: str, doubled: bool, **attrs) -> str:
        """``gate * tanh(v)`` into tensor ``out``; ``pre`` holds ``v`` (``doubled``: ``2 v``).
        Without Tanh: ``gate * (2 sigmoid(2v) - 1) = 2 (gate * sigmoid(2v)) - gate``, no constant
        (a constant operand does not survive the ONNX QDQ round trip as an integer op)."""
        dims = self.g.tensors[out].shape
        if self.use_tanh:
            t = self.new("Tanh", f"{name}_tanh", [pre], dims, _grid(_Q0_15))
            return self.op("Mul", name, [gate, t], out, **attrs)
        if not doubled:
            pq = self.g.tensors[pre].qparams
            pre = self.new("Add", f"{name}_x2", [pre, pre], dims, pq.with_(scale=pq.scale * 2))
        s = self.sigmoid(f"{name}_sigmoid", pre, dims)
        m = self.new("Mul", f"{name}_gs", [gate, s], dims, _grid(_Q0_15))
        m2 = self.new("Add", f"{name}_2gs", [m, m], dims, _grid(2 * _Q0_15))
        return self.op("Sub", name, [m2, gate], out, **attrs)


def _gemm_weight(b: _Builder, name: str, w: Tensor, scale_factor: float = 1.0) -> str:
    """A TFLite [out, in] weight as the IR Gemm's [in, out], codes kept (``scale_factor`` scales
    the real values exactly; a negative one negates the codes, held in int16: -(-128) fits)."""
    qp = w.qparams.with_(scale=w.qparams.scale * np.float32(abs(scale_factor)))
    codes = np.asarray(w.data).T.astype(np.int64)
    if scale_factor < 0:
        codes, qp = -codes, qp.with_(dtype="int16", narrow_range=False)
    return b.const(name, codes, qp)


def _bias(b: _Builder, name: str, bias: Tensor, x_qp: QParams, w_qp: QParams, factor: float = 1.0) -> str:
    """An int32 bias on ``s_x * s_w`` (the grid it has in the LiteRT kernel), scaled by ``factor``."""
    scale = np.float32(x_qp.scale[0]) * np.float32(w_qp.scale[0]) * np.float32(abs(factor))
    qp = bias.qparams.with_(scale=np.array([scale], np.float32)) if bias.qparams is not None \
        else _grid(float(scale), "int32")
    return b.const(name, (-1 if factor < 0 else 1) * np.asarray(bias.data).astype(np.int64), qp)


def _unroll_lstm(graph: Graph, node: Node, use_tanh: bool) -> list:
    b = _Builder(graph, node, use_tanh)
    at = node.attrs
    by_role = {r: graph.tensors[n] for r, n in zip(at["roles"], node.inputs[1:])}
    x = node.inputs[0]
    xt = graph.tensors[x]
    y, h_state, c_state = node.outputs
    n_time, n_in = int(xt.shape[1]), int(xt.shape[2])
    n_cell = np.shape(by_role["input_to_output"].data)[0]
    n_out = np.shape(by_role["recurrent_to_output"].data)[1]
    cifg = "input_to_input" not in by_role
    h_qp = graph.tensors[h_state].qparams
    c_qp = graph.tensors[c_state].qparams
    hidden_qp = _grid(float(at["hidden_scale"]), "int8", int(at["hidden_zero_point"]))
    cell_clip, proj_clip = float(at.get("cell_clip", 0.0)), float(at.get("proj_clip", 0.0))
    cell = (None, n_cell)
    base = node.name
    h = c = None
    steps = []

    def gate_pre(p: str, g: str, x_t: str, factor: float) -> str:
        """``factor * (W_x x_t + W_h h + b)`` (+ the peephole on the previous cell state), on
        LiteRT's gate grid Q3.12 scaled by ``|factor|``."""
        qp = _grid(_Q3_12 * abs(factor))
        w_x = by_role[f"input_to_{g}"]
        inputs = [x_t, _gemm_weight(b, f"{p}_wx", w_x, factor)]
        if f"{g}_bias" in by_role:
            inputs.append(_bias(b, f"{p}_bias", by_role[f"{g}_bias"], xt.qparams, w_x.qparams, factor))
        pre = b.new("Gemm", f"{p}_x", inputs, cell, qp)
        if h is not None:
            rec = b.new("Gemm", f"{p}_h", [h, _gemm_weight(b, f"{p}_wh", by_role[f"recurrent_to_{g}"], factor)],
                        cell, qp)
            pre = b.new("Add", f"{p}_pre", [pre, rec], cell, qp)
        peep = by_role.get(f"cell_to_{g}")
        if peep is not None and g != "output" and c is not None:
            pre = _peephole(b, p, pre, c, peep, qp, factor)
        return pre

    for t in range(n_time):
        p = f"{base}_t{t}"
        last = t == n_time - 1
        x_t = b.new("Take", f"{p}_x", [x], (None, n_in), xt.qparams,
                    source=np.arange(t * n_in, (t + 1) * n_in, dtype=np.int64), shape=(n_in,))
        f = b.sigmoid(f"{p}_f", gate_pre(f"{p}_forget", "forget", x_t, 1.0), cell)
        # CIFG: i = 1 - f = sigmoid(-z_f), the forget gate's product with negated weights
        i = b.sigmoid(f"{p}_i", gate_pre(f"{p}_input", "forget" if cifg else "input", x_t,
                                         -1.0 if cifg else 1.0), cell)
        # without Tanh, tanh(z) is built from sigmoid(2 z): the cell gate's weights doubled
        g_pre = gate_pre(f"{p}_cell", "cell", x_t, 1.0 if use_tanh else 2.0)
        clip = {"clamp": (-cell_clip, cell_clip)} if cell_clip > 0 else {}
        c_name = c_state if last else b.tensor(f"{p}_c", cell, c_qp)
        if c is None:    # the state starts at 0: c = i * g, |c| < 1
            if clip and cell_clip < 1.0:
                # a clamp fused into a Sub reads back from ONNX as a float Sub: a Clip of its own
                ig = b.gated_tanh(f"{p}_ig", i, g_pre, b.tensor(f"{p}_ig", cell, c_qp), doubled=not use_tanh)
                c = b.op("Clamp", f"{p}_c", [ig], c_name, lo=-cell_clip, hi=cell_clip)
            else:
                c = b.gated_tanh(f"{p}_c", i, g_pre, c_name, doubled=not use_tanh)
        else:
            fc = b.new("Mul", f"{p}_fc", [f, c], cell, c_qp)
            ig = b.gated_tanh(f"{p}_ig", i, g_pre, b.tensor(f"{p}_ig", cell, c_qp), doubled=not use_tanh)
            c = b.op("Add", f"{p}_c", [fc, ig], c_name, **clip)
        o_pre = gate_pre(f"{p}_output", "output", x_t, 1.0)
        if by_role.get("cell_to_output") is not None:
            o_pre = _peephole(b, f"{p}_output", o_pre, c, by_role["cell_to_output"], _grid(_Q3_12), 1.0)
        o = b.sigmoid(f"{p}_o", o_pre, cell)
        h_name = h_state if last else b.tensor(f"{p}_h", (None, n_out), h_qp)
        if "projection" in by_role:
            m = b.gated_tanh(f"{p}_m", o, c, b.tensor(f"{p}_m", cell, hidden_qp), doubled=False)
            w_p = by_role["projection"]
            inputs = [m, _gemm_weight(b, f"{p}_wp", w_p)]
            if "projection_bias" in by_role:
                inputs.append(_bias(b, f"{p}_bp", by_role["projection_bias"], hidden_qp, w_p.qparams))
            pclip = {"clamp": (-proj_clip, proj_clip)} if proj_clip > 0 else {}
            h = b.op("Gemm", f"{p}_h", inputs, h_name, **pclip)
        else:
            h = b.gated_tanh(f"{p}_h", o, c, h_name, doubled=False)
        steps.append(h)
    if n_time == 1:
        b.op("Reshape", f"{base}_y", [steps[0]], y, shape=(0, 1, n_out))
    else:
        seq = [b.new("Reshape", f"{base}_t{t}_y", [h_t], (None, 1, n_out), graph.tensors[h_t].qparams,
                     shape=(0, 1, n_out)) for t, h_t in enumerate(steps)]
        b.op("Concat", f"{base}_y", seq, y, axis=1)
    return b.nodes


def _peephole(b: _Builder, p: str, pre: str, c: str, peep: Tensor, qp: QParams, factor: float) -> str:
    """``pre + factor * (peep * c)``: the elementwise peephole product as a Gemm with a diagonal
    weight (the MAC array runs it; a constant operand of Mul has no integer ONNX QDQ form)."""
    codes = np.asarray(peep.data).astype(np.int64).reshape(-1)
    diag = np.diag(codes * (-1 if factor < 0 else 1))
    w = b.const(f"{p}_peephole", diag, peep.qparams.with_(dtype="int32",
                                                          scale=peep.qparams.scale * np.float32(abs(factor))))
    dims = b.g.tensors[pre].shape
    term = b.new("Gemm", f"{p}_peep", [c, w], dims, qp)
    return b.new("Add", f"{p}_pre_peep", [pre, term], dims, qp)


def _unroll_svdf(graph: Graph, node: Node) -> list:
    b = _Builder(graph, node, use_tanh=True)
    wf, wt = (graph.tensors[n] for n in node.inputs[1:3])
    y, state = node.outputs
    rank = int(node.attrs["rank"])
    w_time = np.asarray(wt.data).astype(np.int64)
    n_filter, n_memory = w_time.shape
    n_unit = n_filter // rank
    st_qp = graph.tensors[state].qparams
    base = node.name
    newest = b.new("Gemm", f"{base}_feature", [node.inputs[0], _gemm_weight(b, f"{base}_wf", wf)],
                   (None, n_filter), st_qp)
    col = b.new("Reshape", f"{base}_newest", [newest], (None, n_filter, 1), st_qp, shape=(0, n_filter, 1))
    buf = b.new("Pad", f"{base}_memory", [col], (None, n_filter, n_memory), st_qp,
                pads=((0, 0), (0, 0), (n_memory - 1, 0)), value=0.0)
    b.op("Reshape", f"{base}_state", [buf], state, shape=(0, n_filter * n_memory))
    # the time-window weights: row f * memory + m of unit f // rank holds w_time[f, m]
    window = np.zeros((n_filter * n_memory, n_unit), np.int64)
    rows = np.arange(n_filter * n_memory)
    window[rows, rows // n_memory // rank] = w_time.reshape(-1)
    inputs = [state, b.const(f"{base}_wt", window, wt.qparams)]
    if len(node.inputs) > 3:
        inputs.append(_bias(b, f"{base}_bias", graph.tensors[node.inputs[3]], st_qp, wt.qparams))
    # LiteRT's integer SVDF runs only with RELU (mrq.tflite_import_recurrent): the float op's
    b.op("Gemm", f"{base}_time", inputs, y, clamp=(0.0, None))
    return b.nodes


def unroll_recurrent(graph: Graph, ctx) -> Graph:
    """The pass: ``mrq.requant.requantize`` runs it before the others and makes its result the
    input model they see (its float semantics are the input model's)."""
    return unroll_graph(graph, ctx.profile, ctx.calib)[0]


def unroll_graph(graph: Graph, profile, calib: dict | None = None) -> tuple[Graph, list]:
    """(the graph with every LSTM/Svdf node the profile does not run unrolled, the names of the
    unrolled nodes). ``graph`` is not modified. With calibration data (``calib``: the model's
    inputs) each new activation tensor's grid covers the values it takes on them, within the
    kernel's own grid (:func:`calibrated_grids`)."""
    supported = set(profile.supported_ops or ())
    todo = [n for n in graph.nodes if n.op in RECURRENT_OPS and RECURRENT_OPS[n.op] not in supported]
    if not todo:
        return graph, []
    use_tanh = "Tanh" in supported
    new = graph.copy()
    nodes, created = [], set()
    for node in new.nodes:
        if node.op not in RECURRENT_OPS or RECURRENT_OPS[node.op] in supported:
            nodes.append(node)
            continue
        if node.op == "LSTM":
            if node.attrs.get("time_major"):
                raise UnsupportedOpError("LSTM", node.name, "unrolling a time-major LSTM")
            emitted = _unroll_lstm(new, node, use_tanh)
        else:
            emitted = _unroll_svdf(new, node)
        nodes.extend(emitted)
        # the sequence output keeps the model's grid; every other tensor the unrolled ops write,
        # the recurrent state included, is an intermediate of the kernel
        created |= {t for n in emitted for t in n.outputs} - {node.outputs[0]}
    new.nodes = nodes
    # the recurrent nodes' weights: the unrolled nodes hold copies of their own
    used = {n for node in nodes for n in node.inputs} | set(new.outputs)
    for node in todo:
        for name in node.inputs[1:]:
            if name not in used:
                new.tensors.pop(name, None)
    if calib is not None:
        calibrated_grids(new, sorted(created), calib)
    return new, [n.name for n in todo]


def calibrated_grids(graph: Graph, names: list, calib: dict) -> None:
    """Each of ``names`` onto the int16 symmetric grid of the largest magnitude it takes on the
    calibration data (in the unrolled float graph, so within the kernel's grid: LiteRT saturates
    its gates at Q3.12 and so does the unrolled graph). LiteRT's grids are fixed for every model
    (a cell state of 2**-11 spans +-16); the grid passes only shrink a grid by a clip factor down
    to 0.5, so the ranges the values really take are set here, where they are known."""
    from mrq.float_ref import FloatReference
    from mrq.passes.base import CALIB_DTYPE
    env = FloatReference(graph, dtype=CALIB_DTYPE).run(calib, keep=set(names))
    for name in names:
        values = env.get(name)
        t = graph.tensors[name]
        if values is None or t.qparams is None or not np.size(values):
            continue
        peak = float(np.max(np.abs(values)))
        lo, hi = (float(v) for v in t.qparams.dequantize(np.array([t.qparams.qmin, t.qparams.qmax])))
        peak = min(peak, max(-lo, hi))
        if peak > 0:
            t.qparams = _grid(peak / 32767)
            t.dtype = "int16"
