"""worker.data: every kind loads, splits deterministically, and refuses bad or unsafe data."""

from __future__ import annotations

import builtins
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.spec import DatasetSpec
from worker.data import (
    DatasetError,
    LoadedDataset,
    load_dataset,
    resolve_data_path,
    split_indices,
)

ROOTS_MESSAGE = re.escape("is outside the configured data roots (NORMSEARCH_DATA_ROOTS): ")


# ----------------------------------------------------------------------------------- helpers


def spec(kind: str, **fields) -> DatasetSpec:
    return DatasetSpec(kind=kind, **fields)


def check_loaded(data: LoadedDataset, *, total: int, num_classes: int, shape: tuple[int, ...]):
    assert data.x_train.dtype == data.x_val.dtype == torch.float32
    assert data.y_train.dtype == data.y_val.dtype == torch.int64
    assert len(data.x_train) + len(data.x_val) == total
    assert len(data.x_train) == len(data.y_train) and len(data.x_val) == len(data.y_val)
    assert len(data.x_val) > 0 and len(data.x_train) > 0
    assert tuple(data.x_train.shape[1:]) == tuple(data.x_val.shape[1:]) == shape
    assert data.num_classes == num_classes
    assert int(data.y_train.min()) >= 0 and int(data.y_train.max()) < num_classes
    summary = data.summary()
    assert summary["num_train"] == len(data.x_train) and summary["num_val"] == len(data.x_val)
    assert summary["num_classes"] == num_classes and summary["input_shape"] == list(shape)


def assert_same(a: LoadedDataset, b: LoadedDataset) -> None:
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def assert_differs(a: LoadedDataset, b: LoadedDataset) -> None:
    assert not (torch.equal(a.y_val, b.y_val) and torch.equal(a.x_val, b.x_val))


def check_deterministic(make_spec, roots=()) -> None:
    first = load_dataset(make_spec(0), data_roots=roots)
    assert_same(first, load_dataset(make_spec(0), data_roots=roots))
    assert_differs(first, load_dataset(make_spec(1), data_roots=roots))


def nearest_centroid_accuracy(data: LoadedDataset) -> float:
    x_train, x_val = data.x_train.flatten(1), data.x_val.flatten(1)
    centroids = torch.stack([x_train[data.y_train == c].mean(0) for c in range(data.num_classes)])
    predictions = torch.cdist(x_val, centroids).argmin(1)
    return float((predictions == data.y_val).float().mean())


# ------------------------------------------------------------------------------ split, digits


