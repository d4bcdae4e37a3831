"""Trigger reverse-engineering and outlier analysis."""
from neuralcleanse.detection.config import ReverseConfig
from neuralcleanse.detection.outlier import OutlierResult, mad_outliers
from neuralcleanse.detection.presets import PRESETS, ScanPlan, get_preset
from neuralcleanse.detection.result import ScanResult
from neuralcleanse.detection.reverse_engineer import TriggerReverseEngineer
from neuralcleanse.detection.scanner import NeuralCleanse

__all__ = [
    "NeuralCleanse", "OutlierResult", "PRESETS", "ReverseConfig", "ScanPlan", "ScanResult",
    "TriggerReverseEngineer", "get_preset", "mad_outliers",
]
