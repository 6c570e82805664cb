"""User-facing errors. The CLI turns every ``MrqError`` into one line on stderr and exit code 2."""


class MrqError(Exception):
    """Base class for errors caused by user input (files, profiles, models, arrays)."""


class ModelError(MrqError):
    """The model file is missing, corrupt, not quantized, or otherwise unusable."""


class UnsupportedOpError(MrqError):
    def __init__(self, op: str, node: str, detail: str = ""):
        self.op, self.node = op, node
        msg = f"unsupported op {op!r} at node {node!r}"
        super().__init__(msg + (f": {detail}" if detail else ""))


class HwProfileError(MrqError):
    """A hardware profile is missing or malformed. The message names the file and the field.

    A load reports every independent problem at once: ``errors`` holds them all as
    ``(path, field, problem)`` triples (the first is also ``path``/``field``/``problem``), and
    ``str()`` is one line per problem."""

    def __init__(self, path: str, field: str, problem: str, more=()):
        self.path, self.field, self.problem = path, field, problem
        self.errors = ((path, field, problem),) + tuple(more)
        super().__init__("\n".join(f"{p}: field '{f}': {m}" for p, f, m in self.errors))


class InputDataError(MrqError):
    """Input arrays (npz) do not match the model: wrong names, shapes or dtypes."""


class PassError(MrqError):
    """A re-quantization pass failed; the message names the pass chain."""
