"""Example counts for hypothesis tests that set their own ``max_examples``.

A test's own ``@settings(max_examples=n)`` overrides the loaded profile, so such tests ask
:func:`examples` instead: ``n`` under the default ``ci`` profile, ten times ``n`` under
``HYPOTHESIS_PROFILE=thorough``.
"""
import os

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1


def examples(n: int) -> int:
    return n * SCALE
