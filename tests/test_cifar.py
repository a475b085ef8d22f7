"""The CIFAR-10 reader reproduces the published facts of ../shared/data/README.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdnet_cli.data.cifar import DataError, label_names, load_cifar10, read_batch


def test_test_split_facts(cifar_test: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = cifar_test
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    np.testing.assert_allclose(images.reshape(-1, 3).mean(0) / 255, [0.4942, 0.4851, 0.4504], atol=5e-5)


@pytest.mark.slow
def test_train_split_facts(data_dir: Path) -> None:
    images, labels = load_cifar10(data_dir, "train", download=False)
    assert images.shape == (50000, 32, 32, 3)
    np.testing.assert_allclose(images.reshape(-1, 3).mean(0) / 255, [0.4914, 0.4822, 0.4465], atol=5e-5)
    first, first_labels = read_batch(data_dir / "cifar-10-batches-py" / "data_batch_1")
    assert np.bincount(first_labels).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    np.testing.assert_array_equal(images[:10000], first)


def test_channel_planar_layout_is_unpacked(data_dir: Path) -> None:
    """Row-major 32x32 planes R, G, B: pixel (r, c) of channel k is data[k*1024 + r*32 + c]."""
    import pickle

    with open(data_dir / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    images, _ = read_batch(data_dir / "cifar-10-batches-py" / "test_batch")
    assert images[7, 5, 9, 2] == raw[7][2 * 1024 + 5 * 32 + 9]


def test_label_names(data_dir: Path) -> None:
    assert label_names(data_dir)[:3] == ["airplane", "automobile", "bird"]


def test_missing_folder_explains_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path, "test", download=False)


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        load_cifar10(None, "val")


def test_failed_download_leaves_no_data_folder_and_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with no data: one DataError (no chained traceback), and no empty folder left where it looked."""
    from sdnet_cli.data import cifar

    def offline(layout: object, root: Path) -> None:
        Path(root).mkdir(parents=True)  # what torchvision does before it fetches
        raise OSError("network unreachable")

    monkeypatch.setattr(cifar, "download", offline)
    with pytest.raises(cifar.DataError) as caught:
        cifar.load_cifar10(tmp_path / "data")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert "\n" not in str(caught.value) and not (tmp_path / "data").exists()
