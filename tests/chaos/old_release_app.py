"""A worker of an older release, for the rolling deploy tests: flowkit's Celery app on the
crash tests' queue, with none of their workflows (the new release added them)."""

import flowkit

app = flowkit.create_celery_app("flowkit-chaos")
