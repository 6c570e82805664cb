"""Float reference execution of the IR: the same graph with real-valued weights and no rounding.

Each quantized tensor's reference is clamped to the real range its grid can represent, because a
grid is also a clamp (a uint8 tensor with zero point 0 is a ReLU): this is the fake-quant model
without rounding, which is what quantization error should be measured against.
"""
from __future__ import annotations

import numpy as np

from mrq.pointwise import POINTWISE
from mrq.float_kernels import clamp_3d, depthwise_conv_nchw, fake_quant_3d, fake_quant_3d_t
from mrq.ir import Graph, Node, QParams
from mrq.float_ref_extra import ExtraOpsReference
from mrq.float_ref_movement import MovementOpsReference
from mrq.float_ref_recurrent import RecurrentOpsReference
from mrq.float_ref_dynamic import DynamicOpsReference
from mrq.float_ref_islands import FloatIslandReference
from mrq.float_ref_float import FloatOpsReference
from mrq.float_ref_quant_extra import QuantExtraReference


def _grid_clamp(x: np.ndarray, qp: QParams | None) -> np.ndarray:
    if qp is None:
        return x
    shape = qp.broadcast_shape(x.ndim)
    s = qp.scale.astype(np.float64).reshape(shape)
    z = qp.zero_point.astype(np.float64).reshape(shape)
    return np.clip(x, (qp.qmin - z) * s, (qp.qmax - z) * s)


def _grid_round(x: np.ndarray, qp: QParams | None) -> np.ndarray:
    """Fake quantization: round onto the grid (half to even) and clamp to its codes."""
    if qp is None:
        return x
    shape = qp.broadcast_shape(x.ndim)
    s = qp.scale.astype(np.float64).reshape(shape)
    z = qp.zero_point.astype(np.float64).reshape(shape)
    q = np.divide(x, s)
    np.rint(q, out=q)
    q += z
    np.clip(q, qp.qmin, qp.qmax, out=q)
    q -= z
    q *= s
    return q


def _apply_clamp(x, clamp):
    if clamp is None:
        return x
    lo, hi = clamp
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


def _windows(x, kernel, strides, pads, dilations, ceil_mode, fill):
    """[N, C, OH, OW, KH, KW] windows of an NCHW array, padded with ``fill``."""
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    oh = _pool_out(h, kh, sh, top, bottom, dh, ceil_mode)
    ow = _pool_out(w, kw, sw, left, right, dw, ceil_mode)
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    extra_b = max(0, need_h - (h + top + bottom))
    extra_r = max(0, need_w - (w + left + right))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom + extra_b), (left, right + extra_r)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw][:, :, :oh, :ow, ::dh, ::dw]
    return win


def _pool_out(size, k, s, p0, p1, d, ceil_mode):
    eff = (k - 1) * d + 1
    num = size + p0 + p1 - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p0:
        out -= 1  # the last window must start inside the input or its left padding (ONNX rule)
    return out


