"""CIFAR-100 / CIFAR-100-C and ImageNet / ImageNet-C end to end, on small real data built at test time.

CIFAR-100: a ``cifar-100-python`` folder made from CIFAR-10 test images. ImageNet: an ImageFolder
made from the photographs that ship with scikit-image (``skimage.data``), JPEG-encoded like the
real validation set. Models are untrained width-8 networks: these tests check plumbing and
arithmetic, not accuracy.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from typer.testing import CliRunner

from sdnet_cli.cli import app
from sdnet_cli.data.cifar import CIFAR100, DataError, label_names, load_cifar100
from sdnet_cli.data.cifar_c import read_cifar_c_cell
from sdnet_cli.data.corruptions import ALL_CORRUPTIONS, corrupt
from sdnet_cli.data.datasets import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, dataset_spec
from sdnet_cli.data.imagenet import ImageArray, load_imagenet, preprocess
from sdnet_cli.metrics import corruption_errors
from sdnet_cli.models import CheckpointError, ModelError, create_model, load_model, registry, save_checkpoint

runner = CliRunner()
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # camera is grayscale


def run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


# ---------------------------------------------------------------- CIFAR-100


def write_cifar100_batch(path: Path, images: np.ndarray, fine: np.ndarray) -> None:
    """A batch in the official python layout: planar uint8 rows, byte-string keys."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {
        b"data": data,
        b"fine_labels": fine.tolist(),
        b"coarse_labels": (fine // 5).tolist(),
        b"filenames": [f"{i}.png".encode() for i in range(len(images))],
        b"batch_label": b"test",
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f)


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory: pytest.TempPathFactory, cifar_test: tuple[np.ndarray, np.ndarray]) -> Path:
    """``cifar-100-python`` with 300 training and 200 test images (CIFAR-10 test images, 100 fine labels)."""
    images, labels = cifar_test
    fine = (labels * 10 + np.arange(len(labels)) % 10).astype(np.int64)  # all 100 classes occur
    root = tmp_path_factory.mktemp("c100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    write_cifar100_batch(folder / "train", images[:300], fine[:300])
    write_cifar100_batch(folder / "test", images[300:500], fine[300:500])
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
            },
            f,
        )
    return root


