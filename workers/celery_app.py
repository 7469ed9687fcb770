"""The Celery app of the reference deployment (Procfile: worker, beat)."""

import flowkit

app = flowkit.create_celery_app("flowkit", imports=["examples"])
