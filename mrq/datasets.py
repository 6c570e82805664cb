"""Input data sets read lazily, a batch at a time, so memory follows the batch size and not the
size of the data set.

:func:`open_inputs` accepts an ``.npz`` of named arrays, a bare ``.npy`` (one array, bound to a
model's single input), or a directory of ``.npz``/``.npy`` shards read in file-name order. Every
member is validated before any work (declared shape x item size against the bytes really stored,
a cap on the declared size, the same names, per-sample shapes and dtypes in every shard); rows are
then read on demand:

* a ``.npy`` file, and an ``.npz`` member stored uncompressed (``np.savez``), are read at the
  batch's byte offset (a Fortran-ordered one through a memory map made for that read);
* a deflated member (``np.savez_compressed``) is decompressed as a stream, row range by row
  range, never as a whole.

``allow_pickle`` is never set: object arrays are refused.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mrq.errors import InputDataError
from mrq.fileio import declared_bytes, read_npy_header

# Declared sizes above this are refused before anything is allocated or mapped: no input set mrq
# is meant for comes near it, and a corrupt or hostile header could claim petabytes.
MAX_MEMBER_BYTES = 1 << 40
# deflate cannot compress better than about 1032:1; a directory that claims more is corrupt
_MAX_DEFLATE_RATIO = 1100


@dataclass(frozen=True)
class _Layout:
    """Where a member's array lives and how it is shaped."""

    dtype: np.dtype
    shape: tuple
    fortran: bool

    @property
    def row_shape(self) -> tuple:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _parse_header(f, where: str) -> _Layout:
    """The .npy header at the current position of ``f`` (left just after it), checked
    (mrq.fileio.read_npy_header) and refused as a scalar or above MAX_MEMBER_BYTES."""
    dtype, shape, fortran, _ = read_npy_header(f, where)
    if len(shape) == 0:
        raise InputDataError(f"{where}: a scalar; the leading dimension is the batch")
    declared_bytes(dtype, shape, where, MAX_MEMBER_BYTES)
    return _Layout(dtype, shape, fortran)


