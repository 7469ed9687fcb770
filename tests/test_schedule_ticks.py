"""A cron schedule's ticks through daylight saving, from the function beat's sweep uses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flowkit.engine.schedules import next_tick


def ticks(cron: str, start: datetime, n: int, tz: str = "Europe/Paris") -> list[str]:
    """The next ``n`` ticks after ``start``, as UTC day and time."""
    definition, t, out = {"cron": cron, "timezone": tz}, start.timestamp(), []
    for _ in range(n):
        t = next_tick(definition, t)
        out.append(datetime.fromtimestamp(t, UTC).strftime("%d %H:%M"))
    return out


#: 2027-10-31, 03:00 CEST: Paris's clocks go back to 02:00 CET (01:00 UTC).
FALL_BACK_EVE = datetime(2027, 10, 30, 22, 0, tzinfo=UTC)


def test_an_hourly_schedule_ticks_every_real_hour_through_the_repeated_hour():
    """It ticked at 00:00 and 02:00 UTC, not at 01:00: two real hours without a run."""
    assert ticks("0 * * * *", FALL_BACK_EVE, 6) == [
        "30 23:00", "31 00:00", "31 01:00", "31 02:00", "31 03:00", "31 04:00"]


@pytest.mark.parametrize("start", [FALL_BACK_EVE, datetime(2027, 10, 31, 1, 10, tzinfo=UTC)])
def test_a_half_hourly_schedule_loses_no_tick_in_the_repeated_hour(start):
    """From before the change, and from inside the repeated hour (whose wall clock read as
    its first pass, an hour earlier)."""
    first = int(start.timestamp()) // 1800 * 1800 + 1800
    every_half_hour = [datetime.fromtimestamp(first + 1800 * i, UTC).strftime("%d %H:%M")
                       for i in range(12)]
    assert ticks("*/30 * * * *", start, 12) == every_half_hour


def test_a_fixed_hour_in_the_repeated_hour_runs_once_that_night():
    assert ticks("30 2 * * *", FALL_BACK_EVE, 2) == ["31 00:30", "01 01:30"]


@pytest.mark.parametrize("weekday, days", [
    ("7", ["Sun", "Sun", "Sun"]), ("0", ["Sun", "Sun", "Sun"]),
    ("5-7", ["Fri", "Sat", "Sun"]), ("1-7", ["Mon", "Tue", "Wed"]),
    ("3,7", ["Wed", "Sun", "Wed"])])
def test_sunday_is_7_as_well_as_0_as_cron_has_it(weekday, days):
    """Celery's crontab refused 7 ("Invalid end range: 7 > 6"), so `0 9 * * 1-7` or
    `--cron '0 9 * * 7'` was refused with a message about a range it did not have."""
    definition, seen = {"cron": f"0 9 * * {weekday}", "timezone": "UTC"}, []
    t = datetime(2027, 1, 4, tzinfo=UTC).timestamp()  # a Monday, at midnight
    for _ in range(3):
        t = next_tick(definition, t)
        seen.append(datetime.fromtimestamp(t, UTC).strftime("%a"))
    assert seen == days


def test_the_hour_spring_forward_skips_is_skipped_and_nothing_else():
    assert ticks("0 * * * *", datetime(2027, 3, 27, 22, 0, tzinfo=UTC), 4) == [
        "27 23:00", "28 00:00", "28 01:00", "28 02:00"]
