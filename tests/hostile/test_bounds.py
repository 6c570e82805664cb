"""The bounds the hostile corpus relies on, at their edges: the YAML loader's depth, alias
expansion and integer length, and the declared-size checks of .npy/.npz files."""
from __future__ import annotations

import io
import pathlib
import zipfile

import numpy as np
import pytest
import yaml

from mrq import safe_yaml
from mrq.errors import InputDataError
from mrq.fileio import (
    FileProblem,
    check_npy_file,
    check_npz_members,
    check_regular_file,
    load_npz,
)

PROFILES = pathlib.Path(__file__).resolve().parents[2] / "hw_profiles"


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.stem)
def test_safe_yaml_loads_the_shipped_profiles_as_safe_load_does(path):
    text = path.read_text()
    root, data = safe_yaml.load_with_node(text)
    assert data == yaml.safe_load(text)
    assert root.start_mark.line == yaml.compose(text, Loader=yaml.SafeLoader).start_mark.line


def test_safe_yaml_keeps_aliases_and_merge_keys_within_the_bound():
    text = "base: &b {x: 1, y: [1, 2]}\nother:\n  <<: *b\n  z: 3\nref: *b\n"
    assert safe_yaml.safe_load(text) == yaml.safe_load(text)


@pytest.mark.parametrize("depth", [safe_yaml.MAX_DEPTH, safe_yaml.MAX_DEPTH + 1])
def test_depth_bound_is_exact(depth):
    text = "a: " + "[" * (depth - 1) + "1" + "]" * (depth - 1) + "\n"   # the mapping is level 1
    if depth <= safe_yaml.MAX_DEPTH:
        assert safe_yaml.safe_load(text) == yaml.safe_load(text)
    else:
        with pytest.raises(safe_yaml.YamlLimitError, match="nested more than"):
            safe_yaml.safe_load(text)


@pytest.mark.parametrize("digits", [safe_yaml.MAX_INT_DIGITS, safe_yaml.MAX_INT_DIGITS + 1])
def test_integer_length_bound_is_exact(digits):
    text = f"a: {'7' * digits}\nb: '{'7' * 5000}'\n"   # a quoted string of digits is not an int
    if digits <= safe_yaml.MAX_INT_DIGITS:
        assert safe_yaml.safe_load(text)["a"] == int("7" * digits)
    else:
        with pytest.raises(safe_yaml.YamlLimitError, match=f"integer of {digits} digits"):
            safe_yaml.safe_load(text)


@pytest.mark.parametrize("copies", [9, 11])
def test_alias_expansion_counts_every_copy(copies):
    # a list of `copies` aliases of a list of 1000 scalars: 1 + copies * 1001 (+ the first) nodes
    text = "a: &a [" + ", ".join(["0"] * 1000) + "]\nb: [" + ", ".join(["*a"] * copies) + "]\n"
    limit = 12_000
    if copies == 9:
        assert safe_yaml.safe_load(text, max_nodes=limit) == yaml.safe_load(text)
    else:
        with pytest.raises(safe_yaml.YamlLimitError, match="expands"):
            safe_yaml.safe_load(text, max_nodes=limit)


def test_self_referencing_alias_is_refused():
    with pytest.raises((safe_yaml.YamlLimitError, yaml.YAMLError)):
        safe_yaml.safe_load("a: &a [1, *a]\n")


def _npz(arrays, compressed=False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("compressed", [False, True])
def test_valid_npz_passes_and_loads(tmp_path, compressed):
    arrays = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "n": np.zeros((0, 5), np.int8)}
    p = tmp_path / "a.npz"
    p.write_bytes(_npz(arrays, compressed))
    assert check_npz_members(str(p)) == {k: (v.dtype, v.shape) for k, v in arrays.items()}
    out = load_npz(str(p))
    assert set(out) == set(arrays) and all(np.array_equal(out[k], arrays[k]) for k in arrays)


def test_npz_cap_is_exact(tmp_path):
    p = tmp_path / "a.npz"
    p.write_bytes(_npz({"x": np.zeros(1000, np.float32)}))
    check_npz_members(str(p), cap_bytes=4000)
    with pytest.raises(InputDataError, match="more than the 3999-byte cap"):
        check_npz_members(str(p), cap_bytes=3999)


def test_npy_header_must_match_the_file(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((3, 4), np.int16))
    assert check_npy_file(str(p)) == (np.dtype(np.int16), (3, 4))
    p.write_bytes(p.read_bytes() + b"\0\0")
    with pytest.raises(InputDataError, match="declares 24 bytes"):
        check_npy_file(str(p))


def test_deflate_member_claiming_more_than_deflate_can_hold(tmp_path):
    p = tmp_path / "a.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npz({"x": np.zeros(4)}))
    data = bytearray(p.read_bytes())
    at = data.find(b"PK\x01\x02")
    data[at + 24:at + 28] = (10**9).to_bytes(4, "little")   # the central directory's size
    p.write_bytes(bytes(data))
    with pytest.raises(InputDataError, match="corrupt archive"):
        check_npz_members(str(p))


def test_regular_file_check_never_opens(tmp_path):
    fifo = tmp_path / "f"
    import os
    os.mkfifo(fifo)
    with pytest.raises(FileProblem, match="FIFO"):
        check_regular_file(str(fifo))   # would block forever if it opened the FIFO
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    assert check_regular_file(str(big), max_bytes=11) == 11
    with pytest.raises(FileProblem, match="11 bytes, more than the 10"):
        check_regular_file(str(big), max_bytes=10)
