"""Shared pytest fixtures: the real CIFAR-10 data (through $SDNET_DATA) and small checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sdnet_cli.data.cifar import load_cifar10
from sdnet_cli.models import create_model, save_checkpoint


def data_root() -> Path:
    """Folder holding ``cifar-10-batches-py``: $SDNET_DATA, else ../shared/data beside the repo; absolute, so
    tests that change the working folder still find it."""
    env = os.environ.get("SDNET_DATA")
    return Path(env).resolve() if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        raise FileNotFoundError(f"CIFAR-10 not found under {root}; set SDNET_DATA to the folder containing it")
    return root


@pytest.fixture(scope="session")
def cifar_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_cifar10(data_dir, "test", download=False)


@pytest.fixture(scope="session")
def cifar_test_images(cifar_test: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The first 64 CIFAR-10 test images (uint8 [64, 32, 32, 3]) and labels (int64)."""
    images, labels = cifar_test
    return np.ascontiguousarray(images[:64]), labels[:64]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised width-8 sdnet18 saved in our safetensors format."""
    torch.manual_seed(0)
    model = create_model("sdnet18", width=8)
    path = tmp_path_factory.mktemp("ckpt") / "sdnet18-w8.safetensors"
    save_checkpoint(model.network, path, {"architecture": "sdnet18", "width": 8, "lam": 0.1})
    return path