def conv2d_nchw(x, w, bias, strides, pads, dilations, group):
    """Grouped 2-D convolution (cross-correlation), NCHW, zero padding; float64 unless both ``x``
    and ``w`` are float32 (calibration sweeps), then float32 with float32 accumulation.

    Built from KH*KW strided views (one per kernel tap) so that the depthwise case is KH*KW
    vectorised multiply-adds and the dense case one BLAS matrix product per group."""
    dt = np.float32 if np.asarray(x).dtype == np.float32 and np.asarray(w).dtype == np.float32 else np.float64
    x = np.asarray(x, dt)
    n = x.shape[0]
    m, cg, kh, kw = w.shape
    w = np.asarray(w, dt)
    mg = m // group
    if kh == kw == 1 and group == 1 and tuple(strides) == (1, 1) and not any(pads):
        # One BLAS product [M, C] @ [C, N*H*W] (not one per image: on a loaded machine every BLAS
        # call waits for all its threads, so few large calls are much faster than many small ones).
        cols = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).reshape(cg, -1)
        out = w.reshape(m, cg) @ cols
        if bias is not None:
            out += np.asarray(bias, dt).reshape(-1, 1)
        # An NCHW view of the [M, N, H, W] product (the fake-quant kernel writes it out NCHW).
        return out.reshape(m, n, x.shape[2], x.shape[3]).transpose(1, 0, 2, 3)
    oh = _pool_out(x.shape[2], kh, strides[0], pads[0], pads[2], dilations[0], False)
    ow = _pool_out(x.shape[3], kw, strides[1], pads[1], pads[3], dilations[1], False)
    if cg == 1 and mg == 1:
        # Depthwise: one input channel per output channel.
        out = depthwise_conv_nchw(np.ascontiguousarray(x), np.ascontiguousarray(w[:, 0]),
                                  (int(strides[0]), int(strides[1])), (int(pads[0]), int(pads[1])),
                                  (int(dilations[0]), int(dilations[1])), oh, ow)
    else:
        win = _windows(x, (kh, kw), strides, pads, dilations, False, 0.0)  # N,C,OH,OW,KH,KW (a view)
        # One BLAS product per group: [mg, cg*KH*KW] @ [cg*KH*KW, N*OH*OW] (columns ordered like
        # the flattened weights).
        out = np.empty((m, n, oh, ow), dt)
        for g in range(group):
            cols = np.ascontiguousarray(win[:, g * cg:(g + 1) * cg].transpose(1, 4, 5, 0, 2, 3))
            cols = cols.reshape(cg * kh * kw, n * oh * ow)
            out[g * mg:(g + 1) * mg] = (w[g * mg:(g + 1) * mg].reshape(mg, -1) @ cols).reshape(mg, n, oh, ow)
        out = np.ascontiguousarray(out.transpose(1, 0, 2, 3))
    if bias is not None:
        out += np.asarray(bias, dt).reshape(1, -1, 1, 1)
    return out


def _to_nchw(x, layout):
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def _from_nchw(x, layout):
    return x.transpose(0, 2, 3, 1) if layout == "NHWC" else x


def _fused_3d(x: np.ndarray, qp: QParams | None):
    """``x`` as a C-contiguous [outer, C, inner] view (C = the grid's channel axis; for a
    per-tensor grid the batch axis is ``outer`` so that the kernels have parallel work), with the
    per-channel scale and zero point as float64 arrays. None when the fused kernels do not apply."""
    if x.ndim == 0 or x.dtype not in (np.float32, np.float64) or x.size == 0:
        return None
    x = np.ascontiguousarray(x)
    if qp is None or qp.scale.size == 1:
        x3 = x.reshape(x.shape[0], 1, -1)
        if qp is None:
            return x3, None, None
        return x3, qp.scale.astype(np.float64).reshape(1), qp.zero_point.astype(np.float64).reshape(1)
    axis = qp.axis % x.ndim
    if x.shape[axis] != qp.scale.size:
        return None
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    x3 = x.reshape(outer, x.shape[axis], -1)
    return x3, qp.scale.astype(np.float64), qp.zero_point.astype(np.float64)


def _clamp_bounds(clamp) -> tuple[float, float]:
    lo, hi = clamp if clamp is not None else (None, None)
    return (-np.inf if lo is None else float(lo)), (np.inf if hi is None else float(hi))


