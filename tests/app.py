"""The Celery app the test workers run."""

import flowkit

app = flowkit.create_celery_app("flowkit-tests", imports=["tests.workflows"])
