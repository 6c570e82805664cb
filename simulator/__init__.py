"""Bit-exact integer simulator for quantized neural networks.

The simulator executes a :class:`simulator.program.Program` (integer steps with explicit
parameters). It knows nothing about ONNX, TFLite or YAML profiles; ``mrq`` lowers models into
Programs. This package must never import ``mrq``.
"""
from simulator.program import Program, Step, TensorSpec

__all__ = ["Program", "Step", "TensorSpec"]
