"""neuralcleanse: find, show and remove backdoors in image classifiers (Neural Cleanse)."""
from neuralcleanse._version import __version__

from neuralcleanse.attacks import BadNets, Trigger, TrojanAttack, TrojanResult, apply_trigger, patch_trigger  # noqa: E402
from neuralcleanse.data import ImageDataset, Preprocessing, load_dataset  # noqa: E402
from neuralcleanse.detection import NeuralCleanse, ReverseConfig, ScanResult, mad_outliers  # noqa: E402
from neuralcleanse.errors import InputError  # noqa: E402
from neuralcleanse.mitigation import (Backdoor, InputFilter, NeuronPruner, Unlearner, mitigate,  # noqa: E402
                                      reversed_backdoors)
from neuralcleanse.metrics import attack_success_rate, clean_accuracy  # noqa: E402
from neuralcleanse.models import Classifier, load_model, save_checkpoint  # noqa: E402
from neuralcleanse.training import train_model  # noqa: E402

__all__ = [
    "Backdoor", "InputFilter", "NeuronPruner", "Unlearner", "mitigate", "reversed_backdoors",
    "BadNets", "Classifier", "ImageDataset", "InputError", "NeuralCleanse", "Preprocessing", "ReverseConfig",
    "ScanResult", "Trigger", "TrojanAttack", "TrojanResult", "apply_trigger", "attack_success_rate", "clean_accuracy",
    "load_dataset", "load_model", "mad_outliers", "patch_trigger", "save_checkpoint", "train_model",
]
