"""Slow, obvious references for the simulator's kernels and primitives.

Pure Python integers, ``fractions.Fraction`` and numpy float32 scalars. Nothing here imports
``simulator`` or ``mrq``: a reference must not share code with what it checks.
"""
