"""The built-in model zoo: real Model Trees trained on the CPU and written as a local hub."""

from probex_core.zoo.generate import ZooTrainingError, generate_zoo
from probex_core.zoo.presets import PRESETS, Splits, TreeSpec, ZooPreset
from probex_core.zoo.summary import format_summary

__all__ = [
    "PRESETS",
    "Splits",
    "TreeSpec",
    "ZooPreset",
    "ZooTrainingError",
    "format_summary",
    "generate_zoo",
]
