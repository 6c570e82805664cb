"""Fashion-MNIST loader for the Debian package ``dataset-fashion-mnist``.

Install the data once with::

    sudo apt-get install dataset-fashion-mnist

which puts the four original gzip'd IDX files (60k train / 10k test, 28x28 grey, 10 classes) in
``/usr/share/datasets/fashion-mnist``. Set ``FASHION_MNIST_DIR`` to read them from elsewhere.

Normalization used by every model in ``bench/models``: ``x = float32(pixel) / 255`` (range [0, 1],
no mean/std), NCHW ``[N, 1, 28, 28]``. The QDQ models quantize their input with scale 1/255 and
zero point 0, so the uint8 pixels are exactly the quantized input codes.

Command line (writes a subset as .npz)::

    python bench/fashion_mnist.py --split test --n 1000 --uint8 --out tests/data/fmnist_test_1000.npz
    python bench/fashion_mnist.py --split train --n 512 --out calib.npz   # float32, keyed 'input'
"""

from __future__ import annotations

import argparse
import gzip
import os
import struct

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTNotFound(FileNotFoundError):
    """The dataset files are missing; the message says how to install them."""


def data_dir() -> str:
    return os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR)


def _read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip'd) into a uint8 array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - offset != count:
        raise ValueError(f"{path}: expected {count} bytes of data, found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load(split: str = "train", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 ``[N, 28, 28]`` and uint8 ``[N]``.

    ``split`` is ``'train'`` (60000) or ``'test'`` (10000).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = root or data_dir()
    paths = [os.path.join(root, name) for name in _FILES[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FashionMNISTNotFound(
            f"Fashion-MNIST files not found: {', '.join(missing)}. "
            f"Install them with `{INSTALL_HINT}` "
            f"(or set FASHION_MNIST_DIR to a folder holding the four *-idx?-ubyte.gz files).")
    images, labels = (_read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{root}: inconsistent {split} files: {images.shape} vs {labels.shape}")
    return images, labels


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` or ``[N, 1, 28, 28]`` -> float32 NCHW ``[N, 1, 28, 28]`` in [0, 1]."""
    x = images.reshape(len(images), 1, 28, 28).astype(np.float32)
    return x / np.float32(255.0)


def calibration_and_test(calib_images: int = 512, test_images: int = 10000, seed: int = 0,
                         root: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split every re-quantization table uses: ``calib_images`` training images drawn
    without replacement (``seed``), the first ``test_images`` test images and their labels;
    float32 NCHW in [0, 1] and int64 labels."""
    train_x, _ = load("train", root)
    test_x, test_y = load("test", root)
    calib_idx = np.random.default_rng(seed).choice(len(train_x), calib_images, replace=False)
    return (to_float(train_x[calib_idx]), to_float(test_x[:test_images]),
            test_y[:test_images].astype(np.int64))


def subset(split: str = "test", n: int = 1000, start: int = 0,
           root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of ``split`` from ``start``: uint8 ``[n,1,28,28]``, int64 ``[n]``."""
    images, labels = load(split, root)
    if start + n > len(images):
        raise ValueError(f"{split} has only {len(images)} images")
    sl = slice(start, start + n)
    return images[sl].reshape(n, 1, 28, 28).copy(), labels[sl].astype(np.int64)


def save_subset_npz(path: str, split: str = "test", n: int = 1000, start: int = 0,
                    input_name: str = "input", as_uint8: bool = False,
                    root: str | None = None) -> dict[str, np.ndarray]:
    """Write a subset as a compressed .npz and return its arrays.

    * ``as_uint8=False`` (calibration / feed form): ``{input_name: float32 [n,1,28,28] in [0,1],
      'labels': int64 [n]}``; the array can be fed to the models as is.
    * ``as_uint8=True`` (compact form, e.g. ``tests/data/fmnist_test_1000.npz``):
      ``{'images': uint8 [n,1,28,28], 'labels': int64 [n]}``; feed ``images / 255`` as float32.
    """
    images, labels = subset(split, n, start, root)
    arrays = ({"images": images, "labels": labels} if as_uint8
              else {input_name: to_float(images), "labels": labels})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a Fashion-MNIST subset as .npz")
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--input-name", default="input")
    p.add_argument("--uint8", action="store_true",
                   help="store uint8 'images' instead of float32 [0,1] keyed by --input-name")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    arrays = save_subset_npz(a.out, a.split, a.n, a.start, a.input_name, a.uint8)
    print(a.out, {k: (v.dtype.name, v.shape) for k, v in arrays.items()},
          f"{os.path.getsize(a.out)} bytes")


if __name__ == "__main__":
    main()