def test_cifar100_reader(cifar100_dir: Path, cifar_test: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    images, labels = load_cifar100(cifar100_dir, "test", download=False)
    np.testing.assert_array_equal(images, cifar_test[0][300:500])
    expected = cifar_test[1][300:500] * 10 + np.arange(300, 500) % 10
    np.testing.assert_array_equal(labels, expected)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    train, _ = load_cifar100(cifar100_dir, "train", download=False)
    assert train.shape == (300, 32, 32, 3)
    assert label_names(cifar100_dir, CIFAR100)[:2] == ["class0", "class1"]
    spec = dataset_spec("cifar100")
    assert (spec.num_classes, spec.stem, spec.image_size, spec.corrupted.title) == (100, "cifar", 32, "CIFAR-100-C")
    with pytest.raises(DataError, match="cifar-100-python"):
        load_cifar100(tmp_path, "test", download=False)


@pytest.mark.slow
def test_cifar100_train_eval_make_c_sweep_attack(cifar100_dir: Path, tmp_path: Path) -> None:
    """`--dataset cifar100` through train, eval (generated and release CIFAR-100-C), make-c, sweep-lambda, attack."""
    data = ["--data-dir", str(cifar100_dir)]
    weights = tmp_path / "weights" / "r8.safetensors"
    result = run(
        "train",
        "--dataset",
        "cifar100",
        "--model",
        "resnet18",
        "--width",
        "8",
        "--epochs",
        "1",
        "--n-train",
        "64",
        "--n-test",
        "32",
        "--batch-size",
        "32",
        "--out",
        str(weights),
        "--report-dir",
        str(tmp_path / "training"),
        *data,
    )
    assert result.exit_code == 0, result.output
    entry = json.loads((weights.parent / "manifest.json").read_text())["models"][0]
    assert entry["dataset"] == "cifar100" and entry["num_classes"] == 100

    cache, out = tmp_path / "cache", tmp_path / "out"
    common = ["--model", "resnet18", "--checkpoint", str(weights), "--dataset", "cifar100", *data]
    result = run("eval", *common, "-c", "contrast", "-s", "2", "-n", "50", "--cache-dir", str(cache), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval-resnet18.json").read_text())
    assert [r["dataset"] for r in report["rows"]] == ["cifar100"] * 3 and report["rows"][1]["n"] == 50
    source = report["meta"]["data_source"]
    assert source["benchmark"] == "CIFAR-100-C" and source["source"] == "generated"
    assert (cache / "cifar100-c-seed0" / "contrast.npy").is_file()
    assert report["meta"]["corruption_errors"] is None  # mCE is ImageNet-only

    # recount the corrupted cell with plain forwards
    model, info = load_model("resnet18", weights, "cifar100")
    cell, cell_labels = read_cifar_c_cell(cache / "cifar100-c-seed0", "contrast", 2, 50)
    with torch.no_grad():
        logits = model(torch.from_numpy(cell).permute(0, 3, 1, 2).float() / 255)
    assert info.num_classes == 100 and logits.shape == (50, 100)
    assert report["rows"][1]["correct"] == int((logits.argmax(1).numpy() == cell_labels).sum())

    release = tmp_path / "CIFAR-100-C"
    result = run("make-c", "--dataset", "cifar100", "--out", str(release), "-c", "contrast", "--workers", "1", *data)
    assert result.exit_code == 0, result.output
    assert np.load(release / "contrast.npy", mmap_mode="r").shape == (1000, 32, 32, 3)
    assert json.loads((release / "metadata.json").read_text())["benchmark"] == "CIFAR-100-C"
    (release / "metadata.json").unlink()  # now it looks like the official release
    result = run(
        "eval",
        *common,
        "-c",
        "contrast",
        "-s",
        "2",
        "-n",
        "50",
        "--cifar-c-dir",
        str(release),
        "--out",
        str(out),
        "--name",
        "release",
    )
    assert result.exit_code == 0, result.output
    again = json.loads((out / "release.json").read_text())
    assert again["meta"]["data_source"]["source"] == "official"
    assert again["rows"][1]["correct"] == report["rows"][1]["correct"]  # same seed, same pixels

    # a 100-class checkpoint is refused for CIFAR-10 (labels would not mean the same classes)
    result = run("eval", "--model", "resnet18", "--checkpoint", str(weights), "-n", "8", *data, "--out", str(out))
    assert result.exit_code == 2 and "100 output classes" in result.output

    sd = tmp_path / "sd8.safetensors"
    save_checkpoint(create_model("sdnet18", "cifar100", width=8).network, sd, {"architecture": "sdnet18"})
    result = run(
        "sweep-lambda",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(sd),
        "--dataset",
        "cifar100",
        *data,
        "-c",
        "contrast",
        "-s",
        "2",
        "-n",
        "20",
        "--lams",
        "0.1,0.5",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "sweep-lambda-sdnet18.json").read_text())["rows"]) == 2 * 2
    result = run(
        "attack",
        "--model",
        "sdnet18",
        "--checkpoint",
        str(sd),
        "--dataset",
        "cifar100",
        *data,
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--eps",
        "1/255",
        "-n",
        "8",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "attack-sdnet18-pgd.json").read_text())["rows"]
    assert rows[0]["dataset"] == "cifar100" and rows[0]["n"] == 8


# ---------------------------------------------------------------- ImageNet


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """val/ and train/ ImageFolders of 5 classes x 2 JPEGs: each photo and its mirror image."""
    root = tmp_path_factory.mktemp("imagenet")
    for label, name in enumerate(PHOTOS):
        photo = getattr(skimage.data, name)()
        for split, offset in (("val", 0), ("train", 100)):
            folder = root / split / f"n0{label + 1:07d}"
            folder.mkdir(parents=True)
            for k, image in enumerate((photo, photo[:, ::-1])):
                number = offset + 10 * label + k + 1
                Image.fromarray(np.ascontiguousarray(image)).save(
                    folder / f"ILSVRC2012_val_{number:08d}.JPEG", quality=90
                )
    return root


