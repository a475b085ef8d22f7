"""Models: the CSC layer, ResNet/SDNet builders, the deployed Classifier, and checkpoints."""

from .checkpoints import CheckpointError, save_checkpoint
from .classifier import Classifier, LambdaPolicy
from .csc import CSCLayer, csc_layers, require_csc
from .inputs import MODEL_INPUTS, model_input
from .record import ModelError, ModelInfo, state_dict_sha256
from .registry import ARCHITECTURES, create_model, load_model, register_architecture

__all__ = [
    "ARCHITECTURES",
    "CSCLayer",
    "MODEL_INPUTS",
    "CheckpointError",
    "Classifier",
    "LambdaPolicy",
    "ModelError",
    "ModelInfo",
    "create_model",
    "csc_layers",
    "load_model",
    "model_input",
    "register_architecture",
    "require_csc",
    "save_checkpoint",
    "state_dict_sha256",
]
