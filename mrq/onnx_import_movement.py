"""ONNX shape, data-movement and selection operators -> :mod:`mrq.ir`.

Handlers ``(importer, node)`` for :class:`mrq.onnx_import._Importer`, looked up by op type in
:data:`HANDLERS`.

* Every data-movement op (Slice, Split, Gather with constant indices, DepthToSpace, SpaceToDepth,
  nearest Resize, Squeeze/Unsqueeze through :func:`movement`) is one numpy function of the input
  array with ONNX's semantics. On a constant it folds the op at import; on ``arange`` it gives,
  for an activation, which input element each output element copies: the IR op ``Take`` (or
  ``Reshape`` when the order is kept). The output lives on its input's grid, as a view when the
  input is one (a DequantizeLinear output): a following QuantizeLinear on another grid becomes a
  ``Rescale``, which is what ONNX Runtime computes there (``DQ -> op -> Q`` in float32; on one
  grid it drops the pair and copies codes, the same values).
* ``Shape`` of a statically shaped tensor and any node whose inputs are all constants (the
  Shape -> Gather -> Concat -> Reshape chains of exported models) fold at import.
* ReduceMax/ReduceMin select codes (``ReduceMax``), ArgMax/ArgMin (``ArgMax``, int64 indices) as
  ORT's integer kernels do; Pad (constant mode) -> ``Pad`` on the output grid.
* Linear Resize: ORT runs it in float32 between DQ and Q (it has no integer kernel for QDQ
  models): the IR op ``Resize`` carries ORT's source positions and weights, computed here with its
  float32 arithmetic (``SetupUpsampleBilinear``), and the output grid.
* ConvTranspose (QDQ) -> ``TransposeConv``; ORT runs it in float32 (no QDQ fusion): mrq's result
  is the exactly rounded one, ORT's may differ by one code where its float sum lands near a
  rounding boundary (bench/onnx_real_parity.py counts it).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import onnx

from mrq.errors import ModelError, UnsupportedOpError
from mrq.ir import Graph
from mrq.pointwise import POINTWISE
from mrq.shapes import output_shape

F32 = np.float32


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _where(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _fail(node, problem: str) -> ModelError:
    return ModelError(f"node {_where(node)!r} ({node.op_type}): {problem}")


def _unsupported(node, detail: str) -> UnsupportedOpError:
    return UnsupportedOpError(node.op_type, _where(node), detail)


def _input(node, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _const_input(imp, node, i: int, what: str):
    """The constant value of optional input ``i`` (None when absent)."""
    name = _input(node, i)
    if not name:
        return None
    return np.asarray(imp._const(name, node, what))


def _axis(node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise _fail(node, f"axis {axis} is outside the input's {rank} axes")
    return axis % rank


def _data_axis(node, axis: int, rank: int) -> int:
    """An axis that data movement may index: not the batch (each batch item moves alone)."""
    axis = _axis(node, axis, rank)
    if axis == 0:
        raise _unsupported(node, "moving elements across the batch dimension (axis 0)")
    return axis


# ------------------------------------------------------------------- 1-D conv and pooling
def one_d_as_two_d(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every 1-D Conv of a QDQ graph (DQ(constant) weights, output
    through Relu/Clip to one QuantizeLinear), 1-D AveragePool (likewise), 1-D QLinearConv and 1-D
    MaxPool runs as its 2-D form on a height of 1: Unsqueeze before, Squeeze after the
    QuantizeLinear (an elementwise op, so moving the Squeeze past it changes no value). The same
    sums in the same order: ORT's 1-D kernels are its N-D ones. Graphs without such ops come back
    unchanged (the same object)."""
    g = model.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def conv_weight(n):
        dq = producer.get(n.input[1]) if len(n.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in init:
            return None
        return dq if len(init[dq.input[0]].dims) == 3 else None

    def chain_to_quantize(n):
        chain, out = [], n.output[0]
        while out not in outputs and len(consumers.get(out, [])) == 1:
            user = consumers[out][0]
            chain.append(user)
            if user.op_type == "QuantizeLinear":
                return chain
            if user.op_type not in ("Relu", "Clip") or user.input[0] != out:
                return None
            out = user.output[0]
        return None

    plans = {}   # id(op) -> [op, Relu/Clip..., QuantizeLinear] or [MaxPool]
    for n in g.node:
        if n.op_type == "Conv" and conv_weight(n) is not None:
            chain = chain_to_quantize(n)
            if chain is not None:
                plans[id(n)] = [n] + chain
        elif (n.op_type == "MaxPool" and len(_attrs(n).get("kernel_shape", [])) == 1
              and len(n.output) == 1) or (   # QLinearConv: integer in, integer out
                n.op_type == "QLinearConv" and len(n.input) > 3 and n.input[3] in init
                and len(init[n.input[3]].dims) == 3):
            plans[id(n)] = [n]
        elif n.op_type == "AveragePool" and len(_attrs(n).get("kernel_shape", [])) == 1:
            chain = chain_to_quantize(n)
            if chain is not None:
                plans[id(n)] = [n] + chain
    if plans:
        # Only ops whose input is (or may be) rank 3 are 1-D: a rank-3 weight on a rank-4 input is
        # a malformed conv, which the importer's shape checks report naming the node. (Shape
        # inference runs only for models that have such candidates.)
        ranks = _declared_ranks(model)
        plans = {key: nodes for key, nodes in plans.items() if ranks.get(nodes[0].input[0], 3) == 3}
    if not plans:
        return model
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    axes = "mrq_1d_axis2"
    if opset >= 13:
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2], np.int64), axes))

    def reshape(op, x, y):
        if opset >= 13:
            return onnx.helper.make_node(op, [x, axes], [y], name=y)
        return onnx.helper.make_node(op, [x], [y], name=y, axes=[2])

    in_plan = {id(n) for nodes in plans.values() for n in nodes}
    last = {id(nodes[-1]) for nodes in plans.values()}
    rename = {n.output[0]: n.output[0] + "__2d" for nodes in plans.values() for n in nodes}
    weights4: dict = {}
    new_nodes = []
    for old in g.node:
        node = onnx.NodeProto()
        node.CopyFrom(old)
        if id(old) in plans:
            x4 = node.input[0] + "__2d_in"
            new_nodes.append(reshape("Unsqueeze", node.input[0], x4))
            node.input[0] = x4
            if node.op_type == "Conv":
                node.input[1] = _weight_2d(m, conv_weight(old), init, weights4, new_nodes)
            elif node.op_type == "QLinearConv":
                node.input[3] = _initializer_2d(m, init[node.input[3]], weights4)
            for a in node.attribute:
                if a.name in ("kernel_shape", "strides", "dilations") and len(a.ints) == 1:
                    a.ints[:] = [1, a.ints[0]]
                elif a.name == "pads" and len(a.ints) == 2:
                    a.ints[:] = [0, a.ints[0], 0, a.ints[1]]
        elif id(old) in in_plan:
            node.input[0] = rename.get(node.input[0], node.input[0])
        if id(old) in in_plan:
            node.output[0] = rename[old.output[0]]
        new_nodes.append(node)
        if id(old) in last:
            new_nodes.append(reshape("Squeeze", node.output[0], old.output[0]))
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    del m.graph.value_info[:]   # rank-3 shapes of the rewritten tensors would contradict
    return m