def test_preprocessing_matches_torchvision(imagenet_dir: Path) -> None:
    from torchvision import transforms

    standard = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    for path in sorted((imagenet_dir / "val").rglob("*.JPEG"))[::3]:
        with Image.open(path) as image:
            expected = np.asarray(standard(image.convert("RGB")))
        np.testing.assert_array_equal(preprocess(path), expected)


def test_image_folder_reader(imagenet_dir: Path, tmp_path: Path) -> None:
    images, labels = load_imagenet(imagenet_dir, "test")
    assert isinstance(images, ImageArray) and images.shape == (10, 224, 224, 3) and len(images) == 10
    assert labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]  # round-robin: the first N cover the classes
    batch = np.asarray(images[2:7])
    assert batch.shape == (5, 224, 224, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], images[2])
    gray = np.asarray(images[4:5])[0]  # skimage's camera is grayscale, expanded to 3 equal channels
    assert (gray[..., 0] == gray[..., 1]).all() and gray.std() > 10
    assert labels[5] == 0 and np.abs(batch[3].astype(int) - images[[0]][0][:, ::-1]).mean() < 3  # mirrored astronaut
    same, _ = load_imagenet(imagenet_dir / "val", "test")  # the val folder itself also works
    assert [p.name for p in same.paths] == [p.name for p in images.paths]
    assert len(load_imagenet(imagenet_dir, "train")[0]) == 10
    with pytest.raises(DataError, match="ImageNet test folder"):
        load_imagenet(tmp_path / "nowhere", "test")
    (tmp_path / "empty" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_imagenet(tmp_path / "empty", "test")


@pytest.mark.slow
def test_all_19_imagenet_strength_corruptions_on_224(imagenet_dir: Path) -> None:
    image = load_imagenet(imagenet_dir, "test")[0][0][None]
    for name in ALL_CORRUPTIONS:
        out = corrupt(image, name, 3, np.random.default_rng(1), strength="imagenet")
        assert out.shape == (1, 224, 224, 3) and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - image).mean() > 1.0, name
        np.testing.assert_array_equal(out, corrupt(image, name, 3, np.random.default_rng(1), strength="imagenet"))


def test_mce_hand_computed() -> None:
    def rows(accuracies: dict[str, list[float]], clean: float) -> list[dict]:
        out = [{"corruption": "clean", "severity": 0, "n": 100, "correct": round(clean)}]
        for c, accs in accuracies.items():
            out += [{"corruption": c, "severity": s, "n": 100, "correct": round(a)} for s, a in enumerate(accs, 1)]
        return out + [{"corruption": "mean", "severity": "all", "n": 100, "correct": 0}]

    # a: errors .4 .5 .6 .7 .8 (mean .6) -> CE .6/.8 = 75%, relative (.6-.3)/(.8-.4) = 75%
    # b: errors .2 .2 .3 .3 .5 (mean .3) -> CE .3/.5 = 60%, relative (.3-.3)/(.5-.4) = 0%
    # c: only 4 severities -> cannot be normalised, left out
    table = rows({"a": [60, 50, 40, 30, 20], "b": [80, 80, 70, 70, 50], "c": [90, 90, 90, 90]}, clean=70)
    result = corruption_errors(table, {"a": 0.8, "b": 0.5, "c": 0.7}, 0.4)
    assert result is not None and result["corruptions"] == ["a", "b"] and result["complete"] is False
    assert result["CE"] == pytest.approx({"a": 75.0, "b": 60.0})
    assert result["relative_CE"] == pytest.approx({"a": 75.0, "b": 0.0}, abs=1e-9)
    assert result["mCE"] == pytest.approx(67.5) and result["relative_mCE"] == pytest.approx(37.5)
    assert corruption_errors(table, {"a": 0.8, "b": 0.5}, 0.4)["complete"] is True  # type: ignore[index]
    assert corruption_errors(table, {}) is None and corruption_errors(table, {"c": 0.7}) is None

    # AlexNet itself scores mCE = relative mCE = 100 against its own errors
    n = 10**6
    alexnet = [{"corruption": "clean", "severity": 0, "n": n, "correct": round((1 - ALEXNET_CLEAN_ERROR) * n)}]
    alexnet += [
        {"corruption": c, "severity": s, "n": n, "correct": round((1 - e) * n)}
        for c, e in ALEXNET_ERRORS.items()
        for s in range(1, 6)
    ]
    result = corruption_errors(alexnet, ALEXNET_ERRORS, ALEXNET_CLEAN_ERROR)
    assert result is not None and result["complete"] and len(result["corruptions"]) == 15
    assert result["mCE"] == pytest.approx(100, abs=1e-3) and result["relative_mCE"] == pytest.approx(100, abs=1e-2)


