"""Dataset loaders, splits, pipelines and augmentation on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.augment import FLIP_SHIFT_MAX_PIXELS, Augmenter, flip_shift_augment, graph_augment
from training.data import (
    FASHION_MNIST_DEBIAN_DIR,
    DatasetUnavailable,
    load_dataset,
    make_pipeline,
    stratified_kfold,
    train_validation_split,
    write_idx,
)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def test_mnist_from_the_packaged_data(mnist) -> None:
    assert mnist.x_train.shape == (60000, 28, 28, 1)
    assert mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.x_train.dtype == np.uint8 and mnist.x_train.max() == 255
    # The standard MNIST training set has 5,923 zeros and 6,742 ones.
    assert np.bincount(mnist.y_train)[:2].tolist() == [5923, 6742]
    assert mnist.class_names == [str(d) for d in range(10)]
    assert "mnist.pkl.gz" in mnist.source


@pytest.mark.skipif(
    not FASHION_MNIST_DEBIAN_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist is not installed (make setup installs it as root)",
)
def test_fashion_mnist_from_the_debian_package() -> None:
    dataset = load_dataset("fashion_mnist")
    assert dataset.x_train.shape == (60000, 28, 28, 1)
    assert dataset.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
    assert dataset.class_names[9] == "Ankle boot"


def _write_kmnist_files(directory: Path, train: int, test: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        np.savez_compressed(directory / f"kmnist-{split}-imgs.npz", arr_0=images)
        np.savez_compressed(directory / f"kmnist-{split}-labels.npz", arr_0=labels)
        arrays[split] = (images, labels)
    return arrays["train"][0], arrays["test"][1]


def test_kmnist_from_standard_npz_files(tmp_path: Path) -> None:
    (tmp_path / "kmnist").mkdir()
    train_images, test_labels = _write_kmnist_files(tmp_path / "kmnist", train=50, test=20)
    dataset = load_dataset("kmnist", data_dir=tmp_path)
    assert dataset.x_train.shape == (50, 28, 28, 1)
    assert dataset.x_test.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(dataset.x_train[..., 0], train_images)
    np.testing.assert_array_equal(dataset.y_test, test_labels)
    assert dataset.y_train.dtype == np.int64
    assert dataset.class_names[0].startswith("o ")


def test_kmnist_from_environment_variable(tmp_path: Path, monkeypatch) -> None:
    _write_kmnist_files(tmp_path, train=10, test=10)
    monkeypatch.setenv("CONVNET_DATA_DIR", str(tmp_path))
    assert load_dataset("kmnist").x_train.shape == (10, 28, 28, 1)


def test_idx_directory_wins_over_packaged_data(tmp_path: Path, mnist) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", mnist.x_train[:30, ..., 0])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", mnist.y_train[:30].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", mnist.x_test[:12, ..., 0])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", mnist.y_test[:12].astype(np.uint8))
    dataset = load_dataset("mnist", data_dir=tmp_path)
    assert dataset.source == str(tmp_path)
    np.testing.assert_array_equal(dataset.x_train, mnist.x_train[:30])
    np.testing.assert_array_equal(dataset.y_test, mnist.y_test[:12])


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CONVNET_DATA_DIR", raising=False)
    with pytest.raises(DatasetUnavailable) as error:
        load_dataset("kmnist", data_dir=tmp_path)
    message = str(error.value)
    assert "kmnist-{train,test}-{imgs,labels}.npz" in message
    assert "--data-dir" in message and str(tmp_path) in message


def test_unknown_dataset_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_stratified_validation_split_keeps_class_proportions(mnist) -> None:
    x_train, y_train, _, y_val = train_validation_split(
        mnist.x_train, mnist.y_train, validation_fraction=0.1, seed=1
    )
    assert len(y_val) == 6000 and len(y_train) == 54000
    full = np.bincount(mnist.y_train) / len(mnist.y_train)
    np.testing.assert_allclose(np.bincount(y_val) / len(y_val), full, atol=0.001)
    assert x_train.shape[1:] == (28, 28, 1)


def test_stratified_kfold_partitions_the_data(mnist) -> None:
    y = mnist.y_train[:1000]
    seen = np.zeros(len(y), dtype=int)
    for train_rows, val_rows in stratified_kfold(y, folds=5, seed=3):
        assert len(np.intersect1d(train_rows, val_rows)) == 0
        assert len(val_rows) == 200
        seen[val_rows] += 1
        np.testing.assert_allclose(
            np.bincount(y[val_rows], minlength=10) / 200,
            np.bincount(y, minlength=10) / 1000,
            atol=0.011,
        )
    assert (seen == 1).all()


def test_subset_is_stratified(mnist) -> None:
    small = mnist.limited(500, 200, seed=0)
    assert len(small.y_train) == 500 and len(small.y_test) == 200
    assert np.bincount(small.y_train).min() >= 40


@pytest.mark.parametrize("kind", ["tfdata", "pydataset"])
@pytest.mark.parametrize("augment", [False, True, "albumentations"])
def test_pipelines_yield_correct_batches(mnist, kind: str, augment: str | bool) -> None:
    x, y = mnist.x_train[:200], mnist.y_train[:200]
    pipeline = make_pipeline(kind, x, y, 64, shuffle=True, augment=augment, seed=5)
    batches = [(np.asarray(images), np.asarray(labels)) for images, labels in pipeline]
    if kind == "pydataset":
        batches = [pipeline[i] for i in range(len(pipeline))]
    assert [len(labels) for _, labels in batches] == [64, 64, 64, 8]
    for images, labels in batches:
        assert images.shape[1:] == (28, 28, 1) and images.dtype == np.uint8
        assert labels.dtype == np.int64
    # Shuffled, but the same multiset of labels: nothing lost or duplicated.
    all_labels = np.concatenate([labels for _, labels in batches])
    assert sorted(all_labels.tolist()) == sorted(y.tolist())


def test_augmentation_changes_pixels_never_labels(mnist) -> None:
    x, y = mnist.x_train[:256], mnist.y_train[:256]
    plain = make_pipeline("tfdata", x, y, 256, shuffle=False, augment=False)
    augmented = make_pipeline("tfdata", x, y, 256, shuffle=False, augment=True, seed=3)
    (plain_x, plain_y), (aug_x, aug_y) = next(iter(plain)), next(iter(augmented))
    np.testing.assert_array_equal(np.asarray(plain_y), np.asarray(aug_y))
    changed = np.any(np.asarray(plain_x) != np.asarray(aug_x), axis=(1, 2, 3))
    assert changed.mean() > 0.5
    assert np.asarray(aug_x).dtype == np.uint8


def test_augmenter_is_deterministic_per_key(mnist) -> None:
    images = mnist.x_train[:16]
    first = Augmenter(seed=11)(images, key=4)
    again = Augmenter(seed=11)(images, key=4)
    other = Augmenter(seed=11)(images, key=5)
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)


def _take(pipeline, batches: int) -> list[np.ndarray]:
    return [np.asarray(images) for images, _ in list(pipeline)[:batches]]


def test_graph_augmentation_keeps_shape_dtype_and_range(mnist) -> None:
    images = mnist.x_train[:64]
    out = graph_augment(images, np.array([1, 2])).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    # Moves and tone changes, not a different picture: the ink stays about where it was.
    assert abs(float(out.mean()) - float(images.mean())) < 20
    assert out.max() > 200 and out.min() == 0


def test_graph_augmentation_changes_images(mnist) -> None:
    images = mnist.x_train[:256]
    out = graph_augment(images, np.array([1, 2])).numpy()
    changed = np.any(out != images, axis=(1, 2, 3))
    # p(unchanged) = 0.2 (no affine) * 0.5 (no tone) * 0.7 (no noise) = 7%.
    assert changed.mean() > 0.85


def test_graph_augmentation_is_deterministic_for_a_seed(mnist) -> None:
    images = mnist.x_train[:32]
    first = graph_augment(images, np.array([7, 1])).numpy()
    np.testing.assert_array_equal(first, graph_augment(images, np.array([7, 1])).numpy())
    assert np.any(first != graph_augment(images, np.array([7, 2])).numpy())


def test_graph_augmented_pipeline_is_deterministic_and_varies_per_epoch(mnist) -> None:
    x, y = mnist.x_train[:128], mnist.y_train[:128]

    def pipeline(seed: int):
        return make_pipeline("tfdata", x, y, 64, shuffle=True, augment="graph", seed=seed)

    first, again = pipeline(3), pipeline(3)
    epoch_1, epoch_2 = _take(first, 2), _take(first, 2)
    for a, b in zip(epoch_1 + epoch_2, _take(again, 2) + _take(again, 2), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(epoch_1, epoch_2, strict=True))
    assert any(np.any(a != b) for a, b in zip(epoch_1, _take(pipeline(4), 2), strict=True))


def _gamma_shapes(count: int) -> np.ndarray:
    """Images with ink only in the left and top bars: a flip would move it right or down."""
    images = np.zeros((count, 28, 28, 1), np.uint8)
    images[:, 4:24, 4:8] = 255  # left bar
    images[:, 4:8, 4:24] = 255  # top bar
    return images


def _ink_left_and_top(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ink = images[..., 0].astype(np.float64)
    left = ink[:, :, :14].sum(axis=(1, 2)) > ink[:, :, 14:].sum(axis=(1, 2))
    top = ink[:, :14, :].sum(axis=(1, 2)) > ink[:, 14:, :].sum(axis=(1, 2))
    return left, top


def test_graph_augmentation_never_flips() -> None:
    images = _gamma_shapes(256)
    for seed in range(4):
        left, top = _ink_left_and_top(graph_augment(images, np.array([seed, 0])).numpy())
        assert left.all() and top.all()
    # The check sees a flip when there is one.
    left, top = _ink_left_and_top(images[:, :, ::-1])
    assert not left.any() and top.all()


def _one_dot(count: int, row: int, col: int) -> np.ndarray:
    images = np.zeros((count, 16, 16, 1), np.uint8)
    images[:, row, col] = 200
    return images


def test_flip_shift_mirrors_left_right_and_moves_whole_pixels() -> None:
    row, col, reach = 8, 4, FLIP_SHIFT_MAX_PIXELS  # the dot never leaves the 16x16 frame
    out = flip_shift_augment(_one_dot(512, row, col), np.array([3, 9])).numpy()
    assert out.shape == (512, 16, 16, 1) and out.dtype == np.uint8
    # Whole-pixel moves: one dot stays one dot of the same value (nearest, no blur).
    assert ((out > 0).sum(axis=(1, 2, 3)) == 1).all() and set(np.unique(out)) == {0, 200}
    rows, cols = np.nonzero(out[..., 0])[1:]
    assert set(rows) == set(range(row - reach, row + reach + 1))  # up and down, never mirrored
    mirrored_col = 15 - col
    near_left = np.abs(cols - col) <= reach
    near_right = np.abs(cols - mirrored_col) <= reach
    assert (near_left | near_right).all()
    assert 0.4 < near_right.mean() < 0.6  # mirrored half the time
    assert set(cols[near_left]) == set(range(col - reach, col + reach + 1))


def test_flip_shift_is_deterministic_for_a_seed() -> None:
    images = _gamma_shapes(64)
    first = flip_shift_augment(images, np.array([5, 1])).numpy()
    np.testing.assert_array_equal(first, flip_shift_augment(images, np.array([5, 1])).numpy())
    assert np.any(first != flip_shift_augment(images, np.array([5, 2])).numpy())


@pytest.mark.parametrize("kind", ["tfdata", "pydataset"])
def test_flip_shift_pipelines_mirror_about_half_never_upside_down(kind: str) -> None:
    x, y = _gamma_shapes(96), np.arange(96, dtype=np.int64) % 10
    pipeline = make_pipeline(kind, x, y, 32, shuffle=False, augment="flip_shift", seed=2)
    batches = [pipeline[i] for i in range(len(pipeline))] if kind == "pydataset" else list(pipeline)
    images = np.concatenate([np.asarray(b[0]) for b in batches])
    np.testing.assert_array_equal(np.concatenate([np.asarray(b[1]) for b in batches]), y)
    left, top = _ink_left_and_top(images)
    assert top.all() and 0.3 < left.mean() < 0.7
