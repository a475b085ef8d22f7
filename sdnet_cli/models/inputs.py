"""What a network trained on each dataset takes in and puts out: normalisation, class count, stem.

These belong to the weights, not to the images: a checkpoint expects the normalisation it was
trained with whatever folder the test images come from. Keyed by the dataset names of
``data.datasets`` (``tests/test_layers.py`` checks that both tables agree on classes and stems).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .resnet import Stem

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInput:
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stem: Stem  # the architecture stem the paper uses for it
    image_size: int  # height = width of the test images the network sees


MODEL_INPUTS: dict[str, ModelInput] = {
    "cifar10": ModelInput(10, CIFAR_MEAN, CIFAR_STD, "cifar", 32),
    # The authors trained CIFAR-100 with CIFAR-10's normalisation (their train.py), so their
    # checkpoints, and models trained here to match them, expect those numbers.
    "cifar100": ModelInput(100, CIFAR_MEAN, CIFAR_STD, "cifar", 32),
    "imagenet": ModelInput(1000, IMAGENET_MEAN, IMAGENET_STD, "imagenet", 224),
}


def model_input(dataset: str) -> ModelInput:
    try:
        return MODEL_INPUTS[dataset]
    except KeyError:
        raise UsageError(
            f"unknown dataset {dataset!r}; choose one of: {', '.join(MODEL_INPUTS)}", parameter="dataset"
        ) from None