def test_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    train, val = split_indices(y, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert np.bincount(y[val], minlength=4).tolist() == [10, 6, 3, 1]
    again = split_indices(y, 0.2, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(split_indices(y, 0.2, seed=4)[1], val)
    with pytest.raises(DatasetError, match="at least 2"):
        split_indices(np.array([0]), 0.5, seed=0)


def test_digits_are_the_real_sklearn_digits():
    data = load_dataset(spec("digits", val_fraction=0.25))
    check_loaded(data, total=1797, num_classes=10, shape=(1, 8, 8))
    assert data.in_channels == 1 and data.image_size == 8 and data.name == "digits"
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert len(data.x_val) == round(1797 * 0.25)
    assert set(data.y_val.tolist()) == set(range(10))  # stratified: every class validated
    check_deterministic(lambda seed: spec("digits", seed=seed))


def test_digits_resize():
    data = load_dataset(spec("digits", image_size=16))
    check_loaded(data, total=1797, num_classes=10, shape=(1, 16, 16))
    assert data.image_size == 16


# ---------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
    data = load_dataset(spec("synthetic", num_samples=300, num_classes=5, val_fraction=0.3))
    check_loaded(data, total=300, num_classes=5, shape=(3, 16, 16))
    assert data.in_channels == 3 and data.image_size == 16
    assert len(data.x_val) == 90
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0
    check_deterministic(lambda seed: spec("synthetic", num_samples=100, seed=seed))
    resized = load_dataset(spec("synthetic", num_samples=40, num_classes=4, image_size=24))
    check_loaded(resized, total=40, num_classes=4, shape=(3, 24, 24))


def test_oversized_dataset_is_refused_before_allocating():
    with pytest.raises(DatasetError, match="more than the limit"):
        load_dataset(spec("synthetic", num_samples=3000, image_size=1024))


def test_synthetic_is_learnable():
    data = load_dataset(spec("synthetic", num_samples=1000, num_classes=10))
    assert nearest_centroid_accuracy(data) > 0.5  # chance is 0.1


# ------------------------------------------------------------------------------------ mnist1d

# Runs the loader in a fresh interpreter whose sockets all raise: importing the mnist1d package
# and generating the data must not touch the network (its get_dataset would download).
OFFLINE_SCRIPT = """
import socket

class NoSocket(socket.socket):  # a class: ssl and others subclass socket.socket on import
    def __init__(self, *args, **kwargs):
        raise OSError("network access attempted")

def refuse(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket = NoSocket
socket.create_connection = refuse
socket.getaddrinfo = refuse

from service.spec import DatasetSpec
from worker.data import load_dataset

data = load_dataset(DatasetSpec(kind="mnist1d", num_samples=200))
print("OK", tuple(data.x_train.shape), tuple(data.x_val.shape))
"""


def test_mnist1d_generates_offline():
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK (160, 1, 40) (40, 1, 40)"


def test_mnist1d_shapes_split_and_determinism():
    import random

    from worker.data.generated import mnist1d_arrays

    mnist1d_arrays.cache_clear()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    data = load_dataset(spec("mnist1d", num_samples=500, val_fraction=0.2))
    # make_dataset seeds the global generators; the loader puts them back.
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert random.getstate() == python_state
    check_loaded(data, total=500, num_classes=10, shape=(1, 40))
    assert data.in_channels == 1 and data.image_size is None and data.name == "mnist1d"
    # Balanced classes (50 each), stratified split: 10 of each class validated.
    assert np.bincount(data.y_val.numpy(), minlength=10).tolist() == [10] * 10
    assert np.bincount(data.y_train.numpy(), minlength=10).tolist() == [40] * 10
    # The benchmark's samples whatever the split seed; the seed changes only the split.
    other = load_dataset(spec("mnist1d", num_samples=500, seed=1))
    assert_differs(data, other)
    all_x = torch.cat([data.x_train, data.x_val]).flatten(1)
    other_x = torch.cat([other.x_train, other.x_val]).flatten(1)
    assert torch.equal(all_x[all_x[:, 0].argsort()], other_x[other_x[:, 0].argsort()])
    mnist1d_arrays.cache_clear()  # regenerated, not cached: still the same tensors
    assert_same(data, load_dataset(spec("mnist1d", num_samples=500, val_fraction=0.2)))
    # Standardized as the package does, and learnable (chance is 0.1).
    assert abs(float(all_x.mean())) < 0.05 and abs(float(all_x.std()) - 1.0) < 0.05
    assert nearest_centroid_accuracy(data) > 0.2


def test_mnist1d_default_is_the_published_size_and_matches_the_package():
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset as package_make_dataset

    from worker.data.generated import mnist1d_arrays

    data = load_dataset(spec("mnist1d"))
    check_loaded(data, total=5000, num_classes=10, shape=(1, 40))
    # The package's own split of its default dataset: 4000 + 1000, same samples in order.
    published = package_make_dataset(get_dataset_args())
    x, y = mnist1d_arrays(5000)
    np.testing.assert_allclose(x, np.concatenate([published["x"], published["x_test"]]), rtol=1e-6)
    assert np.array_equal(y, np.concatenate([published["y"], published["y_test"]]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_samples": 105}, "multiple of 10"),
        ({"num_samples": 100_010}, "at most 100000"),
        ({"image_size": 16}, "no image_size"),
        ({"num_classes": 5}, "10 classes"),
    ],
)
def test_mnist1d_spec_limits(fields, message):
    with pytest.raises(ValueError, match=message):
        spec("mnist1d", **fields)


# ------------------------------------------------------------------------------- image_folder


def write_image(path: Path, size=(12, 12), mode="RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


def make_folder(root: Path, classes=("cat", "ant", "bee"), per_class=6, mode="RGB", size=(12, 12)):
    for ci, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", size=size, mode=mode, value=ci * 100 + i)
    return root


def test_image_folder_rgb(tmp_path):
    make_folder(tmp_path / "pets")
    data = load_dataset(spec("image_folder", path="pets"), data_roots=[tmp_path])
    check_loaded(data, total=18, num_classes=3, shape=(3, 12, 12))
    assert data.class_names == ["ant", "bee", "cat"]  # sorted by name
    assert data.in_channels == 3 and data.image_size == 12
    check_deterministic(lambda seed: spec("image_folder", path="pets", seed=seed), [tmp_path])


def test_image_folder_pixels_and_formats(tmp_path):
    pixels = np.full((5, 5, 3), 51, dtype=np.uint8)
    for name, suffix in (("a", ".jpg"), ("b", ".BMP"), ("c", ".jpeg")):
        for i in range(2):
            (tmp_path / "f" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "f" / name / f"{i}{suffix}")
    (tmp_path / "f" / "a" / "notes.txt").write_text("ignored")
    data = load_dataset(spec("image_folder", path="f", val_fraction=0.5), data_roots=[tmp_path])
    check_loaded(data, total=6, num_classes=3, shape=(3, 5, 5))
    assert torch.allclose(data.x_train, torch.full_like(data.x_train, 0.2), atol=0.02)


def test_image_folder_grayscale_and_mixed(tmp_path):
    make_folder(tmp_path / "gray", mode="L")
    data = load_dataset(spec("image_folder", path="gray"), data_roots=[tmp_path])
    check_loaded(data, total=18, num_classes=3, shape=(1, 12, 12))
    assert data.in_channels == 1
    # One colour image makes the whole set RGB.
    write_image(tmp_path / "gray" / "ant" / "color.png", mode="RGB")
    mixed = load_dataset(spec("image_folder", path="gray"), data_roots=[tmp_path])
    check_loaded(mixed, total=19, num_classes=3, shape=(3, 12, 12))


def test_image_folder_sizes(tmp_path):
    make_folder(tmp_path / "f", per_class=3, size=(10, 10))
    write_image(tmp_path / "f" / "cat" / "big.png", size=(20, 14))
    with pytest.raises(DatasetError, match=r"big\.png is 20x14 .*image_size"):
        load_dataset(spec("image_folder", path="f"), data_roots=[tmp_path])
    data = load_dataset(spec("image_folder", path="f", image_size=8), data_roots=[tmp_path])
    check_loaded(data, total=10, num_classes=3, shape=(3, 8, 8))
    assert data.image_size == 8
    make_folder(tmp_path / "wide", classes=("a", "b"), per_class=2, size=(9, 6))
    wide = load_dataset(spec("image_folder", path="wide"), data_roots=[tmp_path])
    assert tuple(wide.x_train.shape[1:]) == (3, 6, 9) and wide.image_size is None


def test_image_folder_errors(tmp_path):
    roots = [tmp_path]
    make_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DatasetError, match="1 class folder"):
        load_dataset(spec("image_folder", path="one"), data_roots=roots)
    make_folder(tmp_path / "empty", classes=("a",))
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*empty/b holds no"):
        load_dataset(spec("image_folder", path="empty"), data_roots=roots)
    make_folder(tmp_path / "broken", classes=("a", "b"))
    (tmp_path / "broken" / "b" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot read image .*bad\.png"):
        load_dataset(spec("image_folder", path="broken"), data_roots=roots)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(spec("image_folder", path="file.png"), data_roots=roots)


def test_image_folder_symlinked_image_outside_roots_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    make_folder(root / "f", classes=("a", "b"))
    write_image(outside / "secret.png")
    (root / "f" / "a" / "link.png").symlink_to(outside / "secret.png")
    with pytest.raises(DatasetError, match=ROOTS_MESSAGE):
        load_dataset(spec("image_folder", path="f"), data_roots=[root])


# -------------------------------------------------------------------------------------- cifar


def cifar_batch(n: int, num_classes: int, label_key: bytes, seed: int, high: int = 255) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"data": rng.integers(0, high, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def dump(obj, path: Path, protocol: int | None = None) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=protocol)


def make_cifar10(folder: Path, per_batch: int = 12) -> Path:
    folder.mkdir(parents=True)
    for i in range(1, 6):  # mix protocols: 2 (Python 2 era files) through 5 (today's default)
        batch = cifar_batch(per_batch, 10, b"labels", seed=i, high=255)
        dump(batch, folder / f"data_batch_{i}", protocol=[2, 3, 4, 5, None][i - 1])
    # The published files name NumPy 1's module path (numpy.core.multiarray): write one so.
    legacy = (folder / "data_batch_1").read_bytes().replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray\n_reconstruct" in legacy
    (folder / "data_batch_1").write_bytes(legacy)
    test = cifar_batch(per_batch, 10, b"labels", seed=9)
    test[b"data"][:] = 255  # the held-out test batch is recognisable: the search never sees it
    dump(test, folder / "test_batch")
    names = [b"airplane", b"car", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump({b"label_names": names, b"num_vis": 3072}, folder / "batches.meta", protocol=2)
    return folder


def make_cifar100(folder: Path, n: int = 40) -> Path:
    folder.mkdir(parents=True)
    train = cifar_batch(n, 100, b"fine_labels", seed=1)
    train[b"coarse_labels"] = [0] * n
    dump(train, folder / "train")
    dump(cifar_batch(10, 100, b"fine_labels", seed=2), folder / "test")
    dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, folder / "meta")
    return folder


def test_cifar10_layout(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    data = load_dataset(spec("cifar", path="cifar-10-batches-py"), data_roots=[tmp_path])
    check_loaded(data, total=60, num_classes=10, shape=(3, 32, 32))
    assert data.name == "cifar10" and data.in_channels == 3 and data.image_size == 32
    assert data.class_names[0] == "airplane" and data.class_names[-1] == "truck"
    assert float(data.x_train.max()) < 1.0 and float(data.x_val.max()) < 1.0  # no test batch
    # The pixels are the batches' bytes, channel-major, scaled to [0, 1].
    first = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    expected = torch.from_numpy(first[b"data"][:, :1024].astype(np.float32) / 255).view(-1, 32, 32)
    pool = torch.cat([data.x_train, data.x_val])[:, 0]
    assert all(any(torch.equal(img, p) for p in pool) for img in expected)
    # The parent folder works too, and image_size resizes.
    parent = load_dataset(spec("cifar", path=".", image_size=16), data_roots=[tmp_path])
    check_loaded(parent, total=60, num_classes=10, shape=(3, 16, 16))
    check_deterministic(
        lambda seed: spec("cifar", path="cifar-10-batches-py", seed=seed), [tmp_path]
    )


def test_cifar100_layout(tmp_path):
    make_cifar100(tmp_path / "cifar-100-python")
    data = load_dataset(spec("cifar", path="cifar-100-python"), data_roots=[tmp_path])
    check_loaded(data, total=40, num_classes=100, shape=(3, 32, 32))
    assert data.name == "cifar100" and data.class_names[5] == "c5"


def test_cifar_malformed(tmp_path):
    folder = make_cifar10(tmp_path / "c10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3 is missing"):
        load_dataset(spec("cifar", path="c10"), data_roots=[tmp_path])
    bad = cifar_batch(4, 10, b"labels", seed=0)
    bad[b"data"] = bad[b"data"][:, :100]
    dump(bad, folder / "data_batch_3")
    with pytest.raises(DatasetError, match=r"data_batch_3: 'data' is 4 x 100"):
        load_dataset(spec("cifar", path="c10"), data_roots=[tmp_path])
    bad = cifar_batch(4, 10, b"labels", seed=0)
    bad[b"labels"] = [0, 1, 2, 10]
    dump(bad, folder / "data_batch_3")
    with pytest.raises(DatasetError, match=r"'labels' must lie in 0\.\.9"):
        load_dataset(spec("cifar", path="c10"), data_roots=[tmp_path])
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match=r"cannot read CIFAR batch .*data_batch_3"):
        load_dataset(spec("cifar", path="c10"), data_roots=[tmp_path])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="no CIFAR python layout"):
        load_dataset(spec("cifar", path="nothing"), data_roots=[tmp_path])


class SystemPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [SystemPayload, ExecPayload])
@pytest.mark.parametrize("protocol", [2, None])
def test_cifar_unpickler_refuses_code_execution(tmp_path, payload, protocol):
    folder = make_cifar10(tmp_path / "c10")
    marker = tmp_path / "pwned"
    batch = cifar_batch(4, 10, b"labels", seed=0)
    batch[b"labels"] = payload(marker)  # hidden among valid arrays
    dump(batch, folder / "data_batch_1", protocol=protocol)
    with pytest.raises(DatasetError, match=r"refusing to unpickle .*data_batch_1") as info:
        load_dataset(spec("cifar", path="c10"), data_roots=[tmp_path])
    assert ("system" if payload is SystemPayload else "exec") in str(info.value)
    assert not marker.exists()


def test_exec_payload_is_live_under_plain_pickle(tmp_path):
    """Control: the payload the restricted unpickler refuses does run under ``pickle.load``."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({b"labels": ExecPayload(marker)}))
    assert marker.exists()


# ---------------------------------------------------------------------------------------- npz


def save_npz(path: Path, **arrays) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path.name


def labels(n: int, k: int = 3) -> np.ndarray:
    return np.arange(n) % k


@pytest.mark.parametrize(
    ("x_shape", "expected", "image_size"),
    [
        ((30, 7, 7), (1, 7, 7), 7),  # N x H x W -> one channel
        ((30, 3, 6, 6), (3, 6, 6), 6),  # N x C x H x W
        ((30, 6, 6, 3), (3, 6, 6), 6),  # N x H x W x C (channels-last)
        ((30, 4, 5, 5), (4, 5, 5), 5),  # dim 1 is a channel count: stays channels-first
        ((30, 3, 8, 5), (3, 8, 5), None),  # non-square
        ((30, 12), (12,), None),  # flat features
    ],
)
def test_npz_layouts(tmp_path, x_shape, expected, image_size):
    x = np.random.default_rng(0).random(x_shape).astype(np.float32)
    name = save_npz(tmp_path / "d.npz", x=x, y=labels(30))
    data = load_dataset(spec("npz", path=name), data_roots=[tmp_path])
    check_loaded(data, total=30, num_classes=3, shape=expected)
    assert data.image_size == image_size
    assert data.in_channels == (expected[0] if len(expected) == 3 else 1)
    check_deterministic(lambda seed: spec("npz", path=name, seed=seed), [tmp_path])


def test_npz_channels_last_values_and_scaling(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (20, 5, 5, 3), dtype=np.uint8)
    y = np.array([10, -2, 7, 7] * 5)  # arbitrary ints -> 0..2 in sorted order
    name = save_npz(tmp_path / "u8.npz", x=x, y=y)
    data = load_dataset(spec("npz", path=name, val_fraction=0.5), data_roots=[tmp_path])
    assert data.num_classes == 3 and data.class_names == ["-2", "7", "10"]
    pool_x = torch.cat([data.x_train, data.x_val])
    pool_y = torch.cat([data.y_train, data.y_val])
    as_nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    remap = {-2: 0, 7: 1, 10: 2}
    for image, label in zip(as_nchw, y, strict=True):
        match = [i for i, p in enumerate(pool_x) if torch.equal(p, image)]
        assert match and int(pool_y[match[0]]) == remap[int(label)]
    floats = np.full((20, 2), 5.0)  # non-uint8 values are not rescaled
    name = save_npz(tmp_path / "f.npz", x=floats, y=labels(20, 2))
    data = load_dataset(spec("npz", path=name, image_size=None), data_roots=[tmp_path])
    assert float(data.x_train.max()) == 5.0


def test_npz_resize(tmp_path):
    name = save_npz(tmp_path / "d.npz", x=np.zeros((10, 3, 8, 8), np.float32), y=labels(10, 2))
    data = load_dataset(spec("npz", path=name, image_size=4), data_roots=[tmp_path])
    check_loaded(data, total=10, num_classes=2, shape=(3, 4, 4))
    flat = save_npz(tmp_path / "flat.npz", x=np.zeros((10, 5)), y=labels(10, 2))
    with pytest.raises(DatasetError, match="image_size applies to images only"):
        load_dataset(spec("npz", path=flat, image_size=4), data_roots=[tmp_path])


def test_npz_refuses_bad_archives(tmp_path):
    def refused(name: str, match: str) -> None:
        with pytest.raises(DatasetError, match=match) as info:
            load_dataset(spec("npz", path=name), data_roots=[tmp_path])
        assert str(info.value).count("npz file") == 1  # one clear message, not a wrapped one

    objects = np.array([{"a": 1}] * 10, dtype=object)
    refused(save_npz(tmp_path / "obj_x.npz", x=objects, y=labels(10)), "'x' is an object array")
    refused(save_npz(tmp_path / "obj_y.npz", x=np.zeros((10, 4)), y=objects), "'y' is an object")
    refused(
        save_npz(tmp_path / "n.npz", x=np.zeros((10, 4)), y=labels(9)),
        "x has 10 samples but y has 9",
    )
    refused(save_npz(tmp_path / "nox.npz", y=labels(10)), r"no array x \(found: y\)")
    refused(save_npz(tmp_path / "fy.npz", x=np.zeros((10, 4)), y=labels(10) + 0.5), "dtype float")
    refused(save_npz(tmp_path / "one.npz", x=np.zeros((10, 4)), y=np.zeros(10, int)), "2 classes")
    refused(save_npz(tmp_path / "5d.npz", x=np.zeros((4, 1, 1, 1, 1)), y=labels(4)), "shape")
    refused(save_npz(tmp_path / "s.npz", x=np.array(["a"] * 4), y=labels(4)), "numeric")
    refused(save_npz(tmp_path / "nan.npz", x=np.full((4, 2), np.nan), y=labels(4)), "NaN")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    refused("junk.npz", r"junk\.npz: cannot be read")
    np.save(tmp_path / "single.npy", np.zeros(3))
    refused("single.npy", "single .npy array")


# ----------------------------------------------------------------------------- confinement


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    save_npz(root / "inside.npz", x=np.zeros((10, 4)), y=labels(10, 2))
    save_npz(outside / "secret.npz", x=np.zeros((10, 4)), y=labels(10, 2))
    return root, outside


def test_paths_inside_roots_resolve(roots, tmp_path):
    root, _ = roots
    other = tmp_path / "second"
    save_npz(other / "later.npz", x=np.zeros((10, 4)), y=labels(10, 2))
    assert resolve_data_path("inside.npz", [root]) == (root / "inside.npz").resolve()
    assert resolve_data_path(str(root / "inside.npz"), [root]) == (root / "inside.npz").resolve()
    assert resolve_data_path("./sub/../inside.npz", [root]).name == "inside.npz"
    assert resolve_data_path("later.npz", [root, other]) == (other / "later.npz").resolve()
    # A symlink inside a root pointing into another root is fine.
    (root / "to_second.npz").symlink_to(other / "later.npz")
    data = load_dataset(spec("npz", path="to_second.npz"), data_roots=[root, other])
    assert data.num_classes == 2


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_paths_escaping_the_roots_are_refused(roots, how):
    root, outside = roots
    path = {
        "dotdot": "../outside/secret.npz",
        "absolute": str(outside / "secret.npz"),
        "symlink": "link.npz",
        "symlinked_dir": "linkdir/secret.npz",
    }[how]
    (root / "link.npz").symlink_to(outside / "secret.npz")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DatasetError, match=ROOTS_MESSAGE):
        resolve_data_path(path, [root])
    with pytest.raises(DatasetError, match=ROOTS_MESSAGE):
        load_dataset(spec("npz", path=path), data_roots=[root])
    # Refused before existence is checked: a missing file outside reads the same.
    with pytest.raises(DatasetError, match=ROOTS_MESSAGE):
        resolve_data_path(str(outside / "nothing_here.npz"), [root])


def test_missing_path_and_no_roots(roots):
    root, _ = roots
    with pytest.raises(DatasetError, match=r"'missing\.npz' does not exist") as info:
        load_dataset(spec("npz", path="missing.npz"), data_roots=[root])
    assert isinstance(info.value, ValueError) and info.value.field == "dataset.path"
    with pytest.raises(DatasetError, match="no data roots are configured"):
        load_dataset(spec("npz", path="inside.npz"), data_roots=[])
