"""A module whose import raises (tests/test_cli.py: -A names it): where it raised is said."""

from __future__ import annotations

RESULT = undefined_thing  # noqa: F821 - the error the test wants
