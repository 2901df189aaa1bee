"""Outlier noise (outliers.py, Eq. 8): the composition of the training and test sets, and a run."""

import numpy as np
import pytest
import torch

from noisy_convnet import datasets, noise, outliers
from noisy_convnet.datasets import Split
from noisy_convnet.errors import UserError
from noisy_convnet.train import run


@pytest.fixture(scope="module")
def mnist():
    return datasets.load("mnist5k")


def _compose(ds, **kw):
    args = {"source": "classes", "inlier_classes": 5, "n_in": 1000, "ratio": 1.0, "labelled": 50}
    return outliers.compose(ds, **{**args, **kw}, rng=np.random.default_rng(0))


def test_composition_counts_and_labels(mnist):
    o = _compose(mnist, ratio=1.5)
    k = 5
    assert (o.n_in, o.n_out, o.labelled) == (1000, 1500, 50)
    assert len(o.train) == 2550 and (o.y_true == k).sum() == 1550
    y = o.train.y.numpy()
    out_labels = y[(o.y_true == k) & (y < k)]  # the outliers with a random label
    counts = np.bincount(out_labels, minlength=k)
    assert len(out_labels) == 1500 and counts.min() > 240  # uniform over the K classes (300 expected)
    assert (y == k).sum() == 50  # the labelled outliers
    inl = o.y_true < k
    np.testing.assert_array_equal(y[inl], o.y_true[inl])  # no flip noise on inliers unless asked
    assert set(o.test.y.unique().tolist()) == set(range(k + 1))


@pytest.mark.parametrize("source", outliers.SOURCES)
def test_no_image_in_both_training_and_test_sets(mnist, source):
    o = _compose(mnist, source=source)
    train = {bytes(x.numpy()) for x in o.train.x}
    assert not any(bytes(x.numpy()) in train for x in o.test.x)
    assert o.train.x.dtype == torch.uint8 and tuple(o.train.x.shape[1:]) == mnist.shape


def test_eq8_with_labelled_outliers_is_non_singular_and_its_columns_sum_to_one():
    q = noise.outlier(5, outliers.alpha(1000, 50))
    np.testing.assert_allclose(q.sum(0), 1.0)
    assert q[5, 5] == pytest.approx(50 / 1050) and not noise.is_singular(q)
    np.testing.assert_allclose(q[:5, 5], (1 - 50 / 1050) / 5)
    assert noise.is_singular(noise.outlier(5, outliers.alpha(1000, 0)))


@pytest.mark.parametrize(
    "kw, key",
    [({"ratio": -1.0}, "noise.outlier_ratio"), ({"labelled": 5000}, "noise.labelled_outliers"),
     ({"source": "webcam"}, "noise.outlier_source"), ({"inlier_classes": 10}, "noise.inlier_classes")],
)
def test_bad_outlier_settings_are_user_errors(mnist, kw, key):
    with pytest.raises(UserError, match=f"^{key}: "):
        _compose(mnist, **kw)


@pytest.mark.parametrize("q", ["none", "fixed"])
def test_outlier_run_reports_inlier_error_and_ap(make_cfg, tmp_path, q):
    r = run(make_cfg("noise=outlier", f"q={q}", "data.train_size=500", "noise.labelled_outliers=20",
                     "trainer.max_epochs=3", run_dir=tmp_path / q))
    assert (r.fields["n_in"], r.fields["n_out"], r.fields["labelled_outliers"], r.fields["outlier_ratio"]) == (
        500, 500, 20, 1.0)
    assert 0 <= r.test_error <= 1 and 0.5 < r.inlier_ap <= 1
    assert np.array(r.Q_true).shape == (6, 6) and r.trainings == 1
    assert len(r.pr_curve["precision"]) == len(r.pr_curve["recall"]) > 10


