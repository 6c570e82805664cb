"""A whole program as one jitted function, for runs where per-step Python would dominate.

At batch 1 a model's kernels take microseconds, while the interpreter (:func:`simulator.run.run`)
spends tens of microseconds of Python per step: reading parameters, choosing kernels, allocating
outputs. :func:`compile_program` fixes the input shapes and dtypes, asks every step for its
:class:`simulator.launch.Launch` (the kernel calls the interpreter would make for those shapes,
see :mod:`simulator.steps`) and writes them, in program order, into the source of one
function that numba compiles. Running it costs one dispatch; the kernels and their arguments are
the interpreter's, so the outputs are the same bits (tests/simulator/test_compiled.py compares
them on every model the tests build).

Where the generated code lives: the source is written to ``<cache>/programs/<digest>.py``
(``<cache>``: ``$MRQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/mrq``, else ``~/.cache/mrq``) and
compiled with numba's on-disk cache, so the next process that compiles the same program loads
it instead of compiling. The digest covers the source, every constant array, every kernel's
bytecode and closure, the simulator's sources and numba's version: any change gives a new file.
If the directory is not writable the function is compiled in memory.

A program compiles only if every step has a launch for the given inputs; otherwise
:func:`compile_program` returns ``None`` and says why in :func:`last_reason` (the interpreter
runs such programs).
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import types
from collections.abc import Mapping

import numba
import numpy as np
from numba.core.dispatcher import Dispatcher
from numba.core.errors import NumbaError

from simulator import fusion
from simulator.capabilities import capabilities, ensure_started
from simulator.errors import KernelInputError, SimulatorError
from simulator.kernels import sources_digest
from simulator.kernels.jitcache import _describe
from simulator.kernels.portable_glue import c_view, read_only, stack_array
from simulator.launch import In, Tmp
from simulator.precompile import step_launches
from simulator.run import RunResult, _check_feeds, _plan
from simulator.steps import params_of, spec, step_launch

_LAST_REASON = [""]
_new = object.__new__


def last_reason() -> str:
    """Why the last :func:`compile_program` call returned ``None`` ('' if it did not)."""
    return _LAST_REASON[0]


class _Unsupported(Exception):
    pass


class _Source:
    """The generated function's text and the globals it names."""

    def __init__(self):
        self.consts = {}   # global name -> array
        self.kernels = {}  # global name -> dispatcher
        self._ids = {}

    def global_for(self, value, prefix, table):
        key = (prefix, id(value))
        name = self._ids.get(key)
        if name is None:
            name = f"{prefix}{len(table)}"
            table[name] = value
            self._ids[key] = name
        return name

    def literal(self, value):
        """Python source for an argument value, with the numba type the interpreter's call
        gives it (a Python int is int64, a numpy scalar keeps its type)."""
        if isinstance(value, (bool, np.bool_)):
            # a bare True would be typed Literal[bool] and compile the kernel once more
            return "np.bool_(True)" if value else "np.bool_(False)"
        if isinstance(value, int):
            return f"np.int64({int(value)})"
        if isinstance(value, np.integer):
            return f"np.{type(value).__name__}({int(value)})"
        if isinstance(value, (float, np.floating)):
            if not np.isfinite(value):
                return self.global_for(np.array([value]), "C", self.consts) + "[0]"
            text = repr(float(value))
            return text if type(value) is float else f"np.{type(value).__name__}({text})"
        if isinstance(value, np.ndarray):
            return self.global_for(value, "C", self.consts)
        raise _Unsupported(f"an argument of type {type(value).__name__}")


def _view(expr, shape):
    if shape is None:
        return expr
    dims = ", ".join(str(int(d)) for d in shape)
    return f"c_view({expr}, ({dims},))"


# intermediates no program output aliases live in the function's stack frame, up to this many
# bytes per function (a heap allocation and free cost ~50 ns each: a tenth of a small layer)
STACK_TEMP_BYTES = 16384


