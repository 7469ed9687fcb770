"""The Celery app of the crash tests' own workers: queue ``chaos`` (FLOWKIT_DEFAULT_QUEUE)."""

import flowkit

app = flowkit.create_celery_app("flowkit-chaos", imports=["tests.chaos.workflows"])
