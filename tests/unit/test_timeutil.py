from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mlops_operator.timeutil import from_rfc3339, parse_duration, to_rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "10x", "m10", "1h 30m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_rfc3339_round_trip():
    moment = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert to_rfc3339(moment) == "2026-05-04T03:02:01Z"
    assert from_rfc3339("2026-05-04T03:02:01Z") == moment
