"""The Celery app of the async-component test workers (prefork and gevent pools)."""

import flowkit

app = flowkit.create_celery_app("flowkit-async-tests", imports=["tests.async_workflows"])
