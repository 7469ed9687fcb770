"""Is it a number? The test every argument check shares.

Python's ``True`` is an int, and NaN or infinity pass ``isinstance(x, float)``: taken as a
duration, a limit or a rate they reach a timer, a Lua script or a JSON message and fail
there, far from the mistake. Each check says its own message; these say only yes or no.
"""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """An int or a float, finite, and not a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def is_whole(value: Any) -> bool:
    """An int, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


#: The last moment a deadline may name (9999-12-31 23:59:59 UTC): past it no datetime,
#: JavaScript ``Date`` or CLI line can show it (``sleep(1e308)`` was taken, then every
#: ``flowkit status`` of the run failed with "year 33715 is out of range").
LAST_TIME = 253_402_300_799.0


def is_time(value: Any) -> bool:
    """A Unix time a deadline may name: a number, from 0 to :data:`LAST_TIME`."""
    return is_number(value) and 0 <= value <= LAST_TIME
