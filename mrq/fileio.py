"""File input and output: safe loading and atomic writes (never a half-written output, never an
output that destroys an input).

Every command calls :func:`guard_paths` with all of its inputs and outputs before any work. Outputs
are then written with :func:`save_npz`/:func:`save_text`/:func:`save_json`/:func:`atomic_path`:

* a regular file (or a new name) is replaced atomically from a process-unique temporary
  ``.mrq-tmp-<pid>-<random>`` in the same folder; a symlink is followed, so the link stays a link
  and its target gets the content;
* a character device or FIFO is written directly (replacing ``/dev/null`` by a file would break
  the system), ``-`` is stdout for text and JSON;
* created files get the permissions the umask allows (0644 under umask 022), like any other tool.
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
import zipfile
from contextlib import contextmanager

import numpy as np

from mrq.errors import InputDataError, MrqError

# the interrupt handling (importable before numpy); re-exported for the writers and callers here
from mrq.interrupts import critical, discardable, forget, install_sigterm

STDIO = "-"
TMP_PREFIX = ".mrq-tmp-"
# Temporaries are named after the process that owns them so a later run can tell a stranded one
# (its process is gone) from one another mrq is still writing.
_TMP_RE = re.compile(r"^\.mrq-tmp-(\d+)-[0-9a-f]+")
# Temporaries of mrq 0.1 before that naming (tempfile.mkstemp(prefix=".mrq-"): 8 random
# characters of [a-z0-9_], the target's extension): no owner to ask, so they are taken once
# nothing has written to them for OLD_TMP_AGE_S. A digit or underscore is required so that a
# user's own ".mrq-settings.json" is never taken for one.
_OLD_TMP_RE = re.compile(r"^\.mrq-(?=[a-z_]*[0-9_])[a-z0-9_]{8}\.(npz|npy|onnx|json|html|tflite|txt|csv)$")
OLD_TMP_AGE_S = 3600.0


# Declared array sizes above this are refused before anything is allocated: larger than the
# memory of the machines mrq runs on, so a header that claims more is corrupt or hostile.
MAX_ARRAY_BYTES = 64 << 30
# deflate cannot compress better than about 1032:1; a zip directory that claims more is corrupt
_MAX_DEFLATE_RATIO = 1100


class FileProblem(InputDataError):
    """A path that is not a readable regular file of a sane size. ``problem`` is the reason
    without the path, for callers that format errors their own way (profiles)."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


_KIND = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "is a FIFO (named pipe)"),
         (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"),
         (stat.S_ISSOCK, "is a socket"))


def _kind_problem(mode: int) -> str:
    for test, text in _KIND:
        if test(mode):
            return f"{text}, not a regular file"
    return "is not a regular file"


