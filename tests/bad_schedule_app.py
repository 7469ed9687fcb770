"""A Celery app whose code declares a schedule with a cron line Celery cannot read."""

import flowkit
from tests.workflows import add_one

app = flowkit.create_celery_app("flowkit-bad-schedule")

badly_scheduled = flowkit.Workflow(
    "badly-scheduled", [add_one], schedules=[flowkit.Schedule(cron="99 * * * *", id="never")])
