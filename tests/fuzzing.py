"""Shared hypothesis settings for the fuzz tests (tests/test_fuzz_*.py, docs/FUZZING.md).

CI runs ``FUZZ_EXAMPLES`` cases per property (150). A long run sets
``KAISAR_FUZZ_EXAMPLES=20000`` (or any count); ``fuzz(n)`` scales a property that is
slower per case by the same factor. Hypothesis' own statistics
(``--hypothesis-show-statistics``) report the cases actually run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 150
FUZZ_EXAMPLES = int(os.environ.get("KAISAR_FUZZ_EXAMPLES", CI_EXAMPLES))


def fuzz(ci_examples: int = CI_EXAMPLES):
    """Settings for one property: ``ci_examples`` in CI, scaled up for a long run."""
    n = max(1, ci_examples * FUZZ_EXAMPLES // CI_EXAMPLES)
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        database=None,
    )
