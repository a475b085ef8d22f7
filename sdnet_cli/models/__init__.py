"""Models: the CSC layer, ResNet/SDNet builders, the deployed Classifier, and checkpoints."""

from .checkpoints import CheckpointError, save_checkpoint
from .classifier import Classifier, LambdaPolicy
from .csc import CSCLayer
from .registry import ARCHITECTURES, ModelError, ModelInfo, create_model, load_model

__all__ = [
    "ARCHITECTURES",
    "CSCLayer",
    "CheckpointError",
    "Classifier",
    "LambdaPolicy",
    "ModelError",
    "ModelInfo",
    "create_model",
    "load_model",
    "save_checkpoint",
]