class _Member:
    """One array (a .npy file or an .npz member): reads row ranges."""

    def __init__(self, where: str, layout: _Layout):
        self.where = where
        self.layout = layout

    @property
    def rows(self) -> int:
        return self.layout.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _StoredMember(_Member):
    """Bytes stored as they are (a .npy file, an uncompressed zip member): each batch is read
    from its offset. No memory map is kept: the pages of a map count in the process's resident
    memory until it is unmapped, so one kept per shard grew with the data set."""

    def __init__(self, where: str, layout: _Layout, path: str, offset: int):
        super().__init__(where, layout)
        self.path, self.offset = path, offset

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = stop - start
        shape = (rows,) + self.layout.row_shape
        if rows <= 0 or self.layout.row_bytes == 0:
            return np.empty(shape, self.layout.dtype)
        try:
            if not self.layout.fortran:
                # C order: the rows are one contiguous byte range
                out = np.fromfile(self.path, dtype=self.layout.dtype,
                                  count=rows * (self.layout.row_bytes // self.layout.dtype.itemsize),
                                  offset=self.offset + start * self.layout.row_bytes)
                return out.reshape(shape)
            # Fortran order scatters a row over the file: map it for this read only
            mapped = np.memmap(self.path, dtype=self.layout.dtype, mode="r", offset=self.offset,
                               shape=self.layout.shape, order="F")
            out = np.array(mapped[start:stop], order="C")
            del mapped
            return out
        except (OSError, ValueError) as exc:
            raise InputDataError(f"{self.where}: not readable ({exc})") from None


class _DeflatedMember(_Member):
    """A compressed zip member: decompressed as a stream; rows are read in order, and going
    back restarts the stream (batches are read forward, so that is rare)."""

    def __init__(self, where: str, layout: _Layout, path: str, name: str):
        super().__init__(where, layout)
        self.path, self.name = path, name
        self._zip = None
        self._stream = None
        self._row = 0

    def _restart(self) -> None:
        self.close()
        self._zip = zipfile.ZipFile(self.path)
        self._stream = self._zip.open(self.name)
        _parse_header(self._stream, self.where)
        self._row = 0

    def _skip(self, rows: int) -> None:
        left = rows * self.layout.row_bytes
        while left:
            got = self._stream.read(min(left, 1 << 24))
            if not got:
                raise InputDataError(f"{self.where}: the member ends early (truncated archive)")
            left -= len(got)
        self._row += rows

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.layout.fortran:
            raise InputDataError(f"{self.where}: a compressed array stored in Fortran order "
                                 f"cannot be read in batches; save it C-ordered "
                                 f"(np.ascontiguousarray) or uncompressed (np.savez)")
        try:
            if self._stream is None or start < self._row:
                self._restart()
            self._skip(start - self._row)
            want = (stop - start) * self.layout.row_bytes
            data = self._stream.read(want)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            # a CRC error only shows once the stream reaches the member's end
            raise InputDataError(f"{self.where}: not readable ({exc})") from None
        if len(data) != want:
            raise InputDataError(f"{self.where}: the member ends early (truncated archive)")
        self._row = stop
        out = np.frombuffer(bytearray(data), dtype=self.layout.dtype)
        return out.reshape((stop - start,) + self.layout.row_shape)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()
        self._stream = self._zip = None


def _local_data_offset(f, info: zipfile.ZipInfo, where: str) -> int:
    """File offset of a zip member's data: after its local header, whose name and extra field
    may differ in length from the central directory's."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise InputDataError(f"{where}: bad local zip header (corrupt archive)")
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def _npz_members(path: str) -> dict:
    """name -> _Member of every array of an .npz, each declared size checked against the bytes
    really stored."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputDataError(f"{path}: not a readable .npz file ({exc})") from None
    file_size = os.path.getsize(path)
    members = {}
    with zf, open(path, "rb") as raw:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            where = f"{path}: member {name!r}"
            if info.is_dir():
                continue
            if name in members:
                raise InputDataError(f"{where}: appears twice in the archive")
            if info.flag_bits & 0x1:
                raise InputDataError(f"{where}: encrypted members are not supported")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise InputDataError(f"{where}: compression method {info.compress_type} is not "
                                     f"supported (np.savez or np.savez_compressed write 0 or 8)")
            if info.compress_type == zipfile.ZIP_DEFLATED and \
                    info.file_size > _MAX_DEFLATE_RATIO * max(info.compress_size, 1) + 1024:
                raise InputDataError(f"{where}: declares {info.file_size} bytes from "
                                     f"{info.compress_size} compressed (corrupt archive)")
            try:
                with zf.open(info) as stream:
                    layout = _parse_header(stream, where)
                    header_len = stream.tell()
            except InputDataError:
                raise
            except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
                raise InputDataError(f"{where}: not readable ({exc})") from None
            if header_len + layout.nbytes != info.file_size:
                raise InputDataError(f"{where}: the header declares {layout.nbytes} bytes of "
                                     f"{layout.dtype}{list(layout.shape)}, the archive holds "
                                     f"{info.file_size - header_len}")
            if info.compress_type == zipfile.ZIP_STORED:
                offset = _local_data_offset(raw, info, where) + header_len
                if offset + layout.nbytes > file_size:
                    raise InputDataError(f"{where}: the member runs past the end of the file "
                                         f"(truncated archive)")
                members[name] = _StoredMember(where, layout, path, offset)
            else:
                members[name] = _DeflatedMember(where, layout, path, info.filename)
    return members


def _npy_member(path: str) -> _Member:
    try:
        with open(path, "rb") as f:
            layout = _parse_header(f, path)
            offset = f.tell()
    except OSError as exc:
        raise InputDataError(f"{path}: not readable ({exc.strerror or exc})") from None
    if offset + layout.nbytes != os.path.getsize(path):
        raise InputDataError(f"{path}: the header declares {layout.nbytes} bytes of "
                             f"{layout.dtype}{list(layout.shape)}, the file holds "
                             f"{os.path.getsize(path) - offset}")
    return _StoredMember(path, layout, path, offset)


def _is_npy(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


class _Shard:
    """One file: its members by input name (``None`` for a bare .npy) and its sample count."""

    def __init__(self, path: str):
        self.path = path
        try:
            npy = _is_npy(path)
        except OSError as exc:
            raise InputDataError(f"{path}: not readable ({exc.strerror or exc})") from None
        self.members = {None: _npy_member(path)} if npy else _npz_members(path)
        if not self.members:
            raise InputDataError(f"{path}: the archive holds no arrays")
        rows = {name: m.rows for name, m in self.members.items()}
        if len(set(rows.values())) > 1:
            raise InputDataError(f"{path}: every array needs the same leading (batch) dimension; "
                                 f"got {', '.join(f'{k} {v}' for k, v in rows.items())}")
        self.rows = next(iter(rows.values()))

    def signature(self) -> dict:
        return {name: (m.layout.row_shape, m.layout.dtype) for name, m in self.members.items()}

    def close(self) -> None:
        for m in self.members.values():
            m.close()


def _describe(sig: dict) -> str:
    return ", ".join(f"{'(the array)' if k is None else repr(k)} {dt}{list(shape)}"
                     for k, (shape, dt) in sig.items())


class InputSource:
    """A data set validated up front and read lazily, a batch at a time.

    ``names``: the input names (``(None,)`` for a bare .npy: see :meth:`bound_to`);
    ``num_samples``: the samples over all shards; ``shapes``/``dtypes``: per input, the shape
    of one sample and the dtype."""

    def __init__(self, path: str, shards: Sequence[_Shard]):
        self.path = path
        self._shards = list(shards)
        self._rename: dict = {}
        first = self._shards[0]
        self._names = tuple(first.members)
        self.num_samples = sum(s.rows for s in self._shards)
        self.shapes = {k: m.layout.row_shape for k, m in first.members.items()}
        self.dtypes = {k: m.layout.dtype for k, m in first.members.items()}

    @property
    def names(self) -> tuple:
        return tuple(self._rename.get(n, n) for n in self._names)

    @property
    def shards(self) -> list:
        return [s.path for s in self._shards]

    def bound_to(self, input_names: Sequence[str]) -> InputSource:
        """This source with a bare .npy's array named after the model's single input (it has no
        name of its own). A no-op for named arrays."""
        if self._names != (None,):
            return self
        if len(input_names) != 1:
            raise InputDataError(f"{self.path}: a bare .npy array has no input name, and the model "
                                 f"has {len(input_names)} inputs ({', '.join(map(repr, input_names))}); "
                                 f"pass an .npz keyed by input name")
        bound = InputSource.__new__(InputSource)
        bound.__dict__.update(self.__dict__)
        bound._rename = {None: input_names[0]}
        bound.shapes = {input_names[0]: self.shapes[None]}
        bound.dtypes = {input_names[0]: self.dtypes[None]}
        return bound

    def read(self, start: int, stop: int) -> dict:
        """Samples ``start:stop`` of every input (across shard boundaries)."""
        start, stop = max(0, start), min(stop, self.num_samples)
        parts: dict = {n: [] for n in self._names}
        base = 0
        for shard in self._shards:
            lo, hi = max(start, base), min(stop, base + shard.rows)
            if lo < hi:
                for name, member in shard.members.items():
                    parts[name].append(member.read(lo - base, hi - base))
            base += shard.rows
            if base >= stop:
                break
        out = {}
        for name, arrays in parts.items():
            key = self._rename.get(name, name)
            if not arrays:
                out[key] = np.empty((0,) + self.shapes[key], self.dtypes[key])
            else:
                out[key] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        return out

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """Consecutive batches of at most ``batch_size`` samples of ``start:stop``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        for lo in range(start, stop, batch_size):
            yield self.read(lo, min(lo + batch_size, stop))

    def read_all(self, max_bytes: int = 4 << 30) -> dict:
        """Every sample in memory, for the work that needs the whole set at once; refused (one
        line) above ``max_bytes``."""
        need = sum(int(np.prod(shape, dtype=np.int64)) * self.dtypes[k].itemsize
                   for k, shape in self.shapes.items()) * self.num_samples
        if need > max_bytes:
            raise InputDataError(f"{self.path}: {need} bytes of inputs, more than the {max_bytes} "
                                 f"this step reads into memory at once; pass fewer samples")
        return self.read(0, self.num_samples)

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def shard_paths(directory: str) -> list:
    """The .npz/.npy files of a shard directory, in file-name order (hidden files skipped)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise InputDataError(f"{directory}: not readable ({exc.strerror or exc})") from None
    paths = [os.path.join(directory, n) for n in names
             if not n.startswith(".") and n.lower().endswith((".npz", ".npy"))
             and os.path.isfile(os.path.join(directory, n))]
    if not paths:
        raise InputDataError(f"{directory}: a directory of inputs needs .npz or .npy shards, and "
                             f"holds none")
    return paths


def open_inputs(path: str) -> InputSource:
    """An :class:`InputSource` for an .npz, an .npy, or a directory of .npz/.npy shards; every
    shard must hold the same names, per-sample shapes and dtypes (checked before any work)."""
    if not os.path.exists(path):
        raise InputDataError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        shards = []
        try:
            for p in shard_paths(path):
                shard = _Shard(p)
                if shards and shard.signature() != shards[0].signature():
                    raise InputDataError(
                        f"{p}: holds {_describe(shard.signature())}, but the first shard "
                        f"{os.path.basename(shards[0].path)} holds {_describe(shards[0].signature())}; "
                        f"every shard needs the same names, per-sample shapes and dtypes")
                shards.append(shard)
        except BaseException:
            for s in shards:
                s.close()
            raise
        return InputSource(path, shards)
    return InputSource(path, [_Shard(path)])


def open_labels(path: str, num_samples: int, max_samples: int = 1 << 27) -> np.ndarray:
    """Integer class labels, one per sample: an .npy, an .npz holding one array (or one named
    ``labels``), or a directory of such shards; shape ``(N,)`` or ``(N, 1)`` with ``N ==
    num_samples``."""
    src = open_inputs(path)
    with src:
        names = src.names
        if len(names) > 1:
            if "labels" not in names:
                raise InputDataError(f"{path}: holds {len(names)} arrays ({', '.join(map(repr, names))}); "
                                     f"labels need one array, or one named 'labels'")
            names = ("labels",)
        name = names[0]
        shape, dtype = src.shapes[name], src.dtypes[name]
        if shape not in ((), (1,)):
            raise InputDataError(f"{path}: labels need shape (N,) or (N, 1), got "
                                 f"(N, {', '.join(map(str, shape))})")
        if dtype.kind not in "iu":
            raise InputDataError(f"{path}: labels need an integer dtype, got {dtype}")
        if src.num_samples != num_samples:
            raise InputDataError(f"{path}: {src.num_samples} labels for {num_samples} input samples")
        if num_samples > max_samples:
            raise InputDataError(f"{path}: {num_samples} labels, more than the {max_samples} supported")
        return src.read(0, num_samples)[name].reshape(-1).astype(np.int64)



# Calibration fits grids and corrections to every calibration sample at once, and the passes
# keep every intermediate of each one: ~1.65 MB a sample on the 28x28 MobileNetV2 (peak RSS 0.69
# GB at 256 samples, 1.95 GB at 1024). A thousand samples carry the statistics; more cost memory.
DEFAULT_CALIB_LIMIT = 1024


@dataclass(frozen=True)
class Calibration:
    """The calibration samples read (``arrays``: input name -> array) and how many the file
    holds (``available``): ``arrays`` holds the first ``min(available, limit)``."""

    arrays: dict
    available: int

    @property
    def used(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0]) if self.arrays else 0

    def note(self, path: str) -> str | None:
        """A line saying the set was cut, or None when every sample is used."""
        if self.used >= self.available:
            return None
        return (f"{path}: calibrating on the first {self.used} of its {self.available} samples "
                f"(--calib-limit raises the limit)")


def read_calibration(path: str, input_names: Sequence[str], limit: int = DEFAULT_CALIB_LIMIT,
                     max_bytes: int = 2 << 30) -> Calibration:
    """The first ``limit`` samples of the calibration set at ``path`` (any :func:`open_inputs`
    format), read lazily: a 100k-sample shard directory costs the ``limit`` samples, not the
    set. Refused (one line) when those samples alone exceed ``max_bytes``."""
    if limit < 1:
        raise InputDataError(f"the calibration limit must be >= 1, got {limit}")
    with open_inputs(path) as source:
        source = source.bound_to(input_names)
        take = min(limit, source.num_samples)
        row_bytes = sum(int(np.prod(shape, dtype=np.int64)) * source.dtypes[k].itemsize
                        for k, shape in source.shapes.items())
        if row_bytes * take > max_bytes:
            raise InputDataError(f"{path}: {take} calibration samples take {row_bytes * take} bytes, "
                                 f"more than the {max_bytes} read into memory at once; lower the "
                                 f"calibration limit")
        return Calibration(source.read(0, take), source.num_samples)
