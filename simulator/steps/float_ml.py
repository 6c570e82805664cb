"""``float_ml``: the ai.onnx.ml preprocessing ops of scikit-learn pipelines (and ArgMax over
scores) as ONNX Runtime's CPU kernels compute them (onnxruntime/core/providers/cpu/ml/)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simulator.errors import KernelInputError, ProgramError
from simulator.steps.base import Params, register, stats

_F32 = np.float32


@dataclass(frozen=True, kw_only=True, eq=False)
class FloatMlParams(Params):
    """``op`` selects the kernel. ``Imputer``: ``values`` (float32 [1] or [F]) replaces every
    element equal to ``replaced`` (NaN matches NaN), feature ``i % F``. ``Scaler``:
    ``f32(f32(x - offset) * scale)`` per feature (``offset``/``scale`` float32 [1] or [F]).
    For both, the feature axis is axis 1 (axis 0 of a 1-D input), as ORT indexes ``i % dims[1]``.
    ``OneHotEncoder``: int64 input, a float32 output with one more axis of ``len(cats)``, 1.0
    at the position of the input in ``cats``; an input not in ``cats`` gives zeros
    (``zeros=1``) or is an error. ``Lookup`` (ArrayFeatureExtractor of a constant 1-D table):
    ``table[index]``, int64 indices, each ``< len(table)``. ``ArgMax``: float32 input, int64
    index of the first maximum along ``axis`` (kept as size 1 with ``keepdims``)."""

    op: str
    values: Any = None
    replaced: float | None = None
    offset: Any = None
    scale: Any = None
    cats: Any = None
    zeros: int | None = None
    table: Any = None
    axis: int | None = None
    keepdims: int | None = None

    MODE_FIELD = "op"
    MODE_FIELDS: ClassVar[dict] = {"Imputer": frozenset({"values", "replaced"}),
                   "Scaler": frozenset({"offset", "scale"}),
                   "OneHotEncoder": frozenset({"cats", "zeros"}),
                   "Lookup": frozenset({"table"}),
                   "ArgMax": frozenset({"axis", "keepdims"})}

    def check(self, where_: str) -> None:
        for name in ("values", "offset", "scale"):
            v = getattr(self, name)
            if v is not None and (np.asarray(v).dtype != _F32 or np.asarray(v).ndim != 1):
                raise ProgramError(f"{where_}: {name!r} must be a 1-D float32 array")
        if self.op == "Scaler" and np.asarray(self.offset).size != np.asarray(self.scale).size:
            raise ProgramError(f"{where_}: 'offset' and 'scale' must have one size")
        if self.cats is not None:
            cats = np.asarray(self.cats)
            if cats.dtype != np.int64 or cats.ndim != 1 or cats.size == 0:
                raise ProgramError(f"{where_}: 'cats' must be a non-empty 1-D int64 array")


def _per_feature(p_values: np.ndarray, x: np.ndarray, where_: str, strict: bool) -> np.ndarray:
    """``values`` laid along ORT's feature index ``i % dims[1]`` (``dims[0]`` for 1-D). Of
    any other count ORT's Imputer uses the first value, its Scaler (``strict``) refuses."""
    stride = x.shape[0] if x.ndim == 1 else x.shape[1]
    v = np.asarray(p_values, _F32)
    if v.size != stride and (v.size == 1 or not strict):
        return v[0]
    if v.size != stride:
        raise KernelInputError(f"{where_}: {v.size} per-feature values for {stride} features")
    # element i reads values[i % stride]: along axis 1 when the trailing axes are of size 1
    flat_index = np.arange(x.size).reshape(x.shape) % stride
    return v[flat_index]


def _check_dtype(x: np.ndarray, dtype, what: str) -> None:
    if x.dtype != np.dtype(dtype):
        raise KernelInputError(f"float_ml {what} input must be {np.dtype(dtype).name}, got {x.dtype}")


def execute_float_ml(step, p, x):
    where_ = f"step {step.name!r}"
    if p.op == "Imputer":
        _check_dtype(x, _F32, "Imputer")
        fill = _per_feature(p.values, x, where_, strict=False)
        hit = np.isnan(x) if np.isnan(p.replaced) else (x == _F32(p.replaced))
        return (np.where(hit, fill, x).astype(_F32),), stats()
    if p.op == "Scaler":
        _check_dtype(x, _F32, "Scaler")
        off, sc = (_per_feature(v, x, where_, strict=True) for v in (p.offset, p.scale))
        with np.errstate(all="ignore"):
            return (((x - off).astype(_F32) * sc).astype(_F32),), stats()
    if p.op == "OneHotEncoder":
        _check_dtype(x, np.int64, "OneHotEncoder")
        cats = np.asarray(p.cats)
        hit = x[..., None] == cats   # a category listed twice: ORT's map keeps the last index
        last = cats.size - 1 - np.argmax(hit[..., ::-1], axis=-1)
        found = hit.any(axis=-1)
        if not p.zeros and not found.all():
            raise KernelInputError(f"{where_}: a value outside the categories (zeros=0)")
        out = np.zeros(x.shape + (cats.size,), _F32)
        np.put_along_axis(out, last[..., None], found[..., None].astype(_F32), axis=-1)
        return (out,), stats()
    if p.op == "Lookup":
        _check_dtype(x, np.int64, "Lookup")
        table = np.asarray(p.table)
        if x.size and (x.max() >= table.size or x.min() < -table.size):
            raise KernelInputError(f"{where_}: an index outside [{-table.size}, {table.size})")
        return (table[x],), stats()
    _check_dtype(x, _F32, "ArgMax")
    return (np.argmax(x, axis=p.axis, keepdims=bool(p.keepdims)).astype(np.int64),), stats()


KIND = register("float_ml", FloatMlParams, execute_float_ml)
