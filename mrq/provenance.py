"""Provenance of a result: which mrq, which command, which model and which profiles, when.

Every report, results table and golden manifest carries :func:`provenance` so a number can be
traced back to what produced it. The profile hash is of the profile's *content* (the resolved
profile, every default filled in, as ``mrq profiles show`` prints it, serialized as canonical
JSON), not of its file: the same hardware described in two files with different comments or key
order hashes alike, and editing one field changes the hash. The model hash is of the model
file's bytes.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterable


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_sha256(model) -> str | None:
    """sha256 of the model file's bytes; None for an in-memory graph (no file to hash)."""
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(model):
        return sha256_file(os.fspath(model))
    return None


def profile_sha256(profile) -> str:
    """sha256 of the resolved profile's content (canonical JSON of ``HwProfile.to_dict()``)."""
    from mrq.pipeline import resolve_profile
    content = resolve_profile(profile).to_dict()
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def command_line(argv: Iterable[str] | None = None) -> str:
    """The command as a shell line (``mrq compare ...``); ``argv`` without the program name,
    default this process's arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["mrq", *map(str, args)])


def provenance(model=None, profiles=None, argv: Iterable[str] | None = None) -> dict:
    """The provenance block: ``mrq_version``, ``command``, ``date`` (UTC, ISO 8601), ``model``
    and ``model_sha256``, and ``profiles``: ``[{"name", "source", "sha256"}]``.

    ``profiles``: one profile or a list (names, paths or loaded profiles)."""
    from mrq import __version__
    from mrq.pipeline import resolve_profile
    if profiles is None:
        profs = []
    elif isinstance(profiles, (str, os.PathLike)) or not isinstance(profiles, Iterable):
        profs = [profiles]
    else:
        profs = list(profiles)
    rows = []
    for p in profs:
        prof = resolve_profile(p)
        rows.append({"name": prof.name, "source": str(getattr(prof, "source", "") or ""),
                     "sha256": profile_sha256(prof)})
    return {
        "mrq_version": __version__,
        "command": command_line(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": (os.fspath(model) if isinstance(model, (str, os.PathLike))
                  else getattr(model, "name", None)),
        "model_sha256": model_sha256(model),
        "profiles": rows,
    }


def format_provenance(prov: dict) -> str:
    """One line for text reports."""
    profs = ", ".join(f"{p['name']} {p['sha256'][:12]}" for p in prov.get("profiles", []))
    model_hash = (prov.get("model_sha256") or "-")[:12]
    return (f"mrq {prov['mrq_version']}, {prov['date']}, model {prov['model']} {model_hash}"
            + (f", profiles {profs}" if profs else "") + f"; command: {prov['command']}")