def test_another_data_sets_images_as_outliers(make_cfg, tmp_path):
    """CIFAR-10 inliers with CIFAR-100 outliers (the paper's kind of setting), from files in the real format.
    The outlier files' images are brighter: a net that sees them as outliers tells them apart on the test
    set (AP near 1, where chance is 0.5) and keeps the inliers' classes."""
    from .test_datasets import write_cifar

    write_cifar(tmp_path / "data", 10)
    write_cifar(tmp_path / "data", 100, background=(150, 250))
    cifar = ["data=cifar10", f"data.root={tmp_path / 'data'}", "data.verify=false", "model=convnet_cifar"]
    outl = ["noise=outlier", "noise.outlier_source=cifar100", "noise.outlier_ratio=1.0"]
    r = run(make_cfg(*cifar, *outl, "data.train_size=100", "noise.labelled_outliers=20", "q=fixed",
                     "data.batch_size=16", "trainer.max_epochs=10"))
    assert (r.fields["n_in"], r.fields["n_out"], r.fields["outlier_source"]) == (100, 100, "cifar100")
    assert r.inlier_ap > 0.9 and r.test_error < 0.6, (r.inlier_ap, r.test_error)


def test_a_folder_of_images_as_outliers(mnist, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "junk" / "sub").mkdir(parents=True)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(tmp_path / "junk" / "sub" / f"{i}.png")
    train, test = outliers.folder_images(str(tmp_path / "junk"), mnist.shape, np.random.default_rng(0))
    assert train.shape == (20, 1, 28, 28) and test.shape == (20, 1, 28, 28) and train.dtype == torch.uint8
    pair = tuple(Split(x, torch.zeros(len(x), dtype=torch.long)) for x in (train, test))
    o = _compose(mnist, source=str(tmp_path / "junk"), n_in=100, ratio=0.1, labelled=5, external=pair)
    assert o.n_out == 10 and (o.test.y == 5).sum() == 20
    with pytest.raises(UserError, match="^noise.outlier_source: no images"):
        outliers.folder_images(str(tmp_path / "junk" / "none"), mnist.shape, np.random.default_rng(0))
    (tmp_path / "junk" / "sub" / "fake.jpg").write_text("not an image")  # one line naming it, no traceback
    with pytest.raises(UserError, match=r"^noise.outlier_source: '.*fake.jpg' cannot be decoded as an image"):
        outliers.folder_images(str(tmp_path / "junk"), mnist.shape, np.random.default_rng(0))


def test_fixed_q_without_labelled_outliers_is_a_user_error(make_cfg):
    with pytest.raises(UserError, match="^noise.labelled_outliers: q=fixed needs a non-singular Q"):
        run(make_cfg("noise=outlier", "q=fixed", "noise.labelled_outliers=0", "data.train_size=300"))


