"""The unlearning-vs-retraining experiment suite (``certunlearn experiment``).

See :mod:`.presets` for the set-ups and fair tuning, :mod:`.runner` for the resumable runner,
:mod:`.metrics` for epochs to target, :mod:`.summary` and :mod:`.figures` for the outputs.
"""
from .metrics import epochs_to_target, validation_score
from .presets import CERTIFIED, EPS_FREE, METHOD_NAMES, PRESETS, get_preset

__all__ = ["epochs_to_target", "validation_score", "METHOD_NAMES", "CERTIFIED", "EPS_FREE",
           "PRESETS", "get_preset"]
