"""A cron schedule's ticks through daylight saving, from the function beat's sweep uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

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
    ("3,7", ["Wed", "Sun", "Wed"]),
    # stepped and one-day ranges up to 7 were still refused
    ("1-7/2", ["Mon", "Wed", "Fri", "Sun", "Mon"]), ("5-7/2", ["Fri", "Sun", "Fri"]),
    ("7-7", ["Sun", "Sun", "Sun"])])
def test_sunday_is_7_as_well_as_0_as_cron_has_it(weekday, days):
    """Celery's crontab refused 7 ("Invalid end range: 7 > 6"), so `0 9 * * 1-7` or
    `--cron '0 9 * * 7'` was refused with a message about a range it did not have."""
    definition, seen = {"cron": f"0 9 * * {weekday}", "timezone": "UTC"}, []
    t = datetime(2027, 1, 4, tzinfo=UTC).timestamp()  # a Monday, at midnight
    for _ in days:
        t = next_tick(definition, t)
        seen.append(datetime.fromtimestamp(t, UTC).strftime("%a"))
    assert seen == days


def test_the_hour_spring_forward_skips_is_skipped_and_nothing_else():
    assert ticks("0 * * * *", datetime(2027, 3, 27, 22, 0, tzinfo=UTC), 4) == [
        "27 23:00", "28 00:00", "28 01:00", "28 02:00"]


def test_a_fixed_time_in_the_hour_spring_skips_runs_at_the_gap_s_end_as_cron_runs_it():
    """2027-03-28, 02:00 CET: Paris's clocks jump to 03:00 CEST (01:00 UTC). 02:30 never
    comes that night: the line runs at 03:30 CEST (01:30 UTC), once, as vixie cron runs a
    job whose time the jump skips; the README said it had no tick."""
    assert ticks("30 2 * * *", datetime(2027, 3, 27, 22, 0, tzinfo=UTC), 2) == [
        "28 01:30", "29 00:30"]


def _matches(cron: str, local: datetime) -> bool:
    """Whether ``cron`` (numbers, ``*``, ``*/n``, lists) ticks at the local minute ``local``."""
    def hit(field: str, value: int, first: int = 0) -> bool:
        for part in field.split(","):  # */n from the field's first value: days 1, 3, 5...
            if part == "*" or (part.startswith("*/") and (value - first) % int(part[2:]) == 0):
                return True
            if part.isdigit() and int(part) == value:
                return True
        return False
    minute, hour, day, month, weekday = cron.split()
    return (hit(minute, local.minute) and hit(hour, local.hour) and hit(day, local.day, 1)
            and hit(month, local.month, 1) and hit(weekday, local.isoweekday() % 7))


@pytest.mark.parametrize("cron", ["0 0 1 * *", "0 0 1,15 * *", "30 * */2 * *"])
@pytest.mark.parametrize("tz", ["America/Los_Angeles", "America/New_York", "Asia/Tokyo"])
def test_a_schedule_west_of_utc_ticks_on_the_first_days_of_each_month(cron, tz):
    """Celery tried each day in the app's zone (UTC): west of UTC the 1st, read as UTC,
    came before the evening of the month's last day, and `0 0 1 * *` in Los Angeles went
    from September 30 to November 1 (so did beat's sweep, from each tick it fired)."""
    zone = ZoneInfo(tz)
    for month in range(1, 13):  # from two days before each month's end to two days after
        start = datetime(2026, month, 1, tzinfo=zone).timestamp() - 2 * 86400
        minutes = range(int(start) // 60 * 60 + 60, int(start) + 4 * 86400, 60)
        expected = [t for t in minutes if _matches(cron, datetime.fromtimestamp(t, zone))]
        got, t = [], start
        while (t := next_tick({"cron": cron, "timezone": tz}, t)) < start + 4 * 86400:
            got.append(t)
        assert got == expected, (month, [datetime.fromtimestamp(x, zone) for x in got])
        for after in range(int(start), int(expected[-1]), 3 * 3600):  # made or resumed then
            first = next(t for t in expected if t > after)
            assert next_tick({"cron": cron, "timezone": tz}, after) == first, (
                datetime.fromtimestamp(after, zone))


@pytest.mark.parametrize("tz, fall_back", [
    ("America/St_Johns", datetime(2026, 11, 1, 4, 30, tzinfo=UTC)),  # 02:00 NDT -> 01:00 NST
    ("Australia/Adelaide", datetime(2026, 4, 4, 16, 30, tzinfo=UTC)),  # 03:00 ACDT -> 02:00
    ("Pacific/Chatham", datetime(2026, 4, 4, 14, 0, tzinfo=UTC)),  # 03:45 -> 02:45
])
def test_every_quarter_hour_ticks_through_the_repeated_hour_off_the_whole_hour(tz, fall_back):
    """The repeated hour was looked for at whole UTC hours only: half or three quarters of
    an hour off UTC, `*/15` lost the first ticks of the repeated hour's second pass."""
    start = fall_back - timedelta(hours=2)
    first = int(start.timestamp()) // 900 * 900 + 900
    every_quarter = [datetime.fromtimestamp(first + 900 * i, UTC).strftime("%d %H:%M")
                     for i in range(16)]
    assert ticks("*/15 * * * *", start, 16, tz) == every_quarter
