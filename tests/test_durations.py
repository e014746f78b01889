"""Durations as the CLI and `hy.worker(retention=...)` take them."""

from __future__ import annotations

import pytest

from hyrex_like.config import WorkerOptions
from hyrex_like.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("12h", 43_200.0),
        ("7d", 604_800.0),
        ("2w", 1_209_600.0),
        ("45", 45.0),
        ("1.5h", 5400.0),
        (" 7D ", 604_800.0),
    ],
)
def test_parse_duration_reads_a_number_and_one_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7x", "-1s", "1h30m", "inf", "nan", "d", "1e3", "7 days"])
def test_parse_duration_refuses_other_forms_naming_the_text_and_the_forms(text):
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "30m, 12h, 7d" in message


def test_parse_duration_refuses_durations_postgresql_cannot_subtract():
    with pytest.raises(ValueError, match="at most 36500d"):
        parse_duration("36501d")


def test_format_duration_writes_the_largest_even_unit_up_to_days():
    assert [format_duration(s) for s in (0, 90, 1800, 43_200, 604_800, 5400, 1.5)] == [
        "0s",
        "90s",
        "30m",
        "12h",
        "7d",
        "90m",
        "1.5s",
    ]


def test_worker_options_retention_takes_seconds_or_a_duration():
    assert WorkerOptions().retention is None
    assert WorkerOptions(retention="7d").retention == 604_800.0
    assert WorkerOptions(retention=30).retention == 30.0


@pytest.mark.parametrize(("value", "words"), [("0s", "greater than 0"), ("soon", "'soon'")])
def test_worker_options_retention_refuses_nothing_or_nonsense(value, words):
    with pytest.raises(ValueError, match=words):
        WorkerOptions(retention=value)
