"""Shared test configuration.

Hypothesis runs derandomized (the same examples every run, so CI is reproducible) with no
per-example deadline: mpmath at 50+ digits is slow on the first call of a code path.
`HYPOTHESIS_PROFILE=thorough` runs random examples, more of them (tests with their own count
scale it through `tests/hypothesis_budget.py`).
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