def _body(program, input_specs, src, body, stack_sat=False):
    """Append the launches of every step to ``body`` (lines of a function whose inputs are
    ``x0, x1, ...`` with ``input_specs``: name -> (shape, dtype)); return ``(output
    expressions, {buffer: spec})``. Raises :class:`_Unsupported`. ``stack_sat``: the counters
    ``sat`` in the stack frame (when the function does not return the array)."""
    var = {}   # buffer name -> python expression
    specs = {}  # buffer name -> spec array
    aliases = {}  # buffer name -> the temporaries it may be a view of
    temps = []  # (line index in body, temporary, shape, dtype)
    for i, inp in enumerate(program.inputs):
        var[inp.name] = f"x{i}"
        specs[inp.name] = spec(*input_specs[inp.name])
    n_steps = len(program.steps)
    if stack_sat:
        body.append(f"    sat = stack_array({max(n_steps, 1)}, np.int64)")
        body.append("    sat[:] = 0")
    else:
        body.append(f"    sat = np.zeros({n_steps}, np.int64)")
    held = fusion.Held(program)
    for k, (step, _kind, _params) in enumerate(_plan(program)):
        in_specs = [specs[name] for name in step.inputs]
        try:
            launch = step_launch(step, in_specs)
        except (SimulatorError, TypeError, ValueError, KeyError, IndexError) as err:
            raise _Unsupported(f"step {step.name!r} ({step.kind}): {err}") from None
        if launch is None:
            raise _Unsupported(f"step {step.name!r} ({step.kind}) has no launch for inputs"
                               f" {[(list(s.shape), s.dtype.name) for s in in_specs]}")
        if len(launch.outputs) != len(step.outputs):
            raise _Unsupported(f"step {step.name!r}: launch outputs do not match")
        launch = fusion.refine(launch)

        def expr(arg, k=k, step=step, read=True):
            if isinstance(arg, In):
                # read-only, as the interpreter passes them (Launch.execute)
                view = _view(var[step.inputs[arg.index]], arg.shape)
                return f"read_only({view})" if read else view
            if isinstance(arg, Tmp):
                return _view(f"t{k}_{arg.index}", arg.shape)
            if isinstance(arg, Dispatcher):
                raise _Unsupported("a kernel passed as an argument")
            return src.literal(arg)

        for j, (shape, dtype) in enumerate(launch.temps):
            dims = ", ".join(str(int(d)) for d in shape)
            temps.append((len(body), f"t{k}_{j}", tuple(int(d) for d in shape), np.dtype(dtype)))
            body.append(f"    t{k}_{j} = np.empty(({dims},), np.{np.dtype(dtype).name})")

        def render(call, expr=expr, step=step):
            if not isinstance(call.fn, Dispatcher):
                raise _Unsupported(f"step {step.name!r}: {call.fn!r} is not a jitted kernel")
            return src.global_for(call.fn, "K", src.kernels), [expr(a) for a in call.args]

        # a conv whose only reader is an add may be held back and fused into it (fusion)
        for call in held.calls(k, step, launch, render, body):
            fn, args = render(call)
            text = f"{fn}({', '.join(args)})"
            body.append(f"    sat[{k}] += {text}" if call.counted else f"    {text}")
        out_specs = launch.output_specs(in_specs)
        for j, (name, out) in enumerate(zip(step.outputs, launch.outputs)):
            vname = f"b{k}_{j}"
            body.append(f"    {vname} = {expr(out, read=False)}")
            var[name] = vname
            aliases[name] = ({f"t{k}_{out.index}"} if isinstance(out, Tmp) else
                             aliases.get(step.inputs[out.index], set()) if isinstance(out, In)
                             else set())
            specs[name] = spec(*out_specs[j])
    outs = []
    for o in program.outputs:
        if o.name not in var:
            raise _Unsupported(f"program output {o.name!r} is never produced")
        if specs[o.name].dtype.name != o.dtype:
            raise _Unsupported(f"program output {o.name!r} has dtype {specs[o.name].dtype.name}")
        outs.append(var[o.name])
    _stack_temps(body, temps, set().union(*(aliases.get(o.name, set()) for o in program.outputs)))
    return outs, specs


def _stack_temps(body, temps, escaping):
    """Rewrite the declarations of temporaries outside ``escaping`` (the program outputs'
    aliases) as stack arrays, in program order while :data:`STACK_TEMP_BYTES` lasts."""
    left = STACK_TEMP_BYTES
    for line, name, shape, dtype in temps:
        size = int(np.prod(shape, dtype=np.int64))
        if name in escaping or size * dtype.itemsize > left or size == 0:
            continue
        left -= size * dtype.itemsize
        dims = ", ".join(str(d) for d in shape)
        array = f"stack_array({size}, np.{dtype.name})"
        body[line] = f"    {name} = {array if len(shape) == 1 else f'c_view({array}, ({dims},))'}"


