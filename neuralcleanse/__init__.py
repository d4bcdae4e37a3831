"""neuralcleanse: find, show and remove backdoors in image classifiers (Neural Cleanse).

    >>> from neuralcleanse import NeuralCleanse, Unlearner, load_dataset, load_model, mitigate
    >>> model, data = load_model("model.pt"), load_dataset("mnist")
    >>> scan = NeuralCleanse().scan(model, data.test)
    >>> scan.verdict, scan.flagged, scan.anomaly_index
    >>> repair = mitigate(model, scan, data, Unlearner())
    >>> repair.before, repair.after, repair.verdict, repair.model
"""
from neuralcleanse._version import __version__
from neuralcleanse.attacks import BadNets, TrojanAttack, TrojanResult
from neuralcleanse.data import ImageDataset, Preprocessing, load_dataset
from neuralcleanse.data.trigger import Backdoor, Trigger, apply_trigger, patch_trigger
from neuralcleanse.detection import NeuralCleanse, ReverseConfig, ScanResult, mad_outliers
from neuralcleanse.errors import InputError
from neuralcleanse.metrics import attack_success_rate, clean_accuracy
from neuralcleanse.mitigation import (InputFilter, MitigationResult, NeuronPruner, Unlearner, mitigate,
                                      reversed_backdoors)
from neuralcleanse.models import Classifier, load_model, save_checkpoint
from neuralcleanse.training import train_model

__all__ = [
    "__version__", "Backdoor", "BadNets", "Classifier", "ImageDataset", "InputError", "InputFilter",
    "MitigationResult", "NeuralCleanse", "NeuronPruner", "Preprocessing", "ReverseConfig", "ScanResult", "Trigger",
    "TrojanAttack", "TrojanResult", "Unlearner", "apply_trigger", "attack_success_rate", "clean_accuracy",
    "load_dataset", "load_model", "mad_outliers", "mitigate", "patch_trigger", "reversed_backdoors",
    "save_checkpoint", "train_model",
]
