"""File input and output: safe loading and atomic writes (never a half-written output)."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from contextlib import contextmanager

import numpy as np

from mrq.errors import InputDataError, MrqError


def load_npz(path: str) -> dict:
    """Arrays from an .npz file, without pickles."""
    if not os.path.exists(path):
        raise InputDataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise InputDataError(f"{path}: expected an .npz archive of named arrays, got a single array")
            return {k: data[k] for k in data.files}
    except InputDataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputDataError(f"{path}: not a readable .npz file ({exc})") from None


def check_writable(path: str) -> None:
    """Fail before any work if the output cannot be written."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise MrqError(f"{path}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise MrqError(f"{path}: output directory {directory} is not writable")


@contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step."""
    check_writable(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mrq-", suffix=suffix or os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: str, arrays: dict) -> None:
    with atomic_path(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def save_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


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
