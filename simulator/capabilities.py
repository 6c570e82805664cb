"""Which kernel path this process runs: the one gate in front of the x86 fast paths.

The simulator has three kernel paths that compute the same bits
(tests/simulator/test_inert_import.py runs a conv and a gemm on each and compares them):

- ``portable``: what numba compiles for any 64-bit CPU: the dense conv/gemm kernel of
  :mod:`simulator.kernels.portable` (int16 pair products: ``vpmaddwd`` on x86 targets with AVX2
  or AVX-512BW, :func:`target_features`; generic widening multiplies elsewhere) and the
  depthwise, add and epilogue kernels written in generic 16-lane vectors.
- ``vnni``: the AVX-512 VNNI kernels (:mod:`simulator.kernels.simd` intrinsics: the dense
  conv/gemm micro-kernel of :mod:`simulator.kernels.igemm` and the row kernel of
  :mod:`simulator.kernels.gemv`), plus VNNI instructions chosen while generating code shared
  with the portable path (``vpdpwssd`` in the depthwise kernels, ``vcvtps2dq`` rounding in the
  fp32 epilogues).
- ``amx``: the ``vnni`` path plus the AMX tile conv/gemm kernel (:mod:`simulator.kernels.amx_conv`).

:func:`capabilities` returns the decision, a frozen :class:`Capabilities` that also says why a
path is off. Kernel code asks it and nothing else; ``mrq`` never needs to.

Environment (``docs/performance.md``):

- ``SIMULATOR_KERNELS=auto|portable|vnni|amx``: ``auto`` (the default) takes the best path the
  host runs; any other value forces exactly that path, and :func:`capabilities` raises
  :class:`simulator.errors.SimulatorError` when the host cannot run it, so a test that forces a
  path never silently measures another one.
- ``SIMULATOR_SIMD=0``: no VNNI kernels (so no AMX kernels either): the ``portable`` path.
- ``SIMULATOR_AMX=0``: no AMX kernels.

These are read once per process, at the first need. That is usually the import of the first
kernel module, not the first :func:`capabilities` call: numba fixes a cached kernel's cache
directory when the kernel is defined, and that directory must depend on the VNNI choice
(:func:`jit_variant`), because the generated code does (:mod:`simulator.kernels.jitcache`). For
the same reason there is no in-process switch: kernels compiled for one path stay compiled for
the process. To compare paths, run processes with different ``SIMULATOR_KERNELS``.

AMX needs more than the CPU flags: Linux grants a process the tile register state only when asked
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``). The first :func:`capabilities` call
makes that request, on hosts whose CPU reports ``amx-tile`` and ``amx-int8`` and when nothing
turned AMX off; importing the simulator never does.

:func:`ensure_started` is the process set-up the kernels want before their first parallel region;
:func:`simulator.run.run`, :func:`simulator.run.set_threads` and
:func:`simulator.compiled.compile_program` call it.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from simulator.errors import SimulatorError

PATHS = ("portable", "vnni", "amx")

_VNNI_FEATURES = ("avx512f", "avx512bw", "avx512vnni")
_AMX_FEATURES = ("amx-tile", "amx-int8")

_SYS_ARCH_PRCTL = 158          # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


@dataclass(frozen=True)
class Capabilities:
    """The kernel paths this process runs; ``vnni_off`` / ``amx_off``: why a path is off ('' when
    it is on)."""

    vnni: bool
    amx: bool
    vnni_off: str = ""
    amx_off: str = ""

    @property
    def kernels(self) -> str:
        """The path as ``SIMULATOR_KERNELS`` names it: ``portable``, ``vnni`` or ``amx``."""
        return "amx" if self.amx else "vnni" if self.vnni else "portable"


@dataclass(frozen=True)
class _Request:
    """What the environment asks for; ``error``: why the request cannot be honoured as stated."""

    path: str
    simd_off: bool
    amx_off: bool
    error: str = ""


def _read_request(env: Mapping[str, str]) -> _Request:
    path = env.get("SIMULATOR_KERNELS", "").strip().lower() or "auto"
    simd_off = env.get("SIMULATOR_SIMD", "1") == "0"
    amx_off = env.get("SIMULATOR_AMX", "1") == "0"
    error = ""
    if path not in ("auto",) + PATHS:
        error = (f"SIMULATOR_KERNELS={path!r}: expected one of auto, portable, vnni, amx")
    elif simd_off and path in ("vnni", "amx"):
        error = f"SIMULATOR_KERNELS={path} contradicts SIMULATOR_SIMD=0"
    elif amx_off and path == "amx":
        error = "SIMULATOR_KERNELS=amx contradicts SIMULATOR_AMX=0"
    return _Request(path, simd_off, amx_off, error)


def _vnni_choice(req: _Request, host_off: str) -> tuple[bool, str]:
    """``(on, why off)`` for the VNNI kernels; ``host_off``: why the host cannot run them."""
    if req.error:
        return False, req.error
    if req.path == "portable":
        return False, "SIMULATOR_KERNELS=portable"
    if req.simd_off:
        return False, "SIMULATOR_SIMD=0"
    if host_off:
        return False, host_off
    return True, ""


def _decide(req: _Request, vnni: tuple[bool, str],
            host_amx_off: Callable[[], str]) -> Capabilities:
    """The gate for a request and the VNNI choice; ``host_amx_off`` is only called when AMX is
    still wanted (it makes the tile permission request). Raises SimulatorError when the request
    is invalid or forces a path the host cannot run."""
    if req.error:
        raise SimulatorError(req.error)
    on, vnni_off = vnni
    if req.path in ("vnni", "amx") and not on:
        raise SimulatorError(f"SIMULATOR_KERNELS={req.path}: the VNNI kernels cannot run here"
                             f" ({vnni_off})")
    if not on:
        amx_off = f"the AMX kernels need the VNNI kernels ({vnni_off})"
    elif req.path == "vnni":
        amx_off = "SIMULATOR_KERNELS=vnni"
    elif req.amx_off:
        amx_off = "SIMULATOR_AMX=0"
    else:
        amx_off = host_amx_off()
    if req.path == "amx" and amx_off:
        raise SimulatorError(f"SIMULATOR_KERNELS=amx: the AMX kernels cannot run here ({amx_off})")
    return Capabilities(vnni=on, amx=not amx_off, vnni_off=vnni_off, amx_off=amx_off)


def _host_features() -> dict:
    import llvmlite.binding as llvm

    return dict(llvm.get_host_cpu_features())


def _host_vnni_off() -> str:
    """'' when the host runs the VNNI kernels, else why not."""
    try:
        import numba

        if numba.config.CPU_NAME not in (None, "host") or numba.config.CPU_FEATURES:
            # numba compiles for an explicit target: host instructions may not exist there
            return "numba compiles for an explicit CPU (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES)"
        feats = _host_features()
    except Exception as err:  # pragma: no cover - unusual llvmlite builds
        return f"host CPU features unknown ({type(err).__name__}: {err})"
    missing = [f for f in _VNNI_FEATURES if not feats.get(f, False)]
    return f"the host CPU lacks {', '.join(missing)}" if missing else ""


def target_features() -> dict:
    """``{feature: on}`` of the CPU numba generates code for: ``NUMBA_CPU_FEATURES`` when set
    (``+avx2,-avx512bw,...``), else the host's. The portable kernels read it to name an x86
    instruction (``vpmaddwd``) where the target has one; numba's cache key already covers the
    target CPU and features, so it needs no part in :func:`jit_variant`."""
    with _LOCK:
        feats = _ONCE.get("features")
    if feats is not None:
        return feats
    try:
        import numba

        text = numba.config.CPU_FEATURES
        if text:
            feats = {f[1:]: f[0] == "+" for f in text.split(",") if f[:1] in "+-" and f[1:]}
        else:
            feats = _host_features()
    except (ImportError, AttributeError, RuntimeError, OSError):  # pragma: no cover
        # unusual llvmlite builds: the generic code
        feats = {}
    with _LOCK:
        return _ONCE.setdefault("features", feats)


def _request_tile_permission() -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return False


def _host_amx_off() -> str:
    """'' when the host runs the AMX kernels, else why not. Asks Linux for the tile state."""
    try:
        feats = _host_features()
        missing = [f for f in _AMX_FEATURES if not feats.get(f, False)]
        if missing:
            return f"the host CPU lacks {', '.join(missing)}"
        import llvmlite.binding as llvm

        # the AMX kernels are inline assembly: LLVM needs the host target's assembly parser
        llvm.initialize_native_asmparser()
    except Exception as err:  # pragma: no cover - unusual llvmlite builds
        return f"host CPU features unknown ({type(err).__name__}: {err})"
    if not _request_tile_permission():
        return "Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    return ""


_LOCK = threading.Lock()
_ONCE: dict = {}


def _request() -> _Request:
    with _LOCK:
        if "request" not in _ONCE:
            _ONCE["request"] = _read_request(os.environ)
        return _ONCE["request"]


def _vnni() -> tuple[bool, str]:
    req = _request()
    with _LOCK:
        if "vnni" not in _ONCE:
            _ONCE["vnni"] = _vnni_choice(req, _host_vnni_off())
        return _ONCE["vnni"]


def capabilities() -> Capabilities:
    """The kernel paths of this process, decided on the first call and then fixed (module
    docstring). Raises :class:`SimulatorError` on an invalid ``SIMULATOR_KERNELS`` request or one
    the host cannot run."""
    caps = _ONCE.get("caps")
    if caps is not None:
        return caps
    req, vnni = _request(), _vnni()
    with _LOCK:
        if "caps" not in _ONCE:
            _ONCE["caps"] = _decide(req, vnni, _host_amx_off)
        return _ONCE["caps"]


def jit_variant() -> str:
    """``vnni`` or ``portable``: the part of the gate that code generation reads
    (:attr:`Capabilities.vnni`), known without the AMX permission request. The kernels' JIT cache
    directory is keyed by it (:mod:`simulator.kernels.jitcache`). Whatever else the generated
    code comes to depend on must be added here."""
    return "vnni" if _vnni()[0] else "portable"


# How numba's OpenMP workers (libgomp, numba's threading layer here) wait between parallel
# regions. libgomp's default spins ~3 ms after each region: on a shared machine the spinning
# threads compete with the one doing the work and a parallel step took 10-50 ms instead of
# microseconds (measured). Never spinning (PASSIVE alone) makes every region wake a sleeping
# worker, which on the KVM guests of issue 18 costs about as much as a 0.2 ms half-batch (AD01 at
# batch 256 ran slower on 2 threads than on 1). So: passive, after a short spin (GOMP_SPINCOUNT
# overrides the policy's spin count; 20,000 spins are ~0.2 ms, about one run's gap between two
# batches), and no spin at all when there are more workers than CPUs (PASSIVE's throttled count).
OMP_IDLE = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "20000"}


def set_omp_idle_defaults(environ=os.environ) -> None:
    """Put :data:`OMP_IDLE` into ``environ`` unless the user set either variable (the pair is
    one choice: a user's ``OMP_WAIT_POLICY=ACTIVE`` must not get our spin count)."""
    if not any(name in environ for name in OMP_IDLE):
        environ.update(OMP_IDLE)


_STARTED = []


def ensure_started() -> None:
    """Process set-up before the first parallel kernel; once per process, cheap after that.

    libgomp reads :data:`OMP_IDLE` once, when numba loads its threading layer (the first
    parallel kernel compiled or loaded from the cache, or the first ``numba.get_num_threads``),
    so this must run before that. An explicit setting is kept. Code that calls kernel wrappers
    directly, without :func:`simulator.run.run`, may call this first; results do not depend on
    it.
    """
    if _STARTED:
        return
    _STARTED.append(True)
    set_omp_idle_defaults()


__all__ = ["OMP_IDLE", "PATHS", "Capabilities", "capabilities", "ensure_started", "jit_variant",
           "set_omp_idle_defaults", "target_features"]
