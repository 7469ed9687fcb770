"""Rich output for the inspection commands: a console, tables, and short forms of values.

On a terminal rich sizes tables to the window and colours them; in a pipe or a file it
writes no colour codes (rich's own rule, as ``NO_COLOR`` is) and lays tables out on a wide
line, so that ``flowkit runs | grep failed`` finds whole rows.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

#: Width of a table printed into a pipe or a file (no terminal to fit), unless COLUMNS says.
PIPE_WIDTH = 200


def console() -> Console:
    """A console on stdout: the terminal's width, or PIPE_WIDTH (COLUMNS) when not a TTY."""
    out = Console(highlight=False, emoji=False, soft_wrap=False)
    if not out.is_terminal:
        out = Console(highlight=False, emoji=False, width=int(os.environ.get("COLUMNS") or PIPE_WIDTH))
    return out


def writes_unicode(stream: Any = None) -> bool:
    """Whether ``stream`` (stdout) can write the marks the CLI uses (not under
    ``PYTHONIOENCODING=ascii`` or a Latin-1 terminal)."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗↻⏸…".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def show(*renderables: RenderableType) -> None:
    """Print to stdout; in a pipe without the padding rich adds to each line."""
    out = console()
    if out.is_terminal:
        for renderable in renderables:
            out.print(renderable)
        return
    with out.capture() as captured:
        for renderable in renderables:
            out.print(renderable)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()), flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A borderless table: a bold header row and one row per item (None shows as "-")."""
    out = Table(title=title, box=None, header_style="bold", pad_edge=False, title_justify="left",
                title_style="bold")
    for header in headers:
        out.add_column(header, overflow="fold")
    for row in rows:
        # Text, not str: rich reads "[billing]" in a run's text as markup and drops it
        out.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    return out


def short(value: Any, limit: int = 120) -> str:
    """A value on one line: strings as they are, the rest as JSON, cut at ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
