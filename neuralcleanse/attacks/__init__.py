"""Attacks that make infected models. The triggers they stamp live in neuralcleanse.data.trigger, shared with
detection and mitigation, and are offered here too."""
from neuralcleanse.attacks.badnets import BadNets
from neuralcleanse.attacks.trojan import TrojanAttack, TrojanResult
from neuralcleanse.data.trigger import (AdditiveTrigger, AnyTrigger, Trigger, apply_trigger, blended_trigger,
                                        frequency_trigger, patch_trigger, trigger_from_dict)

__all__ = ["AdditiveTrigger", "AnyTrigger", "BadNets", "Trigger", "TrojanAttack", "TrojanResult", "apply_trigger",
           "blended_trigger", "frequency_trigger", "patch_trigger", "trigger_from_dict"]
