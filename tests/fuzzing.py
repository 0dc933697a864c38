"""Shared hypothesis settings for the fuzz tests (tests/test_fuzz_*.py, docs/FUZZING.md).

Each property is written with its count at scale 150 (``@fuzz(300)`` for a cheap one,
``@fuzz(40)`` for an expensive one). CI runs at scale ``KAISAR_FUZZ_EXAMPLES`` = 100,
i.e. two thirds of the written counts; a long run sets ``KAISAR_FUZZ_EXAMPLES=1500``
(ten times the written counts) or any other scale. Hypothesis' own statistics
(``--hypothesis-show-statistics``) report the cases actually run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 150  # the scale the per-test counts are written at
FUZZ_EXAMPLES = int(os.environ.get("KAISAR_FUZZ_EXAMPLES", 100))  # CI: 2/3 of the written counts


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
