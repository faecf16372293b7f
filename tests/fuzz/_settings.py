"""How much the state machines explore.

``make test`` runs each machine on the same examples every time (``derandomize``): the suite
passes or fails on the code alone, never on a case it happened to draw this once. To search
further, ``FUZZ_EXAMPLES=N`` runs N random examples of each machine instead, for example::

    FUZZ_EXAMPLES=2000 make test ARGS=tests/fuzz

A failure prints the steps that reproduce it; turn them into a test of its own.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = "FUZZ_EXAMPLES"


def machine_settings(examples: int, steps: int) -> settings:
    """``examples`` fixed examples of at most ``steps`` steps, or ``FUZZ_EXAMPLES`` random ones."""
    searching = os.environ.get(FUZZ_EXAMPLES, "").strip()
    return settings(
        max_examples=int(searching) if searching else examples,
        stateful_step_count=steps,
        derandomize=not searching,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
