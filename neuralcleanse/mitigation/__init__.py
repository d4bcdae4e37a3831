"""Mitigation from a scan's reversed triggers: input filter, neuron pruning, unlearning."""
from neuralcleanse.data.trigger import Backdoor, known_backdoors
from neuralcleanse.metrics import Measurement, measure
from neuralcleanse.mitigation.backdoors import NothingToMitigate, reversed_backdoors
from neuralcleanse.mitigation.base import Mitigation, MitigationResult, NotFittedError
from neuralcleanse.mitigation.input_filter import FilteredClassifier, FilterRates, InputFilter
from neuralcleanse.mitigation.profile import ActivationProfile, profile_activations
from neuralcleanse.mitigation.pruning import NeuronPruner, PruningResult, PruningStep
from neuralcleanse.mitigation.runner import METHODS, MitigationOutcome, mitigate
from neuralcleanse.mitigation.unlearning import Unlearner, UnlearningResult

__all__ = [
    "METHODS", "ActivationProfile", "Backdoor", "FilterRates", "FilteredClassifier", "InputFilter", "Measurement",
    "Mitigation", "MitigationOutcome", "MitigationResult", "NotFittedError", "NeuronPruner", "NothingToMitigate", "PruningResult", "PruningStep", "Unlearner",
    "UnlearningResult", "known_backdoors", "measure", "mitigate", "profile_activations", "reversed_backdoors",
]
