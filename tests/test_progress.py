"""Progress text: rates and ETAs stay readable from a slow CPU oracle to a fast endpoint."""

import pytest

from rtune.progress import RunProgress, duration_text, rate_text


@pytest.mark.parametrize(("rate", "text"), [
    (25.0, "25.00 rec/s"), (0.1, "0.10 rec/s"), (0.01, "0.60 rec/min"), (0.0002, "0.72 rec/h"),
])
def test_rate_picks_a_unit_that_shows_digits(rate, text):
    assert rate_text(rate) == text


@pytest.mark.parametrize(("seconds", "text"), [(59.9, "59s"), (984, "16m24s"), (40000, "11h06m")])
def test_duration(seconds, text):
    assert duration_text(seconds) == text


def test_line_has_records_rate_eta_tokens_and_cost():
    progress = RunProgress(10, enabled=False, label="recycle")
    progress.advance()
    line = progress.line()
    for part in ("recycle: 1/10 records", "ETA", "calls", "tok in", "$"):
        assert part in line
