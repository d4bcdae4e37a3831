"""Attacks that make infected models, and the trigger they share with detection and mitigation."""
from neuralcleanse.attacks.badnets import BadNets
from neuralcleanse.attacks.trigger import (AdditiveTrigger, AnyTrigger, Trigger, apply_trigger, blended_trigger,
                                           frequency_trigger, patch_trigger, trigger_from_dict)
from neuralcleanse.attacks.trojan import TrojanAttack, TrojanResult

__all__ = ["AdditiveTrigger", "AnyTrigger", "BadNets", "Trigger", "TrojanAttack", "TrojanResult", "apply_trigger",
           "blended_trigger", "frequency_trigger", "patch_trigger", "trigger_from_dict"]
