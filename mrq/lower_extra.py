"""Lowering of the ops outside the core CNN set, and of TFLite runtimes' own arithmetic.

Mixed into :class:`mrq.lower._Lowerer`; methods are named ``_<IR op>`` and use its helpers
(``self.t``, ``self.emit``, ``self.requant_block``, ``self.out_range``, ``self.a``).

IR ops lowered here: ``Softmax``, ``Logistic``, ``Mean``, ``Pad`` (see :mod:`mrq.tflite_import`).

TFLite runtimes. Two profiles describe LiteRT (ai-edge-litert 2.3 on x86), verified bit for bit
against the interpreter (tests/tflite, bench/litert_parity_count.py):

* ``tflite-int8`` = ``OpResolverType.BUILTIN_REF`` (reference kernels, "ref" flavour);
* ``litert-default`` = the default interpreter: XNNPACK delegate for CONV_2D, DEPTHWISE_CONV_2D,
  FULLY_CONNECTED, ADD, MUL, MAX_POOL_2D, MEAN, PAD, CONCATENATION, RESHAPE, QUANTIZE,
  DEQUANTIZE, LOGISTIC; TFLite's optimized kernels for AVERAGE_POOL_2D and SOFTMAX ("xnnpack").

The flavour is the profile's ``runtime`` field (``tflite-reference`` -> "ref", ``xnnpack``);
``generic`` profiles get the generic lowerings. Most of LiteRT's arithmetic is expressed by the profile YAMLs through the core
lowering; what the profile vocabulary cannot express is done by :meth:`lower_override`:

* ref, Gemm (FULLY_CONNECTED): LiteRT 2.3's reference FULLY_CONNECTED rounds once (TFLite
  single-rounding ``MultiplyByQuantizedMultiplier``: ``(acc * M + 2**(t-1)) >> t``, ``t = 31 -
  exponent``) while its CONV_2D/DEPTHWISE_CONV_2D round twice (gemmlowp): the gemm step gets
  ``rq_mode='fixed'``, ``rq_rounding='half_up'`` with the same Q31 multiplier.
* xnnpack, Add: XNNPACK qs8 add: ``a_scale = f32(s_a/s_out)``, ``b_scale = f32(s_b/s_out)``,
  ``shift = 20 - floor(log2(max))``, multipliers ``lrintf(scale * 2**shift)``, then
  ``(acc + 2**(shift-1)) >> shift`` = add ``mode='fixed'`` with ``rq_mode='shift'``, half up.
* xnnpack, Rescale (8-bit QUANTIZE): XNNPACK convert for int8->int8 / uint8->uint8, ``M =
  lrintf(256 * f32(s_in/s_out))``, ``q = ((x - z_in) * M + 128) >> 8`` = rescale
  ``rq_mode='fixed'``, shift 8, half up; int8<->uint8 (not delegated): TFLite's optimized
  Requantize = ``double_q31`` with both roundings half up (ruy).
* xnnpack, fused-activation bounds of Conv/Gemm/Mul/Clamp: ``xnn_qs8_quantize``
  ``RNE(f32(f32(v / s) + zp))`` instead of the profile's quantizer.

:meth:`lower_override` is called by ``_Lowerer.lower()`` before the default method of each node.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from mrq import multipliers as mul
from mrq.errors import ModelError, UnsupportedOpError
from mrq.ir import QParams, storage_dtype
from mrq.lower_tflite16 import Tflite16Lowering

# Profile name -> which LiteRT path it reproduces.

_8BIT = ("int8", "uint8")


def tflite_flavour(arith) -> Optional[str]:
    """'ref' (LiteRT reference kernels), 'xnnpack' (LiteRT default x86) or None."""
    return {"tflite-reference": "ref", "xnnpack": "xnnpack"}.get(getattr(arith, "runtime", "generic"))


def _f32(x) -> np.float32:
    return np.float32(x)


def _expf(x) -> np.float32:
    """float32 exp, correctly rounded (glibc's expf differs in ~0.06% of arguments by one ulp;
    no LUT in the tests changed because of it)."""
    with np.errstate(over="ignore"):   # expf overflows to inf, as in C
        return np.float32(np.exp(np.float64(np.float32(x))))


def tflite_softmax_ref_params(input_scale: float, beta: float) -> tuple[int, int, int]:
    """``PreprocessSoftmaxScaling(beta, s_in, 5)`` and ``diff_min``: (multiplier, left_shift,
    diff_min). The real multiplier is ``min(beta * s_in * 2**26, 2**31 - 1)`` in double."""
    real = min(float(beta) * float(np.float32(input_scale)) * float(1 << 26), float((1 << 31) - 1))
    m, left = mul.tflite_quantize_multiplier(real)
    if left < 0:
        raise ValueError(f"softmax input scale {input_scale} * beta {beta} is too small")
    radius = math.floor(31.0 * float(1 << 26) / float(1 << left))
    return int(m), int(left), -int(radius)


def tflite_softmax_table(input_scale: float, beta: float) -> np.ndarray:
    """``PopulateSoftmaxLookupTable``: ``table[255 - d] = expf(f32(-s_in * beta) * d)``."""
    scale = _f32(-_f32(input_scale) * _f32(beta))
    table = np.empty(256, np.float32)
    for d in range(256):
        table[255 - d] = _expf(_f32(scale * _f32(d)))
    return table


def tflite_logistic_table(x_qp: QParams, y_qp: QParams) -> np.ndarray:
    """``LUTPopulate`` for 8-bit LOGISTIC: for every input code v, ``t = 1 / (1 + expf(-f32(s_in
    * (v - z_in))))`` in float32, ``q = round_half_away(f32(t * f32(1 / s_out))) + z_out``,
    clamped; indexed by ``v - min``."""
    info = np.iinfo(np.dtype(storage_dtype(x_qp.dtype)))
    out_info = np.iinfo(np.dtype(storage_dtype(y_qp.dtype)))
    s_in, z_in = _f32(x_qp.scale[0]), int(x_qp.zero_point[0])
    inv = _f32(_f32(1.0) / _f32(y_qp.scale[0]))
    z_out = int(y_qp.zero_point[0])
    table = np.empty(256, np.int64)
    for k, v in enumerate(range(info.min, info.max + 1)):
        deq = _f32(s_in * _f32(v - z_in))
        t = _f32(_f32(1.0) / _f32(_f32(1.0) + _expf(-deq)))
        r = float(_f32(t * inv))
        q = int(math.copysign(math.floor(abs(r) + 0.5), r)) + z_out
        table[k] = min(max(q, out_info.min), out_info.max)
    return table.astype(storage_dtype(y_qp.dtype))


def tflite_mean_params(x_qp: QParams, y_qp: QParams, count: int) -> tuple[int, int]:
    """Reference QuantizedMeanOrSum: ``QuantizeMultiplier(s_in / s_out)`` re-adapted for 1/n:
    ``shift = min(floor(log2 n), 32, 31 + e)``, ``M' = (M << shift) // n``, ``e' = e - shift``."""
    m, e = mul.tflite_quantize_multiplier(float(x_qp.scale[0]) / float(y_qp.scale[0]))
    shift = min(int(count).bit_length() - 1, 32, 31 + e)
    return int((m << shift) // count), int(e - shift)


def xnnpack_mean_params(x_qp: QParams, y_qp: QParams, count: int) -> tuple[np.float32, np.float32]:
    """XNNPACK qs8 mean: ``scale = f32(f32(s_in/s_out) * f32(1/n))`` and the float zero point with
    the input zero point folded in: ``f32(z_out - f32(f32(n * z_in) * scale))``."""
    scale = _f32(_f32(_f32(x_qp.scale[0]) / _f32(y_qp.scale[0])) * _f32(_f32(1.0) / _f32(count)))
    zp = _f32(_f32(y_qp.zero_point[0]) - _f32(_f32(_f32(count) * _f32(x_qp.zero_point[0])) * scale))
    return scale, zp


def xnnpack_add_params(sa, sb, so) -> Optional[tuple[int, int, int]]:
    """``xnn_init_qs8_add_minmax_scalar_params``: (a_multiplier, b_multiplier, shift), or None
    where XNNPACK refuses the scales (then the TFLite kernel runs)."""
    a_os = _f32(_f32(sa) / _f32(so))
    b_os = _f32(_f32(sb) / _f32(so))
    mx = max(abs(float(a_os)), abs(float(b_os)))
    if not (2.0 ** -10 <= abs(float(a_os)) < 256.0 and 2.0 ** -10 <= abs(float(b_os)) < 256.0):
        return None
    exponent = math.frexp(mx)[1] - 1
    shift = 20 - exponent
    am = int(np.rint(np.float64(a_os) * 2.0 ** shift))   # exact scaling, then lrintf (RNE)
    bm = int(np.rint(np.float64(b_os) * 2.0 ** shift))
    return am, bm, shift


def xnnpack_quantize_bound(value: float, qp: QParams) -> int:
    """``xnn_qs8_quantize``: ``lrintf(clamp(f32(f32(v / s) + f32(zp))))`` (the delegate's fused
    activation bounds)."""
    info = np.iinfo(np.dtype(storage_dtype(qp.dtype)))
    f = _f32(_f32(_f32(value) / _f32(qp.scale[0])) + _f32(qp.zero_point[0]))
    f = min(max(float(f), float(info.min)), float(info.max))
    return int(np.rint(f))


class ExtraOpsLowering(Tflite16Lowering):
    # ------------------------------------------------------------------ helpers
    def _tfl(self) -> Optional[str]:
        return tflite_flavour(self.a)

    def _xnn_range(self, qp: QParams, clamp) -> tuple[int, int]:
        lo, hi = qp.qmin, qp.qmax
        if clamp is not None:
            if clamp[0] is not None:
                lo = max(lo, xnnpack_quantize_bound(clamp[0], qp))
            if clamp[1] is not None:
                hi = min(hi, xnnpack_quantize_bound(clamp[1], qp))
        return lo, hi

    def conv_real_multiplier(self, kind: str, x_qp: QParams, w_qp: QParams, w_scale: np.ndarray,
                             y_qp: QParams) -> np.ndarray:
        """The real multiplier per output channel of a conv or gemm (``w_scale`` broadcast to the
        channels): float64 from the float32 scales, except where the runtime derives it its own
        way: LiteRT's reference kernels take the legacy scalar multiplier (a float32 scale
        product) for per-tensor uint8 convolutions and every per-tensor FULLY_CONNECTED."""
        if self._tfl() == "ref" and not w_qp.per_channel and (kind == "gemm" or x_qp.dtype == "uint8"):
            return mul.tflite_product_multiplier(x_qp.scale[0], w_scale, y_qp.scale[0])
        return mul.real_multiplier(x_qp.scale[0], w_scale, y_qp.scale[0])

    # ------------------------------------------------------------------ profile-specific lowering
    def lower_override(self, node) -> bool:
        """Lower ``node`` with a TFLite runtime's own arithmetic where the profile vocabulary cannot
        express it; returns False when the default lowering applies (``_Lowerer.lower`` then calls
        ``_<op>``)."""
        flavour = self._tfl()
        if flavour is None:
            return False
        from mrq.lower import _Lowerer  # the defaults this refines (no import cycle at call time)
        if self.lower_tflite16(node):   # 16x8 and the kernels XNNPACK does not take
            return True
        op = node.op
        if flavour == "ref":
            if op == "Gemm" and not node.attrs.get("integer_output") and self.a.requant == "double_q31":
                # Same Q31 multiplier and shift (31 - exponent); one rounding, half up.
                _Lowerer._conv_like(self, node, "gemm", rq_mode="fixed", rq_rounding="half_up")
                return True
            return False
        # flavour == "xnnpack"
        if op == "Add":
            return self._xnnpack_add(node)
        if op == "Rescale" and node.attrs.get("tflite_op") == "QUANTIZE":
            return self._xnnpack_requantize(node)
        if op in ("Conv", "Gemm", "Mul") and node.attrs.get("clamp") is not None \
                and not node.attrs.get("integer_output"):
            # the delegate quantizes fused activation bounds its own way (xnn_qs8_quantize)
            self.xnn_bounds = True
            try:
                getattr(_Lowerer, "_" + op)(self, node)
            finally:
                self.xnn_bounds = False
            return True
        if op == "Clamp" and node.attrs.get("tflite_op") is not None:
            x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
            if x_qp.same_grid(y_qp):
                lo, hi = self._xnn_range(y_qp, (node.attrs.get("lo"), node.attrs.get("hi")))
                self.emit("clamp", node, node.inputs, node.outputs, out_min=lo, out_max=hi)
                return True
        return False

    def _xnnpack_add(self, node, subtract: bool = False) -> bool:
        """XNNPACK's add (QS8 and QU8), or its QS8 subtract: the add with the second multiplier
        negated; False where XNNPACK refuses the types or scales (the TFLite kernel runs)."""
        a, b = (self.ensure_buffer(n, node) for n in node.inputs)
        qa, qb = self.t(a).qparams, self.t(b).qparams
        qy = self.t(node.outputs[0]).qparams
        dtypes = {q.dtype for q in (qa, qb, qy)}
        # the QU8 subtract has not been checked against LiteRT: it keeps the TFLite kernel
        if dtypes not in (({"int8"},) if subtract else ({"int8"}, {"uint8"})):
            return False
        params = xnnpack_add_params(qa.scale[0], qb.scale[0], qy.scale[0])
        if params is None:
            return False
        am, bm, shift = params
        lo, hi = self._xnn_range(qy, node.attrs.get("clamp"))
        zo = int(qy.zero_point[0])
        self.emit("add", node, [a, b], node.outputs, mode="fixed", multiplier_a=am,
                  multiplier_b=-bm if subtract else bm,
                  zero_point_a=int(qa.zero_point[0]), zero_point_b=int(qb.zero_point[0]),
                  rq_mode="shift", rq_multiplier=np.ones(1, np.int64),
                  rq_shift=np.array([shift], np.int64), rq_rounding="half_up", out_zero_point=zo,
                  out_min=lo, out_max=hi, out_dtype=storage_dtype(qy.dtype))
        return True

    def _xnnpack_requantize(self, node) -> bool:
        """QUANTIZE between 8-bit types on LiteRT's default path: XNNPACK's convert for int8->int8
        and uint8->uint8 when ``2**-8 <= f32(s_in/s_out) <= 2**7`` (``M = lrintf(256 * ratio)``,
        ``((x - z_in) * M + 128) >> 8``); otherwise TFLite's optimized Requantize, whose x86
        MultiplyByQuantizedMultiplier rounds half up twice (ruy)."""
        x_qp, y_qp = self.t(node.inputs[0]).qparams, self.t(node.outputs[0]).qparams
        if x_qp.dtype not in _8BIT or y_qp.dtype not in _8BIT or node.attrs.get("clamp") is not None:
            return False
        out_dtype = storage_dtype(y_qp.dtype)
        info = np.iinfo(np.dtype(out_dtype))
        common = dict(input_zero_point=int(x_qp.zero_point[0]), out_zero_point=int(y_qp.zero_point[0]),
                      out_min=int(info.min), out_max=int(info.max), out_dtype=out_dtype, channel_axis=-1)
        ratio = _f32(_f32(x_qp.scale[0]) / _f32(y_qp.scale[0]))
        if x_qp.dtype == y_qp.dtype and 2.0 ** -8 <= float(ratio) <= 2.0 ** 7:
            m = int(np.rint(np.float64(_f32(_f32(256.0) * ratio))))
            self.emit("rescale", node, node.inputs, node.outputs, rq_mode="fixed",
                      rq_multiplier=np.array([m], np.int64), rq_shift=np.array([8], np.int64),
                      rq_rounding="half_up", **common)
            return True
        m, s = mul.tflite_multipliers(np.array([float(x_qp.scale[0]) / float(y_qp.scale[0])]))
        self.emit("rescale", node, node.inputs, node.outputs, rq_mode="double_q31", rq_multiplier=m,
                  rq_shift=s, rq_rounding="half_up", **common)
        return True

    # ------------------------------------------------------------------ Softmax
    def _Softmax(self, node):
        x = self.t(node.inputs[0])
        x_qp = x.qparams
        y_qp = self.t(node.outputs[0]).qparams
        axis = node.attrs.get("axis", -1)
        beta = float(node.attrs.get("beta", 1.0))
        rank = len(x.shape)
        last = axis in (-1, rank - 1)
        flavour = self._tfl()
        if flavour is not None and last and x_qp.dtype in _8BIT and y_qp.dtype in _8BIT:
            out_dtype = storage_dtype(y_qp.dtype)
            info = np.iinfo(np.dtype(out_dtype))
            if flavour == "ref" and int(y_qp.zero_point[0]) == info.min \
                    and abs(float(y_qp.scale[0]) * 256.0 - 1.0) < 1e-3:
                m, left, diff_min = tflite_softmax_ref_params(x_qp.scale[0], beta)
                self.emit("softmax_tflite", node, node.inputs, node.outputs, mode="gemmlowp", axis=-1,
                          input_multiplier=m, input_left_shift=left, diff_min=diff_min,
                          out_dtype=out_dtype, out_min=int(info.min), out_max=int(info.max))
                return
            if flavour == "xnnpack":
                self.emit("softmax_tflite", node, node.inputs, node.outputs, mode="lut", axis=-1,
                          table=tflite_softmax_table(x_qp.scale[0], beta),
                          scale_out=_f32(y_qp.scale[0]), out_zero_point=int(y_qp.zero_point[0]),
                          out_min=int(info.min), out_max=int(info.max), out_dtype=out_dtype,
                          rounding="add_half_truncate" if out_dtype == "uint8" else "half_away")
                return
        if self.a.runtime == "onnxruntime" and beta == 1.0 and x_qp.dtype in _8BIT \
                and y_qp.dtype == x_qp.dtype:
            # ORT runs 8-bit QDQ/QOperator softmax as com.microsoft QLinearSoftmax
            from mrq.ort_softmax import qlinear_softmax_table, qlinear_softmax_y_scale
            if not -rank <= axis < rank or x.shape[axis] is None:
                raise UnsupportedOpError("Softmax", node.name, f"needs the static size of axis {axis} "
                                         f"(input shape {list(x.shape)})")
            self.emit("softmax_ort", node, node.inputs, node.outputs, axis=axis,
                      table=qlinear_softmax_table(x_qp.scale[0], int(x.shape[axis]), x_qp.dtype == "int8"),
                      y_scale=qlinear_softmax_y_scale(y_qp.scale[0]), out_zero_point=int(y_qp.zero_point[0]))
            return
        if beta != 1.0:
            raise UnsupportedOpError("Softmax", node.name,
                                     f"beta={beta} needs the TFLite softmax arithmetic (profile "
                                     f"{self.a.name!r} uses the float softmax)")
        self.emit("softmax", node, node.inputs, node.outputs, axis=axis, mode="float",
                  scale_in=np.float32(x_qp.scale[0]), input_zero_point=int(x_qp.zero_point[0]),
                  scale_out=np.float32(y_qp.scale[0]), out_zero_point=int(y_qp.zero_point[0]),
                  out_min=y_qp.qmin, out_max=y_qp.qmax, out_dtype=storage_dtype(y_qp.dtype))

    # ------------------------------------------------------------------ Logistic
    def _Logistic(self, node):
        x_qp = self.t(node.inputs[0]).qparams
        y_qp = self.t(node.outputs[0]).qparams
        if x_qp is None or y_qp is None or x_qp.dtype not in _8BIT or y_qp.dtype not in _8BIT:
            raise UnsupportedOpError("Logistic", node.name, "only 8-bit quantized input and output")
        self.emit("lut", node, node.inputs, node.outputs, table=tflite_logistic_table(x_qp, y_qp),
                  out_dtype=storage_dtype(y_qp.dtype))

    # ------------------------------------------------------------------ Mean
    def _Mean(self, node):
        x = self.t(node.inputs[0])
        x_qp, y_qp = x.qparams, self.t(node.outputs[0]).qparams
        axes = tuple(int(a) for a in node.attrs["axes"])
        keep = bool(node.attrs.get("keep_dims", False))
        dims = [x.shape[a] for a in axes]
        if any(d is None for d in dims) or 0 in axes:
            raise ModelError(f"node {node.name!r}: Mean needs static sizes of the reduced axes {axes}")
        count = int(np.prod(dims))
        out_dtype = storage_dtype(y_qp.dtype)
        flavour = self._tfl()
        common = dict(axes=axes, keep_dims=keep, out_dtype=out_dtype)
        if flavour == "ref":
            m, e = tflite_mean_params(x_qp, y_qp, count)
            self.emit("mean", node, node.inputs, node.outputs, mode="tflite",
                      input_zero_point=int(x_qp.zero_point[0]), multiplier=m, shift=e,
                      out_zero_point=int(y_qp.zero_point[0]), out_min=y_qp.qmin, out_max=y_qp.qmax,
                      **common)
        elif flavour == "xnnpack":
            scale, zp = xnnpack_mean_params(x_qp, y_qp, count)
            self.emit("mean", node, node.inputs, node.outputs, mode="xnnpack", scale=scale,
                      zero_point=zp, out_min=y_qp.qmin, out_max=y_qp.qmax, **common)
        else:
            real = np.array([float(x_qp.scale[0]) / (float(y_qp.scale[0]) * count)])
            ort = np.array([_f32(x_qp.scale[0]) / _f32(_f32(y_qp.scale[0]) * _f32(count))], np.float32)
            block = self.requant_block(real, y_qp, node.attrs.get("clamp"), -1, ort)
            block.pop("out_dtype", None)
            self.emit("mean", node, node.inputs, node.outputs, mode="requant",
                      input_zero_point=int(x_qp.zero_point[0]), **block, **common)

    # ------------------------------------------------------------------ Pad
    def _Pad(self, node):
        x_name = self.ensure_buffer(node.inputs[0], node)
        x_qp = self.t(x_name).qparams
        y_qp = self.t(node.outputs[0]).qparams
        src = x_name
        if not x_qp.same_grid(y_qp):
            src = f"{node.outputs[0]}__rescaled"
            self.emit("rescale", node, [x_name], [src], suffix="/rescale",
                      **self._rescale_params(x_qp, y_qp, None))
        value = float(node.attrs.get("value", 0.0))
        if value == 0.0:
            code = int(y_qp.zero_point[0])
        else:
            code = min(max(self.quantize_real(value, y_qp), y_qp.qmin), y_qp.qmax)
        self.emit("pad", node, [src], node.outputs,
                  pads=tuple((int(a), int(b)) for a, b in node.attrs["pads"]), value=code)
