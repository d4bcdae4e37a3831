"""Mitigation from a scan's reversed triggers: unlearning, input filter, neuron pruning.

    >>> result = mitigate(model, scan, data, Unlearner())       # or InputFilter(), NeuronPruner()
    >>> result.before, result.after, result.verdict, result.model
"""
from neuralcleanse.data.trigger import Backdoor, known_backdoors
from neuralcleanse.metrics import Measurement, measure
from neuralcleanse.mitigation.backdoors import NothingToMitigate, reversed_backdoors
from neuralcleanse.mitigation.base import Mitigation, MitigationResult, NotFittedError
from neuralcleanse.mitigation.input_filter import FilteredClassifier, FilterRates, InputFilter
from neuralcleanse.mitigation.profile import ActivationProfile, profile_activations
from neuralcleanse.mitigation.pruning import NeuronPruner, PruningResult, PruningStep
from neuralcleanse.mitigation.runner import DEFAULT_METHOD, METHODS, make_method, mitigate
from neuralcleanse.mitigation.unlearning import Unlearner, UnlearningResult

__all__ = [
    "DEFAULT_METHOD", "METHODS", "ActivationProfile", "Backdoor", "FilterRates", "FilteredClassifier", "InputFilter",
    "Measurement", "Mitigation", "MitigationResult", "NotFittedError", "NeuronPruner", "NothingToMitigate",
    "PruningResult", "PruningStep", "Unlearner", "UnlearningResult", "known_backdoors", "make_method", "measure",
    "mitigate", "profile_activations", "reversed_backdoors",
]
