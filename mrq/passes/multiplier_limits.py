"""multiplier_limits: choose grids whose requantization parameters the hardware can hold.

The requantization multiplier of an op is a ratio of scales: ``s_in * s_w[c] / s_out`` for
Conv/Gemm, ``s_a * s_b / s_out`` for Mul, ``s_in / s_out`` for re-griddings (Rescale, a Clamp
or Concat/Pad input on another grid) and fixed-point average pools (divided by the window count
where the hardware has no divider, and always for a GlobalAveragePool lowered with the
multiplier), ``s_a / s_out`` and ``s_b / s_out`` for Add in ``ops.add: fixed``. A multiplier
larger than the profile can represent (``(2**multiplier_bits - 1) * 2**-shift_min`` for
fixed_point, ``2**-shift_min`` for shift, ``(2**31 - 1) * 2**-shift_min`` for double_q31)
needs a left shift or a multiplier register the hardware does not have; lowered, it would be
clipped (and `mrq check`/`mrq golden` refuse such a program). Walking the graph in order:

- Conv/Gemm: each such output channel gets the largest weight scale of the profile's weight
  scale form that makes its multiplier representable, when its integer weights re-coded on
  that finer grid still fit the weight code range and the accumulator's static worst case
  (every weight at its extreme, the input at its grid's extremes, the bias) still fits
  ``accumulator.bits``. For power-of-two scales this is exact: the codes are multiplied by
  ``2**k``. Channels that cannot shrink enough make the next rule apply to the whole op.
- Otherwise the op's output activation gets the smallest scale of the activation scale form
  that makes every one of its multipliers representable. The scale belongs to a grid class
  (tensors tied by Reshape/Transpose/MaxPool and ``ops.shared_grid``): all members change
  together. Consumers then read a coarser grid; their multipliers are checked when the walk
  reaches them, and bias_grids (the next pass) puts every bias on its new input x weight scale.
  Raising a scale is lossy (one bit of resolution per doubling) and reported as such.

Multipliers that are too *small* (below ``2**-shift_max``) are left alone: they only lose
resolution, and the lowering encodes the closest value. The decision uses the encoders of
:mod:`mrq.multipliers` on the real multiplier computed as the lowering computes it, and the
pass ends by lowering the result and noting anything still clipped.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from mrq import multipliers as mul
from mrq.errors import MrqError
from mrq.grids import describe, snap_scale
from mrq.ir import Graph, QParams
from mrq.passes.grid_classes import grid_classes, members

PASS = "multiplier_limits"
# Attempts to step a snapped scale past a float rounding that leaves the multiplier a hair out
# of range (each step moves by at least one unit of the scale form).
NUDGES = 8
MAX_ROUNDS = 8


def multiplier_limits(graph: Graph, ctx) -> Graph:
    from mrq.lower import arithmetic_from_profile
    arith = arithmetic_from_profile(ctx.profile)
    if arith.requant not in ("fixed_point", "double_q31", "shift"):
        return graph   # float32 multipliers have no range to leave
    walk = _Walk(graph, ctx, arith)
    # Raising a grid shared with an earlier op's input (ops.shared_grid ties tensors upstream)
    # can enlarge a multiplier the walk already passed: walk again until nothing changes. Every
    # change only raises scales or shrinks weight scales, so this ends.
    for _ in range(MAX_ROUNDS):
        changes = walk.raised + walk.shrunk
        for node in graph.nodes:
            if node.attrs.get("layout_boundary") or arith.host_arithmetic(node.op) is not None:
                continue   # host ops run the host's arithmetic
            walk.visit(node)
        if walk.raised + walk.shrunk == changes:
            break
    walk.finish()
    return graph


class _Walk:
    def __init__(self, graph: Graph, ctx, arith):
        self.g = graph
        self.ctx = ctx
        self.a = arith
        self.profile = ctx.profile
        from mrq.mixed_precision import LayerFormats
        self.formats = LayerFormats.of(graph, ctx.profile)   # per-layer weight/activation formats
        self.classes = grid_classes(graph, self.profile.ops.shared_grid)
        self.members = members(self.classes)
        self.rmax = mul.largest_multiplier(arith.requant, arith.multiplier_bits or 31, arith.shift_min)
        self.raised = 0
        self.shrunk = 0
        self.failed: dict = {}    # node name -> why it could not be fixed

    # ------------------------------------------------------------------ multipliers
    def scale(self, name: str) -> float:
        return float(self.g.tensors[name].qparams.scale[0])

    def as_lowered(self, real: np.ndarray, f32: np.ndarray | None = None) -> np.ndarray:
        """The real multiplier the lowering encodes (float32 profiles round it first)."""
        real = np.atleast_1d(np.asarray(real, np.float64))
        if self.a.multiplier_precision == "float32":
            return np.atleast_1d(real.astype(np.float32) if f32 is None else f32).astype(np.float64)
        return real

    def too_large(self, real: np.ndarray) -> np.ndarray:
        """Per channel: the encoding clips at ``requant.shift_min``."""
        real = np.atleast_1d(real)
        _, _, clips = mul.encode(real, self.a.requant, self.a.multiplier_bits, self.a.shift_min,
                                 self.a.shift_max)
        bad = np.zeros(real.size, bool)
        for c in clips:
            if c.field == "requant.shift_min":
                bad[c.channel or 0] = True
        return bad

    def add_too_large(self, ra: float, rb: float) -> bool:
        if self.a.requant == "shift":
            _, _, _, clips = mul.pow2_add_multipliers(ra, rb, self.a.shift_min, self.a.shift_max)
        else:
            _, _, _, clips = mul.fixed_add_multipliers(ra, rb, self.a.multiplier_bits,
                                                       self.a.shift_min, self.a.shift_max)
        return any(c.field == "requant.shift_min" for c in clips)

    def sites(self, node) -> list:
        """``(numerators, real(s_out) -> multipliers, too_large(multipliers) -> mask)`` of the
        requantizations that divide by ``node``'s output scale."""
        op, a = node.op, self.a
        out = node.outputs[0]
        t_out = self.g.tensors.get(out)
        if t_out is None or t_out.qparams is None:
            return []
        # a wide output is an accumulator (no requantization), except a QUANTIZE into int32
        # (TFLite int16 -> int32): that re-gridding still has a multiplier the hardware holds
        if t_out.qparams.dtype in ("int32", "int64") and op != "Rescale":
            return []
        s = self.scale
        requant = self.too_large
        if op == "Mul":
            k = s(node.inputs[0]) * s(node.inputs[1])
            f32 = lambda so: np.float32(np.float32(np.float32(s(node.inputs[0])) * np.float32(s(node.inputs[1])))
                                        / np.float32(so))
            return [(k, lambda so: self.as_lowered(k / so, f32(so)), requant)]
        if op == "Add" and a.add == "fixed" and a.runtime == "generic":
            sa, sb = (float(np.float32(s(n))) for n in node.inputs)
            return [(max(sa, sb),
                     lambda so: np.array([sa / float(np.float32(so)), sb / float(np.float32(so))]),
                     lambda r: np.array([self.add_too_large(float(r[0]), float(r[1]))]))]
        if op in ("Rescale", "Clamp", "Concat", "Pad") and a.rescale == "requant" and a.runtime != "xnnpack":
            out_qp = t_out.qparams
            res = []
            for name in node.inputs if op == "Concat" else node.inputs[:1]:
                t = self.g.tensors.get(name)
                if t is None or t.qparams is None or t.qparams.same_grid(out_qp):
                    continue
                k = float(t.qparams.scale[0])
                res.append((k, lambda so, k=k: self.as_lowered(k / so), requant))
            return res
        if op in ("AveragePool", "GlobalAveragePool", "Mean"):
            count = self._pool_divisor(node)
            if count is None:
                return []
            k = s(node.inputs[0])
            if op == "Mean" or (op == "GlobalAveragePool" and a.global_avgpool != "avgpool"):
                # the lowering's float32 evaluation order for these (ORT's global pool)
                f32 = lambda so: np.float32(np.float32(k) / np.float32(np.float32(so) * np.float32(count)))
                return [(k / count, lambda so: self.as_lowered(k / (so * count), f32(so)), requant)]
            return [(k / count, lambda so: self.as_lowered(k / (so * count)), requant)]
        return []

    def _pool_divisor(self, node):
        """The count folded into a pooling multiplier (1 when the hardware divides first), or
        None when the pool has no requantization multiplier."""
        a = self.a
        x = self.g.tensors[node.inputs[0]]
        layout = node.attrs.get("layout", "NCHW")
        if node.op == "Mean":
            if a.runtime != "generic":
                return None
            dims = [x.shape[i] for i in node.attrs["axes"]]
            return None if any(d is None for d in dims) else int(np.prod(dims))
        spatial = tuple(x.shape[2:4] if layout == "NCHW" else x.shape[1:3])
        if node.op == "GlobalAveragePool":
            if any(d is None for d in spatial):
                return None
            n = int(spatial[0]) * int(spatial[1])
            if a.global_avgpool != "avgpool":
                return n
            kernel = spatial
        else:
            kernel = tuple(node.attrs["kernel"])
        if a.avgpool != "fixed":
            return None
        return 1 if a.divider else int(kernel[0]) * int(kernel[1])

    # ------------------------------------------------------------------ the walk
    def visit(self, node) -> None:
        if node.op in ("Conv", "Gemm"):
            if not node.attrs.get("integer_output"):
                self._conv(node)
            return
        sites = self.sites(node)
        if sites and any(np.any(bad(real(self.scale(node.outputs[0])))) for _, real, bad in sites):
            self._raise_output(node, sites, why="its multiplier")

    def _conv(self, node) -> None:
        x, w_t, y = (self.g.tensors[n] for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
        if y.qparams is None or y.qparams.dtype in ("int32", "int64"):
            return
        n_out = w_t.data.shape[0 if node.op == "Conv" else 1]
        s_in = float(x.qparams.scale[0])

        def reals(s_w, s_out):
            s_w = np.broadcast_to(np.asarray(s_w, np.float32), (n_out,))
            real = np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out)
            return self.as_lowered(real, mul.ort_multiplier(s_in, s_w, s_out))

        w_scale = np.broadcast_to(w_t.qparams.scale, (n_out,)).astype(np.float32)
        bad = self.too_large(reals(w_scale, y.qparams.scale[0]))
        if not bad.any():
            return
        shrink = self._weight_scales(node, bad, s_in, float(y.qparams.scale[0]), reals)
        stuck = bad & np.isnan(shrink)
        if stuck.any():
            # one output scale serves every channel: raise it for the ones weights cannot fix
            k = np.float64(s_in) * w_scale.astype(np.float64)
            site = (float(k[stuck].max()), lambda so: reals(w_scale, so)[stuck],
                    self.too_large)
            self._raise_output(node, [site], why=f"the multiplier of channel(s) {_chans(stuck)}")
            bad = self.too_large(reals(w_scale, y.qparams.scale[0]))
            if not bad.any():
                return
            shrink = self._weight_scales(node, bad, s_in, float(y.qparams.scale[0]), reals)
        todo = bad & ~np.isnan(shrink)
        if todo.any():
            self._apply_weight_scales(node, todo, shrink, float(y.qparams.scale[0]))

    def _weight_scales(self, node, bad, s_in, s_out, reals) -> np.ndarray:
        """Per channel in ``bad``: the largest weight scale of the profile's form whose
        multiplier is representable and whose re-coded weights and accumulator bound fit, or
        NaN. Weights shared by another node, or per-tensor weights, move only as a whole."""
        w_t = self.g.tensors[node.inputs[1]]
        qp = w_t.qparams
        fmt = self.formats.for_node(node.name).weights.scale
        n_out = bad.size
        out = np.full(n_out, np.nan)
        if sum(1 for n in self.g.nodes if node.inputs[1] in n.inputs) > 1:
            return out
        w_scale = np.broadcast_to(qp.scale, (n_out,)).astype(np.float32)
        per_tensor = qp.scale.size == 1
        idx = [np.flatnonzero(bad)] if per_tensor else [np.array([c]) for c in np.flatnonzero(bad)]
        for chans in idx:
            target = self.rmax * s_out / s_in
            cand = snap_scale(np.array([target]), fmt, "down")[0]
            for _ in range(NUDGES):
                trial = w_scale.copy()
                trial[chans if not per_tensor else slice(None)] = cand
                if cand < w_scale[chans[0]] and not self.too_large(reals(trial, s_out))[chans].any():
                    break
                cand = snap_scale(np.array([float(cand) * (1 - 2.0 ** -20)]), fmt, "down")[0]
            else:
                continue
            if self._codes_fit(node, chans if not per_tensor else np.arange(n_out), w_scale, cand, s_in):
                out[chans] = cand
        return out

    def _recode(self, node, chans, old_scale, new_scale):
        """The weights of ``chans`` re-coded on ``new_scale``: (codes in channel-first rows,
        exact?)."""
        w_t = self.g.tensors[node.inputs[1]]
        qp = w_t.qparams
        rows = np.asarray(w_t.data, np.int64)
        rows = rows.reshape(rows.shape[0], -1) if node.op == "Conv" else rows.T
        zp = np.broadcast_to(qp.zero_point, (rows.shape[0],)).astype(np.int64)[:, None]
        sel = rows[chans]
        real = (sel - zp[chans]) * np.asarray(old_scale, np.float64)[chans][:, None]
        exact = real / np.asarray(new_scale, np.float64)
        codes = np.rint(exact) + zp[chans]
        return codes, bool(np.all(np.rint(exact) == exact)), zp[chans]

    def _codes_fit(self, node, chans, w_scale, cand, s_in) -> bool:
        qp = self.g.tensors[node.inputs[1]].qparams
        codes, _, zp = self._recode(node, chans, w_scale, cand)
        if codes.min() < qp.qmin or codes.max() > qp.qmax:
            return False
        # the accumulator's static worst case with the larger codes and the re-gridded bias
        x_qp = self.g.tensors[node.inputs[0]].qparams
        x_abs = max(abs(x_qp.qmin - int(x_qp.zero_point[0])), abs(x_qp.qmax - int(x_qp.zero_point[0])))
        bias = 0.0
        if len(node.inputs) > 2:
            from mrq.passes.bias_grids import real_bias
            bias = np.abs(real_bias(self.g, node)[chans]) / (np.float64(s_in) * np.float64(cand))
        bound = np.abs(codes - zp).sum(axis=1) * x_abs + np.ceil(bias)
        return bool(np.all(bound <= (1 << (self.profile.accumulator.bits - 1)) - 1))

    def _apply_weight_scales(self, node, todo, shrink, s_out) -> None:
        w_t = self.g.tensors[node.inputs[1]]
        qp = w_t.qparams
        n_out = todo.size
        old = np.broadcast_to(qp.scale, (n_out,)).astype(np.float32)
        new = old.copy()
        per_tensor = qp.scale.size == 1
        if per_tensor:
            new[:] = shrink[todo][0]
            chans = np.arange(n_out)
        else:
            new[todo] = shrink[todo].astype(np.float32)
            chans = np.flatnonzero(todo)
        codes, lossless, _ = self._recode(node, chans, old, new[chans][:, None])
        data = np.asarray(w_t.data, np.int64)
        rows = data.reshape(data.shape[0], -1).copy() if node.op == "Conv" else data.T.copy()
        rows[chans] = codes
        data = rows.reshape(data.shape) if node.op == "Conv" else np.ascontiguousarray(rows.T)
        new_qp = QParams(new[:1] if per_tensor else new, qp.zero_point, qp.dtype, axis=qp.axis,
                         narrow_range=qp.narrow_range, bits=qp.bits)
        w_t.data = data.astype(np.asarray(w_t.data).dtype)
        w_t.qparams = new_qp
        factors = sorted({_fmt_ratio(float(o) / float(n)) for o, n in zip(old[chans], new[chans])})
        self.ctx.report.change(
            w_t.name, "weights", describe(qp), describe(new_qp), lossless, PASS,
            f"scale of channel(s) {_chans(todo)} divided by {', '.join(factors)} so that "
            f"{node.name}'s requantization multiplier fits the profile "
            f"({self._limit_text()}); codes re-coded{' exactly' if lossless else ''}")
        self.shrunk += len(chans)

    def _raise_output(self, node, sites, why: str) -> None:
        out = node.outputs[0]
        root = self.classes.get(out, out)
        names = self.members.get(root, [out])
        t = self.g.tensors[out]
        qp = t.qparams
        if any(n in self.g.inputs and self.g.tensors[n].dtype != "float32" for n in names):
            self.failed[node.name] = (f"{node.name}: {why} is too large, and its output grid is "
                                      f"the grid of an integer model input, whose codes the "
                                      f"caller supplies")
            return
        fmt = self.formats.for_tensor(root).activations.scale
        need = max(k for k, _, _ in sites) / self.rmax
        cand = snap_scale(np.array([max(need, float(qp.scale[0]))]), fmt, "up")[0]
        for _ in range(NUDGES):
            if cand > qp.scale[0] and not any(np.any(bad(real(float(cand)))) for _, real, bad in sites):
                break
            cand = snap_scale(np.array([float(cand) * (1 + 2.0 ** -20)]), fmt, "up")[0]
        else:
            self.failed[node.name] = (f"{node.name}: {why} needs an output scale of at least "
                                      f"{need:.6g}, which the profile's activation scale form "
                                      f"cannot give")
            return
        new = (replace(qp, scale=np.array([cand], np.float32)) if qp.dtype in ("int32", "int64")
               else _rescaled_grid(qp, float(cand), self.formats.for_tensor(root).activations))
        for name in names:
            self.g.tensors[name].qparams = new
            self.g.tensors[name].dtype = new.dtype
        self.ctx.report.change(
            root, "activations", describe(qp), describe(new), False, PASS,
            f"scale x{_fmt_ratio(float(cand) / float(qp.scale[0]))} so that {why} of {node.name} "
            f"fits the profile ({self._limit_text()})"
            + (f"; shared by {len(names)} tensors" if len(names) > 1 else ""))
        self.raised += 1

    def _limit_text(self) -> str:
        a = self.a
        if a.requant == "fixed_point":
            return (f"at most {self.rmax:.6g} = (2**{a.multiplier_bits} - 1) * 2**-{a.shift_min} "
                    f"with requant.shift_min {a.shift_min}")
        return f"at most {self.rmax:.6g} with requant.shift_min {a.shift_min}"

    # ------------------------------------------------------------------ the result
    def finish(self) -> None:
        from mrq.lower import lower
        report = self.ctx.report
        if self.raised or self.shrunk:
            report.notes.append(f"{PASS}: {self.shrunk} weight channel(s) on finer scales, "
                                f"{self.raised} activation grid(s) raised, so that every "
                                f"requantization multiplier fits {self.profile.name}'s limits")
        for line in self.failed.values():
            report.notes.append(f"{PASS}: could not fix {line}")
        try:
            remaining = lower(self.g, self.a).limit_violations
        except MrqError:
            return   # the graph does not lower yet; `mrq requant` checks its output itself
        for v in remaining:
            report.notes.append(f"{PASS}: still outside the limits: {v}")


def _rescaled_grid(qp: QParams, scale: float, fmt) -> QParams:
    """``qp`` with a larger scale: a symmetric zero point stays; an asymmetric one moves so the
    grid still reaches down to the old lowest value (zero stays exactly representable)."""
    zp = qp.zero_point.copy()
    symmetric = fmt.symmetric and qp.dtype in fmt.dtypes() and \
        int(zp[0]) == fmt.symmetric_zero_point(qp.dtype)
    if not symmetric:
        lo = (qp.qmin - float(zp[0])) * float(qp.scale[0])
        zp = np.array([int(np.clip(np.rint(qp.qmin - lo / scale), qp.qmin, qp.qmax))], np.int64)
    return replace(qp, scale=np.array([scale], np.float32), zero_point=zp)


def _chans(mask: np.ndarray, limit: int = 6) -> str:
    idx = np.flatnonzero(mask)
    s = ", ".join(str(i) for i in idx[:limit])
    return s + (f" and {idx.size - limit} more" if idx.size > limit else "")


def _fmt_ratio(r: float) -> str:
    e = math.log2(r)
    return f"2**{round(e)}" if abs(e - round(e)) < 1e-9 else f"{r:.4g}"