def _declared_ranks(model: onnx.ModelProto) -> dict:
    """Tensor name -> rank, from the graph's declarations and ONNX shape inference (best effort:
    a model inference cannot type is left to the importer's own checks)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:   # noqa: BLE001 - malformed models are diagnosed later, naming the node
        inferred = model.graph
    ranks = {}
    for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    for t in model.graph.initializer:
        ranks[t.name] = len(t.dims)
    return ranks


def _initializer_2d(model, tensor, done: dict) -> str:
    """The name of an added copy of the (O, I, K) weight ``tensor`` shaped (O, I, 1, K)."""
    if tensor.name not in done:
        arr = onnx.numpy_helper.to_array(tensor)
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            arr.reshape(arr.shape[0], arr.shape[1], 1, arr.shape[2]), tensor.name + "__2d"))
        done[tensor.name] = tensor.name + "__2d"
    return done[tensor.name]


def _weight_2d(model, dq, init, done: dict, new_nodes: list) -> str:
    """The output of a DequantizeLinear of the (O, I, K) weight reshaped to (O, I, 1, K)."""
    out = dq.output[0] + "__2d"
    if ("dq", out) not in done:
        dq4 = onnx.NodeProto()
        dq4.CopyFrom(dq)
        dq4.input[0], dq4.output[0] = _initializer_2d(model, init[dq.input[0]], done), out
        dq4.name = (dq.name or dq.output[0]) + "__2d"
        new_nodes.append(dq4)
        done["dq", out] = out
    return out


# ------------------------------------------------------------------------------ shapes
def static_shape(imp, name: str, node) -> tuple:
    """The full ONNX shape of ``name`` with a batch of 1 where the model leaves it open."""
    shape = imp.shapes.get(name)
    if shape is None and name in imp.alias:
        shape = imp.shapes.get(imp.alias[name])
    if shape is None:
        # contrib-op outputs (QOperator graphs): ONNX shape inference does not know them
        t = imp.tensors.get(imp.alias.get(name, name))
        if t is not None and (not t.shape or any(d is None for d in t.shape[1:])):
            _infer_ir_shape(imp, t.name)
        shape = t.shape if t is not None else None
    if shape is None or any(d is None for d in shape[1:]) or not shape:
        raise _unsupported(node, f"needs the static shape of {name!r} (run ONNX shape inference; "
                                 f"only the batch dimension may be open)")
    return (1,) + tuple(int(d) for d in shape[1:]) if shape[0] in (None, 0, 1) else tuple(shape)


def _infer_ir_shape(imp, name: str, depth: int = 0) -> None:
    """Fill in the shape of an IR tensor from its producers (mrq.shapes rules; elementwise
    table ops keep their input's shape)."""
    t = imp.tensors[name]
    producer = next((n for n in reversed(imp.nodes) if name in n.outputs), None)
    if producer is None or depth > 64:
        return
    for i in producer.inputs:
        src = imp.tensors.get(i)
        if src is not None and src.data is None and (not src.shape or any(d is None for d in src.shape[1:])):
            _infer_ir_shape(imp, i, depth + 1)
    inferred = output_shape(Graph(imp.tensors, imp.nodes, [], []), producer)
    if inferred is None and producer.op in POINTWISE and producer.inputs:
        inferred = imp.tensors[producer.inputs[0]].shape
    if inferred is None and producer.op in ("Add", "Mul"):   # with a scalar constant operand
        shapes = [np.shape(imp.tensors[i].data) if imp.tensors[i].data is not None
                  else imp.tensors[i].shape for i in producer.inputs]
        if all(s == () or (s and all(d is not None for d in s[1:])) for s in shapes):
            try:
                full = np.broadcast_shapes(*[tuple(1 if d is None else d for d in s) for s in shapes])
            except ValueError:
                full = None
            if full:
                inferred = (None,) + tuple(full[1:])
    if inferred is not None:
        t.shape = tuple(inferred)


def _check_out_shape(imp, node, out: str, shape: tuple) -> None:
    declared = imp.shapes.get(out)
    if declared and len(declared) == len(shape) and all(d is not None for d in declared[1:]) \
            and tuple(declared[1:]) != tuple(shape[1:]):
        raise _fail(node, f"output {out!r} is declared {list(declared)}, the op gives "
                              f"{[None] + list(shape[1:])}")


# ------------------------------------------------------------------------------ folding
# ops that only move or copy elements: on the codes of a dequantized constant they give the
# codes of the result on the same grid (ORT drops the DQ/Q pair around them, or computes the
# same values in float)
CODE_MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Expand",
                 "Slice", "Gather", "Tile", "Split")


