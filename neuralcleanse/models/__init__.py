"""Architectures, the Classifier wrapper, checkpoints, loading and training."""
from neuralcleanse.models.architectures import ARCHITECTURES, build_architecture
from neuralcleanse.models.formats.checkpoint import save_checkpoint
from neuralcleanse.models.classifier import Classifier, ModelInfo
from neuralcleanse.models.loading import complete_model_info, load_model

__all__ = [
    "ARCHITECTURES", "Classifier", "ModelInfo", "build_architecture", "complete_model_info",
    "load_model", "save_checkpoint",
]
