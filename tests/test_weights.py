"""Where shipped checkpoints are found (argument, $SDNET_WEIGHTS, the package's own), the sha256 check
wherever they come from, and a wheel that carries them so a non-editable install needs no checkout."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import sdnet_cli
from sdnet_cli.models import CheckpointError, ModelError, create_model, load_model, save_checkpoint
from sdnet_cli.models.weights import packaged_weights_dir, read_manifest, resolve_weights_dir

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_WEIGHTS = ROOT / "weights"


def ship(folder: Path, name: str, seed: int) -> str:
    """A one-entry manifest in ``folder`` whose default resnet18 is a width-4 checkpoint; returns its sha256."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_checkpoint(create_model("resnet18", width=4).network, path, {"architecture": "resnet18"})
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = {
        "name": name,
        "file": path.name,
        "architecture": "resnet18",
        "dataset": "cifar10",
        "sha256": digest,
        "default": True,
    }
    (folder / "manifest.json").write_text(json.dumps({"models": [entry]}))
    return digest


def test_lookup_order_is_argument_then_environment_then_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    explicit_sha, env_sha = ship(explicit, "mine", seed=1), ship(from_env, "theirs", seed=2)
    assert explicit_sha != env_sha

    monkeypatch.delenv("SDNET_WEIGHTS", raising=False)
    assert resolve_weights_dir() == packaged_weights_dir()
    monkeypatch.setenv("SDNET_WEIGHTS", str(from_env))  # after import: the lookup runs at each call
    assert resolve_weights_dir() == from_env
    _, info = load_model("resnet18")
    assert (info.name, info.sha256, Path(info.checkpoint)) == ("theirs", env_sha, from_env / "theirs.safetensors")
    _, info = load_model("resnet18", weights_dir=explicit)
    assert (info.name, info.sha256, Path(info.checkpoint)) == ("mine", explicit_sha, explicit / "mine.safetensors")
    with pytest.raises(ModelError, match=f"no shipped cifar10 checkpoint for 'resnet18' in {re.escape(str(tmp_path))}"):
        load_model("resnet18", weights_dir=tmp_path)  # no manifest there: an explicit folder is not mixed with others


def test_packaged_weights_are_the_checkouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported from this checkout, the package's weights are weights/ itself (where `sdnet train` writes);
    imported from an installed wheel, they are a copy of it inside the package."""
    monkeypatch.delenv("SDNET_WEIGHTS", raising=False)
    packaged = packaged_weights_dir()
    if Path(sdnet_cli.__file__).resolve().parents[1] == ROOT:
        assert packaged == CHECKOUT_WEIGHTS
    else:
        assert packaged == Path(sdnet_cli.__file__).resolve().parent / "shipped_weights"
    assert (packaged / "manifest.json").read_bytes() == (CHECKOUT_WEIGHTS / "manifest.json").read_bytes()
    assert {e["name"] for e in read_manifest()} >= {"sdnet18-w32-cifar10", "resnet18-w32-cifar10"}


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_tampered_or_missing_shipped_file_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    folder = tmp_path / "weights"
    ship(folder, "r", seed=3)
    monkeypatch.setenv("SDNET_WEIGHTS", str(folder) if source == "environment" else str(tmp_path / "elsewhere"))
    weights_dir = folder if source == "argument" else None
    path = folder / "r.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + " does not match .*manifest.json") as refused:
        load_model("r", weights_dir=weights_dir)
    assert refused.value.parameter == "weights_dir"
    path.unlink()
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + " is missing but .*manifest.json lists it"):
        load_model("resnet18", weights_dir=weights_dir)


def test_unreadable_manifest_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(
        CheckpointError, match="manifest " + re.escape(str(tmp_path / "manifest.json")) + " is not JSON"
    ):
        load_model("sdnet18", weights_dir=tmp_path)


def _can_build_wheels() -> bool:
    """pip, and setuptools >= 70.1 (which builds wheels itself) or the separate ``wheel`` package.

    Read from the installed metadata: importing setuptools here would clash with the distutils already loaded.
    """

    def version(name: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(part) for part in re.findall(r"\d+", importlib.metadata.version(name))[:2])
        except importlib.metadata.PackageNotFoundError:
            return None

    setuptools = version("setuptools")
    return (
        version("pip") is not None
        and setuptools is not None
        and (setuptools >= (70, 1) or version("wheel") is not None)
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not _can_build_wheels(), reason="needs pip and setuptools (>= 70.1, or the wheel package) to build a wheel"
)
def test_wheel_carries_every_module_and_shipped_file_and_resolves_them_when_installed(tmp_path: Path) -> None:
    """`pip install .` (not -e) must find the shipped models: build the wheel from a copy of the sources
    (so the checkout gets no build/ folder), check its contents, install it into a plain folder and load
    the default sdnet18 from a process whose working directory is not the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.lock", "*.resume.pt", "*.tmp")
    for name in ("sdnet_cli", "weights"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("sdnet_cli-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("sdnet_cli/shipped_weights/manifest.json"))
        for entry in manifest["models"]:
            assert (
                hashlib.sha256(archive.read(f"sdnet_cli/shipped_weights/{entry['file']}")).hexdigest()
                == entry["sha256"]
            )
    modules = {p.relative_to(source).as_posix() for p in (source / "sdnet_cli").rglob("*.py")}
    assert modules <= names, (
        f"modules missing from the wheel (list their package in pyproject.toml): {sorted(modules - names)}"
    )
    shipped = {
        f"sdnet_cli/shipped_weights/{e[key]}" for e in manifest["models"] for key in ("file", "calibration") if key in e
    }
    assert {
        "sdnet_cli/shipped_weights/sdnet18-w32-cifar10.safetensors",
        "sdnet_cli/shipped_weights/resnet18-w32-cifar10.safetensors",
    } <= shipped
    assert shipped <= names
    assert manifest == json.loads((CHECKOUT_WEIGHTS / "manifest.json").read_text())

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SDNET_WEIGHTS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    probe = (
        "import json, sdnet_cli; from sdnet_cli.models import load_model; _, info = load_model('sdnet18'); "
        "print(json.dumps({'package': sdnet_cli.__file__, 'checkpoint': info.checkpoint, 'name': info.name}))"
    )
    shutil.rmtree(source)  # nothing may be read from the sources the wheel was built from
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["name"] == "sdnet18-w32-cifar10"
    assert Path(found["package"]).resolve() == (site / "sdnet_cli" / "__init__.py").resolve()
    assert (
        Path(found["checkpoint"]).resolve()
        == (site / "sdnet_cli" / "shipped_weights" / "sdnet18-w32-cifar10.safetensors").resolve()
    )