class FloatReference(ExtraOpsReference, MovementOpsReference, RecurrentOpsReference,
                     DynamicOpsReference, FloatIslandReference, QuantExtraReference,
                     FloatOpsReference):
    """Float execution of the IR (float64 unless ``dtype=np.float32``).

    ``fake_quant=False``: the float reference (grids clamp but do not round).
    ``fake_quant=True``: every integer tensor is also rounded onto its grid, which models the
    integer execution closely (not bit-exactly) and is what calibration passes run. The op's own
    clamp (ReLU, ReLU6) and the rounding onto the output grid run as one fused pass.

    ``dtype=np.float32`` (calibration sweeps): tensors are stored and convolutions computed in
    float32; the rounding onto each grid divides by the scale in float64. Deterministic, half the
    memory traffic of float64."""

    def __init__(self, graph: Graph, fake_quant: bool = False, dtype=np.float64):
        self.g = graph
        self.fake_quant = fake_quant
        self.finish = _grid_round if fake_quant else _grid_clamp
        self.dtype = np.dtype(dtype)
        self._pending_clamp = None
        self._defer_clamp = False

    def _clamp(self, x, clamp):
        """The op's clamp; during run() it is deferred and fused with the output grid's rounding."""
        if self._defer_clamp:
            self._pending_clamp = clamp
            return x
        return _apply_clamp(x, clamp)

    def _finish_output(self, out, qp, clamp):
        out = np.asarray(out)
        if out.dtype.kind == "f" and out.dtype != self.dtype:
            out = out.astype(self.dtype)
        if self.fake_quant and qp is not None and out.ndim == 4 and not out.flags.c_contiguous \
                and out.transpose(1, 0, 2, 3).flags.c_contiguous and out.dtype in (np.float32, np.float64) \
                and out.shape[0] > 0 and (qp.scale.size == 1 or (qp.axis % 4 == 1 and qp.scale.size == out.shape[1])):
            # Channel-major convolution output: round it onto the grid and lay it out NCHW in one pass.
            lo, hi = _clamp_bounds(clamp)
            xt = out.transpose(1, 0, 2, 3).reshape(out.shape[1], out.shape[0], -1)
            res = fake_quant_3d_t(xt, qp.scale.astype(np.float64).reshape(-1), qp.zero_point.astype(np.float64).reshape(-1),
                                  float(qp.qmin), float(qp.qmax), lo, hi)
            return res.reshape(out.shape)
        if self.fake_quant and qp is not None:
            fused = _fused_3d(out, qp)
            if fused is not None:
                x3, s, z = fused
                lo, hi = _clamp_bounds(clamp)
                return fake_quant_3d(x3, s, z, float(qp.qmin), float(qp.qmax), lo, hi).reshape(out.shape)
        if clamp is not None and qp is None:
            fused = _fused_3d(out, None)
            if fused is not None:
                lo, hi = _clamp_bounds(clamp)
                return clamp_3d(fused[0], lo, hi).reshape(out.shape)
        out = _apply_clamp(out, clamp)
        return self.finish(out, qp) if qp is not None else out

    def _real_const(self, name):
        t = self.g.tensors[name]
        data = np.asarray(t.data)
        if t.qparams is None:
            return data.astype(self.dtype)
        return t.qparams.dequantize(data).astype(self.dtype, copy=False)

    def run(self, feeds: dict, before_node=None, keep=None) -> dict:
        """Float values of every tensor. ``feeds`` are float inputs (or integer codes of a
        quantized input, which are dequantized). ``before_node(node, env)`` runs before each node
        is computed and may change the graph's constants (calibration passes). ``keep`` (a set of
        tensor names) limits what stays in memory after the tensor's last use."""
        env = {}
        for name, value in feeds.items():
            t = self.g.tensors.get(name)
            arr = np.asarray(value)
            if t is not None and t.qparams is not None and arr.dtype.kind in "iu":
                env[name] = t.qparams.dequantize(arr).astype(self.dtype, copy=False)
            else:
                env[name] = arr.astype(self.dtype)
        last_use = {}
        if keep is not None:
            for i, node in enumerate(self.g.nodes):
                for n in node.inputs:
                    last_use[n] = i
        for i, node in enumerate(self.g.nodes):
            if before_node is not None:
                before_node(node, env)
            ins = []
            for n in node.inputs:
                ins.append(env[n] if n in env else self._real_const(n))
            self._pending_clamp = None
            self._defer_clamp = True
            try:
                if node.op in POINTWISE:
                    out = POINTWISE[node.op].real(np.asarray(ins[0], np.float64), node.attrs)
                else:
                    out = getattr(self, "_" + node.op)(node, *ins)
            finally:
                self._defer_clamp = False
            t = self.g.tensors[node.outputs[0]]
            env[node.outputs[0]] = self._finish_output(out, t.qparams, self._pending_clamp)
            if keep is not None:
                for n in set(node.inputs):
                    if last_use.get(n) == i and n not in keep and n not in self.g.outputs:
                        env.pop(n, None)
        return env

    def _Quantize(self, node, x):
        return self._clamp(x, node.attrs.get("clamp"))

    def _Dequantize(self, node, x):
        return x

    def _Conv(self, node, x, w, b=None):
        at = node.attrs
        layout = at.get("layout", "NCHW")
        y = conv2d_nchw(_to_nchw(x, layout), w, b, at["strides"], at["pads"], at["dilations"], at["group"])
        return self._clamp(_from_nchw(y, layout), at.get("clamp"))

    def _Gemm(self, node, a, w, b=None):
        y = a @ w
        if b is not None:
            y = y + b
        return self._clamp(y, node.attrs.get("clamp"))

    def _Add(self, node, a, b):
        return self._clamp(a + b, node.attrs.get("clamp"))

    def _Mul(self, node, a, b):
        return self._clamp(a * b, node.attrs.get("clamp"))

    def _Clamp(self, node, x):
        return self._clamp(x, (node.attrs.get("lo"), node.attrs.get("hi")))

    def _Rescale(self, node, x):
        return self._clamp(x, node.attrs.get("clamp"))

    def _MaxPool(self, node, x):
        at = node.attrs
        layout = at.get("layout", "NCHW")
        win = _windows(_to_nchw(x, layout), at["kernel"], at["strides"], at["pads"],
                       at.get("dilations", (1, 1)), at.get("ceil_mode", 0), -np.inf)
        return _from_nchw(win.max(axis=(4, 5)), layout)

    def _AveragePool(self, node, x):
        at = node.attrs
        layout = at.get("layout", "NCHW")
        xn = _to_nchw(x, layout)
        args = (at["kernel"], at["strides"], at["pads"], (1, 1), at.get("ceil_mode", 0))
        total = _windows(xn, *args, 0.0).sum(axis=(4, 5))
        if at.get("count_include_pad", 0):
            # ONNX counts padding but not the extra cells that ceil_mode adds past the padding.
            top, left, bottom, right = at["pads"]
            ones = np.pad(np.ones((1, 1) + xn.shape[2:]), ((0, 0), (0, 0), (top, bottom), (left, right)),
                          constant_values=1.0)
            count = _windows(ones, at["kernel"], at["strides"], (0, 0, 0, 0), (1, 1), at.get("ceil_mode", 0), 0.0).sum(axis=(4, 5))
            count = count[:, :, :total.shape[2], :total.shape[3]]
        else:
            ones = np.ones((1, 1) + xn.shape[2:])
            count = _windows(ones, *args, 0.0).sum(axis=(4, 5))
        return self._clamp(_from_nchw(total / count, layout), at.get("clamp"))

    def _GlobalAveragePool(self, node, x):
        layout = node.attrs.get("layout", "NCHW")
        axes = (2, 3) if layout == "NCHW" else (1, 2)
        return self._clamp(x.mean(axis=axes, keepdims=True), node.attrs.get("clamp"))

    def _Concat(self, node, *xs):
        return np.concatenate(xs, axis=node.attrs["axis"])

    def _Reshape(self, node, x):
        shape = node.attrs.get("shape")
        if shape is None:
            return x
        shape = tuple(x.shape[i] if d == 0 else d for i, d in enumerate(shape))
        return x.reshape(shape)

    def _Transpose(self, node, x):
        return x.transpose(node.attrs["perm"])

    def _Softmax(self, node, x):
        axis = node.attrs.get("axis", -1)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
