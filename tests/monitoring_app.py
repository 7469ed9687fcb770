"""The Celery app of the monitored workers: its default queue is ``monitored``
(FLOWKIT_DEFAULT_QUEUE in their environment), so its beat sweeps on ``monitored.reaper``."""

import flowkit

app = flowkit.create_celery_app("flowkit-monitored", imports=["tests.monitoring_workflows"])
