"""A deployment ``flowkit doctor`` finds well: its workflows route to two queues, both of
which its test worker consumes. ``DOCTOR_WORKFLOW_VERSION`` sets the version a worker serves
(two workers on two versions: a rolling deploy)."""

import os

import flowkit
from flowkit import component

app = flowkit.create_celery_app("flowkit-doctor-tests")

#: The second queue its workflow routes to (as an LLM step would be).
SLOW = "doctor-slow"


@component(name="doctor.check")
def check(data: dict) -> dict:
    return data


checked = flowkit.Workflow(
    "doctor_checked", [check.timeout(5), check.queue(SLOW)],
    version=os.environ.get("DOCTOR_WORKFLOW_VERSION", "1"))
