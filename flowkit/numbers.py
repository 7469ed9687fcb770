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