def _input_checks(program, feeds, prefix):
    """Lines raising ``ValueError`` unless argument ``<prefix><i>`` has the shape of its feed
    and C strides (numpy's rule: dimensions of extent 1 have any). :meth:`CompiledProgram.run`
    calls the compiled version's entry point, which trusts its arguments; on this error it
    takes the checked call instead."""
    lines = []
    for i, inp in enumerate(program.inputs):
        arr = feeds[inp.name]
        shape = tuple(int(d) for d in arr.shape)
        if not shape:
            continue
        conds = [f"{prefix}{i}.shape != ({''.join(f'{d}, ' for d in shape)})"]
        if 0 not in shape:
            step = arr.dtype.itemsize
            for j in reversed(range(len(shape))):
                if shape[j] > 1:
                    conds.append(f"{prefix}{i}.strides[{j}] != {step}")
                step *= shape[j]
        lines.append(f"    if {' or '.join(conds)}:")
        lines.append(f"        raise ValueError('input {i}: not the compiled shape or not C-contiguous')")
    return lines


def _returned(outs):
    """Source of what the generated function returns for its outputs ``outs``: the one array,
    or the tuple of several (a tuple around one array costs its boxing and an index)."""
    return outs[0] if len(outs) == 1 else "(" + "".join(o + ", " for o in outs) + ")"


def _counts(name, n):
    """Source of the tuple of the ``n`` elements of the array ``name``."""
    return "(" + "".join(f"{name}[{i}], " for i in range(n)) + ")"


