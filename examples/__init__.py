"""Example workflows used by the demo, the docs and the tests."""

from . import content  # noqa: F401 - registers the content workflow
