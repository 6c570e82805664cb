"""mrq: re-quantize quantized neural networks for fixed-point accelerators, and prove the result
with the bit-exact integer simulator in :mod:`simulator`."""

__version__ = "0.1.0"
