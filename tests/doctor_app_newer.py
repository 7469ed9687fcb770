"""``tests.doctor_app`` of a release that adds a workflow: served (or checked) before the
workers run the release, whose steps they would drop as unknown tasks."""

import flowkit
from tests.doctor_app import app, check

__all__ = ["added", "app"]

added = flowkit.Workflow("doctor_added", [check])
