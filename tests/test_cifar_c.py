"""Tests of the CIFAR-10-C reader and the seeded, atomic generator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdnet_cli.data import cifar_c_store
from sdnet_cli.data.cifar_c import CifarCError, describe_source, is_generated, read_cifar_c_cell
from sdnet_cli.data.cifar_c_generate import generate_cifar_c
from sdnet_cli.data.cifar_c_store import ensure_generated_cells
from sdnet_cli.data.corruptions import ALL_CORRUPTIONS, CIFAR_STRENGTHS, corrupt

TWO = ["gaussian_noise", "frost"]


@pytest.fixture(scope="module")
def data(cifar_test_images: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """2,000 images (the 64 real ones repeated) so every severity spans two chunks."""
    images, labels = cifar_test_images
    return np.resize(images, (2000, 32, 32, 3)), np.resize(labels, 2000)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> Path:
    images, labels = data
    seen: list[int] = []
    folder = tmp_path_factory.mktemp("one") / "c"
    out = generate_cifar_c(images, labels, folder, TWO, seed=7, workers=1, progress=seen.append)
    assert sum(seen) == len(TWO) * 5 * len(images)
    return out


@pytest.mark.slow
def test_worker_count_does_not_change_the_files(
    tmp_path: Path, generated: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = data
    other = generate_cifar_c(images, labels, tmp_path / "c", TWO, seed=7, workers=2)
    for name in ["labels.npy"] + [f"{c}.npy" for c in TWO]:
        assert (other / name).read_bytes() == (generated / name).read_bytes(), name
    reseeded = generate_cifar_c(images[:1000], labels[:1000], tmp_path / "d", ["gaussian_noise"], seed=8, workers=1)
    first_block = np.load(generated / "gaussian_noise.npy", mmap_mode="r")[:1000]
    assert not np.array_equal(np.load(reseeded / "gaussian_noise.npy")[:1000], first_block)


def test_only_final_files_are_left(generated: Path) -> None:
    names = sorted(p.name for p in generated.iterdir())
    assert names == ["frost.npy", "gaussian_noise.npy", "labels.npy", "metadata.json"]


def test_layout_and_read_back(generated: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data
    full = np.load(generated / "frost.npy", mmap_mode="r")
    assert full.shape == (10000, 32, 32, 3) and full.dtype == np.uint8
    stored_labels = np.load(generated / "labels.npy")
    assert stored_labels.dtype == np.int64 and np.array_equal(stored_labels, np.tile(labels, 5))

    cell, cell_labels = read_cifar_c_cell(generated, "frost", 3)
    assert cell.shape == (2000, 32, 32, 3) and cell.dtype == np.uint8
    assert cell_labels.dtype == np.int64 and np.array_equal(cell_labels, labels)
    assert np.array_equal(cell, full[4000:6000])
    # rows 1000..1999 of severity 3 are chunk 1, with its own generator
    rng = np.random.default_rng(np.random.SeedSequence([7, ALL_CORRUPTIONS.index("frost"), 3, 1]))
    assert np.array_equal(cell[1000:], corrupt(images[1000:], "frost", 3, rng))

    first, first_labels = read_cifar_c_cell(generated, "frost", 5, n=10)
    assert np.array_equal(first, full[8000:8010]) and np.array_equal(first_labels, labels[:10])
    with pytest.raises(CifarCError, match="severity"):
        read_cifar_c_cell(generated, "frost", 6)
    with pytest.raises(CifarCError, match="n must be"):
        read_cifar_c_cell(generated, "frost", 1, n=2001)


def test_metadata(generated: Path) -> None:
    meta = json.loads((generated / "metadata.json").read_text())
    assert meta["generated"] is True and meta["strengths"] == "CIFAR-10-C" and meta["seed"] == 7
    assert meta["corruptions"] == TWO
    assert meta["images_per_severity"] == 2000
    assert meta["strength_table"] == json.loads(json.dumps(CIFAR_STRENGTHS))
    assert set(meta["versions"]) == {"numpy", "scikit-image", "opencv", "scipy", "pillow", "imagecorruptions"}
    assert all(meta["versions"].values())
    assert "not bit-identical" in meta["note"]
    assert is_generated(generated)
    assert describe_source(generated)["source"] == "generated" and describe_source(generated)["seed"] == 7


def test_missing_folder_or_file(tmp_path: Path, generated: Path) -> None:
    with pytest.raises(CifarCError, match="labels.npy") as info:
        read_cifar_c_cell(tmp_path / "nowhere", "fog", 1)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(CifarCError, match="fog.npy"):
        read_cifar_c_cell(generated, "fog", 1)


def test_official_folder(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(10, dtype=np.uint8), 5)  # 10 images per severity
    data = np.arange(50 * 32 * 32 * 3, dtype=np.uint64).astype(np.uint8).reshape(50, 32, 32, 3)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "snow.npy", data)
    images, got = read_cifar_c_cell(tmp_path, "snow", 2)
    assert np.array_equal(images, data[10:20]) and np.array_equal(got, labels[10:20]) and got.dtype == np.int64
    assert not is_generated(tmp_path)
    assert describe_source(tmp_path) == {"source": "official", "path": str(tmp_path)}
    with pytest.raises(CifarCError, match="official"):  # never mix generated files into it
        generate_cifar_c(images, got, tmp_path, ["fog"], seed=0, workers=1)
    np.save(tmp_path / "snow.npy", data[:40])
    with pytest.raises(CifarCError, match="shape"):
        read_cifar_c_cell(tmp_path, "snow", 1)


def test_merge_and_seed_clash(tmp_path: Path, cifar_test_images: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = cifar_test_images
    out = tmp_path / "c"
    generate_cifar_c(images, labels, out, ["contrast"], seed=1, workers=1)
    generate_cifar_c(images, labels, out, ["brightness"], seed=1, workers=1)
    assert json.loads((out / "metadata.json").read_text())["corruptions"] == ["brightness", "contrast"]
    with pytest.raises(CifarCError, match="seed"):
        generate_cifar_c(images, labels, out, ["fog"], seed=2, workers=1)
    with pytest.raises(CifarCError, match="images per severity"):
        generate_cifar_c(images[:10], labels[:10], out, ["fog"], seed=1, workers=1)
    with pytest.raises(CifarCError, match="valid names"):
        generate_cifar_c(images, labels, out, ["fogg"], seed=1, workers=1)


def test_interrupt_leaves_no_partial_file(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = data

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_cifar_c(images, labels, tmp_path, ["contrast"], seed=0, workers=1, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.npy", "metadata.json"]
    assert json.loads((tmp_path / "metadata.json").read_text())["corruptions"] == []


def test_ensure_generated_cells_only_fills_gaps(
    tmp_path: Path, cifar_test_images: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = cifar_test_images
    root = ensure_generated_cells(tmp_path, images, labels, ["contrast"], seed=3, workers=1)
    assert root == tmp_path / "cifar10-c-seed3"
    before = (root / "contrast.npy").stat().st_mtime_ns
    seen: list[int] = []
    ensure_generated_cells(tmp_path, images, labels, ["contrast", "pixelate"], seed=3, workers=1, progress=seen.append)
    assert sum(seen) == 5 * len(images)  # pixelate only
    assert (root / "contrast.npy").stat().st_mtime_ns == before

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing should be generated")

    monkeypatch.setattr(cifar_c_store, "generate_cifar_c", fail)
    assert ensure_generated_cells(tmp_path, images, labels, ["pixelate"], seed=3, workers=1) == root
    assert describe_source(root)["seed"] == 3
    assert json.loads((root / "metadata.json").read_text())["corruptions"] == ["contrast", "pixelate"]
