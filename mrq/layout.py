"""Layout rewrite: run the 4-D activations of an NCHW (ONNX) graph in NHWC inside the simulator.

:func:`to_nhwc` returns a copy of a :class:`mrq.ir.Graph` in which chains of layout-aware ops
work on NHWC tensors, with integer ``Transpose`` nodes at the boundaries. The simulator's fast
conv kernels work in NHWC internally (:mod:`simulator.kernels.igemm`); on NCHW steps they
transpose the input and scatter the output on every conv, which the rewrite removes.

What the rewrite keeps, bit for bit:

* The graph inputs and outputs: same names, shapes, dtypes and values. Quantize/Dequantize
  stay in the native layout (a Transpose follows the input quantization, and precedes the
  Dequantize of an output).
* Every converted op computes the same values, only stored in another order:

  - ``Conv`` (incl. depthwise/grouped, ``integer_output``), ``MaxPool``, ``AveragePool``,
    ``GlobalAveragePool`` get ``attrs['layout'] = 'NHWC'`` (weights stay OIHW; the lowering
    moves the requantization channel axis with the layout);
  - ``Clamp``, ``Rescale`` (per-tensor, element-wise);
  - ``Add``/``Mul``: element-wise on the broadcast of the operands; constants are permuted.
    ONNX Runtime's QLinearAdd swaps its operands when input A is the "per-span scalar"
    (:func:`simulator.kernels.eltwise.ort_input0_is_span_scalar`), which depends on the layout:
    an ``Add`` is converted only when that decision is the same in both layouts;
  - ``Concat``: the axis is remapped (any axis of a 4-D concat); constants are permuted.

* Intermediate tensors change layout and name: the NHWC version of tensor ``t`` is
  ``t__nhwc``. So the rewritten graph is for callers that need only the graph outputs
  (:func:`mrq.api.prepare`, ``simulate(..., trace=False, fidelity=False)``); traces, golden
  vectors, fidelity and ``mrq check`` use the native graph.

Which ops are converted: every capable ``Conv`` (its input is transposed if it is not NHWC
already); pools, element-wise ops and concats only when one of their activation inputs is
already NHWC, so no transpose is added in front of an op that would not save one. A
``Reshape`` of an NHWC tensor whose spatial size is 1x1 (global pool -> flatten) reads it
directly: the element order of ``[N, 1, 1, C]`` and ``[N, C, 1, 1]`` is the same.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mrq.ir import Graph, Node, QParams, Tensor

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
# axis of an NCHW tensor -> the same axis in NHWC
_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
BOUNDARY_ATTR = "layout_boundary"

_ANCHORS = ("Conv",)
_POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")
_UNARY = ("Clamp", "Rescale")
_BINARY = ("Add", "Mul")


def _perm_shape(shape, perm=TO_NHWC) -> tuple:
    return tuple(shape[p] for p in perm)


def _qparams_nhwc(qp: Optional[QParams], rank: int) -> Optional[QParams]:
    if qp is None or qp.axis is None or rank != 4:
        return qp
    return qp.with_(axis=_AXIS[qp.axis % 4])


def _is_4d(t: Tensor) -> bool:
    return len(tuple(t.shape)) == 4


def _span_scalar(sa, sb) -> bool:
    from simulator.kernels.eltwise import ort_input0_is_span_scalar
    return bool(ort_input0_is_span_scalar(tuple(sa), tuple(sb)))


def _concrete(shape, batch: int) -> tuple:
    return tuple(batch if d is None else int(d) for d in shape)


class _Rewriter:
    def __init__(self, graph: Graph):
        self.g = graph.copy()
        self.used = set(self.g.tensors) | {n.name for n in self.g.nodes}
        self.nhwc: dict = {}              # native tensor name -> its NHWC twin
        self.produced_nhwc: set = set()   # tensors only a converted node produces (in NHWC)
        self.native_done: set = set()     # ... of which a back-transpose was emitted
        self.const_cache: dict = {}
        self.out: list = []
        self.converted = 0

    # ------------------------------------------------------------------ helpers
    def t(self, name) -> Tensor:
        return self.g.tensors[name]

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def _new_tensor(self, name: str) -> str:
        """Register the NHWC twin of 4-D activation ``name``."""
        src = self.t(name)
        new = self.fresh(f"{name}__nhwc")
        self.g.tensors[new] = Tensor(new, _perm_shape(src.shape), src.dtype,
                                     _qparams_nhwc(src.qparams, 4), None)
        return new

    def _transpose(self, src: str, dst: str, perm, where: str) -> None:
        kind = "to_nhwc" if tuple(perm) == TO_NHWC else "to_nchw"
        self.out.append(Node("Transpose", self.fresh(f"{where}/{kind}"), [src], [dst],
                             {"perm": tuple(perm), BOUNDARY_ATTR: True}))

    def _const_nhwc(self, name: str) -> str:
        """A constant operand permuted to NHWC (rank <= 4; lower ranks broadcast from the right,
        so they are padded with leading 1s first)."""
        if name not in self.const_cache:
            t = self.t(name)
            data = np.asarray(t.data)
            shape4 = (1,) * (4 - data.ndim) + tuple(data.shape)
            new = self.fresh(f"{name}__nhwc")
            self.g.tensors[new] = Tensor(new, _perm_shape(shape4), t.dtype, t.qparams,
                                         np.ascontiguousarray(data.reshape(shape4).transpose(TO_NHWC)))
            self.const_cache[name] = new
        return self.const_cache[name]

    def _nhwc_input(self, name: str, node: Node) -> str:
        """The NHWC twin of activation ``name``, transposing it in front of ``node`` once."""
        if name not in self.nhwc:
            new = self._new_tensor(name)
            self._transpose(name, new, TO_NHWC, node.name)
            self.nhwc[name] = new
        return self.nhwc[name]

    def _need_native(self, name: str) -> None:
        """Make the native ``name`` exist again: one Transpose back from its NHWC twin."""
        if name in self.produced_nhwc and name not in self.native_done:
            self.native_done.add(name)
            self._transpose(self.nhwc[name], name, TO_NCHW, name)

    # ------------------------------------------------------------------ capability
    def _act_ok(self, name: str) -> bool:
        t = self.t(name)
        return not t.is_const and _is_4d(t) and all(d is not None for d in tuple(t.shape)[1:])

    def _const_ok(self, name: str, max_rank: int = 4, min_rank: int = 0) -> bool:
        t = self.t(name)
        nd = np.asarray(t.data).ndim
        return min_rank <= nd <= max_rank and not (t.qparams is not None and t.qparams.per_channel)

    def _capable(self, node: Node) -> bool:
        op = node.op
        if len(node.outputs) != 1 or not self._act_ok(node.outputs[0]) or not node.inputs:
            return False
        if op in _ANCHORS or op in _POOLS:
            if node.attrs.get("layout", "NCHW") != "NCHW" or not self._act_ok(node.inputs[0]):
                return False
            return all(self.t(n).is_const for n in node.inputs[1:])
        if op in _UNARY:
            return len(node.inputs) == 1 and self._act_ok(node.inputs[0])
        if op in _BINARY:
            if len(node.inputs) != 2:
                return False
            native, nhwc = [], []       # the operand shapes the add kernel sees in each layout
            for n in node.inputs:
                t = self.t(n)
                if t.is_const:
                    if not self._const_ok(n):
                        return False
                    data = np.asarray(t.data)
                    native.append(tuple(data.shape))
                    nhwc.append(_perm_shape((1,) * (4 - data.ndim) + tuple(data.shape)))
                elif self._act_ok(n):
                    native.append(tuple(t.shape))
                    nhwc.append(_perm_shape(tuple(t.shape)))
                else:
                    return False
            if op == "Add":
                # ORT's QLinearAdd operand swap must not depend on the layout
                for batch in (1, 2, 3):
                    if _span_scalar(*(_concrete(s, batch) for s in native)) != \
                            _span_scalar(*(_concrete(s, batch) for s in nhwc)):
                        return False
            return True
        if op == "Concat":
            if "axis" not in node.attrs or node.attrs.get("clamp") is not None:
                return False
            return all(self._const_ok(n, 4, 4) if self.t(n).is_const else self._act_ok(n)
                       for n in node.inputs)
        return False

    def _wants(self, node: Node) -> bool:
        """Convert ``node``? Convs always; other ops when an activation input has an NHWC twin."""
        if not self._capable(node):
            return False
        return node.op in _ANCHORS or any(n in self.nhwc for n in node.inputs)

    # ------------------------------------------------------------------ rewrite
    def _convert(self, node: Node) -> None:
        ins = []
        for i, name in enumerate(node.inputs):
            if node.op in _ANCHORS + _POOLS and i > 0:
                ins.append(name)            # weights and bias stay as they are (OIHW)
            elif self.t(name).is_const:
                ins.append(self._const_nhwc(name))
            else:
                ins.append(self._nhwc_input(name, node))
        y = node.outputs[0]
        self.nhwc[y] = self._new_tensor(y)
        self.produced_nhwc.add(y)
        node.inputs = ins
        node.outputs = [self.nhwc[y]]
        if node.op in _ANCHORS + _POOLS:
            node.attrs["layout"] = "NHWC"
        elif node.op == "Concat":
            node.attrs["axis"] = _AXIS[int(node.attrs["axis"]) % 4]
        self.converted += 1
        self.out.append(node)

    def _reshape_direct(self, node: Node) -> bool:
        """Reshape of a 1x1-spatial NHWC tensor: the element order is the same, read it directly."""
        if node.op != "Reshape" or len(node.inputs) != 1 or node.inputs[0] not in self.produced_nhwc:
            return False
        x = node.inputs[0]
        target = node.attrs.get("shape")
        if target is None or tuple(self.t(x).shape)[2:] != (1, 1):
            return False
        if any(int(d) == 0 for d in tuple(target)[1:]):
            return False        # a 0 copies the input dimension at its position
        node.inputs = [self.nhwc[x]]
        self.out.append(node)
        return True

    def run(self) -> Graph:
        g = self.g
        for node in list(g.nodes):
            if self._wants(node):
                self._convert(node)
            elif not self._reshape_direct(node):
                for name in node.inputs:
                    self._need_native(name)
                self.out.append(node)
        for name in g.outputs:
            self._need_native(name)
        g.nodes = self.out
        used = set(g.inputs) | set(g.outputs)
        for n in g.nodes:
            used.update(n.inputs)
            used.update(n.outputs)
        g.tensors = {k: v for k, v in g.tensors.items() if k in used}
        g.meta = dict(g.meta, layout="NHWC")
        return g


def to_nhwc(graph: Graph) -> Graph:
    """A copy of ``graph`` with its 4-D layout-aware chains in NHWC (see the module docstring).
    A graph with nothing to convert comes back as an unchanged copy."""
    rw = _Rewriter(graph)
    out = rw.run()
    return out if rw.converted else graph.copy()
