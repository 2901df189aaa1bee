"""A CIFAR-10-format pool (torchvision's cifar-10-batches-py: five training batches, a test batch, the meta
file) with blank images and CIFAR-10N's clean labels, in the file's order: to check noise=cifar10n end to end
where the CIFAR-10 images cannot be had (no registry holds them). ``--shuffle`` writes the same labels in
another order, which a run must refuse.

    python scripts/cifar_n_pool.py /tmp/cifar-pool            # fetches CIFAR-N's labels into that root first
    python train.py experiment=debug data=cifar10 data.root=/tmp/cifar-pool data.verify=false \
        model=convnet_cifar noise=cifar10n noise.subset=worst q=none   # records actual_noise 0.40208
"""

import argparse
import pickle
from pathlib import Path

import numpy as np

from noisy_convnet import fetch, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="data.root to write cifar-10-batches-py into")
    parser.add_argument("--shuffle", action="store_true", help="the labels in another order than the file's")
    args = parser.parse_args()
    folder = fetch.ensure("cifar10n", args.root, key="root")
    clean = np.asarray(noise.load_pt_labels(folder / "CIFAR-10_human.pt")["clean_label"], dtype=np.int64)
    if args.shuffle:
        clean = clean[np.random.default_rng(0).permutation(len(clean))]
    out = args.root / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    blank = np.zeros((10000, 3072), dtype=np.uint8)
    for i in range(5):
        with open(out / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": blank, "labels": clean[i * 10000 : (i + 1) * 10000].tolist()}, f)
    with open(out / "test_batch", "wb") as f:
        pickle.dump({"data": blank, "labels": (np.arange(10000) % 10).tolist()}, f)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)]}, f)
    print(f"{out}: 50,000 blank training images with CIFAR-10N's clean labels{' (shuffled)' if args.shuffle else ''}")


if __name__ == "__main__":
    main()