def _with_threads(threads, fn, *args):
    """``fn(*args)`` with numba's thread count set to ``threads`` (launches are built for the
    current count)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(previous)


def _generate(program, feeds):
    """``(source, src)`` of one function running the whole batch; raises :class:`_Unsupported`."""
    src = _Source()
    input_specs = {name: (arr.shape, arr.dtype) for name, arr in feeds.items()}
    body = _input_checks(program, feeds, "x")
    outs, _ = _body(program, input_specs, src, body, stack_sat=True)
    # the counters are in the function's frame and leave it as a tuple of ints (boxing
    # counts that are mostly 0 is cheaper than boxing an array)
    n_steps = len(program.steps)
    body.append(f"    return {_returned(outs)}, {_counts('sat', n_steps)}")
    args = ", ".join(f"x{i}" for i in range(len(program.inputs)))
    source = f"import numpy as np\n\n\ndef program({args}):\n" + "\n".join(body) + "\n"
    return source, src


# a batch is split into chunks only when each chunk keeps at least this many rows: fewer rows
# per chunk leave the 8-row kernel blocks mostly empty
CHUNK_MIN_ROWS = 8
# parameters that name axes of a step's input; a step that works along the batch axis (axis 0)
# mixes rows, so its program is not split over the batch
_AXIS_FIELDS = ("axis", "axes", "channel_axis", "perm")


# a batch whose largest step touches more than CACHE_BYTES (inputs, outputs, scratch) per
# thread is cut into blocks of about BLOCK_BYTES that run through the whole program one after the
# other: each step then reads what the previous one wrote from the core's L2 cache instead of
# memory (batch 256, one thread: ResNet-8 19.8 -> 18.0 ms, MobileNetV2 QAT 50 -> 35 ms; AD01,
# whose steps are small but whose weights each block would read again, stays whole). On two
# threads each thread runs its range of rows in such blocks on the portable kernels (AVX2 host,
# bench/paired.py 1 -> 2 threads: KWS 1.42 -> 1.86x, MobileNetV2 QAT 1.62 -> 2.02x, ORT-quantized
# 1.63 -> 1.75x), but one range whole on the VNNI kernels, where the blocks made the MobileNetV2s
# slower (ORT-quantized 16-18 -> 21-24 ms, AVX-512 VNNI host)
CACHE_BYTES = 1 << 20
BLOCK_BYTES = 512 << 10


def _chunking(batch, threads, row_bytes=0, blocks_on_threads=False):
    """``(rows per chunk, full chunks, rows of the last, shorter chunk or 0)`` or ``None``;
    ``row_bytes``: the most bytes a step touches per row (:func:`_spec_pass`). With more than one
    thread, a chunk is a thread's range of rows, or with ``blocks_on_threads`` a block of it
    (``prange`` hands each thread a contiguous run of chunks)."""
    n = max(1, min(threads, batch // CHUNK_MIN_ROWS))
    rows = -(-batch // n)
    if (n == 1 or blocks_on_threads) and row_bytes * rows > CACHE_BYTES:
        block = max(CHUNK_MIN_ROWS, 1 << (max(1, BLOCK_BYTES // row_bytes).bit_length() - 1))
        rows = -(-rows // max(1, rows // block))
    if rows >= batch:
        return None
    full = batch // rows
    return rows, full, batch - full * rows


def _along_batch(step, rank):
    """Whether a parameter of ``step`` names axis 0 of its (rank ``rank``) input."""
    params = params_of(step)
    for name in _AXIS_FIELDS:
        value = getattr(params, name, None)
        if value is None:
            continue
        if name == "perm":
            if int(value[0]) != 0:
                return True
            continue
        for axis in np.atleast_1d(np.asarray(value)).reshape(-1):
            if int(axis) % max(rank, 1) == 0:
                return True
    return False


def _separable(program, specs_by_batch):
    """Whether every buffer of the program keeps the batch as its leading axis at each of the
    batch sizes in ``specs_by_batch`` ({batch: {buffer: spec}}) and no step works along it:
    then each output row depends only on the same input row (the assumption every batched
    run of the simulator makes: ``mrq sim`` runs a data set in batches) and the batch can be
    split into chunks that run independently."""
    for batch, specs in specs_by_batch.items():
        for s in specs.values():
            if len(s.shape) < 2 or int(s.shape[0]) != batch:
                return False
    first = next(iter(specs_by_batch.values()))
    for step in program.steps:
        rank = len(first[step.inputs[0]].shape) if step.inputs else 0
        if _along_batch(step, rank):
            return False
    return True


def _generate_chunked(program, feeds, threads):
    """``(source, src, chunks)`` of a function that splits the batch into ``chunks`` ranges of
    rows and runs each range through the whole program on its own thread (``prange``), the
    launches built for one thread; ``None`` when the program is not split (see
    :func:`_separable`). One fork per run instead of one per parallel step, and no step waits
    for the slowest thread of the previous one. A batch too large for the cache is cut into
    more chunks than threads (:data:`CACHE_BYTES`), run in turn."""
    batches = {int(arr.shape[0]) for arr in feeds.values() if arr.ndim >= 1}
    if len(batches) != 1:
        return None
    (batch,) = batches
    if batch < 2 * CHUNK_MIN_ROWS:
        return None
    try:
        specs = {name: (arr.shape, arr.dtype) for name, arr in feeds.items()}
        full_specs = {}
        most = _with_threads(1, _spec_pass, program, specs, full_specs)
        plan = _chunking(batch, threads, -(-most // max(batch, 1)),
                         blocks_on_threads=capabilities().kernels == "portable")
        if plan is None:
            return None
        return _chunked_source(program, feeds, threads, batch, plan, full_specs)
    except _Unsupported:
        return None  # e.g. a step without a launch at the chunk's shape: not split


def _chunked_source(program, feeds, threads, batch, plan, full_specs):
    """The chunked source; ``full_specs``: every buffer's spec at the whole batch
    (:func:`_spec_pass`)."""
    rows, full, tail = plan
    src = _Source()
    names = [inp.name for inp in program.inputs]

    def specs_at(n):
        return {name: ((n,) + tuple(feeds[name].shape[1:]), feeds[name].dtype) for name in names}

    chunk_sizes = [rows] + ([tail] if tail else [])
    fns = []
    specs_by_batch = {}
    for c, n in enumerate(chunk_sizes):
        body = []
        for i, name in enumerate(names):
            row = int(np.prod(feeds[name].shape[1:], dtype=np.int64))
            dims = ", ".join(str(int(d)) for d in (n,) + tuple(feeds[name].shape[1:]))
            body.append(f"    x{i} = f{i}.reshape(-1)[start * {row}:(start + {n}) * {row}]"
                        f".reshape(({dims},))")
        outs, specs = _with_threads(1, _body, program, specs_at(n), src, body)
        body.append(f"    return ({''.join(o + ', ' for o in outs)}), sat")
        args = "".join(f"f{i}, " for i in range(len(names)))
        fns.append(f"@njit(cache=CACHE)\ndef chunk{c}({args}start):\n" + "\n".join(body))
        specs_by_batch[n] = specs
    specs_by_batch.setdefault(batch, full_specs)
    if not _separable(program, specs_by_batch):
        return None
    out_specs = [specs_by_batch[rows][o.name] for o in program.outputs]
    n_chunks = full + (1 if tail else 0)
    n_steps = len(program.steps)
    args = ", ".join(f"f{i}" for i in range(len(names)))
    lines = [f"def program({args}):"] + _input_checks(program, feeds, "f")
    for j, s in enumerate(out_specs):
        dims = ", ".join(str(int(d)) for d in (batch,) + tuple(s.shape[1:]))
        lines.append(f"    o{j} = np.empty(({dims},), np.{s.dtype.name})")
    lines.append(f"    sats = np.zeros(({n_chunks}, {n_steps}), np.int64)")
    # one thread: the blocks run one after the other (no parallel region)
    lines.append(f"    for c in {'prange' if threads > 1 else 'range'}({n_chunks}):")
    call_args = "".join(f"f{i}, " for i in range(len(names)))
    for c, n in enumerate(chunk_sizes):
        cond = (f"if c < {full}:" if c == 0 else "else:") if tail else "if True:"
        lines.append(f"        {cond}")
        lines.append(f"            start = c * {rows}")
        lines.append(f"            outs{c}, sat{c} = chunk{c}({call_args}start)")
        for j in range(len(out_specs)):
            lines.append(f"            o{j}[start:start + {n}] = outs{c}[{j}]")
        lines.append(f"            sats[c] = sat{c}")
    outs = "".join(f"o{j}, " for j in range(len(out_specs)))
    lines.append("    sat = sats.sum(axis=0)")
    lines.append(f"    return {_returned([f'o{j}' for j in range(len(out_specs))])}, "
                 f"{_counts('sat', n_steps)}")
    source = ("import numpy as np\nfrom numba import njit, prange\n\n\n"
              + "\n\n\n".join(fns) + "\n\n\n" + "\n".join(lines) + "\n")
    return source, src, n_chunks


def _spec_pass(program, input_specs, specs):
    """Fill ``specs`` with every buffer's spec for inputs ``input_specs`` (name -> (shape,
    dtype); the launches' output specs, built for the current thread count; nothing is
    generated) and return the most bytes one step reads, writes or uses as scratch."""
    for name, (shape, dtype) in input_specs.items():
        specs[name] = spec(shape, dtype)
    most = 0
    for step, in_specs, launch in step_launches(program, specs):
        if launch is None:
            raise _Unsupported(f"step {step.name!r} ({step.kind}) has no launch")
        outs = [specs[name] for name in step.outputs]
        scratch = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                      for shape, dtype in launch.temps)
        most = max(most, sum(a.nbytes for a in in_specs + outs) + scratch)
    return most


def _digest(source, src):
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(sources_digest().encode())
    h.update(numba.__version__.encode())
    for name in sorted(src.consts):
        arr = np.ascontiguousarray(src.consts[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    for name in sorted(src.kernels):
        h.update(f"{name}:{_describe(src.kernels[name])!r}".encode())
    return h.hexdigest()


def programs_dir() -> str:
    """The directory of compiled programs' sources and their numba cache files (module
    docstring); ``mrq cache`` reports and clears it."""
    return _cache_dir()


def _cache_dir():
    root = os.environ.get("MRQ_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "mrq")
    return os.path.join(root, "programs")


def _write_source(path, source):
    """Write ``source`` to ``path`` unless it is already there (atomic); False if not
    writable."""
    try:
        with open(path) as fh:
            if fh.read() == source:
                return True
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(source)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


_MODULES: dict = {}


def _jit(source, src, parallel=False, probe=False):
    """The dispatcher of the generated function (compiled, or loaded from numba's on-disk
    cache, on its first call). ``probe``: write nothing; ``None`` unless an earlier process
    left this very source in the cache directory."""
    digest = _digest(source, src)
    cached = _MODULES.get(digest)
    if cached is not None:
        return cached
    name = f"_mrq_program_{digest[:24]}"
    path = os.path.join(_cache_dir(), name + ".py")
    if probe:
        try:
            with open(path) as fh:
                if fh.read() != source:
                    return None
        except OSError:
            return None
        on_disk = True
    else:
        on_disk = _write_source(path, source)
    module = types.ModuleType(name)
    module.__file__ = path if on_disk else f"<{name}>"
    module.__dict__.update(src.consts)
    module.__dict__.update(src.kernels)
    module.__dict__.update(c_view=c_view, read_only=read_only, stack_array=stack_array)
    module.__dict__["CACHE"] = on_disk  # the chunk functions' decorator argument
    # numba re-imports the module by name when it loads a cached function
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own generated source
    fn = numba.njit(cache=on_disk, parallel=parallel)(module.program)
    _MODULES[digest] = fn
    return fn


class _StepStats(Mapping):
    """``{step name: {"acc_overflow": 0, "out_saturated": n}}`` built on first use: at batch 1
    building 10-20 small dicts per run cost about a tenth of a small model's run."""

    __slots__ = ("_dict", "_names", "_sat")

    def __init__(self, names, sat):
        self._names = names
        self._sat = sat

    def _get(self):
        try:
            return self._dict
        except AttributeError:  # the first use
            self._dict = {name: {"acc_overflow": 0, "out_saturated": int(n)}
                          for name, n in zip(self._names, self._sat)}
            return self._dict

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._names)


