"""``resize_bilinear``: bilinear resize of NHWC codes on an unchanged grid."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import ProgramError
from simulator.kernels import shape_ops as shape_k
from simulator.steps.base import Params, register, stats


@dataclass(frozen=True, kw_only=True, eq=False)
class ResizeBilinearParams(Params):
    """Resize NHWC to ``size`` (H, W) with ``align_corners``/``half_pixel_centers``. ``mode``:
    ``int10`` (TFLite int8/int16 reference, 10-bit fixed-point positions), ``float`` (TFLite reference
    template, float32 weights, rounded half away), ``q11`` (XNNPACK, 11-bit weights)."""

    size: tuple
    mode: str
    align_corners: bool = False
    half_pixel_centers: bool = False

    def check(self, where_: str) -> None:
        if self.mode not in ("int10", "float", "q11"):
            raise ProgramError(f"{where_}: unknown mode {self.mode!r}; expected 'int10', 'float', 'q11'")
        if len(tuple(self.size)) != 2 or any(int(s) < 1 for s in self.size):
            raise ProgramError(f"{where_}: size must be two positive ints, got {self.size!r}")
        if self.align_corners and self.half_pixel_centers:
            raise ProgramError(f"{where_}: align_corners and half_pixel_centers exclude each other")


def execute_resize_bilinear(step, p, x):
    """Bilinear resize."""
    return (shape_k.resize_bilinear(x, size=tuple(p.size), mode=p.mode, align_corners=p.align_corners,
                                    half_pixel_centers=p.half_pixel_centers),), stats()


KIND = register("resize_bilinear", ResizeBilinearParams, execute_resize_bilinear)
