"""Whether ONNX Runtime's graph optimizer fuses a quantized op with the Relu/Clip nodes between
it and its QuantizeLinear into one integer kernel (QLinearConv, QGemm, ...), or runs the op in
float with the clamps after it.

This is a fact of the model that only ORT's own arithmetic depends on: on AVX2 hosts ORT's u8 x s8
integer kernels saturate pair sums to int16 (``accumulator.pair_sums`` in the onnxruntime
profiles), its float kernels never do. The QDQ importer (:mod:`mrq.onnx_import`) records it on the
IR op as ``ort_float``; the importer of ORT's WeightBiasQuantization (:mod:`mrq.onnx_import_float`)
decides with it whether to build the integer op at all. One rule, measured against ORT 1.32 at
the ties (tests/mrq/test_pair_sums_ort.py), in the order ORT applies its passes:

1. ``FuseReluClip`` (level 1): a Relu whose one consumer is a Clip is removed and the Clip's
   lower bound raised to 0;
2. ``ReluQuantFusion`` / ``ClipQuantFusion`` (level 1, only when the QuantizeLinear has a zero
   point input), repeated while they apply: the clamp right before QuantizeLinear is removed when
   it is a Relu and the zero point is the type's lowest code, or a Clip whose bounds reach the
   grid's real limits to within float32 epsilon;
3. the QDQ selectors (``IsClipMadeRedundantByQ``): no clamp left fuses; one left fuses when it is
   a Relu with the lowest zero point or a Clip whose bounds, quantized as
   ``static_cast<int32_t>(rint(bound / scale)) + zp``, cover the grid; more than one never does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_F32 = np.float32


@dataclass(frozen=True)
class Clamp:
    """One Relu or Clip of the chain, bounds as ORT's ``GetClipConstantMinMax`` reads them:
    float32, the type's lowest/max where a Clip has none."""
    op_type: str
    lo: np.float32
    hi: np.float32

    @classmethod
    def of(cls, op_type: str, lo, hi) -> Clamp:
        """A Relu's (0, float max); a Clip's bounds (None: absent)."""
        info = np.finfo(_F32)
        if op_type == "Relu":
            return cls("Relu", _F32(0.0), _F32(info.max))
        return cls("Clip", _F32(info.min) if lo is None else _F32(lo),
                   _F32(info.max) if hi is None else _F32(hi))


def clamp_chain(nodes, bounds_of) -> list[Clamp]:
    """The Relu/Clip nodes among ``nodes`` (ONNX, graph order) as :class:`Clamp`; ``bounds_of``
    (the importer's ``_clamp_bounds``) gives a Clip's (lo, hi), None where absent."""
    return [Clamp.of(n.op_type, *bounds_of(n)) for n in nodes if n.op_type in ("Relu", "Clip")]


def _cvt_i32(value: np.float32) -> int:
    """C++ ``static_cast<int32_t>`` of a float on x86-64: truncation, -2**31 outside the range."""
    from mrq.onnx_import_islands import ort_cast_to_int32
    return int(ort_cast_to_int32(_F32(value)))


def _fuse_relu_clip(chain: list[Clamp]) -> list[Clamp]:
    out: list[Clamp] = []
    for c in chain:
        if c.op_type == "Clip" and out and out[-1].op_type == "Relu":
            out.pop()
            c = Clamp("Clip", max(c.lo, _F32(0.0)), c.hi)
        out.append(c)
    return out


def _quant_fusion_drops(c: Clamp, scale: np.float32, zp: int, qmin: int, qmax: int) -> bool:
    if c.op_type == "Relu":
        return zp == qmin
    lower, upper = _F32(scale * _F32(qmin - zp)), _F32(scale * _F32(qmax - zp))
    eps = np.finfo(_F32).eps
    return not (eps < _F32(c.lo - lower) or eps < _F32(upper - c.hi))


def _made_redundant_by_q(c: Clamp, scale: np.float32, zp: int, qmin: int, qmax: int) -> bool:
    if c.op_type == "Relu":
        return zp == qmin
    with np.errstate(over="ignore"):
        q_lo = _cvt_i32(np.rint(_F32(c.lo / scale))) + zp
        q_hi = _cvt_i32(np.rint(_F32(c.hi / scale))) + zp
    return q_lo <= qmin and q_hi >= qmax


def ort_fuses_clamps(chain: list[Clamp], scale, zero_point: int, qmin: int, qmax: int,
                     quantize_has_zero_point: bool) -> bool:
    """Whether ORT fuses an op whose output passes through ``chain`` (in graph order) into a
    QuantizeLinear of per-tensor ``scale``/``zero_point`` and code range [qmin, qmax]."""
    scale = _F32(scale)
    clamps = _fuse_relu_clip(list(chain))
    while quantize_has_zero_point and clamps and \
            _quant_fusion_drops(clamps[-1], scale, zero_point, qmin, qmax):
        clamps.pop()
    if not clamps:
        return True
    return len(clamps) == 1 and _made_redundant_by_q(clamps[0], scale, zero_point, qmin, qmax)