def save_authors_imagenet_sdnet(path: Path) -> torch.nn.Module:
    """An sdnet18 with the ImageNet stem, saved as the authors' ``model_best.pth.tar`` (a bare state_dict)."""
    torch.manual_seed(0)
    network = create_model("sdnet18", "imagenet", width=8).network
    torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, path)
    return network


@pytest.mark.slow
def test_imagenet_eval_generated_release_sweep_attack(imagenet_dir: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model_best.pth.tar"
    save_authors_imagenet_sdnet(checkpoint)
    model, info = load_model("sdnet18", checkpoint, "imagenet")
    assert (info.stem, info.num_classes, info.width) == ("imagenet", 1000, 8)
    assert tuple(model.network.layer0[0].dn.weight.shape) == (8, 3, 7, 7)

    cache, out = tmp_path / "cache", tmp_path / "out"
    common = [
        "--model",
        "sdnet18",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "imagenet",
        "--data-dir",
        str(imagenet_dir),
    ]
    result = run(
        "eval", *common, "-c", "gaussian_noise", "-s", "all", "-n", "5", "--cache-dir", str(cache), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval-sdnet18.json").read_text())
    rows = report["rows"]
    assert [(r["corruption"], r["severity"]) for r in rows][:2] == [("clean", 0), ("gaussian_noise", 1)]
    assert len(rows) == 7 and all(r["n"] == 5 for r in rows[:6]) and {r["dataset"] for r in rows} == {"imagenet"}
    meta = report["meta"]
    assert meta["data_source"]["source"] == "generated" and meta["data_source"]["benchmark"] == "ImageNet-C"
    summary = meta["corruption_errors"]
    assert summary["corruptions"] == ["gaussian_noise"] and summary["complete"] is False
    expected = 100 * np.mean([1 - r["correct"] / 5 for r in rows[1:6]]) / ALEXNET_ERRORS["gaussian_noise"]
    assert summary["mCE"] == pytest.approx(expected)
    assert "mCE" in result.output

    # the cache is the release layout, 224x224 PNGs; recount severity 5 with plain forwards
    root = Path(meta["data_source"]["path"])
    files = sorted((root / "gaussian_noise" / "5").rglob("*.png"))
    assert len(files) == 5 and sum(1 for _ in root.rglob("*.png")) == 25
    images, labels = load_imagenet(imagenet_dir, "test")
    cell = np.stack(
        [
            np.asarray(Image.open(root / "gaussian_noise" / "5" / p.parent.name / f"{p.stem}.png"))
            for p in images.paths[:5]
        ]
    )
    assert cell.shape == (5, 224, 224, 3)
    with torch.no_grad():
        logits = model(torch.from_numpy(cell).permute(0, 3, 1, 2).float() / 255)
    assert rows[5]["correct"] == int((logits.argmax(1).numpy() == labels[:5]).sum())

    # an official-style release (JPEG files, no metadata) is read by the same image names
    release = tmp_path / "ImageNet-C"
    for png in root.rglob("*.png"):
        target = release / png.relative_to(root).with_suffix(".JPEG")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).save(target, quality=95)
    result = run(
        "eval",
        *common,
        "-c",
        "gaussian_noise",
        "-s",
        "5",
        "-n",
        "5",
        "--imagenet-c-dir",
        str(release),
        "--out",
        str(out),
        "--name",
        "release",
    )
    assert result.exit_code == 0, result.output
    official = json.loads((out / "release.json").read_text())
    assert official["meta"]["data_source"]["source"] == "official" and official["rows"][1]["n"] == 5
    result = run(
        "eval", *common, "-c", "fog", "-s", "5", "-n", "5", "--imagenet-c-dir", str(release), "--out", str(out)
    )
    assert result.exit_code == 2 and "has no image for" in result.output

    result = run(
        "sweep-lambda",
        *common,
        "-c",
        "gaussian_noise",
        "-s",
        "5",
        "-n",
        "5",
        "--lams",
        "0.1,0.8",
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        "--fit",
        "--fit-n",
        "5",
        "--fit-corruption",
        "gaussian_noise",
        "--fit-corruption",
        "contrast",
        "--calibration-out",
        str(tmp_path / "cal.json"),
    )
    assert result.exit_code == 0, result.output
    sweep = json.loads((out / "sweep-lambda-sdnet18.json").read_text())
    assert len(sweep["rows"]) == 2 * 2 and json.loads((tmp_path / "cal.json").read_text())["n"] == 5

    result = run("attack", *common, "--attack", "pgd", "--steps", "1", "--eps", "1/255", "-n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    attack = json.loads((out / "attack-sdnet18-pgd.json").read_text())["rows"]
    assert attack[0]["dataset"] == "imagenet" and attack[0]["n"] == 2


@pytest.mark.slow
def test_imagenet_make_c_is_seeded_per_image(imagenet_dir: Path, tmp_path: Path) -> None:
    args = ["make-c", "--dataset", "imagenet", "--data-dir", str(imagenet_dir), "-c", "shot_noise", "--workers", "1"]
    assert run(*args, "-n", "2", "--out", str(tmp_path / "a")).exit_code == 0
    result = run(*args, "-n", "4", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    a, b = sorted((tmp_path / "a").rglob("*.png")), sorted((tmp_path / "b").rglob("*.png"))
    assert len(a) == 10 and len(b) == 20
    for path in a:  # an image's pixels do not depend on which other images were generated
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    assert json.loads((tmp_path / "a" / "metadata.json").read_text())["strengths"] == "ImageNet-C (imagecorruptions)"
    assert run(*args, "--seed", "1", "-n", "2", "--out", str(tmp_path / "a")).exit_code == 2  # no mixing of seeds


@pytest.mark.slow
def test_torchvision_baselines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelError, match="resnet18-f37072fd.pth") as missing:
        load_model("tv_resnet18", dataset="imagenet")
    assert "never downloads" in str(missing.value) and "checkpoint file" in str(missing.value)
    with pytest.raises(ModelError, match="dataset imagenet"):
        create_model("tv_resnet50", "cifar10")

    torch.manual_seed(0)
    network = create_model("tv_resnet18", "imagenet").network
    weights = tmp_path / "resnet18.pth"
    torch.save(network.state_dict(), weights)
    model, info = load_model("tv_resnet18", weights, "imagenet")
    x = torch.rand(2, 3, 224, 224)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        torch.testing.assert_close(model(x), network.eval()((x - mean) / std))
    assert info.lam is None and info.num_classes == 1000 and model.csc_layers == []

    # the hub cache: a file whose name does not carry the start of its sha256 is refused
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(weights, hub / "resnet18-f37072fd.pth")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model("tv_resnet18", dataset="imagenet")
    named = hub / f"resnet18-{registry.sha256_of(weights)[:8]}.pth"
    shutil.copy(weights, named)
    monkeypatch.setattr(registry, "torchvision_weights_file", lambda name: named)
    _, cached = load_model("tv_resnet18", dataset="imagenet")
    assert cached.checkpoint == str(named) and cached.sha256 == registry.sha256_of(weights)


def test_dataset_usage_errors_exit_2(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = run("eval", "--checkpoint", str(tiny_checkpoint), "--dataset", "mnist", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "unknown dataset 'mnist'" in result.output
    result = run("train", "--model", "sdnet18", "--dataset", "imagenet", "--out", str(tmp_path / "w.safetensors"))
    assert result.exit_code == 2 and "CIFAR recipe" in result.output
    result = run(
        "eval",
        "--model",
        "tv_resnet18",
        "--checkpoint",
        str(tiny_checkpoint),
        "--dataset",
        "imagenet",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2 and "10 output classes" in result.output
    assert not (tmp_path / "o").exists()