def fold_constants(imp, node) -> bool:
    """Evaluate a node whose inputs are all constants (shape arithmetic) into ``imp.init``;
    data movement of a dequantized constant (per-tensor grid) into ``imp.consts``."""
    if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant") or not node.input:
        return False
    if node.domain not in ("", "ai.onnx"):
        return False
    ins = [i for i in node.input if i]
    if not ins:
        return False
    data = ins[0]
    if node.op_type in CODE_MOVEMENT and data in imp.consts and imp.consts[data][1].axis is None \
            and all(i in imp.init and i not in imp.consts for i in ins[1:]):
        codes, qp = imp.consts[data]
        values = _evaluate(imp, node, ins, {**{i: imp.init[i] for i in ins[1:]}, data: codes})
        for o, v in zip([o for o in node.output if o], values):
            imp.consts[o] = (np.asarray(v), qp)
        return True
    if not all(i in imp.init and i not in imp.consts for i in ins):
        return False
    values = _evaluate(imp, node, ins, {i: imp.init[i] for i in ins})
    for o, v in zip([o for o in node.output if o], values):
        imp.init[o] = np.asarray(v)
    return True


def _evaluate(imp, node, ins: list, arrays: dict) -> list:
    """``node`` on the constant ``arrays`` (by input name), by ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator
    opset = max((o.version for o in imp.model.opset_import if o.domain in ("", "ai.onnx")), default=17)
    inputs = [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(
        np.asarray(arrays[i]).dtype), None) for i in dict.fromkeys(ins)]
    outputs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
               for o in node.output if o]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        # log(0), casts of inf (T5's position buckets, masked later): values, not user errors
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return ReferenceEvaluator(model).run(None, {i: np.asarray(arrays[i]) for i in dict.fromkeys(ins)})
    except Exception as exc:  # noqa: BLE001 - the reference evaluator raises whatever numpy does
        raise _fail(node, f"cannot fold it on its constant inputs ({type(exc).__name__}: {exc})") from None


def _shape_op(imp, node):
    x = node.input[0]
    shape = imp.shapes.get(x)
    if x in imp.consts or x in imp.init:   # a folded constant: its own shape, whatever inference said
        shape = np.shape(imp.consts[x][0] if x in imp.consts else imp.init[x])
    if shape is None and x in imp.alias:
        shape = imp.shapes.get(imp.alias[x])
    if shape is None or any(d is None for d in shape):
        raise _unsupported(node, f"the shape of {x!r} is not static ({shape}); export the model "
                                 f"with fixed input sizes (or fold its shape arithmetic first)")
    a = _attrs(node)
    dims = np.asarray(shape, np.int64)
    start, end = a.get("start", 0), a.get("end", len(dims))
    imp.init[node.output[0]] = dims[slice(start, end)]


# ------------------------------------------------------------------------------ movement
def movement(imp, node, fn: Callable, x_index: int = 0) -> None:
    """Fold ``fn`` on a constant input, else emit one Take/Reshape per output.
    ``fn(array) -> list of arrays``, one per output of ``node``."""
    outs = [o for o in node.output]
    x_in = node.input[x_index]

    def per_output(arrays):
        if len(arrays) != len(outs):
            raise _fail(node, f"the op gives {len(arrays)} outputs, the model lists {len(outs)}")
        return [(o, a) for o, a in zip(outs, arrays) if o]

    if x_in in imp.init and x_in not in imp.consts:
        for o, value in per_output(fn(np.asarray(imp.init[x_in]))):
            imp.init[o] = np.asarray(value)
        return
    if x_in in imp.consts:
        raise _unsupported(node, f"moving the quantized constant {x_in!r} (fold it before quantizing)")
    if imp.tensors.get(x_in) is not None and imp.tensors[x_in].dtype == "float32" \
            and not imp.tensors[x_in].is_quantized and x_in not in imp.alias:
        from mrq.onnx_import_float import float_movement  # (it imports this module)
        return float_movement(imp, node, fn)   # a float island: the same index map
    if x_in in imp.tensors and not imp.tensors[x_in].is_quantized and x_in not in imp.alias:
        kind = imp.tensors[x_in].dtype   # an int64 mask or id input is not "float"
        kind = "a float tensor that is not quantized" if kind.startswith("float") else \
            f"an unquantized {kind} tensor"
        raise _fail(node, f"input {x_in!r} is {kind}; mrq simulates quantized integer graphs only")
    is_view = x_in in imp.alias
    src = imp._int_input(x_in, node)
    src_t = imp.tensors[src]
    if src_t.qparams is not None and src_t.qparams.per_channel:
        raise _unsupported(node, "per-channel quantized activations through data movement")
    in_shape = static_shape(imp, x_in, node)
    if in_shape[0] != 1:
        raise _unsupported(node, f"input of shape {list(in_shape)}: the batch must be 1 or open")
    size = math.prod(in_shape)
    name = imp._name(node)
    for k, (o, sources) in enumerate(per_output(fn(np.arange(size, dtype=np.int64).reshape(in_shape)))):
        if sources.ndim == 0 or sources.shape[0] != 1:
            raise _unsupported(node, "moving elements across the batch dimension")
        _check_out_shape(imp, node, o, sources.shape)
        int_out = (src + "__" + o) if is_view else o
        while int_out in imp.tensors:
            int_out += "_1"
        imp._add_tensor(int_out, (None,) + tuple(sources.shape[1:]), src_t.dtype, src_t.qparams)
        flat = sources.reshape(-1)
        step_name = name if len(outs) == 1 else f"{name}:{k}"
        if flat.size == size and np.array_equal(flat, np.arange(size)):
            imp._emit("Reshape", step_name, [src], [int_out], shape=(0,) + tuple(sources.shape[1:]))
        else:
            imp._emit("Take", step_name, [src], [int_out], source=np.ascontiguousarray(flat),
                      shape=tuple(int(d) for d in sources.shape[1:]))
        if is_view:
            imp.alias[o] = int_out


def _slice(imp, node):
    a = _attrs(node)
    if "starts" in a:   # opset < 10: attributes
        starts, ends = np.asarray(a["starts"]), np.asarray(a["ends"])
        axes = np.asarray(a["axes"]) if "axes" in a else None
        steps = None
    else:
        starts = _const_input(imp, node, 1, "starts")
        ends = _const_input(imp, node, 2, "ends")
        axes = _const_input(imp, node, 3, "axes")
        steps = _const_input(imp, node, 4, "steps")
    starts, ends = starts.reshape(-1).astype(np.int64), ends.reshape(-1).astype(np.int64)
    if starts.size != ends.size:
        raise _fail(node, f"{starts.size} starts but {ends.size} ends")
    axes = np.arange(starts.size) if axes is None else axes.reshape(-1).astype(np.int64)
    steps = np.ones(starts.size, np.int64) if steps is None else steps.reshape(-1).astype(np.int64)
    if axes.size != starts.size or steps.size != starts.size:
        raise _fail(node, f"{starts.size} starts, {axes.size} axes and {steps.size} steps")
    if np.any(steps == 0):
        raise _fail(node, "a step of 0")

    def fn(arr):
        sl = [slice(None)] * arr.ndim
        seen = set()
        for s, e, ax, st in zip(starts, ends, axes, steps):
            d = _data_axis(node, int(ax), arr.ndim)
            if d in seen:
                raise _fail(node, f"axis {d} is sliced twice")
            seen.add(d)
            # numpy's slice clamps out-of-range starts/ends as ONNX specifies
            sl[d] = slice(int(max(min(s, 2**62), -2**62)), int(max(min(e, 2**62), -2**62)), int(st))
        return [arr[tuple(sl)]]

    movement(imp, node, fn)


def _split(imp, node):
    a = _attrs(node)
    axis_raw = int(a.get("axis", 0))
    sizes = _const_input(imp, node, 1, "split") if len(node.input) > 1 and node.input[1] else None
    if sizes is None and "split" in a:
        sizes = np.asarray(a["split"])
    n_out = len(node.output)

    def fn(arr):
        axis = _data_axis(node, axis_raw, arr.ndim)
        n = arr.shape[axis]
        if sizes is not None:
            parts = [int(s) for s in sizes.reshape(-1)]
            if len(parts) != n_out or sum(parts) != n or any(p < 0 for p in parts):
                raise _fail(node, f"split sizes {parts} do not cut the {n} elements of axis {axis} "
                                  f"into {n_out} outputs")
        else:
            chunk = -(-n // int(a.get("num_outputs", n_out)))
            parts = [min(chunk, n - i * chunk) for i in range(n_out)]
            if "num_outputs" not in a and n % n_out:
                raise _fail(node, f"{n} elements of axis {axis} do not split evenly into {n_out}")
            if any(p < 0 for p in parts):
                raise _fail(node, f"{n} elements of axis {axis} cannot give {n_out} outputs")
        bounds = np.cumsum([0] + parts)
        return [np.take(arr, np.arange(bounds[i], bounds[i + 1]), axis=axis) for i in range(n_out)]

    movement(imp, node, fn)


def _gather(imp, node):
    axis_raw = int(_attrs(node).get("axis", 0))
    idx_name = node.input[1]
    if idx_name not in imp.init:
        raise _unsupported(node, f"the indices ({idx_name!r}) must be a constant")
    indices = np.asarray(imp.init[idx_name]).astype(np.int64)

    def fn(arr):
        axis = _data_axis(node, axis_raw, arr.ndim)
        n = arr.shape[axis]
        if indices.size and (indices.min() < -n or indices.max() >= n):
            raise _fail(node, f"indices {indices.min()}..{indices.max()} outside [-{n}, {n}) on axis {axis}")
        return [np.take(arr, np.where(indices < 0, indices + n, indices), axis=axis)]

    movement(imp, node, fn)


def _depth_to_space(imp, node):
    a = _attrs(node)
    b = int(a["blocksize"])
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode

    def fn(arr):
        if arr.ndim != 4:
            raise _fail(node, f"input of rank {arr.ndim} (4-D NCHW only)")
        n, c, h, w = arr.shape
        if b < 1 or c % (b * b):
            raise _fail(node, f"{c} channels do not divide into blocks of {b}x{b}")
        if mode == "DCR":
            t = arr.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        else:
            t = arr.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        return [t.reshape(n, c // (b * b), h * b, w * b)]

    movement(imp, node, fn)


def _space_to_depth(imp, node):
    b = int(_attrs(node)["blocksize"])

    def fn(arr):
        if arr.ndim != 4:
            raise _fail(node, f"input of rank {arr.ndim} (4-D NCHW only)")
        n, c, h, w = arr.shape
        if b < 1 or h % b or w % b:
            raise _fail(node, f"{h}x{w} is not a multiple of the block size {b}")
        t = arr.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
        return [t.reshape(n, c * b * b, h // b, w // b)]

    movement(imp, node, fn)


# ------------------------------------------------------------------------------ Resize
def _resize_coordinate(mode: str, x: int, scale: F32, out_len: int, in_len: int) -> F32:
    """ORT's ``GetOriginalCoordinateFromResizedCoordinate`` in float32."""
    xr, one_half = F32(x), F32(0.5)
    if mode == "asymmetric":
        return F32(xr / scale)
    if mode == "pytorch_half_pixel":
        return F32(F32(F32(xr + one_half) / scale) - one_half) if out_len > 1 else F32(0.0)
    if mode == "tf_half_pixel_for_nn":
        return F32(F32(xr + one_half) / scale)
    if mode == "align_corners":
        return F32(0.0) if out_len == 1 else F32(F32(xr * F32(in_len - 1)) / F32(out_len - 1))
    if mode == "half_pixel":
        return F32(F32(F32(xr + one_half) / scale) - one_half)
    raise ValueError(mode)


