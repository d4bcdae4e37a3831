"""Attacks that make infected models, and the trigger they share with detection and mitigation."""
from neuralcleanse.attacks.badnets import BadNets
from neuralcleanse.attacks.trigger import Trigger, apply_trigger, patch_trigger

__all__ = ["BadNets", "Trigger", "apply_trigger", "patch_trigger"]
