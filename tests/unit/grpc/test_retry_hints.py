"""Refused callers are given retry times one after another, not all the same one."""

from __future__ import annotations

import pytest

from router.grpc.retry_hints import Appointments, MeanDuration


def test_callers_refused_together_get_successive_turns():
    appointments = Appointments()
    delays = [appointments.delay(10.0, earliest_s=0.1, spacing_s=0.05) for _ in range(4)]
    assert delays == pytest.approx([0.1, 0.15, 0.2, 0.25])


def test_after_the_burst_the_delay_is_the_earliest_again():
    appointments = Appointments()
    for _ in range(10):
        appointments.delay(0.0, 0.1, 0.1)
    assert appointments.delay(5.0, 0.1, 0.1) == pytest.approx(0.1)


def test_no_delay_passes_the_cap():
    appointments = Appointments(max_delay_s=1.0)
    assert max(appointments.delay(0.0, 0.5, 0.5) for _ in range(10)) == 1.0


def test_the_mean_duration_follows_what_it_is_given():
    mean = MeanDuration(initial_s=0.1, weight=0.5)
    for _ in range(20):
        mean.add(1.0)
    assert 0.99 < mean.value <= 1.0
