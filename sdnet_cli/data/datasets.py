"""What the rest of the program needs to know about each dataset, in one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stem: str  # the architecture stem the paper uses for it: "cifar" or "imagenet"
    image_size: int


CIFAR10 = DatasetSpec("cifar10", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar", 32)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (CIFAR10,)}


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None