class CompiledProgram:
    """A program compiled for fixed input shapes and dtypes; :meth:`run` is :func:`run`'s
    equivalent (outputs and per-step ``out_saturated`` counters; no trace)."""

    def __init__(self, program, input_specs, fn, source):
        self.program = program
        self.input_specs = input_specs  # name -> (shape, dtype)
        self.fn = fn
        self.source = source
        self._names = [s.name for s in program.inputs]
        # (name, shape, dtype number): comparing dtype numbers costs a tenth of comparing dtypes
        self._checks = [(name, tuple(input_specs[name][0]), np.dtype(input_specs[name][1]).num)
                        for name in self._names]
        # a one-input program's fast path in run: (name, dtype, ndim); the dtype compared by
        # identity (numpy's built-in dtypes are singletons), the shape and strides checked by
        # the generated function (_input_checks); any other feed takes the checks above.
        # Armed (``_one``: plus the callable) once the function is compiled.
        self._single = None
        if len(self._checks) == 1:
            name, shape, _num = self._checks[0]
            dtype = np.dtype(input_specs[name][1])
            canonical = np.dtype(dtype.type) if dtype.isnative else dtype
            self._single = (name, canonical, len(shape))
        self._one = None
        self._out0 = program.outputs[0].name if len(program.outputs) == 1 else None
        self._step_names = [s.name for s in program.steps]
        self._out_names = [s.name for s in program.outputs]

    def warm_up(self, feeds) -> bool:
        """Compile (or load) the function by running it once on ``feeds``; False if numba
        cannot compile the generated source (the interpreter then runs the program)."""
        try:
            self.run(feeds)
        except NumbaError:
            return False
        return True

    def run(self, feeds) -> RunResult:
        # at batch 1 this method is a third of a small model's time: every line counts
        # (tests/simulator/test_compiled_call.py; bench/ad01_floor.py measures it)
        one = self._one
        got = None
        if one is not None:
            try:
                arr = feeds[one[0]]
                if len(feeds) == 1 and arr.dtype is one[1] and arr.ndim == one[2]:
                    # not an array: the entry point raises TypeError; another shape or not
                    # C-contiguous: the function raises ValueError before any step
                    got = one[3](arr)
            except (KeyError, AttributeError, TypeError, ValueError):
                pass  # the checked call names the problem, or copies the array
        if got is None:
            got = self._call_checked(feeds)
        outs, sat = got
        # the dataclass __init__ (default factories) cost ~1.5 us, dict(zip(...)) ~0.2 us;
        # plain attribute stores (reading result.__dict__ would build the dict: +0.1 us)
        result = _new(RunResult)
        result.outputs = ({self._out0: outs} if self._out0 is not None
                          else dict(zip(self._out_names, outs)))
        result.trace = {}
        stats = result.stats = _new(_StepStats)  # without __init__: two slots
        stats._names = self._step_names
        stats._sat = sat
        return result

    def _call_checked(self, feeds):
        """The function's result on ``feeds``, checked; then :meth:`run`'s fast path is set
        up for a one-input program: an array of the dtype and dimension count goes straight to
        the compiled version's entry point (the dispatcher's type resolution, ~70 ns, is for
        arrays that could need another version; the function checks shape and strides). For
        8-bit inputs only: a wider one could be misaligned, which the dispatcher types
        apart (and would compile another version for)."""
        out = self.fn(*self._arrays(feeds))
        if self._one is None and self._single is not None and self._single[1].itemsize == 1:
            overloads = list(self.fn.overloads.values())
            if len(overloads) == 1:
                self._one = self._single + (overloads[0].entry_point,)
        return out

    def _arrays(self, feeds):
        """The function's arguments from ``feeds``, checked (a user error names the
        problem)."""
        arrays = []
        try:
            if len(feeds) != len(self._names):
                raise KeyError(None)
            for name, shape, num in self._checks:
                arr = feeds[name]
                if arr.dtype.num != num or arr.shape != shape:
                    raise KeyError(name)
                arrays.append(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))
        except (KeyError, AttributeError, TypeError):
            # the interpreter's checks name the problem; then the fixed shape
            _check_feeds(self.program, feeds)
            for name in self._names:
                shape = self.input_specs[name][0]
                if feeds[name].shape != shape:
                    raise KernelInputError(
                        f"input {name!r}: this compiled program takes shape {list(shape)}, got"
                        f" {list(feeds[name].shape)}") from None
            raise
        return arrays


