"""The unlearning-vs-retraining experiment suite (``certunlearn experiment``).

:mod:`.presets` (set-ups and fair tuning grids), :mod:`.runner` (the resumable runner),
:mod:`.metrics` (epochs to target, the tuning score), :mod:`.summary` and :mod:`.figures` (the
outputs), :mod:`.cli` (the subcommand). Nothing is imported here, so that registering the
subcommand costs the ``certunlearn`` console script no numpy or torch import.
"""
