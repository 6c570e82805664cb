"""Errors raised by the simulator. Messages name the step so a user can find the layer."""


class SimulatorError(Exception):
    """Base class for every error the simulator raises on purpose."""


class ProgramError(SimulatorError):
    """The Program is malformed (unknown step kind, missing buffer, bad parameter)."""


class KernelInputError(SimulatorError):
    """A step received an array of the wrong dtype or shape."""


class AccumulatorOverflowError(SimulatorError):
    """An accumulator left its range in a profile whose overflow behaviour is ``error``."""
