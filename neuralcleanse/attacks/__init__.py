"""Attacks that make infected models, and the trigger they share with detection and mitigation."""
from neuralcleanse.attacks.badnets import BadNets
from neuralcleanse.attacks.trigger import Trigger, apply_trigger, patch_trigger
from neuralcleanse.attacks.trojan import TrojanAttack, TrojanResult

__all__ = ["BadNets", "Trigger", "TrojanAttack", "TrojanResult", "apply_trigger", "patch_trigger"]
