"""How every command prints: ``--json`` for programs, readable text for people.

Every command takes ``--json`` (``add_json_option``) and prints its answer through
``emit``: the JSON document as is, or the command's own human rendering. Times are
shown as local date-times and durations as ``1m 05s``, never epoch floats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def emit(args: argparse.Namespace, data: Any, human: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON with ``--json`` (or without a human form), else ``human(data)``."""
    if getattr(args, "json", False) or human is None:
        print(json.dumps(data, indent=2, default=str), flush=True)
    else:
        print(human(data), flush=True)


def human_time(ts: float | str | None, now: float | None = None) -> str:
    """An epoch time as a local date-time, with how long ago: ``2026-12-02 17:04:05 (3m ago)``."""
    if ts in (None, ""):
        return "-"
    ts = float(ts)  # type: ignore[arg-type]
    try:
        stamp = datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):  # past year 9999: stored before it was refused
        return f"{ts:.0f} (Unix time)"
    ago = (time.time() if now is None else now) - ts
    if ago >= 0:
        return f"{stamp} ({human_duration(ago)} ago)"
    return f"{stamp} (in {human_duration(-ago)})"


def human_duration(seconds: float | str | None) -> str:
    """``0.25s``, ``12.3s``, ``4m 05s``, ``2h 03m``, ``3d 04h``."""
    if seconds in (None, ""):
        return "-"
    s = float(seconds)  # type: ignore[arg-type]
    if s < 10:
        return f"{s:.2f}s"
    if s < 60:
        return f"{s:.1f}s"
    minutes, sec = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def is_terminal() -> bool:
    return sys.stdout.isatty()