_COORD_MODES = ("half_pixel", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners")


def _nearest_pixel(mode: str, v: F32) -> int:
    """ORT's ``GetNearestPixelFromOriginal`` (``std::round`` rounds half away from zero)."""
    f = float(v)
    if mode == "floor":
        return math.floor(f)
    if mode == "ceil":
        return math.ceil(f)
    away = int(math.copysign(math.floor(abs(f) + 0.5), f))
    if mode == "round_prefer_ceil":
        return away
    if f == float(F32(F32(int(f)) + F32(0.5))):   # x == (int64)x + 0.5f: halfway, take the floor
        return math.floor(f)
    return away


def nearest_index(in_len: int, out_len: int, scale: F32, coord: str, nearest: str) -> np.ndarray:
    """ORT's nearest Resize source index of every output position along one axis."""
    if scale == F32(1.0):
        idx = np.arange(out_len)
    else:
        idx = np.array([_nearest_pixel(nearest, _resize_coordinate(coord, i, scale, out_len, in_len))
                        for i in range(out_len)])
    return np.clip(idx, 0, in_len - 1).astype(np.int64)


def linear_axis(in_len: int, out_len: int, scale: F32, coord: str) -> tuple:
    """ORT's ``SetupUpsampleBilinear`` along one axis: (lower index, upper index, weight of the
    lower = |x - upper|, weight of the upper = |x - lower|), float32."""
    lo = np.empty(out_len, np.int64)
    hi = np.empty(out_len, np.int64)
    w_lo = np.empty(out_len, F32)
    w_hi = np.empty(out_len, F32)
    for i in range(out_len):
        v = F32(i) if scale == F32(1.0) else _resize_coordinate(coord, i, scale, out_len, in_len)
        v = max(F32(0.0), min(v, F32(in_len - 1)))
        i1 = min(int(v), in_len - 1)
        i2 = min(i1 + 1, in_len - 1)
        d1, d2 = abs(F32(v - F32(i1))), abs(F32(v - F32(i2)))
        if i1 == i2:
            d1 = d2 = F32(0.5)
        lo[i], hi[i], w_lo[i], w_hi[i] = i1, i2, d2, d1
    return lo, hi, w_lo, w_hi


def _resize_scales(imp, node, in_shape) -> tuple:
    """(float32 scales, output sizes) per axis as ORT derives them."""
    a = _attrs(node)
    opset_lt11 = len(node.input) <= 2
    scales = _const_input(imp, node, 1 if opset_lt11 else 2, "scales")
    sizes = None if opset_lt11 else _const_input(imp, node, 3, "sizes")
    if a.get("axes") is not None or a.get("antialias", 0) or \
            (a.get("keep_aspect_ratio_policy", b"stretch") not in (b"stretch", "stretch")):
        raise _unsupported(node, "axes, antialias and keep_aspect_ratio_policy are not supported")
    rank = len(in_shape)
    if sizes is not None and sizes.size:
        sizes = [int(s) for s in sizes.reshape(-1)]
        if len(sizes) != rank:
            raise _fail(node, f"{len(sizes)} sizes for a rank-{rank} input")
        sc = [F32(1.0) if n == 0 else F32(F32(o) / F32(n)) for o, n in zip(sizes, in_shape)]
        return sc, sizes
    if scales is None or not scales.size:
        raise _fail(node, "neither scales nor sizes are given")
    sc = [F32(s) for s in scales.reshape(-1)]
    if len(sc) != rank or any(not s > 0 for s in sc):
        raise _fail(node, f"scales {[float(s) for s in sc]} for a rank-{rank} input")
    return sc, [int(F32(s * F32(n))) for s, n in zip(sc, in_shape)]


def _resize(imp, node):
    a = _attrs(node)
    mode = a.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    coord = a.get("coordinate_transformation_mode", b"half_pixel")
    coord = coord.decode() if isinstance(coord, bytes) else coord
    nearest = a.get("nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
    if len(node.input) <= 2:   # Upsample / Resize-10: asymmetric, ORT's "simple" nearest
        coord = "asymmetric"
        nearest = "simple"
    if coord not in _COORD_MODES:
        raise _unsupported(node, f"coordinate_transformation_mode={coord!r}")
    x_in = node.input[0]
    in_shape = static_shape(imp, x_in, node) if x_in not in imp.init else np.asarray(imp.init[x_in]).shape
    scales, sizes = _resize_scales(imp, node, in_shape)
    if mode == "nearest":
        if nearest not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            raise _unsupported(node, f"nearest_mode={nearest!r}")

        def fn(arr):
            out = arr
            for d in range(arr.ndim):
                if sizes[d] != arr.shape[d] or scales[d] != F32(1.0):
                    _data_axis(node, d, arr.ndim)
                    idx = nearest_index(arr.shape[d], sizes[d], scales[d], coord, nearest)
                    out = np.take(out, idx, axis=d)
            return [out]

        movement(imp, node, fn)
        return
    if mode != "linear":
        raise _unsupported(node, f"mode={mode!r} (nearest and linear only)")
    if len(in_shape) != 4 or scales[0] != F32(1.0) or scales[1] != F32(1.0):
        raise _unsupported(node, "linear resize of a 4-D NCHW input over H and W only")
    imp._resize_linear(node, sizes, scales, coord)


def resize_linear_attrs(in_shape, sizes, scales, coord) -> dict:
    ys = linear_axis(in_shape[2], sizes[2], scales[2], coord)
    xs = linear_axis(in_shape[3], sizes[3], scales[3], coord)
    return {"size": (int(sizes[2]), int(sizes[3])), "layout": "NCHW",
            "y_lo": ys[0], "y_hi": ys[1], "wy_lo": ys[2], "wy_hi": ys[3],
            "x_lo": xs[0], "x_hi": xs[1], "wx_lo": xs[2], "wx_hi": xs[3]}


# ------------------------------------------------------------------------------ selection
def _reduce_select(select: str):
    def handler(imp, node):
        a = _attrs(node)
        x_in = node.input[0]
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = _const_input(imp, node, 1, "axes").reshape(-1).tolist()
        rank = len(static_shape(imp, x_in, node))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return imp._grid_preserving(_identity(node))
            axes = list(range(rank))
        axes = sorted({_axis(node, int(ax), rank) for ax in axes})
        if 0 in axes:
            raise _unsupported(node, "reducing the batch dimension")
        keep = bool(a.get("keepdims", 1))
        _selection(imp, node, "ReduceMax", {"axes": tuple(axes), "keep_dims": keep, "select": select},
                   lambda s: tuple(1 if d in axes else n for d, n in enumerate(s) if keep or d not in axes))
    return handler


def _identity(node):
    return onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)


def _selection(imp, node, op, attrs, out_shape_fn):
    """An op that picks codes: its output is on its input's grid (a view of a view)."""
    x_in = node.input[0]
    if x_in in imp.tensors and not imp.tensors[x_in].is_quantized and x_in not in imp.alias:
        raise _fail(node, f"input {x_in!r} is a float tensor that is not quantized")
    is_view = x_in in imp.alias
    src = imp._int_input(x_in, node)
    src_t = imp.tensors[src]
    if src_t.qparams is not None and src_t.qparams.per_channel:
        raise _unsupported(node, "per-channel quantized input")
    shape = out_shape_fn(static_shape(imp, x_in, node))
    out = node.output[0]
    _check_out_shape(imp, node, out, shape)
    int_out = (src + "__" + out) if is_view else out
    while int_out in imp.tensors:
        int_out += "_1"
    imp._add_tensor(int_out, (None,) + tuple(shape[1:]), src_t.dtype, src_t.qparams)
    imp._emit(op, imp._name(node), [src], [int_out], **attrs)
    if is_view:
        imp.alias[out] = int_out


def _arg(select: str):
    def handler(imp, node):
        a = _attrs(node)
        if a.get("select_last_index", 0):
            raise _unsupported(node, "select_last_index=1")
        x_in = node.input[0]
        if x_in not in imp.alias and not (x_in in imp.tensors and imp.tensors[x_in].is_quantized):
            raise _fail(node, f"input {x_in!r} is a float tensor that is not quantized")
        src = imp._int_input(x_in, node)
        if imp.tensors[src].qparams.per_channel:
            raise _unsupported(node, "per-channel quantized input")
        in_shape = static_shape(imp, x_in, node)
        axis = _axis(node, int(a.get("axis", 0)), len(in_shape))
        if axis == 0:
            raise _unsupported(node, "reducing the batch dimension")
        keep = bool(a.get("keepdims", 1))
        reduced = tuple(n for d, n in enumerate(in_shape) if d != axis)
        out = node.output[0]
        kept = tuple(1 if d == axis else n for d, n in enumerate(in_shape))
        _check_out_shape(imp, node, out, kept if keep else reduced)
        name = imp._name(node)
        arg_out = out + "__reduced" if keep else out
        imp._add_tensor(arg_out, (None,) + reduced[1:], "int64")
        imp._emit("ArgMax", name, [src], [arg_out], axis=axis, select=select)
        if keep:
            imp._add_tensor(out, (None,) + kept[1:], "int64")
            imp._emit("Reshape", name + ":keepdims", [arg_out], [out], shape=(0,) + kept[1:])
    return handler


# ------------------------------------------------------------------------------ Pad
def _pad(imp, node):
    a = _attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        raise _unsupported(node, f"mode={mode!r} (constant only)")
    pads = a.get("pads")
    if pads is None:
        pads = _const_input(imp, node, 1, "pads")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    value = _const_input(imp, node, 2, "constant value")
    value = 0.0 if value is None or not value.size else float(value.reshape(-1)[0])
    x_in = node.input[0]
    if x_in in imp.init and x_in not in imp.consts:
        if not fold_constants(imp, node):
            raise _fail(node, "cannot fold the constant pad")
        return
    axes = _const_input(imp, node, 3, "axes")
    in_shape = static_shape(imp, x_in, node)
    rank = len(in_shape)
    axes = list(range(rank)) if axes is None else [_axis(node, int(v), rank) for v in axes.reshape(-1)]
    if len(pads) != 2 * len(axes):
        raise _fail(node, f"{len(pads)} pads for {len(axes)} axes")
    per_axis = [(0, 0)] * rank
    for k, d in enumerate(axes):
        per_axis[d] = (pads[k], pads[k + len(axes)])
    if per_axis[0] != (0, 0):
        raise _unsupported(node, "padding the batch dimension")
    if any(p < 0 for pair in per_axis for p in pair):
        raise _unsupported(node, "negative pads (cropping)")
    out_shape = tuple(n + b + e for n, (b, e) in zip(in_shape, per_axis))
    _check_out_shape(imp, node, node.output[0], out_shape)
    if x_in not in imp.alias and x_in in imp.tensors and imp.tensors[x_in].is_quantized:
        # QOperator graph: Pad copies codes and pads with the code it is given
        t = imp.tensors[x_in]
        if t.qparams.per_channel:
            raise _unsupported(node, "per-channel quantized input")
        code = _const_input(imp, node, 2, "constant value")
        code = int(t.qparams.zero_point[0]) if code is None or not code.size else int(code.reshape(-1)[0])
        if not t.qparams.qmin <= code <= t.qparams.qmax:
            raise _fail(node, f"pad code {code} is outside the {t.dtype} range")
        real = float((code - int(t.qparams.zero_point[0])) * np.float64(t.qparams.scale[0]))
        imp._add_tensor(node.output[0], (None,) + out_shape[1:], t.dtype, t.qparams)
        imp._emit("Pad", imp._name(node), [x_in], [node.output[0]], pads=tuple(per_axis), value=real)
        return
    quant, clamps, folded = imp._follow_to_quantize(node)
    if quant is None or clamps or folded:
        raise _unsupported(node, "its float output must go straight to one QuantizeLinear (ORT pads "
                                 "in float32)")
    qp = imp._qparams(quant, quant.input[1], _input(quant, 2), axis=_attrs(quant).get("axis", 1))
    imp.done.add(id(quant))
    x = imp._int_input(x_in, node)
    out = quant.output[0]
    imp._add_tensor(out, (None,) + out_shape[1:], qp.dtype, qp)
    imp._emit("Pad", imp._name(node), [x], [out], pads=tuple(per_axis), value=value)


def _cast(imp, node):
    """A Cast to the type its input already has is an identity (exporters put them between
    QuantizeLinear and DequantizeLinear); one that changes the type of a simulated tensor is not
    supported."""
    x_in = node.input[0]
    to = onnx.helper.tensor_dtype_to_np_dtype(_attrs(node)["to"])
    if x_in in imp.alias:
        have = np.dtype(np.float32)
    elif x_in in imp.tensors and imp.tensors[x_in].dtype not in ("int4", "uint4"):
        have = np.dtype(imp.tensors[x_in].dtype)
    else:
        have = None
    if have != to:
        raise _unsupported(node, f"casting {x_in!r} ({have or 'unknown type'}) to {to}: only a "
                                 f"Cast to the same type is supported")
    imp._grid_preserving(onnx.helper.make_node("Identity", [x_in], list(node.output[:1]),
                                               name=node.name or node.output[0]))


HANDLERS: dict = {
    "Cast": _cast, "Slice": _slice, "Split": _split, "Gather": _gather, "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth, "Resize": _resize, "Upsample": _resize, "Shape": _shape_op,
    "ReduceMax": _reduce_select("max"), "ReduceMin": _reduce_select("min"),
    "ArgMax": _arg("max"), "ArgMin": _arg("min"), "Pad": _pad,
}