def check_regular_file(path: str, max_bytes: int | None = None, what: str = "file") -> int:
    """The size of ``path`` if it is a regular file (after symlinks) of at most ``max_bytes``,
    else :class:`FileProblem`. Only ``stat`` is used: a FIFO or device is never opened (opening
    a FIFO blocks until a writer comes, reading ``/dev/zero`` never ends)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileProblem(path, "no such file") from None
    except OSError as exc:
        reason = "too many levels of symbolic links" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise FileProblem(path, f"cannot read: {reason}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(path, _kind_problem(st.st_mode))
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileProblem(path, f"{st.st_size} bytes, more than the {max_bytes} a {what} can be "
                                f"(is this the right file?)")
    return st.st_size


def read_regular_file(path: str, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`check_regular_file`).
    Opened non-blocking and checked again on the descriptor, so a path swapped for a FIFO
    between the check and the open cannot block the read; at most ``max_bytes + 1`` bytes are
    ever read, whatever the file grows to meanwhile."""
    check_regular_file(path, max_bytes, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileProblem(path, f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileProblem(path, _kind_problem(mode))
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise FileProblem(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise FileProblem(path, f"more than the {max_bytes} bytes a {what} can be")
    return data


def read_npy_header(stream, where: str) -> tuple:
    """(dtype, shape, fortran_order, header length) of the .npy header at the current position
    of ``stream`` (left just after it), checked: a plain numeric dtype, no negative dimension."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as exc:
        raise InputDataError(f"{where}: not a readable .npy array ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputDataError(f"{where}: dtype {dtype} is not a plain numeric type (object, string "
                             f"and structured arrays are refused)")
    if any(int(d) < 0 for d in shape):
        raise InputDataError(f"{where}: negative dimension in shape {tuple(shape)}")
    return np.dtype(dtype), tuple(int(d) for d in shape), bool(fortran), stream.tell()


def declared_bytes(dtype, shape, where: str, cap_bytes: int) -> int:
    """The bytes an array header declares, refused above ``cap_bytes`` before anything is
    allocated."""
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d   # Python ints: a product of huge dimensions does not wrap
    if nbytes > cap_bytes:
        raise InputDataError(f"{where}: the header declares {nbytes} bytes (shape {shape}), more "
                             f"than the {cap_bytes}-byte cap")
    return nbytes


def check_npy_file(path: str, cap_bytes: int = MAX_ARRAY_BYTES) -> tuple:
    """(dtype, shape) of an .npy file whose header agrees with the bytes the file holds and
    declares at most ``cap_bytes``; checked before anything is allocated."""
    size = check_regular_file(path)
    try:
        with open(path, "rb") as f:
            dtype, shape, _, header_len = read_npy_header(f, path)
    except OSError as exc:
        raise InputDataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    nbytes = declared_bytes(dtype, shape, path, cap_bytes)
    if header_len + nbytes != size:
        raise InputDataError(f"{path}: the header declares {nbytes} bytes of {dtype}{list(shape)}, "
                             f"the file holds {size - header_len}")
    return dtype, shape


def check_npz_members(path: str, cap_bytes: int = MAX_ARRAY_BYTES) -> dict:
    """name -> (dtype, shape) of every member of an .npz, each checked before any array is
    loaded: a regular file, a zip directory whose sizes are possible (deflate ratio), an .npy
    header of a plain numeric dtype whose declared size agrees with the member's size and,
    summed over the members, is at most ``cap_bytes``."""
    file_size = check_regular_file(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputDataError(f"{path}: not a readable .npz file ({exc})") from None
    members, total = {}, 0
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename.removesuffix(".npy")
            where = f"{path}: member {name!r}"
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InputDataError(f"{where}: compression method {info.compress_type} is not "
                                     f"supported (np.savez and np.savez_compressed write 0 or 8)")
            limit = info.compress_size * (_MAX_DEFLATE_RATIO if info.compress_type else 1) + 1024
            if info.file_size > limit or info.compress_size > file_size:
                raise InputDataError(f"{where}: the archive directory declares {info.file_size} bytes "
                                     f"from {info.compress_size} stored (corrupt archive)")
            try:
                with zf.open(info) as stream:
                    dtype, shape, _, header_len = read_npy_header(stream, where)
            except InputDataError:
                raise
            except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError) as exc:
                raise InputDataError(f"{where}: not readable ({exc})") from None
            nbytes = declared_bytes(dtype, shape, where, cap_bytes)
            if header_len + nbytes != info.file_size:
                raise InputDataError(f"{where}: the header declares {nbytes} bytes of "
                                     f"{dtype}{list(shape)}, the archive holds "
                                     f"{info.file_size - header_len}")
            total += nbytes
            if total > cap_bytes:
                raise InputDataError(f"{path}: the members declare more than the {cap_bytes}-byte cap")
            members[name] = (dtype, shape)
    return members


def load_npz(path: str, cap_bytes: int = MAX_ARRAY_BYTES) -> dict:
    """Arrays from an .npz file, without pickles, every declared size checked first
    (:func:`check_npz_members`)."""
    check_regular_file(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise InputDataError(f"{path}: an .npy file (a single array); expected an .npz archive of "
                             f"arrays named after the model's inputs (np.savez(path, name=array))")
    check_npz_members(path, cap_bytes)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputDataError(f"{path}: expected an .npz archive of named arrays, got a single array")
            return {k: data[k] for k in data.files}
    except InputDataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputDataError(f"{path}: not a readable .npz file ({exc})") from None


# --------------------------------------------------------------------------------------------
# The guard: outputs that cannot destroy inputs
# --------------------------------------------------------------------------------------------


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _is_special(path: str) -> bool:
    """A character device or FIFO (after symlinks): written in place, never replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_writable(path: str, directory: bool = False) -> None:
    """Fail before any work if ``path`` cannot be written as an output: one line naming it.

    ``directory``: the output is a folder (``mrq golden``), else a file."""
    if path == STDIO and not directory:
        return
    if not path:
        raise MrqError("an output path is empty")
    if not directory and path.endswith(os.sep):
        raise MrqError(f"{path}: an output file name cannot end in '{os.sep}'")
    real = _real(path)
    if not directory and _is_special(real):
        if not os.access(real, os.W_OK):
            raise MrqError(f"{path}: not writable")
        return
    name = os.path.basename(real)
    parent = os.path.dirname(real) or os.sep
    try:
        name_max = os.pathconf(parent if os.path.isdir(parent) else os.sep, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(name)) > name_max:
        raise MrqError(f"{path}: file name too long ({len(os.fsencode(name))} bytes; this file system "
                       f"allows {name_max})")
    if os.path.exists(real):
        mode = os.stat(real).st_mode
        if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
            raise MrqError(f"{path}: is a {'block device' if stat.S_ISBLK(mode) else 'socket'}; "
                           f"refusing to write to it")
        # the atomic replace needs only the folder's permission: without this a file the user
        # made read-only would be replaced anyway
        if stat.S_ISREG(mode) and not os.access(real, os.W_OK):
            raise MrqError(f"{path}: the file is read-only")
        if directory and not os.path.isdir(real):
            raise MrqError(f"{path}: exists and is not a directory")
        if not directory and os.path.isdir(real):
            raise MrqError(f"{path}: is a directory; give a file name")
    if not os.path.isdir(parent):
        raise MrqError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MrqError(f"{path}: output directory {parent} is not writable")


def guard_paths(inputs, outputs=(), dir_outputs=(), text_outputs=()) -> None:
    """Refuse, before any work, outputs that would destroy an input or each other.

    ``inputs``: every path the command reads (files or folders; ``None`` entries and profile
    names that are not paths are skipped). ``outputs``: files the command writes;
    ``dir_outputs``: folders it writes (replaced as a whole); ``text_outputs``: text or JSON files,
    which may also be ``-`` (stdout). All are resolved through symlinks,
    so a link to the model is the model. Refused: an output that is an input, a folder output that
    contains an input, an output inside an input folder, two outputs that are the same file or one
    inside the other. Then each output gets :func:`check_writable`. Also installs the SIGTERM
    handler so a ``kill`` cleans up like Ctrl-C."""
    install_sigterm()
    for p in inputs:
        _refuse_special_input(p)
    for p in outputs:
        if p == STDIO:
            raise MrqError("'-' (stdout) is only for JSON and text outputs; give a file name")
    outputs = list(outputs) + list(text_outputs)
    ins = [(p, _real(p)) for p in inputs if p and p != STDIO and os.path.exists(p)]
    outs = [(p, _real(p), False) for p in outputs if p] + [(p, _real(p), True) for p in dir_outputs if p]
    for path, real, is_dir in outs:
        if path == STDIO:
            continue
        special = not is_dir and _is_special(real)
        for ipath, ireal in ins:
            if special:
                continue  # /dev/null as --out and as --inputs harms nothing: nothing is replaced
            if real == ireal or _same_file(real, ireal):
                raise MrqError(f"{path}: refusing to write over the input {ipath}; choose another output path")
            if is_dir and _inside(ireal, real):
                raise MrqError(f"{path}: refusing to replace a folder that holds the input {ipath}")
            if _inside(real, ireal) and os.path.isdir(ireal):
                raise MrqError(f"{path}: refusing to write inside the input folder {ipath}")
    # two writes to /dev/null (or one FIFO) replace nothing, so they do not collide
    real_outs = [(p, r, d) for p, r, d in outs if p != STDIO and (d or not _is_special(r))]
    for i, (path, real, is_dir) in enumerate(real_outs):
        for other, oreal, odir in real_outs[i + 1:]:
            if real == oreal or (is_dir and _inside(oreal, real)) or (odir and _inside(real, oreal)):
                raise MrqError(f"{other}: the same output path as {path}; give each output its own path")
    for path, _, is_dir in outs:
        check_writable(path, directory=is_dir)


def _refuse_special_input(path) -> None:
    """An input that is a FIFO, device or socket is refused by ``stat`` before anything opens
    it: opening a FIFO blocks until a writer comes, ``/dev/zero`` never ends."""
    if not path or path == STDIO:
        return
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return   # missing or unreadable: the command's own reader says which
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise FileProblem(path, _kind_problem(mode))


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Signals and stranded temporaries
# --------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_swept: set = set()


def sweep_stale(directory: str) -> None:
    """Remove ``.mrq-tmp-<pid>-*`` temporaries in ``directory`` whose process is gone (a run
    killed by SIGKILL or a power cut), and old-style ``.mrq-XXXXXXXX.ext`` files untouched for an
    hour. Temporaries of live processes are left alone."""
    if directory in _swept:
        return
    _swept.add(directory)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        full = os.path.join(directory, name)
        m = _TMP_RE.match(name)
        if m is None:
            if not _OLD_TMP_RE.match(name) or not _older_than(full, now - OLD_TMP_AGE_S):
                continue
        elif int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)
        except OSError:
            pass


def _older_than(path: str, when: float) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime < when


def tmp_name(directory: str, suffix: str = "") -> str:
    return os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class OutputWriteError(MrqError, OSError):
    """Writing an output failed (disk full, file-size limit, ...). An ``MrqError`` so the CLI
    prints one line and exits 2; also an ``OSError`` so library callers that caught the
    original error keep working."""


def write_error(path: str, exc: OSError) -> MrqError:
    reason = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "file too large (file-size "
              "limit)", errno.EDQUOT: "disk quota exceeded"}.get(exc.errno, exc.strerror or str(exc))
    err = OutputWriteError(f"{path}: cannot write: {reason}")
    err.errno = exc.errno
    return err


@contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a path to write; on success the content is at ``path``.

    For a regular file or a new name: a temporary next to the (symlink-resolved) target that
    replaces it in one step, so a reader never sees half a file and a failure leaves the old one.
    For a device or FIFO: ``path`` itself (it is written in place, never replaced)."""
    check_writable(path)
    target = _real(path)
    if _is_special(target):
        yield target
        return
    directory = os.path.dirname(target)
    sweep_stale(directory)
    tmp = discardable(tmp_name(directory, suffix or os.path.splitext(target)[1]))
    try:
        yield tmp
        with critical():
            if os.path.exists(tmp):
                os.chmod(tmp, file_mode())
            os.replace(tmp, target)
            forget(tmp)
    except BaseException as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        forget(tmp)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise


def save_npz(path: str, arrays: dict) -> None:
    try:
        with atomic_path(path, ".npz") as tmp:
            with open(tmp, "wb") as f:
                if _is_special(tmp):
                    # zip needs to seek back to write its directory: a device or FIFO cannot
                    buf = io.BytesIO()
                    np.savez(buf, **arrays)
                    f.write(buf.getbuffer())
                else:
                    np.savez(f, **arrays)
    except OSError as exc:
        raise write_error(path, exc) from None


class _SpilledArrays:
    """Arrays that grow along axis 0 batch by batch, each spilled to its own raw file, so a
    data set's outputs never sit in memory at once."""

    def __init__(self, directory: str):
        self.directory = directory
        self.layouts: dict = {}   # name -> [dtype, per-sample shape, rows, spill path]

    def append(self, arrays: dict) -> None:
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            entry = self.layouts.get(name)
            if entry is None:
                spill = os.path.join(self.directory, f"{len(self.layouts)}.raw")
                entry = self.layouts[name] = [value.dtype, value.shape[1:], 0, spill]
            if value.dtype != entry[0] or value.shape[1:] != entry[1]:
                raise ValueError(f"{name}: batch of {value.dtype}{list(value.shape)} after "
                                 f"{entry[0]}{list(entry[1])} rows")
            with open(entry[3], "ab") as f:
                f.write(value.data)
            entry[2] += value.shape[0]

    def write_npz(self, f) -> None:
        """The arrays as ``np.savez`` would write them (uncompressed, ``NAME.npy`` members, in
        the order first appended), copied from the spill files in bounded chunks."""
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, (dtype, row_shape, rows, spill) in self.layouts.items():
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": (rows,) + tuple(row_shape)}
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    try:
                        np.lib.format.write_array_header_1_0(member, header)
                    except ValueError:
                        np.lib.format.write_array_header_2_0(member, header)
                    if os.path.exists(spill):
                        with open(spill, "rb") as src:
                            shutil.copyfileobj(src, member, 1 << 22)


@contextmanager
def stream_npz(path: str):
    """An .npz written batch by batch: yields a writer whose ``append({name: batch})`` adds rows
    along axis 0 (spilled to disk next to the output); on success the file appears at ``path``
    atomically, the same bytes ``np.savez`` would write for the concatenated arrays."""
    import tempfile
    try:
        with atomic_path(path, ".npz") as tmp:
            directory = tempfile.gettempdir() if _is_special(tmp) else os.path.dirname(tmp)
            spill_dir = discardable(tmp_name(directory, ".spill"))
            os.mkdir(spill_dir, 0o700)
            try:
                writer = _SpilledArrays(spill_dir)
                yield writer
                with open(tmp, "wb") as f:
                    if _is_special(tmp):
                        buf = io.BytesIO()  # zip seeks back to write its directory
                        writer.write_npz(buf)
                        f.write(buf.getbuffer())
                    else:
                        writer.write_npz(f)
            finally:
                shutil.rmtree(spill_dir, ignore_errors=True)
                forget(spill_dir)
    except OSError as exc:
        raise write_error(path, exc) from None


def save_text(path: str, text: str) -> None:
    if path == STDIO:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
    except OSError as exc:
        raise write_error(path, exc) from None


def save_json(path: str, obj) -> None:
    save_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        f = float(o)
        return f if np.isfinite(f) else str(f)
    raise TypeError(type(o).__name__)
