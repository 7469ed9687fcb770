"""Flow control, as declared: concurrency keys, rates, priorities and schedules.

These are definitions (what a workflow or a component asks for); the engine enforces
them (:mod:`flowkit.engine.admission`, :mod:`flowkit.engine.schedules`, the executor).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError, ValidationError
from .numbers import is_number, is_whole
from .policy import KEY_RULE, key_text
from .serialization import dumps

#: What a schedule's cron line, id and interval may be (REST and the CLI check the same).
#: Published as JSON Schema patterns (ECMA 262): Python checks them with ``re.fullmatch``,
#: as its ``$`` also matches before a trailing newline (a cron line ending in one made a
#: default id that no URL reaches).
CRON_LINE = r"^[0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+$"
SCHEDULE_ID = r"^(?!/)(?!.*//)(?!.*/(pause|resume)$)(?!(.*/)?\.\.?(/|$))[\x21-\x7e]{1,200}$"
#: What :data:`SCHEDULE_ID` asks for (the API's paths take ``<id>/pause`` for the action;
#: clients drop ``.`` and ``..`` segments from a URL, so such an id was reachable only
#: percent-encoded).
SCHEDULE_ID_RULE = ("1 to 200 printable ASCII characters, no spaces, no // and no leading /, "
                    "no . or .. between slashes, not ending in /pause or /resume")
MAX_EVERY = 366 * 86_400
#: The longest ``delay`` a start may ask for (Python and REST alike): a later start names
#: its time (``start_at``).
MAX_DELAY = 366 * 86_400
#: Priorities a run may ask for: 0 (the default) to 9 (first).
PRIORITIES = range(10)
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_UNIT = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
         "hour": 3600}


def check_priority(priority: int) -> int:
    if not is_whole(priority) or priority not in PRIORITIES:
        raise ConfigError(f"priority must be a whole number from 0 to 9, not {priority!r}.")
    return priority


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` runs of a workflow per key are active (running, or holding a step);
    the rest stay ``queued`` in Redis, admitted in order (higher priority first, then the
    order they came in). The key is the run's owner (``key=None``), a field of its input
    (``key="tenant"``) or a function of its input (``key=lambda i: i["tenant"]``)."""

    limit: int
    key: str | Callable[[Any], Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not (is_whole(self.limit) and self.limit >= 1):
            raise ConfigError(f"Concurrency(limit=...) is a whole number >= 1, not {self.limit!r}.")
        if self.key is not None and not ((isinstance(self.key, str) and self.key)
                                         or callable(self.key)):
            raise ConfigError("Concurrency(key=...) is an input field's name or a function "
                              "of the input (None: the run's owner).")

    def key_of(self, input: Any, owner: str | None) -> str:
        """The key a run with ``input`` started by ``owner`` queues under."""
        if self.key is None:
            return owner or ""
        if callable(self.key):
            # what the function makes of this input: an input it cannot key (a field it reads
            # missing) is the caller's to fix, a 400, where it was a 500 or a 503
            name = getattr(self.key, "__qualname__", repr(self.key))
            try:
                found = self.key(input)
            except Exception as exc:
                said = f"{type(exc).__name__}: {exc}"[:200]
                raise ValidationError({"_schema": [
                    f"This workflow's runs queue by Concurrency(key={name}), which raised "
                    f"{said} for this input; send the fields it reads."]}) from exc
            text = key_text(found)
            if text is None:
                raise ValidationError({"_schema": [
                    f"This workflow's runs queue by Concurrency(key={name}), which returned "
                    f"{json.dumps(found, default=str)[:60]} for this input: {KEY_RULE}."]})
            return text
        if not isinstance(input, dict) or self.key not in input:
            raise ValidationError({self.key: [
                "Missing data for required field: this workflow's runs queue by it (its "
                "concurrency key)."]})
        text = key_text(input[self.key])
        if text is None:  # null was taken as the key "None", shared with the text "None"
            raise ValidationError({self.key: [
                f"This workflow's runs queue by this field (its concurrency key): {KEY_RULE}; "
                f"not {json.dumps(input[self.key], default=str)[:60]}."]})
        return text


@dataclass(frozen=True)
class Rate:
    """``count`` per ``seconds``: ``Rate.parse("60/m")``."""

    count: float
    seconds: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        found = _RATE.match(text) if isinstance(text, str) else None
        if found is None:
            raise ConfigError(f"a rate is like '60/m', '5/s', '1000/h' or '10/5s', not {text!r}.")
        count, every, unit = found.groups()
        rate = cls(float(count), float(every or 1) * _UNIT[unit])
        if rate.count <= 0 or rate.seconds <= 0:  # "0/s" let nothing through, "1/0s" divided by 0
            raise ConfigError(f"a rate is more than 0 per more than 0 seconds, like '60/m' or "
                              f"'10/5s', not {text!r}.")
        return rate

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def zone(name: Any) -> ZoneInfo:
    """The IANA time zone ``name`` (a schedule's ``timezone``), or a ConfigError."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(f"unknown time zone {name!r}; use an IANA name like "
                          "'Europe/Paris' or 'UTC'.") from None


#: What a tick does while the schedule's last run is live (``Schedule.overlap``).
OVERLAPS = ("allow", "skip", "buffer", "cancel")


@dataclass(frozen=True)
class Schedule:
    """Start a run of the workflow at every tick: of ``cron`` (5 fields: minute hour day
    month weekday, read by Celery's ``crontab``, in ``timezone``) or ``every`` so many
    seconds, with ``input``. Each tick starts one run, however many beats run (the run's
    idempotency key is the schedule's id and the tick). Ticks missed while beat was down
    are skipped; ``catchup=True`` runs the last one missed."""

    cron: str | None = None
    input: Any = None
    timezone: str = "UTC"
    every: float | None = None
    catchup: bool = False
    #: Stable name (default: made from the workflow and the cron line or interval).
    id: str | None = None
    #: A tick while the schedule's last run is still live: ``"allow"`` starts its run all
    #: the same, ``"skip"`` starts none (runs that wait for a person piled up),
    #: ``"buffer"`` starts it once that run ends (one tick held back, a later one replaces
    #: it), ``"cancel"`` cancels that run and starts its own.
    overlap: str = "allow"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigError("Schedule takes cron='...' or every=<seconds>, one of them.")
        if self.cron is not None and (not isinstance(self.cron, str)
                                      or len(self.cron.split()) != 5):
            raise ConfigError(f"Schedule(cron=...) takes 5 fields (minute hour day month "
                              f"weekday), e.g. '0 9 * * 1-5', not {self.cron!r}.")
        if self.cron is not None:  # one space between fields: the default id is made of it
            object.__setattr__(self, "cron", " ".join(self.cron.split()))
        if self.every is not None and not (is_number(self.every)
                                           and 1 <= self.every <= MAX_EVERY):
            raise ConfigError(f"Schedule(every=...) is a number of seconds from 1 to "
                              f"{MAX_EVERY} (a year), not {self.every!r}.")
        if self.id is not None and not (isinstance(self.id, str)
                                        and re.fullmatch(SCHEDULE_ID, self.id)):
            raise ConfigError(f"Schedule(id=...) is {SCHEDULE_ID_RULE}, not {self.id!r}: the "
                              "REST API could not name it.")
        zone(self.timezone)
        if not isinstance(self.catchup, bool):
            raise ConfigError(f"Schedule(catchup=...) is True or False, not {self.catchup!r}.")
        if self.overlap not in OVERLAPS:
            raise ConfigError(f"Schedule(overlap=...) is 'allow' (every tick starts a run), "
                              f"'skip' (not while the last one is live), 'buffer' (once it "
                              f"ends) or 'cancel' (cancel it), not {self.overlap!r}.")
        try:  # stored as JSON, as every tick's run input is
            dumps(self.input)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Schedule(input=...) must be JSON-serialisable: {exc}") from None

    def default_id(self, workflow: str) -> str:
        return self.id or f"{workflow}@" + (self.cron.replace(" ", "_") if self.cron
                                            else f"every{_seconds(self.every)}s")


def _seconds(every: float) -> str:
    """``every`` in a schedule's default id: as ``:g`` writes it (the ids schedules have
    kept), unless that loses digits (6 at most: ``every=1234567`` and ``1234568`` were both
    ``every1.23457e+06s``, and one schedule replaced the other); then exactly."""
    short = f"{every:g}"
    return short if float(short) == every else repr(float(every)).removesuffix(".0")