def compiled_on_disk(program, feeds) -> bool | None:
    """Whether :func:`compile_program` (with the current thread count) would load the compiled
    program from the on-disk cache (True: milliseconds) or compile it (False: seconds);
    ``None`` when the program has no compiled form for these inputs. Writes no file."""
    try:
        source, src, chunks = _source_for(program, feeds, numba.get_num_threads())
    except _Unsupported:
        return None
    fn = _jit(source, src, parallel=chunks > 1 and numba.get_num_threads() > 1, probe=True)
    if fn is None:
        return False
    cache_file = getattr(getattr(fn, "_cache", None), "_cache_file", None)
    index = getattr(cache_file, "_index_path", None)
    return bool(index) and os.path.exists(index)


def _source_for(program, feeds, threads):
    """``(source, src, chunks)``; raises :class:`_Unsupported`."""
    chunked = _generate_chunked(program, feeds, threads)
    if chunked is not None:
        return chunked
    source, src = _with_threads(threads, _generate, program, feeds)
    return source, src, 1


def compile_program(program, feeds, threads=None) -> CompiledProgram | None:
    """Compile ``program`` for inputs with the shapes and dtypes of ``feeds`` (name -> array),
    or return ``None`` (see :func:`last_reason`) when some step has no launch for them.

    ``threads`` (default: numba's current count): with 2 or more and a batch of at least
    ``CHUNK_MIN_ROWS`` rows per thread, the batch is split into one range of rows per thread,
    each run through the whole program on its own thread, when every buffer keeps the batch as
    its leading axis (:func:`_separable`); otherwise the steps' own kernels use the threads.
    Such a batch is cut into blocks of rows that fit the cache when its steps do not
    (:data:`CACHE_BYTES`), on one thread too."""
    ensure_started()
    _LAST_REASON[0] = ""
    _check_feeds(program, feeds)
    threads = numba.get_num_threads() if threads is None else int(threads)
    try:
        source, src, chunks = _source_for(program, feeds, threads)
    except _Unsupported as err:
        _LAST_REASON[0] = str(err)
        return None
    fn = _jit(source, src, parallel=chunks > 1 and threads > 1)
    specs = {name: (tuple(arr.shape), arr.dtype) for name, arr in feeds.items()}
    compiled = CompiledProgram(program, specs, fn, source)
    compiled.chunks = chunks
    compiled.threads = threads
    return compiled


__all__ = ["CompiledProgram", "compile_program", "compiled_on_disk", "last_reason"]