def test_outliers_with_an_image_folder_stay_files_read_by_its_transform(make_cfg, tmp_path):
    """fig4c's path: inliers from an image folder, outliers from its other classes or from another folder
    (here black images, so they can be told apart once read)."""
    from PIL import Image

    from .test_datasets import write_image_folder

    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c", "d"), n_train=10, n_val=4)
    (tmp_path / "web").mkdir()
    for i in range(12):
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "web" / f"{i}.jpg")
    ds = datasets.load("imagefolder", str(tmp_path / "imgs"), image_size=16)
    o = outliers.compose(ds, "classes", 2, 16, 1.0, 2, np.random.default_rng(0))
    assert o.train.source is ds.pool.source and o.test.source is ds.test.source
    assert (o.n_in, o.n_out, len(o.train)) == (16, 16, 34)
    assert (ds.pool.y[o.train.x[torch.as_tensor(o.y_true == 2)]] >= 2).all()  # outliers: classes c, d
    assert (o.test.y == 2).sum() == 8 and (ds.test.y[o.test.x[o.test.y == 2]] >= 2).all()

    pair = outliers.folder_files(str(tmp_path / "web"), ds.pool.source.transform, np.random.default_rng(0))
    o = outliers.compose(ds, str(tmp_path / "web"), 4, 20, 0.2, 2, np.random.default_rng(0), pair)
    images = [o.train.source[int(i)][0] for i in o.train.x]
    is_out = [bool((im == 0).all()) for im in images]
    assert images[0].shape == (3, 16, 16) and is_out == list(o.y_true == 4)
    assert sum(bool((o.test.source[int(i)][0] == 0).all()) for i in o.test.x) == 6  # the other half
    (tmp_path / "web" / "fake.jpg").write_text("not an image")  # found before any training, one line
    with pytest.raises(UserError, match=r"^noise.outlier_source: 1 of the outlier images under .*web cannot be read"):
        outliers.folder_files(str(tmp_path / "web"), ds.pool.source.transform, np.random.default_rng(0))
    (tmp_path / "web" / "fake.jpg").unlink()

    with pytest.raises(UserError, match="^noise.outlier_source: with imagefolder .* not 'photos'"):
        outliers.compose(ds, "photos", 2, 16, 1.0, 2, np.random.default_rng(0))
    folder = ["data=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.image_size=16", "data.num_workers=0"]
    for src in ("classes", str(tmp_path / "web")):
        r = run(make_cfg(*folder, "noise=outlier", f"noise.outlier_source={src}", "noise.inlier_classes=2",
                         "data.train_size=16", "noise.outlier_ratio=0.25", "noise.labelled_outliers=2",
                         "data.batch_size=8", "model=convnet_cifar", "q=fixed",
                         run_dir=tmp_path / "run" / str(len(src))))
        assert r.fields["n_out"] == 4 and 0.0 <= r.inlier_ap <= 1.0 and 0.0 <= r.test_error <= 1.0


def test_outlier_noise_with_a_matrix_file_flips_the_inliers_at_the_files_level(make_cfg, tmp_path):
    """noise.matrix=FILE under outlier noise: the file's matrix flips the inliers (it was ignored while
    noise.inlier_level stayed 0) and the record's level is the file's; an inlier_level beside it is refused."""
    from noisy_convnet import noise

    path = tmp_path / "q.npy"
    np.save(path, noise.uniform(5, 0.4))
    r = run(make_cfg("noise=outlier", f"noise.matrix={path}", "data.train_size=500", "noise.labelled_outliers=20",
                     "q=none", "trainer.max_epochs=1", run_dir=tmp_path / "run"))
    assert r.level == pytest.approx(0.4) and r.matrix == str(path)
    q_true = np.array(r.Q_true)
    np.testing.assert_allclose(q_true[:5, :5] / q_true[:5, :5].sum(0), noise.uniform(5, 0.4), atol=1e-9)
    # half the images are outliers (all noisy), the other half inliers flipped at 0.4: 0.5 + 0.5 x 0.4 noisy
    assert r.actual_noise == pytest.approx(0.7, abs=0.04)  # 0.5 when the file was ignored
    with pytest.raises(UserError, match="^noise.inlier_level: noise.matrix is a file"):
        run(make_cfg("noise=outlier", f"noise.matrix={path}", "noise.inlier_level=0.2", run_dir=tmp_path / "r2"))


def test_an_outlier_file_cut_after_its_header_is_one_line_naming_it(tmp_path):
    """Beside an image folder the outliers stay files, read as the training reads them: a JPEG cut short after
    a sound header passes the header check and fails when decoded, as one line naming noise.outlier_source."""
    from PIL import Image

    from noisy_convnet.datasets import ImageFiles

    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(jpeg, quality=95)
    whole = ImageFiles([jpeg], lambda im: im.size)
    assert whole[0] == ((48, 40), -1)
    jpeg.write_bytes(jpeg.read_bytes()[:700])
    with pytest.raises(UserError, match=r"^noise.outlier_source: '.*cut.jpg' cannot be decoded as an image"):
        whole[0]
